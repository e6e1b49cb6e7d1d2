//! What the mesh's tests share, in one place: `mesh up` as a child process and the lines it
//! prints ([`MeshUp`], [`Lines`]), tenants folders ([`TenantsFolder`]), ports, polling
//! ([`eventually`]), and a RabbitMQ vhost ([`Vhost`]), a PostgreSQL database ([`Db`]) and a
//! Redis server ([`OwnRedis`]) of a test's own, so tests run side by side and faults stay with
//! the test that causes them.
//!
//! A test waits for what it needs (a line, a port, a state) with these, never a guessed time.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let folder = mesh_testkit::TenantsFolder::new()
//!     .shipped(&["mall"])
//!     .appended("mall", "[limits]\nrequests_per_second = 50000");
//! assert!(folder.path().join("_defaults.toml").exists());
//! let mall = std::fs::read_to_string(folder.path().join("mall.toml")).unwrap();
//! assert!(mall.ends_with("requests_per_second = 50000\n"));
//!
//! let mut polls = 0;
//! let found = mesh_testkit::eventually("the third poll", || {
//!     polls += 1;
//!     std::future::ready((polls == 3).then_some(polls))
//! })
//! .await;
//! assert_eq!(found, 3);
//! # }
//! ```

mod broker;
mod database;
mod mesh;
mod ports;
mod redis_server;
mod tenants;
mod wait;

pub use broker::{LOCAL_AMQP, OwnRabbit, Vhost, rabbitmqctl};
pub use database::{Db, connect, postgres_base};
pub use mesh::{MeshUp, NODE_CREDENTIAL, alive, field, mesh_binary, run, signal};
pub use ports::{free_port, port_open, wait_for_port};
pub use redis_server::{OwnRedis, clear_shared_state, redis_prefix, redis_url};
pub use tenants::{TenantsFolder, repository, shipped_tenants};
pub use wait::{Lines, WITHIN, eventually, eventually_within, heavy};

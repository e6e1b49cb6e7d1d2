//! What every mesh process shares, whatever services it runs.
//!
//! - [`config`]: the tenant files (`tenants/_defaults.toml` + `tenants/<tenant>.toml` +
//!   `MESH_TENANT_<ID>__...` environment overrides, via figment), validated against the
//!   contracts with errors naming the file and the field. Business-line differences live here,
//!   never in `if tenant == ...` code.
//! - [`auth`]: the tower layer that authenticates the tenant of every inbound call: a caller
//!   holding tenant A's credential cannot act as tenant B.
//! - [`graph`]: the service dependency graph; a cycle refuses start-up, naming it.
//! - [`layers`]: rate limit, degradation switches, service plan, per-tenant runtimes and
//!   contract deadlines for inbound calls, bulkheads for outbound ones; [`stack`] puts them
//!   together, once: [`Inbound`] and [`Outbound`].
//! - [`supervisor`] and [`front_door`]: a process per tenant group, restarted alone when it
//!   dies, and one address routing each call to its tenant's process; [`connections`] (the
//!   front door's listener: connection cap, keepalive, stream limits) and [`upstream`] (its
//!   connections to each worker).
//! - [`control`]: degradation switches at run time (persisted, pushed to every process),
//!   tenants onboarded while running, status, automatic degradation rules.
//! - [`deploy`]: the deployment's own configuration (admin API, ops credential, state folder).
//!
//! The runtime knows nothing of any particular service: it is handed the contract catalogue.

pub mod auth;
pub mod config;
pub mod connections;
pub mod control;
pub mod deploy;
pub mod front_door;
pub mod graph;
pub mod identity;
pub mod layers;
pub mod probes;
pub mod stack;
pub mod supervisor;
pub mod tls;
pub mod upstream;

pub use auth::{TenantAuthLayer, TenantDirectory};
pub use config::{ConfigError, FieldError, TenantConfig, Tenants};
pub use stack::{Inbound, Outbound, OutboundChannel};

//! Redis: the machine's server (keys under a prefix of a test's own), or a server of a test's
//! own for faults the shared one must not see.

use std::{process::Stdio, time::Duration};

use crate::{free_port, wait_for_port};

/// The Redis tests share (`MESH_TEST_REDIS_URL`, or 127.0.0.1:6379).
pub fn redis_url() -> String {
    std::env::var("MESH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A prefix of its own for the keys of a test's mesh in the shared Redis: tests running side
/// by side (or a crashed run's leftovers) never see each other's state.
pub fn redis_prefix() -> String {
    format!(
        "test-mesh-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Deletes the control state a test's mesh left in the shared Redis under `prefix`.
pub async fn clear_shared_state(prefix: &str) {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis on 127.0.0.1:6379 (bash .ci/test starts it)");
    let mut keys: Vec<String> = Vec::new();
    for pattern in ["switch:*", "tenant:*"] {
        let found: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:control:{pattern}"))
            .query_async(&mut connection)
            .await
            .unwrap();
        keys.extend(found);
    }
    keys.push(format!("{prefix}:control:tenants"));
    redis::cmd("DEL")
        .arg(keys)
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
}

/// A Redis server of a test's own on a free port (no persistence: a restart starts it
/// empty), killed when dropped.
pub struct OwnRedis {
    /// Its port on loopback.
    pub port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    /// Starts it and waits until it answers.
    pub async fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            child: None,
        };
        redis.up().await;
        redis
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it again (empty) on the same port, if it is down, and waits until it answers.
    pub async fn up(&mut self) {
        if self.child.is_some() {
            return;
        }
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server; bash .ci/test installs it)");
        self.child = Some(child);
        wait_for_port(self.port, "redis-server", Duration::from_secs(10)).await;
    }

    /// Kills it outright: its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A connection to it.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

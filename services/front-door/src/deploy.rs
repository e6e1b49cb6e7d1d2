//! The deployment configuration ([`mesh_config::deploy`], re-exported here), and a worker's
//! HTTP/2 settings towards the front door, which `mesh up` hands it through the environment.
//! (The front door's limits are read from it by `ConnectionLimits::from` and
//! `UpstreamLimits::from`.)

pub use mesh_config::deploy::*;

use crate::connections::ConnectionLimits;

/// A worker's HTTP/2 server settings towards the front door.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerHttp2 {
    /// PING the front door after this long without a frame from it.
    pub keepalive_interval: std::time::Duration,
    /// The front door is gone when a PING is not answered within this long.
    pub keepalive_timeout: std::time::Duration,
    /// Streams the front door may open (and reset before they are served) at once.
    pub max_streams: usize,
}

impl Default for WorkerHttp2 {
    fn default() -> Self {
        let front = FrontDoorConfig::default();
        let limits = ConnectionLimits::from(&front);
        Self {
            keepalive_interval: limits.keepalive_interval,
            keepalive_timeout: limits.keepalive_timeout,
            max_streams: front.max_streams_per_worker,
        }
    }
}

impl From<&mesh_config::worker::WorkerEnv> for WorkerHttp2 {
    /// From what [`FrontDoorConfig::worker_env`] set (read and checked by figment); the
    /// defaults where unset.
    fn from(env: &mesh_config::worker::WorkerEnv) -> Self {
        use std::time::Duration;
        let default = Self::default();
        let secs = |s: u64| Duration::from_secs(s.max(1));
        Self {
            keepalive_interval: env
                .worker_keepalive_interval_secs
                .map_or(default.keepalive_interval, secs),
            keepalive_timeout: env
                .worker_keepalive_timeout_secs
                .map_or(default.keepalive_timeout, secs),
            max_streams: env.worker_max_streams.map_or(default.max_streams, |n| {
                usize::try_from(n.max(1)).unwrap_or(usize::MAX)
            }),
        }
    }
}

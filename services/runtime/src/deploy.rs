//! Deployment configuration: what belongs to one running mesh rather than to a business line
//! (where the admin API listens, the ops credential, where state is kept). One file,
//! `ops/mesh.toml` by default, overridable from the environment: `MESH_ADMIN_LISTEN`,
//! `MESH_ADMIN_TOKEN`, `MESH_ADMIN_TOKEN_ENV`, `MESH_STATE_DIR`, `MESH_TELEMETRY_OTLP_ENDPOINT`,
//! `MESH_TELEMETRY_CONSOLE`, `MESH_TELEMETRY_EXPORT_INTERVAL_MS`, `MESH_FRONT_DOOR_MAX_CONNECTIONS`,
//! `MESH_FRONT_DOOR_IDLE_TIMEOUT_SECS`, `MESH_FRONT_DOOR_KEEPALIVE_INTERVAL_SECS`,
//! `MESH_FRONT_DOOR_KEEPALIVE_TIMEOUT_SECS`, `MESH_FRONT_DOOR_MAX_STREAMS_PER_CONNECTION`,
//! `MESH_FRONT_DOOR_WORKER_CONNECTIONS`, `MESH_FRONT_DOOR_MAX_STREAMS_PER_WORKER`,
//! `MESH_TLS_CERT_FILE`, `MESH_TLS_KEY_FILE`, `MESH_TLS_CLIENT_CA_FILE`.

use std::path::{Path, PathBuf};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use serde::Deserialize;

use crate::config::{ConfigError, FieldError};

/// One mesh deployment.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    /// The admin API `meshctl` talks to.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Where the mesh keeps what must survive a restart.
    #[serde(default)]
    pub state: StateConfig,
    /// Spans and metrics: OTLP export (off by default), console spans.
    #[serde(default)]
    pub telemetry: mesh_telemetry::TelemetryConfig,
    /// The front door's connections: cap, keepalive, idle timeout.
    #[serde(default)]
    pub front_door: FrontDoorConfig,
    /// TLS on the front door and the admin API (off unless a certificate is named).
    #[serde(default)]
    pub tls: crate::tls::TlsConfig,
}

/// The front door's connections (`[front_door]`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FrontDoorConfig {
    /// Connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// A connection without an open stream for this long is closed.
    pub idle_timeout_secs: u64,
    /// HTTP/2 PING after this long without a frame from the peer.
    pub keepalive_interval_secs: u64,
    /// A peer silent this long after a PING is gone.
    pub keepalive_timeout_secs: u64,
    /// Streams (attached terminals, calls in flight) one client connection may have open.
    pub max_streams_per_connection: u32,
    /// HTTP/2 connections from the front door to each worker process.
    pub worker_connections: usize,
    /// Streams open at once to one worker process; one more is refused with
    /// `RESOURCE_EXHAUSTED`.
    pub max_streams_per_worker: usize,
}

impl Default for FrontDoorConfig {
    fn default() -> Self {
        let limits = crate::connections::ConnectionLimits::default();
        let upstream = crate::upstream::UpstreamLimits::default();
        Self {
            max_connections: limits.max_connections,
            idle_timeout_secs: limits.idle_timeout.as_secs(),
            keepalive_interval_secs: limits.keepalive_interval.as_secs(),
            keepalive_timeout_secs: limits.keepalive_timeout.as_secs(),
            max_streams_per_connection: limits.max_streams_per_connection,
            worker_connections: upstream.connections,
            max_streams_per_worker: upstream.max_streams,
        }
    }
}

impl FrontDoorConfig {
    /// As the front door takes them.
    pub fn limits(&self) -> crate::connections::ConnectionLimits {
        use std::time::Duration;
        crate::connections::ConnectionLimits {
            max_connections: self.max_connections.max(1),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs.max(1)),
            keepalive_interval: Duration::from_secs(self.keepalive_interval_secs.max(1)),
            keepalive_timeout: Duration::from_secs(self.keepalive_timeout_secs.max(1)),
            max_streams_per_connection: self.max_streams_per_connection.max(1),
        }
    }

    /// How the front door connects to each worker: the same keepalive as towards callers.
    pub fn upstream(&self) -> crate::upstream::UpstreamLimits {
        let limits = self.limits();
        crate::upstream::UpstreamLimits {
            connections: self.worker_connections.max(1),
            max_streams: self.max_streams_per_worker.max(1),
            keepalive_interval: limits.keepalive_interval,
            keepalive_timeout: limits.keepalive_timeout,
        }
    }

    /// What a worker needs to know of the hop from the front door (its keepalive pings, how
    /// many streams the front door may open), as the environment `mesh up` starts it with;
    /// read back by [`WorkerHttp2::from_env`].
    pub fn worker_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "MESH_WORKER_KEEPALIVE_INTERVAL_SECS".into(),
                self.keepalive_interval_secs.max(1).to_string(),
            ),
            (
                "MESH_WORKER_KEEPALIVE_TIMEOUT_SECS".into(),
                self.keepalive_timeout_secs.max(1).to_string(),
            ),
            (
                "MESH_WORKER_MAX_STREAMS".into(),
                self.max_streams_per_worker.max(1).to_string(),
            ),
        ]
    }
}

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
        let limits = front.limits();
        Self {
            keepalive_interval: limits.keepalive_interval,
            keepalive_timeout: limits.keepalive_timeout,
            max_streams: front.max_streams_per_worker,
        }
    }
}

impl WorkerHttp2 {
    /// From what [`FrontDoorConfig::worker_env`] set; the defaults where unset or unreadable.
    pub fn from_env() -> Self {
        use std::time::Duration;
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        let default = Self::default();
        Self {
            keepalive_interval: var("MESH_WORKER_KEEPALIVE_INTERVAL_SECS")
                .map_or(default.keepalive_interval, |s| {
                    Duration::from_secs(s.max(1))
                }),
            keepalive_timeout: var("MESH_WORKER_KEEPALIVE_TIMEOUT_SECS")
                .map_or(default.keepalive_timeout, |s| Duration::from_secs(s.max(1))),
            max_streams: var("MESH_WORKER_MAX_STREAMS").map_or(default.max_streams, |n| {
                usize::try_from(n.max(1)).unwrap_or(usize::MAX)
            }),
        }
    }
}

/// The admin API.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address (`127.0.0.1:7401`; port 0 picks one, printed at start).
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// The ops credential itself; development only, use `token_env` anywhere else.
    pub token: Option<String>,
    /// Environment variable holding the ops credential.
    pub token_env: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token: None,
            token_env: None,
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:7401".into()
}

/// Persistent state.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Folder of the state files (switch state).
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: default_state_dir(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    ".mesh".into()
}

impl DeployConfig {
    /// The file [`DeployConfig::load`] reads for `file`: itself if absolute, else the first
    /// `file` found in the working folder or one of its parents (as figment looks for it);
    /// `None` when there is none and only defaults and the environment apply.
    pub fn source(file: &Path) -> Option<PathBuf> {
        if file.is_absolute() {
            return file.is_file().then(|| file.to_path_buf());
        }
        let here = std::env::current_dir().ok()?;
        here.ancestors()
            .map(|dir| dir.join(file))
            .find(|candidate| candidate.is_file())
    }

    /// Reads `file` (if it exists) and the environment overrides.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let figment = Figment::new()
            .merge(Toml::file(file))
            .merge(Env::prefixed("MESH_ADMIN_").map(|k| format!("admin.{k}").into()))
            .merge(Env::prefixed("MESH_STATE_").map(|k| format!("state.{k}").into()))
            .merge(Env::prefixed("MESH_TELEMETRY_").map(|k| format!("telemetry.{k}").into()))
            .merge(Env::prefixed("MESH_FRONT_DOOR_").map(|k| format!("front_door.{k}").into()))
            .merge(Env::prefixed("MESH_TLS_").map(|k| format!("tls.{k}").into()));
        let config: Self = figment.extract().map_err(|err| {
            ConfigError::Invalid(
                err.into_iter()
                    .map(|e| FieldError {
                        source: match e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
                            Some(figment::Source::File(path)) => path.display().to_string(),
                            _ => match &e.metadata {
                                Some(meta) => meta.name.to_string(),
                                None => file.display().to_string(),
                            },
                        },
                        field: e.path.join("."),
                        message: e.kind.to_string(),
                    })
                    .collect(),
            )
        })?;
        Ok(config)
    }

    /// The ops credential; `Ok(None)` when none is configured (the admin API stays off).
    pub fn ops_token(&self) -> Result<Option<String>, FieldError> {
        let error = |field: &str, message: String| FieldError {
            source: "deployment config".into(),
            field: field.into(),
            message,
        };
        match (&self.admin.token, &self.admin.token_env) {
            (Some(_), Some(_)) => Err(error(
                "admin",
                "set either `token` or `token_env`, not both".into(),
            )),
            (Some(token), None) if token.len() < 12 => {
                Err(error("admin.token", "is shorter than 12 characters".into()))
            }
            (Some(token), None) => Ok(Some(token.clone())),
            (None, Some(var)) => match std::env::var(var) {
                Ok(token) if token.len() >= 12 => Ok(Some(token)),
                Ok(_) => Err(error(
                    "admin.token_env",
                    format!("environment variable {var} holds fewer than 12 characters"),
                )),
                Err(_) => Err(error(
                    "admin.token_env",
                    format!("environment variable {var} is not set"),
                )),
            },
            (None, None) => Ok(None),
        }
    }
}

#[cfg(test)]
// figment's Jail returns figment's own (large) error type
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn file_then_environment_and_errors_name_the_field() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "mesh.toml",
                "[admin]\nlisten = \"127.0.0.1:9000\"\ntoken = \"ops-token-from-file\"\n",
            )?;
            let config = DeployConfig::load(Path::new("mesh.toml")).unwrap();
            assert_eq!(config.admin.listen, "127.0.0.1:9000");
            assert_eq!(config.state.dir, PathBuf::from(".mesh"));
            assert_eq!(
                config.ops_token().unwrap().as_deref(),
                Some("ops-token-from-file")
            );

            assert_eq!(
                config.telemetry,
                mesh_telemetry::TelemetryConfig::default(),
                "no export unless asked"
            );

            jail.set_env("MESH_ADMIN_LISTEN", "127.0.0.1:0");
            jail.set_env("MESH_STATE_DIR", "/tmp/mesh-state");
            jail.set_env("MESH_TELEMETRY_OTLP_ENDPOINT", "http://127.0.0.1:4317");
            let config = DeployConfig::load(Path::new("mesh.toml")).unwrap();
            assert_eq!(config.admin.listen, "127.0.0.1:0");
            assert_eq!(config.state.dir, PathBuf::from("/tmp/mesh-state"));
            assert_eq!(
                config.telemetry.otlp_endpoint.as_deref(),
                Some("http://127.0.0.1:4317")
            );

            jail.create_file("slow.toml", "[telemetry]\nexport_interval_ms = \"soon\"\n")?;
            let err = DeployConfig::load(Path::new("slow.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("slow.toml") && err.contains("telemetry.export_interval_ms"),
                "{err}"
            );

            let missing = DeployConfig::load(Path::new("absent.toml")).unwrap();
            assert_eq!(
                missing.ops_token().unwrap(),
                None,
                "no credential: admin off"
            );

            jail.create_file("bad.toml", "[admin]\nlisen = \"x\"\n")?;
            let err = DeployConfig::load(Path::new("bad.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("bad.toml") && err.contains("lisen"), "{err}");

            jail.create_file(
                "env.toml",
                "[admin]\ntoken_env = \"MESH_TEST_OPS_TOKEN_UNSET\"\n",
            )?;
            let err = DeployConfig::load(Path::new("env.toml"))
                .unwrap()
                .ops_token()
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("MESH_TEST_OPS_TOKEN_UNSET is not set"),
                "{err}"
            );
            Ok(())
        });
    }
}

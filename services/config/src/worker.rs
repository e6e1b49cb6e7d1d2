//! What a worker process reads from its environment, through figment like the deployment
//! file: the transports it is given (`MESH_AMQP_URI`, `MESH_STORE_POSTGRES`), the shared Redis,
//! how it is reached and how its terminals are timed. `mesh up` and `mesh deploy k8s` set these;
//! a value that is not of its type is an error naming the variable, never a silent default.
//!
//! ```
//! let env = mesh_config::worker::WorkerEnv::default();
//! assert_eq!(env.redis_prefix(), "mesh");
//! assert!(env.amqp_nodes().is_empty());
//! ```

use figment::{Figment, providers::Env};
use serde::{Deserialize, Deserializer};

use crate::{ConfigError, error::field_errors};

/// A worker's settings, one field per `MESH_<FIELD>` variable. An empty variable counts as
/// unset (manifests render optional values that way).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct WorkerEnv {
    /// `MESH_AMQP_URI`: RabbitMQ for events; unset, the embedded bus.
    #[serde(deserialize_with = "text")]
    pub amqp_uri: Option<String>,
    /// `MESH_AMQP_NODES`: the broker cluster's other nodes, `host:port,...`.
    #[serde(deserialize_with = "text")]
    pub amqp_nodes: Option<String>,
    /// `MESH_AMQP_QUEUE_TYPE`: `classic` or `quorum`.
    #[serde(deserialize_with = "text")]
    pub amqp_queue_type: Option<String>,
    /// `MESH_DLQ_MAX_LENGTH`: messages a dead-letter queue keeps.
    pub dlq_max_length: Option<u32>,
    /// `MESH_DLQ_TTL_SECS`: how long a dead letter is kept.
    pub dlq_ttl_secs: Option<u64>,
    /// `MESH_STORE_POSTGRES`: the message store; unset, in memory.
    #[serde(deserialize_with = "text")]
    pub store_postgres: Option<String>,
    /// `MESH_NODE_CREDENTIAL`: what the workers of one mesh share.
    #[serde(deserialize_with = "text")]
    pub node_credential: Option<String>,
    /// `MESH_STATE_REDIS_URL`: the Redis the nodes share (presence, switches).
    #[serde(deserialize_with = "text")]
    pub state_redis_url: Option<String>,
    /// `MESH_STATE_REDIS_PREFIX`: what the mesh's keys start with (`mesh`).
    #[serde(deserialize_with = "text")]
    pub state_redis_prefix: Option<String>,
    /// `MESH_WORKER_WEB_LISTEN`: where the worker serves browsers itself (a pod).
    #[serde(deserialize_with = "text")]
    pub worker_web_listen: Option<String>,
    /// `MESH_WEB_MAX_BODY_BYTES`: the largest request body of that web access.
    pub web_max_body_bytes: Option<usize>,
    /// `MESH_WORKER_ADVERTISE_ADDRESS`: `ip:port` other nodes dial (a pod's IP and port).
    pub worker_advertise_address: Option<std::net::SocketAddr>,
    /// `MESH_WORKER_ADVERTISE_HOST`: the IP other nodes dial, on the listening port.
    #[serde(deserialize_with = "ip")]
    pub worker_advertise_host: Option<std::net::IpAddr>,
    /// `MESH_WORKER_KEEPALIVE_INTERVAL_SECS`: PINGs to the front door.
    pub worker_keepalive_interval_secs: Option<u64>,
    /// `MESH_WORKER_KEEPALIVE_TIMEOUT_SECS`: how long a PING may go unanswered.
    pub worker_keepalive_timeout_secs: Option<u64>,
    /// `MESH_WORKER_MAX_STREAMS`: streams the front door may open at once.
    pub worker_max_streams: Option<u64>,
    /// `MESH_TERMINAL_HEARTBEAT_MS`: how often a terminal hears its timeline's head.
    pub terminal_heartbeat_ms: Option<u64>,
    /// `MESH_TERMINAL_MAX_AGE_SECS`: a terminal's stream older than this attaches again.
    pub terminal_max_age_secs: Option<u64>,
    /// `MESH_DRAIN_WINDOW_MS`: over how long a leaving worker spreads its reconnects (5000).
    pub drain_window_ms: Option<u64>,
    /// `MESH_WORKER_GROUP`: the process group it serves (its supervisor says; `unsupervised`).
    #[serde(deserialize_with = "text")]
    pub worker_group: Option<String>,
    /// `MESH_NODE_TLS_CERT_FILE`: this node's certificate chain, for mutual TLS between the
    /// mesh's processes.
    #[serde(deserialize_with = "text")]
    pub node_tls_cert_file: Option<String>,
    /// `MESH_NODE_TLS_KEY_FILE`: its key.
    #[serde(deserialize_with = "text")]
    pub node_tls_key_file: Option<String>,
    /// `MESH_NODE_TLS_CA_FILE`: the CA every node's certificate is signed by.
    #[serde(deserialize_with = "text")]
    pub node_tls_ca_file: Option<String>,
}

/// The variables [`WorkerEnv`] reads, without their `MESH_` prefix.
const KEYS: &[&str] = &[
    "amqp_uri",
    "amqp_nodes",
    "amqp_queue_type",
    "dlq_max_length",
    "dlq_ttl_secs",
    "store_postgres",
    "node_credential",
    "state_redis_url",
    "state_redis_prefix",
    "worker_web_listen",
    "web_max_body_bytes",
    "worker_advertise_address",
    "worker_advertise_host",
    "worker_keepalive_interval_secs",
    "worker_keepalive_timeout_secs",
    "worker_max_streams",
    "terminal_heartbeat_ms",
    "terminal_max_age_secs",
    "drain_window_ms",
    "worker_group",
    "node_tls_cert_file",
    "node_tls_key_file",
    "node_tls_ca_file",
];

impl WorkerEnv {
    /// This process's environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Env::prefixed("MESH_").only(KEYS)))
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        figment.extract().map_err(|err| {
            ConfigError::Deploy(field_errors(err, "worker environment".as_ref(), |keys| {
                format!("MESH_{}", keys.join("_").to_uppercase())
            }))
        })
    }

    /// The broker cluster's other nodes.
    pub fn amqp_nodes(&self) -> Vec<String> {
        self.amqp_nodes
            .iter()
            .flat_map(|nodes| nodes.split(','))
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The process group it serves (`unsupervised` when no supervisor said).
    pub fn group(&self) -> &str {
        self.worker_group.as_deref().unwrap_or("unsupervised")
    }

    /// What the mesh's keys in the shared Redis start with.
    pub fn redis_prefix(&self) -> &str {
        self.state_redis_prefix.as_deref().unwrap_or("mesh")
    }
}

/// A variable's value as figment parsed it: it reads `12345` as a number and `[::1]` as a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Whole(u64),
    Signed(i64),
    Real(f64),
    Flag(bool),
    List(Vec<Scalar>),
}

impl Scalar {
    /// Back to the text it was written as.
    fn into_text(self) -> String {
        match self {
            Scalar::Text(t) => t,
            Scalar::Whole(n) => n.to_string(),
            Scalar::Signed(n) => n.to_string(),
            Scalar::Real(n) => n.to_string(),
            Scalar::Flag(b) => b.to_string(),
            Scalar::List(items) => {
                let items: Vec<String> = items.into_iter().map(Scalar::into_text).collect();
                format!("[{}]", items.join(","))
            }
        }
    }
}

/// Any value as the text it was written as; empty is unset.
pub(crate) fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = Option::<Scalar>::deserialize(d)?.map(Scalar::into_text);
    Ok(value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()))
}

/// An IP address, bracketed or not (`[::1]`); empty is unset.
fn ip<'de, D: Deserializer<'de>>(d: D) -> Result<Option<std::net::IpAddr>, D::Error> {
    let Some(host) = text(d)? else {
        return Ok(None);
    };
    host.trim_matches(['[', ']'])
        .parse()
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("{host:?} is not an IP address")))
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail returns figment's own error
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_read_typed_and_a_bad_one_is_named() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("MESH_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/%2f");
            jail.set_env("MESH_AMQP_NODES", "a:5672, b:5672,");
            jail.set_env("MESH_DLQ_MAX_LENGTH", "500");
            jail.set_env("MESH_NODE_CREDENTIAL", "12345678901234567890");
            jail.set_env("MESH_WORKER_ADVERTISE_HOST", "[::1]");
            jail.set_env("MESH_WORKER_WEB_LISTEN", "");
            jail.set_env("MESH_TELEMETRY_FORMAT", "{ not ours");
            let env = WorkerEnv::from_env().expect("valid");
            assert_eq!(env.amqp_nodes(), ["a:5672", "b:5672"]);
            assert_eq!(env.dlq_max_length, Some(500));
            assert_eq!(env.node_credential.as_deref(), Some("12345678901234567890"));
            assert_eq!(env.worker_advertise_host, Some("::1".parse().unwrap()));
            assert_eq!(env.worker_web_listen, None);
            assert_eq!(env.redis_prefix(), "mesh");

            jail.set_env("MESH_DLQ_MAX_LENGTH", "many");
            let err = WorkerEnv::from_env().unwrap_err().to_string();
            assert!(
                err.contains("environment variable MESH_DLQ_MAX_LENGTH"),
                "{err}"
            );
            assert!(err.contains("\"many\", expected u32"), "{err}");
            jail.set_env("MESH_DLQ_MAX_LENGTH", "500");
            jail.set_env("MESH_WORKER_ADVERTISE_ADDRESS", "pod:7501");
            let err = WorkerEnv::from_env().unwrap_err().to_string();
            assert!(err.contains("MESH_WORKER_ADVERTISE_ADDRESS"), "{err}");
            jail.set_env("MESH_WORKER_ADVERTISE_ADDRESS", "10.0.0.5:7501");
            jail.set_env("MESH_WORKER_ADVERTISE_HOST", "pod");
            let err = WorkerEnv::from_env().unwrap_err().to_string();
            assert!(err.contains("\"pod\" is not an IP address"), "{err}");
            Ok(())
        });
    }
}

// Long on purpose: the deployment file's schema, every section with its defaults and checks, in
// one place (what ops/mesh.toml documents).
//! Deployment configuration: what belongs to one running mesh rather than to a business line
//! (where the admin API listens, the ops credential, where state is kept). One file,
//! `ops/mesh.toml` by default, overridable from the environment: `MESH_ADMIN_LISTEN`,
//! `MESH_ADMIN_TOKEN`, `MESH_ADMIN_TOKEN_ENV`, `MESH_STATE_DIR`, `MESH_STATE_REDIS_URL`,
//! `MESH_STATE_REDIS_PREFIX`,
//! `MESH_TELEMETRY_OTLP_ENDPOINT`,
//! `MESH_TELEMETRY_CONSOLE`, `MESH_TELEMETRY_EXPORT_INTERVAL_MS`,
//! `MESH_TELEMETRY_PROMETHEUS_LISTEN`, `MESH_TELEMETRY_LOG_FORMAT`, `MESH_FRONT_DOOR_MAX_CONNECTIONS`,
//! `MESH_FRONT_DOOR_IDLE_TIMEOUT_SECS`, `MESH_FRONT_DOOR_KEEPALIVE_INTERVAL_SECS`,
//! `MESH_FRONT_DOOR_KEEPALIVE_TIMEOUT_SECS`, `MESH_FRONT_DOOR_PREFACE_TIMEOUT_SECS`,
//! `MESH_FRONT_DOOR_MAX_STREAMS_PER_CONNECTION`,
//! `MESH_FRONT_DOOR_WORKER_CONNECTIONS`, `MESH_FRONT_DOOR_MAX_STREAMS_PER_WORKER`,
//! `MESH_FRONT_DOOR_ADVERTISE_WORKERS`,
//! `MESH_TLS_CERT_FILE`, `MESH_TLS_KEY_FILE`, `MESH_TLS_CLIENT_CA_FILE`,
//! `MESH_WORKERS_LISTEN_HOST`, `MESH_WORKERS_ADVERTISE_HOST`, `MESH_WEB_LISTEN`,
//! `MESH_WEB_MAX_BODY_BYTES`, `MESH_WEB_CONSOLE`.

use std::path::{Path, PathBuf};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use serde::Deserialize;

use crate::error::{ConfigError, FieldError, field_errors};

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
    pub telemetry: TelemetryConfig,
    /// The front door's connections: cap, keepalive, idle timeout.
    #[serde(default)]
    pub front_door: FrontDoorConfig,
    /// TLS on the front door and the admin API (off unless a certificate is named).
    #[serde(default)]
    pub tls: TlsConfig,
    /// Where `mesh up`'s workers listen, and the address other machines reach them at.
    #[serde(default)]
    pub workers: WorkersConfig,
    /// The browsers' access: every contract call as HTTP/JSON, the web chat and the ops
    /// console.
    #[serde(default)]
    pub web: WebConfig,
}

/// The browsers' access (`[web]`): HTTP/1.1 and HTTP/2 with JSON bodies, the terminal stream as
/// server-sent events, the web chat page and the ops console, beside the front door.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Listen address (`127.0.0.1:7480`; port 0 picks one, printed at start; empty turns the
    /// browsers' access off).
    pub listen: String,
    /// The largest request body accepted; a larger one is refused with 413.
    pub max_body_bytes: usize,
    /// Whether the ops console and the admin API's calls are served here too (when the admin
    /// API is on). Unset: only while `listen` is a loopback address; a port that faces users
    /// rather than your ops network keeps the admin API on its own listener.
    pub console: Option<bool>,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7480".into(),
            max_body_bytes: 1 << 20,
            console: None,
        }
    }
}

/// Where `mesh up`'s workers listen (`[workers]`): on loopback for one machine; on several
/// machines (a terminal on one node gets what is sent through another, pushed worker to
/// worker), on an interface the others reach, with the address they reach it at.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// The host each worker listens on, on a port of its choosing (`127.0.0.1`; `0.0.0.0`
    /// for every interface).
    pub listen_host: String,
    /// The host other machines dial to reach this machine's workers (`10.0.0.5`); needed
    /// when `listen_host` is every interface, and it is the listen host otherwise.
    pub advertise_host: Option<String>,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        Self {
            listen_host: "127.0.0.1".into(),
            advertise_host: None,
        }
    }
}

impl WorkersConfig {
    /// The `--listen` a worker is started with, and the environment telling it the host it is
    /// reached at; an error naming the setting when other machines could not reach it.
    pub fn worker_listen(&self) -> Result<(String, Vec<(String, String)>), FieldError> {
        let host = self.listen_host.trim();
        let unspecified = host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified());
        let listen = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:0")
        } else {
            format!("{host}:0")
        };
        match &self.advertise_host {
            Some(advertised) if !advertised.trim().is_empty() => Ok((
                listen,
                vec![(
                    worker_env::ADVERTISE_HOST.into(),
                    advertised.trim().to_owned(),
                )],
            )),
            _ if unspecified => Err(FieldError {
                source: "deployment config".into(),
                field: "workers.advertise_host".into(),
                message: format!(
                    "listen_host {host:?} is every interface: name the address other machines \
                     reach this one at (advertise_host = \"10.0.0.5\", or \
                     MESH_WORKERS_ADVERTISE_HOST)"
                ),
            }),
            _ => Ok((listen, Vec::new())),
        }
    }
}

/// Spans and metrics (`[telemetry]`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector (`http://127.0.0.1:4317`); none exports nothing.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// Print every mesh span on stderr as it closes: the trace of each call, for a newcomer.
    #[serde(default)]
    pub console: bool,
    /// How often spans and metrics are sent, in milliseconds.
    #[serde(default = "default_export_interval_ms")]
    pub export_interval_ms: u64,
    /// Where a Prometheus scrape endpoint listens (`0.0.0.0:9464`, serving `GET /metrics`);
    /// none serves none. `mesh up` serves there the metrics of the whole node (its own and
    /// every worker's); a worker started alone (one per pod) serves its own.
    #[serde(default)]
    pub prometheus_listen: Option<String>,
    /// How log lines are written on stderr: `text` (for people) or `json` (one object per
    /// line, with the trace and span ids of the request and the process that wrote it, for a
    /// log pipeline).
    #[serde(default)]
    pub log_format: LogFormat,
}

/// How a process writes its log lines.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`, the event's
    /// fields, `span`, `trace_id`, `span_id`, `service`, `group`, `pid`.
    Json,
}

impl LogFormat {
    fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

fn default_export_interval_ms() -> u64 {
    1000
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            console: false,
            export_interval_ms: default_export_interval_ms(),
            prometheus_listen: None,
            log_format: LogFormat::Text,
        }
    }
}

impl TelemetryConfig {
    /// The environment variables a worker process reads this config from (what `mesh up`
    /// hands its workers).
    pub fn to_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("MESH_TELEMETRY_CONSOLE".into(), self.console.to_string()),
            (
                "MESH_TELEMETRY_EXPORT_INTERVAL_MS".into(),
                self.export_interval_ms.to_string(),
            ),
            (
                "MESH_TELEMETRY_LOG_FORMAT".into(),
                self.log_format.as_str().into(),
            ),
        ];
        if let Some(endpoint) = &self.otlp_endpoint {
            env.push(("MESH_TELEMETRY_OTLP_ENDPOINT".into(), endpoint.clone()));
        }
        if self.prometheus_listen.is_some() {
            // the node serves the scrape endpoint; each worker serves its own on loopback, on
            // a port of its choosing that it tells the supervisor (`METRICS <address>`)
            env.push((
                "MESH_TELEMETRY_PROMETHEUS_LISTEN".into(),
                "127.0.0.1:0".into(),
            ));
        }
        env
    }

    /// Reads `MESH_TELEMETRY_OTLP_ENDPOINT`, `MESH_TELEMETRY_CONSOLE`,
    /// `MESH_TELEMETRY_EXPORT_INTERVAL_MS`, `MESH_TELEMETRY_PROMETHEUS_LISTEN` and
    /// `MESH_TELEMETRY_LOG_FORMAT` through figment (a variable set empty is unset), each error
    /// naming its variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(
            Env::prefixed("MESH_TELEMETRY_").only(TELEMETRY_KEYS),
        ))
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let read: TelemetryEnv = figment.extract().map_err(|err| {
            ConfigError::Deploy(field_errors(err, "worker environment".as_ref(), |keys| {
                format!("MESH_TELEMETRY_{}", keys.join("_").to_uppercase())
            }))
        })?;
        let default = Self::default();
        Ok(Self {
            otlp_endpoint: read.otlp_endpoint,
            prometheus_listen: read.prometheus_listen,
            console: read.console.unwrap_or(default.console),
            export_interval_ms: read
                .export_interval_ms
                .unwrap_or(default.export_interval_ms),
            log_format: read.log_format.unwrap_or(default.log_format),
        })
    }
}

/// The variables [`TelemetryConfig::from_env`] reads, without their `MESH_TELEMETRY_` prefix.
const TELEMETRY_KEYS: &[&str] = &[
    "otlp_endpoint",
    "console",
    "export_interval_ms",
    "prometheus_listen",
    "log_format",
];

/// What the telemetry variables say, each unset (or empty) where not given.
#[derive(Deserialize)]
struct TelemetryEnv {
    #[serde(default, deserialize_with = "crate::worker::text")]
    otlp_endpoint: Option<String>,
    #[serde(default, deserialize_with = "crate::worker::text")]
    prometheus_listen: Option<String>,
    #[serde(default, deserialize_with = "flag")]
    console: Option<bool>,
    #[serde(default, deserialize_with = "number")]
    export_interval_ms: Option<u64>,
    #[serde(default, deserialize_with = "log_format")]
    log_format: Option<LogFormat>,
}

/// `true` or `false`; empty is unset.
fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    crate::worker::text(d)?
        .map(|v| {
            v.parse()
                .map_err(|_| serde::de::Error::custom(format!("{v:?} is not true or false")))
        })
        .transpose()
}

/// A whole number; empty is unset.
fn number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    crate::worker::text(d)?
        .map(|v| {
            v.parse()
                .map_err(|_| serde::de::Error::custom(format!("{v:?} is not a whole number")))
        })
        .transpose()
}

/// `text` or `json`; empty is unset.
fn log_format<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<LogFormat>, D::Error> {
    match crate::worker::text(d)?.as_deref() {
        None => Ok(None),
        Some("text") => Ok(Some(LogFormat::Text)),
        Some("json") => Ok(Some(LogFormat::Json)),
        Some(other) => Err(serde::de::Error::custom(format!(
            "{other:?} is not text or json"
        ))),
    }
}

/// The `[tls]` table: TLS on the front door and the admin API (off unless a certificate is
/// named), and between the mesh's own processes.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the leaf.
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates; when set, clients must present a certificate one of them signed.
    pub client_ca_file: Option<PathBuf>,
    /// PEM CA of the mesh's own nodes; when set, the hops between the mesh's processes use
    /// mutual TLS too, each node presenting `cert_file`.
    pub node_ca_file: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether TLS is configured at all.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }
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
    /// A connection whose peer sent nothing this long after it was accepted (no HTTP/2
    /// preface: a silent socket) is dropped, giving its slot back.
    pub preface_timeout_secs: u64,
    /// Connections open at once from one source address (an IPv6 /64): one client's flood of
    /// sockets holds this many slots, not all of them. Behind a proxy (HAProxy, a cloud load
    /// balancer) every connection comes from it: set this to `max_connections` there.
    pub max_connections_per_address: usize,
    /// Streams (attached terminals, calls in flight) one client connection may have open.
    pub max_streams_per_connection: u32,
    /// HTTP/2 connections from the front door to each worker process.
    pub worker_connections: usize,
    /// Streams open at once to one worker process; one more is refused with
    /// `RESOURCE_EXHAUSTED`.
    pub max_streams_per_worker: usize,
    /// Tells each tenant backend the door authenticated the worker serving its tenant (response
    /// header `x-mesh-worker`; a loopback address to callers on this machine only), so a client
    /// that can reach it calls it directly, without the hop
    /// (`mesh_runtime::direct::DirectChannel`). Off by default: calls made directly bypass the
    /// front door's traffic watch (which the automatic degradation rules read), its drill
    /// delays and its rate limit (the worker's own still holds), and the workers serve them
    /// plain HTTP/2 (refused with `[tls]`; not behind a TLS-terminating proxy either).
    pub advertise_workers: bool,
}

impl Default for FrontDoorConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            idle_timeout_secs: 300,
            keepalive_interval_secs: 30,
            keepalive_timeout_secs: 20,
            preface_timeout_secs: 10,
            max_connections_per_address: 1_000,
            max_streams_per_connection: 1_000,
            worker_connections: 4,
            max_streams_per_worker: 100_000,
            advertise_workers: false,
        }
    }
}

/// The environment through which `mesh up` tells a worker of the hop from the front door.
pub mod worker_env {
    /// Seconds between PINGs to the front door.
    pub const KEEPALIVE_INTERVAL_SECS: &str = "MESH_WORKER_KEEPALIVE_INTERVAL_SECS";
    /// Seconds a PING may go unanswered.
    pub const KEEPALIVE_TIMEOUT_SECS: &str = "MESH_WORKER_KEEPALIVE_TIMEOUT_SECS";
    /// Streams the front door may open at once.
    pub const MAX_STREAMS: &str = "MESH_WORKER_MAX_STREAMS";
    /// The Redis the nodes of a mesh share (`[state] redis_url`).
    pub const REDIS_URL: &str = "MESH_STATE_REDIS_URL";
    /// The prefix of the mesh's keys in it (`[state] redis_prefix`).
    pub const REDIS_PREFIX: &str = "MESH_STATE_REDIS_PREFIX";
    /// The `host:port` the other nodes dial to reach this worker, when it is not the address
    /// it listens on (`0.0.0.0:7501` in a pod: its pod IP and port).
    pub const ADVERTISE_ADDRESS: &str = "MESH_WORKER_ADVERTISE_ADDRESS";
    /// The host the other nodes dial to reach this worker, on the port it listens on
    /// (`[workers] advertise_host`, for `mesh up`'s workers on ports of their choosing).
    pub const ADVERTISE_HOST: &str = "MESH_WORKER_ADVERTISE_HOST";
}

impl FrontDoorConfig {
    /// What a worker needs to know of the hop from the front door (its keepalive pings, how
    /// many streams the front door may open), as the environment `mesh up` starts it with
    /// (names in [`worker_env`]).
    pub fn worker_env(&self) -> Vec<(String, String)> {
        vec![
            (
                worker_env::KEEPALIVE_INTERVAL_SECS.into(),
                self.keepalive_interval_secs.max(1).to_string(),
            ),
            (
                worker_env::KEEPALIVE_TIMEOUT_SECS.into(),
                self.keepalive_timeout_secs.max(1).to_string(),
            ),
            (
                worker_env::MAX_STREAMS.into(),
                self.max_streams_per_worker.max(1).to_string(),
            ),
        ]
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
    /// Operators as people, each with a credential of their own: who changed what is theirs
    /// in `meshctl audit` (a shared `token` reads as operator `ops`).
    ///
    /// ```toml
    /// [[admin.operators]]
    /// name = "alice"
    /// token_env = "MESH_OPS_ALICE"
    /// ```
    #[serde(default)]
    pub operators: Vec<OperatorConfig>,
}

/// One operator (`[[admin.operators]]`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// Their name, as the audit log says it (`alice`): letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// Their credential itself; development only.
    pub token: Option<String>,
    /// Environment variable holding their credential.
    pub token_env: Option<String>,
}

/// The name a shared ops credential (`admin.token`, `admin.token_env`) reads as.
pub const SHARED_OPERATOR: &str = "ops";

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token: None,
            token_env: None,
            operators: Vec::new(),
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
    /// Redis shared by the nodes of one mesh (`redis://10.0.0.5:6379`): who is connected to
    /// which node, and the switch state, which every node then follows. Unset: one node, its
    /// state its own.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// What this mesh's keys and channels in that Redis start with: several meshes (staging,
    /// production) share one Redis apart.
    #[serde(default = "default_redis_prefix")]
    pub redis_prefix: String,
}

fn default_redis_prefix() -> String {
    "mesh".into()
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: default_state_dir(),
            redis_url: None,
            redis_prefix: default_redis_prefix(),
        }
    }
}

impl StateConfig {
    /// What a worker needs of the shared state, as the environment `mesh up` starts it with.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        self.redis_url
            .iter()
            .flat_map(|url| {
                [
                    (worker_env::REDIS_URL.to_owned(), url.clone()),
                    (
                        worker_env::REDIS_PREFIX.to_owned(),
                        self.redis_prefix.clone(),
                    ),
                ]
            })
            .collect()
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
            .merge(Env::prefixed("MESH_TLS_").map(|k| format!("tls.{k}").into()))
            .merge(Env::prefixed("MESH_WORKERS_").map(|k| format!("workers.{k}").into()))
            .merge(Env::prefixed("MESH_WEB_").map(|k| format!("web.{k}").into()));
        figment.extract().map_err(|err| {
            ConfigError::Deploy(field_errors(err, file, |keys| {
                format!("MESH_{}", keys.join("_").to_uppercase())
            }))
        })
    }

    /// Every operator's name and credential: `[[admin.operators]]`, and the shared
    /// credential as operator [`SHARED_OPERATOR`] when one is set. Empty when none is
    /// configured (the admin API stays off).
    pub fn operators(&self) -> Result<Vec<(String, String)>, FieldError> {
        let error = |field: String, message: String| FieldError {
            source: "deployment config".into(),
            field,
            message,
        };
        let mut operators: Vec<(String, String)> = self
            .ops_token()?
            .map(|token| (SHARED_OPERATOR.to_owned(), token))
            .into_iter()
            .collect();
        for (i, operator) in self.admin.operators.iter().enumerate() {
            let field = |name: &str| format!("admin.operators[{i}].{name}");
            let valid_name = !operator.name.is_empty()
                && operator.name.len() <= 64
                && operator
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !valid_name {
                return Err(error(
                    field("name"),
                    format!(
                        "{:?}: 1 to 64 letters, digits, `.`, `_` or `-` (it is how the audit log names them)",
                        operator.name
                    ),
                ));
            }
            if operators.iter().any(|(name, _)| *name == operator.name) {
                return Err(error(
                    field("name"),
                    format!(
                        "{:?} is named twice (or is `{SHARED_OPERATOR}`, the shared credential's name)",
                        operator.name
                    ),
                ));
            }
            let token = match (&operator.token, &operator.token_env) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(error(
                        format!("admin.operators[{i}]"),
                        format!(
                            "operator {:?}: set one of `token_env` and `token`",
                            operator.name
                        ),
                    ));
                }
                (Some(token), None) => crate::check_credential(token, "has")
                    .map(|()| token.clone())
                    .map_err(|message| error(field("token"), message))?,
                (None, Some(var)) => {
                    let token = std::env::var(var).map_err(|_| {
                        error(
                            field("token_env"),
                            format!("environment variable {var} is not set"),
                        )
                    })?;
                    crate::check_credential(&token, &format!("environment variable {var} holds"))
                        .map_err(|message| error(field("token_env"), message))?;
                    token
                }
            };
            if operators.iter().any(|(_, t)| *t == token) {
                return Err(error(
                    field("token"),
                    format!(
                        "operator {:?} has another operator's credential: each person has their own, or the audit log cannot tell them apart",
                        operator.name
                    ),
                ));
            }
            operators.push((operator.name.clone(), token));
        }
        Ok(operators)
    }

    /// The shared ops credential; `Ok(None)` when none is configured.
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
            (Some(token), None) => crate::check_credential(token, "has")
                .map(|()| Some(token.clone()))
                .map_err(|message| error("admin.token", message)),
            (None, Some(var)) => match std::env::var(var) {
                Ok(token) => {
                    crate::check_credential(&token, &format!("environment variable {var} holds"))
                        .map(|()| Some(token))
                        .map_err(|message| error("admin.token_env", message))
                }
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
mod tests;

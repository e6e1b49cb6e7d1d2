//! Tenant configuration: one file per business line, layered over shared defaults and
//! overridable from the environment.
//!
//! For tenant file `tenants/mall.toml` the layers are, last wins:
//! 1. `tenants/_defaults.toml` (optional): what every business line shares;
//! 2. `tenants/mall.toml`;
//! 3. environment variables `MESH_TENANT_MALL__<KEY>__<SUBKEY>=value`, e.g.
//!    `MESH_TENANT_MALL__LIMITS__REQUESTS_PER_SECOND=500`.
//!
//! Every error names the file (or environment variable) and the field.
//!
//! This file is the schema (what a tenant file may say, with its defaults); [`load`] reads a
//! folder of them, [`validate`] checks each, [`edit`] rewrites one as ops change it.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use mesh_contract::{ContractSpec, TenantId};

use crate::error::field_errors;
pub use crate::error::{ConfigError, FieldError};
use serde::Deserialize;

mod edit;
mod load;
mod validate;

pub use edit::{GreyChange, with_grey, with_process};
pub use load::{env_prefix, load_file, load_text};
pub use validate::{check_new, check_update};
// what the three share among themselves
use load::{check_file_name, clash, invalid};
use validate::check_config;

/// A contract major version as tenant files write it (`v1`, `v2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Major(u32);

impl Major {
    /// The major number (`v2` -> 2).
    pub fn get(self) -> u32 {
        self.0
    }
}

impl std::str::FromStr for Major {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        text.strip_prefix('v')
            .filter(|n| !n.starts_with('+') && !n.starts_with('0'))
            .and_then(|n| n.parse().ok())
            .map(Major)
            .ok_or_else(|| format!("{text:?} is not a major version like \"v1\""))
    }
}

impl TryFrom<String> for Major {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl std::fmt::Display for Major {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// Name of the process group of the tenants that share a process.
pub const SHARED_GROUP: &str = "shared";

/// The process group a tenant runs in: its own (named after it) or the shared one.
pub fn group_of(config: &TenantConfig) -> String {
    match config.isolation.process {
        ProcessIsolation::Own => config.id.to_string(),
        ProcessIsolation::Shared => SHARED_GROUP.to_owned(),
    }
}

/// Ids no tenant may take: the shared process group, and the names the mesh gives its own
/// parts (the control plane's deployment, keys and events, the `system` sender). A tenant
/// named like one of them would start a second group `shared`, or read as the mesh itself.
pub const RESERVED_IDS: &[&str] = &[
    SHARED_GROUP,
    "control",
    "mesh",
    "system",
    "admin",
    "all",
    "default",
    "node",
    "removed",
    "web",
];

/// Bounds of a tenant file, so one file cannot make what every operator reads (`tenant list`,
/// `status`) too large to answer, or a process too large to run.
pub mod bounds {
    /// Bytes of a tenant file (and of the defaults file) at most.
    pub const FILE_BYTES: usize = 64 * 1024;
    /// Characters of `display_name` at most.
    pub const DISPLAY_NAME_CHARS: usize = 128;
    /// Characters of `data_namespace` at most: it is a PostgreSQL schema name after the prefix
    /// `mesh_`, and PostgreSQL keeps 63 bytes of a name.
    pub const NAMESPACE_CHARS: usize = 58;
    /// Bytes of a `token_file` at most (a credential, with room to spare).
    pub const SECRET_FILE_BYTES: u64 = 4096;
    /// Characters of an automatic rule's name, a broker vhost or user at most.
    pub const NAME_CHARS: usize = 64;
    /// Most terminals `limits.max_terminals_per_user` may allow one user on a node.
    pub const TERMINALS_PER_USER: u32 = 1024;
    /// Most terminals `limits.max_terminals` may allow one tenant on a node.
    pub const TERMINALS_PER_TENANT: u32 = 1_000_000;

    /// Most `isolation.threads` a tenant's own runtime may have: four per core of this
    /// machine, at least 8, at most 256. More threads than that only cost memory (each has
    /// its own stack) and scheduling, for one tenant, on a machine its neighbours share.
    pub fn max_threads() -> u16 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        u16::try_from((cores * 4).clamp(8, 256)).unwrap_or(256)
    }
}

/// Name of the shared defaults file in a tenants folder.
pub const DEFAULTS_FILE: &str = "_defaults.toml";

/// One business line, after defaults and overrides.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Tenant id: what calls and messages carry (`mall`).
    pub id: TenantId,
    /// Name shown to people (`Mall`).
    pub display_name: String,
    /// Where the tenant's data lives (a PostgreSQL schema, a key prefix); unique per tenant.
    pub data_namespace: String,
    /// The credential the tenant's backend presents.
    pub credentials: Credentials,
    /// Who issues the tenant's end users' tokens, and with which keys; without it the tenant
    /// accepts no user token.
    #[serde(default)]
    pub users: Option<crate::users::UserTokens>,
    /// Services the tenant runs, by service name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
    /// Where the tenant's events go.
    #[serde(default)]
    pub broker: BrokerConfig,
    /// How the tenant is separated from others.
    #[serde(default)]
    pub isolation: Isolation,
    /// Admission limits.
    #[serde(default)]
    pub limits: Limits,
    /// Degradation switches off from start-up.
    #[serde(default)]
    pub switches: InitialSwitches,
    /// Rules that degrade the tenant on their own when its important calls suffer.
    #[serde(default)]
    pub auto_degrade: Vec<AutoRule>,
    /// The other messaging platforms its customers write from, by channel name.
    #[serde(default)]
    pub channels: BTreeMap<String, crate::channels::ChannelConfig>,
    /// Its browser access: the other origins whose pages may call as it (CORS).
    #[serde(default)]
    pub web: crate::web::WebConfig,
}

impl TenantConfig {
    /// The validated tenant id.
    pub fn tenant_id(&self) -> TenantId {
        self.id.clone()
    }

    /// Every environment variable the file reads a secret from (its credential, its users'
    /// signing key, its broker password, its channels' secrets): what a deployment must give
    /// the processes serving it.
    pub fn secret_envs(&self) -> Vec<String> {
        let mut names: Vec<String> = [
            self.credentials.token_env.clone(),
            self.users.as_ref().and_then(|u| u.hs256_secret_env.clone()),
            self.broker.password_env.clone(),
        ]
        .into_iter()
        .flatten()
        .chain(
            self.channels
                .values()
                .flat_map(|c| c.secret_envs().map(str::to_owned)),
        )
        .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Services the tenant runs (enabled ones), with their settings.
    pub fn enabled_services(&self) -> impl Iterator<Item = (&str, &ServiceConfig)> {
        self.services
            .iter()
            .filter(|(_, s)| s.enabled)
            .map(|(name, s)| (name.as_str(), s))
    }
}

/// A tenant credential: inline (development only) or the name of an environment variable.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The token itself. Fine for local development; use `token_env` anywhere else.
    pub token: Option<String>,
    /// Environment variable holding the token. Read where the tenant is loaded, from that
    /// process's environment: under `mesh up`, the environment it was started with.
    pub token_env: Option<String>,
    /// File holding the token (a mounted secret), relative to the tenants folder or absolute
    /// (`/run/secrets/...`); a regular file of at most 4 KiB, surrounding whitespace ignored. Read whenever the tenant is applied (start-up, `tenant add`,
    /// `tenant update`), so a business line onboarded while the mesh runs brings its secret
    /// with it: no restart, no secret in the tenant file.
    pub token_file: Option<PathBuf>,
    /// What `token_file` held when the tenant was loaded.
    #[serde(skip)]
    pub file_token: Option<String>,
    /// Why `token_file` could not be used, when it could not.
    #[serde(skip)]
    pub file_problem: Option<String>,
    /// When `meshctl tenant update` changes the credential, the previous one is still
    /// accepted for this many seconds, so the backend can roll over without failed calls.
    #[serde(default = "rotation_overlap")]
    pub rotation_overlap_secs: u64,
}

fn rotation_overlap() -> u64 {
    300
}

impl Credentials {
    /// The credential itself: `token`, else the value of `token_env` (empty when neither is
    /// set, which no caller can match).
    pub fn resolve(&self) -> String {
        match (&self.token, &self.file_token, &self.token_env) {
            (Some(token), _, _) | (None, Some(token), _) => token.clone(),
            (None, None, Some(var)) => std::env::var(var).unwrap_or_default(),
            (None, None, None) => String::new(),
        }
    }

    /// Reads `token_file` (relative to `folder`) into [`Credentials::file_token`]; left unset
    /// when it cannot be read, which validation reports.
    fn read_file(&mut self, folder: &Path) {
        use std::io::Read;
        let Some(file) = &self.token_file else {
            return;
        };
        // a regular file of a few KiB: not a device, a FIFO or a log that never ends
        let path = folder.join(file);
        let read = match std::fs::metadata(&path) {
            Err(e) => Err(format!("cannot be read ({e})")),
            Ok(meta) if !meta.is_file() => Err("is not a regular file".to_owned()),
            Ok(meta) if meta.len() > bounds::SECRET_FILE_BYTES => Err(format!(
                "holds {} bytes; a credential file is at most {}",
                meta.len(),
                bounds::SECRET_FILE_BYTES
            )),
            Ok(_) => {
                let mut text = String::new();
                std::fs::File::open(&path)
                    .and_then(|f| f.take(bounds::SECRET_FILE_BYTES).read_to_string(&mut text))
                    .map(|_| text.trim().to_owned())
                    .map_err(|e| format!("cannot be read ({e})"))
            }
        };
        match read {
            Ok(token) if token.is_empty() => {
                self.file_token = None;
                self.file_problem = Some("is empty".into());
            }
            Ok(token) => {
                self.file_token = Some(token);
                self.file_problem = None;
            }
            Err(problem) => {
                self.file_token = None;
                self.file_problem = Some(problem);
            }
        }
    }
}

/// One service as a tenant runs it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Whether the tenant runs it at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Contract major version: `v1`, `v2`.
    pub version: Major,
    /// Services it calls (HTTP/2). Events are not dependencies: they never block a caller.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Business settings the service reads (retention, limits ...): where business lines differ.
    #[serde(default)]
    pub settings: BTreeMap<String, figment::value::Value>,
    /// A newer contract major released first to some users (`meshctl grey widen|rollback`).
    #[serde(default)]
    pub grey: Option<GreyRelease>,
}

fn yes() -> bool {
    true
}

/// A contract major released to some of a tenant's users before all of them (grey, or canary,
/// release): the listed users and a stable share of all users call it and get its events; the
/// others stay on the service's `version`. Widened, then promoted (it becomes `version`) or
/// rolled back (removed): the data both majors serve is the same, so nobody is stranded.
///
/// ```
/// use mesh_config::tenant::{GreyRelease, Major};
///
/// let grey = GreyRelease { version: "v2".parse().unwrap(), users: vec!["u-7".into()], percent: 10 };
/// assert!(grey.includes("mall", "order", "u-7"), "listed");
/// let share = (0..10_000).filter(|n| grey.includes("mall", "order", &format!("u-{n}"))).count();
/// assert!((800..1200).contains(&share), "about 10 %: {share}");
/// assert_eq!(grey.includes("mall", "order", "u-42"), grey.includes("mall", "order", "u-42"));
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GreyRelease {
    /// The major released first (`v2`).
    pub version: Major,
    /// Users who get it, by user id.
    #[serde(default)]
    pub users: Vec<String>,
    /// And this share of all users, 0-100, by a stable hash of the user id: a user in it
    /// stays in it while the share grows.
    #[serde(default)]
    pub percent: u8,
}

impl GreyRelease {
    /// Whether `user` of `tenant` gets the grey major of `service`.
    pub fn includes(&self, tenant: &str, service: &str, user: &str) -> bool {
        if self.users.iter().any(|u| u == user) {
            return true;
        }
        // FNV-1a over tenant/service/user: the same bucket on every process and release
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in [tenant, "/", service, "/", user]
            .iter()
            .flat_map(|part| part.bytes())
        {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash % 100 < u64::from(self.percent)
    }
}

/// Broker placement of a tenant's events (`[broker]`): by default the vhost and user of
/// `MESH_AMQP_URI`, shared with the other tenants placed there; a vhost of its own, open only
/// to a broker user of its own, closes its events to everyone but the platform.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// RabbitMQ virtual host of the tenant's exchanges and queues; unset: the URI's.
    pub vhost: Option<String>,
    /// The tenant's own broker user; unset: the URI's.
    pub user: Option<String>,
    /// Environment variable holding that user's password.
    pub password_env: Option<String>,
}

impl BrokerConfig {
    /// The tenant's own broker user and password, if it names one (validated on load: the
    /// variable is set).
    pub fn credentials(&self) -> Option<(String, String)> {
        let user = self.user.clone()?;
        let password = std::env::var(self.password_env.as_deref()?).unwrap_or_default();
        Some((user, password))
    }
}

/// Where a tenant runs.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProcessIsolation {
    /// In a process shared with the other `shared` tenants of its group.
    #[default]
    Shared,
    /// In an OS process of its own.
    Own,
}

/// How a tenant is separated from the others.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Isolation {
    /// Process of its own, or shared.
    #[serde(default)]
    pub process: ProcessIsolation,
    /// Worker threads of a runtime of its own; 0 shares the process's runtime.
    #[serde(default)]
    pub threads: u16,
}

/// Admission limits of a tenant.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Sustained calls per second admitted.
    pub requests_per_second: u32,
    /// Calls admitted at once above the sustained rate.
    pub burst: u32,
    /// Calls in flight to one dependency at most (the bulkhead); more are shed.
    pub max_concurrent_per_dependency: u32,
    /// Terminals (attached streams) one user may hold on a node; one more is refused at once
    /// (RESOURCE_EXHAUSTED, the caller's own: no automatic rule counts it). 1 to
    /// [`bounds::TERMINALS_PER_USER`].
    #[serde(default = "default_terminals_per_user")]
    pub max_terminals_per_user: u32,
    /// Terminals all users of the tenant together may hold on a node: the tenant's share of a
    /// worker's streams (`front_door.max_streams_per_worker`, which the tenants of a shared
    /// worker split), so one business line's crowd cannot take every stream of a process it
    /// shares. One more is refused at once (RESOURCE_EXHAUSTED, marked as the caller's own).
    /// 1 to [`bounds::TERMINALS_PER_TENANT`].
    #[serde(default = "default_terminals")]
    pub max_terminals: u32,
}

fn default_terminals_per_user() -> u32 {
    16
}

fn default_terminals() -> u32 {
    50_000
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            requests_per_second: 500,
            burst: 100,
            max_concurrent_per_dependency: 64,
            max_terminals_per_user: default_terminals_per_user(),
            max_terminals: default_terminals(),
        }
    }
}

/// Degradation switches off from start-up.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InitialSwitches {
    /// Services switched off (`recommend`).
    #[serde(default)]
    pub services_off: Vec<String>,
    /// Tier switched off, with every less important one (2 = optional services).
    pub tiers_off_from: Option<u8>,
}

/// An automatic degradation rule: when the tenant's calls of `watch_tier` and more important
/// tiers get slow (p99) or fail (error rate) over `window_secs`, the tiers from
/// `switch_off_tiers_from` on are switched off for that tenant; once the watched calls have been
/// calm for `calm_secs`, they are switched back on. Shown as `auto:<name>` in `meshctl switch list`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AutoRule {
    /// Rule name, unique within the tenant.
    pub name: String,
    /// Calls watched: this tier and every more important one (0 = core calls only).
    pub watch_tier: u8,
    /// Trips when the watched calls' p99 latency exceeds this many milliseconds.
    pub p99_ms_above: Option<u32>,
    /// Trips when this share (0 to 1) of the watched calls fail.
    pub error_rate_above: Option<f64>,
    /// What it switches off: this tier and every less important one.
    pub switch_off_tiers_from: u8,
    /// The sliding window the figures are taken over.
    #[serde(default = "default_window_secs")]
    pub window_secs: u32,
    /// How long the watched calls must stay under the thresholds before the switch is restored.
    #[serde(default = "default_calm_secs")]
    pub calm_secs: u32,
    /// Fewer calls than this in the window never trip the rule (one slow call is no incident).
    #[serde(default = "default_min_calls")]
    pub min_calls: u32,
}

fn default_window_secs() -> u32 {
    10
}

fn default_calm_secs() -> u32 {
    30
}

fn default_min_calls() -> u32 {
    20
}

/// Every tenant of a tenants folder, validated.
#[derive(Clone, Debug, Default)]
pub struct Tenants {
    /// By tenant id.
    pub tenants: BTreeMap<String, TenantConfig>,
    /// The file each tenant came from.
    pub files: BTreeMap<String, PathBuf>,
}

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
}

impl TenantConfig {
    /// The validated tenant id.
    pub fn tenant_id(&self) -> TenantId {
        self.id.clone()
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

impl Tenants {
    /// A tenant by id.
    pub fn get(&self, id: &str) -> Option<&TenantConfig> {
        self.tenants.get(id)
    }

    /// Loads every `*.toml` of `dir` except `_defaults.toml` (and other `_`-prefixed files),
    /// validating each against `catalogue` and all of them against each other.
    pub fn load(dir: &Path, catalogue: &[&ContractSpec]) -> Result<Self, ConfigError> {
        Self::load_with(dir, catalogue, Secrets::Here)
    }

    /// [`Tenants::load`] on a machine that does not hold the secrets the files name by
    /// environment variable (`token_env`, `hs256_secret_env`, `password_env`): every other
    /// rule is checked. What `mesh deploy` renders from; the secrets go into the deployment's
    /// own store (a Kubernetes Secret), never through the renderer.
    pub fn load_without_secrets(
        dir: &Path,
        catalogue: &[&ContractSpec],
    ) -> Result<Self, ConfigError> {
        Self::load_with(dir, catalogue, Secrets::Elsewhere)
    }

    /// [`Tenants::load`] for a process that serves only the tenants `serving` (a Kubernetes
    /// pod of one process group): every file is checked as [`Tenants::load`] checks it, but
    /// the secrets named by environment variable only for the tenants it serves. A pod is
    /// given its own group's secrets, never another group's.
    pub fn load_serving(
        dir: &Path,
        catalogue: &[&ContractSpec],
        serving: &[String],
    ) -> Result<Self, ConfigError> {
        let tenants = Self::load_with(dir, catalogue, Secrets::Elsewhere)?;
        let defaults = dir.join(DEFAULTS_FILE);
        let defaults = defaults.exists().then_some(defaults);
        let mut errors = Vec::new();
        let mut checked = tenants.clone();
        for id in serving {
            let Some(file) = tenants.files.get(id) else {
                continue; // said by the caller, which knows what it was asked to serve
            };
            let folder = file.parent().unwrap_or(Path::new(".")).to_path_buf();
            match load_file_in(file, &folder, defaults.as_deref(), catalogue, Secrets::Here) {
                Ok(config) => {
                    checked.tenants.insert(id.clone(), config);
                }
                Err(ConfigError::Invalid(mut more)) => errors.append(&mut more),
                Err(other) => return Err(other),
            }
        }
        if errors.is_empty() {
            Ok(checked)
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    fn load_with(
        dir: &Path,
        catalogue: &[&ContractSpec],
        secrets: Secrets,
    ) -> Result<Self, ConfigError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| ConfigError::Io {
                path: dir.to_path_buf(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|e| e == "toml")
                    && !p
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .starts_with('_')
            })
            .collect();
        files.sort();
        let defaults = dir.join(DEFAULTS_FILE);
        let defaults = defaults.exists().then_some(defaults);
        let mut errors = Vec::new();
        let mut tenants = BTreeMap::new();
        let mut sources: BTreeMap<String, PathBuf> = BTreeMap::new();
        for file in files {
            let folder = file.parent().unwrap_or(Path::new(".")).to_path_buf();
            match load_file_in(&file, &folder, defaults.as_deref(), catalogue, secrets) {
                Ok(tenant) => {
                    let clashing = tenants.values().find_map(|t: &TenantConfig| {
                        let with = sources[t.id.as_str()].as_path();
                        clash(&tenant, [(t, with)]).map(|found| (t, with, found))
                    });
                    if let Some((other, other_file, (field, message))) = clashing {
                        // said of both files: a folder has no newcomer, and whichever file is
                        // the one to mend, its problem reads as it would on onboarding
                        errors.push(FieldError {
                            source: file.display().to_string(),
                            field: field.into(),
                            message,
                        });
                        if let Some((field, message)) = clash(other, [(&tenant, file.as_path())]) {
                            errors.push(FieldError {
                                source: other_file.display().to_string(),
                                field: field.into(),
                                message,
                            });
                        }
                        continue;
                    }
                    sources.insert(tenant.id.to_string(), file);
                    tenants.insert(tenant.id.to_string(), tenant);
                }
                Err(ConfigError::Invalid(mut more)) => errors.append(&mut more),
                Err(other) => return Err(other),
            }
        }
        if tenants.is_empty() && errors.is_empty() {
            errors.push(FieldError {
                source: dir.display().to_string(),
                field: String::new(),
                message: "no tenant files (`<tenant>.toml`) found".into(),
            });
        }
        if errors.is_empty() {
            Ok(Self {
                tenants,
                files: sources,
            })
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }
}

/// The text of a tenant file with its `isolation.process` set to `process`, everything else
/// (comments, order, spacing) as it was: what `meshctl tenant move` writes back.
pub fn with_process(text: &str, process: ProcessIsolation) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    let value = match process {
        ProcessIsolation::Own => "own",
        ProcessIsolation::Shared => "shared",
    };
    let isolation = doc
        .entry("isolation")
        .or_insert_with(toml_edit::table)
        .as_table_like_mut()
        .ok_or("`isolation` is not a table")?;
    isolation.insert("process", toml_edit::value(value));
    Ok(doc.to_string())
}

/// A change of a service's grey release (`meshctl grey ...`).
#[derive(Clone, Debug, PartialEq)]
pub enum GreyChange {
    /// Starts it (`version` given) or widens it: more users, a larger share.
    Widen {
        /// The major released; required to start one.
        version: Option<Major>,
        /// Users added to it.
        users: Vec<String>,
        /// Its new share of all users; never smaller than the current one.
        percent: Option<u8>,
    },
    /// Ends it: everyone runs the service's `version` again.
    Rollback,
    /// Ends it the other way: its major becomes the service's `version` for everyone.
    Promote,
}

/// The text of a tenant file with `service`'s grey release changed, everything else as it
/// was; the problem if the change does not apply.
pub fn with_grey(text: &str, service: &str, change: &GreyChange) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    let services = doc
        .entry("services")
        .or_insert_with(|| {
            let mut services = toml_edit::Table::new();
            services.set_implicit(true);
            toml_edit::Item::Table(services)
        })
        .as_table_like_mut()
        .ok_or("`services` is not a table")?;
    // a service the tenant runs as the shared defaults say gets a table of its own
    let table = services
        .entry(service)
        .or_insert_with(toml_edit::table)
        .as_table_like_mut()
        .ok_or_else(|| format!("`services.{service}` is not a table"))?;
    let grey_version = table
        .get("grey")
        .and_then(|g| g.as_table_like())
        .and_then(|g| g.get("version"))
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    match change {
        GreyChange::Rollback | GreyChange::Promote if grey_version.is_none() => {
            return Err(format!("{service} has no grey release"));
        }
        GreyChange::Rollback => {
            table.remove("grey");
        }
        GreyChange::Promote => {
            let version = grey_version.expect("checked above");
            table.remove("grey");
            table.insert("version", toml_edit::value(version));
        }
        GreyChange::Widen {
            version,
            users,
            percent,
        } => {
            if version.is_none() && grey_version.is_none() {
                return Err(format!(
                    "{service} has no grey release yet: name the major to release (--version)"
                ));
            }
            let grey = table
                .entry("grey")
                .or_insert_with(|| toml_edit::value(toml_edit::InlineTable::new()))
                .as_table_like_mut()
                .ok_or("`grey` is not a table")?;
            if let Some(version) = version {
                grey.insert("version", toml_edit::value(version.to_string()));
            }
            let current = grey
                .get("percent")
                .and_then(|p| p.as_integer())
                .unwrap_or(0);
            if let Some(percent) = percent {
                if i64::from(*percent) < current {
                    return Err(format!(
                        "{service} is released to {current} % already: widening does not \
                         narrow (roll back, then start again)"
                    ));
                }
                grey.insert("percent", toml_edit::value(i64::from(*percent)));
            }
            let mut listed: Vec<String> = grey
                .get("users")
                .and_then(|u| u.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|u| u.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            for user in users {
                if !listed.contains(user) {
                    listed.push(user.clone());
                }
            }
            if !listed.is_empty() {
                grey.insert(
                    "users",
                    toml_edit::value(toml_edit::Array::from_iter(listed)),
                );
            }
        }
    }
    // a table left empty (the release rolled back, the service's settings all in the
    // defaults) goes too
    let emptied = doc
        .get("services")
        .and_then(|s| s.get(service))
        .and_then(|t| t.as_table_like())
        .is_some_and(|t| t.is_empty());
    if emptied && let Some(services) = doc.get_mut("services").and_then(|s| s.as_table_like_mut()) {
        services.remove(service);
    }
    let changed = doc.to_string();
    if changed == text {
        return Err("that changes nothing".into());
    }
    Ok(changed)
}

/// Validates a tenant file that is not in the tenants folder `dir` yet, exactly as
/// [`Tenants::load`] will once it is there: over the folder's defaults and the file's environment
/// overrides, against the catalogue, and against the tenants `existing` already (id, data
/// namespace, file name). Errors name the file as `file_name`. What `meshctl tenant check` and
/// `tenant add` run.
pub fn check_new(
    dir: &Path,
    existing: &Tenants,
    file_name: &str,
    content: &str,
    catalogue: &[&ContractSpec],
) -> Result<TenantConfig, ConfigError> {
    check_file_name(file_name)?;
    if dir.join(file_name).exists() {
        return Err(invalid(
            file_name,
            "",
            format!(
                "{} exists already in {}; to change a tenant, `meshctl tenant update` it",
                file_name,
                dir.display()
            ),
        ));
    }
    let config = load_text(dir, file_name, content, catalogue)?;
    let others = existing
        .tenants
        .values()
        .map(|t| (t, existing.files[t.id.as_str()].as_path()));
    if let Some((field, message)) = clash(&config, others) {
        return Err(invalid(file_name, field, message));
    }
    Ok(config)
}

/// Validates a new text for the file of a tenant `existing` serves: the same rules as
/// [`check_new`], against every other tenant; the id (and so the file) and the data namespace
/// stay the tenant's, and its process changes only by a move ([`with_process`], which callers
/// validate with `existing` already holding the moved file).
pub fn check_update(
    dir: &Path,
    existing: &Tenants,
    file_name: &str,
    content: &str,
    catalogue: &[&ContractSpec],
) -> Result<TenantConfig, ConfigError> {
    check_file_name(file_name)?;
    let Some((id, _)) = existing
        .files
        .iter()
        .find(|(_, path)| path.file_name().is_some_and(|n| n == file_name))
    else {
        return Err(invalid(
            file_name,
            "",
            format!(
                "no tenant of {} comes from {file_name}; a new tenant is onboarded with \
                 `meshctl tenant add`",
                dir.display()
            ),
        ));
    };
    let config = load_text(dir, file_name, content, catalogue)?;
    let old = &existing.tenants[id.as_str()];
    if old.data_namespace != config.data_namespace {
        return Err(invalid(
            file_name,
            "data_namespace",
            format!(
                "a tenant's data stays where it is ({:?}); an update cannot move it to {:?} (its \
                 stored messages would be left behind)",
                old.data_namespace, config.data_namespace
            ),
        ));
    }
    if old.isolation.process != config.isolation.process && config.id.as_str() == id {
        return Err(invalid(
            file_name,
            "isolation.process",
            format!(
                "a tenant changes process with `meshctl tenant move {id} --process {}`, which \
                 moves it without failing its calls",
                match config.isolation.process {
                    ProcessIsolation::Own => "own",
                    ProcessIsolation::Shared => "shared",
                }
            ),
        ));
    }
    if config.id.as_str() != id {
        return Err(invalid(
            file_name,
            "id",
            format!(
                "{file_name} serves tenant {id}; an update cannot rename it to {:?}",
                config.id.as_str()
            ),
        ));
    }
    let others = existing
        .tenants
        .values()
        .filter(|t| t.id.as_str() != id)
        .map(|t| (t, existing.files[t.id.as_str()].as_path()));
    if let Some((field, message)) = clash(&config, others) {
        return Err(invalid(file_name, field, message));
    }
    Ok(config)
}

fn invalid(file_name: &str, field: &str, message: String) -> ConfigError {
    ConfigError::Invalid(vec![FieldError {
        source: file_name.to_owned(),
        field: field.to_owned(),
        message,
    }])
}

fn check_file_name(file_name: &str) -> Result<(), ConfigError> {
    let plain = Path::new(file_name)
        .file_name()
        .map(|n| n.to_string_lossy())
        == Some(file_name.into());
    if !plain || !file_name.ends_with(".toml") || file_name.starts_with(['_', '.']) {
        return Err(invalid(
            file_name,
            "",
            "a tenant file name is `<tenant>.toml`: no folder, not starting with `_` or `.`".into(),
        ));
    }
    Ok(())
}

/// Loads and validates the text of a tenant file named `file_name` as if it were in the
/// tenants folder `dir`: over the folder's defaults, with the file's environment overrides, key
/// files relative to `dir`. Errors name the file as `file_name`. What every worker runs on the
/// tenant files its supervisor hands it: the same validation as start-up, on the same text.
pub fn load_text(
    dir: &Path,
    file_name: &str,
    content: &str,
    catalogue: &[&ContractSpec],
) -> Result<TenantConfig, ConfigError> {
    if content.len() > bounds::FILE_BYTES {
        // refused before anything is written anywhere
        return Err(ConfigError::Invalid(vec![FieldError {
            source: file_name.to_owned(),
            field: String::new(),
            message: format!(
                "{} bytes; a tenant file is at most {} bytes",
                content.len(),
                bounds::FILE_BYTES
            ),
        }]));
    }
    let scratch = tempfile::tempdir().map_err(|source| ConfigError::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let file = scratch.path().join(file_name);
    std::fs::write(&file, content).map_err(|source| ConfigError::Io {
        path: file.clone(),
        source,
    })?;
    let defaults = dir.join(DEFAULTS_FILE);
    let defaults = defaults.exists().then_some(defaults);
    let shown = file.display().to_string();
    load_file_in(&file, dir, defaults.as_deref(), catalogue, Secrets::Here).map_err(|err| match err
    {
        ConfigError::Invalid(errors) => ConfigError::Invalid(
            errors
                .into_iter()
                .map(|mut e| {
                    if e.source == shown {
                        e.source = file_name.to_owned();
                    }
                    e
                })
                .collect(),
        ),
        other => other,
    })
}

/// Whether `config` takes what one of `others` (each with its file) holds already: its id, its
/// data namespace or its credential; the field and the problem. The one check a folder loading
/// and a file added to it both run.
fn clash<'a>(
    config: &TenantConfig,
    others: impl IntoIterator<Item = (&'a TenantConfig, &'a Path)>,
) -> Option<(&'static str, String)> {
    let token = config.credentials.resolve();
    others.into_iter().find_map(|(other, file)| {
        // the other file by name, as every folder it may be read from names it
        let file = file.file_name().unwrap_or_default().to_string_lossy();
        if other.id == config.id {
            Some((
                "id",
                format!("duplicate tenant id \"{}\": {file} declares it already", config.id),
            ))
        } else if other.data_namespace == config.data_namespace {
            Some((
                "data_namespace",
                format!(
                    "{:?} is already the data namespace of tenant {} ({file}); tenants never share data",
                    config.data_namespace, other.id
                ),
            ))
        } else if !token.is_empty() && other.credentials.resolve() == token {
            Some((
                "credentials",
                format!(
                    "the same credential as tenant {} ({file}): each business line's backend holds its own",
                    other.id
                ),
            ))
        } else {
            None
        }
    })
}

/// The environment prefix of a tenant file's overrides: `MESH_TENANT_<STEM>__`.
pub fn env_prefix(file: &Path) -> String {
    let stem = file.file_stem().unwrap_or_default().to_string_lossy();
    format!("MESH_TENANT_{}__", stem.to_uppercase().replace('-', "_"))
}

/// Loads and validates one tenant file over `defaults`.
pub fn load_file(
    file: &Path,
    defaults: Option<&Path>,
    catalogue: &[&ContractSpec],
) -> Result<TenantConfig, ConfigError> {
    load_file_in(
        file,
        file.parent().unwrap_or(Path::new(".")),
        defaults,
        catalogue,
        Secrets::Here,
    )
}

/// Whether the secrets a tenant file names by environment variable are set where it loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Secrets {
    /// Here: a variable that is not set is an error.
    Here,
    /// In the deployment's own store (rendering its manifests): not checked here.
    Elsewhere,
}

/// Whether `error` only says that a secret's environment variable is not set here.
fn unset_secret(error: &FieldError) -> bool {
    let unset_variable = matches!(
        error.field.as_str(),
        "credentials.token_env" | "broker.password_env" | "users.hs256_secret_env"
    ) && error.message.starts_with("environment variable ")
        && error.message.ends_with(" is not set");
    // the file is the deployment's to mount (a Kubernetes Secret): absent where it renders
    let unread_file =
        error.field == "credentials.token_file" && error.message.contains("cannot be read");
    unset_variable || unread_file
}

/// [`load_file`], with the key files it names relative to `folder`.
fn load_file_in(
    file: &Path,
    folder: &Path,
    defaults: Option<&Path>,
    catalogue: &[&ContractSpec],
    secrets: Secrets,
) -> Result<TenantConfig, ConfigError> {
    if !file.exists() {
        return Err(ConfigError::Io {
            path: file.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such tenant file"),
        });
    }
    for path in std::iter::once(file).chain(defaults) {
        let bytes = std::fs::metadata(path).map_or(0, |m| m.len());
        if bytes > bounds::FILE_BYTES as u64 {
            return Err(ConfigError::Invalid(vec![FieldError {
                source: path.display().to_string(),
                field: String::new(),
                message: format!(
                    "{bytes} bytes; a tenant file is at most {} bytes",
                    bounds::FILE_BYTES
                ),
            }]));
        }
    }
    let mut figment = Figment::new();
    if let Some(defaults) = defaults {
        figment = figment.merge(Toml::file_exact(defaults));
    }
    let figment = figment
        .merge(Toml::file_exact(file))
        .merge(Env::prefixed(&env_prefix(file)).split("__"));
    let mut config: TenantConfig = figment.extract().map_err(|err| {
        ConfigError::Invalid(field_errors(err, file, |keys| {
            format!("{}{}", env_prefix(file), keys.join("__").to_uppercase())
        }))
    })?;
    let id = config.id.to_string();
    if let Some(users) = config.users.as_mut() {
        users.resolve_paths(folder);
        users.default_audience(&id);
    }
    config.credentials.read_file(folder);
    let mut errors = validate(&config, file, catalogue);
    if secrets == Secrets::Elsewhere {
        errors.retain(|e| !unset_secret(e));
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(errors))
    }
}

fn is_namespace(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= bounds::NAMESPACE_CHARS
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The problems found in one tenant file, each naming the file.
struct Problems {
    source: String,
    list: Vec<FieldError>,
}

impl Problems {
    fn add(&mut self, field: String, message: String) {
        self.list.push(FieldError {
            source: self.source.clone(),
            field,
            message,
        });
    }
}

/// Every rule a tenant file must keep, section by section; every problem found, not the first.
fn validate(config: &TenantConfig, file: &Path, catalogue: &[&ContractSpec]) -> Vec<FieldError> {
    let mut problems = Problems {
        source: file.display().to_string(),
        list: Vec::new(),
    };
    check_identity(&mut problems, config, file);
    check_credentials(&mut problems, config);
    check_broker(&mut problems, config);
    let known = check_services(&mut problems, config, catalogue);
    check_switches_and_rules(&mut problems, config);
    check_limits_and_graph(&mut problems, config);
    // each service's settings, against their declarations (for a known service only: an
    // unknown one was refused above)
    for (name, service) in &config.services {
        if known.contains_key(name.as_str()) {
            let source = problems.source.clone();
            problems.list.extend(crate::settings::check(
                &source,
                name,
                service.enabled,
                &service.settings,
            ));
        }
    }
    problems.list
}

/// Its id, its file name, display name and data namespace.
fn check_identity(problems: &mut Problems, config: &TenantConfig, file: &Path) {
    // one name for one business line: its file, its environment prefix, its id
    let stem = file.file_stem().unwrap_or_default().to_string_lossy();
    if stem != config.id.as_str() {
        problems.add(
            "id".into(),
            format!(
                "\"{}\" differs from the file name: a tenant file is named after its id ({}.toml)",
                config.id, config.id
            ),
        );
    }
    if RESERVED_IDS.contains(&config.id.as_str()) {
        problems.add(
            "id".into(),
            format!(
                "\"{}\" is reserved: the mesh uses it itself (reserved: {})",
                config.id,
                RESERVED_IDS.join(", ")
            ),
        );
    }
    if config.display_name.trim().is_empty() {
        problems.add("display_name".into(), "must not be empty".into());
    }
    let chars = config.display_name.chars().count();
    if chars > bounds::DISPLAY_NAME_CHARS {
        problems.add(
            "display_name".into(),
            format!(
                "{chars} characters; at most {} (it is shown in every operator's listing)",
                bounds::DISPLAY_NAME_CHARS
            ),
        );
    }
    if !is_namespace(&config.data_namespace) {
        let chars = config.data_namespace.chars().count();
        let mut shown: String = config.data_namespace.chars().take(60).collect();
        if chars > 60 {
            shown.push('…');
        }
        problems.add(
            "data_namespace".into(),
            format!(
                "{shown:?} ({chars} characters) must be 1-{} lowercase letters, digits or '_', starting with a letter (it names a database schema)",
                bounds::NAMESPACE_CHARS
            ),
        );
    }
    let max_threads = bounds::max_threads();
    if config.isolation.threads > max_threads {
        problems.add(
            "isolation.threads".into(),
            format!(
                "{} threads; at most {max_threads} on this machine (4 per core, 8 to 256)",
                config.isolation.threads
            ),
        );
    }
}

/// The backend credential (one rule for every credential) and the users' token keys.
fn check_credentials(problems: &mut Problems, config: &TenantConfig) {
    let credentials = &config.credentials;
    let set = [
        credentials.token.is_some(),
        credentials.token_env.is_some(),
        credentials.token_file.is_some(),
    ];
    if let Some(file) = &credentials.token_file
        && set.iter().filter(|s| **s).count() == 1
    {
        match &credentials.file_token {
            Some(token) if !token.is_empty() => {
                let holds = format!("file {} holds", file.display());
                if let Err(message) = crate::check_credential(token, &holds) {
                    problems.add("credentials.token_file".into(), message);
                }
            }
            _ => problems.add(
                "credentials.token_file".into(),
                format!(
                    "file {} {}",
                    file.display(),
                    credentials
                        .file_problem
                        .as_deref()
                        .unwrap_or("cannot be read")
                ),
            ),
        }
    }
    match (&config.credentials.token, &config.credentials.token_env) {
        _ if set.iter().filter(|s| **s).count() > 1 => problems.add("credentials".into(), "set one of `token`, `token_env` and `token_file`, not several".into()),
        (None, None) if credentials.token_file.is_some() => {}
        (None, None) => problems.add("credentials".into(), "missing: set `token_env` (the environment variable holding the tenant's token), `token_file` (a file holding it, e.g. a mounted secret) or, for development, `token`".into()),
        (Some(_), Some(_)) => unreachable!("two set: refused above"),
        (Some(token), None) => {
            if let Err(message) = crate::check_credential(token, "has") {
                problems.add("credentials.token".into(), message);
            }
        }
        (None, Some(var)) => match std::env::var(var) {
            Ok(token) if !token.is_empty() => {
                let holds = format!("environment variable {var} holds");
                if let Err(message) = crate::check_credential(&token, &holds) {
                    problems.add("credentials.token_env".into(), message);
                }
            }
            _ => problems.add("credentials.token_env".into(), format!("environment variable {var} is not set")),
        },
    }
    if let Some(Err((field, message))) = config.users.as_ref().map(|u| u.verifier()) {
        problems.add(field.into(), message);
    }
}

/// Where its events go.
fn check_broker(problems: &mut Problems, config: &TenantConfig) {
    let broker = &config.broker;
    for (field, value) in [
        ("broker.vhost", &broker.vhost),
        ("broker.user", &broker.user),
    ] {
        if let Some(value) = value
            && value.chars().count() > bounds::NAME_CHARS
        {
            problems.add(
                field.into(),
                format!("longer than {} characters", bounds::NAME_CHARS),
            );
        }
    }
    if broker.vhost.as_deref().is_some_and(|v| v.trim().is_empty()) {
        problems.add(
            "broker.vhost".into(),
            "is empty; leave it out to use the vhost of MESH_AMQP_URI".into(),
        );
    }
    match (&broker.user, &broker.password_env) {
        (Some(_), None) => problems.add(
            "broker.password_env".into(),
            "is missing: the environment variable holding broker.user's password".into(),
        ),
        (None, Some(_)) => problems.add(
            "broker.user".into(),
            "is missing: password_env is the password of which broker user?".into(),
        ),
        (Some(_), Some(var)) if std::env::var(var).map_or(true, |v| v.is_empty()) => problems.add(
            "broker.password_env".into(),
            format!("environment variable {var} is not set"),
        ),
        _ => {}
    }
}

/// Each service it names: known, at a contract major that exists, its dependencies run. The
/// known services and their majors are returned.
fn check_services<'a>(
    problems: &mut Problems,
    config: &TenantConfig,
    catalogue: &[&'a ContractSpec],
) -> BTreeMap<&'a str, Vec<u32>> {
    let known: BTreeMap<&str, Vec<u32>> =
        catalogue.iter().fold(BTreeMap::new(), |mut map, spec| {
            map.entry(spec.name)
                .or_insert_with(Vec::new)
                .push(spec.major);
            map
        });
    for (name, service) in &config.services {
        let field = format!("services.{name}");
        let Some(majors) = known.get(name.as_str()) else {
            problems.add(
                field,
                format!(
                    "unknown service {name:?}; known services: {}",
                    known.keys().copied().collect::<Vec<_>>().join(", ")
                ),
            );
            continue;
        };
        if !majors.contains(&service.version.get()) {
            let available: Vec<String> = majors.iter().map(|m| format!("v{m}")).collect();
            problems.add(
                format!("{field}.version"),
                format!(
                    "\"{}\" is not a contract version of {name}; available: {}",
                    service.version,
                    available.join(", ")
                ),
            );
        }
        if let Some(grey) = &service.grey {
            let field = format!("{field}.grey");
            if !majors.contains(&grey.version.get()) {
                let available: Vec<String> = majors.iter().map(|m| format!("v{m}")).collect();
                problems.add(
                    format!("{field}.version"),
                    format!(
                        "\"{}\" is not a contract version of {name}; available: {}",
                        grey.version,
                        available.join(", ")
                    ),
                );
            } else if grey.version <= service.version {
                problems.add(
                    format!("{field}.version"),
                    format!(
                        "a grey release is of a newer major than the {} everyone runs",
                        service.version
                    ),
                );
            }
            if !service.enabled {
                problems.add(
                    field.clone(),
                    format!("{name} is not enabled for this tenant: nothing to release"),
                );
            }
            if grey.percent > 100 {
                problems.add(
                    format!("{field}.percent"),
                    format!("{} is not a share of users (0-100)", grey.percent),
                );
            }
            if grey.users.is_empty() && grey.percent == 0 {
                problems.add(
                    field.clone(),
                    "releases to nobody: list users or give a percent".into(),
                );
            }
            for user in &grey.users {
                if let Err(status) = mesh_contract::fields::id("user id", user) {
                    problems.add(format!("{field}.users"), status.message().to_owned());
                }
            }
        }
        if service.enabled {
            for dependency in &service.depends_on {
                if !config.services.get(dependency).is_some_and(|d| d.enabled) {
                    problems.add(
                        format!("{field}.depends_on"),
                        format!("{name} depends on {dependency:?}, which this tenant does not run"),
                    );
                }
            }
        }
    }
    known
}

/// Initial switches and automatic degradation rules.
fn check_switches_and_rules(problems: &mut Problems, config: &TenantConfig) {
    for name in &config.switches.services_off {
        if !config.services.contains_key(name) {
            problems.add(
                "switches.services_off".into(),
                format!("{name:?} is not a service of this tenant"),
            );
        }
    }
    if let Some(tier) = config.switches.tiers_off_from
        && tier > mesh_contract::Tier::MAX
    {
        problems.add(
            "switches.tiers_off_from".into(),
            format!("{tier} is not a tier (0, 1 or 2)"),
        );
    }
    let mut rule_names = std::collections::HashSet::new();
    for (i, rule) in config.auto_degrade.iter().enumerate() {
        let field = |name: &str| format!("auto_degrade[{i}].{name}");
        if rule.name.trim().is_empty() {
            problems.add(field("name"), "must not be empty".into());
        } else if rule.name.chars().count() > bounds::NAME_CHARS {
            problems.add(
                field("name"),
                format!("longer than {} characters", bounds::NAME_CHARS),
            );
        } else if !rule_names.insert(rule.name.as_str()) {
            problems.add(
                field("name"),
                format!("{:?} names another rule of this tenant already", rule.name),
            );
        }
        let max = mesh_contract::Tier::MAX;
        if rule.watch_tier > max {
            problems.add(
                field("watch_tier"),
                format!("{} is not a tier (0, 1 or 2)", rule.watch_tier),
            );
        }
        if rule.switch_off_tiers_from > max {
            problems.add(
                field("switch_off_tiers_from"),
                format!("{} is not a tier (0, 1 or 2)", rule.switch_off_tiers_from),
            );
        } else if rule.switch_off_tiers_from <= rule.watch_tier {
            problems.add(
                field("switch_off_tiers_from"),
                format!(
                    "must be above watch_tier ({}): a rule sheds less important work to protect the calls it watches",
                    rule.watch_tier
                ),
            );
        }
        match (rule.p99_ms_above, rule.error_rate_above) {
            (None, None) => problems.add(
                field("p99_ms_above"),
                "set p99_ms_above or error_rate_above (or both): the rule has nothing to watch"
                    .into(),
            ),
            (Some(0), _) => problems.add(field("p99_ms_above"), "must be at least 1".into()),
            (_, Some(rate)) if !(rate > 0.0 && rate <= 1.0) => problems.add(
                field("error_rate_above"),
                format!("{rate} is not a share between 0 (excluded) and 1"),
            ),
            _ => {}
        }
        if rule.window_secs == 0 {
            problems.add(field("window_secs"), "must be at least 1".into());
        }
    }
}

/// Admission limits, and no dependency cycle.
fn check_limits_and_graph(problems: &mut Problems, config: &TenantConfig) {
    let limits = &config.limits;
    for (field, value) in [
        ("limits.requests_per_second", limits.requests_per_second),
        ("limits.burst", limits.burst),
        (
            "limits.max_concurrent_per_dependency",
            limits.max_concurrent_per_dependency,
        ),
        (
            "limits.max_terminals_per_user",
            limits.max_terminals_per_user,
        ),
        ("limits.max_terminals", limits.max_terminals),
    ] {
        if value == 0 {
            problems.add(field.into(), "must be at least 1".into());
        }
    }
    if limits.max_terminals_per_user > bounds::TERMINALS_PER_USER {
        problems.add(
            "limits.max_terminals_per_user".into(),
            format!(
                "{} is more than one user's terminals need; at most {}",
                limits.max_terminals_per_user,
                bounds::TERMINALS_PER_USER
            ),
        );
    }
    if limits.max_terminals > bounds::TERMINALS_PER_TENANT {
        problems.add(
            "limits.max_terminals".into(),
            format!(
                "{} is more than a node holds; at most {}",
                limits.max_terminals,
                bounds::TERMINALS_PER_TENANT
            ),
        );
    }
    let graph = crate::graph::DependencyGraph::of(
        config
            .enabled_services()
            .map(|(name, service)| (name, &service.depends_on)),
    );
    if let Err(cycle) = graph.check_acyclic() {
        problems.add(
            format!("services.{}.depends_on", cycle.path[0]),
            cycle.to_string(),
        );
    }
}

//! The control plane `mesh up` runs: it owns the switch state (persisted), the tenant set, the
//! supervisor and the front door, and does what ops ask through the admin API.
//!
//! This file holds the plane's state and what it reports (tenants, status, faults); the jobs
//! are one module each: [`switch_state`] (switches, applied everywhere, shared by the fleet),
//! [`lifecycle`] (tenants added, updated, moved, removed while running) and [`auto_rules`]
//! (automatic degradation).

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, SystemTime},
};

use mesh_contract::{ContractSpec, TenantId};

use super::{
    rules::{self, RuleAction, RuleState},
    shared::{SharedError, SharedTenants, TenantEntry},
    shared_switches::{self, Entry, RECONCILE_EVERY, SharedSwitches},
    store::{SavedSwitches, StoreError, SwitchStore},
};
use crate::{
    config::{self, ConfigError, TenantConfig, Tenants, group_of},
    front_door::{DegradedSeen, Fault, FrontDoor, TenantLoad},
    layers::{Catalogue, Switch, SwitchBoard, SwitchTarget},
    supervisor::{
        self, ProcessInfo, Supervisor,
        protocol::{PreviousCredential, TenantSource},
    },
};

mod auto_rules;
mod lifecycle;
mod switch_state;

/// How long a change may take to reach every worker before the call says which did not.
const APPLY_WITHIN: Duration = Duration::from_secs(3);
/// How long a process may take to serve a tenant added, changed or moved (a new process
/// starting included) before the change is undone and the caller told why.
const SERVE_WITHIN: Duration = Duration::from_secs(30);
/// How long a process may take to drain a tenant leaving it.
const DRAIN_WITHIN: Duration = Duration::from_secs(40);
/// How often automatic rules look at the calls.
const RULE_TICK: Duration = Duration::from_millis(200);

/// What the control plane refuses, and why.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No tenant with this id runs here.
    #[error("unknown tenant {0:?}; tenants: {1}")]
    UnknownTenant(String, String),
    /// The switch names no service, method or tier of the catalogue.
    #[error("unknown switch: {0}")]
    UnknownSwitch(String),
    /// The tenant does not run the service the switch names.
    #[error("tenant {tenant} does not run {service}; it runs: {runs}")]
    NotRun {
        /// The tenant.
        tenant: String,
        /// The service named.
        service: String,
        /// What it runs.
        runs: String,
    },
    /// A tenant file is invalid.
    #[error(transparent)]
    InvalidTenant(#[from] ConfigError),
    /// The change is saved but some processes did not confirm it in time.
    #[error(
        "saved, but process group(s) {} did not confirm within {APPLY_WITHIN:?}; they apply it before serving again",
        .0.join(", ")
    )]
    NotApplied(Vec<String>),
    /// The processes that would serve a tenant's file could not: nothing of the change was
    /// kept (the tenant is as it was before, or not there at all).
    #[error("tenant {tenant} cannot be served: {reason}; nothing was changed")]
    NotServed {
        /// The tenant.
        tenant: String,
        /// Why, in the process's words.
        reason: String,
    },
    /// The change asked for cannot be made this way.
    #[error("{0}")]
    Refused(String),
    /// The switch state could not be saved or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The switch state shared with the other nodes cannot be reached.
    #[error(transparent)]
    Shared(#[from] SharedError),
    /// Writing the tenant file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// A change of one switch.
#[derive(Clone, Debug)]
pub struct SwitchChange {
    /// Every switch off after the change.
    pub switches: Vec<Switch>,
    /// Processes that applied it: for a switch of one tenant, those serving that tenant.
    pub processes_applied: usize,
    /// False when the switch was already in the asked state.
    pub changed: bool,
    /// What the fleet applied, when nodes share the switch state.
    pub fleet: Option<FleetApplied>,
}

/// How far a change reached the nodes sharing the switch state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetApplied {
    /// False when the shared store could not be reached: the change is applied on this node
    /// only, and shared (merged with the other nodes' changes) as soon as the store is back.
    pub shared: bool,
    /// The store revision the change was written at (0 when not shared).
    pub revision: u64,
    /// Live nodes (and workers following the store) that applied it.
    pub nodes_applied: usize,
    /// Live nodes (and workers following the store) in all.
    pub nodes_total: usize,
    /// Their processes that confirmed it.
    pub processes_applied: u64,
    /// The live nodes that had not applied it when the call gave up waiting.
    pub nodes_missing: Vec<String>,
}

/// What this node knows of the shared switch state.
#[derive(Debug, Default)]
struct SyncState {
    /// The store's epoch when this node last read it (`None`: never read).
    epoch: Option<String>,
    /// The store's revision then.
    revision: u64,
    /// The store's entries then.
    view: BTreeMap<String, (u64, Entry)>,
    /// The last reconciliation failed (the store was away): this node may hold changes
    /// the store lacks.
    dirty: bool,
    /// Processes that confirmed the state applied last.
    processes: u64,
    /// Whether the last change made here was shared, and at which revision.
    last_change: Option<(bool, u64)>,
}

/// What this node knows of the shared tenant registry.
#[derive(Debug, Default)]
struct TenantSync {
    /// The registry's epoch when this node last read it (`None`: never read).
    epoch: Option<String>,
    /// Its revision then.
    revision: u64,
    /// Its entries then.
    view: BTreeMap<String, (u64, TenantEntry)>,
    /// This node's tenants right after it last reconciled: what it changed since is what it
    /// writes next.
    base: BTreeMap<TenantId, TenantSource>,
    /// The last reconciliation failed (the store was away).
    dirty: bool,
}

/// A tenant and where it runs.
#[derive(Clone, Debug)]
pub struct TenantRow {
    /// Its config.
    pub config: TenantConfig,
    /// Its process group.
    pub group: String,
    /// The process serving it, if one does.
    pub pid: Option<u32>,
    /// Where.
    pub address: Option<String>,
    /// Routed by the front door now.
    pub serving: bool,
    /// `serving`, `starting` (its process is not up yet) or `down`.
    pub state: &'static str,
    /// Why it is down.
    pub reason: Option<String>,
}

/// What `meshctl status` shows.
#[derive(Clone, Debug)]
pub struct StatusReport {
    /// Every process.
    pub processes: Vec<ProcessInfo>,
    /// Every tenant.
    pub tenants: Vec<TenantRow>,
    /// Traffic by tenant.
    pub load: Vec<(TenantId, TenantLoad)>,
    /// Newest first.
    pub recent_degraded: Vec<DegradedSeen>,
}

/// The switches a mesh starts with: the saved state, plus the initial switches of the config
/// of every tenant the saved state does not know (a tenant new since the last run).
pub fn initial_switches(
    tenants: &Tenants,
    store: &SwitchStore,
) -> Result<SavedSwitches, StoreError> {
    let mut saved = store.load()?.unwrap_or_default();
    let board = SwitchBoard::new(Catalogue(&[]));
    board.replace_all(std::mem::take(&mut saved.switches));
    for config in tenants.tenants.values() {
        let tenant = config.tenant_id();
        if saved.tenants.insert(tenant) {
            for switch in initial_switches_of(config) {
                board.turn_off(switch);
            }
        }
    }
    saved.switches = board.list();
    Ok(saved)
}

/// The switches a tenant's file turns off from the start.
fn initial_switches_of(config: &TenantConfig) -> Vec<Switch> {
    let mut one = Tenants::default();
    one.tenants.insert(config.id.to_string(), config.clone());
    SwitchBoard::from_tenants(&one, Catalogue(&[])).list()
}

struct Plane {
    dir: PathBuf,
    catalogue: &'static [&'static ContractSpec],
    tenants: RwLock<Tenants>,
    known: Mutex<SavedSwitches>,
    board: SwitchBoard,
    store: SwitchStore,
    supervisor: Supervisor,
    front: FrontDoor,
    /// Serializes changes: each is saved and handed to the workers in the order it was made.
    edit: tokio::sync::Mutex<()>,
    rules: Mutex<HashMap<(TenantId, String), RuleState>>,
    /// Each tenant's file as it is served (what the processes were handed).
    sources: Mutex<HashMap<TenantId, TenantSource>>,
    /// Whether stored data lives outside the workers (PostgreSQL): a tenant may then move
    /// between processes without leaving its messages behind.
    data_shared: std::sync::atomic::AtomicBool,
    /// The switch state shared with the other nodes of the mesh, if there are.
    shared: std::sync::OnceLock<SharedSwitches>,
    /// What this node knows of the shared switch state.
    sync: Mutex<SyncState>,
    /// Switches turned back on here (who, when, why), by key, until the store has them.
    turned_on: Mutex<HashMap<String, Switch>>,
    /// This node's name in the reports of what each node applied.
    node_id: String,
    /// Wakes the reconciliation with the shared store (an announcement came).
    reconcile: tokio::sync::Notify,
    /// A control plane without workers (`mesh up --control-only`, the Kubernetes control
    /// pod): switches, status and rules for workers that run elsewhere; tenants are not
    /// changed here.
    control_only: bool,
    /// The tenant registry shared with the other nodes of the mesh, if there are.
    shared_tenants: std::sync::OnceLock<SharedTenants>,
    /// What this node knows of the shared tenant registry.
    tenant_sync: Mutex<TenantSync>,
    /// Who changed what: the admin API's changes and the automatic rules'.
    audit: super::audit::AuditLog,
}

/// The control plane. Cheap to clone.
#[derive(Clone)]
pub struct ControlPlane {
    plane: Arc<Plane>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("dir", &self.plane.dir)
            .finish()
    }
}

impl ControlPlane {
    /// Takes over a running supervisor (built with [`initial_switches`]) and starts every
    /// tenant group of `tenants`; with `start_workers` false, for workers that run elsewhere
    /// (`mesh up --control-only`: the Kubernetes control pod, whose workers are the process
    /// groups' Deployments), nothing is started here, switches are shared through Redis with
    /// the workers that follow it, and the tenant lifecycle is refused (tenants are the
    /// tenants ConfigMap there).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        dir: PathBuf,
        catalogue: &'static [&'static ContractSpec],
        tenants: Tenants,
        saved: SavedSwitches,
        store: SwitchStore,
        supervisor: Supervisor,
        front: FrontDoor,
        start_workers: bool,
    ) -> Result<Self, ControlError> {
        let mut saved = saved;
        saved.rotations.retain(|_, r| !r.remaining().is_zero());
        store.save(&saved)?;
        let board = SwitchBoard::new(Catalogue(catalogue));
        board.replace_all(saved.switches.clone());
        let mut rules = HashMap::new();
        // a rule whose switch is still off (the mesh restarted during an incident) owns it
        for switch in &saved.switches {
            if let (Some(tenant), Some(rule)) =
                (&switch.tenant, switch.changed_by.strip_prefix("auto:"))
            {
                rules.insert(
                    (tenant.clone(), rule.to_owned()),
                    RuleState {
                        active: true,
                        calm_since: None,
                    },
                );
            }
        }
        let mut sources = HashMap::new();
        for (id, file) in &tenants.files {
            let tenant = TenantId::new(id).expect("a loaded tenant's id is valid");
            let mut source =
                TenantSource::read(tenant.clone(), file).map_err(|source| ControlError::Io {
                    path: file.clone(),
                    source,
                })?;
            // a rotation still overlapping when the mesh stopped goes on overlapping
            if let Some(previous) = saved.rotations.get(&tenant)
                && !previous.remaining().is_zero()
            {
                front.accept_previous(&tenant, &previous.sha256, previous.remaining());
                source.previous_credential = Some(previous.clone());
            }
            sources.insert(tenant, source);
        }
        for group in supervisor::groups(&tenants)
            .into_iter()
            .filter(|_| start_workers)
        {
            let files = group.tenants.iter().map(|t| sources[t].clone()).collect();
            supervisor.start_group(&group.name, files);
        }
        let node_id = format!(
            "node-{}-{}",
            std::process::id(),
            &mesh_contract::ServiceCredentials::fresh_token()[..8]
        );
        let audit = super::audit::AuditLog::in_dir(
            store.path().parent().unwrap_or(std::path::Path::new(".")),
            &format!("{}/{node_id}", hostname()),
        );
        Ok(Self {
            plane: Arc::new(Plane {
                dir,
                catalogue,
                tenants: RwLock::new(tenants),
                known: Mutex::new(saved),
                board,
                store,
                supervisor,
                front,
                edit: tokio::sync::Mutex::default(),
                rules: Mutex::new(rules),
                sources: Mutex::new(sources),
                data_shared: Default::default(),
                shared: std::sync::OnceLock::new(),
                sync: Mutex::default(),
                turned_on: Mutex::default(),
                node_id,
                reconcile: tokio::sync::Notify::new(),
                control_only: !start_workers,
                shared_tenants: std::sync::OnceLock::new(),
                tenant_sync: Mutex::default(),
                audit,
            }),
        })
    }

    /// Who changed what on this node (and, shared, on the fleet).
    pub fn audit(&self) -> &super::audit::AuditLog {
        &self.plane.audit
    }

    /// Says whether the workers keep stored data outside themselves (PostgreSQL), which
    /// `tenant move` needs.
    pub fn with_data_shared(self, shared: bool) -> Self {
        self.plane
            .data_shared
            .store(shared, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// Refuses a tenant change on a control plane whose workers run elsewhere.
    fn lifecycle_here(&self) -> Result<(), ControlError> {
        if self.plane.control_only {
            return Err(ControlError::Refused(
                "this control plane runs no workers (mesh up --control-only, the Kubernetes \
                 control pod): tenants are the tenants folder its workers are given (the \
                 mesh-tenants ConfigMap); change the files, render with `mesh deploy k8s` and \
                 apply"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Whether this control plane runs no workers of its own.
    pub fn control_only(&self) -> bool {
        self.plane.control_only
    }

    /// Every switch that is off.
    pub fn switches(&self) -> Vec<Switch> {
        self.plane.board.list()
    }

    fn tenant(&self, id: &str) -> Result<TenantId, ControlError> {
        let tenants = self.plane.tenants.read().expect("lock");
        match tenants.get(id) {
            Some(config) => Ok(config.tenant_id()),
            None => Err(ControlError::UnknownTenant(
                id.to_owned(),
                tenants
                    .tenants
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }

    /// Every tenant, where it runs, and its state.
    pub fn tenants(&self) -> Vec<TenantRow> {
        let processes = self.plane.supervisor.processes();
        let tenants = self.plane.tenants.read().expect("lock");
        tenants
            .tenants
            .values()
            .map(|config| {
                let tenant = config.tenant_id();
                let group = group_of(config);
                let process = processes.iter().find(|p| p.group == group);
                let address = self.plane.front.address(&tenant);
                let down = process.and_then(|p| p.down.get(&tenant).cloned());
                let (state, reason) = match (process, &down) {
                    (_, Some(reason)) => ("down", Some(reason.clone())),
                    (Some(p), None) if p.pid.is_some() && address.is_some() => ("serving", None),
                    (Some(p), None) if p.pid.is_some() => ("starting", None),
                    (Some(p), None) => ("down", p.last_failure.clone()),
                    (None, None) => ("down", Some("no process group runs it".into())),
                };
                TenantRow {
                    config: config.clone(),
                    group,
                    pid: process.and_then(|p| p.pid),
                    serving: address.is_some(),
                    address,
                    state,
                    reason,
                }
            })
            .collect()
    }

    /// Processes, tenants, traffic and recent degraded answers.
    pub fn status(&self) -> StatusReport {
        StatusReport {
            processes: self.plane.supervisor.processes(),
            tenants: self.tenants(),
            load: self.plane.front.load(),
            recent_degraded: self.plane.front.recent_degraded(),
        }
    }

    /// Injects latency into a tenant's calls (zero clears it); the faults in force.
    pub fn set_fault(
        &self,
        tenant: &str,
        service: Option<&str>,
        delay: Duration,
    ) -> Result<Vec<Fault>, ControlError> {
        let tenant = self.tenant(tenant)?;
        if let Some(service) = service {
            SwitchTarget::Service(service.to_owned())
                .validate(self.plane.catalogue)
                .map_err(ControlError::UnknownSwitch)?;
        }
        self.plane
            .front
            .set_fault(tenant, service.map(str::to_owned), delay);
        Ok(self.plane.front.faults())
    }

    /// The fault drills in force.
    pub fn faults(&self) -> Vec<Fault> {
        self.plane.front.faults()
    }
}

/// This machine's name, as the audit log says which node made a change.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

//! The control plane `mesh up` runs: it owns the switch state (persisted), the tenant set, the
//! supervisor and the front door, and does what ops ask through the admin API.

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

    /// Turns a switch off (`on` false) or back on, for `tenant` or every tenant, and waits
    /// until every process applied it.
    pub async fn set_switch(
        &self,
        tenant: Option<&str>,
        target: SwitchTarget,
        on: bool,
        reason: &str,
        changed_by: &str,
    ) -> Result<SwitchChange, ControlError> {
        let tenant = tenant.map(|t| self.tenant(t)).transpose()?;
        target
            .validate(self.plane.catalogue)
            .map_err(ControlError::UnknownSwitch)?;
        // a switch for one tenant names something that tenant runs
        if let (
            Some(tenant),
            SwitchTarget::Service(service) | SwitchTarget::Method { service, .. },
        ) = (&tenant, &target)
        {
            let tenants = self.plane.tenants.read().expect("lock");
            if let Some(config) = tenants.get(tenant.as_str()) {
                let runs: Vec<&str> = config.enabled_services().map(|(name, _)| name).collect();
                if !runs.contains(&service.as_str()) {
                    return Err(ControlError::NotRun {
                        tenant: tenant.to_string(),
                        service: service.clone(),
                        runs: runs.join(", "),
                    });
                }
            }
        }
        let switch = Switch {
            tenant,
            target,
            reason: reason.to_owned(),
            changed_by: changed_by.to_owned(),
            changed_at: SystemTime::now(),
        };
        let scope = switch.tenant.clone();
        let (changed, version) = self.change(switch, on).await?;
        let all_applied = self.await_version(version).await?;
        let fleet = self.await_fleet(all_applied as u64).await;
        // for one tenant: the processes that serve it (every process applied the change)
        let processes_applied = match &scope {
            Some(tenant) => self
                .plane
                .supervisor
                .processes()
                .iter()
                .filter(|p| p.pid.is_some() && p.tenants.contains(tenant))
                .count(),
            None => all_applied,
        };
        Ok(SwitchChange {
            switches: self.switches(),
            processes_applied,
            changed,
            fleet,
        })
    }

    /// Applies one switch change: board, saved state, shared store, workers. Returns whether
    /// it changed anything and the version to await.
    async fn change(&self, switch: Switch, on: bool) -> Result<(bool, u64), ControlError> {
        let _edit = self.plane.edit.lock().await;
        // the store's state first: a switch another node turned off that this node has not
        // applied yet is off here too, so turning it on writes that it is on
        if self.plane.shared.get().is_some()
            && let Err(err) = self.reconcile_locked().await
        {
            tracing::debug!(error = %err, "the shared switch state before a change");
        }
        let changed = if on {
            let key = shared_switches::key(&switch);
            let changed = self
                .plane
                .board
                .turn_on(switch.tenant.as_ref(), &switch.target);
            if changed {
                // the store's tombstone says who turned it on, and when
                self.plane
                    .turned_on
                    .lock()
                    .expect("lock")
                    .insert(key, switch);
            }
            changed
        } else {
            self.plane.board.turn_off(switch);
            true
        };
        Ok((changed, self.switches_changed().await?))
    }

    /// After the board changed: saves it, shares it with the other nodes (when they share
    /// the state: the store's state after the change, merged with every other node's, is what
    /// this node applies), and hands it to the workers; the version to await.
    async fn switches_changed(&self) -> Result<u64, ControlError> {
        self.save()?;
        if self.plane.shared.get().is_some() {
            let shared = self.reconcile_locked().await;
            if let Err(err) = &shared {
                // applied here; shared (and merged) by the reconciliation once the store is
                // back
                tracing::warn!(error = %err, "switch change applied on this node only until the shared store is back");
            }
            let mut sync = self.plane.sync.lock().expect("lock");
            sync.last_change = Some((shared.is_ok(), sync.revision));
        }
        Ok(self.plane.supervisor.set_switches(self.switches()))
    }

    /// Makes this node and the shared store agree (the edit lock held): fills a store that
    /// restarted empty, writes what this node changed since it last read the store (one entry
    /// per switch, each with a revision of its own), then applies the store's state. Whether
    /// the board changed.
    async fn reconcile_locked(&self) -> Result<bool, SharedError> {
        let Some(shared) = self.plane.shared.get() else {
            return Ok(false);
        };
        let result = self.reconcile_with(shared).await;
        self.plane.sync.lock().expect("lock").dirty = result.is_err();
        result
    }

    async fn reconcile_with(&self, shared: &SharedSwitches) -> Result<bool, SharedError> {
        let (known_epoch, view) = {
            let sync = self.plane.sync.lock().expect("lock");
            (sync.epoch.clone(), sync.view.clone())
        };
        let (epoch, _) = shared.head().await?;
        let first_contact = known_epoch.is_none();
        if epoch.is_none() || (!first_contact && epoch != known_epoch) {
            // an empty store (Redis restarted empty, or this mesh's first node), or one that
            // another node refilled: it gets what this node knew of it (switches turned back
            // on included, so a node behind cannot bring one back), with this node's own
            // changes since on top, where it lacks them
            let known = self.known_entries(&view);
            shared.seed(&known).await?;
            tracing::info!(
                entries = known.len(),
                "shared switch state filled from this node"
            );
        }
        if !first_contact {
            // what changed here since this node last read the store, one entry at a time:
            // never the whole list, so another node's change to another switch survives
            let board = self.board_by_key();
            let view_off: BTreeMap<&String, &Switch> = view
                .iter()
                .filter(|(_, (_, e))| !e.on)
                .map(|(k, (_, e))| (k, &e.switch))
                .collect();
            let mut writes = Vec::new();
            for (key, switch) in &board {
                if view_off.get(key) != Some(&switch) {
                    writes.push(Entry {
                        on: false,
                        switch: switch.clone(),
                    });
                }
            }
            for (key, switch) in view_off {
                if !board.contains_key(key) {
                    let by = self.plane.turned_on.lock().expect("lock").get(key).cloned();
                    writes.push(Entry {
                        on: true,
                        switch: by.unwrap_or_else(|| Switch {
                            changed_at: SystemTime::now(),
                            ..switch.clone()
                        }),
                    });
                }
            }
            for entry in writes {
                if shared.write(&entry).await?.is_none() {
                    // the store lost everything since the check: refill it, then write
                    shared.seed(&self.known_entries(&view)).await?;
                    shared.write(&entry).await?;
                }
            }
        }
        let snapshot = shared.snapshot().await?;
        let off = snapshot.off();
        let mut mine = self.plane.board.list();
        mine.sort_by_key(shared_switches::key);
        let changed = mine != off;
        if changed {
            self.plane.board.replace_all(off);
            if let Err(err) = self.save() {
                tracing::error!(error = %err, "saving the shared switch state here");
            }
        }
        self.plane
            .turned_on
            .lock()
            .expect("lock")
            .retain(|key, _| !snapshot.entries.get(key).is_some_and(|(_, e)| e.on));
        let mut sync = self.plane.sync.lock().expect("lock");
        sync.epoch = snapshot.epoch;
        sync.revision = snapshot.revision;
        sync.view = snapshot.entries;
        Ok(changed)
    }

    /// The switches off on this node, by their key in the shared store.
    fn board_by_key(&self) -> BTreeMap<String, Switch> {
        self.plane
            .board
            .list()
            .into_iter()
            .map(|s| (shared_switches::key(&s), s))
            .collect()
    }

    /// What this node knows of the shared state, for a store to be filled again with: the
    /// entries it last read, then this node's switches off that differ from them, and the
    /// ones it turned back on since.
    fn known_entries(&self, view: &BTreeMap<String, (u64, Entry)>) -> Vec<Entry> {
        let mut known: BTreeMap<String, Entry> = view
            .iter()
            .map(|(k, (_, e))| (k.clone(), e.clone()))
            .collect();
        let board = self.board_by_key();
        for (key, entry) in known.iter_mut() {
            if !entry.on && !board.contains_key(key) {
                // turned on here since
                entry.on = true;
            }
        }
        for (key, switch) in board {
            known.insert(key, Entry { on: false, switch });
        }
        known.into_values().collect()
    }

    /// After a change this node made: says what it applied, then waits (up to
    /// [`APPLY_WITHIN`]) until every live node reports the revision it was shared at.
    async fn await_fleet(&self, processes: u64) -> Option<FleetApplied> {
        let shared = self.plane.shared.get()?;
        let (shared_now, revision) = {
            let mut sync = self.plane.sync.lock().expect("lock");
            sync.processes = processes;
            sync.last_change.unwrap_or((!sync.dirty, sync.revision))
        };
        if !shared_now {
            return Some(FleetApplied {
                shared: false,
                nodes_applied: 1,
                nodes_total: 1,
                processes_applied: processes,
                ..FleetApplied::default()
            });
        }
        let _ = shared
            .report_applied(&self.plane.node_id, revision, processes)
            .await;
        let deadline = tokio::time::Instant::now() + APPLY_WITHIN;
        loop {
            let nodes = match shared.applied().await {
                Ok(nodes) => nodes,
                Err(err) => {
                    return Some(FleetApplied {
                        shared: true,
                        revision,
                        processes_applied: processes,
                        nodes_missing: vec![format!("unknown (the shared store: {err})")],
                        ..FleetApplied::default()
                    });
                }
            };
            let missing: Vec<String> = nodes
                .iter()
                .filter(|n| n.revision < revision)
                .map(|n| n.node.clone())
                .collect();
            if missing.is_empty() || tokio::time::Instant::now() >= deadline {
                return Some(FleetApplied {
                    shared: true,
                    revision,
                    nodes_applied: nodes.len() - missing.len(),
                    nodes_total: nodes.len(),
                    processes_applied: nodes
                        .iter()
                        .filter(|n| n.revision >= revision)
                        .map(|n| n.processes)
                        .sum(),
                    nodes_missing: missing,
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Shares the switch state with the other nodes of a mesh through `shared`: a node joining
    /// takes the store's state (the first node of a mesh, or the first after the store
    /// restarted empty, fills it with its own), then reconciles on every announcement and every
    /// [`RECONCILE_EVERY`], reporting what it applied.
    pub async fn share_switches(&self, shared: SharedSwitches) -> Result<(), ControlError> {
        let _ = self.plane.shared.set(shared.clone());
        {
            let _edit = self.plane.edit.lock().await;
            self.reconcile_locked().await?;
            self.plane.supervisor.set_switches(self.switches());
        }
        tokio::spawn(shared.clone().on_announcement({
            let plane = self.clone();
            move || plane.plane.reconcile.notify_one()
        }));
        let plane = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = plane.plane.reconcile.notified() => {}
                    () = tokio::time::sleep(RECONCILE_EVERY) => {}
                }
                plane.reconcile_tick(&shared).await;
            }
        });
        Ok(())
    }

    /// One turn of the reconciliation loop: if the store moved on (another node's change, a
    /// restart) or this node holds changes the store lacks, reconcile and hand the result to
    /// the workers; then say what this node applied.
    async fn reconcile_tick(&self, shared: &SharedSwitches) {
        let head = shared.head().await;
        let behind = {
            let sync = self.plane.sync.lock().expect("lock");
            match &head {
                Ok((epoch, revision)) => {
                    sync.dirty || *epoch != sync.epoch || *revision != sync.revision
                }
                Err(_) => false,
            }
        };
        if let Err(err) = &head {
            let mut sync = self.plane.sync.lock().expect("lock");
            if !sync.dirty {
                tracing::warn!(error = %err, "shared switch state unreachable; changes made here are shared when it is back");
            }
            sync.dirty = true;
            return;
        }
        if behind {
            let version = {
                let _edit = self.plane.edit.lock().await;
                match self.reconcile_locked().await {
                    Ok(true) => Some(self.plane.supervisor.set_switches(self.switches())),
                    Ok(false) => None,
                    Err(err) => {
                        tracing::warn!(error = %err, "reconciling the shared switch state");
                        return;
                    }
                }
            };
            if let Some(version) = version {
                match self
                    .plane
                    .supervisor
                    .wait_applied(version, APPLY_WITHIN)
                    .await
                {
                    Ok(n) => self.plane.sync.lock().expect("lock").processes = n as u64,
                    Err(groups) => {
                        tracing::warn!(groups = %groups.join(", "), "shared switch change not confirmed by every process group in time")
                    }
                }
            }
        }
        let (revision, processes) = {
            let sync = self.plane.sync.lock().expect("lock");
            (sync.revision, sync.processes)
        };
        let _ = shared
            .report_applied(&self.plane.node_id, revision, processes)
            .await;
    }

    /// Shares the tenant registry with the other nodes of a mesh through `shared`: a node
    /// joining takes the registry (adding, updating, moving and removing its own tenants to
    /// match; the first node of a mesh, or the first after the store restarted empty, fills it
    /// with its own), and every tenant added, updated, moved or removed through another node
    /// is so here too, checked and served as through this node: on each announcement and every
    /// [`RECONCILE_EVERY`].
    pub async fn share_tenants(&self, shared: SharedTenants) -> Result<(), ControlError> {
        let _ = self.plane.shared_tenants.set(shared.clone());
        {
            let _edit = self.plane.edit.lock().await;
            self.reconcile_tenants_locked().await?;
        }
        let wake = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(shared.clone().on_announcement({
            let wake = wake.clone();
            move || wake.notify_one()
        }));
        let plane = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(RECONCILE_EVERY) => {}
                }
                let behind = match shared.head().await {
                    Ok(head) => {
                        let sync = plane.plane.tenant_sync.lock().expect("lock");
                        sync.dirty || head != (sync.epoch.clone(), sync.revision)
                    }
                    Err(_) => {
                        plane.plane.tenant_sync.lock().expect("lock").dirty = true;
                        false
                    }
                };
                if behind {
                    let _edit = plane.plane.edit.lock().await;
                    if let Err(err) = plane.reconcile_tenants_locked().await {
                        tracing::warn!(error = %err, "reconciling the shared tenant registry");
                    }
                }
            }
        });
        Ok(())
    }

    /// Makes this node and the shared tenant registry agree (the edit lock held): fills a
    /// registry that restarted empty, writes the tenant changes made here since the last
    /// reconciliation (one entry per tenant, never the whole registry), then serves here what
    /// the registry holds.
    async fn reconcile_tenants_locked(&self) -> Result<(), SharedError> {
        let Some(shared) = self.plane.shared_tenants.get() else {
            return Ok(());
        };
        let result = self.reconcile_tenants_with(shared).await;
        self.plane.tenant_sync.lock().expect("lock").dirty = result.is_err();
        result
    }

    async fn reconcile_tenants_with(&self, shared: &SharedTenants) -> Result<(), SharedError> {
        let (known_epoch, view, base) = {
            let sync = self.plane.tenant_sync.lock().expect("lock");
            (sync.epoch.clone(), sync.view.clone(), sync.base.clone())
        };
        let (epoch, _) = shared.head().await?;
        let first_contact = known_epoch.is_none();
        // the changes made here since the last reconciliation: what this node serves that it
        // did not then (added, updated, moved), and what it served then and does not now
        // (removed). Never the tenants a shared change failed to be served here: those stay
        // the registry's, not removed by this node's failure
        let now = self.sources();
        let mut changes: Vec<TenantEntry> = now
            .iter()
            .filter(|(id, source)| base.get(*id) != Some(*source))
            .map(|(_, source)| TenantEntry {
                removed: false,
                source: source.clone(),
            })
            .collect();
        changes.extend(
            base.iter()
                .filter(|(id, _)| !now.contains_key(*id))
                .map(|(_, source)| TenantEntry {
                    removed: true,
                    source: source.clone(),
                }),
        );
        let known = || -> Vec<TenantEntry> {
            let mut known: BTreeMap<String, TenantEntry> = view
                .iter()
                .map(|(k, (_, e))| (k.clone(), e.clone()))
                .collect();
            for change in &changes {
                known.insert(change.source.id.to_string(), change.clone());
            }
            if first_contact {
                for source in now.values() {
                    known.insert(
                        source.id.to_string(),
                        TenantEntry {
                            removed: false,
                            source: source.clone(),
                        },
                    );
                }
            }
            known.into_values().collect()
        };
        if epoch.is_none() || (!first_contact && epoch != known_epoch) {
            // an empty registry (Redis restarted empty, or this mesh's first node), or one
            // another node refilled: it gets what this node knew, where it lacks it
            shared.seed(&known()).await?;
        }
        if !first_contact {
            for change in &changes {
                if shared.write(change).await?.is_none() {
                    shared.seed(&known()).await?;
                    shared.write(change).await?;
                }
            }
        }
        let snapshot = shared.snapshot().await?;
        let wanted = snapshot.live();
        if wanted != self.sources() {
            self.apply_shared_tenants_locked(wanted).await;
        }
        let mut sync = self.plane.tenant_sync.lock().expect("lock");
        sync.epoch = snapshot.epoch;
        sync.revision = snapshot.revision;
        sync.view = snapshot.entries;
        sync.base = self.sources();
        Ok(())
    }

    /// Every tenant's file, as served.
    fn sources(&self) -> BTreeMap<TenantId, TenantSource> {
        self.plane
            .sources
            .lock()
            .expect("lock")
            .iter()
            .map(|(id, source)| (id.clone(), source.clone()))
            .collect()
    }

    /// After the tenant set or a tenant's file changed (the edit lock held): tells the other
    /// nodes, when they share the registry; while the store is away, the change is written
    /// when it is back.
    async fn tenants_changed(&self) {
        if self.plane.shared_tenants.get().is_some()
            && let Err(err) = self.reconcile_tenants_locked().await
        {
            tracing::warn!(error = %err, "tenant change applied on this node only until the shared store is back");
        }
    }

    /// Makes this node's tenants those the registry holds (the edit lock held); what one of
    /// them cannot be here is said in the log and left as it was.
    async fn apply_shared_tenants_locked(&self, wanted: BTreeMap<TenantId, TenantSource>) {
        let have = self.sources();
        for (id, source) in &wanted {
            let done = match have.get(id) {
                None => self.add_locked(&source.file, &source.text).await.map(drop),
                Some(old) if old.text != source.text => {
                    let process = config::load_text(
                        &self.plane.dir,
                        &source.file,
                        &source.text,
                        self.plane.catalogue,
                    )
                    .map(|c| c.isolation.process);
                    match process {
                        Ok(process)
                            if self
                                .config_of(id)
                                .is_ok_and(|c| c.isolation.process != process) =>
                        {
                            self.move_locked(id.as_str(), process).await.map(drop)
                        }
                        _ => self
                            .apply_update(&source.file, &source.text)
                            .await
                            .map(drop),
                    }
                }
                Some(_) => Ok(()),
            };
            if let Err(err) = done {
                tracing::error!(tenant = %id, error = %err, "a tenant shared by another node is not served here");
            }
        }
        for id in have.keys().filter(|id| !wanted.contains_key(*id)) {
            if let Err(err) = self.remove_locked(id.as_str(), false).await {
                tracing::error!(tenant = %id, error = %err, "a tenant another node removed is still here");
            }
        }
    }

    fn save(&self) -> Result<(), ControlError> {
        let mut known = self.plane.known.lock().expect("lock");
        known.switches = self.plane.board.list();
        self.plane.store.save(&known)?;
        Ok(())
    }

    async fn await_version(&self, version: u64) -> Result<usize, ControlError> {
        self.plane
            .supervisor
            .wait_applied(version, APPLY_WITHIN)
            .await
            .map_err(ControlError::NotApplied)
    }

    /// Validates a tenant file as `tenant add` would, or as `tenant update` would when it is
    /// the file of a tenant served already (a dry run of either): the tenant, its process
    /// group, and whether the file would update a tenant.
    pub fn check_tenant(
        &self,
        file_name: &str,
        content: &str,
    ) -> Result<(TenantConfig, String, bool), ControlError> {
        let updates = self
            .plane
            .tenants
            .read()
            .expect("lock")
            .files
            .values()
            .any(|path| path.file_name().is_some_and(|n| n == file_name));
        if updates {
            let config = self.check_change(file_name, content)?;
            let group = group_of(&config);
            return Ok((config, group, true));
        }
        let (config, group) = self.check_addition(file_name, content)?;
        Ok((config, group, false))
    }

    /// Validates a new tenant's file; the tenant and its process group.
    fn check_addition(
        &self,
        file_name: &str,
        content: &str,
    ) -> Result<(TenantConfig, String), ControlError> {
        let tenants = self.plane.tenants.read().expect("lock");
        let config = config::check_new(
            &self.plane.dir,
            &tenants,
            file_name,
            content,
            self.plane.catalogue,
        )?;
        drop(tenants);
        self.check_retired_credentials(file_name, &config)?;
        let group = group_of(&config);
        Ok((config, group))
    }

    /// Refuses a credential another tenant retired and still accepts (its rotation overlap):
    /// whoever still holds it would reach this tenant.
    fn check_retired_credentials(
        &self,
        file_name: &str,
        config: &TenantConfig,
    ) -> Result<(), ControlError> {
        let digest = crate::auth::digest_hex(config.credentials.resolve().as_bytes());
        let known = self.plane.known.lock().expect("lock");
        let taken = known.rotations.iter().find(|(other, retired)| {
            **other != config.id && retired.sha256 == digest && !retired.remaining().is_zero()
        });
        match taken {
            Some((other, retired)) => Err(ControlError::InvalidTenant(ConfigError::Invalid(vec![
                config::FieldError {
                    source: file_name.to_owned(),
                    field: "credentials".into(),
                    message: format!(
                        "the credential tenant {other} retired, still accepted for {}s (its \
                         rotation overlap): each business line's backend holds its own",
                        retired.remaining().as_secs()
                    ),
                },
            ]))),
            None => Ok(()),
        }
    }

    /// Onboards a tenant file: the process that would serve it (a new one if it is isolated,
    /// the shared one otherwise, without restarting any other) validates and serves it first;
    /// only then is the file written into the tenants folder. If that process cannot serve it
    /// within [`SERVE_WITHIN`], nothing is kept and the reason is returned.
    pub async fn add_tenant(
        &self,
        file_name: &str,
        content: &str,
    ) -> Result<TenantConfig, ControlError> {
        self.lifecycle_here()?;
        let _edit = self.plane.edit.lock().await;
        let added = self.add_locked(file_name, content).await;
        if added.is_ok() {
            self.tenants_changed().await;
        }
        added
    }

    /// [`ControlPlane::add_tenant`], its edit lock held.
    async fn add_locked(
        &self,
        file_name: &str,
        content: &str,
    ) -> Result<TenantConfig, ControlError> {
        let (config, group) = self.check_addition(file_name, content)?;
        let tenant = config.tenant_id();
        let source = TenantSource {
            id: tenant.clone(),
            file: file_name.to_owned(),
            text: content.to_owned(),
            previous_credential: None,
        };
        // the tenant's initial switches hold before its first call
        let initial = initial_switches_of(&config);
        for switch in &initial {
            self.plane.board.turn_off(switch.clone());
        }
        self.plane.supervisor.set_switches(self.switches());
        let version = self.plane.supervisor.set_tenant(&group, source.clone());
        let served = self.served(&group, &tenant, version).await;
        if let Err(reason) = served {
            // undone: the process forgets it, and so does everything here
            let undo = self.plane.supervisor.remove_tenant(&group, &tenant, false);
            self.plane.front.forget_tenant(&tenant);
            for switch in &initial {
                self.plane.board.turn_on(Some(&tenant), &switch.target);
            }
            self.plane.supervisor.set_switches(self.switches());
            let _ = self.plane.supervisor.wait_applied(undo, APPLY_WITHIN).await;
            return Err(ControlError::NotServed {
                tenant: tenant.to_string(),
                reason,
            });
        }
        // served and routed: the front door admits its callers from now on
        self.plane.front.serve_tenant(&config);
        self.keep(&config, source)?;
        self.plane
            .known
            .lock()
            .expect("lock")
            .tenants
            .insert(tenant);
        self.switches_changed().await?;
        Ok(config)
    }

    /// Applies a changed tenant file (limits, settings, services, credential, user keys,
    /// switch defaults) to the process serving the tenant, without a restart: validated as
    /// `tenant add` validates, served by its process first, written last. A changed
    /// credential leaves the previous one valid for `credentials.rotation_overlap_secs`. If
    /// the process cannot serve the new file, it goes back to the old one and nothing is kept.
    pub async fn update_tenant(
        &self,
        file_name: &str,
        content: &str,
    ) -> Result<TenantConfig, ControlError> {
        self.lifecycle_here()?;
        let _edit = self.plane.edit.lock().await;
        let updated = self.apply_update(file_name, content).await;
        if updated.is_ok() {
            self.tenants_changed().await;
        }
        updated
    }

    /// Starts, widens, promotes or rolls back the grey release of a tenant's service: its
    /// file changed as `meshctl grey` asks, applied as [`ControlPlane::update_tenant`] applies
    /// a file (calls and events of the users it includes use its major from then on).
    pub async fn grey(
        &self,
        id: &str,
        service: &str,
        change: &config::GreyChange,
    ) -> Result<TenantConfig, ControlError> {
        self.lifecycle_here()?;
        let _edit = self.plane.edit.lock().await;
        let tenant = self.tenant(id)?;
        let runs: Vec<String> = self
            .config_of(&tenant)?
            .enabled_services()
            .map(|(name, _)| name.to_owned())
            .collect();
        if !runs.iter().any(|name| name == service) {
            return Err(ControlError::NotRun {
                tenant: tenant.to_string(),
                service: service.to_owned(),
                runs: runs.join(", "),
            });
        }
        let source = self.plane.sources.lock().expect("lock")[&tenant].clone();
        let text = config::with_grey(&source.text, service, change).map_err(|e| {
            ControlError::Refused(format!("{}: services.{service}: {e}", source.file))
        })?;
        let updated = self.apply_update(&source.file, &text).await;
        if updated.is_ok() {
            self.tenants_changed().await;
        }
        updated
    }

    /// Validates a changed file of a tenant served already ([`config::check_update`]), and
    /// that its credential is no other tenant's retired one.
    fn check_change(&self, file_name: &str, content: &str) -> Result<TenantConfig, ControlError> {
        let config = {
            let tenants = self.plane.tenants.read().expect("lock");
            config::check_update(
                &self.plane.dir,
                &tenants,
                file_name,
                content,
                self.plane.catalogue,
            )?
        };
        self.check_retired_credentials(file_name, &config)?;
        Ok(config)
    }

    /// [`ControlPlane::update_tenant`], its edit lock held.
    async fn apply_update(
        &self,
        file_name: &str,
        content: &str,
    ) -> Result<TenantConfig, ControlError> {
        let config = self.check_change(file_name, content)?;
        let tenant = config.tenant_id();
        let old = self.config_of(&tenant)?;
        let group = group_of(&config);
        let old_source = self.plane.sources.lock().expect("lock")[&tenant].clone();
        let (old_token, token) = (old.credentials.resolve(), config.credentials.resolve());
        let previous_credential = if old_token == token {
            old_source.previous_credential.clone()
        } else {
            Some(PreviousCredential::replaced(
                &old_token,
                Duration::from_secs(config.credentials.rotation_overlap_secs),
            ))
        };
        let source = TenantSource {
            text: content.to_owned(),
            previous_credential,
            ..old_source.clone()
        };
        let version = self.plane.supervisor.set_tenant(&group, source.clone());
        if let Err(reason) = self.served(&group, &tenant, version).await {
            let undo = self.plane.supervisor.set_tenant(&group, old_source);
            let _ = self.served(&group, &tenant, undo).await;
            return Err(ControlError::NotServed {
                tenant: tenant.to_string(),
                reason,
            });
        }
        // the front door takes the new credential (the old one overlapping, across a restart
        // of the mesh too) and the new switch defaults hold; a default the file no longer
        // declares is switched back on
        self.plane.front.serve_tenant(&config);
        {
            let mut known = self.plane.known.lock().expect("lock");
            match &source.previous_credential {
                Some(previous) => known.rotations.insert(tenant.clone(), previous.clone()),
                None => known.rotations.remove(&tenant),
            };
        }
        for switch in initial_switches_of(&old) {
            if let Some(current) = self
                .switches()
                .into_iter()
                .find(|s| s.tenant.as_ref() == Some(&tenant) && s.target == switch.target)
                && current.changed_by == switch.changed_by
            {
                self.plane.board.turn_on(Some(&tenant), &switch.target);
            }
        }
        for switch in initial_switches_of(&config) {
            self.plane.board.turn_off(switch);
        }
        let applied = self.switches_changed().await?;
        self.keep(&config, source)?;
        self.await_version(applied).await?;
        Ok(config)
    }

    /// Removes a tenant: the front door stops admitting its calls (refused as an unknown
    /// tenant's), its process drains the calls it has, stops its consumers and lets its
    /// terminals go, and its file leaves the tenants folder (kept under the state folder's
    /// `removed/`). Its stored data stays unless `purge_data`. Returns its last config.
    pub async fn remove_tenant(
        &self,
        id: &str,
        purge_data: bool,
    ) -> Result<TenantConfig, ControlError> {
        self.lifecycle_here()?;
        let _edit = self.plane.edit.lock().await;
        let removed = self.remove_locked(id, purge_data).await;
        if removed.is_ok() {
            self.tenants_changed().await;
        }
        removed
    }

    /// [`ControlPlane::remove_tenant`], its edit lock held.
    async fn remove_locked(
        &self,
        id: &str,
        purge_data: bool,
    ) -> Result<TenantConfig, ControlError> {
        let tenant = self.tenant(id)?;
        let config = self.config_of(&tenant)?;
        let group = group_of(&config);
        self.plane.front.forget_tenant(&tenant);
        let version = self
            .plane
            .supervisor
            .remove_tenant(&group, &tenant, purge_data);
        // its own process stops once drained; a shared one confirms the removal
        let _ = self
            .plane
            .supervisor
            .wait_applied(version, DRAIN_WITHIN)
            .await;
        let file = {
            let mut tenants = self.plane.tenants.write().expect("lock");
            tenants.tenants.remove(id);
            tenants.files.remove(id)
        };
        self.plane.sources.lock().expect("lock").remove(&tenant);
        if let Some(file) = file {
            let kept = self.plane.store.path().with_file_name("removed");
            std::fs::create_dir_all(&kept).map_err(|source| ControlError::Io {
                path: kept.clone(),
                source,
            })?;
            let to = kept.join(file.file_name().unwrap_or_default());
            std::fs::rename(&file, &to)
                .map_err(|source| ControlError::Io { path: file, source })?;
        }
        // its switches go with it
        for switch in self.switches() {
            if switch.tenant.as_ref() == Some(&tenant) {
                self.plane.board.turn_on(Some(&tenant), &switch.target);
            }
        }
        {
            let mut known = self.plane.known.lock().expect("lock");
            known.tenants.remove(&tenant);
            known.rotations.remove(&tenant);
        }
        let applied = self.switches_changed().await?;
        self.await_version(applied).await?;
        Ok(config)
    }

    /// Moves a tenant to a process of its own or into the shared one, without failing its
    /// calls: the new process serves it, the front door routes it there, then the old one
    /// drains it and lets it go; its file then says where it runs. Needs stored data outside
    /// the workers (PostgreSQL), or the tenant's messages would stay behind.
    pub async fn move_tenant(
        &self,
        id: &str,
        process: config::ProcessIsolation,
    ) -> Result<TenantConfig, ControlError> {
        self.lifecycle_here()?;
        let _edit = self.plane.edit.lock().await;
        let moved = self.move_locked(id, process).await;
        if moved.is_ok() {
            self.tenants_changed().await;
        }
        moved
    }

    /// [`ControlPlane::move_tenant`], its edit lock held.
    async fn move_locked(
        &self,
        id: &str,
        process: config::ProcessIsolation,
    ) -> Result<TenantConfig, ControlError> {
        let tenant = self.tenant(id)?;
        let old = self.config_of(&tenant)?;
        let from = group_of(&old);
        if old.isolation.process == process {
            return Err(ControlError::Refused(format!(
                "tenant {tenant} runs in process group {from} already"
            )));
        }
        if old.enabled_services().any(|(name, _)| name == "message")
            && !self
                .plane
                .data_shared
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(ControlError::Refused(format!(
                "tenant {tenant} keeps its messages in the embedded store of its process; moving \
                 it would leave them behind: run the mesh on PostgreSQL (MESH_STORE_POSTGRES) to \
                 move tenants"
            )));
        }
        let old_source = self.plane.sources.lock().expect("lock")[&tenant].clone();
        let text = config::with_process(&old_source.text, process)
            .map_err(|e| ControlError::Refused(format!("{}: {e}", old_source.file)))?;
        let config = {
            // validated as the file of a tenant that runs there already: the move is the one
            // change of process an update may carry
            let mut tenants = self.plane.tenants.read().expect("lock").clone();
            if let Some(moved) = tenants.tenants.get_mut(tenant.as_str()) {
                moved.isolation.process = process;
            }
            config::check_update(
                &self.plane.dir,
                &tenants,
                &old_source.file,
                &text,
                self.plane.catalogue,
            )?
        };
        let to = group_of(&config);
        let source = TenantSource {
            text: text.clone(),
            ..old_source.clone()
        };
        // 1. the new process serves it (routed still to the old)
        let version = self.plane.supervisor.set_tenant(&to, source.clone());
        if let Err(reason) = self.served(&to, &tenant, version).await {
            let undo = self.plane.supervisor.remove_tenant(&to, &tenant, false);
            let _ = self.plane.supervisor.wait_applied(undo, APPLY_WITHIN).await;
            return Err(ControlError::NotServed {
                tenant: tenant.to_string(),
                reason,
            });
        }
        // 2. its calls go there
        let routed = self.plane.supervisor.route(&tenant, &to);
        self.await_version(routed).await?;
        let address = self
            .plane
            .supervisor
            .processes()
            .into_iter()
            .find(|p| p.group == to)
            .and_then(|p| p.address);
        let deadline = Instant::now() + APPLY_WITHIN;
        while address.is_some() && self.plane.front.address(&tenant) != address {
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // 3. the old process drains it and lets it go (an own process then stops)
        let version = self.plane.supervisor.remove_tenant(&from, &tenant, false);
        let _ = self
            .plane
            .supervisor
            .wait_applied(version, DRAIN_WITHIN)
            .await;
        self.keep(&config, source)?;
        Ok(config)
    }

    /// Waits until `group` applied `version`, then whether it serves `tenant` (and the front
    /// door routes it, when it is routed there).
    async fn served(&self, group: &str, tenant: &TenantId, version: u64) -> Result<(), String> {
        self.plane
            .supervisor
            .wait_tenant(group, tenant, version, SERVE_WITHIN)
            .await
    }

    fn config_of(&self, tenant: &TenantId) -> Result<TenantConfig, ControlError> {
        let tenants = self.plane.tenants.read().expect("lock");
        tenants
            .get(tenant.as_str())
            .cloned()
            .ok_or_else(|| ControlError::UnknownTenant(tenant.to_string(), String::new()))
    }

    /// Keeps a tenant's file once its process serves it: written into the tenants folder
    /// whole or not at all (a crash mid-write leaves the old one), and known from now on.
    fn keep(&self, config: &TenantConfig, source: TenantSource) -> Result<(), ControlError> {
        let path = self.plane.dir.join(&source.file);
        let io = |source| ControlError::Io {
            path: path.clone(),
            source,
        };
        let scratch = path.with_extension("toml.partial");
        std::fs::write(&scratch, &source.text).map_err(io)?;
        std::fs::rename(&scratch, &path).map_err(io)?;
        {
            let mut tenants = self.plane.tenants.write().expect("lock");
            tenants
                .tenants
                .insert(config.id.to_string(), config.clone());
            tenants.files.insert(config.id.to_string(), path);
        }
        self.plane
            .sources
            .lock()
            .expect("lock")
            .insert(config.tenant_id(), source);
        Ok(())
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

    /// Runs the tenants' automatic degradation rules until `stop` resolves.
    pub async fn run_rules(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(RULE_TICK);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => self.check_rules().await,
            }
        }
    }

    async fn check_rules(&self) {
        let rules: Vec<(TenantId, config::AutoRule)> = {
            let tenants = self.plane.tenants.read().expect("lock");
            tenants
                .tenants
                .values()
                .flat_map(|c| c.auto_degrade.iter().map(|r| (c.tenant_id(), r.clone())))
                .collect()
        };
        for (tenant, rule) in rules {
            let stats = self.plane.front.window(
                &tenant,
                rule.watch_tier,
                Duration::from_secs(rule.window_secs.into()),
            );
            let target = SwitchTarget::TiersFrom(rule.switch_off_tiers_from);
            let by = format!("auto:{}", rule.name);
            let action = {
                let mut states = self.plane.rules.lock().expect("lock");
                let state = states
                    .entry((tenant.clone(), rule.name.clone()))
                    .or_default();
                let action = rules::step(&rule, &stats, state, Instant::now());
                let current = self
                    .switches()
                    .into_iter()
                    .find(|s| s.tenant.as_ref() == Some(&tenant) && s.target == target);
                match (&action, current) {
                    // an operator holds the same switch: theirs to restore, not the rule's
                    (RuleAction::TurnOff(_), Some(_)) => {
                        *state = RuleState::default();
                        RuleAction::Nothing
                    }
                    (RuleAction::TurnOn, Some(s)) if s.changed_by != by => RuleAction::Nothing,
                    _ => action,
                }
            };
            let switch = Switch {
                tenant: Some(tenant.clone()),
                target: target.clone(),
                reason: String::new(),
                changed_by: by.clone(),
                changed_at: SystemTime::now(),
            };
            let scope = switch.scope();
            let (turn_off, reason, result) = match action {
                RuleAction::Nothing => continue,
                RuleAction::TurnOff(reason) => {
                    tracing::warn!(%tenant, rule = rule.name, %target, %reason, "automatic degradation: switched off");
                    let result = self
                        .change(
                            Switch {
                                reason: reason.clone(),
                                ..switch
                            },
                            false,
                        )
                        .await;
                    (true, reason, result)
                }
                RuleAction::TurnOn => {
                    tracing::warn!(%tenant, rule = rule.name, %target, "automatic degradation: calm again, switched back on");
                    (false, String::new(), self.change(switch, true).await)
                }
            };
            let entry = super::audit::AuditEntry::new(
                by.clone(),
                if turn_off { "switch.off" } else { "switch.on" },
                scope,
            )
            .tenant(tenant.to_string())
            .before(if turn_off { "on" } else { "off" })
            .after(if turn_off { "off" } else { "on" })
            .reason(reason);
            let entry = match &result {
                Ok(_) => entry,
                Err(err) => entry.refused(err),
            };
            if let Err(err) = self.plane.audit.record(entry).await {
                tracing::error!(error = %err, "automatic degradation not written to the audit log");
            }
            if let Err(err) = result {
                tracing::error!(%tenant, rule = rule.name, error = %err, "automatic degradation failed");
            }
        }
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

//! Process isolation: one OS process per tenant group, supervised.
//!
//! Tenants with `isolation.process = "own"` get a process each; the others share one. The
//! supervisor starts each group as a worker (a command it is given, e.g. `mesh worker`), hands
//! it the mesh's current [`WorkerState`] (switches, tenants) on its stdin before it serves, waits
//! for `READY <address>`, and routes the group's tenants to that address through the
//! [`FrontDoor`]. Every later change of state reaches every worker the same way, and each
//! confirms it (`APPLIED <version>`), so a change can be awaited until it holds everywhere.
//!
//! A worker that exits is restarted with backoff, alone: the other groups keep serving. On
//! shutdown, workers are asked to stop (their stdin closes) and killed if they do not within a
//! grace period. A worker whose supervisor dies sees its stdin close too.
//!
//! The tenant lifecycle is a change of that state: a tenant added to a group, its file changed,
//! removed from a group (the worker drains its calls first), or routed to another group (a
//! move: served by both, routed to the new one, then removed from the old). A worker that
//! cannot serve one tenant says so in its `APPLIED` line; that tenant is down with its reason
//! ([`ProcessInfo::down`]) and not routed, its neighbours keep serving.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use mesh_contract::{Backoff, TenantId};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, Command},
    sync::{mpsc, watch},
    task::JoinHandle,
};

pub mod protocol;
mod supervise;

use supervise::*;

// the configuration and the crates below, as the modules name them (`crate::layers`)
use mesh_config::tenant as config;
use mesh_front_door::FrontDoor;
use mesh_stack::{auth, layers};

use crate::{
    config::{ProcessIsolation, Tenants},
    layers::Switch,
    protocol::{TenantSource, WorkerLine, WorkerState, WorkerStats},
};

/// Tenants served by one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// `shared`, or the tenant id for a tenant with a process of its own.
    pub name: String,
    /// Its tenants.
    pub tenants: Vec<TenantId>,
}

/// The process groups of a configuration.
pub fn groups(tenants: &Tenants) -> Vec<Group> {
    let mut shared = Vec::new();
    let mut groups = Vec::new();
    for config in tenants.tenants.values() {
        match config.isolation.process {
            ProcessIsolation::Own => groups.push(Group {
                name: config.id.to_string(),
                tenants: vec![config.tenant_id()],
            }),
            ProcessIsolation::Shared => shared.push(config.tenant_id()),
        }
    }
    if !shared.is_empty() {
        groups.insert(
            0,
            Group {
                name: SHARED_GROUP.into(),
                tenants: shared,
            },
        );
    }
    groups
}

/// How to start a worker; the supervisor appends `--tenant a,b`.
#[derive(Clone, Debug)]
pub struct WorkerCommand {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables set for it (on top of the supervisor's own).
    pub env: Vec<(String, String)>,
}

/// What the supervisor reports, for the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SupervisorEvent {
    /// A worker serves its group.
    Serving {
        /// Group name.
        group: String,
        /// Worker process id.
        pid: u32,
        /// Where it listens.
        address: String,
        /// Its tenants.
        tenants: Vec<TenantId>,
    },
    /// A worker ended on its own (crashed, killed) and is restarted after `restart_in`.
    Exited {
        /// Group name.
        group: String,
        /// Worker process id.
        pid: u32,
        /// How it ended.
        status: String,
        /// Backoff before the restart.
        restart_in: Duration,
    },
    /// A worker could not be started; retried after `retry_in`.
    StartFailed {
        /// Group name.
        group: String,
        /// Why.
        reason: String,
        /// Backoff.
        retry_in: Duration,
    },
    /// A worker stopped because the supervisor is shutting down.
    Stopped {
        /// Group name.
        group: String,
        /// Worker process id.
        pid: u32,
    },
}

/// One group's process, as `meshctl status` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessInfo {
    /// Group name.
    pub group: String,
    /// Its tenants.
    pub tenants: Vec<TenantId>,
    /// Worker process id, while one runs.
    pub pid: Option<u32>,
    /// Where it serves, once ready.
    pub address: Option<String>,
    /// Times it was restarted.
    pub restarts: u32,
    /// Since when it serves.
    pub serving_since: Option<Instant>,
    /// What it last reported.
    pub stats: WorkerStats,
    /// Where its Prometheus scrape endpoint listens, once it said so.
    pub metrics_address: Option<String>,
    /// Tenants of the group it could not serve, and why.
    pub down: BTreeMap<TenantId, String>,
    /// Why its last run ended or failed to start, if it did.
    pub last_failure: Option<String>,
}

/// Backoff between restarts: doubles from `FIRST_BACKOFF` to `MAX_BACKOFF`, and starts over
/// once a worker has stayed up for `STABLE_AFTER`.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How long a worker may take to print its READY line.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping worker may take before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What every worker should run with: one version for the whole mesh.
#[derive(Clone, Debug, Default)]
struct Desired {
    version: u64,
    switches: Arc<Vec<Switch>>,
    groups: Arc<BTreeMap<String, Vec<TenantSource>>>,
    /// The group each tenant's calls go to (during a move, one of the two serving it).
    routes: Arc<BTreeMap<TenantId, String>>,
    purge: Arc<Vec<TenantId>>,
}

impl Desired {
    fn for_group(&self, group: &str) -> WorkerState {
        WorkerState {
            version: self.version,
            switches: self.switches.to_vec(),
            tenants: self.groups.get(group).cloned().unwrap_or_default(),
            purge: self.purge.to_vec(),
        }
    }

    fn routed_to(&self, tenant: &TenantId, group: &str) -> bool {
        self.routes.get(tenant).is_some_and(|g| g == group)
    }
}

struct GroupSlot {
    info: ProcessInfo,
    applied: watch::Sender<u64>,
}

struct Inner {
    command: WorkerCommand,
    front: FrontDoor,
    events: mpsc::UnboundedSender<SupervisorEvent>,
    shutdown: watch::Receiver<bool>,
    desired: watch::Sender<Desired>,
    slots: Mutex<BTreeMap<String, GroupSlot>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Held while a group is retired or given a tenant, so a tenant never lands in a group
    /// whose supervision just ended.
    membership: Mutex<()>,
}

/// Runs the tenant groups, each in a worker process of its own, and keeps every worker on the
/// mesh's current state. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("groups", &self.inner.desired.borrow().groups)
            .finish()
    }
}

/// What a supervisor is told: how to start a worker, and the switches a worker starts with.
/// [`Config::build`] makes the [`Supervisor`]; it runs as groups are given to it
/// ([`Supervisor::start_group`], which the control plane does for its tenants).
#[derive(Clone, Debug)]
pub struct Config {
    /// How to start a worker.
    pub command: WorkerCommand,
    /// The switch state a worker starts with (the control plane's saved one).
    pub switches: Vec<Switch>,
}

impl Config {
    /// The supervisor, routing each group's tenants through `front`, reporting to `events`,
    /// stopping every worker once `shutdown` turns true.
    pub fn build(
        self,
        front: FrontDoor,
        events: mpsc::UnboundedSender<SupervisorEvent>,
        shutdown: watch::Receiver<bool>,
    ) -> Supervisor {
        Supervisor::new(self.command, front, events, shutdown, self.switches)
    }
}

impl Supervisor {
    /// A supervisor starting workers with `command`, routing through `front`, reporting to
    /// `events`, with `switches` as the initial state; it stops every worker once `shutdown`
    /// turns true.
    pub fn new(
        command: WorkerCommand,
        front: FrontDoor,
        events: mpsc::UnboundedSender<SupervisorEvent>,
        shutdown: watch::Receiver<bool>,
        switches: Vec<Switch>,
    ) -> Self {
        let desired = Desired {
            version: 1,
            switches: Arc::new(switches),
            ..Desired::default()
        };
        Self {
            inner: Arc::new(Inner {
                command,
                front,
                events,
                shutdown,
                desired: watch::channel(desired).0,
                slots: Mutex::default(),
                tasks: Mutex::default(),
                membership: Mutex::default(),
            }),
        }
    }

    /// Starts (and from then on supervises) a group's worker, serving `tenants` (each routed
    /// to it).
    pub fn start_group(&self, name: &str, tenants: Vec<TenantSource>) -> u64 {
        let version = self.change(|desired| {
            let mut routes = (*desired.routes).clone();
            for tenant in &tenants {
                routes
                    .entry(tenant.id.clone())
                    .or_insert_with(|| name.to_owned());
            }
            desired.routes = Arc::new(routes);
            let mut groups = (*desired.groups).clone();
            groups.insert(name.to_owned(), tenants.clone());
            desired.groups = Arc::new(groups);
        });
        self.inner.slots.lock().expect("lock").insert(
            name.to_owned(),
            GroupSlot {
                info: ProcessInfo {
                    group: name.to_owned(),
                    tenants: Vec::new(),
                    pid: None,
                    address: None,
                    restarts: 0,
                    serving_since: None,
                    stats: WorkerStats::default(),
                    metrics_address: None,
                    down: BTreeMap::new(),
                    last_failure: None,
                },
                applied: watch::channel(0).0,
            },
        );
        let task = tokio::spawn(supervise_group(self.inner.clone(), name.to_owned()));
        self.inner.tasks.lock().expect("lock").push(task);
        version
    }

    /// Has `group` serve `tenant` from its file: a tenant onboarded at run time (in a new
    /// process if the group has none yet, else taken by the running one without a restart),
    /// or a changed file of one it serves. The tenant is routed to `group` unless it is
    /// routed to another already (a move routes it with [`Supervisor::route`]). Returns the
    /// version to await with [`Supervisor::wait_tenant`].
    pub fn set_tenant(&self, group: &str, tenant: TenantSource) -> u64 {
        // not while a group left empty retires (see `supervise_group`)
        let _membership = self.inner.membership.lock().expect("lock");
        let exists = self.inner.desired.borrow().groups.contains_key(group);
        if !exists {
            return self.start_group(group, vec![tenant]);
        }
        self.change(|desired| {
            let mut groups = (*desired.groups).clone();
            let served = groups.entry(group.to_owned()).or_default();
            served.retain(|t| t.id != tenant.id);
            served.push(tenant.clone());
            desired.groups = Arc::new(groups);
            let mut routes = (*desired.routes).clone();
            routes
                .entry(tenant.id.clone())
                .or_insert_with(|| group.to_owned());
            desired.routes = Arc::new(routes);
            let mut purge = (*desired.purge).clone();
            purge.retain(|t| *t != tenant.id);
            desired.purge = Arc::new(purge);
        })
    }

    /// Routes `tenant`'s calls to `group` (which serves it) once its worker applied this
    /// version. Returns the version.
    pub fn route(&self, tenant: &TenantId, group: &str) -> u64 {
        self.change(|desired| {
            let mut routes = (*desired.routes).clone();
            routes.insert(tenant.clone(), group.to_owned());
            desired.routes = Arc::new(routes);
        })
    }

    /// Has `group` stop serving `tenant` (its worker drains the tenant's calls, then stops
    /// its consumers), deleting its stored data too when `purge`; a group left with no tenant
    /// stops. Returns the version to await.
    pub fn remove_tenant(&self, group: &str, tenant: &TenantId, purge: bool) -> u64 {
        self.change(|desired| {
            let mut groups = (*desired.groups).clone();
            // a group left empty stays listed until its worker applied this (drained the
            // tenant, deleted its data): then the worker stops
            if let Some(served) = groups.get_mut(group) {
                served.retain(|t| t.id != *tenant);
            }
            desired.groups = Arc::new(groups);
            if desired.routed_to(tenant, group) {
                let mut routes = (*desired.routes).clone();
                routes.remove(tenant);
                desired.routes = Arc::new(routes);
            }
            if purge {
                let mut list = (*desired.purge).clone();
                list.push(tenant.clone());
                desired.purge = Arc::new(list);
            }
        })
    }

    /// Waits until `group`'s worker applied `version` and, when `tenant`'s calls go to that
    /// group, the front door routes them there; then whether it serves `tenant`, or the
    /// reason it does not (the worker's, or why the group has no worker serving).
    pub async fn wait_tenant(
        &self,
        group: &str,
        tenant: &TenantId,
        version: u64,
        within: Duration,
    ) -> Result<(), String> {
        let applied = self
            .inner
            .slots
            .lock()
            .expect("lock")
            .get(group)
            .map(|slot| slot.applied.subscribe());
        let Some(mut applied) = applied else {
            return Err(format!("process group {group} is not running"));
        };
        let deadline = tokio::time::Instant::now() + within;
        let mut in_time = matches!(
            tokio::time::timeout_at(deadline, applied.wait_for(|v| *v >= version)).await,
            Ok(Ok(_))
        );
        // a new process confirms its state before it listens: routed once it does
        let routed_here = self.inner.desired.borrow().routed_to(tenant, group);
        while routed_here && in_time {
            let (address, down) = {
                let slots = self.inner.slots.lock().expect("lock");
                let info = slots.get(group).map(|slot| &slot.info);
                (
                    info.and_then(|i| i.address.clone()),
                    info.is_some_and(|i| i.down.contains_key(tenant)),
                )
            };
            if down || (address.is_some() && self.inner.front.address(tenant) == address) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                in_time = false;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let slots = self.inner.slots.lock().expect("lock");
        let info = slots.get(group).map(|slot| &slot.info);
        if !in_time {
            return Err(match info.and_then(|i| i.last_failure.as_deref()) {
                Some(failure) => {
                    format!("process group {group} did not serve it within {within:?}: {failure}")
                }
                None => format!("process group {group} did not confirm within {within:?}"),
            });
        }
        match info.and_then(|i| i.down.get(tenant)) {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }

    /// Hands every worker a new set of switches. Returns the version to await.
    pub fn set_switches(&self, switches: Vec<Switch>) -> u64 {
        self.change(|desired| desired.switches = Arc::new(switches))
    }

    /// Waits until every running worker has applied `version` (a worker starting later gets
    /// it before it serves). Returns how many applied it, or the groups that did not in time.
    pub async fn wait_applied(&self, version: u64, within: Duration) -> Result<usize, Vec<String>> {
        let running: Vec<(String, watch::Receiver<u64>)> = self
            .inner
            .slots
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, slot)| slot.info.pid.is_some())
            .map(|(name, slot)| (name.clone(), slot.applied.subscribe()))
            .collect();
        let deadline = tokio::time::Instant::now() + within;
        let mut late = Vec::new();
        for (name, mut applied) in running.iter().cloned() {
            let done = tokio::time::timeout_at(deadline, applied.wait_for(|v| *v >= version)).await;
            if !matches!(done, Ok(Ok(_))) {
                late.push(name);
            }
        }
        if late.is_empty() {
            Ok(running.len())
        } else {
            Err(late)
        }
    }

    /// Every group's process.
    pub fn processes(&self) -> Vec<ProcessInfo> {
        self.inner
            .slots
            .lock()
            .expect("lock")
            .values()
            .map(|slot| slot.info.clone())
            .collect()
    }

    /// Waits until every group has stopped (after shutdown).
    pub async fn wait(&self) {
        loop {
            let task = self.inner.tasks.lock().expect("lock").pop();
            match task {
                Some(task) => {
                    let _ = task.await;
                }
                None => return,
            }
        }
    }

    fn change(&self, edit: impl FnOnce(&mut Desired)) -> u64 {
        let mut version = 0;
        self.inner.desired.send_modify(|desired| {
            edit(desired);
            desired.version += 1;
            version = desired.version;
        });
        version
    }
}

pub use crate::config::SHARED_GROUP;

impl Inner {
    fn update(&self, group: &str, edit: impl FnOnce(&mut GroupSlot)) {
        if let Some(slot) = self.slots.lock().expect("lock").get_mut(group) {
            edit(slot);
        }
    }

    fn report(&self, event: SupervisorEvent) {
        let _ = self.events.send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Credentials, Isolation, TenantConfig};

    fn tenant(id: &str, process: ProcessIsolation) -> TenantConfig {
        TenantConfig {
            id: mesh_contract::TenantId::new(id).unwrap(),
            display_name: id.into(),
            data_namespace: id.into(),
            credentials: Credentials {
                token: Some("a-long-token".into()),
                rotation_overlap_secs: 300,
                ..Default::default()
            },
            users: None,
            services: Default::default(),
            broker: Default::default(),
            isolation: Isolation {
                process,
                threads: 0,
            },
            limits: Default::default(),
            switches: Default::default(),
            auto_degrade: Vec::new(),
            channels: Default::default(),
            web: Default::default(),
        }
    }

    #[test]
    fn own_process_tenants_get_a_group_each_and_the_rest_share_one() {
        let mut tenants = Tenants::default();
        for (id, process) in [
            ("mall", ProcessIsolation::Shared),
            ("finance", ProcessIsolation::Own),
            ("paipai", ProcessIsolation::Shared),
        ] {
            tenants.tenants.insert(id.into(), tenant(id, process));
        }
        let names: Vec<(String, Vec<String>)> = groups(&tenants)
            .into_iter()
            .map(|g| (g.name, g.tenants.iter().map(|t| t.to_string()).collect()))
            .collect();
        assert_eq!(
            names,
            [
                (
                    "shared".to_owned(),
                    vec!["mall".to_owned(), "paipai".to_owned()]
                ),
                ("finance".to_owned(), vec!["finance".to_owned()]),
            ]
        );
    }
}

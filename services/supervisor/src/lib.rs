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

/// A running worker. Its stdin is held apart: writing to it is how the worker gets its state,
/// closing it is how the worker is told to stop.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<WorkerLine>,
}

fn spawn(command: &WorkerCommand, group: &str, tenants: &[TenantId]) -> Result<Worker, String> {
    let list: Vec<&str> = tenants.iter().map(TenantId::as_str).collect();
    let mut child = Command::new(&command.program)
        .args(&command.args)
        .envs(command.env.iter().map(|(k, v)| (k, v)))
        // named in the worker's telemetry resource
        .env("MESH_WORKER_GROUP", group)
        .arg("--tenant")
        .arg(list.join(","))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // its own process group: a Ctrl-C at the terminal reaches the supervisor, which stops
        // the workers in order, not every worker at once behind its back
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", command.program.display()))?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("piped");
    let (tx, lines) = mpsc::unbounded_channel();
    let name = group.to_owned();
    // reads everything the worker prints, so it never blocks on a full pipe
    tokio::spawn(async move {
        let mut stdout = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = stdout.next_line().await {
            match WorkerLine::parse(&line) {
                WorkerLine::Output(text) => println!("[{name}] {text}"),
                parsed => {
                    if tx.send(parsed).is_err() {
                        break;
                    }
                }
            }
        }
    });
    Ok(Worker {
        child,
        stdin,
        lines,
    })
}

async fn send_state(stdin: &mut Option<ChildStdin>, state: &WorkerState) {
    if let Some(pipe) = stdin {
        let mut line = state.to_line();
        line.push('\n');
        if pipe.write_all(line.as_bytes()).await.is_err() || pipe.flush().await.is_err() {
            // the worker is gone; its exit is noticed (and reported) by the group's loop
            *stdin = None;
        }
    }
}

async fn stop(worker: Worker) -> Option<ExitStatus> {
    let Worker {
        mut child, stdin, ..
    } = worker;
    drop(stdin);
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = child.kill().await;
            child.wait().await.ok()
        }
    }
}

/// How one run of a worker ended.
enum RunEnd {
    Exited(String),
    NotReady(String),
    /// The group has no tenant left: its worker stops for good.
    Retired,
    Shutdown,
}

/// Reports a start that failed and waits out the next backoff; true when the
/// supervisor is shutting down instead.
async fn start_failed(
    inner: &Inner,
    group: &str,
    reason: String,
    backoff: &mut Backoff,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let retry_in = backoff.next_delay();
    inner.update(group, |slot| slot.info.last_failure = Some(reason.clone()));
    inner.report(SupervisorEvent::StartFailed {
        group: group.to_owned(),
        reason,
        retry_in,
    });
    wait_or_shutdown(shutdown, retry_in).await
}

async fn supervise_group(inner: Arc<Inner>, group: String) {
    let mut shutdown = inner.shutdown.clone();
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    while !*shutdown.borrow() {
        let mut desired = inner.desired.subscribe();
        if retire(&inner, &group) {
            return;
        }
        let state = desired.borrow_and_update().for_group(&group);
        let ids: Vec<TenantId> = state.tenants.iter().map(|t| t.id.clone()).collect();
        let mut worker = match spawn(&inner.command, &group, &ids) {
            Ok(worker) => worker,
            Err(reason) => {
                if start_failed(&inner, &group, reason, &mut backoff, &mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        let pid = worker.child.id().unwrap_or_default();
        inner.update(&group, |slot| {
            slot.info.pid = Some(pid);
            slot.applied.send_replace(0);
        });
        let started = Instant::now();
        let end = run_worker(
            &inner,
            &group,
            &mut worker,
            &mut desired,
            state,
            &mut shutdown,
        )
        .await;
        // leaving is a protocol: a worker stopped with the node drains first (its terminals
        // are told to attach again elsewhere through the routes they hold), and leaves the
        // front door's routes only once it is gone; cutting the routes first would end its
        // terminals' streams without a word
        let worker = if matches!(end, RunEnd::Shutdown) {
            stop(worker).await;
            None
        } else {
            Some(worker)
        };
        let (served, address) = inner
            .slots
            .lock()
            .expect("lock")
            .get(&group)
            .map(|slot| (slot.info.tenants.clone(), slot.info.address.clone()))
            .unwrap_or_default();
        if let Some(address) = address {
            for tenant in &served {
                unroute_from(&inner, tenant, &address);
            }
        }
        inner.update(&group, |slot| {
            slot.info.pid = None;
            slot.info.address = None;
            slot.info.metrics_address = None;
            slot.info.serving_since = None;
            slot.info.tenants.clear();
        });
        let status = match end {
            RunEnd::Retired => {
                if let Some(worker) = worker {
                    stop(worker).await;
                }
                inner.report(SupervisorEvent::Stopped {
                    group: group.clone(),
                    pid,
                });
                // retired for good at the top of the loop, unless given a tenant meanwhile
                continue;
            }
            RunEnd::Shutdown => {
                inner.report(SupervisorEvent::Stopped {
                    group: group.clone(),
                    pid,
                });
                return;
            }
            RunEnd::Exited(status) => status,
            RunEnd::NotReady(reason) => {
                inner.update(&group, |slot| slot.info.last_failure = Some(reason.clone()));
                if let Some(worker) = worker {
                    stop(worker).await;
                }
                if start_failed(&inner, &group, reason, &mut backoff, &mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        if started.elapsed() >= STABLE_AFTER {
            backoff.reset();
        }
        let restart_in = backoff.next_delay();
        inner.update(&group, |slot| {
            slot.info.restarts += 1;
            slot.info.last_failure = Some(format!("its worker exited ({status})"));
        });
        inner.report(SupervisorEvent::Exited {
            group: group.clone(),
            pid,
            status,
            restart_in,
        });
        if wait_or_shutdown(&mut shutdown, restart_in).await {
            return;
        }
    }
}

/// Feeds one worker its state and follows what it says until it ends (or shutdown).
async fn run_worker(
    inner: &Inner,
    group: &str,
    worker: &mut Worker,
    desired: &mut watch::Receiver<Desired>,
    first: WorkerState,
    shutdown: &mut watch::Receiver<bool>,
) -> RunEnd {
    let pid = worker.child.id().unwrap_or_default();
    // the tenants each version sent names, until the worker confirms it
    let mut sent: HashMap<u64, Vec<TenantId>> = HashMap::new();
    // the last version applied and its tenants: a worker confirms it again when a tenant it
    // could not serve is served after all
    let mut last: (u64, Vec<TenantId>) = (0, Vec::new());
    let mut serving: Vec<TenantId> = Vec::new();
    let mut address: Option<String> = None;
    sent.insert(
        first.version,
        first.tenants.iter().map(|t| t.id.clone()).collect(),
    );
    send_state(&mut worker.stdin, &first).await;
    let ready_by = tokio::time::sleep(START_TIMEOUT);
    tokio::pin!(ready_by);
    let mut lines_open = true;
    loop {
        tokio::select! {
            line = worker.lines.recv(), if lines_open => match line {
                Some(WorkerLine::Ready(addr)) => {
                    route_here(inner, group, &serving, &addr);
                    inner.update(group, |slot| {
                        slot.info.address = Some(addr.clone());
                        slot.info.serving_since = Some(Instant::now());
                        slot.info.last_failure = None;
                    });
                    inner.report(SupervisorEvent::Serving {
                        group: group.to_owned(),
                        pid,
                        address: addr.clone(),
                        tenants: serving.clone(),
                    });
                    address = Some(addr);
                }
                Some(WorkerLine::Applied { version, down }) => {
                    let tenants = sent
                        .get(&version)
                        .cloned()
                        .or_else(|| (last.0 == version).then(|| last.1.clone()));
                    if let Some(tenants) = &tenants {
                        last = (version, tenants.clone());
                        let now: Vec<TenantId> = tenants
                            .iter()
                            .filter(|t| !down.contains_key(*t))
                            .cloned()
                            .collect();
                        if let Some(addr) = &address {
                            // removed, moved away or down: no longer routed here
                            for gone in serving.iter().filter(|t| !now.contains(t)) {
                                unroute_from(inner, gone, addr);
                            }
                            route_here(inner, group, &now, addr);
                        }
                        serving = now;
                    }
                    let emptied = sent.get(&version).is_some_and(Vec::is_empty);
                    sent.retain(|v, _| *v > version);
                    // its last tenant drained and let go, and none given since: it stops
                    if emptied
                        && inner.desired.borrow().groups.get(group).is_none_or(Vec::is_empty)
                    {
                        inner.update(group, |slot| {
                            slot.info.tenants.clear();
                            slot.applied.send_replace(version);
                        });
                        return RunEnd::Retired;
                    }
                    inner.update(group, |slot| {
                        slot.info.tenants = serving.clone();
                        slot.info.down = down;
                        slot.applied.send_replace(version);
                    });
                }
                Some(WorkerLine::Stats(stats)) => inner.update(group, |slot| slot.info.stats = stats),
                Some(WorkerLine::Metrics(address)) => {
                    inner.update(group, |slot| slot.info.metrics_address = Some(address));
                }
                Some(WorkerLine::Output(_)) => {}
                None => lines_open = false,
            },
            changed = desired.changed() => {
                if changed.is_ok() {
                    let state = desired.borrow_and_update().for_group(group);
                    sent.insert(state.version, state.tenants.iter().map(|t| t.id.clone()).collect());
                    send_state(&mut worker.stdin, &state).await;
                }
            }
            status = worker.child.wait() => {
                return RunEnd::Exited(status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()));
            }
            _ = &mut ready_by, if address.is_none() => {
                return RunEnd::NotReady(format!("the worker did not report READY within {START_TIMEOUT:?}"));
            }
            _ = shutdown.changed() => return RunEnd::Shutdown,
        }
    }
}

/// Ends a group's supervision if it has no tenant left: it leaves the desired state (without
/// telling the workers: nothing they run changes) and the process list. True if it did.
fn retire(inner: &Inner, group: &str) -> bool {
    let _membership = inner.membership.lock().expect("lock");
    let mut retired = false;
    inner.desired.send_if_modified(|desired| {
        if desired.groups.get(group).is_none_or(Vec::is_empty) {
            let mut groups = (*desired.groups).clone();
            groups.remove(group);
            desired.groups = Arc::new(groups);
            retired = true;
        }
        false
    });
    if retired {
        inner.slots.lock().expect("lock").remove(group);
    }
    retired
}

/// Routes to `address` those of `tenants` whose calls go to `group`.
fn route_here(inner: &Inner, group: &str, tenants: &[TenantId], address: &str) {
    let desired = inner.desired.borrow().clone();
    for tenant in tenants.iter().filter(|t| desired.routed_to(t, group)) {
        if inner.front.address(tenant).as_deref() == Some(address) {
            continue;
        }
        if let Err(err) = inner.front.route(tenant.clone(), address) {
            tracing::error!(%tenant, %address, error = %err, "cannot route");
        }
    }
}

/// Stops routing `tenant` to `address`, if that is where it goes (a moved tenant is routed
/// elsewhere already).
fn unroute_from(inner: &Inner, tenant: &TenantId, address: &str) {
    if inner.front.address(tenant).as_deref() == Some(address) {
        inner.front.unroute(tenant);
    }
}

/// Sleeps `pause`; true if shutdown came first.
async fn wait_or_shutdown(shutdown: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(pause) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
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

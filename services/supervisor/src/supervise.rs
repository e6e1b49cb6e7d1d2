//! A group's life: its worker process started (with its state on stdin), watched, restarted
//! alone with backoff when it dies, stopped gracefully, and the front door's routes kept in step.

use super::*;

/// A running worker. Its stdin is held apart: writing to it is how the worker gets its state,
/// closing it is how the worker is told to stop.
pub(super) struct Worker {
    pub(super) child: Child,
    pub(super) stdin: Option<ChildStdin>,
    pub(super) lines: mpsc::UnboundedReceiver<WorkerLine>,
}

pub(super) fn spawn(
    command: &WorkerCommand,
    group: &str,
    tenants: &[TenantId],
) -> Result<Worker, String> {
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

pub(super) async fn send_state(stdin: &mut Option<ChildStdin>, state: &WorkerState) {
    if let Some(pipe) = stdin {
        let mut line = state.to_line();
        line.push('\n');
        if pipe.write_all(line.as_bytes()).await.is_err() || pipe.flush().await.is_err() {
            // the worker is gone; its exit is noticed (and reported) by the group's loop
            *stdin = None;
        }
    }
}

pub(super) async fn stop(worker: Worker) -> Option<ExitStatus> {
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
pub(super) enum RunEnd {
    Exited(String),
    NotReady(String),
    /// The group has no tenant left: its worker stops for good.
    Retired,
    Shutdown,
}

/// Reports a start that failed and waits out the next backoff; true when the
/// supervisor is shutting down instead.
pub(super) async fn start_failed(
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

pub(super) async fn supervise_group(inner: Arc<Inner>, group: String) {
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
pub(super) async fn run_worker(
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
pub(super) fn retire(inner: &Inner, group: &str) -> bool {
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
pub(super) fn route_here(inner: &Inner, group: &str, tenants: &[TenantId], address: &str) {
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
pub(super) fn unroute_from(inner: &Inner, tenant: &TenantId, address: &str) {
    if inner.front.address(tenant).as_deref() == Some(address) {
        inner.front.unroute(tenant);
    }
}

/// Sleeps `pause`; true if shutdown came first.
pub(super) async fn wait_or_shutdown(
    shutdown: &mut watch::Receiver<bool>,
    pause: Duration,
) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(pause) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}

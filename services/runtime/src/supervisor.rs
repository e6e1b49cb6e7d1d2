//! Process isolation: one OS process per tenant group, supervised.
//!
//! Tenants with `isolation.process = "own"` get a process each; the others share one. The
//! supervisor starts each group as a worker (a command it is given, e.g. `mesh worker`), waits
//! for the worker to print `READY <address>`, and routes the group's tenants to that address
//! through the [`FrontDoor`]. A worker that exits is restarted with backoff, alone: the other
//! groups keep serving. On shutdown, workers are asked to stop (their stdin closes) and killed
//! if they do not within a grace period. A worker whose supervisor dies sees its stdin close too.

use std::{
    path::PathBuf,
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use mesh_contract::TenantId;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::{mpsc, watch},
};

use crate::{config::ProcessIsolation, config::Tenants, front_door::FrontDoor};

/// The line a worker prints once it serves: `READY 127.0.0.1:4567`.
pub const READY_PREFIX: &str = "READY ";

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
                name: config.id.clone(),
                tenants: vec![config.tenant_id()],
            }),
            ProcessIsolation::Shared => shared.push(config.tenant_id()),
        }
    }
    if !shared.is_empty() {
        groups.insert(
            0,
            Group {
                name: "shared".into(),
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

/// Backoff between restarts: doubles from `FIRST_BACKOFF` to `MAX_BACKOFF`, and starts over
/// once a worker has stayed up for `STABLE_AFTER`.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How long a worker may take to print its READY line.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping worker may take before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs every group until `shutdown` turns true, then stops them all.
pub async fn supervise(
    command: WorkerCommand,
    groups: Vec<Group>,
    front: FrontDoor,
    events: mpsc::UnboundedSender<SupervisorEvent>,
    shutdown: watch::Receiver<bool>,
) {
    let tasks: Vec<_> = groups
        .into_iter()
        .map(|group| {
            tokio::spawn(supervise_group(
                command.clone(),
                group,
                front.clone(),
                events.clone(),
                shutdown.clone(),
            ))
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}

/// A running worker. Its stdin is held here: closing it is how the worker is told to stop
/// (`Child::wait` would close it, so it must not stay in the `Child`).
struct Worker {
    child: Child,
    stdin: Option<tokio::process::ChildStdin>,
    address: String,
}

async fn start(command: &WorkerCommand, group: &Group) -> Result<Worker, String> {
    let list: Vec<&str> = group.tenants.iter().map(TenantId::as_str).collect();
    let mut child = Command::new(&command.program)
        .args(&command.args)
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
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(START_TIMEOUT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(address) = line.strip_prefix(READY_PREFIX) {
                return Some(address.trim().to_owned());
            }
            println!("[{}] {line}", group.name);
        }
        None
    })
    .await;
    let address = match ready {
        Ok(Some(address)) => address,
        Ok(None) => {
            let status = child
                .wait()
                .await
                .map(|s| s.to_string())
                .unwrap_or_default();
            return Err(format!("the worker exited before it was ready ({status})"));
        }
        Err(_) => {
            return Err(format!(
                "the worker did not report READY within {START_TIMEOUT:?}"
            ));
        }
    };
    // keep draining the worker's output so it never blocks on a full pipe
    let name = group.name.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            println!("[{name}] {line}");
        }
    });
    Ok(Worker {
        child,
        stdin,
        address,
    })
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

async fn supervise_group(
    command: WorkerCommand,
    group: Group,
    front: FrontDoor,
    events: mpsc::UnboundedSender<SupervisorEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = FIRST_BACKOFF;
    while !*shutdown.borrow() {
        let mut worker = match start(&command, &group).await {
            Ok(started) => started,
            Err(reason) => {
                let _ = events.send(SupervisorEvent::StartFailed {
                    group: group.name.clone(),
                    reason,
                    retry_in: backoff,
                });
                if wait_or_shutdown(&mut shutdown, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let pid = worker.child.id().unwrap_or_default();
        let address = worker.address.clone();
        for tenant in &group.tenants {
            if let Err(err) = front.route(tenant.clone(), &address) {
                tracing::error!(%tenant, %address, error = %err, "cannot route");
            }
        }
        let _ = events.send(SupervisorEvent::Serving {
            group: group.name.clone(),
            pid,
            address,
            tenants: group.tenants.clone(),
        });
        let started = Instant::now();
        let status = tokio::select! {
            status = worker.child.wait() => status,
            _ = shutdown.changed() => {
                for tenant in &group.tenants {
                    front.unroute(tenant);
                }
                stop(worker).await;
                let _ = events.send(SupervisorEvent::Stopped { group: group.name.clone(), pid });
                return;
            }
        };
        for tenant in &group.tenants {
            front.unroute(tenant);
        }
        if started.elapsed() >= STABLE_AFTER {
            backoff = FIRST_BACKOFF;
        }
        let status = status
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        let _ = events.send(SupervisorEvent::Exited {
            group: group.name.clone(),
            pid,
            status,
            restart_in: backoff,
        });
        if wait_or_shutdown(&mut shutdown, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
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
            id: id.into(),
            display_name: id.into(),
            data_namespace: id.into(),
            credentials: Credentials {
                token: Some("a-long-token".into()),
                token_env: None,
            },
            services: Default::default(),
            broker: Default::default(),
            isolation: Isolation {
                process,
                threads: 0,
            },
            limits: Default::default(),
            switches: Default::default(),
        }
    }

    #[test]
    fn own_process_tenants_get_a_group_each_and_the_rest_share_one() {
        let mut tenants = Tenants {
            tenants: Default::default(),
            files: Default::default(),
        };
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

//! `mesh up`: the supervisor and the front door.

use std::path::Path;

use anyhow::Context;
use mesh_contract::TenantId;
use mesh_runtime::{
    Tenants,
    front_door::FrontDoor,
    supervisor::{self, SupervisorEvent, WorkerCommand},
};
use tokio::sync::{mpsc, watch};

pub async fn run(dir: &Path, listen: &str) -> anyhow::Result<()> {
    let tenants = Tenants::load(dir, mesh_api::CONTRACTS)?;
    let groups = supervisor::groups(&tenants);
    let command = WorkerCommand {
        program: std::env::current_exe().context("locating the mesh binary")?,
        args: vec![
            "worker".into(),
            "--tenants".into(),
            dir.display().to_string(),
            "--exit-on-stdin-close".into(),
        ],
    };
    let front = FrontDoor::default();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("front door: listening on {listen}"))?;
    println!("front door listening on {}", listener.local_addr()?);

    let (stop, stopping) = watch::channel(false);
    let (events, mut reports) = mpsc::unbounded_channel();
    let mut front_stopping = stopping.clone();
    let serving = tokio::spawn(front.clone().serve(listener, async move {
        let _ = front_stopping.changed().await;
    }));
    let supervising = tokio::spawn(supervisor::supervise(
        command, groups, front, events, stopping,
    ));

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            Some(event) = reports.recv() => report(&event),
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    println!("stopping");
    let _ = stop.send(true);
    let _ = supervising.await;
    let _ = serving.await;
    while let Ok(event) = reports.try_recv() {
        report(&event);
    }
    println!("stopped");
    Ok(())
}

fn list(tenants: &[TenantId]) -> String {
    tenants
        .iter()
        .map(TenantId::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

fn report(event: &SupervisorEvent) {
    match event {
        SupervisorEvent::Serving {
            group,
            pid,
            address,
            tenants,
        } => {
            println!(
                "serving group={group} pid={pid} address={address} tenants={}",
                list(tenants)
            );
        }
        SupervisorEvent::Exited {
            group,
            pid,
            status,
            restart_in,
        } => {
            println!(
                "exited group={group} pid={pid} status=\"{status}\" restarting_in={restart_in:?}"
            );
        }
        SupervisorEvent::StartFailed {
            group,
            reason,
            retry_in,
        } => {
            println!("start_failed group={group} reason=\"{reason}\" retrying_in={retry_in:?}");
        }
        SupervisorEvent::Stopped { group, pid } => println!("stopped group={group} pid={pid}"),
    }
}

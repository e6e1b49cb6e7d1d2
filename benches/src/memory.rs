//! Figure 5: resident memory of one tenant process (`mesh worker`), idle and under load.

use std::{
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use mesh_api::recommend::v1 as recommend;
use mesh_contract::{RequestContext, TenantId};
use mesh_runtime::supervisor::protocol::{TenantSource, WorkerLine, WorkerState};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::Row;

/// The release `mesh` binary beside this one, built if missing.
pub fn mesh_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name("mesh");
    if !path.exists() {
        let built = std::process::Command::new("cargo")
            .args(["build", "--release", "--quiet", "-p", "mesh-node"])
            .status()?;
        anyhow::ensure!(built.success(), "building mesh-node failed");
    }
    Ok(path)
}

/// A `mesh up` of the release binary, killed when dropped.
pub struct MeshUp {
    /// The process (the supervisor and front door).
    pub child: tokio::process::Child,
    /// Its pid.
    pub pid: u32,
    /// `host:port` of its front door.
    pub front: String,
    /// The pid of the worker of the shared group.
    pub worker: u32,
    /// Where the worker of the shared group serves (`127.0.0.1:4567`).
    pub worker_address: String,
}

/// Starts `mesh up` on the tenants in `tenants` (embedded bus and store unless `env` names a
/// broker or a database, state in `state`,
/// admin API on a free port) with the extra environment `env`, and waits for its front door and
/// its shared worker.
pub async fn mesh_up(
    tenants: &std::path::Path,
    state: &std::path::Path,
    env: &[(&str, &str)],
) -> anyhow::Result<MeshUp> {
    let mut child = tokio::process::Command::new(mesh_binary()?)
        .args(["up", "--listen", "127.0.0.1:0", "--config"])
        .arg(state.join("no-mesh.toml"))
        .arg("--tenants")
        .arg(tenants)
        .env("MESH_STATE_DIR", state)
        .env("MESH_ADMIN_LISTEN", "127.0.0.1:0")
        .env("MESH_WEB_LISTEN", "127.0.0.1:0")
        // embedded unless the figure says otherwise
        .env_remove("MESH_AMQP_URI")
        .env_remove("MESH_STORE_POSTGRES")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("mesh up has no pid"))?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let (mut front, mut worker, mut worker_address) = (None, None, None);
    while front.is_none() || worker.is_none() {
        let line = lines
            .next_line()
            .await?
            .ok_or_else(|| anyhow::anyhow!("mesh up ended"))?;
        if let Some(address) = line.strip_prefix("front door listening on ") {
            front = Some(address.to_owned());
        }
        if line.starts_with("serving group=shared") {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(name))
                    .map(str::to_owned)
            };
            worker = field("pid=").and_then(|p| p.parse::<u32>().ok());
            worker_address = field("address=");
        }
    }
    // keep reading what it prints, so it never blocks on a full pipe
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(MeshUp {
        child,
        pid,
        front: front.expect("read above"),
        worker: worker.expect("read above"),
        worker_address: worker_address.unwrap_or_default(),
    })
}

pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))
}

pub async fn run(window: Duration) -> anyhow::Result<Vec<Row>> {
    let tenants = crate::tenants_dir();
    let mut worker = tokio::process::Command::new(mesh_binary()?)
        .args(["worker", "--tenant", "mall", "--supervised", "--tenants"])
        .arg(&tenants)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = worker
        .id()
        .ok_or_else(|| anyhow::anyhow!("worker has no pid"))?;
    // a supervised worker takes its state from stdin before it serves: hand it one, as
    // `mesh up` does
    let state = WorkerState {
        version: 1,
        switches: Vec::new(),
        tenants: vec![TenantSource::read(
            TenantId::new("mall")?,
            &tenants.join("mall.toml"),
        )?],
        purge: Vec::new(),
    };
    let mut stdin = worker.stdin.take().expect("piped");
    stdin
        .write_all(format!("{}\n", state.to_line()).as_bytes())
        .await?;
    let mut lines = BufReader::new(worker.stdout.take().expect("piped")).lines();
    let address = loop {
        let line = lines
            .next_line()
            .await?
            .ok_or_else(|| anyhow::anyhow!("worker ended"))?;
        if let WorkerLine::Ready(address) = WorkerLine::parse(&line) {
            break address;
        }
    };
    // keep reading what it prints (its statistics), so it never blocks on a full pipe
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kib(pid)?;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
        .connect()
        .await?;
    let ctx = RequestContext::new(TenantId::new("mall")?).with_token("dev-mall-token");
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (stop, mut caller, ctx) = (
                stop.clone(),
                recommend::RecommendCaller::new(channel.clone()),
                ctx.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let _ = caller
                        .suggest(&ctx, recommend::SuggestRequest::default())
                        .await;
                }
            })
        })
        .collect();
    tokio::time::sleep(window).await;
    let loaded = rss_kib(pid)?;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    drop(stdin);
    let _ = worker.wait().await;
    Ok(vec![Row::new(
        "RSS of one tenant process (mesh worker), idle / under 32 callers",
        "-".into(),
        format!(
            "{:.1} MiB / {:.1} MiB",
            idle as f64 / 1024.0,
            loaded as f64 / 1024.0
        ),
        "-".into(),
        "-",
    )])
}

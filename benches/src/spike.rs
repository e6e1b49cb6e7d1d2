//! Figure 6: memory after a connection spike. `mesh up` with a 2 s idle timeout; 5000 client
//! connections through its front door, each making one call, then left idle: the front door
//! closes them, and its resident memory is measured before, at the peak and after.

use std::time::Duration;

use futures::StreamExt;
use mesh_api::recommend::v1 as recommend;

use crate::{
    Row,
    memory::{mesh_up, rss_kib},
};

/// Connections opened at the peak.
const CONNECTIONS: usize = 5000;
/// The front door's idle timeout for the run.
const IDLE_SECS: u64 = 2;
/// How long after the idle timeout the memory is measured again (the allocator returns freed
/// memory to the system over some seconds).
const SETTLE_SECS: u64 = 15;

pub async fn run() -> anyhow::Result<Vec<Row>> {
    let state = tempfile::tempdir()?;
    let idle = IDLE_SECS.to_string();
    let mut up = mesh_up(
        &crate::tenants_dir(),
        state.path(),
        &[("MESH_FRONT_DOOR_IDLE_TIMEOUT_SECS", idle.as_str())],
    )
    .await?;
    let (front, front_pid, worker) = (up.front.clone(), up.pid, up.worker);
    let tenants = crate::shipped_tenants()?;
    let ctx = crate::tenant_ctx(&tenants, "mall")?;
    // one warm-up call, so the baseline includes the route to the worker
    let warm = tonic::transport::Endpoint::from_shared(format!("http://{front}"))?
        .connect()
        .await?;
    recommend::RecommendCaller::new(warm)
        .suggest(&ctx, recommend::SuggestRequest::default())
        .await?;
    tokio::time::sleep(Duration::from_secs(IDLE_SECS + 2)).await;
    let baseline = (rss_kib(front_pid)?, rss_kib(worker)?);

    let channels: Vec<_> = futures::stream::iter(0..CONNECTIONS)
        .map(|_| {
            let (front, ctx) = (front.clone(), ctx.clone());
            async move {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{front}"))?
                    .connect()
                    .await?;
                // a call through to the worker; mall's rate limit (500/s) may answer it, which
                // is an answer from the worker all the same
                match recommend::RecommendCaller::new(channel.clone())
                    .suggest(&ctx, recommend::SuggestRequest::default())
                    .await
                {
                    Ok(_) => {}
                    Err(status) if status.code() == tonic::Code::ResourceExhausted => {}
                    Err(status) => return Err(status.into()),
                }
                anyhow::Ok(channel)
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let peak = (rss_kib(front_pid)?, rss_kib(worker)?);
    // the clients keep their connections but stop calling: the idle timeout closes them
    tokio::time::sleep(Duration::from_secs(IDLE_SECS + SETTLE_SECS)).await;
    let after = (rss_kib(front_pid)?, rss_kib(worker)?);
    let port = front.rsplit(':').next().unwrap_or_default().to_owned();
    let still_open = std::process::Command::new("ss")
        .args([
            "-Htn",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(usize::MAX);
    eprintln!("connections the front door still holds after the idle timeout: {still_open}");
    drop(channels);
    let _ = up.child.kill().await;

    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    let per = |peak: u64, base: u64| {
        format!(
            "{:.1} KiB",
            peak.saturating_sub(base) as f64 / CONNECTIONS as f64
        )
    };
    Ok(vec![
        Row::new(
            format!(
                "RSS of the front door (mesh up): baseline / {CONNECTIONS} connections / {}s after they went idle",
                IDLE_SECS + SETTLE_SECS
            ),
            mib(baseline.0),
            format!("{} / {}", mib(peak.0), mib(after.0)),
            format!("{} per connection", per(peak.0, baseline.0)),
            "back near baseline",
        ),
        Row::new(
            "RSS of the worker behind it, same moments",
            mib(baseline.1),
            format!("{} / {}", mib(peak.1), mib(after.1)),
            "-".into(),
            "-",
        ),
    ])
}

//! Figure 8: the front door hop. The same client (32 callers over 4 HTTP/2 connections, mall's
//! Suggest) calls one `mesh up` worker three ways in one run: directly, through HAProxy (Debian's
//! package, routing on `x-mesh-tenant` as `mesh deploy haproxy` configures it), and through the
//! mesh's front door, and the path without the hop: through the front door until its answer
//! names the worker (`front_door.advertise_workers`), then to the worker directly
//! (`DirectChannel`). Each path runs twice, in the order direct, HAProxy, front door, learned,
//! learned, front door, HAProxy, direct, so a drift of the machine weighs on all alike.

use anyhow::Context as _;
use std::{
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use mesh_api::recommend::v1 as recommend;
use mesh_contract::{RequestContext, TenantId};
use mesh_runtime::direct::DirectChannel;

use crate::{
    Row,
    memory::{mesh_binary, mesh_up},
    micros, percentile,
};

const CONNECTIONS: usize = 4;
const CALLERS: usize = 32;

/// Calls and their latencies on one path over `window`.
#[derive(Default)]
struct Measured {
    calls: u64,
    seconds: f64,
    latencies: Vec<Duration>,
}

impl Measured {
    fn per_second(&self) -> f64 {
        self.calls as f64 / self.seconds.max(1e-9)
    }
}

/// `CONNECTIONS` HTTP/2 connections to `address`.
async fn connect(address: &str) -> anyhow::Result<Vec<tonic::transport::Channel>> {
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("connecting to {address}"))?,
        );
    }
    Ok(channels)
}

/// `CALLERS` callers over `channels` for `window`, into `into`.
async fn load<C>(channels: Vec<C>, window: Duration, into: &mut Measured) -> anyhow::Result<()>
where
    C: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = tonic::transport::Error,
            Future: Send,
        > + Clone
        + Send
        + 'static,
{
    let ctx = RequestContext::new(TenantId::new("mall")?).with_token("dev-mall-token");
    // warm: connections open, caches filled (and a path that learns, learned)
    for channel in &channels {
        let mut caller = recommend::RecommendCaller::new(channel.clone());
        for _ in 0..50 {
            caller
                .suggest(&ctx, recommend::SuggestRequest::default())
                .await?;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|i| {
            let (stop, ctx) = (stop.clone(), ctx.clone());
            let mut caller = recommend::RecommendCaller::new(channels[i % CONNECTIONS].clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(50_000);
                let mut failed = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let call = Instant::now();
                    match caller
                        .suggest(&ctx, recommend::SuggestRequest::default())
                        .await
                    {
                        Ok(_) => latencies.push(call.elapsed()),
                        Err(_) => failed += 1,
                    }
                }
                (latencies, failed)
            })
        })
        .collect();
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::Relaxed);
    let mut failed = 0;
    for task in tasks {
        let (mut latencies, f) = task.await?;
        into.calls += latencies.len() as u64;
        into.latencies.append(&mut latencies);
        failed += f;
    }
    into.seconds += started.elapsed().as_secs_f64();
    anyhow::ensure!(failed == 0, "{failed} calls failed");
    Ok(())
}

pub async fn run(window: Duration) -> anyhow::Result<Vec<Row>> {
    // mall alone, its rate limit out of the way: the figure is the hop, not admission
    let dir = crate::tenants_folder(&[(
        "mall",
        "[limits]\nrequests_per_second = 1000000\nburst = 1000000\nmax_concurrent_per_dependency = 100000\n",
    )])?;
    // the door names the worker on its answers, for the path without the hop
    let up = mesh_up(
        dir.path(),
        &dir.path().join(".state"),
        &[("MESH_FRONT_DOOR_ADVERTISE_WORKERS", "true")],
    )
    .await?;

    // HAProxy in front of the same worker, as `mesh deploy haproxy` renders it
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let haproxy_at = format!("127.0.0.1:{port}");
    let rendered = std::process::Command::new(mesh_binary()?)
        .args(["deploy", "haproxy", "--tenants"])
        .arg(dir.path())
        .args(["--listen", &haproxy_at])
        .args(["--group", &format!("shared={}", up.worker_address)])
        // the figure's few connections: a machine's default open-file limit is enough
        .args(["--maxconn", "4096"])
        .output()?;
    anyhow::ensure!(
        rendered.status.success(),
        "mesh deploy haproxy: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let config = dir.path().join("haproxy.cfg");
    std::fs::write(&config, &rendered.stdout)?;
    let haproxy = tokio::process::Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("haproxy.log"))?)
        .kill_on_drop(true)
        .spawn();
    let Ok(mut haproxy) = haproxy else {
        anyhow::bail!("haproxy is not installed (Debian's haproxy package)");
    };
    // it listens within this (it said why if it stopped instead)
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Some(status) = haproxy.try_wait()? {
        let said = std::fs::read_to_string(dir.path().join("haproxy.log")).unwrap_or_default();
        anyhow::bail!("haproxy stopped ({status}; `ulimit -n` too low for its maxconn?):\n{said}");
    }

    let half = window / 2;
    let (mut direct, mut proxied, mut front, mut learned) = (
        Measured::default(),
        Measured::default(),
        Measured::default(),
        Measured::default(),
    );
    // the client of the path without the hop: through the door until it names the worker
    let learning = || async {
        let channels = connect(&up.front).await?;
        anyhow::Ok(
            channels
                .into_iter()
                .map(DirectChannel::new)
                .collect::<Vec<_>>(),
        )
    };
    load(connect(&up.worker_address).await?, half, &mut direct).await?;
    load(connect(&haproxy_at).await?, half, &mut proxied).await?;
    load(connect(&up.front).await?, half, &mut front).await?;
    load(learning().await?, half, &mut learned).await?;
    load(learning().await?, half, &mut learned).await?;
    load(connect(&up.front).await?, half, &mut front).await?;
    load(connect(&haproxy_at).await?, half, &mut proxied).await?;
    load(connect(&up.worker_address).await?, half, &mut direct).await?;
    let _ = haproxy.kill().await;
    drop(up);

    for m in [&mut direct, &mut proxied, &mut front, &mut learned] {
        m.latencies.sort();
    }
    let summary = |m: &Measured| {
        format!(
            "{:.0} calls/s, p50 {} p99 {}",
            m.per_second(),
            micros(percentile(&m.latencies, 0.5)),
            micros(percentile(&m.latencies, 0.99))
        )
    };
    let ratio = |a: &Measured, b: &Measured| {
        format!(
            "{:.2}x calls/s, p50 {:.2}x, p99 {:.2}x",
            a.per_second() / b.per_second(),
            percentile(&a.latencies, 0.5).as_secs_f64()
                / percentile(&b.latencies, 0.5).as_secs_f64(),
            percentile(&a.latencies, 0.99).as_secs_f64()
                / percentile(&b.latencies, 0.99).as_secs_f64()
        )
    };
    Ok(vec![
        Row::new(
            format!(
                "front door hop vs. HAProxy routing on x-mesh-tenant to the same worker ({CALLERS} callers, {CONNECTIONS} connections)"
            ),
            format!("HAProxy: {}", summary(&proxied)),
            format!("front door: {}", summary(&front)),
            ratio(&front, &proxied),
            ">= 1.0x calls/s, <= 1.0x latency",
        ),
        Row::new(
            "front door hop vs. calling the worker directly",
            format!("direct: {}", summary(&direct)),
            format!("front door: {}", summary(&front)),
            ratio(&front, &direct),
            "-",
        ),
        Row::new(
            "the path without the hop (the door names the worker, `DirectChannel` calls it) vs. calling the worker directly",
            format!("direct: {}", summary(&direct)),
            format!("learned: {}", summary(&learned)),
            ratio(&learned, &direct),
            ">= 0.9x calls/s",
        ),
    ])
}

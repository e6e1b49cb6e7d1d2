//! Figure 3: the noisy neighbour. Tenant A (mall) is held to 50 calls/s and floods at about ten
//! times that from a process of its own, and its dependency (the locator) is slow for it; tenant
//! B (paipai) calls the same front service. B's p99 beside A, against B alone.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use mesh_api::{locator::v1 as locator, recommend::v1 as recommend};
use mesh_contract::{RequestContext, ServiceCredentials, TenantId};
use mesh_runtime::{
    Inbound, Outbound, OutboundChannel, Tenants,
    layers::{Bulkheads, Catalogue, SwitchBoard},
};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, transport::Channel};

use crate::{Row, micros, percentile};

/// Slow (150 ms) for mall, immediate for everyone else.
struct Locator;

#[tonic::async_trait]
impl locator::locator_server::Locator for Locator {
    async fn register(
        &self,
        _: Request<locator::RegisterRequest>,
    ) -> Result<Response<locator::RegisterResponse>, Status> {
        Ok(Response::new(locator::RegisterResponse::default()))
    }
    async fn unregister(
        &self,
        _: Request<locator::UnregisterRequest>,
    ) -> Result<Response<locator::UnregisterResponse>, Status> {
        Ok(Response::new(locator::UnregisterResponse {}))
    }
    async fn locate(
        &self,
        request: Request<locator::LocateRequest>,
    ) -> Result<Response<locator::LocateResponse>, Status> {
        if RequestContext::from_request(&request)?.tenant.as_str() == "mall" {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        Ok(Response::new(locator::LocateResponse::default()))
    }
}

/// The front service: every call asks the locator, through the tenant's bulkhead, as the
/// product's services do (with the node credential: the locator serves the mesh only).
struct Front {
    locator: locator::LocatorCaller<OutboundChannel>,
    credentials: ServiceCredentials,
}

#[tonic::async_trait]
impl recommend::recommend_server::Recommend for Front {
    async fn suggest(
        &self,
        request: Request<recommend::SuggestRequest>,
    ) -> Result<Response<recommend::SuggestResponse>, Status> {
        let ctx = self
            .credentials
            .outbound(&RequestContext::from_request(&request)?);
        self.locator
            .clone()
            .locate(&ctx, locator::LocateRequest::default())
            .await?;
        Ok(Response::new(recommend::SuggestResponse::default()))
    }
}

const CATALOGUE: Catalogue = Catalogue(mesh_api::CONTRACTS);

/// The product's inbound stack serving every tenant, with only mall held to a rate (set by
/// the caller): admission is measured, paipai is never refused.
fn inbound(tenants: &Tenants) -> anyhow::Result<Inbound> {
    let inbound = Inbound::new(CATALOGUE, SwitchBoard::new(CATALOGUE));
    for config in tenants.tenants.values() {
        inbound.serve_tenant(config)?;
        inbound
            .limiter()
            .set(config.tenant_id(), 10_000_000, 10_000_000);
    }
    Ok(inbound)
}

async fn listen() -> anyhow::Result<(tokio::net::TcpListener, String)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    Ok((listener, url))
}

pub async fn run() -> anyhow::Result<Vec<Row>> {
    let tenants = Arc::new(crate::shipped_tenants()?);
    let (listener, locator_url) = listen().await?;
    let node_token = ServiceCredentials::fresh_token();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(inbound(&tenants)?.with_node_credential(&node_token).layer())
            .add_service(locator::locator_server::LocatorServer::new(Locator))
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true))),
    );
    let to_locator = tonic::transport::Endpoint::from_shared(locator_url)?;
    // the product's outbound stack: span, deadline, then the (tenant, locator) bulkhead
    let outbound = Outbound::new(Bulkheads::new(4), CATALOGUE);
    let front = Front {
        locator: locator::LocatorCaller::new(outbound.channel("locator", &to_locator)),
        credentials: ServiceCredentials::node(node_token.clone()),
    };
    let front_inbound = inbound(&tenants)?;
    front_inbound.limiter().set(TenantId::new("mall")?, 50, 10);
    let (listener, front_url) = listen().await?;
    tokio::spawn(
        // the worker's own inbound stack (the tenant's rate limit after auth); no limit
        // shared by all tenants in front of it, which would queue B behind A's flood
        tonic::transport::Server::builder()
            .layer(front_inbound.layer())
            .add_service(recommend::recommend_server::RecommendServer::new(front))
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true))),
    );
    let channel = tonic::transport::Endpoint::from_shared(front_url.clone())?
        .connect()
        .await?;
    let ctx = |tenant: &str| crate::tenant_ctx(&tenants, tenant);

    let alone = calm_p99(channel.clone(), &ctx("paipai")?, 500).await?;

    // A floods from a process of its own, as a real neighbour would: its callers do not
    // share this process's cores' run queue with B's caller
    let mut flooding = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--flood", &front_url])
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let beside = calm_p99(channel.clone(), &ctx("paipai")?, 500).await?;
    drop(flooding.stdin.take()); // its stop signal
    let flood_calls = tokio::time::timeout(Duration::from_secs(10), flooding.wait())
        .await
        .map_err(|_| anyhow::anyhow!("the flooding process did not stop"))??;
    anyhow::ensure!(
        flood_calls.success(),
        "the flooding process failed: {flood_calls}"
    );
    Ok(vec![Row::new(
        "calm tenant p99 beside a flooding tenant with a slow dependency",
        format!("{} (alone)", micros(alone)),
        micros(beside),
        format!("{:.2}", beside.as_secs_f64() / alone.as_secs_f64()),
        "<= 1.2",
    )])
}

/// The p99 of `calls` Suggest calls of `ctx` through `channel`, one after the other: the calm
/// tenant's experience.
async fn calm_p99(
    channel: Channel,
    ctx: &RequestContext,
    calls: usize,
) -> anyhow::Result<Duration> {
    Ok(percentile(
        &calm_latencies(channel, ctx, calls).await?,
        0.99,
    ))
}

/// The latencies of `calls` Suggest calls of `ctx` through `channel`, one after the other,
/// sorted.
async fn calm_latencies(
    channel: Channel,
    ctx: &RequestContext,
    calls: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut caller = recommend::RecommendCaller::new(channel);
    let mut latencies = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        caller
            .suggest(ctx, recommend::SuggestRequest::default())
            .await?;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    Ok(latencies)
}

/// Figure 3b: the same neighbours through `mesh up`'s front door, both tenants served by the
/// shared worker: B's (paipai's) p99 beside A (mall, held to 50 calls/s) flooding the front door
/// from a process of its own, against B alone through the same front door before and after the
/// flood (pooled: this machine's baseline drifts between minutes).
///
/// And the control: the same flood aimed at a process outside the mesh that refuses every call
/// (`mesh-bench --refuse`), so what the flood costs B through the machine alone (two more
/// processes waking 500 times a second on the same two cores) is measured beside what it costs
/// through the mesh.
pub async fn run_through_front_door() -> anyhow::Result<Vec<Row>> {
    // B calls as fast as it can, one call at a time: its own limit out of the way
    let dir = crate::tenants_folder(&[
        (
            "paipai",
            "[limits]\nrequests_per_second = 100000\nburst = 100000\n",
        ),
        ("mall", "[limits]\nrequests_per_second = 50\nburst = 10\n"),
    ])?;
    let up = crate::memory::mesh_up(dir.path(), &dir.path().join(".state"), &[]).await?;
    let front_url = format!("http://{}", up.front);
    let channel = tonic::transport::Endpoint::from_shared(front_url.clone())?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let paipai = crate::tenant_ctx(&crate::shipped_tenants()?, "paipai")?;
    calm_p99(channel.clone(), &paipai, 1000).await?; // warm
    let mut alone = calm_latencies(channel.clone(), &paipai, 1000).await?;
    let beside = {
        let _flood = Flood::start(&front_url).await?;
        calm_p99(channel.clone(), &paipai, 2000).await?
    };
    alone.extend(calm_latencies(channel.clone(), &paipai, 1000).await?);
    let control = {
        let mut refuser = tokio::process::Command::new(std::env::current_exe()?)
            .arg("--refuse")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut address = String::new();
        tokio::io::AsyncBufReadExt::read_line(
            &mut tokio::io::BufReader::new(refuser.stdout.take().expect("piped")),
            &mut address,
        )
        .await?;
        let _flood = Flood::start(&format!("http://{}", address.trim())).await?;
        calm_p99(channel.clone(), &paipai, 2000).await?
    };
    alone.extend(calm_latencies(channel.clone(), &paipai, 1000).await?);
    alone.sort();
    let alone = percentile(&alone, 0.99);
    drop(up);
    Ok(vec![
        Row::new(
            "calm tenant p99 through the front door beside a tenant flooding it (same worker)",
            format!("{} (alone)", micros(alone)),
            micros(beside),
            format!("{:.2}", beside.as_secs_f64() / alone.as_secs_f64()),
            "<= 1.2",
        ),
        Row::new(
            "control: the same flood aimed at a process outside the mesh",
            format!("{} (alone)", micros(alone)),
            micros(control),
            format!("{:.2}", control.as_secs_f64() / alone.as_secs_f64()),
            "-",
        ),
    ])
}

/// A flooding neighbour process ([`flood`]), stopped when dropped.
struct Flood(tokio::process::Child);

impl Flood {
    async fn start(url: &str) -> anyhow::Result<Self> {
        let child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["--flood", url])
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(Self(child))
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        // closing its stdin is its stop signal; kill_on_drop ends it if it did not listen
        drop(self.0.stdin.take());
    }
}

/// The control's target, run as `mesh-bench --refuse`: a raw tonic server outside the mesh
/// that answers every Suggest `RESOURCE_EXHAUSTED` at once, as the front door answers the
/// flood; prints its address, serves until stdin closes.
pub async fn refuse() -> anyhow::Result<()> {
    struct Refuser;
    #[tonic::async_trait]
    impl recommend::recommend_server::Recommend for Refuser {
        async fn suggest(
            &self,
            _: Request<recommend::SuggestRequest>,
        ) -> Result<Response<recommend::SuggestResponse>, Status> {
            Err(Status::resource_exhausted("over its rate"))
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    let stdin_closed = async {
        let _ =
            tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut Vec::new()).await;
    };
    tonic::transport::Server::builder()
        .add_service(recommend::recommend_server::RecommendServer::new(Refuser))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            // bounded like the flood: a minute at most
            async {
                let _ = tokio::time::timeout(Duration::from_secs(60), stdin_closed).await;
            },
        )
        .await?;
    Ok(())
}

/// The flooding neighbour, run as `mesh-bench --flood URL` by [`run`]: tenant A's 32 callers at
/// ~16 calls/s each (~500 calls/s, ten times its limit) until stdin closes.
pub async fn flood(front_url: String) -> anyhow::Result<()> {
    let mall = crate::tenant_ctx(&crate::shipped_tenants()?, "mall")?;
    let channel = tonic::transport::Endpoint::from_shared(front_url)?
        .connect()
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..32)
        .map(|_| {
            let (stop, mut caller, mall) = (
                stop.clone(),
                recommend::RecommendCaller::new(channel.clone()),
                mall.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let _ = caller
                        .suggest(&mall, recommend::SuggestRequest::default())
                        .await;
                    tokio::time::sleep(Duration::from_millis(64)).await;
                }
            })
        })
        .collect();
    // bounded: stops when told, or after a minute whatever happens
    let _ = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut Vec::new()),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await?;
    }
    Ok(())
}

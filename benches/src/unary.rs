//! Figure 1: a unary call through the full mesh stack (the trace layer with its per-tenant
//! metrics, tenant auth, rate limit, answer cache, switches, service plan, deadline) against the
//! same service on a raw tonic server called by a raw tonic client.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use mesh_api::recommend::v1 as recommend;
use mesh_contract::{RequestContext, TenantId};
use mesh_recommend::RecommendService;
use mesh_runtime::{
    Inbound, InboundLayerKind, Tenants,
    layers::{Catalogue, SwitchBoard},
};
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;

use crate::{Row, micros, percentile};

const CATALOGUE: Catalogue = Catalogue(mesh_api::CONTRACTS);

fn service() -> recommend::recommend_server::RecommendServer<RecommendService> {
    recommend::recommend_server::RecommendServer::new(RecommendService::new(
        Default::default(),
        RecommendService::sample_catalogue(),
    ))
}

pub(crate) async fn serve_raw() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    // the caller as a server that trusts its network would take it: a backend of mall (the
    // service acts only for authenticated callers; the mesh's side pays for checking that)
    let mut caller = RequestContext::new(TenantId::new("mall")?);
    caller.caller = mesh_contract::Caller::Backend;
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tower::util::MapRequestLayer::new(
                move |mut request: http::Request<tonic::body::Body>| {
                    request.extensions_mut().insert(caller.clone());
                    request
                },
            ))
            .add_service(service())
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true))),
    );
    Ok(url)
}

/// The worker's inbound stack, as the product builds it, serving `tenants`; mall never refused.
fn inbound(tenants: &Tenants) -> anyhow::Result<Inbound> {
    let inbound = Inbound::new(CATALOGUE, SwitchBoard::new(CATALOGUE));
    for config in tenants.tenants.values() {
        inbound.serve_tenant(config)?;
    }
    // admission is measured, not exercised: the bench must never be refused
    inbound
        .limiter()
        .set(TenantId::new("mall")?, 10_000_000, 10_000_000);
    Ok(inbound)
}

async fn serve_mesh(tenants: &Tenants) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(inbound(tenants)?.layer())
            .add_service(service())
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true))),
    );
    Ok(url)
}

/// The same stack without the layers in `off`, built by [`Inbound::layer_without`] whatever
/// `off` holds (none too), so every variant of the per-layer profile has the same shape.
pub(crate) async fn serve_mesh_without(
    tenants: &Tenants,
    off: &[InboundLayerKind],
) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    // without authentication nothing attaches the caller's context: attached as the raw
    // server does, so the layers after it and the service still act
    let mut caller = RequestContext::new(TenantId::new("mall")?);
    caller.caller = mesh_contract::Caller::Backend;
    let attach = off.contains(&InboundLayerKind::Auth).then(|| {
        tower::util::MapRequestLayer::new(move |mut request: http::Request<_>| {
            request.extensions_mut().insert(caller.clone());
            request
        })
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(
                tower::ServiceBuilder::new()
                    .option_layer(attach)
                    .layer(inbound(tenants)?.layer_without(off)),
            )
            .add_service(service())
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true))),
    );
    Ok(url)
}

/// A way to make one call.
#[derive(Clone)]
pub(crate) enum Client {
    Raw(recommend::recommend_client::RecommendClient<Channel>),
    Mesh(recommend::RecommendCaller<Channel>, RequestContext),
}

impl Client {
    pub(crate) async fn call(&mut self) -> Result<(), tonic::Status> {
        let request = recommend::SuggestRequest::default();
        match self {
            Client::Raw(client) => {
                let mut request = tonic::Request::new(request);
                request.metadata_mut().insert(
                    mesh_contract::headers::TENANT,
                    "mall".parse().expect("ascii"),
                );
                client.suggest(request).await.map(drop)
            }
            Client::Mesh(caller, ctx) => caller.suggest(ctx, request).await.map(drop),
        }
    }
}

async fn latencies(client: &mut Client, calls: usize) -> anyhow::Result<Vec<Duration>> {
    for _ in 0..calls / 10 {
        client.call().await?;
    }
    let mut out = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        client.call().await?;
        out.push(started.elapsed());
    }
    out.sort();
    Ok(out)
}

async fn throughput(client: &Client, window: Duration) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (mut client, done, stop) = (client.clone(), done.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if client.call().await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / window.as_secs_f64())
}

pub async fn run(calls: usize, window: Duration) -> anyhow::Result<Vec<Row>> {
    let tenants = crate::shipped_tenants()?;
    let raw_url = serve_raw().await?;
    let mesh_url = serve_mesh(&tenants).await?;
    let mut raw =
        Client::Raw(recommend::recommend_client::RecommendClient::connect(raw_url).await?);
    let mesh_channel = tonic::transport::Endpoint::from_shared(mesh_url)?
        .connect()
        .await?;
    let ctx = crate::tenant_ctx(&tenants, "mall")?;
    let mut mesh = Client::Mesh(recommend::RecommendCaller::new(mesh_channel), ctx);

    let (raw_lat, mesh_lat) = (
        latencies(&mut raw, calls).await?,
        latencies(&mut mesh, calls).await?,
    );
    let (raw_tput, mesh_tput) = (
        throughput(&raw, window).await?,
        throughput(&mesh, window).await?,
    );
    let mut rows = Vec::new();
    for (name, p) in [
        ("unary call latency p50", 0.50),
        ("unary call latency p99", 0.99),
    ] {
        let (r, m) = (percentile(&raw_lat, p), percentile(&mesh_lat, p));
        rows.push(Row::new(
            name,
            micros(r),
            micros(m),
            format!("{:.2}", m.as_secs_f64() / r.as_secs_f64()),
            "overhead <= 5%",
        ));
    }
    rows.push(Row::new(
        "unary throughput, 32 concurrent callers",
        format!("{raw_tput:.0} calls/s"),
        format!("{mesh_tput:.0} calls/s"),
        format!("{:.2}", mesh_tput / raw_tput),
        ">= 0.95",
    ));
    Ok(rows)
}

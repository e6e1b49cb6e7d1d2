//! One tenant process: the services, behind the runtime's full inbound stack, for the tenants
//! it is given.

use std::{collections::HashMap, io::Write, path::Path};

use anyhow::{Context, bail};
use mesh_api::{order, recommend};
use mesh_order::{OrderService, OrderStore};
use mesh_recommend::RecommendService;
use mesh_runtime::{
    TenantAuthLayer, TenantDirectory, Tenants,
    layers::{
        AdmitLayer, AnswerCache, CachedAnswersLayer, Catalogue, DeadlineLayer, RateLimiter,
        ServicePlan, SwitchBoard, TenantExecutorLayer, TenantRuntimes,
    },
};
use tokio::io::AsyncReadExt;

const CATALOGUE: Catalogue = Catalogue(mesh_api::CONTRACTS);

pub async fn run(
    dir: &Path,
    ids: &[String],
    listen: &str,
    exit_on_stdin_close: bool,
) -> anyhow::Result<()> {
    let all = Tenants::load(dir, mesh_api::CONTRACTS)?;
    let mut mine = Tenants {
        tenants: Default::default(),
        files: Default::default(),
    };
    for id in ids {
        let Some(config) = all.get(id) else {
            bail!("tenant {id:?} is not configured in {}", dir.display());
        };
        mine.tenants.insert(id.clone(), config.clone());
        mine.files.insert(id.clone(), all.files[id].clone());
    }

    let max_suggestions: HashMap<_, _> = mine
        .tenants
        .values()
        .filter_map(|c| {
            let max = c
                .services
                .get("recommend")?
                .settings
                .get("max_suggestions")?
                .to_i128()?;
            Some((c.tenant_id(), u32::try_from(max).ok()?))
        })
        .collect();
    let orders = OrderService::new(OrderStore::default());
    let recommendations =
        RecommendService::new(max_suggestions, RecommendService::sample_catalogue());
    let runtimes = TenantRuntimes::from_tenants(&mine).context("starting tenant runtimes")?;
    let switches = SwitchBoard::from_tenants(&mine, CATALOGUE);

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    println!("READY {}", listener.local_addr()?);
    std::io::stdout().flush()?;

    let shutdown = async move {
        if exit_on_stdin_close {
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 64];
            while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
        } else {
            let _ = tokio::signal::ctrl_c().await;
        }
    };
    tonic::transport::Server::builder()
        // one span per call, named by method and tenant (as claimed: the auth layer checks it)
        .trace_fn(|request| {
            let tenant = request
                .headers()
                .get(mesh_contract::headers::TENANT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("call", path = request.uri().path(), tenant)
        })
        .layer(TenantAuthLayer::new(TenantDirectory::from_tenants(&mine)))
        .layer(AdmitLayer::new(RateLimiter::from_tenants(&mine)))
        .layer(CachedAnswersLayer::new(
            AnswerCache::new(10_000),
            switches.clone(),
            CATALOGUE,
        ))
        .layer(AdmitLayer::new(switches))
        .layer(AdmitLayer::new(ServicePlan::from_tenants(&mine, CATALOGUE)))
        .layer(TenantExecutorLayer::new(runtimes))
        .layer(DeadlineLayer::new(CATALOGUE))
        .add_service(order::v1::order_server::OrderServer::new(orders.clone()))
        .add_service(order::v2::order_server::OrderServer::new(orders))
        .add_service(recommend::v1::recommend_server::RecommendServer::new(
            recommendations,
        ))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await?;
    Ok(())
}

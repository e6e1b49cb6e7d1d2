//! Thread isolation on a real server: a tenant configured with threads of its own (finance,
//! `isolation.threads = 2`) runs its calls there, so its blocking work does not stall the
//! tenants on the shared runtime. The server's shared runtime has one thread, the worst case.

use crate::common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{ctx, tenants};
use mesh_api::recommend::v1 as recommend;
use mesh_contract::RequestContext;
use mesh_runtime::{
    TenantAuthLayer, TenantDirectory, Tenants,
    layers::{TenantExecutorLayer, TenantRuntimes},
};
use tonic::{Request, Response, Status};

/// Blocks its thread for 50 ms for finance (a CPU-heavy report), answers at once for others.
struct Reports;

#[tonic::async_trait]
impl recommend::recommend_server::Recommend for Reports {
    async fn suggest(
        &self,
        request: Request<recommend::SuggestRequest>,
    ) -> Result<Response<recommend::SuggestResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        if ctx.tenant.as_str() == "finance" {
            // a blocking handler (50 ms of a thread): what thread isolation must keep from other tenants
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Response::new(recommend::SuggestResponse::default()))
    }
}

/// Starts the server on a one-thread runtime of its own; its address.
fn serve(tenants: &Tenants, isolate: bool) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let directory = TenantDirectory::from_tenants(
        tenants,
        mesh_runtime::layers::Catalogue(mesh_api::CONTRACTS),
    );
    let runtimes = if isolate {
        TenantRuntimes::from_tenants(tenants).unwrap()
    } else {
        TenantRuntimes::default()
    };
    std::thread::spawn(move || {
        let shared = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        shared.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tonic::transport::Server::builder()
                .layer(TenantAuthLayer::new(directory))
                .layer(TenantExecutorLayer::new(runtimes))
                .add_service(recommend::recommend_server::RecommendServer::new(Reports))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
    });
    url
}

/// p99 of mall's calls while finance keeps the server busy, and how many failed.
async fn mall_p99(isolate: bool) -> (Duration, usize) {
    let tenants = tenants();
    let url = serve(&tenants, isolate);
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flooded = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut heavy = Vec::new();
    for _ in 0..2 {
        let (stop, flooded, mut caller, finance) = (
            stop.clone(),
            flooded.clone(),
            recommend::RecommendCaller::new(channel.clone()),
            ctx(&tenants, "finance"),
        );
        heavy.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // past its deadline or not, it keeps the server busy
                let _ = caller
                    .suggest(&finance, recommend::SuggestRequest::default())
                    .await;
                flooded.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // the flood under way (each flooder answered a few times) before mall's calls are timed
    mesh_testkit::eventually("finance's flood under way", || {
        std::future::ready((flooded.load(Ordering::Relaxed) >= 4).then_some(()))
    })
    .await;
    let (mut caller, mall) = (
        recommend::RecommendCaller::new(channel),
        ctx(&tenants, "mall"),
    );
    let (mut latencies, mut failed) = (Vec::new(), 0);
    for _ in 0..40 {
        let started = Instant::now();
        // on a shared, stalled thread a call may even miss its deadline: that is the harm
        if caller
            .suggest(&mall, recommend::SuggestRequest::default())
            .await
            .is_err()
        {
            failed += 1;
        }
        latencies.push(started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    for task in heavy {
        task.await.unwrap();
    }
    latencies.sort();
    (latencies[latencies.len() * 99 / 100], failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_its_own_threads_does_not_stall_the_shared_runtime() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    assert_eq!(
        tenants().get("finance").unwrap().isolation.threads,
        2,
        "the shipped config isolates finance"
    );
    let (isolated, isolated_failed) = mall_p99(true).await;
    let (shared, shared_failed) = mall_p99(false).await;
    println!(
        "mall p99 while finance blocks: finance on its own runtime {isolated:?} ({isolated_failed} failed), on the shared runtime {shared:?} ({shared_failed} failed)"
    );
    assert_eq!(
        isolated_failed, 0,
        "mall is always served when finance has its own runtime"
    );
    assert!(
        isolated < Duration::from_millis(50),
        "mall waited on finance's work: {isolated:?}"
    );
    assert!(
        shared > Duration::from_millis(90),
        "control: on one shared thread mall must wait, or this test proves nothing: {shared:?}"
    );
}

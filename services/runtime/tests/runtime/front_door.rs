//! The front door's view of a tenant's health, which automatic degradation rules read: only
//! what says something about the service counts, never what a caller brought on itself.

use crate::common;

use std::time::Duration;

use mesh_api::recommend::v1 as recommend;
use mesh_contract::{RequestContext, TenantId};
use mesh_runtime::{front_door::FrontDoor, layers::Catalogue};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// A recommend service that takes 50 ms to answer.
struct Slow;

#[tonic::async_trait]
impl recommend::recommend_server::Recommend for Slow {
    async fn suggest(
        &self,
        _: Request<recommend::SuggestRequest>,
    ) -> Result<Response<recommend::SuggestResponse>, Status> {
        // a service taking 50 ms per call, for the front door's concurrency to be seen
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(Response::new(recommend::SuggestResponse::default()))
    }
}

#[tokio::test]
async fn a_caller_cutting_its_own_deadline_short_is_no_evidence_of_trouble() {
    let worker = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let worker_address = worker.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(recommend::recommend_server::RecommendServer::new(Slow))
            .serve_with_incoming(TcpListenerStream::new(worker)),
    );
    let front = FrontDoor::new(Catalogue(mesh_api::CONTRACTS));
    let mall = TenantId::new("mall").unwrap();
    front
        .route(mall.clone(), &worker_address.to_string())
        .unwrap();
    let channel = common::serve_front_door(front.clone()).await;
    let raw = recommend::recommend_client::RecommendClient::new(channel);
    let call = |timeout: Duration| {
        let mut raw = raw.clone();
        async move {
            let mut request = Request::new(recommend::SuggestRequest::default());
            RequestContext::new(TenantId::new("mall").unwrap())
                .inject(request.metadata_mut())
                .unwrap();
            request.set_timeout(timeout);
            raw.suggest(request).await
        }
    };
    // 1 ms where the contract allows 200 ms: the caller's deadline, answered as such
    for _ in 0..20 {
        let status = call(Duration::from_millis(1)).await.unwrap_err();
        assert!(
            matches!(
                status.code(),
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ),
            "{status:?}"
        );
    }
    let window = front.window(&mall, 2, Duration::from_secs(60));
    assert_eq!(window.calls, 0, "{window:?}");
    // a call given its time is a sample
    call(Duration::from_secs(5)).await.unwrap();
    let window = front.window(&mall, 2, Duration::from_secs(60));
    assert_eq!((window.calls, window.error_rate), (1, 0.0), "{window:?}");
}

/// A recommend service that counts the calls reaching it.
#[derive(Clone, Default)]
struct Counting(std::sync::Arc<std::sync::atomic::AtomicUsize>);

#[tonic::async_trait]
impl recommend::recommend_server::Recommend for Counting {
    async fn suggest(
        &self,
        _: Request<recommend::SuggestRequest>,
    ) -> Result<Response<recommend::SuggestResponse>, Status> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Response::new(recommend::SuggestResponse::default()))
    }
}

/// A tenant over its rate is refused at the door: its flood never crosses the hop to the worker
/// it shares with other tenants, and the others' calls go through as before.
#[tokio::test]
async fn a_tenant_over_its_rate_is_refused_before_the_hop() {
    let worker = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let worker_address = worker.local_addr().unwrap().to_string();
    let served = Counting::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(recommend::recommend_server::RecommendServer::new(
                served.clone(),
            ))
            .serve_with_incoming(TcpListenerStream::new(worker)),
    );
    let mut tenants = common::tenants();
    for config in tenants.tenants.values_mut() {
        // mall: 1 call a second after a burst of 3; paipai: plenty
        let mall = config.tenant_id().as_str() == "mall";
        config.limits.requests_per_second = if mall { 1 } else { 10_000 };
        config.limits.burst = if mall { 3 } else { 10_000 };
    }
    let directory =
        mesh_runtime::TenantDirectory::from_tenants(&tenants, Catalogue(mesh_api::CONTRACTS));
    let front = FrontDoor::new(Catalogue(mesh_api::CONTRACTS)).with_directory(directory);
    for config in tenants.tenants.values() {
        front.serve_tenant(config);
        front.route(config.tenant_id(), &worker_address).unwrap();
    }
    let caller = recommend::RecommendCaller::new(common::serve_front_door(front.clone()).await);
    let call = |tenant: &str| {
        let (mut caller, ctx) = (caller.clone(), common::ctx(&tenants, tenant));
        async move {
            caller
                .suggest(&ctx, recommend::SuggestRequest::default())
                .await
        }
    };
    let mut refused = Vec::new();
    for _ in 0..10 {
        if let Err(status) = call("mall").await {
            refused.push(status);
        }
    }
    // a burst of 3, and one more for each second the calls took (none, unless this machine is
    // very slow)
    assert!(
        (6..=7).contains(&refused.len()),
        "a burst of 3 admitted: {refused:?}"
    );
    assert!(
        refused
            .iter()
            .all(|s| s.code() == tonic::Code::ResourceExhausted
                && s.message() == "tenant mall is over its rate of 1 call(s) per second"),
        "{refused:?}"
    );
    let count = || served.0.load(std::sync::atomic::Ordering::SeqCst);
    let admitted = 10 - refused.len();
    assert_eq!(
        count(),
        admitted,
        "only the admitted calls reached the worker"
    );
    for _ in 0..10 {
        call("paipai").await.unwrap();
    }
    assert_eq!(count(), admitted + 10);
    // a tenant's limits follow its file: raised, mall's calls go through again at once
    let mut raised = tenants.get("mall").unwrap().clone();
    raised.limits.requests_per_second = 10_000;
    raised.limits.burst = 10_000;
    front.serve_tenant(&raised);
    call("mall").await.unwrap();
    assert_eq!(count(), admitted + 11);
}

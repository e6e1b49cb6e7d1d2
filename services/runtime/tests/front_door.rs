//! The front door's view of a tenant's health, which automatic degradation rules read: only
//! what says something about the service counts, never what a caller brought on itself.

mod common;

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

//! Health and reflection, as a load balancer and grpcurl ask them: without tenant metadata, at
//! the front door and directly at a worker.

use crate::support;

use support::{MeshUp, field, tenants_folder};
use tokio_stream::StreamExt;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

async fn channel(address: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn status(address: &str, service: &str) -> Result<ServingStatus, tonic::Status> {
    let answer = HealthClient::new(channel(address).await)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(answer.into_inner().status())
}

/// The services reflection lists at `address`.
async fn listed(address: &str) -> Vec<String> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel(address).await)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.next().await.unwrap().unwrap();
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            names
        }
        other => panic!("expected a service list, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_without_tenant_credentials_at_the_front_door_and_a_worker() {
    let dir = tenants_folder(&["mall"], &[]);
    let mut up = MeshUp::start(dir.path(), &[]).await;
    let serving = up.shared_worker().await;
    let worker = field(&serving, "address").to_owned();
    for address in [up.front.as_str(), worker.as_str()] {
        assert_eq!(
            status(address, "").await.unwrap(),
            ServingStatus::Serving,
            "{address}"
        );
        assert_eq!(
            status(address, "order.v1.Order").await.unwrap(),
            ServingStatus::Serving,
            "{address}"
        );
        let unknown = status(address, "nope.v1.Nope").await.unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound, "{address}");
        let services = listed(address).await;
        for expected in [
            "message.v1.Message",
            "order.v1.Order",
            "order.v2.Order",
            "push.v1.Push",
        ] {
            assert!(
                services.iter().any(|s| s == expected),
                "{address}: {services:?}"
            );
        }
    }
}

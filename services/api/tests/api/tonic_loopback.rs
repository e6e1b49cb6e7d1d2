//! The generated tonic server and the generated mesh caller talk over a real loopback socket,
//! carrying the request context (tenant, request id, trace context) and the contract deadline.

use std::sync::{Arc, Mutex};

use mesh_api::{gateway, order::v1 as order};
use mesh_contract::{RequestContext, TenantId};
use tokio_stream::{StreamExt, wrappers::TcpListenerStream};
use tonic::{Request, Response, Status};

/// A request's context and its `grpc-timeout` header, as the server saw them.
type Seen = (RequestContext, Option<String>);

/// An order service that answers from the request and records what it saw.
#[derive(Default, Clone)]
struct Orders {
    seen: Arc<Mutex<Vec<Seen>>>,
}

#[tonic::async_trait]
impl order::order_server::Order for Orders {
    async fn get_order(
        &self,
        request: Request<order::GetOrderRequest>,
    ) -> Result<Response<order::GetOrderResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let deadline = request
            .metadata()
            .get("grpc-timeout")
            .map(|v| v.to_str().unwrap().to_owned());
        self.seen.lock().unwrap().push((ctx.clone(), deadline));
        let id = request.into_inner().order_id;
        Ok(Response::new(order::GetOrderResponse {
            order: Some(order::OrderView {
                order_id: id,
                user_id: format!("user-of-{}", ctx.tenant),
                status: order::OrderStatus::Paid as i32,
                total_cents: 1999,
                ..Default::default()
            }),
        }))
    }

    async fn list_orders(
        &self,
        _request: Request<order::ListOrdersRequest>,
    ) -> Result<Response<order::ListOrdersResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

async fn serve<S>(service: S) -> String
where
    S: tonic::server::NamedService
        + tower_service::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

#[tokio::test]
async fn caller_and_server_exchange_a_call_with_context_over_loopback() {
    let orders = Orders::default();
    let url = serve(order::order_server::OrderServer::new(orders.clone())).await;
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut caller = order::OrderCaller::new(channel);

    for tenant in ["mall", "finance", "paipai"] {
        let mut ctx = RequestContext::new(TenantId::new(tenant).unwrap()).with_token("t0ken");
        ctx.trace.traceparent =
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        let response = caller
            .get_order(
                &ctx,
                order::GetOrderRequest {
                    order_id: format!("o-{tenant}"),
                },
            )
            .await
            .expect("call succeeds");
        let view = response.order.expect("order present");
        assert_eq!(view.order_id, format!("o-{tenant}"));
        assert_eq!(view.user_id, format!("user-of-{tenant}"));
        assert_eq!(view.status(), order::OrderStatus::Paid);

        let (seen, deadline) = orders.seen.lock().unwrap().last().cloned().unwrap();
        // who called is established by the runtime's auth layer, never read off the wire
        let sent = mesh_contract::RequestContext {
            caller: mesh_contract::Caller::Anonymous,
            ..ctx.clone()
        };
        assert_eq!(seen, sent, "the server sees exactly the caller's context");
        // the contract's 300 ms deadline travels as grpc-timeout (tonic encodes it in micro- or milliseconds)
        let deadline = deadline.expect("grpc-timeout header is set");
        assert!(
            ["300000u", "300m"].contains(&deadline.as_str()),
            "unexpected grpc-timeout {deadline}"
        );
    }
    assert_eq!(order::contract::GET_ORDER.timeout.as_millis(), 300);
}

#[tokio::test]
async fn a_call_without_tenant_is_refused_by_the_context_check() {
    let url = serve(order::order_server::OrderServer::new(Orders::default())).await;
    let mut raw = order::order_client::OrderClient::connect(url)
        .await
        .unwrap();
    let status = raw
        .get_order(order::GetOrderRequest {
            order_id: "o1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        status.message().contains("x-mesh-tenant"),
        "{}",
        status.message()
    );
}

/// A gateway that streams two pushes to every attaching terminal.
struct Gateway;

#[tonic::async_trait]
impl gateway::v1::gateway_server::Gateway for Gateway {
    type AttachStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<gateway::v1::Push, Status>> + Send>>;

    async fn attach(
        &self,
        request: Request<gateway::v1::AttachRequest>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let attach = request.into_inner();
        let pushes = (1..=2).map(move |seq| {
            Ok(gateway::v1::Push {
                payload: Some(gateway::v1::push::Payload::Message(
                    mesh_api::message::v1::ChatMessage {
                        seq,
                        to_user: attach.user_id.clone(),
                        body: format!("{} #{seq} for {}", ctx.tenant, attach.terminal_id),
                        ..Default::default()
                    },
                )),
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(pushes))))
    }

    async fn deliver(
        &self,
        _request: Request<gateway::v1::DeliverRequest>,
    ) -> Result<Response<gateway::v1::DeliverResponse>, Status> {
        Ok(Response::new(gateway::v1::DeliverResponse {
            delivered: false,
        }))
    }
}

#[tokio::test]
async fn server_streaming_call_delivers_every_push() {
    let url = serve(gateway::v1::gateway_server::GatewayServer::new(Gateway)).await;
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut caller = gateway::v1::GatewayCaller::new(channel);
    let ctx = RequestContext::new(TenantId::new("paipai").unwrap());
    let mut stream = caller
        .attach(
            &ctx,
            gateway::v1::AttachRequest {
                user_id: "u1".into(),
                terminal_id: "phone".into(),
                kind: 1,
            },
        )
        .await
        .unwrap();
    let mut bodies = Vec::new();
    while let Some(push) = stream.next().await {
        match push.unwrap().payload {
            Some(gateway::v1::push::Payload::Message(m)) => bodies.push(m.body),
            other => panic!("unexpected push {other:?}"),
        }
    }
    assert_eq!(bodies, ["paipai #1 for phone", "paipai #2 for phone"]);
}

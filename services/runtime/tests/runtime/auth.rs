//! Tenant authentication on a real tonic server over loopback: each tenant's credential works
//! for that tenant only; no, unknown or foreign credentials are refused with a clear status; a
//! tenant onboarded at run time is served without restarting anything.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use mesh_api::order::v1 as order;
use mesh_contract::{RequestContext, TenantId};
use mesh_runtime::{TenantAuthLayer, TenantDirectory, Tenants, config::load_file};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};

#[derive(Clone, Default)]
struct Orders {
    seen: Arc<Mutex<Vec<RequestContext>>>,
}

#[tonic::async_trait]
impl order::order_server::Order for Orders {
    async fn get_order(
        &self,
        request: Request<order::GetOrderRequest>,
    ) -> Result<Response<order::GetOrderResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        self.seen.lock().unwrap().push(ctx.clone());
        Ok(Response::new(order::GetOrderResponse {
            order: Some(order::OrderView {
                user_id: ctx.tenant.to_string(),
                ..Default::default()
            }),
        }))
    }

    async fn list_orders(
        &self,
        _: Request<order::ListOrdersRequest>,
    ) -> Result<Response<order::ListOrdersResponse>, Status> {
        Ok(Response::new(order::ListOrdersResponse::default()))
    }
}

fn tenants_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tenants")
}

async fn serve(directory: TenantDirectory, orders: Orders) -> order::OrderCaller {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(TenantAuthLayer::new(directory))
            .add_service(order::order_server::OrderServer::new(orders))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    order::OrderCaller::new(channel)
}

fn ctx(tenant: &str, token: Option<&str>) -> RequestContext {
    let ctx = RequestContext::new(TenantId::new(tenant).unwrap());
    match token {
        Some(token) => ctx.with_token(token),
        None => ctx,
    }
}

async fn call(caller: &mut order::OrderCaller, ctx: &RequestContext) -> Result<String, Status> {
    caller
        .get_order(
            ctx,
            order::GetOrderRequest {
                order_id: "o-1".into(),
            },
        )
        .await
        .map(|r| r.order.unwrap().user_id)
}

#[tokio::test]
async fn each_credential_works_for_its_own_tenant_only() {
    let tenants = Tenants::load(&tenants_dir(), mesh_api::CONTRACTS).unwrap();
    let orders = Orders::default();
    let mut caller = serve(
        TenantDirectory::from_tenants(
            &tenants,
            mesh_runtime::layers::Catalogue(mesh_api::CONTRACTS),
        ),
        orders.clone(),
    )
    .await;

    for tenant in ["mall", "finance", "paipai"] {
        let token = tenants
            .get(tenant)
            .unwrap()
            .credentials
            .token
            .clone()
            .unwrap();
        assert_eq!(
            call(&mut caller, &ctx(tenant, Some(&token))).await.unwrap(),
            tenant
        );
        let seen = orders.seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(seen.tenant.as_str(), tenant);
        assert_eq!(seen.token, None, "the credential stops at the auth layer");
    }

    // mall's credential cannot act as finance
    let mall_token = tenants
        .get("mall")
        .unwrap()
        .credentials
        .token
        .clone()
        .unwrap();
    let status = call(&mut caller, &ctx("finance", Some(&mall_token)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "the credential presented is not valid for tenant finance"
    );
    assert_eq!(
        orders.seen.lock().unwrap().len(),
        3,
        "refused calls never reach the service"
    );
}

#[tokio::test]
async fn missing_unknown_and_tenantless_calls_are_refused_clearly() {
    let tenants = Tenants::load(&tenants_dir(), mesh_api::CONTRACTS).unwrap();
    let mut caller = serve(
        TenantDirectory::from_tenants(
            &tenants,
            mesh_runtime::layers::Catalogue(mesh_api::CONTRACTS),
        ),
        Orders::default(),
    )
    .await;

    let status = call(&mut caller, &ctx("mall", None)).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::Unauthenticated,
            "no credential for tenant mall: a user token (`authorization: Bearer ...`) or a credential (`x-mesh-token`)"
        )
    );

    let status = call(&mut caller, &ctx("nobody", Some("whatever-token")))
        .await
        .unwrap_err();
    // answered as a wrong credential is: nobody learns which tenants exist
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::Unauthenticated,
            "the credential presented is not valid for tenant nobody"
        )
    );
    let wrong = call(&mut caller, &ctx("mall", Some("whatever-token")))
        .await
        .unwrap_err();
    assert_eq!(
        wrong.message().replace("mall", "nobody"),
        status.message(),
        "an unknown tenant and a wrong credential are answered alike"
    );

    // a raw client sending no context at all
    let channel = caller.clone();
    drop(channel);
    let listener_addr = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .layer(TenantAuthLayer::new(TenantDirectory::from_tenants(
                    &tenants,
                    mesh_runtime::layers::Catalogue(mesh_api::CONTRACTS),
                )))
                .add_service(order::order_server::OrderServer::new(Orders::default()))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        addr
    };
    let mut raw = order::order_client::OrderClient::connect(format!("http://{listener_addr}"))
        .await
        .unwrap();
    let status = raw
        .get_order(order::GetOrderRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("request carries no tenant"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_tenant_onboarded_at_run_time_is_served_without_restart() {
    let tenants = Tenants::load(&tenants_dir(), mesh_api::CONTRACTS).unwrap();
    let directory = TenantDirectory::from_tenants(
        &tenants,
        mesh_runtime::layers::Catalogue(mesh_api::CONTRACTS),
    );
    let mut caller = serve(directory.clone(), Orders::default()).await;
    let acme = ctx("acme", Some("acme-secret-token"));
    assert_eq!(
        call(&mut caller, &acme).await.unwrap_err().message(),
        "the credential presented is not valid for tenant acme"
    );

    // a new business line: one file, written by the test, nothing else
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acme.toml");
    std::fs::write(
        &file,
        "id = \"acme\"\ndisplay_name = \"Acme\"\ndata_namespace = \"acme\"\n[credentials]\ntoken = \"acme-secret-token\"\n",
    )
    .unwrap();
    let config = load_file(
        &file,
        Some(&tenants_dir().join("_defaults.toml")),
        mesh_api::CONTRACTS,
    )
    .unwrap();
    directory.add(&config);
    assert_eq!(call(&mut caller, &acme).await.unwrap(), "acme");
    // and the tenants already served kept working throughout
    let mall_token = tenants
        .get("mall")
        .unwrap()
        .credentials
        .token
        .clone()
        .unwrap();
    assert_eq!(
        call(&mut caller, &ctx("mall", Some(&mall_token)))
            .await
            .unwrap(),
        "mall"
    );
}

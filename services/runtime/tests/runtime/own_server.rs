//! A process's calls to its own address ([`OwnServer`]): answered by its server stack in
//! process once it serves, over the network before, and with the layers of both sides kept.

use crate::common;

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use common::{ctx, tenants};
use mesh_api::locator::v1 as locator;
use mesh_contract::ServiceCredentials;
use mesh_runtime::{
    Inbound, Outbound, OwnServer,
    layers::{Bulkheads, Catalogue, SwitchBoard},
};
use tonic::{Code, Request, Response, Status, service::Routes};

const CATALOGUE: Catalogue = Catalogue(mesh_api::CONTRACTS);
const NODE_CREDENTIAL: &str = "own-server-test-node-credential";

/// A locator counting the calls that came over a socket and those that did not; `hold`
/// keeps a locate waiting until it is notified.
#[derive(Clone, Default)]
struct CountingLocator {
    over_network: Arc<AtomicUsize>,
    in_process: Arc<AtomicUsize>,
    hold: Arc<tokio::sync::Notify>,
    holding: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl locator::locator_server::Locator for CountingLocator {
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
        let counter = match request.remote_addr() {
            Some(_) => &self.over_network,
            None => &self.in_process,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        if request.get_ref().user_id == "hold" {
            self.holding.fetch_add(1, Ordering::SeqCst);
            self.hold.notified().await;
        }
        Ok(Response::new(locator::LocateResponse {
            terminals: vec![locator::TerminalLocation {
                user_id: request.into_inner().user_id,
                ..Default::default()
            }],
        }))
    }
}

/// The product's inbound stack for the shipped tenants, accepting the test's node credential.
fn inbound() -> Inbound {
    let tenants = tenants();
    let inbound =
        Inbound::new(CATALOGUE, SwitchBoard::new(CATALOGUE)).with_node_credential(NODE_CREDENTIAL);
    for config in tenants.tenants.values() {
        inbound.serve_tenant(config).unwrap();
    }
    inbound
}

fn routes(locator: &CountingLocator) -> Routes {
    Routes::new(locator::locator_server::LocatorServer::new(locator.clone()))
}

/// `locator` behind `inbound`, served over TCP; its address.
async fn serve_over_tcp(inbound: &Inbound, locator: &CountingLocator) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(inbound.layer())
            .add_routes(routes(locator))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    url
}

fn as_node() -> mesh_contract::RequestContext {
    ServiceCredentials::node(NODE_CREDENTIAL).outbound(&ctx(&tenants(), "mall"))
}

fn locate(user: &str) -> locator::LocateRequest {
    locator::LocateRequest {
        user_id: user.into(),
    }
}

#[tokio::test]
async fn calls_to_the_own_address_go_in_process_once_it_serves_and_others_stay_on_the_network() {
    let inbound = inbound();
    let (own_locator, other_locator) = (CountingLocator::default(), CountingLocator::default());
    let own_url = serve_over_tcp(&inbound, &own_locator).await;
    let other_url = serve_over_tcp(&inbound, &other_locator).await;
    let own_endpoint = tonic::transport::Endpoint::from_shared(own_url).unwrap();
    let server = OwnServer::new(own_endpoint.uri());
    let outbound = Outbound::new(Bulkheads::new(8), CATALOGUE).with_own_server(server.clone());
    let mut own = locator::LocatorCaller::new(outbound.channel("locator", &own_endpoint));

    // before the server is set, over the network
    let found = own.locate(&as_node(), locate("ann")).await.unwrap();
    assert_eq!(found.terminals[0].user_id, "ann");
    assert_eq!(own_locator.over_network.load(Ordering::SeqCst), 1);

    // then in process, through the same channel
    server.serve(inbound.in_process(routes(&own_locator)));
    for _ in 0..3 {
        let found = own.locate(&as_node(), locate("bob")).await.unwrap();
        assert_eq!(found.terminals[0].user_id, "bob");
    }
    assert_eq!(own_locator.over_network.load(Ordering::SeqCst), 1);
    assert_eq!(own_locator.in_process.load(Ordering::SeqCst), 3);

    // a channel to another address is not this process's
    let other_endpoint = tonic::transport::Endpoint::from_shared(other_url).unwrap();
    let mut other = locator::LocatorCaller::new(outbound.channel("locator", &other_endpoint));
    other.locate(&as_node(), locate("cid")).await.unwrap();
    assert_eq!(other_locator.over_network.load(Ordering::SeqCst), 1);
    assert_eq!(other_locator.in_process.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_in_process_call_keeps_the_callees_authentication_and_the_callers_bulkhead() {
    let inbound = inbound();
    let locator = CountingLocator::default();
    // nothing listens here: only the in-process path can answer
    let endpoint = tonic::transport::Endpoint::from_static("http://127.0.0.1:9");
    let server = OwnServer::new(endpoint.uri());
    server.serve(inbound.in_process(routes(&locator)));
    let outbound = Outbound::new(Bulkheads::new(1), CATALOGUE).with_own_server(server);
    let caller = locator::LocatorCaller::new(outbound.channel("locator", &endpoint));

    // the locator serves the mesh only: a tenant's own credential is refused, in process too
    let refused = caller
        .clone()
        .locate(&ctx(&tenants(), "mall"), locate("ann"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(locator.in_process.load(Ordering::SeqCst), 0);

    // a bulkhead of one: a second call while the first waits is shed at once
    let first = tokio::spawn({
        let caller = caller.clone();
        async move { caller.clone().locate(&as_node(), locate("hold")).await }
    });
    while locator.holding.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let shed = caller
        .clone()
        .locate(&as_node(), locate("bob"))
        .await
        .unwrap_err();
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    locator.hold.notify_one();
    assert_eq!(first.await.unwrap().unwrap().terminals[0].user_id, "hold");
    caller
        .clone()
        .locate(&as_node(), locate("bob"))
        .await
        .unwrap();
    assert_eq!(locator.over_network.load(Ordering::SeqCst), 0);
}

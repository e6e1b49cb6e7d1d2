//! The inbound layer stack (auth, rate limit, switches, deadline) and the outbound bulkhead, on
//! real tonic servers over loopback.

use crate::common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use common::{ctx, folder, tenants};
use mesh_api::{locator::v1 as locator, order::v2 as order, recommend::v1 as recommend};
use mesh_contract::{RequestContext, TenantId};
use mesh_runtime::{
    TenantAuthLayer, TenantDirectory, Tenants,
    layers::{
        AdmitLayer, AnswerCache, Bulkheads, CachedAnswersLayer, Catalogue, DeadlineLayer,
        RateLimiter, Switch, SwitchBoard, SwitchTarget,
    },
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status, transport::Channel};

const CATALOGUE: Catalogue = Catalogue(mesh_api::CONTRACTS);

async fn listen() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

async fn channel(url: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Recommends three products, or answers slowly when asked for "slow".
struct Recommendations;

#[tonic::async_trait]
impl recommend::recommend_server::Recommend for Recommendations {
    async fn suggest(
        &self,
        request: Request<recommend::SuggestRequest>,
    ) -> Result<Response<recommend::SuggestResponse>, Status> {
        if request.get_ref().conversation_id == "slow" {
            // the slow dependency the test sets its deadline against
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let products = (1..=3)
            .map(|i| recommend::Product {
                sku: format!("sku-{i}"),
                ..Default::default()
            })
            .collect();
        Ok(Response::new(recommend::SuggestResponse { products }))
    }
}

/// Order v2 whose calls all succeed, but for order `missing`, which is not found.
struct Orders;

#[tonic::async_trait]
impl order::order_server::Order for Orders {
    async fn get_order(
        &self,
        r: Request<order::GetOrderRequest>,
    ) -> Result<Response<order::GetOrderResponse>, Status> {
        if r.get_ref().order_id == "missing" {
            return Err(Status::not_found("order \"missing\""));
        }
        Ok(Response::new(order::GetOrderResponse {
            order: Some(order::OrderView {
                order_id: r.into_inner().order_id,
                ..Default::default()
            }),
        }))
    }
    async fn list_orders(
        &self,
        _: Request<order::ListOrdersRequest>,
    ) -> Result<Response<order::ListOrdersResponse>, Status> {
        Ok(Response::new(order::ListOrdersResponse {
            orders: vec![order::OrderView::default()],
        }))
    }
    async fn cancel_order(
        &self,
        _: Request<order::CancelOrderRequest>,
    ) -> Result<Response<order::CancelOrderResponse>, Status> {
        Ok(Response::new(order::CancelOrderResponse {
            order: Some(order::OrderView::default()),
        }))
    }
}

/// The admission layers (auth, rate limit, switches, plan, deadline; each tested on its own
/// here, the product's whole stack is `mesh_runtime::Inbound`) in front of recommend v1 and
/// order v2.
async fn serve_stack(tenants: &Tenants, board: SwitchBoard, limiter: RateLimiter) -> String {
    let (listener, url) = listen().await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(TenantAuthLayer::new(TenantDirectory::from_tenants(
                tenants,
                mesh_runtime::layers::Catalogue(mesh_api::CONTRACTS),
            )))
            .layer(AdmitLayer::new(limiter))
            .layer(CachedAnswersLayer::new(
                AnswerCache::new(1000),
                board.clone(),
                CATALOGUE,
            ))
            .layer(AdmitLayer::new(board))
            .layer(DeadlineLayer::new(CATALOGUE))
            .add_service(recommend::recommend_server::RecommendServer::new(
                Recommendations,
            ))
            .add_service(order::order_server::OrderServer::new(Orders))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    url
}

fn off(tenant: Option<&str>, target: SwitchTarget) -> Switch {
    Switch {
        tenant: tenant.map(|t| TenantId::new(t).unwrap()),
        target,
        reason: "incident 42".into(),
        changed_by: "test".into(),
        changed_at: SystemTime::now(),
    }
}

#[tokio::test]
async fn a_switched_off_tier_answers_the_degraded_response_for_that_tenant_only() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    let tenants = tenants();
    let board = SwitchBoard::new(CATALOGUE);
    let url = serve_stack(&tenants, board.clone(), RateLimiter::default()).await;
    let mut caller = recommend::RecommendCaller::new(channel(&url).await);
    let (mall, paipai) = (ctx(&tenants, "mall"), ctx(&tenants, "paipai"));
    let suggest = recommend::SuggestRequest::default;

    assert_eq!(
        caller
            .suggest(&mall, suggest())
            .await
            .unwrap()
            .products
            .len(),
        3
    );
    board.turn_off(off(Some("mall"), SwitchTarget::TiersFrom(2)));
    // recommend is tier 2 and its contract's degraded answer is `empty`
    assert_eq!(
        caller
            .suggest(&mall, suggest())
            .await
            .unwrap()
            .products
            .len(),
        0
    );
    assert_eq!(
        caller
            .suggest(&paipai, suggest())
            .await
            .unwrap()
            .products
            .len(),
        3,
        "other tenants unaffected"
    );

    // a degraded answer is fast, even where the service would hang
    let slow = recommend::SuggestRequest {
        conversation_id: "slow".into(),
        ..Default::default()
    };
    let started = Instant::now();
    assert!(
        caller
            .suggest(&mall, slow)
            .await
            .unwrap()
            .products
            .is_empty()
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the service was not called"
    );

    // the answer is marked
    let mut raw = recommend::recommend_client::RecommendClient::new(channel(&url).await);
    let mut request = Request::new(suggest());
    mall.inject(request.metadata_mut()).unwrap();
    let response = raw.suggest(request).await.unwrap();
    assert_eq!(
        response.metadata().get("x-mesh-degraded").unwrap(),
        "tier>=2@mall"
    );

    assert!(board.turn_on(Some(&mall.tenant), &SwitchTarget::TiersFrom(2)));
    assert_eq!(
        caller
            .suggest(&mall, suggest())
            .await
            .unwrap()
            .products
            .len(),
        3,
        "switching on restores"
    );
}

#[tokio::test]
async fn degraded_answers_follow_each_methods_contract() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    let tenants = tenants();
    let board = SwitchBoard::new(CATALOGUE);
    let url = serve_stack(&tenants, board.clone(), RateLimiter::default()).await;
    let mut caller = order::OrderCaller::new(channel(&url).await);
    let paipai = ctx(&tenants, "paipai");
    board.turn_off(off(None, SwitchTarget::Service("order".into())));

    // CancelOrder: error { UNAVAILABLE "order cancellation is paused" }
    let status = caller
        .cancel_order(&paipai, order::CancelOrderRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unavailable, "order cancellation is paused")
    );
    // ListOrders: empty
    assert!(
        caller
            .list_orders(&paipai, order::ListOrdersRequest::default())
            .await
            .unwrap()
            .orders
            .is_empty()
    );
    // GetOrder: cached, with nothing cached: the empty answer
    assert_eq!(
        caller
            .get_order(
                &paipai,
                order::GetOrderRequest {
                    order_id: "o-1".into()
                }
            )
            .await
            .unwrap(),
        order::GetOrderResponse::default()
    );

    // a method-level switch leaves the service's other methods alone
    board.turn_on(None, &SwitchTarget::Service("order".into()));
    board.turn_off(off(
        Some("paipai"),
        SwitchTarget::Method {
            service: "order".into(),
            method: "CancelOrder".into(),
        },
    ));
    assert_eq!(
        caller
            .list_orders(&paipai, order::ListOrdersRequest::default())
            .await
            .unwrap()
            .orders
            .len(),
        1
    );
    assert_eq!(
        caller
            .cancel_order(&paipai, order::CancelOrderRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::Unavailable
    );
    assert_eq!(board.list().len(), 1);
}

#[tokio::test]
async fn a_cached_method_answers_its_last_good_answer_per_tenant_while_off() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    let tenants = tenants();
    let board = SwitchBoard::new(CATALOGUE);
    let url = serve_stack(&tenants, board.clone(), RateLimiter::default()).await;
    let mut caller = order::OrderCaller::new(channel(&url).await);
    let (paipai, mall) = (ctx(&tenants, "paipai"), ctx(&tenants, "mall"));
    let get = |id: &str| order::GetOrderRequest {
        order_id: id.into(),
    };

    // a good answer while on...
    let live = caller.get_order(&paipai, get("o-7")).await.unwrap();
    assert_eq!(live.order.as_ref().unwrap().order_id, "o-7");
    // ...is what GetOrder (degraded: cached, 60 s) answers once switched off
    board.turn_off(off(None, SwitchTarget::Service("order".into())));
    assert_eq!(caller.get_order(&paipai, get("o-7")).await.unwrap(), live);
    // another request, or another tenant, has no cached answer: the empty answer
    assert_eq!(
        caller.get_order(&paipai, get("o-8")).await.unwrap(),
        order::GetOrderResponse::default()
    );
    assert_eq!(
        caller.get_order(&mall, get("o-7")).await.unwrap(),
        order::GetOrderResponse::default(),
        "answers never cross tenants"
    );
    // nor callers: an end user of paipai asking for the same order gets no answer the
    // backend was given
    let paipai_users = tenants.get("paipai").unwrap().users.clone().unwrap();
    let bob = RequestContext::new(TenantId::new("paipai").unwrap())
        .with_user_token(&paipai_users.issue("bob", None, 60).unwrap());
    assert_eq!(
        caller.get_order(&bob, get("o-7")).await.unwrap(),
        order::GetOrderResponse::default(),
        "answers never cross callers"
    );

    let mut raw = order::order_client::OrderClient::new(channel(&url).await);
    let mut request = Request::new(get("o-7"));
    paipai.inject(request.metadata_mut()).unwrap();
    let response = raw.get_order(request).await.unwrap();
    assert_eq!(
        response.metadata().get("x-mesh-degraded").unwrap(),
        "cached@paipai"
    );
}

#[tokio::test]
async fn initial_switches_come_from_tenant_config() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    let dir = folder(&[(
        "acme.toml",
        "id = \"acme\"\ndisplay_name = \"Acme\"\ndata_namespace = \"acme\"\n[credentials]\ntoken = \"acme-secret-token\"\n[switches]\nservices_off = [\"recommend\"]\n",
    )]);
    let tenants = Tenants::load(dir.path(), mesh_api::CONTRACTS).unwrap();
    let board = SwitchBoard::from_tenants(&tenants, CATALOGUE);
    let url = serve_stack(&tenants, board, RateLimiter::default()).await;
    let mut caller = recommend::RecommendCaller::new(channel(&url).await);
    let acme = RequestContext::new(TenantId::new("acme").unwrap()).with_token("acme-secret-token");
    assert!(
        caller
            .suggest(&acme, recommend::SuggestRequest::default())
            .await
            .unwrap()
            .products
            .is_empty()
    );
}

#[tokio::test]
async fn a_tenant_over_its_rate_is_refused_while_others_pass() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    let tenants = tenants();
    let limiter = RateLimiter::from_tenants(&tenants);
    limiter.set(TenantId::new("mall").unwrap(), 1, 5);
    let url = serve_stack(&tenants, SwitchBoard::new(CATALOGUE), limiter).await;
    let mut caller = recommend::RecommendCaller::new(channel(&url).await);
    let (mall, paipai) = (ctx(&tenants, "mall"), ctx(&tenants, "paipai"));
    let mut refused = 0;
    for _ in 0..20 {
        match caller
            .suggest(&mall, recommend::SuggestRequest::default())
            .await
        {
            Ok(_) => {}
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                assert_eq!(
                    status.message(),
                    "tenant mall is over its rate of 1 call(s) per second"
                );
                refused += 1;
            }
        }
        caller
            .suggest(&paipai, recommend::SuggestRequest::default())
            .await
            .expect("paipai is within its rate");
    }
    assert!(
        (14..=15).contains(&refused),
        "burst of 5 (plus at most one refill) admitted, {refused} refused"
    );
}

/// A caller's own deadline, shorter than the contract's, that runs out: DEADLINE_EXCEEDED, as
/// gRPC says (tonic's server would answer CANCELLED if its own timer on the header won). Sent
/// over plain HTTP/2 with a `grpc-timeout` header, so what is read is the server's answer, never
/// a client's own timer (tonic's, firing 5 ms after the server's answer left, lost races on a
/// busy CI machine).
#[tokio::test]
async fn a_call_past_the_callers_deadline_reads_deadline_exceeded() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    let tenants = tenants();
    let url = serve_stack(
        &tenants,
        SwitchBoard::new(CATALOGUE),
        RateLimiter::default(),
    )
    .await;
    let tcp = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let message = prost::Message::encode_to_vec(&recommend::SuggestRequest {
        conversation_id: "slow".into(),
        ..Default::default()
    });
    let mut body = vec![0_u8];
    body.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&message);
    let ctx = ctx(&tenants, "mall");
    for _ in 0..5 {
        let mut request = http::Request::post(format!("{url}/recommend.v1.Recommend/Suggest"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", "100m");
        for (name, value) in ctx.to_headers() {
            request = request.header(name, value);
        }
        let mut send = send.clone().ready().await.unwrap();
        let (response, mut stream) = send.send_request(request.body(()).unwrap(), false).unwrap();
        stream.send_data(body.clone().into(), true).unwrap();
        let response = response.await.unwrap();
        // trailers-only: the status in the headers; otherwise in the trailers
        let status = match response.headers().get("grpc-status") {
            Some(status) => status.clone(),
            None => {
                let mut body = response.into_body();
                while body.data().await.is_some() {}
                body.trailers().await.unwrap().unwrap()["grpc-status"].clone()
            }
        };
        assert_eq!(status, "4", "DEADLINE_EXCEEDED");
    }
}

#[tokio::test]
async fn a_call_past_its_contract_deadline_is_cut_off() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    let tenants = tenants();
    let url = serve_stack(
        &tenants,
        SwitchBoard::new(CATALOGUE),
        RateLimiter::default(),
    )
    .await;
    // a raw client sends no grpc-timeout: only the contract's 200 ms deadline applies
    let mut raw = recommend::recommend_client::RecommendClient::new(channel(&url).await);
    let mut request = Request::new(recommend::SuggestRequest {
        conversation_id: "slow".into(),
        ..Default::default()
    });
    ctx(&tenants, "mall")
        .inject(request.metadata_mut())
        .unwrap();
    let started = Instant::now();
    let status = raw.suggest(request).await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(
        status.message(),
        "Suggest did not answer within its deadline of 200ms"
    );
    assert!(
        waited < Duration::from_secs(1),
        "cut off at the deadline, not after the 2 s the service takes: {waited:?}"
    );
}

// ---- dependency isolation ----

/// A locator that is slow for one tenant (its shard is overloaded) and fast for the others.
struct ShardedLocator {
    slow_tenant: TenantId,
}

#[tonic::async_trait]
impl locator::locator_server::Locator for ShardedLocator {
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
        let ctx = RequestContext::from_request(&request)?;
        let pause = if ctx.tenant == self.slow_tenant {
            150
        } else {
            1
        };
        // the slow tenant's dependency: 150 ms per lookup, against 1 ms for the others
        tokio::time::sleep(Duration::from_millis(pause)).await;
        Ok(Response::new(locator::LocateResponse::default()))
    }
}

type LocatorClient = locator::LocatorCaller<
    tower::util::BoxCloneSyncService<
        http::Request<tonic::body::Body>,
        http::Response<tonic::body::Body>,
        tonic::transport::Error,
    >,
>;

/// What the test's services present to each other.
const NODE_CREDENTIAL: &str = "layers-test-node-credential";

/// A front service with finite capacity (8 calls at once) whose every call asks the locator.
struct Front {
    locator: LocatorClient,
}

#[tonic::async_trait]
impl recommend::recommend_server::Recommend for Front {
    async fn suggest(
        &self,
        request: Request<recommend::SuggestRequest>,
    ) -> Result<Response<recommend::SuggestResponse>, Status> {
        // the locator is the mesh's own: the front service calls it as a node
        let ctx = mesh_contract::ServiceCredentials::node(NODE_CREDENTIAL)
            .outbound(&RequestContext::from_request(&request)?);
        self.locator
            .clone()
            .locate(&ctx, locator::LocateRequest::default())
            .await?;
        Ok(Response::new(recommend::SuggestResponse::default()))
    }
}

/// The calm tenant's `calls` calls, with the noisy tenant flooding if `noisy`.
async fn calm_p99(bulkhead: bool, noisy: bool, calls: usize) -> Calm {
    let tenants = tenants();
    let (listener, locator_url) = listen().await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(TenantAuthLayer::new(
                TenantDirectory::from_tenants(
                    &tenants,
                    mesh_runtime::layers::Catalogue(mesh_api::CONTRACTS),
                )
                .with_node_credential(NODE_CREDENTIAL),
            ))
            .add_service(locator::locator_server::LocatorServer::new(
                ShardedLocator {
                    slow_tenant: TenantId::new("mall").unwrap(),
                },
            ))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let bulkheads = Bulkheads::new(2);
    let to_locator = channel(&locator_url).await;
    let service = if bulkhead {
        tower::util::BoxCloneSyncService::new(
            tower::ServiceBuilder::new()
                .layer(AdmitLayer::new(bulkheads.for_dependency("locator")))
                .service(to_locator),
        )
    } else {
        tower::util::BoxCloneSyncService::new(to_locator)
    };
    let front = Front {
        locator: locator::LocatorCaller::new(service),
    };
    let (listener, front_url) = listen().await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(8))
            .layer(TenantAuthLayer::new(TenantDirectory::from_tenants(
                &tenants,
                mesh_runtime::layers::Catalogue(mesh_api::CONTRACTS),
            )))
            .add_service(recommend::recommend_server::RecommendServer::new(front))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let front_channel = channel(&front_url).await;
    let request = |tenants: &Tenants, tenant: &str| recommend::SuggestRequest {
        user_id: tenants
            .get(tenant)
            .unwrap()
            .credentials
            .token
            .clone()
            .unwrap(),
        ..Default::default()
    };

    let stop = Arc::new(AtomicBool::new(false));
    let mut flood = Vec::new();
    if noisy {
        for _ in 0..32 {
            let (stop, mut caller) = (
                stop.clone(),
                recommend::RecommendCaller::new(front_channel.clone()),
            );
            let (mall, body) = (ctx(&tenants, "mall"), request(&tenants, "mall"));
            flood.push(tokio::spawn(async move {
                let mut shed = 0;
                while !stop.load(Ordering::Relaxed) {
                    match caller.suggest(&mall, body.clone()).await {
                        // shed by its bulkhead: refused at once
                        Err(status) if status.code() == Code::ResourceExhausted => {
                            shed += 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        // served, or (without a bulkhead) past its deadline
                        _ => {}
                    }
                }
                shed
            }));
        }
        // the flood under way before the quiet tenant's calls are timed
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut caller = recommend::RecommendCaller::new(front_channel.clone());
    let (paipai, body) = (ctx(&tenants, "paipai"), request(&tenants, "paipai"));
    let mut latencies = Vec::new();
    let mut failed = 0;
    for _ in 0..calls {
        let started = Instant::now();
        if caller.suggest(&paipai, body.clone()).await.is_err() {
            failed += 1;
        }
        latencies.push(started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let mut shed = 0;
    for task in flood {
        shed += task.await.unwrap();
    }
    latencies.sort();
    Calm {
        p99: latencies[latencies.len() * 99 / 100],
        failed,
        noisy_shed: shed,
    }
}

/// What the calm tenant saw.
struct Calm {
    p99: Duration,
    failed: usize,
    noisy_shed: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_dependency_of_one_tenant_does_not_slow_another_tenant() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    let alone = calm_p99(true, false, 100).await;
    let with_noise = calm_p99(true, true, 100).await;
    // control: without the bulkhead the noisy tenant's stuck calls take the front's capacity
    // (few calls: each one waits out its deadline)
    let unprotected = calm_p99(false, true, 25).await;
    println!(
        "calm tenant p99: alone {:?}, beside a noisy tenant {:?} (noisy calls shed: {}); without bulkhead {:?} ({} of 25 calls failed)",
        alone.p99, with_noise.p99, with_noise.noisy_shed, unprotected.p99, unprotected.failed
    );
    assert_eq!(
        (alone.failed, with_noise.failed),
        (0, 0),
        "the calm tenant is always served"
    );
    assert!(
        with_noise.noisy_shed > 0,
        "the noisy tenant's excess calls were shed"
    );
    assert!(
        with_noise.p99 < alone.p99 * 5 + Duration::from_millis(75),
        "with bulkheads the calm tenant's p99 stays near its own: alone {:?}, with noise {:?}",
        alone.p99,
        with_noise.p99
    );
    assert!(
        unprotected.p99 > Duration::from_millis(100),
        "the setup must hurt the calm tenant without bulkheads, or this test proves nothing: {:?}",
        unprotected.p99
    );
}

/// An error through the cached-answers layer reaches a plain HTTP/2 client (the `h2` crate, as
/// grpc-core reads it) as one HEADERS frame ending the stream with `grpc-status`: a
/// trailers-only answer, never headers plus an empty DATA frame.
#[tokio::test]
async fn an_error_through_the_answer_cache_stays_trailers_only() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    use prost::Message as _;
    let tenants = tenants();
    let url = serve_stack(
        &tenants,
        SwitchBoard::new(CATALOGUE),
        RateLimiter::from_tenants(&tenants),
    )
    .await;
    let token = tenants
        .get("paipai")
        .unwrap()
        .credentials
        .token
        .clone()
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let call = |order_id: &str| {
        let message = order::GetOrderRequest {
            order_id: order_id.into(),
        }
        .encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend((message.len() as u32).to_be_bytes());
        frame.extend(message);
        let request = http::Request::post(format!("{url}/order.v2.Order/GetOrder"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("x-mesh-tenant", "paipai")
            .header("x-mesh-token", token.as_str())
            .body(())
            .unwrap();
        let send = send.clone();
        async move {
            let mut send = send.ready().await.unwrap();
            let (response, mut body) = send.send_request(request, false).unwrap();
            body.send_data(bytes::Bytes::from(frame), true).unwrap();
            response.await.unwrap()
        }
    };
    let missing = call("missing").await;
    assert_eq!(missing.headers()["grpc-status"], "5", "{missing:?}");
    assert!(
        missing.body().is_end_stream(),
        "the error is one HEADERS frame with END_STREAM: {missing:?}"
    );
    // a success keeps its DATA and trailers
    let found = call("o-1").await;
    assert!(found.headers().get("grpc-status").is_none());
    let mut body = found.into_body();
    let data = body.data().await.unwrap().unwrap();
    assert!(data.len() > 5, "the message");
    let trailers = body.trailers().await.unwrap().unwrap();
    assert_eq!(trailers["grpc-status"], "0");
}

//! Dependency isolation in the product: the message service's calls to gateways go through a
//! bulkhead per (tenant, dependency). A gateway that hangs for one tenant's user holds at most
//! that tenant's places (`limits.max_concurrent_per_dependency`); the excess is shed at once
//! (the terminal counts as offline and syncs later), another tenant's deliveries through the
//! same message service go on, and `meshctl status` shows the bulkhead full.

use crate::support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use mesh_api::{
    admin::v1 as admin_api,
    gateway::v1::{self as gateway, gateway_server::Gateway},
    locator::v1::{self as locator, TerminalKind},
    message::v1 as message,
};
use support::{MeshUp, Users, admin, node_ctx, tenants_folder, worker_channel};
use tonic::{Request, Response, Status};

const OPS_TOKEN: &str = "ops-bulkhead-suite-token";

/// A gateway that takes every push and never answers in time, counting the pushes it holds.
#[derive(Clone, Default)]
struct HangingGateway {
    in_flight: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Gateway for HangingGateway {
    type AttachStream = tokio_stream::Empty<Result<gateway::Push, Status>>;

    async fn attach(
        &self,
        _: Request<gateway::AttachRequest>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        Err(Status::unimplemented("pushes only"))
    }

    async fn deliver(
        &self,
        _: Request<gateway::DeliverRequest>,
    ) -> Result<Response<gateway::DeliverResponse>, Status> {
        /// A push held, until its call ends (answered, or cancelled by the caller's deadline).
        struct Held(Arc<AtomicUsize>);
        impl Drop for Held {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.received.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let _held = Held(self.in_flight.clone());
        self.most.fetch_max(now, Ordering::SeqCst);
        // the caller's deadline (the contract's 300 ms) ends the call from its side
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(Response::new(gateway::DeliverResponse { delivered: true }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_dependency_of_one_tenant_fills_only_its_bulkhead() {
    let hanging = HangingGateway::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging_at = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(gateway::gateway_server::GatewayServer::new(hanging.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let tenant = |id: &str, places: u32| {
        format!(
            "id = \"{id}\"\ndisplay_name = \"{id}\"\ndata_namespace = \"{id}\"\n\
             [credentials]\ntoken = \"{id}-secret-token\"\n\
             [limits]\nrequests_per_second = 100000\nburst = 100000\n\
             max_concurrent_per_dependency = {places}\n"
        )
    };
    let dir = tenants_folder(
        &[],
        &[
            ("slowco.toml", &tenant("slowco", 4)),
            ("calmco.toml", &tenant("calmco", 64)),
        ],
    );
    let mut up = MeshUp::start(dir.path(), &[("MESH_ADMIN_TOKEN", OPS_TOKEN)]).await;
    let admin_at = up.admin_address().await;
    let worker = up.shared_worker().await;
    let users = Users::of(dir.path());
    let (slow, calm) = (users.ctx("slowco", "agent"), users.ctx("calmco", "agent"));
    let channel = up.channel().await;

    // slowco's user has a terminal on the hanging gateway (registered as a node would, at the
    // worker: nobody outside the mesh can register one); calmco's a real one
    locator::LocatorCaller::new(worker_channel(&worker).await)
        .register(
            &node_ctx("slowco"),
            locator::RegisterRequest {
                location: Some(locator::TerminalLocation {
                    user_id: "victim".into(),
                    terminal_id: "t1".into(),
                    kind: TerminalKind::Phone as i32,
                    node_id: "hanging-node".into(),
                    node_address: hanging_at,
                    connected_at_ms: 0,
                }),
                others_over: 0,
            },
        )
        .await
        .unwrap();
    let mut calm_phone = gateway::GatewayCaller::new(channel.clone())
        .attach(
            &users.ctx("calmco", "calm"),
            gateway::AttachRequest {
                user_id: "calm".into(),
                terminal_id: "phone".into(),
                kind: TerminalKind::Phone as i32,
            },
        )
        .await
        .unwrap();

    let for_sends = channel.clone();
    let send = move |who: mesh_contract::RequestContext, to: &'static str, id: String| {
        let channel = for_sends.clone();
        async move {
            message::MessageCaller::new(channel)
                .send(
                    &who,
                    message::SendRequest {
                        conversation_id: format!("c-{to}"),
                        from_user: "agent".into(),
                        to_user: to.into(),
                        body: id.clone(),
                        client_msg_id: id,
                    },
                )
                .await
        }
    };

    // slowco floods its hanging user, 40 sends at a time, until told to stop
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (send, slow, stop) = (send.clone(), slow.clone(), stop.clone());
        tokio::spawn(async move {
            let mut round = 0;
            let mut sent = 0;
            while !stop.load(Ordering::SeqCst) {
                let batch = (0..40).map(|i| send(slow.clone(), "victim", format!("f{round}-{i}")));
                for answer in futures::future::join_all(batch).await {
                    let answer = answer.expect("a send is stored and answered whatever the push");
                    assert!(answer.delivered_terminals.is_empty());
                    sent += 1;
                }
                round += 1;
            }
            sent
        })
    };

    // meanwhile calmco's pushes through the same message service arrive, and status (the
    // workers report every second) shows slowco's gateway bulkhead full
    let mut full_seen = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    while n < 20 || (!full_seen && Instant::now() < deadline) {
        let answer = send(calm.clone(), "calm", format!("calm-{n}"))
            .await
            .unwrap();
        assert_eq!(answer.delivered_terminals, ["phone"], "calm push {n}");
        let push = tokio::time::timeout(
            Duration::from_secs(5),
            mesh_gateway::heartbeat::next_content(&mut calm_phone),
        )
        .await
        .expect("calm's push within 5 s")
        .unwrap()
        .unwrap();
        assert!(matches!(
            push.payload,
            Some(gateway::push::Payload::Message(_))
        ));
        if !full_seen {
            let report = admin(&admin_at, OPS_TOKEN)
                .await
                .status(admin_api::StatusRequest {})
                .await
                .unwrap()
                .into_inner();
            full_seen = report.bulkheads.iter().any(|b| {
                b.tenant == "slowco"
                    && b.dependency == "gateway"
                    && b.in_use == 4
                    && b.capacity == 4
            });
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let sent = flood.await.unwrap();
    assert!(sent >= 80, "the flood sent {sent}");
    // the hanging gateway never held more than slowco's places, however many sends came
    let most = hanging.most.load(Ordering::SeqCst);
    assert!(
        most <= 4,
        "{most} pushes held at once, over slowco's 4 places"
    );
    let received = hanging.received.load(Ordering::SeqCst);
    assert!(
        received < sent,
        "the excess was shed, not sent: {received} of {sent} reached the gateway"
    );
    assert!(
        full_seen,
        "meshctl status showed slowco's gateway bulkhead full"
    );
}

//! A tenant's edge cases never reach its neighbours (issue #34), driven through `mesh up` and
//! its admin API (what `meshctl` calls) on PostgreSQL and RabbitMQ, each of the test's own (a
//! database, a vhost), while mall and paipai send all the time:
//! - a schema the database refuses (an event trigger), at `tenant add` and at start-up;
//! - reserved ids, a 3 MB display name;
//! - a purge, then the id added again, with a dead letter and an order waiting;
//! - a move under a steady GetOrder loop, with a terminal attached;
//! - a tenant whose credential is a file (a mounted secret) added at run time;
//! - a read-only database, a worker restarting behind a long read, pooled connections frozen.
//!
//! Each tenant-local case must cost the neighbours nothing: 0 failed sends. The database-wide
//! cases fail everyone by nature; there each answer must be what the docs say (UNAVAILABLE,
//! retried, nothing dead-lettered) and service must come back by itself. Figures print as
//! `FIGURE` lines (RELIABILITY.md): `cargo test -p mesh-node --test node tenant_edges:: -- --nocapture`.

use crate::support;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable},
};
use mesh_api::{
    admin::v1 as api,
    gateway::v1 as gateway,
    message::v1 as message,
    order::{v1 as order, v1::order_client::OrderClient},
};
use mesh_contract::RequestContext;
use prost::Message as _;
use support::{Db, MeshUp, Users, Vhost, admin, ctx, signal, tenants_folder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, transport::Channel};

const OPS: &str = "ops-tenant-edges-token";
const GUOJI_TOKEN: &str = "guoji-secret-token-1";

/// A vhost of the test's own on the machine's RabbitMQ (open to guest), deleted at the end.
/// Publishes `payload` as a checkout outside the platform would: to `tenant`'s order
/// exchange, persistent, confirmed. `Err` when the broker refused it (no such exchange).
async fn publish_order(uri: &str, tenant: &str, payload: Vec<u8>) -> Result<(), String> {
    let connection = Connection::connect(uri, ConnectionProperties::default())
        .await
        .map_err(|e| e.to_string())?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut headers = FieldTable::default();
    headers.insert("x-mesh-tenant".into(), AMQPValue::LongString(tenant.into()));
    let confirm = channel
        .basic_publish(
            format!("mesh.{tenant}.order.v1").as_str().into(),
            "order_created".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &payload,
            BasicProperties::default()
                .with_message_id(uuid::Uuid::new_v4().to_string().into())
                .with_delivery_mode(2)
                .with_headers(headers),
        )
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let _ = connection.close(200, "done".into()).await;
    let said = format!("{confirm:?}");
    if confirm.is_ack() && confirm.take_message().is_none() {
        Ok(())
    } else {
        Err(format!("not taken: {said}"))
    }
}

/// Alice's phone attached through the front door, as `who` (alice of some tenant).
async fn alices_phone(front: &Channel, who: &RequestContext) -> tonic::Streaming<gateway::Push> {
    gateway::GatewayCaller::new(front.clone())
        .attach(
            who,
            gateway::AttachRequest {
                user_id: "alice".into(),
                terminal_id: "phone".into(),
                kind: 0,
            },
        )
        .await
        .unwrap()
}

/// The status `stream` ends with, past the pushes before it (`None`: it ended OK).
async fn end_of(stream: &mut tonic::Streaming<gateway::Push>) -> Option<Code> {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .expect("the stream ends within 30 s")
}

fn order_created(order_id: &str, user: &str) -> Vec<u8> {
    order::OrderCreated {
        order: Some(order::OrderView {
            order_id: order_id.into(),
            user_id: user.into(),
            status: 1,
            total_cents: 4999,
            currency: "EUR".into(),
            ..Default::default()
        }),
        conversation_id: format!("c-{user}"),
    }
    .encode_to_vec()
}

async fn get_order(front: &Channel, who: &RequestContext, order_id: &str) -> Result<(), Code> {
    let mut request = tonic::Request::new(order::GetOrderRequest {
        order_id: order_id.into(),
    });
    who.inject(request.metadata_mut()).unwrap();
    request.set_timeout(Duration::from_secs(5));
    OrderClient::new(front.clone())
        .get_order(request)
        .await
        .map(drop)
        .map_err(|s| s.code())
}

/// Waits until `order_id` of `who` is found.
async fn order_found(front: &Channel, who: &RequestContext, order_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(code) = get_order(front, who, order_id).await {
        assert!(Instant::now() < deadline, "order {order_id}: {code:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send(front: &Channel, who: &RequestContext, n: u64) -> Result<(), tonic::Status> {
    let mut caller = message::MessageCaller::new(front.clone());
    let request = message::SendRequest {
        conversation_id: "c-steady".into(),
        from_user: "alice".into(),
        to_user: "bob".into(),
        body: format!("steady {n}"),
        client_msg_id: format!("steady-{n}"),
    };
    tokio::time::timeout(Duration::from_secs(15), caller.send(who, request))
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer within 15 s")))
        .map(drop)
}

/// Mall and paipai sending all the time; each failure kept with the phase it fell in.
struct Neighbours {
    phase: Arc<Mutex<&'static str>>,
    failures: Arc<Mutex<Vec<(&'static str, String)>>>,
    sent: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Neighbours {
    fn start(front: Channel, users: &Users) -> Self {
        let neighbours = Self {
            phase: Arc::new(Mutex::new("start")),
            failures: Arc::default(),
            sent: Arc::default(),
            stop: Arc::default(),
        };
        for tenant in ["mall", "paipai"] {
            let alice = users.ctx(tenant, "alice");
            let (phase, failures, sent, stop) = (
                neighbours.phase.clone(),
                neighbours.failures.clone(),
                neighbours.sent.clone(),
                neighbours.stop.clone(),
            );
            let front = front.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let started_in = *phase.lock().unwrap();
                    match send(&front, &alice, n).await {
                        Ok(()) => {
                            sent.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(status) => failures.lock().unwrap().push((
                            started_in,
                            format!("{tenant}: {:?} {}", status.code(), status.message()),
                        )),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
        neighbours
    }

    fn phase(&self, name: &'static str) {
        *self.phase.lock().unwrap() = name;
    }

    /// The failures of sends started in `phase`.
    fn failed_in(&self, phase: &str) -> Vec<String> {
        self.failures
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| *p == phase)
            .map(|(_, f)| f.clone())
            .collect()
    }

    /// Waits until `n` more sends succeeded.
    async fn progress(&self, n: usize) {
        let target = self.sent.load(Ordering::SeqCst) + n;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.sent.load(Ordering::SeqCst) < target {
            assert!(
                Instant::now() < deadline,
                "the neighbours stopped getting through: {:?}",
                self.failures
                    .lock()
                    .unwrap()
                    .iter()
                    .rev()
                    .take(3)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Neighbours {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn guoji_file(extra: &str) -> String {
    format!(
        "id = \"guoji\"\ndisplay_name = \"Guoji\"\ndata_namespace = \"guoji\"\n\
         [credentials]\ntoken = \"{GUOJI_TOKEN}\"\n\
         [users]\nissuer = \"guoji-accounts\"\n\
         hs256_secret = \"test-guoji-user-signing-key-0123456789abcdef\"\n{extra}"
    )
}

/// Signs user tokens for mall, paipai and guoji.
fn users() -> Users {
    let signing = tenants_folder(&["mall", "paipai"], &[("guoji.toml", &guoji_file(""))]);
    Users::of(signing.path())
}

fn tenant_file(name: &str, content: String) -> api::TenantFile {
    api::TenantFile {
        file_name: name.into(),
        content,
    }
}

/// An event trigger in `db` refusing any DDL on schema `schema` (a policy of the database's
/// own, or a permission the mesh lacks).
async fn refuse_schema(db: &Db, schema: &str) {
    db.sql(&format!(
        "CREATE FUNCTION refuse_{schema}() RETURNS event_trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands()
                      WHERE object_identity LIKE '{schema}%') THEN
             RAISE EXCEPTION 'schema {schema} refused by policy';
           END IF;
         END $$;
         CREATE EVENT TRIGGER refuse_{schema} ON ddl_command_end EXECUTE FUNCTION refuse_{schema}();"
    ))
    .await;
}

async fn allow_schema(db: &Db, schema: &str) {
    db.sql(&format!(
        "DROP EVENT TRIGGER refuse_{schema}; DROP FUNCTION refuse_{schema}();"
    ))
    .await;
}

/// A TCP relay to PostgreSQL whose open connections can be frozen: bytes stop both ways and
/// the sockets stay open (a failover behind a NAT that dropped its state); connections
/// opened after a freeze flow.
struct FreezingRelay {
    port: u16,
    frozen_below: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
}

impl FreezingRelay {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (frozen_below, next) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (frozen, count) = (frozen_below.clone(), next.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let number = count.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = tokio::net::TcpStream::connect("127.0.0.1:5432").await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, number, frozen.clone()));
                tokio::spawn(pipe(sr, cw, number, frozen.clone()));
            }
        });
        Self {
            port,
            frozen_below,
            next,
        }
    }

    fn freeze_open_connections(&self) {
        self.frozen_below
            .store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    number: u64,
    frozen_below: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if number < frozen_below.load(Ordering::SeqCst) {
            // a frozen hop: it holds the bytes and never answers (the test's fault), until the test drops it
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_edge_cases_never_reach_its_neighbours() {
    // one of the tests that load the machine or time a fault: they take turns
    let _heavy = support::heavy().await;
    let db = Db::create().await;
    let vhost = Vhost::create();
    let relay = FreezingRelay::start().await;
    // the mesh reaches the database through the relay; the test reaches it directly
    let through_relay = db
        .url()
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", relay.port));
    let dir = tenants_folder(&["mall", "paipai"], &[]);
    let mut up = MeshUp::start(
        dir.path(),
        &[
            ("MESH_AMQP_URI", &vhost.uri()),
            ("MESH_STORE_POSTGRES", &through_relay),
            ("MESH_ADMIN_TOKEN", OPS),
        ],
    )
    .await;
    let admin_at = up.admin_address().await;
    up.shared_worker().await;
    let front = up.channel().await;
    let mut ops = admin(&admin_at, OPS).await;
    let users = users();
    let neighbours = Neighbours::start(front.clone(), &users);
    neighbours.progress(20).await;

    // 1. a schema the database refuses, three times: the add fails, naming why; nothing of it
    // stays on a pooled connection the neighbours use next
    neighbours.phase("schema refused at add");
    refuse_schema(&db, "mesh_guoji").await;
    for _ in 0..3 {
        let refused = ops
            .add_tenant(tenant_file("guoji.toml", guoji_file("")))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(
            refused.message().contains("refused by policy"),
            "{}",
            refused.message()
        );
        neighbours.progress(10).await;
    }

    // 2. reserved ids and unbounded text are refused alike, and every operator's view works
    neighbours.phase("reserved and bounds");
    let shared = ops
        .add_tenant(tenant_file(
            "shared.toml",
            "id = \"shared\"\ndisplay_name = \"S\"\ndata_namespace = \"sh\"\n\
             [credentials]\ntoken = \"shared-secret-token\"\n"
                .into(),
        ))
        .await
        .unwrap_err();
    assert!(
        shared.message().contains("is reserved"),
        "{}",
        shared.message()
    );
    let huge = guoji_file("").replace("\"Guoji\"", &format!("\"{}\"", "G".repeat(3 << 20)));
    let huge = ops
        .add_tenant(tenant_file("guoji.toml", huge))
        .await
        .unwrap_err();
    assert!(
        huge.message().contains("at most 65536 bytes") && huge.message().len() < 1000,
        "{}",
        &huge.message()[..huge.message().len().min(300)]
    );
    ops.list_tenants(api::ListTenantsRequest::default())
        .await
        .unwrap();
    ops.status(api::StatusRequest {}).await.unwrap();

    // 3. the policy lifted, the same process serves guoji; its order book is in the store
    neighbours.phase("onboard");
    allow_schema(&db, "mesh_guoji").await;
    ops.add_tenant(tenant_file("guoji.toml", guoji_file("")))
        .await
        .unwrap();
    let guoji = users.ctx("guoji", "alice");
    publish_order(&vhost.uri(), "guoji", order_created("o-1", "alice"))
        .await
        .unwrap();
    order_found(&front, &guoji, "o-1").await;

    // 4. purge: a dead letter waiting; then nothing of guoji on the broker or in the database,
    // and guoji added again starts empty
    neighbours.phase("purge");
    publish_order(&vhost.uri(), "guoji", b"not protobuf".to_vec())
        .await
        .unwrap();
    let dead = "mesh.guoji.order.v1.order.dead";
    let deadline = Instant::now() + Duration::from_secs(30);
    while !vhost.queues(dead).iter().any(|(_, n)| *n == 1) {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            vhost.queues("mesh.guoji")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ops.remove_tenant(api::RemoveTenantRequest {
        tenant: "guoji".into(),
        purge_data: true,
    })
    .await
    .unwrap();
    assert_eq!(
        vhost.queues("mesh.guoji."),
        [],
        "queues and dead letters deleted"
    );
    assert_eq!(vhost.exchanges("mesh.guoji."), Vec::<String>::new());
    let refused = publish_order(&vhost.uri(), "guoji", order_created("o-x", "alice")).await;
    assert!(
        refused.is_err(),
        "a publisher of a purged tenant is refused"
    );
    let schema = support::connect(&db.url())
        .await
        .query(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = 'mesh_guoji'",
            &[],
        )
        .await
        .unwrap();
    assert!(schema.is_empty(), "schema dropped");
    ops.add_tenant(tenant_file("guoji.toml", guoji_file("")))
        .await
        .unwrap();
    assert_eq!(
        get_order(&front, &guoji, "o-1").await,
        Err(Code::NotFound),
        "the old order book is gone"
    );
    assert!(
        vhost.queues(dead).iter().all(|(_, n)| *n == 0),
        "no dead letter of the old tenant: {:?}",
        vhost.queues(dead)
    );

    // 5. move under a steady GetOrder loop, a terminal attached: no NOT_FOUND, the terminal
    // told to attach again
    neighbours.phase("move");
    publish_order(&vhost.uri(), "guoji", order_created("o-2", "alice"))
        .await
        .unwrap();
    order_found(&front, &guoji, "o-2").await;
    let mut terminal = alices_phone(&front, &guoji).await;
    let looking = Arc::new(AtomicBool::new(true));
    let lookups = {
        let (front, guoji, looking) = (front.clone(), guoji.clone(), looking.clone());
        tokio::spawn(async move {
            let (mut found, mut not_found, mut other) = (0, 0, Vec::new());
            while looking.load(Ordering::SeqCst) {
                match get_order(&front, &guoji, "o-2").await {
                    Ok(()) => found += 1,
                    Err(Code::NotFound) => not_found += 1,
                    Err(code) => other.push(code),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (found, not_found, other)
        })
    };
    // lookups under way (one every few ms) before the move, so the move lands among them
    tokio::time::sleep(Duration::from_millis(300)).await;
    let moved = Instant::now();
    ops.move_tenant(api::MoveTenantRequest {
        tenant: "guoji".into(),
        process: "own".into(),
    })
    .await
    .unwrap();
    let ended = end_of(&mut terminal).await;
    assert_eq!(ended, Some(Code::Unavailable), "attach again, not done");
    // and a second of lookups after it: every one answers, none from a tenant half moved
    tokio::time::sleep(Duration::from_secs(1)).await;
    looking.store(false, Ordering::SeqCst);
    let (found, not_found, other) = lookups.await.unwrap();
    println!(
        "FIGURE move under GetOrder: {found} found, {not_found} NOT_FOUND, {} other ({other:?}) in {:?}",
        other.len(),
        moved.elapsed()
    );
    assert_eq!(not_found, 0, "the order book moves with the tenant");
    assert!(found > 0);
    order_found(&front, &guoji, "o-2").await;
    // an order event naming the platform's own sender is refused by both of its consumers
    // (dead-lettered with the reason), never stored as a system-to-system message
    publish_order(&vhost.uri(), "guoji", order_created("o-sys", "system"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    for queue in [dead, "mesh.guoji.order.v1.message.dead"] {
        while !vhost.queues(queue).iter().any(|(_, n)| *n == 1) {
            assert!(
                Instant::now() < deadline,
                "{queue}: {:?}",
                vhost.queues("mesh.guoji")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let dead_letters = vhost.queues("mesh.guoji");

    // 6. onboarding with a real secret, as a mounted file, while the mesh runs
    neighbours.phase("token file");
    std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
    std::fs::write(
        dir.path().join("secrets/tokco-token"),
        "tokco-secret-from-a-mounted-file\n",
    )
    .unwrap();
    ops.add_tenant(tenant_file(
        "tokco.toml",
        "id = \"tokco\"\ndisplay_name = \"Tok Co\"\ndata_namespace = \"tokco\"\n\
         [credentials]\ntoken_file = \"secrets/tokco-token\"\n"
            .into(),
    ))
    .await
    .unwrap();
    let tokco = ctx("tokco", "tokco-secret-from-a-mounted-file");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut request = tonic::Request::new(mesh_api::recommend::v1::SuggestRequest::default());
        tokco.inject(request.metadata_mut()).unwrap();
        let suggested =
            mesh_api::recommend::v1::recommend_client::RecommendClient::new(front.clone())
                .suggest(request)
                .await;
        match suggested {
            Ok(_) => break,
            Err(status) => assert!(Instant::now() < deadline, "tokco's own token: {status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    neighbours.progress(10).await;

    for phase in [
        "schema refused at add",
        "reserved and bounds",
        "onboard",
        "purge",
        "move",
        "token file",
    ] {
        let failed = neighbours.failed_in(phase);
        println!(
            "FIGURE neighbours' failed sends during {phase}: {}",
            failed.len()
        );
        assert_eq!(failed, Vec::<String>::new(), "{phase}");
    }

    // 7. a read-only database (a demoted primary): sends answer UNAVAILABLE, an order event
    // waits instead of being dead-lettered, and all comes back when it is writable again
    neighbours.phase("read-only");
    let mall = users.ctx("mall", "alice");
    let terminate = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()"
        .to_owned();
    db.sql(&format!(
        "ALTER DATABASE {} SET default_transaction_read_only = on; {terminate}",
        db.url().rsplit('/').next().unwrap()
    ))
    .await;
    let mut codes = Vec::new();
    for n in 0..5 {
        if let Err(status) = send(&front, &mall, 1_000_000 + n).await {
            codes.push(status.code());
        }
    }
    assert!(!codes.is_empty(), "a read-only database refuses writes");
    assert!(
        codes.iter().all(|c| *c == Code::Unavailable),
        "a read-only database is transient: {codes:?}"
    );
    publish_order(&vhost.uri(), "guoji", order_created("o-3", "alice"))
        .await
        .unwrap();
    // the event meets the read-only database for 2 s (its consumer retries on its backoff): it must neither be lost nor dead-lettered
    tokio::time::sleep(Duration::from_secs(2)).await;
    // (a session of the database's own is read-only too: it says otherwise first)
    let writable = support::connect(&db.url()).await;
    for sql in [
        "SET default_transaction_read_only = off".to_owned(),
        format!(
            "ALTER DATABASE {} RESET default_transaction_read_only",
            db.url().rsplit('/').next().unwrap()
        ),
        terminate.clone(),
    ] {
        writable.batch_execute(&sql).await.unwrap();
    }
    order_found(&front, &guoji, "o-3").await;
    // the other consumers of the event retry on their own backoff (up to 5 s): within a
    // bound, every queue drains and nothing more is dead-lettered for a passing state
    let mut queues = vhost.queues("mesh.guoji");
    for _ in 0..60 {
        if queues == dead_letters {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await; // polling RabbitMQ's counts
        queues = vhost.queues("mesh.guoji");
    }
    assert_eq!(
        queues, dead_letters,
        "nothing more dead-lettered for a passing state"
    );
    neighbours.progress(20).await;

    // 8. the shared worker restarts while a long report reads mall's messages: it serves again
    // without waiting for the read (no DDL on a current schema)
    neighbours.phase("long read");
    let mut report = support::connect(&db.url()).await;
    let read = report.transaction().await.unwrap();
    read.query("SELECT count(*) FROM mesh_mall.messages", &[])
        .await
        .unwrap();
    let status = ops
        .status(api::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let pid = status
        .processes
        .iter()
        .find(|p| p.group == "shared")
        .unwrap()
        .pid;
    // a terminal attached to that worker hears UNAVAILABLE when it dies, not a reset stream
    let mut phone = alices_phone(&front, &mall).await;
    let killed = Instant::now();
    signal(&pid.to_string(), "-KILL");
    let ended = end_of(&mut phone).await;
    assert_eq!(ended, Some(Code::Unavailable), "attach again");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 2_000_000;
    loop {
        n += 1;
        if send(&front, &mall, n).await.is_ok()
            && ops
                .status(api::StatusRequest {})
                .await
                .unwrap()
                .into_inner()
                .processes
                .iter()
                .any(|p| p.group == "shared" && p.pid != pid)
        {
            break;
        }
        assert!(Instant::now() < deadline, "mall back behind a long read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "FIGURE worker restarted behind an open report read: mall served again after {:?}",
        killed.elapsed()
    );
    // the read is still open: nothing waited for it
    read.query("SELECT 1", &[]).await.unwrap();
    read.commit().await.unwrap();

    // 9. the pool's connections go silent (frozen, sockets open): replaced within seconds
    neighbours.phase("frozen connections");
    neighbours.progress(20).await;
    relay.freeze_open_connections();
    let frozen = Instant::now();
    let mut codes = Vec::new();
    let mut in_a_row = 0;
    let mut n = 3_000_000;
    while in_a_row < 10 {
        n += 1;
        assert!(
            frozen.elapsed() < Duration::from_secs(60),
            "sends did not recover from frozen connections: {codes:?}"
        );
        match send(&front, &mall, n).await {
            Ok(()) => in_a_row += 1,
            Err(status) => {
                codes.push(status.code());
                in_a_row = 0;
            }
        }
    }
    println!(
        "FIGURE pooled connections frozen: {} failed sends ({:?}), 10 in a row after {:?}",
        codes.len(),
        codes,
        frozen.elapsed()
    );
    // a call that met a silent connection ran out of its deadline (Send's is 1 s)
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, Code::Unavailable | Code::DeadlineExceeded)),
        "a silent database is transient: {codes:?}"
    );
    assert!(
        codes.len() <= 3,
        "silent connections replaced at once: {codes:?}"
    );
    drop(neighbours);
    drop(up);
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_refused_at_start_up_leaves_the_neighbours_serving_and_is_retried() {
    // one of the tests that load the machine or time a fault: they take turns
    let _heavy = support::heavy().await;
    let db = Db::create().await;
    refuse_schema(&db, "mesh_guoji").await;
    let dir = tenants_folder(&["mall", "paipai"], &[("guoji.toml", &guoji_file(""))]);
    let mut up = MeshUp::start(
        dir.path(),
        &[
            ("MESH_STORE_POSTGRES", &db.url()),
            ("MESH_ADMIN_TOKEN", OPS),
        ],
    )
    .await;
    let admin_at = up.admin_address().await;
    up.shared_worker().await;
    let front = up.channel().await;
    // the neighbours of its group serve, every call
    let users = users();
    let neighbours = Neighbours::start(front.clone(), &users);
    neighbours.phase("start-up");
    neighbours.progress(50).await;
    assert_eq!(neighbours.failed_in("start-up"), Vec::<String>::new());
    let mut ops = admin(&admin_at, OPS).await;
    let tenants = ops
        .list_tenants(api::ListTenantsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tenants;
    let guoji = tenants.iter().find(|t| t.id == "guoji").unwrap();
    assert_eq!(guoji.health, "down");
    assert!(guoji.reason.contains("refused by policy"), "{guoji:?}");
    // the cause removed, the worker serves it on its next try, without a restart
    allow_schema(&db, "mesh_guoji").await;
    let deadline = Instant::now() + Duration::from_secs(45);
    while send(&front, &users.ctx("guoji", "alice"), 1).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "guoji served once its schema is allowed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(neighbours.failed_in("start-up"), Vec::<String>::new());
    drop(neighbours);
    drop(up);
    db.drop_database().await;
}

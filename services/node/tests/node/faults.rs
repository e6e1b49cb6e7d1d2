//! The fault suite: what `mesh up` promised (an OK to a Send) against what it stored, under
//! ordinary faults, counted. Everything runs on this machine, against resources of the test's
//! own: a RabbitMQ node it starts and stops (never the shared one on 5672), a PostgreSQL
//! database it creates and cuts off (never another database's connections), and the worker it
//! kills.
//!
//! Each phase prints a `FIGURE` line; RELIABILITY.md records them with the command:
//! `cargo test -p mesh-node --test node faults:: -- --nocapture`.

use crate::support;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use mesh_api::{
    admin::v1::{self as admin_api, admin_client::AdminClient},
    message::v1 as message,
    order::v1 as order,
};
use mesh_contract::RequestContext;
use support::{Bearer, Db, MeshUp, OwnRabbit, Users, admin, ctx, field, signal, tenants_folder};
use tonic::{Code, service::interceptor::InterceptedService, transport::Channel};

const TOKEN: &str = "dev-mall-token";
const OPS_TOKEN: &str = "ops-fault-suite-token";
/// Longest a single send may take to be acknowledged, retries included.
const SEND_BOUND: Duration = Duration::from_secs(120);

/// Messages waiting in a queue of `rabbit`.
async fn depth(rabbit: &OwnRabbit, queue: &str) -> u32 {
    let connection =
        lapin::Connection::connect(&rabbit.uri(), lapin::ConnectionProperties::default())
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let declared = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("queue {queue}: {e}"));
    let _ = connection.close(200, "done".into()).await;
    declared.message_count()
}

/// What the senders saw.
#[derive(Default)]
struct Tally {
    /// Calls made, retries included.
    attempts: usize,
    /// Failed calls, by gRPC code.
    failures: BTreeMap<String, usize>,
    /// The acknowledged message of each client id.
    acked: BTreeMap<String, message::ChatMessage>,
    /// When each acknowledgement came.
    acked_at: Vec<Instant>,
}

/// Sends `request` until it is acknowledged, retrying every failure with the same client id,
/// as a client that takes OK as the only proof would.
async fn send_until_ok(
    caller: &mut message::MessageCaller<Channel>,
    who: &RequestContext,
    request: message::SendRequest,
    tally: &std::sync::Mutex<Tally>,
) -> message::ChatMessage {
    let started = Instant::now();
    loop {
        tally.lock().unwrap().attempts += 1;
        match caller.send(who, request.clone()).await {
            Ok(answer) => {
                let m = answer.message.expect("an OK carries the message");
                let mut t = tally.lock().unwrap();
                t.acked.insert(request.client_msg_id.clone(), m.clone());
                t.acked_at.push(Instant::now());
                return m;
            }
            Err(status) => {
                assert!(
                    matches!(
                        status.code(),
                        Code::Unavailable
                            | Code::DeadlineExceeded
                            | Code::Cancelled
                            | Code::Unknown
                            // the tenant's rate limit shedding the clients' own retry storm
                            | Code::ResourceExhausted
                    ),
                    "a fault must answer a retryable code: {status:?}"
                );
                *tally
                    .lock()
                    .unwrap()
                    .failures
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1;
                assert!(
                    started.elapsed() < SEND_BOUND,
                    "{} not acknowledged within {SEND_BOUND:?}: {status:?}",
                    request.client_msg_id
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// `conversations` senders, each sending `per_conversation` messages to `to_user` in a
/// conversation of its own (`<prefix>-<n>`), while `fault` runs once `fault_after` sends were
/// acknowledged. Returns the tally and when the fault ended.
async fn sends_under<F, Fut>(
    channel: &Channel,
    prefix: &str,
    to_user: &str,
    conversations: usize,
    per_conversation: usize,
    fault_after: usize,
    fault: F,
) -> (Tally, Instant)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    let acked = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..conversations)
        .map(|c| {
            let (tally, acked) = (tally.clone(), acked.clone());
            let mut caller = message::MessageCaller::new(channel.clone());
            let (conversation, to_user) = (format!("{prefix}-{c}"), to_user.to_owned());
            tokio::spawn(async move {
                let who = Users::shipped().ctx("mall", &format!("sender{c}"));
                for i in 0..per_conversation {
                    let request = message::SendRequest {
                        conversation_id: conversation.clone(),
                        from_user: format!("sender{c}"),
                        to_user: to_user.clone(),
                        body: format!("message {i} of {conversation}"),
                        client_msg_id: format!("{conversation}-m{i}"),
                    };
                    send_until_ok(&mut caller, &who, request, &tally).await;
                    acked.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    while acked.load(Ordering::SeqCst) < fault_after {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fault().await;
    let fault_ended = Instant::now();
    for sender in senders {
        sender.await.unwrap();
    }
    let tally = Arc::try_unwrap(tally).ok().unwrap().into_inner().unwrap();
    (tally, fault_ended)
}

/// Promised against stored, for the conversations of `prefix`; asserts the promise was kept
/// and prints the figure.
async fn count(db: &Db, name: &str, prefix: &str, sent: usize, tally: &Tally, recovered: Instant) {
    let rows = db.stored(prefix).await;
    let distinct: BTreeSet<(&String, &Option<String>)> =
        rows.iter().map(|(c, _, id, _)| (c, id)).collect();
    let duplicates = rows.len() - distinct.len();
    let mut by_conversation: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (c, seq, _, _) in &rows {
        by_conversation.entry(c).or_default().push(*seq);
    }
    let gaps: usize = by_conversation
        .values()
        .map(|seqs| {
            seqs.iter()
                .enumerate()
                .filter(|(i, s)| **s != *i as i64 + 1)
                .count()
        })
        .sum();
    let first_ok_after = tally
        .acked_at
        .iter()
        .filter(|t| **t >= recovered)
        .min()
        .map_or(f64::NAN, |t| t.duration_since(recovered).as_secs_f64());
    let failed: usize = tally.failures.values().sum();
    println!(
        "FIGURE {name}: sent={sent} attempts={} failed_attempts={failed} {:?} acknowledged={} stored={} duplicates={duplicates} seq_gaps={gaps} first_ok_after_recovery={first_ok_after:.2}s",
        tally.attempts,
        tally.failures,
        tally.acked.len(),
        rows.len()
    );
    assert_eq!(tally.acked.len(), sent, "{name}: every send acknowledged");
    assert_eq!(rows.len(), sent, "{name}: stored == acknowledged");
    assert_eq!(duplicates, 0, "{name}: duplicates");
    assert_eq!(gaps, 0, "{name}: sequence gaps");
    // each OK named the message that was stored
    for (c, seq, id, message_id) in &rows {
        let acked = &tally.acked[id.as_ref().expect("client id kept")];
        assert_eq!(
            (&acked.conversation_id, acked.seq as i64, &acked.message_id),
            (c, *seq, message_id),
            "{name}: the OK and the row agree"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_broker_database_and_worker_faults() {
    // one of the tests that load the machine or time a fault: they take turns
    let _heavy = support::heavy().await;
    let rabbit = OwnRabbit::start();
    let db = Db::create().await;
    let dir = tenants_folder(&["mall"], &[]);
    let (amqp, pg) = (rabbit.uri(), db.url());
    let mut up = MeshUp::start(
        dir.path(),
        &[
            ("MESH_AMQP_URI", &amqp),
            ("MESH_STORE_POSTGRES", &pg),
            ("MESH_ADMIN_LISTEN", "127.0.0.1:0"),
            ("MESH_WEB_LISTEN", "127.0.0.1:0"),
            ("MESH_ADMIN_TOKEN", OPS_TOKEN),
        ],
    )
    .await;
    let admin_at = up.admin_address().await;
    let serving = up.shared_worker().await;
    let channel = up.channel().await;
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];

    // 1. the broker stops for ~10 s during 320 sends
    let prefix = format!("broker-{run}");
    let (tally, recovered) = sends_under(&channel, &prefix, "bob", 4, 80, 60, || async {
        tokio::task::block_in_place(|| rabbit.stop());
        // the fault: the broker stays down 10 s, through a quarter of the sends
        tokio::time::sleep(Duration::from_secs(10)).await;
        tokio::task::block_in_place(|| rabbit.launch());
    })
    .await;
    count(&db, "broker-stopped-10s", &prefix, 320, &tally, recovered).await;

    // 2. the database is unreachable for ~10 s during sends, while order events arrive
    let prefix = format!("pg-{run}");
    let events = mesh_amqp::AmqpBus::connect(mesh_amqp::AmqpConfig {
        uri: rabbit.uri(),
        ..Default::default()
    })
    .await
    .unwrap();
    let orders = order::OrderPublisher::new(events);
    // the business backend publishes order events; people send as themselves
    let mall = ctx("mall", TOKEN);
    let users = Users::shipped();
    let system_conversation = format!("orders-{run}");
    let (tally, recovered) = sends_under(&channel, &prefix, "bob", 4, 80, 60, || async {
        db.cut().await;
        for i in 0..20 {
            let created = order::OrderCreated {
                order: Some(order::OrderView {
                    order_id: format!("o-{run}-{i}"),
                    user_id: "bob".into(),
                    total_cents: 100,
                    currency: "CNY".into(),
                    ..Default::default()
                }),
                conversation_id: system_conversation.clone(),
            };
            orders.publish(&mall, created).await.unwrap();
        }
        // the fault: the database stays cut off 10 s while events arrive
        tokio::time::sleep(Duration::from_secs(10)).await;
        db.restore().await;
    })
    .await;
    count(
        &db,
        "postgres-unreachable-10s",
        &prefix,
        320,
        &tally,
        recovered,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let system = loop {
        let rows = db.stored(&system_conversation).await;
        if rows.len() >= 20 || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let queue = mesh_contract::spec::names::queue(&mall.tenant, "order", 1, "message");
    let dead = depth(
        &rabbit,
        &mesh_contract::spec::names::dead_letter_queue(&queue),
    )
    .await;
    println!(
        "FIGURE postgres-unreachable-10s order events: published=20 stored_as_system_messages={} dead_lettered={dead}",
        system.len()
    );
    assert_eq!(
        system.len(),
        20,
        "every order event became a system message"
    );
    assert_eq!(dead, 0, "a transient outage dead-letters nothing");

    // 3. the worker is SIGKILLed during sends; the supervisor restarts it
    let prefix = format!("kill-{run}");
    let worker = field(&serving, "pid").to_owned();
    let output = &mut up.output;
    let (tally, recovered) = sends_under(&channel, &prefix, "bob", 4, 80, 60, || async {
        signal(&worker, "-KILL");
        output
            .wait_for("the restarted worker", |l| {
                l.starts_with("serving group=shared")
            })
            .await;
    })
    .await;
    count(&db, "worker-sigkilled", &prefix, 320, &tally, recovered).await;

    // 4. a terminal away for 1000 messages syncs all of them, in order
    let carol_conversation = format!("away-{run}");
    let tally = std::sync::Mutex::new(Tally::default());
    let mut caller = message::MessageCaller::new(channel.clone());
    let started = Instant::now();
    for i in 0..1000 {
        let request = message::SendRequest {
            conversation_id: carol_conversation.clone(),
            from_user: "dave".into(),
            to_user: format!("carol{run}"),
            body: format!("while away {i}"),
            client_msg_id: format!("a{i}"),
        };
        send_until_ok(&mut caller, &users.ctx("mall", "dave"), request, &tally).await;
    }
    let sent_in = started.elapsed();
    let synced = Instant::now();
    let mut tablet = mesh_gateway::Terminal::connect(
        &users.ctx("mall", &format!("carol{run}")),
        channel.clone(),
        channel.clone(),
        &format!("carol{run}"),
        "tablet",
        mesh_api::locator::v1::TerminalKind::Web,
    )
    .await
    .unwrap();
    // the first page is there after one round trip; the rest is fetched as it is read
    let sync_time = synced.elapsed();
    assert!(tablet.missed() > 0);
    let mut seqs = Vec::new();
    for _ in 0..1000 {
        match tablet.next().await.unwrap().unwrap().payload {
            Some(mesh_api::gateway::v1::push::Payload::Message(m)) => {
                seqs.push((m.seq, m.position))
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }
    let expected: Vec<(u64, u64)> = (1..=1000).map(|n| (n, n)).collect();
    assert_eq!(seqs, expected, "all 1000, in order");
    assert_eq!(tablet.cursor(), 1000);
    println!(
        "FIGURE offline-1000: sent_in={:.2}s synced={} in_order=true sync_time={:.3}s",
        sent_in.as_secs_f64(),
        seqs.len(),
        sync_time.as_secs_f64()
    );

    // 5. an id that could never be stored is refused at the door, and storage goes on
    let mut refused = message::MessageCaller::new(channel.clone())
        .send(
            &users.ctx("mall", "mallory"),
            message::SendRequest {
                conversation_id: "x".repeat(3000),
                from_user: "mallory".into(),
                to_user: "bob".into(),
                body: "hi".into(),
                client_msg_id: "big".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(
        refused.message(),
        "conversation_id is 3000 bytes, over the limit of 128 bytes"
    );
    // a look-alike of the platform's sender is not alice's name: refused as acting for another
    refused = message::MessageCaller::new(channel.clone())
        .send(
            &users.ctx("mall", "alice"),
            message::SendRequest {
                conversation_id: format!("ok-{run}"),
                from_user: "sys\u{200b}tem".into(),
                to_user: "bob".into(),
                body: "hi".into(),
                client_msg_id: "z".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let normal = message::MessageCaller::new(channel.clone())
        .send(
            &users.ctx("mall", "alice"),
            message::SendRequest {
                conversation_id: format!("ok-{run}"),
                from_user: "alice".into(),
                to_user: "bob".into(),
                body: "right after".into(),
                client_msg_id: "n1".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(normal.message.unwrap().seq, 1);
    assert_eq!(
        db.stored(&format!("ok-{run}")).await.len(),
        1,
        "stored when answered"
    );
    println!("FIGURE oversized-ids: refused=INVALID_ARGUMENT next_send_stored_when_answered=true");

    // 6. a bad migration makes the store refuse some system messages for good: they are
    //    dead-lettered with the reason, shown, and replayed once the cause is fixed
    let admin = admin(&admin_at, OPS_TOKEN).await;
    let queue = mesh_contract::spec::names::queue(&mall.tenant, "order", 1, "message");
    let conversation = format!("dlq-{run}");
    db.sql(
        "CREATE FUNCTION mesh_mall.bad_migration() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.body LIKE 'Order dlq-%' THEN RAISE EXCEPTION 'refused by a bad migration'; END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER bad_migration BEFORE INSERT ON mesh_mall.messages
           FOR EACH ROW EXECUTE FUNCTION mesh_mall.bad_migration();",
    )
    .await;
    for i in 0..3 {
        let created = order::OrderCreated {
            order: Some(order::OrderView {
                order_id: format!("dlq-{run}-{i}"),
                user_id: "bob".into(),
                total_cents: 100,
                currency: "CNY".into(),
                ..Default::default()
            }),
            conversation_id: conversation.clone(),
        };
        orders.publish(&mall, created).await.unwrap();
    }
    let dead_letters = |admin: &mut AdminClient<InterceptedService<Channel, Bearer>>| {
        let mut admin = admin.clone();
        let queue = queue.clone();
        async move {
            admin
                .list_dead_letters(admin_api::ListDeadLettersRequest {
                    tenant: "mall".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .queues
                .into_iter()
                .find(|q| q.queue == queue)
                .expect("the order queue is listed")
                .dead_letters
        }
    };
    let mut admin = admin;
    let deadline = Instant::now() + Duration::from_secs(30);
    while dead_letters(&mut admin).await < 3 {
        assert!(Instant::now() < deadline, "3 dead letters within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let request = |limit| admin_api::DeadLettersRequest {
        tenant: "mall".into(),
        queue: queue.clone(),
        limit,
    };
    let shown = admin
        .show_dead_letters(request(0))
        .await
        .unwrap()
        .into_inner()
        .letters;
    assert_eq!(shown.len(), 3);
    assert!(
        shown
            .iter()
            .all(|l| l.reason.contains("refused by a bad migration") && l.event == "OrderCreated"),
        "{shown:?}"
    );
    assert!(db.stored(&conversation).await.is_empty());
    // a queue of another tenant, or none, is refused by name
    let wrong = admin
        .show_dead_letters(admin_api::DeadLettersRequest {
            tenant: "mall".into(),
            queue: "mesh.paipai.order.v2.message".into(),
            limit: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::InvalidArgument, "{wrong:?}");

    db.sql("DROP TRIGGER bad_migration ON mesh_mall.messages")
        .await;
    let replayed = admin
        .replay_dead_letters(request(0))
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(replayed, 3);
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.stored(&conversation).await.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "replayed letters stored within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(dead_letters(&mut admin).await, 0);
    assert_eq!(
        admin
            .replay_dead_letters(request(0))
            .await
            .unwrap()
            .into_inner()
            .count,
        0
    );
    // what must not happen needs a wait: half a second for a second copy of a replayed event to arrive (it takes ~10 ms to be stored)
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = db.stored(&conversation).await;
    assert_eq!(stored.len(), 3, "each replayed event stored once");
    println!(
        "FIGURE dead-letters: dead_lettered=3 shown_with_reason=3 replayed_after_fix={replayed} stored={} duplicates=0",
        stored.len()
    );

    drop(up);
    drop(channel);
    db.drop_database().await;
}

//! Three nodes serving one platform behind HAProxy, on loopback: three `mesh up` (each with its
//! front door, supervisor and worker) sharing Redis, PostgreSQL, RabbitMQ and one node
//! credential, and HAProxy (configured by `mesh deploy haproxy`) routing calls to their front
//! doors. Receivers' phones are attached to each of the nodes; senders chat through the proxy;
//! one node is SIGKILLed mid-chat (its supervisor and its worker). Every message a sender was
//! told OK is stored once and reaches its receiver once (live, or synced after it attached
//! again elsewhere); a switch set through one node reaches the others. Prints the figures
//! SCALE.md records: switch propagation across three nodes, push latency through the proxy
//! and across nodes, and the failover times.

use crate::support;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use mesh_api::{locator::v1::TerminalKind, message::v1 as message, recommend::v1 as recommend};
use mesh_gateway::Terminal;
use support::{
    Db, MeshUp, Users, clear_shared_state, ctx, field, node_ctx, redis_prefix, redis_url, signal,
    start_haproxy, switch_recommend, worker_channel,
};
use tonic::transport::Channel;

const OPS_TOKEN: &str = "three-nodes-ops-token";
/// Receivers (each with a phone on one of the nodes, in turn) and as many senders.
const PAIRS: usize = 6;
/// Messages each sender sends.
const MESSAGES: usize = 60;

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p).div_ceil(100).max(1) - 1]
}

/// Whether mall's Suggest through `channel` is answered degraded.
async fn degraded(channel: &Channel) -> Result<bool, tonic::Status> {
    let mut request = tonic::Request::new(recommend::SuggestRequest::default());
    ctx("mall", "dev-mall-token")
        .inject(request.metadata_mut())
        .unwrap();
    request.set_timeout(Duration::from_secs(5));
    let response = recommend::recommend_client::RecommendClient::new(channel.clone())
        .suggest(request)
        .await?;
    Ok(response.metadata().get("x-mesh-degraded").is_some())
}

struct Node {
    up: MeshUp,
    admin: String,
    worker: String,
    channel: Channel,
}

/// What a receiver got: each chat message's body, when it arrived, and when it attached again
/// after its node died (from the kill).
#[derive(Default)]
struct Received {
    bodies: Vec<(String, Instant)>,
    reattached_after: Option<Duration>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_behind_haproxy_lose_and_duplicate_nothing_when_one_is_killed() {
    // one of the tests that load the machine or time a fault: they take turns
    let _heavy = support::heavy().await;
    let prefix = redis_prefix();
    clear_shared_state(&prefix).await;
    let db = Db::create().await;
    // limits hold per node: raised, so the chat measures the platform, not admission
    let folders: Vec<tempfile::TempDir> = (0..3).map(|_| support::mall_unthrottled()).collect();
    let states: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for (folder, state) in folders.iter().zip(&states) {
        let env = [
            ("MESH_STATE_REDIS_URL", redis_url()),
            ("MESH_STATE_REDIS_PREFIX", prefix.clone()),
            ("MESH_STORE_POSTGRES", db.url()),
            ("MESH_AMQP_URI", support::LOCAL_AMQP.to_owned()),
            ("MESH_ADMIN_TOKEN", OPS_TOKEN.to_owned()),
            ("MESH_STATE_DIR", state.path().display().to_string()),
            // as on machines of their own: workers on every interface, reached at an address
            // given (pushes between nodes dial it)
            ("MESH_WORKERS_LISTEN_HOST", "0.0.0.0".to_owned()),
            ("MESH_WORKERS_ADVERTISE_HOST", "127.0.0.1".to_owned()),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut up = MeshUp::start(folder.path(), &env).await;
        let admin = up.admin_address().await;
        let worker = up.shared_worker().await;
        assert!(
            field(&worker, "address").starts_with("127.0.0.1:"),
            "the worker says the address it is reached at: {worker}"
        );
        let channel = up.channel().await;
        nodes.push(Node {
            up,
            admin,
            worker,
            channel,
        });
    }
    let users = Users::of(folders[0].path());

    // HAProxy as `mesh deploy haproxy` configures it, the three front doors its servers
    let fronts: Vec<&str> = nodes.iter().map(|n| n.up.front.as_str()).collect();
    let (mut haproxy, proxy_at) =
        start_haproxy(folders[0].path(), &format!("shared={}", fronts.join(","))).await;
    let proxy = tonic::transport::Endpoint::from_shared(format!("http://{proxy_at}"))
        .unwrap()
        .connect_lazy();
    let started = Instant::now();
    while degraded(&proxy).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "HAProxy serves"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // a switch set through node a reaches nodes b and c
    let mut propagation = Vec::new();
    for on in [false, true].repeat(5) {
        let set = Instant::now();
        switch_recommend(&nodes[0].admin, OPS_TOKEN, "mall", on, "three nodes test").await;
        for node in &nodes[1..] {
            while degraded(&node.channel).await.unwrap() == on {
                assert!(
                    set.elapsed() < Duration::from_secs(5),
                    "a node did not follow"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        propagation.push(set.elapsed());
    }
    propagation.sort();
    println!(
        "FIGURE switch propagation, set through node a until nodes b and c both answer by it: p50 {:?} max {:?} ({} changes)",
        percentile(&propagation, 50),
        propagation[propagation.len() - 1],
        propagation.len()
    );

    // receivers: r<i>'s phone on node i % 3; each reads until it holds what it was promised
    let chat_started = Instant::now();
    let promised: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>> = Arc::default();
    let (senders_done, senders_done_rx) = tokio::sync::watch::channel(false);
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let mut receivers = Vec::new();
    for i in 0..PAIRS {
        let user = format!("r{i}");
        let ctx = users.ctx("mall", &user);
        let at = nodes[i % 3].channel.clone();
        let mut phone =
            Terminal::connect(&ctx, at.clone(), at, &user, "phone", TerminalKind::Phone)
                .await
                .unwrap();
        let (proxy, promised, killed_at) = (proxy.clone(), promised.clone(), killed_at.clone());
        let mut done = senders_done_rx.clone();
        receivers.push(tokio::spawn(async move {
            let mut got = Received::default();
            let holds_all = |got: &Received| {
                let promised = promised.lock().unwrap();
                let bodies: BTreeSet<&str> = got.bodies.iter().map(|(b, _)| b.as_str()).collect();
                promised
                    .get(&user)
                    .is_none_or(|p| p.iter().all(|b| bodies.contains(b.as_str())))
            };
            loop {
                if *done.borrow() && holds_all(&got) {
                    // a little longer: a duplicate would come now
                    if let Ok(Ok(Some(push))) =
                        tokio::time::timeout(Duration::from_millis(300), phone.next()).await
                        && let Some(mesh_api::gateway::v1::push::Payload::Message(m)) = push.payload
                    {
                        got.bodies.push((m.body, Instant::now()));
                        continue;
                    }
                    return (user, got);
                }
                let next = tokio::select! {
                    next = phone.next() => next,
                    _ = done.changed() => continue,
                    // a phone that hears nothing for 30 s has lost its stream: say what it was promised
                    () = tokio::time::sleep(Duration::from_secs(30)) => {
                        let promised = promised.lock().unwrap().get(&user).cloned().unwrap_or_default();
                        let held: BTreeSet<String> = got.bodies.iter().map(|(b, _)| b.clone()).collect();
                        panic!(
                            "{user}: nothing for 30 s, holding {} messages, missing {:?}; cursor {}, reattached {:?}; order held: {:?}",
                            got.bodies.len(),
                            promised.difference(&held).collect::<Vec<_>>(),
                            phone.cursor(),
                            got.reattached_after,
                            got.bodies.iter().map(|(b, _)| b.split(':').nth(1).unwrap_or_default().to_owned()).collect::<Vec<_>>()
                        )
                    }
                };
                match next {
                    Ok(Some(push)) => {
                        if let Some(mesh_api::gateway::v1::push::Payload::Message(m)) = push.payload {
                            got.bodies.push((m.body, Instant::now()));
                        }
                    }
                    // its node died: it attaches again through the proxy, from its cursor
                    _ => {
                        let cursor = phone.cursor();
                        let lost = Instant::now();
                        phone = loop {
                            match Terminal::resume(
                                &ctx,
                                proxy.clone(),
                                proxy.clone(),
                                &user,
                                "phone",
                                TerminalKind::Phone,
                                cursor,
                            )
                            .await
                            {
                                Ok(phone) => break phone,
                                Err(status) => {
                                    assert!(
                                        lost.elapsed() < Duration::from_secs(20),
                                        "{user} attaches again within 20 s: {status:?}"
                                    );
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                            }
                        };
                        let killed = killed_at.lock().unwrap().expect("only a kill ends a stream");
                        got.reattached_after = Some(killed.elapsed());
                    }
                }
            }
        }));
    }

    // senders: s<i> writes to r<i> through the proxy; a failed send is retried with the same
    // id until it is answered OK, which is the promise counted
    let mut senders = Vec::new();
    for i in 0..PAIRS {
        let (proxy, promised, users) = (proxy.clone(), promised.clone(), users.clone());
        senders.push(tokio::spawn(async move {
            let mut caller = message::MessageCaller::new(proxy);
            let ctx = users.ctx("mall", &format!("s{i}"));
            let mut retried = 0u32;
            for n in 0..MESSAGES {
                let body = format!("{i}:{n}:{}", chat_started.elapsed().as_micros());
                let first = Instant::now();
                loop {
                    let answer = caller
                        .send(
                            &ctx,
                            message::SendRequest {
                                conversation_id: format!("c3-{i}"),
                                from_user: format!("s{i}"),
                                to_user: format!("r{i}"),
                                body: body.clone(),
                                client_msg_id: format!("m-{i}-{n}"),
                            },
                        )
                        .await;
                    match answer {
                        Ok(_) => break,
                        Err(status) => {
                            assert!(
                                first.elapsed() < Duration::from_secs(20),
                                "s{i} message {n} not accepted within 20 s: {status:?}"
                            );
                            retried += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                promised
                    .lock()
                    .unwrap()
                    .entry(format!("r{i}"))
                    .or_default()
                    .insert(body);
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            retried
        }));
    }

    // node c dies outright mid-chat (its supervisor and its worker), after 600 ms of chat:
    // some 40 sends per sender (one every 15 ms) already through it
    tokio::time::sleep(Duration::from_millis(600)).await;
    let dead = nodes.pop().unwrap();
    *killed_at.lock().unwrap() = Some(Instant::now());
    signal(&dead.up.pid(), "-KILL");
    signal(field(&dead.worker, "pid"), "-KILL");
    let dead_worker = field(&dead.worker, "address").to_owned();
    let killed = Instant::now();

    // the shared locator forgets the dead node's terminals
    let mut locator =
        mesh_api::locator::v1::LocatorCaller::new(worker_channel(&nodes[0].worker).await);
    loop {
        let mut on_dead = 0;
        for i in (2..PAIRS).step_by(3) {
            let located = locator
                .locate(
                    &node_ctx("mall"),
                    mesh_api::locator::v1::LocateRequest {
                        user_id: format!("r{i}"),
                    },
                )
                .await
                .unwrap();
            on_dead += located
                .terminals
                .iter()
                .filter(|t| t.node_address.ends_with(&dead_worker))
                .count();
        }
        if on_dead == 0 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "terminals still located on the dead node"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let forgotten = killed.elapsed();

    let mut retried = 0;
    for sender in senders {
        retried += sender.await.unwrap();
    }
    let _ = senders_done.send(true);
    let mut received = BTreeMap::new();
    for receiver in receivers {
        let (user, got) = tokio::time::timeout(Duration::from_secs(60), receiver)
            .await
            .expect("every receiver holds its messages within 60 s")
            .unwrap();
        received.insert(user, got);
    }
    let chat_took = chat_started.elapsed();

    // nothing promised is lost, nothing is duplicated: on the phones ...
    let promised = promised.lock().unwrap().clone();
    let mut latencies = Vec::new();
    let mut reattached = Vec::new();
    for (user, got) in &received {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (body, _) in &got.bodies {
            *counts.entry(body).or_default() += 1;
        }
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "{user} got these more than once: {twice:?}"
        );
        let expected = &promised[user];
        assert_eq!(expected.len(), MESSAGES);
        let got_set: BTreeSet<String> = counts.keys().map(|b| (*b).to_owned()).collect();
        assert_eq!(&got_set, expected, "{user}: exactly what was promised");
        // send started -> push arrived, for the messages pushed live
        for (body, arrived) in &got.bodies {
            let sent_us: u64 = body.rsplit(':').next().unwrap().parse().unwrap();
            let sent = chat_started + Duration::from_micros(sent_us);
            latencies.push(arrived.saturating_duration_since(sent));
        }
        if let Some(after) = got.reattached_after {
            reattached.push(after);
        }
    }
    // ... and in the store: each promised message once
    let stored = db.stored("c3-").await;
    let ids: Vec<String> = stored
        .iter()
        .filter_map(|(_, _, id, _)| id.clone())
        .collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), unique.len(), "a message stored twice");
    assert_eq!(ids.len(), PAIRS * MESSAGES, "every promised message stored");
    assert_eq!(
        reattached.len(),
        PAIRS / 3,
        "the dead node's receivers attached again, the others never lost theirs"
    );

    // the switch set through a survivor reaches the other and the proxy's routes
    switch_recommend(&nodes[1].admin, OPS_TOKEN, "mall", false, "after the kill").await;
    let set = Instant::now();
    while !degraded(&nodes[0].channel).await.unwrap() {
        assert!(
            set.elapsed() < Duration::from_secs(5),
            "node a follows node b"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for _ in 0..6 {
        assert!(degraded(&proxy).await.unwrap(), "through the proxy too");
    }

    latencies.sort();
    reattached.sort();
    println!(
        "FIGURE three nodes behind HAProxy: {} messages from {PAIRS} senders in {:.1}s, node c \
         SIGKILLed mid-chat; sends retried {retried}; lost 0, duplicated 0 (phones and store)",
        PAIRS * MESSAGES,
        chat_took.as_secs_f64()
    );
    println!(
        "FIGURE send -> push through the proxy (any node to any node): p50 {:?} p99 {:?}",
        percentile(&latencies, 50),
        percentile(&latencies, 99)
    );
    println!(
        "FIGURE failover: the dead node's phones attached again through the proxy after {:?} \
         (slowest), and were located on it no longer after {forgotten:?}",
        reattached[reattached.len() - 1]
    );

    let _ = haproxy.kill().await;
    drop(nodes);
    drop(dead);
    clear_shared_state(&prefix).await;
    db.drop_database().await;
}

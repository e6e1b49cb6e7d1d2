//! A fleet converges through the faults that happen between nodes and over time: three
//! `mesh up` nodes behind the HAProxy `mesh deploy haproxy` renders, on a Redis of the test's
//! own, PostgreSQL and one node credential. Receivers hold a phone and a desktop each,
//! attached through the proxy (so on every node); senders chat through the proxy the whole
//! time, retrying a failed send with the same client id. In turn: one node is paused
//! (SIGSTOP, front door and worker) for 30 s; Redis restarts empty; Redis is stopped for 20 s;
//! each node is stopped (SIGTERM) and started again (a rolling update); two operators switch
//! different things through two nodes at the same moment, 20 times.
//!
//! Counted after each fault: every message a sender was told OK reaches every terminal of its
//! receiver (0 missing, 0 twice), and how long after the fault ended; no call attempt outlives
//! its deadline on the paused node; every switch change survives and the nodes agree. Prints
//! the figures SCALE.md records.

use crate::support;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use mesh_api::{locator::v1::TerminalKind, message::v1 as message};
use mesh_gateway::Terminal;
use support::{Db, MeshUp, OwnRedis, Users, field, free_port, signal, start_haproxy};
use tonic::transport::Channel;

const OPS_TOKEN: &str = "convergence-ops-token";
/// Receivers, each with a phone and a desktop; as many senders, one each.
const RECEIVERS: usize = 4;
/// How long the paused node stays paused.
const PAUSE: Duration = Duration::from_secs(30);
/// How long Redis stays away.
const REDIS_AWAY: Duration = Duration::from_secs(20);
/// Every terminal holds every message acknowledged to its receiver within this after the
/// fault ended (a heartbeat is 5 s; the figure printed is what SCALE.md records).
const CONVERGE_WITHIN: Duration = Duration::from_secs(10);
/// What a sender's call may take: Send's contract deadline (1 s) and the proxy's hop.
const CALL_DEADLINE: Duration = Duration::from_millis(1500);

struct Node {
    up: MeshUp,
    listen: String,
    worker_pid: String,
    admin: String,
}

/// Terminal (receiver, kind) -> the chat bodies it returned, in order.
type Got = Arc<Mutex<BTreeMap<(usize, &'static str), Vec<String>>>>;
/// Receiver -> the bodies its sender was told OK for.
type Acked = Arc<Mutex<BTreeMap<usize, BTreeSet<String>>>>;

fn receiver(i: usize) -> String {
    format!("rcv{i}")
}

async fn start_node(folder: &std::path::Path, listen: &str, env: &[(&str, &str)]) -> Node {
    let mut up = MeshUp::start_on(folder, listen, env).await;
    let admin = up.admin_address().await;
    let worker = up.shared_worker().await;
    Node {
        listen: up.front.clone(),
        up,
        worker_pid: field(&worker, "pid").to_owned(),
        admin,
    }
}

/// A terminal of receiver `i` kept attached through `proxy` until `stop`: what it returns
/// goes into `got`; a stream that ends without a reconnect hint (its node died) or an error
/// is followed by an attach again from its cursor. Its resyncs and reconnects, and how many
/// times the test had to attach it again.
fn keep_attached(
    users: &Users,
    proxy: Channel,
    i: usize,
    kind: &'static str,
    got: Got,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64, u64)> {
    let ctx = users.ctx("mall", &receiver(i));
    tokio::spawn(async move {
        let user = receiver(i);
        let terminal_kind = if kind == "phone" {
            TerminalKind::Phone
        } else {
            TerminalKind::Desktop
        };
        let (mut resyncs, mut reconnects, mut reattached) = (0, 0, 0);
        let mut cursor = 0;
        while !stop.load(Ordering::Relaxed) {
            let attached = Terminal::resume(
                &ctx,
                proxy.clone(),
                proxy.clone(),
                &user,
                kind,
                terminal_kind,
                cursor,
            )
            .await;
            let mut terminal = match attached {
                Ok(terminal) => terminal,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    next = terminal.next() => next,
                    // every 200 ms the stream is left to check for the stop (next() is cancelled: it must lose nothing)
                    () = tokio::time::sleep(Duration::from_millis(200)) => {
                        if stop.load(Ordering::Relaxed) { break } else { continue }
                    }
                };
                match next {
                    Ok(Some(push)) => {
                        if let Some(mesh_api::gateway::v1::push::Payload::Message(m)) = push.payload
                        {
                            got.lock()
                                .unwrap()
                                .entry((i, kind))
                                .or_default()
                                .push(m.body);
                        }
                    }
                    // its node went away without a word, or a call of its failed: attach
                    // again (through the proxy) from what it holds
                    Ok(None) => break,
                    Err(status) => {
                        println!("{user}/{kind} attaches again after {status:?}");
                        break;
                    }
                }
            }
            cursor = terminal.cursor();
            resyncs += terminal.resyncs();
            reconnects += terminal.reconnects();
            if !stop.load(Ordering::Relaxed) {
                reattached += 1;
            }
        }
        (resyncs, reconnects, reattached)
    })
}

/// A sender chatting to receiver `i` through `proxy` while `sending`, until `stop`: each
/// message retried with its client id until answered OK (then counted in `acked`); the
/// longest single attempt.
fn keep_sending(
    users: &Users,
    proxy: Channel,
    i: usize,
    acked: Acked,
    sending: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Duration> {
    let ctx = users.ctx("mall", &format!("snd{i}"));
    tokio::spawn(async move {
        let mut caller = message::MessageCaller::new(proxy);
        let mut longest = Duration::ZERO;
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            if !sending.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            n += 1;
            let body = format!("m{i}:{n}");
            for _ in 0..50 {
                let started = Instant::now();
                let answer = caller
                    .send(
                        &ctx,
                        message::SendRequest {
                            conversation_id: format!("conv-{i}"),
                            from_user: format!("snd{i}"),
                            to_user: receiver(i),
                            body: body.clone(),
                            client_msg_id: body.clone(),
                        },
                    )
                    .await;
                longest = longest.max(started.elapsed());
                if answer.is_ok() {
                    acked
                        .lock()
                        .unwrap()
                        .entry(i)
                        .or_default()
                        .insert(body.clone());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        longest
    })
}

/// Waits until every terminal holds every message acknowledged to its receiver, each once;
/// how long it took.
async fn converged(got: &Got, acked: &Acked, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        let (missing, twice) = {
            let got = got.lock().unwrap();
            let acked = acked.lock().unwrap();
            let mut missing = Vec::new();
            let mut twice = Vec::new();
            for i in 0..RECEIVERS {
                for kind in ["phone", "desktop"] {
                    let held = got.get(&(i, kind)).cloned().unwrap_or_default();
                    let unique: BTreeSet<&String> = held.iter().collect();
                    if unique.len() != held.len() {
                        twice.push(format!("{}/{kind}", receiver(i)));
                    }
                    for body in acked.get(&i).into_iter().flatten() {
                        if !unique.contains(body) {
                            missing.push(format!("{}/{kind}: {body}", receiver(i)));
                        }
                    }
                }
            }
            (missing, twice)
        };
        assert!(
            twice.is_empty(),
            "{what}: a message returned twice on {twice:?}"
        );
        if missing.is_empty() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < CONVERGE_WITHIN,
            "{what}: after {CONVERGE_WITHIN:?} still missing {} message(s): {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_through_a_pause_redis_restarts_and_outages_and_a_rolling_update() {
    // one of the tests that load the machine or time a fault: they take turns
    let _heavy = support::heavy().await;
    let mut redis = OwnRedis::start().await;
    let db = Db::create().await;
    let folders: Vec<tempfile::TempDir> = (0..3).map(|_| support::mall_unthrottled()).collect();
    let states: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let envs: Vec<Vec<(&str, String)>> = states
        .iter()
        .map(|state| {
            vec![
                ("MESH_STATE_REDIS_URL", redis.url()),
                ("MESH_STATE_REDIS_PREFIX", "convergence".to_owned()),
                ("MESH_STORE_POSTGRES", db.url()),
                ("MESH_ADMIN_TOKEN", OPS_TOKEN.to_owned()),
                ("MESH_STATE_DIR", state.path().display().to_string()),
            ]
        })
        .collect();
    let env_of =
        |n: usize| -> Vec<(&str, &str)> { envs[n].iter().map(|(k, v)| (*k, v.as_str())).collect() };
    let mut nodes = Vec::new();
    for (n, folder) in folders.iter().enumerate() {
        let listen = format!("127.0.0.1:{}", free_port());
        nodes.push(start_node(folder.path(), &listen, &env_of(n)).await);
    }
    let users = Users::of(folders[0].path());
    let fronts: Vec<String> = nodes.iter().map(|n| n.listen.clone()).collect();
    let (mut haproxy, proxy_at) =
        start_haproxy(folders[0].path(), &format!("shared={}", fronts.join(","))).await;
    let proxy = tonic::transport::Endpoint::from_shared(format!("http://{proxy_at}"))
        .unwrap()
        .connect_lazy();

    let got: Got = Arc::default();
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sending = Arc::new(AtomicBool::new(false));
    let mut terminals = Vec::new();
    for i in 0..RECEIVERS {
        for kind in ["phone", "desktop"] {
            // each its own connection to the proxy, as each device has
            let own = tonic::transport::Endpoint::from_shared(format!("http://{proxy_at}"))
                .unwrap()
                .connect_lazy();
            terminals.push(keep_attached(
                &users,
                own,
                i,
                kind,
                got.clone(),
                stop.clone(),
            ));
        }
    }
    let senders: Vec<_> = (0..RECEIVERS)
        .map(|i| {
            keep_sending(
                &users,
                proxy.clone(),
                i,
                acked.clone(),
                sending.clone(),
                stop.clone(),
            )
        })
        .collect();
    // a first round with every node up: every terminal attached and served
    sending.store(true, Ordering::Relaxed);
    // a round of traffic: 2 s of sends to every receiver
    tokio::time::sleep(Duration::from_secs(2)).await;
    sending.store(false, Ordering::Relaxed);
    converged(&got, &acked, "all nodes up").await;
    let mut figures = Vec::new();

    // (a Terminal's next() is cancelled by the select! above every 200 ms: it must lose
    // nothing, which the counts below check too)

    // 1. a node paused for 30 s: out of the proxy's rotation, its terminals synced on resume
    let paused = &nodes[0];
    sending.store(true, Ordering::Relaxed);
    // traffic before the fault, so it strikes mid-flow
    tokio::time::sleep(Duration::from_millis(500)).await;
    for pid in [&paused.worker_pid, &paused.up.pid()] {
        signal(pid, "-STOP");
    }
    // the fault: the node stays paused for PAUSE
    tokio::time::sleep(PAUSE).await;
    for pid in [&paused.up.pid(), &paused.worker_pid] {
        signal(pid, "-CONT");
    }
    let ended = Instant::now();
    // a second of traffic after it, through the recovery
    tokio::time::sleep(Duration::from_secs(1)).await;
    sending.store(false, Ordering::Relaxed);
    converged(&got, &acked, "a node paused for 30 s").await;
    figures.push(("node paused 30 s", ended.elapsed()));

    // 2. Redis restarted empty
    sending.store(true, Ordering::Relaxed);
    // traffic before the fault, so it strikes mid-flow
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.kill();
    redis.up().await;
    let ended = Instant::now();
    // a second of traffic after it, through the recovery
    tokio::time::sleep(Duration::from_secs(1)).await;
    sending.store(false, Ordering::Relaxed);
    converged(&got, &acked, "Redis restarted empty").await;
    figures.push(("Redis restarted empty", ended.elapsed()));

    // 3. Redis away for 20 s
    sending.store(true, Ordering::Relaxed);
    // traffic before the fault, so it strikes mid-flow
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.kill();
    // the fault: Redis stays away for REDIS_AWAY
    tokio::time::sleep(REDIS_AWAY).await;
    redis.up().await;
    let ended = Instant::now();
    // a second of traffic after it, through the recovery
    tokio::time::sleep(Duration::from_secs(1)).await;
    sending.store(false, Ordering::Relaxed);
    converged(&got, &acked, "Redis away for 20 s").await;
    figures.push(("Redis away 20 s", ended.elapsed()));

    // 4. a rolling update: each node stopped as a deployment stops it, and started again
    sending.store(true, Ordering::Relaxed);
    for n in 0..3 {
        let old = &mut nodes[n];
        signal(&old.up.pid(), "-TERM");
        let exited = tokio::time::timeout(Duration::from_secs(30), old.up.child.wait())
            .await
            .expect("a node SIGTERMed stops within 30 s")
            .unwrap();
        assert!(exited.success(), "node {n} stopped cleanly: {exited:?}");
        let listen = old.listen.clone();
        nodes[n] = start_node(folders[n].path(), &listen, &env_of(n)).await;
        // back in the proxy's rotation before the next one leaves: HAProxy checks every 300 ms
        // and takes a server back after 2 good checks, so 2 s is three times what it needs
        // (its rotation is not observable from here without its stats socket)
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let ended = Instant::now();
    // a second of traffic after the last node is back
    tokio::time::sleep(Duration::from_secs(1)).await;
    sending.store(false, Ordering::Relaxed);
    converged(&got, &acked, "a rolling update").await;
    figures.push(("rolling update", ended.elapsed()));

    // 5. two operators, two nodes, two switches, the same moment, 20 times
    let mut worst = Duration::ZERO;
    for trial in 0..20 {
        let on = trial % 2 == 1;
        let (a, b) = tokio::join!(
            support::set_mall_switch(&nodes[0].admin, OPS_TOKEN, 0, on),
            support::set_mall_switch(&nodes[1].admin, OPS_TOKEN, 1, on)
        );
        assert!(a.fleet.unwrap().shared && b.fleet.unwrap().shared);
        let expected: BTreeSet<String> = if on {
            BTreeSet::new()
        } else {
            ["recommend@mall".to_owned(), "tier>=2@mall".to_owned()].into()
        };
        let admins: Vec<&str> = nodes.iter().map(|n| n.admin.as_str()).collect();
        let took =
            support::switches_agree(&admins, OPS_TOKEN, &expected, &format!("trial {trial}")).await;
        worst = worst.max(took);
    }

    stop.store(true, Ordering::Relaxed);
    let mut longest = Duration::ZERO;
    for sender in senders {
        longest = longest.max(sender.await.unwrap());
    }
    let (mut resyncs, mut reconnects, mut reattached) = (0, 0, 0);
    for terminal in terminals {
        let (r, c, a) = terminal.await.unwrap();
        (resyncs, reconnects, reattached) = (resyncs + r, reconnects + c, reattached + a);
    }
    let acked_total: usize = acked.lock().unwrap().values().map(BTreeSet::len).sum();
    println!(
        "FIGURE three nodes behind HAProxy, {acked_total} messages acknowledged to {} terminals, \
         0 missing, 0 twice; converged after the fault ended: {}; terminal resyncs {resyncs}, \
         reconnect hints followed {reconnects}, attached again by the app {reattached}; longest \
         send attempt {longest:?}; 20 concurrent switch pairs, nodes agreed within {worst:?}",
        RECEIVERS * 2,
        figures
            .iter()
            .map(|(what, took)| format!("{what} {took:.1?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(
        longest < CALL_DEADLINE * 2,
        "no call attempt outlives its deadline: the longest took {longest:?}"
    );
    assert!(
        reconnects > 0,
        "the rolling update's nodes told their terminals to reconnect"
    );
    let _ = haproxy.kill().await;
    drop(nodes);
    db.drop_database().await;
}

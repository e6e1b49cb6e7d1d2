//! Long connections through `mesh up`'s front door: thousands of terminals attached to one
//! worker, each getting its message; a client cancelling a thousand of its streams at once
//! keeps the others; a full worker refuses the next stream at once, naming the limit; a
//! terminal whose network vanished is found by keepalive pings and unregistered; a terminal
//! that reconnects gets what it missed.

use crate::support;

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use mesh_api::{
    gateway::v1::{self as gateway, push::Payload},
    locator::v1::{self as locator, TerminalKind},
    message::v1 as message,
};
use mesh_contract::RequestContext;
use support::{MeshUp, Users, node_ctx, tenants_folder, worker_channel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Status, Streaming, transport::Channel};

/// A business line whose rate limit lets thousands of terminals attach at once.
const BULK: &str = "id = \"bulk\"\ndisplay_name = \"Bulk\"\ndata_namespace = \"bulk\"\n\
    [credentials]\ntoken = \"bulk-secret-token\"\n\
    [limits]\nrequests_per_second = 100000\nburst = 100000\nmax_concurrent_per_dependency = 100000\n\
    max_terminals_per_user = 64\n\
    [services.gateway.settings]\nmax_devices = 64\n";

/// The bulk business line: its users' tokens and where its worker serves.
#[derive(Clone)]
struct Bulk {
    users: Users,
    worker: String,
}

impl Bulk {
    /// `user` of bulk, with a token of its own.
    fn user(&self, user: &str) -> RequestContext {
        self.users.ctx("bulk", user)
    }
}

async fn bulk_mesh(env: &[(&str, &str)]) -> (tempfile::TempDir, MeshUp, Bulk) {
    let dir = tenants_folder(&[], &[("bulk.toml", BULK)]);
    let mut up = MeshUp::start(dir.path(), env).await;
    let worker = up.shared_worker().await;
    let users = Users::of(dir.path());
    (dir, up, Bulk { users, worker })
}

async fn attach(
    channel: Channel,
    bulk: &Bulk,
    user: &str,
    terminal: &str,
) -> Result<Streaming<gateway::Push>, Status> {
    gateway::GatewayCaller::new(channel)
        .attach(
            &bulk.user(user),
            gateway::AttachRequest {
                user_id: user.into(),
                terminal_id: terminal.into(),
                kind: TerminalKind::Phone as i32,
            },
        )
        .await
}

async fn send(channel: Channel, bulk: &Bulk, user: &str, id: &str) -> Vec<String> {
    message::MessageCaller::new(channel)
        .send(
            &bulk.user("agent"),
            message::SendRequest {
                conversation_id: format!("c-{user}"),
                from_user: "agent".into(),
                to_user: user.into(),
                body: format!("hello {id}"),
                client_msg_id: id.into(),
            },
        )
        .await
        .unwrap_or_else(|s| panic!("send to {user}: {s:?}"))
        .delivered_terminals
}

/// `stream` gets the chat message `body`, as a conforming client learns it: pushed, or, if its
/// push was lost (a Deliver that missed its 300 ms deadline on a busy machine), shown by a
/// heartbeat whose head is past what the terminal holds, and then found by a sync from there
/// (a push is a hint, the timeline the truth). `held` is the position the terminal holds.
async fn expect_message(
    name: &str,
    stream: &mut Streaming<gateway::Push>,
    body: &str,
    (channel, bulk, user, device, held): (&Channel, &Bulk, &str, &str, &mut u64),
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let push = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("{name}: no push within 20 s"))
            .unwrap_or_else(|s| panic!("{name}: stream failed: {s:?}"))
            .unwrap_or_else(|| panic!("{name}: stream ended"));
        match push.payload {
            // a push of what a sync brought already (it was late, not lost): skipped, as a
            // client does by its position
            Some(Payload::Message(m)) if m.position <= *held => continue,
            Some(Payload::Message(m)) => {
                assert_eq!(m.body, body, "{name}");
                *held = m.position;
                return;
            }
            Some(Payload::Heartbeat(beat)) => {
                if beat.head <= *held {
                    continue;
                }
                let synced = message::MessageCaller::new(channel.clone())
                    .fetch_offline(
                        &bulk.user(user),
                        message::FetchOfflineRequest {
                            user_id: user.to_string(),
                            terminal_id: device.to_string(),
                            limit: 10,
                            after_position: *held,
                        },
                    )
                    .await
                    .unwrap_or_else(|s| panic!("{name}: sync: {s:?}"));
                let found = synced.messages.iter().find(|m| m.body == body);
                assert!(
                    found.is_some(),
                    "{name}: the head moved, the sync has no {body:?}"
                );
                *held = synced.next_position;
                return;
            }
            other => panic!("{name}: expected a message, got {other:?}"),
        }
    }
}

/// 5,000 terminals (1,000 users with 5 devices each) over 10 client connections reach one
/// worker through the front door; one message per user reaches all 5 devices; then one device
/// of every user (1,000 streams) is cancelled at once, and the next message reaches each of the
/// other 4,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_terminals_through_the_front_door_get_their_messages_and_survive_a_mass_cancel()
 {
    // one of the tests that load the machine or time a fault: they take turns
    let _heavy = support::heavy().await;
    const USERS: usize = 1_000;
    const DEVICES: usize = 5;
    const CONNECTIONS: usize = 10;
    // heartbeats at their default (5 s): a terminal whose push was lost learns it within one,
    // well inside expect_message's 20 s. (Every second would put 5,000 small DATA frames a
    // second on these 10 connections, read one stream at a time: h2's budget of unread small
    // frames would close them with ENHANCE_YOUR_CALM, as it should a flood.)
    let (_dir, up, bulk) = bulk_mesh(&[]).await;
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(up.channel().await);
    }
    let started = Instant::now();
    let attaches = (0..USERS * DEVICES).map(|i| {
        let (channel, bulk) = (channels[i % CONNECTIONS].clone(), bulk.clone());
        let (user, device) = (format!("user{}", i / DEVICES), format!("d{}", i % DEVICES));
        async move {
            // as an app does: an attach that ran out of time (a loaded CI machine) is tried
            // again; anything else fails the test
            let mut attempt = 0;
            let stream = loop {
                attempt += 1;
                match attach(channel.clone(), &bulk, &user, &device).await {
                    Ok(stream) => break stream,
                    Err(s)
                        if attempt < 3
                            && matches!(s.code(), Code::Cancelled | Code::DeadlineExceeded) => {}
                    Err(s) => panic!("{user}/{device}: {s:?}"),
                }
            };
            (user, device, stream)
        }
    });
    let terminals: Vec<(String, String, Streaming<gateway::Push>)> = tokio::time::timeout(
        Duration::from_secs(120),
        stream::iter(attaches).buffer_unordered(100).collect(),
    )
    .await
    .expect("every attach answered within 120 s, none left hanging");
    println!(
        "FIGURE attach: {} terminals in {:.2}s",
        terminals.len(),
        started.elapsed().as_secs_f64()
    );
    // each with the timeline position it holds
    let mut terminals: Vec<(String, String, Streaming<gateway::Push>, u64)> = terminals
        .into_iter()
        .map(|(user, device, stream)| (user, device, stream, 0))
        .collect();
    terminals.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));

    let sends = |id: &'static str, devices: usize| {
        let (channels, bulk) = (channels.clone(), bulk.clone());
        stream::iter(0..USERS)
            .map(move |u| {
                let (channel, bulk) = (channels[u % CONNECTIONS].clone(), bulk.clone());
                async move {
                    let user = format!("user{u}");
                    let mut delivered = send(channel, &bulk, &user, id).await;
                    delivered.sort();
                    delivered.dedup();
                    // only this user's terminals are reported (one whose Deliver missed its
                    // 300 ms deadline on a busy machine is left out, and one cancelled a
                    // moment ago may still be in: the streams below are the truth)
                    let known: Vec<String> = (0..DEVICES).map(|d| format!("d{d}")).collect();
                    assert!(
                        delivered.iter().all(|d| known.contains(d)),
                        "{user}: {id}: {delivered:?} reported, of {devices} attached"
                    );
                }
            })
            // 32 at once, each pushing to up to five terminals: a push has 300 ms (the
            // contract's Deliver deadline), which a 2-core machine busy with 160 of them holds
            .buffer_unordered(32)
            .collect::<Vec<()>>()
    };
    tokio::time::timeout(Duration::from_secs(120), sends("first", DEVICES))
        .await
        .expect("1,000 sends within 120 s");
    let channel = up.channel().await;
    for (user, device, stream, held) in &mut terminals {
        let name = format!("{user}/{device}");
        let sync = (&channel, &bulk, user.as_str(), device.as_str(), held);
        expect_message(&name, stream, "hello first", sync).await;
    }

    // device d0 of every user goes away, all at once
    let (cancelled, mut kept): (Vec<_>, Vec<_>) =
        terminals.into_iter().partition(|(_, d, ..)| d == "d0");
    assert_eq!(cancelled.len(), USERS);
    drop(cancelled);
    tokio::time::timeout(Duration::from_secs(120), sends("second", DEVICES - 1))
        .await
        .expect("1,000 sends within 120 s");
    for (user, device, stream, held) in &mut kept {
        let name = format!("{user}/{device}");
        let sync = (&channel, &bulk, user.as_str(), device.as_str(), held);
        expect_message(&name, stream, "hello second", sync).await;
    }
    assert_eq!(kept.len(), USERS * (DEVICES - 1));
}

/// With `max_streams_per_worker = 20`, the 21st stream is refused at once with
/// RESOURCE_EXHAUSTED naming the setting, never left waiting, while unary calls (a send to the
/// 20) still pass; when a terminal leaves, the next one attaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_worker_refuses_the_next_stream_at_once_naming_the_limit() {
    let (_dir, up, bulk) = bulk_mesh(&[("MESH_FRONT_DOOR_MAX_STREAMS_PER_WORKER", "20")]).await;
    let channel = up.channel().await;
    let mut held = Vec::new();
    for t in 0..20 {
        held.push(
            attach(channel.clone(), &bulk, "many", &format!("t{t}"))
                .await
                .unwrap(),
        );
    }
    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        attach(channel.clone(), &bulk, "many", "t20"),
    )
    .await
    .expect("refused at once, not queued")
    .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("max_streams_per_worker"),
        "{refused:?}"
    );
    // the cap bounds long-lived streams only: the sends that feed the terminals still pass
    let delivered = send(channel.clone(), &bulk, "many", "at-the-cap").await;
    assert_eq!(delivered.len(), 20);
    drop(held.pop());
    // the slot is free once the front door saw the stream end
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match attach(channel.clone(), &bulk, "many", "t20").await {
            Ok(_) => break,
            Err(s) if s.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(s) => panic!("after a terminal left: {s:?}"),
        }
    }
}

/// A TCP relay that can freeze: it stops carrying bytes either way but keeps both sockets
/// open, as a network that vanished without a FIN or RST does.
struct Relay {
    address: String,
    frozen: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    async fn to(target: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (frozen, _) = tokio::sync::watch::channel(false);
        let (target, watch) = (target.to_owned(), frozen.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(&target).await.unwrap();
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(carry(cr, sw, watch.subscribe()));
                tokio::spawn(carry(sr, cw, watch.subscribe()));
            }
        });
        Self { address, frozen }
    }

    fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

async fn carry(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            _ = frozen.changed() => break, // the only change there is: frozen
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => if to.write_all(&buf[..n]).await.is_err() { return },
            },
        }
    }
    // hold both sockets open, silent, until the test ends
    let _held = (from, to);
    std::future::pending::<()>().await;
}

/// How many terminals of `user` the locator holds, asked at the worker as the mesh's own nodes
/// ask (the front door serves no locator to the outside).
async fn terminals_of(bulk: &Bulk, user: &str) -> usize {
    locator::LocatorCaller::new(worker_channel(&bulk.worker).await)
        .locate(
            &node_ctx("bulk"),
            locator::LocateRequest {
                user_id: user.into(),
            },
        )
        .await
        .unwrap()
        .terminals
        .len()
}

/// A terminal behind a network that went silent (no FIN, no RST) is found by the front door's
/// keepalive pings (1 s + 1 s here) and unregistered, so messages stop being pushed into a
/// void; a second terminal of the same user on a live connection stays registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_whose_network_vanished_is_unregistered_by_keepalive() {
    let (_dir, up, bulk) = bulk_mesh(&[
        ("MESH_FRONT_DOOR_KEEPALIVE_INTERVAL_SECS", "1"),
        ("MESH_FRONT_DOOR_KEEPALIVE_TIMEOUT_SECS", "1"),
    ])
    .await;
    let relay = Relay::to(&up.front).await;
    let through_relay =
        tonic::transport::Endpoint::from_shared(format!("http://{}", relay.address))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let direct = up.channel().await;
    let _walking = attach(through_relay, &bulk, "walker", "phone")
        .await
        .unwrap();
    let _desk = attach(direct.clone(), &bulk, "walker", "desktop")
        .await
        .unwrap();
    assert_eq!(terminals_of(&bulk, "walker").await, 2);

    relay.freeze();
    let frozen = Instant::now();
    while terminals_of(&bulk, "walker").await != 1 {
        assert!(
            frozen.elapsed() < Duration::from_secs(20),
            "the vanished terminal is still registered after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "FIGURE vanished-terminal: unregistered {:.1}s after its network went silent (keepalive 1 s + 1 s)",
        frozen.elapsed().as_secs_f64()
    );
    // the live one still gets its messages
    let delivered = send(direct, &bulk, "walker", "after-freeze").await;
    assert_eq!(delivered, ["desktop"]);
}

/// A terminal that lost its connection resumes from its cursor: what was sent meanwhile comes
/// first, in order and once, then live messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_terminal_gets_what_it_missed_then_live_messages() {
    let (_dir, up, bulk) = bulk_mesh(&[]).await;
    let channel = up.channel().await;
    let roamer = bulk.user("roamer");
    let connect = |cursor| {
        mesh_gateway::Terminal::resume(
            &roamer,
            channel.clone(),
            channel.clone(),
            "roamer",
            "phone",
            TerminalKind::Phone,
            cursor,
        )
    };
    let mut phone = connect(0).await.unwrap();
    send(channel.clone(), &bulk, "roamer", "m1").await;
    let first = phone.next().await.unwrap().unwrap();
    assert!(matches!(first.payload, Some(Payload::Message(ref m)) if m.body == "hello m1"));
    let cursor = phone.cursor();
    assert_eq!(cursor, 1);
    drop(phone); // the network switched

    for n in 2..=4 {
        send(channel.clone(), &bulk, "roamer", &format!("m{n}")).await;
    }
    let mut phone = connect(cursor).await.unwrap();
    send(channel.clone(), &bulk, "roamer", "m5").await;
    let mut bodies = Vec::new();
    while bodies.len() < 4 {
        match tokio::time::timeout(Duration::from_secs(10), phone.next())
            .await
            .expect("next within 10 s")
            .unwrap()
            .unwrap()
            .payload
        {
            Some(Payload::Message(m)) => bodies.push(m.body),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    assert_eq!(bodies, ["hello m2", "hello m3", "hello m4", "hello m5"]);
    assert_eq!(phone.cursor(), 5);
}

//! The Redis registry, as several nodes share it (Redis on 127.0.0.1:6379, or
//! `MESH_TEST_REDIS_URL`; `bash .ci/test` starts it).

use std::time::Duration;

use mesh_api::locator::v1::TerminalLocation;
use mesh_contract::TenantId;
use mesh_locator::{Presence, RedisPresence};

/// The node credential the test's mesh shares.
const CREDENTIAL: &str = "the-nodes-credential";

fn redis_url() -> String {
    std::env::var("MESH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn at(user: &str, terminal: &str, node: &str) -> TerminalLocation {
    TerminalLocation {
        user_id: user.into(),
        terminal_id: terminal.into(),
        node_id: node.into(),
        node_address: format!("http://{node}"),
        ..Default::default()
    }
}

fn terminals(found: &[TerminalLocation]) -> Vec<(&str, &str)> {
    found
        .iter()
        .map(|l| (l.terminal_id.as_str(), l.node_id.as_str()))
        .collect()
}

/// One test's mesh in the shared Redis: a tenant, two nodes and a registry client for each,
/// all under a prefix of its own.
struct Run {
    id: String,
    tenant: TenantId,
    node_a: String,
    node_b: String,
    prefix: String,
    a: RedisPresence,
    b: RedisPresence,
}

impl Run {
    async fn start() -> Self {
        let id = mesh_contract::ServiceCredentials::fresh_token()[..8].to_lowercase();
        let prefix = format!("test-{id}");
        let a = RedisPresence::connect(&redis_url(), &prefix)
            .await
            .expect("Redis on 127.0.0.1:6379 (bash .ci/test starts it)")
            .with_node_credential(CREDENTIAL);
        let b = RedisPresence::connect(&redis_url(), &prefix)
            .await
            .unwrap()
            .with_node_credential(CREDENTIAL);
        Self {
            tenant: TenantId::new(&format!("t{id}")).unwrap(),
            node_a: format!("a-{id}"),
            node_b: format!("b-{id}"),
            prefix,
            a,
            b,
            id,
        }
    }
}

/// Returns once each of `nodes` has said it is alive (its first heartbeat is in Redis under
/// `prefix`): a node's terminals are located only while it is.
async fn until_alive(prefix: &str, nodes: &[&str]) {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for node in nodes {
        let key = format!("{prefix}:node:{node}");
        while !redis::cmd("EXISTS")
            .arg(&key)
            .query_async::<bool>(&mut raw)
            .await
            .unwrap()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "no heartbeat of {node}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn nodes_share_terminals_and_a_silent_node_is_forgotten() {
    let Run {
        id: run,
        tenant,
        node_a,
        node_b,
        prefix,
        a,
        b,
    } = Run::start().await;
    let other = TenantId::new(&format!("o{run}")).unwrap();
    let alive_a = a.keep_alive(&node_a, &format!("http://{node_a}"), Duration::from_secs(1));
    let _alive_b = b.keep_alive(
        &node_b,
        &format!("http://{node_b}"),
        Duration::from_secs(30),
    );
    until_alive(&prefix, &[&node_a, &node_b]).await;

    // registered through node a, found through node b; not by another tenant
    a.register(&tenant, at("bob", "phone", &node_a))
        .await
        .unwrap();
    b.register(&tenant, at("bob", "desktop", &node_b))
        .await
        .unwrap();
    let found = b.locate(&tenant, "bob").await.unwrap();
    assert_eq!(
        terminals(&found),
        [("desktop", node_b.as_str()), ("phone", node_a.as_str())]
    );
    assert_eq!(found[1].node_address, format!("http://{node_a}"));
    assert!(b.locate(&other, "bob").await.unwrap().is_empty());

    // only the node holding a terminal removes it
    b.unregister(&tenant, "bob", "phone", &node_b)
        .await
        .unwrap();
    assert_eq!(b.locate(&tenant, "bob").await.unwrap().len(), 2);

    // node a stops saying it is alive (killed): its terminal is forgotten within its ttl
    alive_a.abort();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let found = b.locate(&tenant, "bob").await.unwrap();
        if terminals(&found) == [("desktop", node_b.as_str())] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {found:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.unregister(&tenant, "bob", "desktop", &node_b)
        .await
        .unwrap();
    assert!(b.locate(&tenant, "bob").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_node_silent_past_its_expiry_registers_its_terminals_again() {
    let Run {
        tenant,
        node_a,
        node_b,
        prefix,
        a,
        b,
        ..
    } = Run::start().await;
    // a heartbeat every second
    let _alive_a = a.keep_alive(&node_a, &format!("http://{node_a}"), Duration::from_secs(3));
    let _alive_b = b.keep_alive(
        &node_b,
        &format!("http://{node_b}"),
        Duration::from_secs(30),
    );
    until_alive(&prefix, &[&node_a, &node_b]).await;
    a.register(&tenant, at("carol", "phone", &node_a))
        .await
        .unwrap();
    a.register(&tenant, at("carol", "tablet", &node_a))
        .await
        .unwrap();

    // node a is taken for dead (paused past its expiry: its key gone, as expiry removes it),
    // and node b's next lookup forgets its terminals
    let client = redis::Client::open(redis_url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let mut forgotten = false;
    for _ in 0..5 {
        redis::cmd("DEL")
            .arg(format!("{prefix}:node:{node_a}"))
            .query_async::<()>(&mut raw)
            .await
            .unwrap();
        // (unless a's heartbeat came between the two: then again)
        if b.locate(&tenant, "carol").await.unwrap().is_empty() {
            forgotten = true;
            break;
        }
    }
    assert!(forgotten, "node b forgets a dead node's terminals");
    // meanwhile carol's tablet attached to node b
    b.register(&tenant, at("carol", "tablet", &node_b))
        .await
        .unwrap();

    // node a's next heartbeat finds its key gone: its phone is located again, and the tablet
    // stays where it attached last
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let found = b.locate(&tenant, "carol").await.unwrap();
        if terminals(&found) == [("phone", node_a.as_str()), ("tablet", node_b.as_str())] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {found:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // a terminal node a let go is not brought back
    a.unregister(&tenant, "carol", "phone", &node_a)
        .await
        .unwrap();
    redis::cmd("DEL")
        .arg(format!("{prefix}:node:{node_a}"))
        .query_async::<()>(&mut raw)
        .await
        .unwrap();
    // what must not happen needs a wait: a heartbeat and a half (one a second), time for node a
    // to find its key gone and register again what it still holds
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        terminals(&b.locate(&tenant, "carol").await.unwrap()),
        [("tablet", node_b.as_str())]
    );
    b.unregister(&tenant, "carol", "tablet", &node_b)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_location_the_node_did_not_sign_is_never_located() {
    let Run {
        tenant,
        node_a,
        prefix,
        a,
        b,
        ..
    } = Run::start().await;
    let _alive_a = a.keep_alive(
        &node_a,
        &format!("http://{node_a}"),
        Duration::from_secs(30),
    );
    // someone who can write into Redis but does not hold the node credential
    let intruder = RedisPresence::connect(&redis_url(), &prefix)
        .await
        .unwrap()
        .with_node_credential("not-the-credential");
    let _alive_x = intruder.keep_alive("intruder", "http://evil:1", Duration::from_secs(30));
    until_alive(&prefix, &[&node_a, "intruder"]).await;
    a.register(&tenant, at("dave", "phone", &node_a))
        .await
        .unwrap();
    // a node of its own, and a live node of the mesh named with another address
    intruder
        .register(&tenant, at("dave", "tablet", "intruder"))
        .await
        .unwrap();
    let mut redirected = at("dave", "desktop", &node_a);
    redirected.node_address = "http://evil:1".into();
    intruder.register(&tenant, redirected).await.unwrap();
    // a copy of a real node's signed key under another name
    let client = redis::Client::open(redis_url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let signed: String = redis::cmd("GET")
        .arg(format!("{prefix}:node:{node_a}"))
        .query_async(&mut raw)
        .await
        .unwrap();
    redis::cmd("SET")
        .arg(format!("{prefix}:node:copycat"))
        .arg(&signed)
        .query_async::<()>(&mut raw)
        .await
        .unwrap();
    intruder
        .register(&tenant, at("dave", "watch", "copycat"))
        .await
        .unwrap();
    assert_eq!(
        terminals(&b.locate(&tenant, "dave").await.unwrap()),
        [("phone", node_a.as_str())],
        "only what the node signed is located"
    );
}

//! The Redis registry, as several nodes share it (Redis on 127.0.0.1:6379, or
//! `MESH_TEST_REDIS_URL`; `bash .ci/test` starts it).

use std::time::Duration;

use mesh_api::locator::v1::TerminalLocation;
use mesh_contract::TenantId;
use mesh_locator::{Presence, RedisPresence};

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

#[tokio::test]
async fn nodes_share_terminals_and_a_silent_node_is_forgotten() {
    let run = &mesh_contract::ServiceCredentials::fresh_token()[..8].to_lowercase();
    let tenant = TenantId::new(&format!("t{run}")).unwrap();
    let other = TenantId::new(&format!("o{run}")).unwrap();
    let (node_a, node_b) = (format!("a-{run}"), format!("b-{run}"));
    let prefix = format!("test-{run}");
    let a = RedisPresence::connect(&redis_url(), &prefix)
        .await
        .expect("Redis on 127.0.0.1:6379 (bash .ci/test starts it)");
    let b = RedisPresence::connect(&redis_url(), &prefix).await.unwrap();
    let alive_a = a.keep_alive(&node_a, Duration::from_secs(1));
    let _alive_b = b.keep_alive(&node_b, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(100)).await;

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

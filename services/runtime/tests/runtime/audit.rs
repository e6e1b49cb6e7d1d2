//! The audit log of two nodes sharing a Redis (the machine's, 127.0.0.1:6379, under a prefix
//! of this test's own): each lists the other's changes, a Redis that lost the log is refilled
//! from the nodes' files, and an entry not sealed by the mesh is not listed.

use mesh_runtime::control::audit::{AuditEntry, AuditFilter, AuditLog};

const REDIS: &str = "redis://127.0.0.1:6379";
const NODE_CREDENTIAL: &str = "node-credential-of-the-audit-test-0123456789";

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis on 127.0.0.1:6379 (.ci/test starts it)")
}

fn operators(entries: &[AuditEntry]) -> Vec<(&str, &str, &str)> {
    entries
        .iter()
        .map(|e| (e.operator.as_str(), e.action.as_str(), e.node.as_str()))
        .collect()
}

#[tokio::test]
async fn two_nodes_list_each_others_changes_and_a_redis_that_lost_them_is_refilled() {
    let prefix = format!("audit-test-{}", std::process::id());
    let stream = format!("{prefix}:control:audit:log");
    let mut redis = redis().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = AuditLog::in_dir(dir_a.path(), "node-a");
    let b = AuditLog::in_dir(dir_b.path(), "node-b");
    // what node a did before it shared its log reaches the fleet's when it does
    a.record(
        AuditEntry::new("alice", "switch.off", "tier>=2@mall")
            .tenant("mall")
            .before("on")
            .after("off")
            .reason("incident 7"),
    )
    .await
    .unwrap();
    a.share(REDIS, &prefix, NODE_CREDENTIAL).await.unwrap();
    b.share(REDIS, &prefix, NODE_CREDENTIAL).await.unwrap();
    b.record(
        AuditEntry::new("bob", "switch.on", "tier>=2@mall")
            .tenant("mall")
            .before("off")
            .after("on"),
    )
    .await
    .unwrap();
    b.record(
        AuditEntry::new("bob", "tenant.remove", "paipai")
            .tenant("paipai")
            .refused("NotFound: unknown tenant"),
    )
    .await
    .unwrap();
    let all = AuditFilter::default();
    for log in [&a, &b] {
        let (entries, partial) = log.list(&all).await;
        assert!(!partial);
        assert_eq!(
            operators(&entries),
            [
                ("bob", "tenant.remove", "node-b"),
                ("bob", "switch.on", "node-b"),
                ("alice", "switch.off", "node-a"),
            ],
            "newest first, each once, from both nodes"
        );
    }
    let (entries, _) = a.list(&all).await;
    assert_eq!(entries[0].outcome, "refused: NotFound: unknown tenant");
    assert_eq!(entries[2].reason, "incident 7");
    let mall = AuditFilter {
        tenant: Some("mall".into()),
        ..Default::default()
    };
    assert_eq!(a.list(&mall).await.0.len(), 2);
    let alice = AuditFilter {
        operator: Some("alice".into()),
        ..Default::default()
    };
    assert_eq!(
        operators(&b.list(&alice).await.0),
        [("alice", "switch.off", "node-a")]
    );

    // nobody reads an entry in Redis without the node credential
    let raw: Vec<redis::Value> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!format!("{raw:?}").contains("alice"), "sealed in Redis");
    // and an entry written without it is not listed
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("entry")
        .arg(r#"{"id":"x","at_ms":1,"operator":"mallory","action":"switch.on","subject":"s","outcome":"ok","node":"n"}"#)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        !operators(&a.list(&all).await.0)
            .iter()
            .any(|(o, _, _)| *o == "mallory")
    );

    // Redis restarted empty: node b sees only its own file until node a reconciles
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(b.list(&all).await.0.len(), 2);
    a.reconcile().await.unwrap();
    b.reconcile().await.unwrap();
    assert_eq!(
        operators(&b.list(&all).await.0),
        [
            ("bob", "tenant.remove", "node-b"),
            ("bob", "switch.on", "node-b"),
            ("alice", "switch.off", "node-a"),
        ],
        "refilled from both nodes' files, each entry once"
    );

    // a node restarted reads its own file: what it was told is kept
    let again = AuditLog::in_dir(dir_a.path(), "node-a");
    assert_eq!(
        operators(&again.list(&all).await.0),
        [("alice", "switch.off", "node-a")]
    );
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut redis)
        .await
        .unwrap();
}

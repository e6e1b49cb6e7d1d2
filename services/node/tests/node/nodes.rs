//! Two nodes serving one platform, on loopback: two `mesh up`, each with its own front door,
//! supervisor and worker, sharing Redis (who is connected where, the switch state), PostgreSQL
//! (the messages) and one node credential. A terminal attached to one node receives what is
//! sent through the other; a switch set through one node reaches the other's workers; a node
//! killed outright is forgotten within seconds, and its users sync what they missed from the
//! other node, exactly once. Prints the cross-node push latency and the switch propagation,
//! the figures SCALE.md records.
//!
//! The mesh's keys in Redis carry a prefix of the test's own.

use crate::support;

use std::time::{Duration, Instant};

use mesh_api::{locator::v1::TerminalKind, recommend::v1 as recommend};
use mesh_gateway::Terminal;
use support::{
    Db, MeshUp, Users, clear_shared_state, ctx, field, next_body, node_ctx, reattach_phone,
    redis_prefix, redis_url, signal, tenants_folder, worker_channel,
};

const OPS_TOKEN: &str = "nodes-test-ops-token";

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p).div_ceil(100).max(1) - 1]
}

/// Whether mall's Suggest through `channel` is answered degraded by `recommend@mall`.
async fn degraded(channel: &tonic::transport::Channel) -> bool {
    let response = recommend::recommend_client::RecommendClient::new(channel.clone())
        .suggest({
            let mut request = tonic::Request::new(recommend::SuggestRequest::default());
            ctx("mall", "dev-mall-token")
                .inject(request.metadata_mut())
                .unwrap();
            request
        })
        .await
        .unwrap();
    response.metadata().get("x-mesh-degraded").is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_serve_one_platform_and_survive_one_being_killed() {
    let prefix = redis_prefix();
    clear_shared_state(&prefix).await;
    let db = Db::create().await;
    // each node its own tenants folder, as on machines of their own
    let (dir, dir_b) = (
        tenants_folder(&["mall"], &[]),
        tenants_folder(&["mall"], &[]),
    );
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let shared = [
        ("MESH_STATE_REDIS_URL", redis_url()),
        ("MESH_STATE_REDIS_PREFIX", prefix.clone()),
        ("MESH_STORE_POSTGRES", db.url()),
        ("MESH_ADMIN_TOKEN", OPS_TOKEN.to_owned()),
    ];
    let start = |folder: &std::path::Path, state: &tempfile::TempDir| {
        let folder = folder.to_path_buf();
        let mut env: Vec<(&str, String)> = shared.to_vec();
        env.push(("MESH_STATE_DIR", state.path().display().to_string()));
        async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let mut node = MeshUp::start(&folder, &env).await;
            let admin = node.admin_address().await;
            let worker = node.shared_worker().await;
            (node, admin, worker)
        }
    };
    let (node_a, admin_a, worker_a) = start(dir.path(), &state_a).await;
    let (node_b, admin_b, worker_b) = start(dir_b.path(), &state_b).await;
    let (to_a, to_b) = (node_a.channel().await, node_b.channel().await);
    let users = Users::of(dir.path());

    // bob attached to node a, alice to node b: a message sent through b reaches bob on a
    let mut bob = Terminal::connect(
        &users.ctx("mall", "bob"),
        to_a.clone(),
        to_a.clone(),
        "bob",
        "phone",
        TerminalKind::Phone,
    )
    .await
    .unwrap();
    let mut alice = Terminal::connect(
        &users.ctx("mall", "alice"),
        to_b.clone(),
        to_b.clone(),
        "alice",
        "laptop",
        TerminalKind::Desktop,
    )
    .await
    .unwrap();
    // the same path within node a (carol attached there), for comparison: both include
    // storing the message and bob's acknowledgement in PostgreSQL
    let mut carol = Terminal::connect(
        &users.ctx("mall", "carol"),
        to_a.clone(),
        to_a.clone(),
        "carol",
        "laptop",
        TerminalKind::Desktop,
    )
    .await
    .unwrap();
    let (mut across, mut within) = (Vec::new(), Vec::new());
    for n in 0..50 {
        for (sender, conversation, times) in [
            (&mut alice, "c-nodes", &mut across),
            (&mut carol, "c-local", &mut within),
        ] {
            let sent = Instant::now();
            let answer = sender
                .send(
                    conversation,
                    "bob",
                    &format!("hello {n}"),
                    &format!("m-{n}"),
                )
                .await
                .unwrap();
            assert_eq!(
                answer.delivered_terminals,
                ["phone"],
                "pushed to bob on node a"
            );
            assert_eq!(next_body(&mut bob).await, format!("hello {n}"));
            times.push(sent.elapsed());
        }
    }
    across.sort();
    within.sort();
    println!(
        "FIGURE send -> push -> read, stored and acknowledged in PostgreSQL: through node b to \
         node a p50 {:?} p99 {:?}; within node a p50 {:?} p99 {:?}",
        percentile(&across, 50),
        percentile(&across, 99),
        percentile(&within, 50),
        percentile(&within, 99)
    );

    // a switch set through node a reaches node b's worker
    // (the admin API as `meshctl` calls it: meshctl is another crate's binary)
    let mut admin = support::admin(&admin_a, OPS_TOKEN).await;
    let mut propagation = Vec::new();
    for on in [false, true].repeat(5) {
        let set = Instant::now();
        support::switch_recommend(&admin_a, OPS_TOKEN, "mall", on, "nodes test").await;
        while degraded(&to_b).await == on {
            assert!(
                set.elapsed() < Duration::from_secs(5),
                "node b did not follow"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        propagation.push(set.elapsed());
    }
    propagation.sort();
    println!(
        "FIGURE switch propagation (set through node a, answered by node b): p50 {:?} max {:?}",
        percentile(&propagation, 50),
        propagation[propagation.len() - 1]
    );

    // a business line onboarded through node a is served by node b too, and removed
    // through node b, by node a no longer
    let newco = "id = \"newco\"\ndisplay_name = \"New Co\"\ndata_namespace = \"newco\"\n\
                 [credentials]\ntoken = \"newco-secret-token\"\n";
    admin
        .add_tenant(mesh_api::admin::v1::TenantFile {
            file_name: "newco.toml".into(),
            content: newco.into(),
        })
        .await
        .unwrap();
    // the registry the nodes share holds the file sealed: whoever reads Redis reads no secret
    let client = redis::Client::open(redis_url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let registry: Vec<Vec<u8>> = redis::cmd("HVALS")
        .arg(format!("{prefix}:control:tenant:entries"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(!registry.is_empty());
    for entry in &registry {
        let sealed = entry.splitn(2, |b| *b == b'|').nth(1).unwrap();
        assert!(sealed.starts_with(b"sealed1:"));
        assert!(
            !entry.windows(b"dev-mall".len()).any(|w| w == b"dev-mall")
                && !entry
                    .windows(b"newco-secret".len())
                    .any(|w| w == b"newco-secret"),
            "no credential readable in Redis"
        );
    }
    let newco_ctx = ctx("newco", "newco-secret-token");
    let suggest_as = |channel: tonic::transport::Channel, who: mesh_contract::RequestContext| async move {
        let mut request = tonic::Request::new(recommend::SuggestRequest::default());
        who.inject(request.metadata_mut()).unwrap();
        recommend::recommend_client::RecommendClient::new(channel)
            .suggest(request)
            .await
            .map(drop)
            .map_err(|s| s.code())
    };
    let onboarded = Instant::now();
    while suggest_as(to_b.clone(), newco_ctx.clone()).await.is_err() {
        assert!(
            onboarded.elapsed() < Duration::from_secs(10),
            "node b serves newco"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "FIGURE a tenant added through node a served by node b after {:?}",
        onboarded.elapsed()
    );
    assert_eq!(
        std::fs::read_to_string(dir_b.path().join("newco.toml")).unwrap(),
        newco,
        "node b keeps the file for its next start"
    );
    let mut admin_of_b = support::admin(&admin_b, OPS_TOKEN).await;
    admin_of_b
        .remove_tenant(mesh_api::admin::v1::RemoveTenantRequest {
            tenant: "newco".into(),
            purge_data: false,
        })
        .await
        .unwrap();
    let removed = Instant::now();
    while suggest_as(to_a.clone(), newco_ctx.clone()).await != Err(tonic::Code::Unauthenticated) {
        assert!(
            removed.elapsed() < Duration::from_secs(10),
            "node a forgets newco"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // node a dies outright (its supervisor and its worker): bob is forgotten within seconds,
    // what is sent to him meanwhile is stored, and he syncs it from node b exactly once
    let cursor = bob.cursor();
    signal(&node_a.pid(), "-KILL");
    signal(field(&worker_a, "pid"), "-KILL");
    drop(bob);
    let killed = Instant::now();
    // the shared locator, asked at node b's worker as the mesh's own nodes ask it
    let mut locator = mesh_api::locator::v1::LocatorCaller::new(worker_channel(&worker_b).await);
    loop {
        let located = locator
            .locate(
                &node_ctx("mall"),
                mesh_api::locator::v1::LocateRequest {
                    user_id: "bob".into(),
                },
            )
            .await
            .unwrap();
        if located.terminals.is_empty() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "bob still located on the dead node: {located:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "FIGURE a killed node's terminals forgotten by the shared locator after {:?}",
        killed.elapsed()
    );
    for n in 0..5 {
        let answer = alice
            .send("c-nodes", "bob", &format!("away {n}"), &format!("a-{n}"))
            .await
            .expect("sending works while a node is down");
        assert!(answer.delivered_terminals.is_empty(), "bob is offline");
    }
    let (mut bob, synced) = reattach_phone(&users, "bob", &to_b, cursor).await;
    let away: Vec<String> = (0..5).map(|n| format!("away {n}")).collect();
    assert_eq!(synced, away, "everything he missed, each once, in order");
    alice
        .send("c-nodes", "bob", "welcome back", "m-back")
        .await
        .unwrap();
    assert_eq!(next_body(&mut bob).await, "welcome back");

    drop(node_b);
    clear_shared_state(&prefix).await;
    db.drop_database().await;
}

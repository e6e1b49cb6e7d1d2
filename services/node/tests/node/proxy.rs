//! Two replicas of a process group behind HAProxy, configured by `mesh deploy haproxy`: two
//! `mesh worker` processes serving mall, sharing Redis (who is connected where) and
//! PostgreSQL, with one node credential. One replica is SIGKILLed during a call loop: calls in
//! flight on it fail UNAVAILABLE and succeed on a retry, new calls succeed, and the terminal it
//! held attaches again through the proxy and syncs what it missed, each message once.
//! (HAProxy: `bash .ci/test` installs Debian's `haproxy`.)

use crate::support;

use std::{
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use mesh_api::{locator::v1::TerminalKind, recommend::v1 as recommend};
use mesh_gateway::Terminal;
use support::{
    Db, NODE_CREDENTIAL, Users, clear_shared_state, ctx, next_body, node_ctx, reattach_phone,
    redis_prefix, redis_url, signal, start_haproxy, tenants_folder,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::Code;

/// A `mesh worker` replica serving mall, and where it listens.
async fn replica(dir: &std::path::Path, db: &Db, prefix: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args([
            "worker",
            "--tenant",
            "mall",
            "--listen",
            "127.0.0.1:0",
            "--tenants",
        ])
        .arg(dir)
        .env("MESH_STATE_REDIS_URL", redis_url())
        .env("MESH_STATE_REDIS_PREFIX", prefix)
        .env("MESH_STORE_POSTGRES", db.url())
        .env("MESH_NODE_CREDENTIAL", NODE_CREDENTIAL)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let address = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(address) = line.strip_prefix("READY ") {
                return address.to_owned();
            }
        }
        panic!("the replica ended before it was ready")
    })
    .await
    .expect("a replica ready within 60 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, address)
}

async fn suggest(channel: &tonic::transport::Channel) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(recommend::SuggestRequest::default());
    ctx("mall", "dev-mall-token")
        .inject(request.metadata_mut())
        .unwrap();
    request.set_timeout(Duration::from_secs(5));
    recommend::recommend_client::RecommendClient::new(channel.clone())
        .suggest(request)
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_behind_haproxy_costs_only_retried_calls_and_a_reattach() {
    // one of the tests that load the machine or time a fault: they take turns
    let _heavy = support::heavy().await;
    let prefix = redis_prefix();
    clear_shared_state(&prefix).await;
    let db = Db::create().await;
    let dir = tenants_folder(&["mall"], &[]);
    // limits hold per replica: raised here, so the loop measures failover, not admission
    let mall = dir.path().join("mall.toml");
    let raised = std::fs::read_to_string(&mall).unwrap()
        + "\n[limits]\nrequests_per_second = 50000\nburst = 50000\n";
    std::fs::write(&mall, raised).unwrap();
    let (mut first, first_at) = replica(dir.path(), &db, &prefix).await;
    let (mut second, second_at) = replica(dir.path(), &db, &prefix).await;

    // HAProxy as `mesh deploy haproxy` configures it
    let (mut haproxy, proxy_at) =
        start_haproxy(dir.path(), &format!("shared={first_at},{second_at}")).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{proxy_at}"))
        .unwrap()
        .connect_lazy();
    let started = Instant::now();
    while suggest(&channel).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "HAProxy serves within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // bob attached through the proxy; which replica holds him, the shared locator says
    let users = Users::of(dir.path());
    let mut bob = Terminal::connect(
        &users.ctx("mall", "bob"),
        channel.clone(),
        channel.clone(),
        "bob",
        "phone",
        TerminalKind::Phone,
    )
    .await
    .unwrap();
    let alice = || mesh_api::message::v1::MessageCaller::new(channel.clone());
    let send = |body: String, id: String| {
        let mut caller = alice();
        let alice = users.ctx("mall", "alice");
        async move {
            caller
                .send(
                    &alice,
                    mesh_api::message::v1::SendRequest {
                        conversation_id: "c-proxy".into(),
                        from_user: "alice".into(),
                        to_user: "bob".into(),
                        body,
                        client_msg_id: id,
                    },
                )
                .await
        }
    };
    send("before".into(), "m-0".into()).await.unwrap();
    assert_eq!(next_body(&mut bob).await, "before");
    let located = mesh_api::locator::v1::LocatorCaller::new(
        tonic::transport::Endpoint::from_shared(format!("http://{first_at}"))
            .unwrap()
            .connect_lazy(),
    )
    .locate(
        &node_ctx("mall"),
        mesh_api::locator::v1::LocateRequest {
            user_id: "bob".into(),
        },
    )
    .await
    .unwrap();
    let holder = located.terminals[0].node_address.clone();
    let (victim, survivor_at) = if holder.ends_with(&first_at) {
        (&mut first, second_at.clone())
    } else {
        (&mut second, first_at.clone())
    };

    // a steady call loop; a call failing UNAVAILABLE is retried once, after a short pause as a
    // gRPC retry policy would (an immediate retry can meet the same dying hop: HAProxy has not
    // yet taken the killed replica out, or the client's connection is the one being reset)
    let stop = Arc::new(AtomicBool::new(false));
    let retried = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (channel, stop, retried) = (channel.clone(), stop.clone(), retried.clone());
            tokio::spawn(async move {
                let (mut calls, mut failed) = (0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    calls += 1;
                    let mut answer = suggest(&channel).await;
                    if matches!(&answer, Err(s) if s.code() == Code::Unavailable) {
                        retried.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await; // the retry's backoff
                        answer = suggest(&channel).await;
                    }
                    if let Err(status) = answer {
                        failed.push(format!("{:?}: {}", status.code(), status.message()));
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                (calls, failed)
            })
        })
        .collect();
    // calls under way (one every 2 ms per caller) before the fault, so it strikes mid-flow
    tokio::time::sleep(Duration::from_millis(300)).await;

    // the replica holding bob dies outright
    let cursor = bob.cursor();
    signal(&victim.id().unwrap().to_string(), "-KILL");
    let _ = victim.wait().await;
    let ended = tokio::time::timeout(Duration::from_secs(10), bob.next()).await;
    assert!(
        !matches!(ended, Ok(Ok(Some(_)))),
        "bob's stream ends with its replica: {ended:?}"
    );
    for n in 0..3 {
        let answer = send(format!("away {n}"), format!("a-{n}"))
            .await
            .expect("sends go to the surviving replica");
        assert!(answer.delivered_terminals.is_empty(), "bob is away");
    }
    // he attaches again through the proxy (to the survivor) and syncs what he missed, once
    let (mut bob, synced) = reattach_phone(&users, "bob", &channel, cursor).await;
    assert_eq!(synced, ["away 0", "away 1", "away 2"]);
    let answer = send("welcome back".into(), "m-1".into()).await.unwrap();
    assert_eq!(answer.delivered_terminals, ["phone"]);
    assert_eq!(next_body(&mut bob).await, "welcome back");

    // and calls for a moment after the recovery, through the survivor
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut calls, mut failed) = (0, Vec::new());
    for caller in callers {
        let (n, mut f) = caller.await.unwrap();
        calls += n;
        failed.append(&mut f);
    }
    println!(
        "FIGURE behind HAProxy, one of two replicas SIGKILLed: {calls} calls, {} retried once \
         after UNAVAILABLE, {} failed; survivor {survivor_at}",
        retried.load(Ordering::Relaxed),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "after one retry every call succeeded: {failed:?}"
    );
    assert!(calls > 100, "{calls} calls");
    let _ = haproxy.kill().await;
    drop((first, second));
    clear_shared_state(&prefix).await;
    db.drop_database().await;
}

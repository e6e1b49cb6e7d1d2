//! The path without the second hop: a front door that advertises its workers
//! (`front_door.advertise_workers`) names, on each answer it forwards, the worker that gave it;
//! `DirectChannel` (and any client that reads the header: grpcio here) then calls that worker
//! directly. The worker still authenticates and admits every call, and when it dies the
//! client falls back to the door, which names the worker serving the tenant now.

use crate::support;

use std::time::{Duration, Instant};

use mesh_api::recommend::v1 as recommend;
use mesh_runtime::direct::DirectChannel;
use support::{MeshUp, ctx, field, mesh_binary, python, run, signal, tenants_folder};

/// Suggest for `tenant` through `channel`: the answer's `x-mesh-worker` header, if any.
async fn suggest(
    channel: &DirectChannel,
    tenant: &str,
    token: &str,
) -> Result<Option<String>, tonic::Status> {
    let mut client = recommend::recommend_client::RecommendClient::new(channel.clone());
    let mut request = tonic::Request::new(recommend::SuggestRequest::default());
    ctx(tenant, token).inject(request.metadata_mut()).unwrap();
    let response = client.suggest(request).await?;
    Ok(response
        .metadata()
        .get(mesh_contract::headers::WORKER)
        .map(|v| v.to_str().unwrap().to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_told_its_worker_calls_it_directly_and_falls_back_to_the_door() {
    let dir = tenants_folder(&["mall", "paipai"], &[]);
    let mut up = MeshUp::start(dir.path(), &[("MESH_FRONT_DOOR_ADVERTISE_WORKERS", "true")]).await;
    let serving = up.shared_worker().await;
    let worker = field(&serving, "address").to_owned();
    let channel = DirectChannel::new(up.channel().await);

    // the first call goes through the door, whose answer names the worker; the next go there
    let named = suggest(&channel, "mall", "dev-mall-token").await.unwrap();
    assert_eq!(named.as_deref(), Some(worker.as_str()));
    assert_eq!(channel.route("mall").as_deref(), Some(worker.as_str()));
    for _ in 0..5 {
        let named = suggest(&channel, "mall", "dev-mall-token").await.unwrap();
        assert_eq!(named, None, "answered by the worker itself, not forwarded");
    }
    // the worker checks every call itself: a wrong credential sent there directly is refused,
    // and answered as a route to forget (the next call goes through the door)
    let refused = suggest(&channel, "mall", "dev-paipai-token")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(channel.route("mall"), None);
    let refused = suggest(&channel, "mall", "dev-paipai-token")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    suggest(&channel, "mall", "dev-mall-token").await.unwrap();
    assert_eq!(channel.route("mall").as_deref(), Some(worker.as_str()));
    // each tenant learns its own worker: paipai's first call goes through the door too
    let named = suggest(&channel, "paipai", "dev-paipai-token")
        .await
        .unwrap();
    assert_eq!(named.as_deref(), Some(worker.as_str()));
    // an end user (an app, a browser) is never told a worker: only a tenant's backend is
    let mut messages =
        mesh_api::message::v1::message_client::MessageClient::new(up.channel().await);
    let mut request = tonic::Request::new(mesh_api::message::v1::FetchOfflineRequest {
        terminal_id: "phone".into(),
        ..Default::default()
    });
    support::Users::of(dir.path())
        .ctx("mall", "alice")
        .inject(request.metadata_mut())
        .unwrap();
    let answer = messages.fetch_offline(request).await.unwrap();
    assert!(
        answer
            .metadata()
            .get(mesh_contract::headers::WORKER)
            .is_none()
    );

    // the worker dies: a call on the dead route fails once (worth a retry), then the calls go
    // through the door again until the supervisor's new worker serves, and learn its address
    signal(field(&serving, "pid"), "-KILL");
    let respawned = up.shared_worker().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut failed = 0;
    loop {
        match suggest(&channel, "mall", "dev-mall-token").await {
            Ok(_) if channel.route("mall").as_deref() == Some(field(&respawned, "address")) => {
                break;
            }
            Ok(_) => {}
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                failed += 1;
            }
        }
        assert!(Instant::now() < deadline, "never routed to the new worker");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // (unless the new worker took the old one's port, and the channel simply reconnected)
    assert!(
        failed >= 1 || field(&respawned, "address") == worker,
        "the call on the dead worker's route failed"
    );
    suggest(&channel, "mall", "dev-mall-token").await.unwrap();
}

/// A client that is not ours: grpcio reads the header from the door's answer and calls the
/// worker it names, with the same credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcio_client_reads_the_worker_from_the_answer_and_calls_it() {
    let dir = tenants_folder(&["mall"], &[]);
    let mut up = MeshUp::start(dir.path(), &[("MESH_FRONT_DOOR_ADVERTISE_WORKERS", "true")]).await;
    let serving = up.shared_worker().await;
    let script = r#"
import sys, grpc
front = sys.argv[1]
metadata = [("x-mesh-tenant", "mall"), ("x-mesh-token", "dev-mall-token")]
identity = lambda b: b
def suggest(address):
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/recommend.v1.Recommend/Suggest",
                                   request_serializer=identity, response_deserializer=identity)
        _, answer = call.with_call(b"", metadata=metadata, timeout=5)
        return dict(answer.initial_metadata())
worker = suggest(front).get("x-mesh-worker")
assert worker, "the door names no worker"
direct = suggest(worker)
assert "x-mesh-worker" not in direct, direct
print("worker", worker)
"#;
    let out = run(std::process::Command::new(python())
        .args(["-c", script])
        .arg(&up.front));
    assert_eq!(out.trim(), format!("worker {}", field(&serving, "address")));
}

/// Without the setting, the door names nobody; with TLS, the setting is refused at start.
#[tokio::test]
async fn the_door_names_workers_only_when_told_and_never_from_tls() {
    let dir = tenants_folder(&["mall"], &[]);
    let mut up = MeshUp::start(dir.path(), &[]).await;
    up.shared_worker().await;
    let channel = DirectChannel::new(up.channel().await);
    for _ in 0..2 {
        assert_eq!(
            suggest(&channel, "mall", "dev-mall-token").await.unwrap(),
            None
        );
    }
    assert_eq!(channel.route("mall"), None);
    drop(up);

    let out = MeshUp::command(mesh_binary(), dir.path(), "127.0.0.1:0")
        .env("MESH_FRONT_DOOR_ADVERTISE_WORKERS", "true")
        .env("MESH_TLS_CERT_FILE", dir.path().join("cert.pem"))
        .env("MESH_TLS_KEY_FILE", dir.path().join("key.pem"))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("front_door.advertise_workers needs a mesh without [tls]"),
        "{stderr}"
    );
}

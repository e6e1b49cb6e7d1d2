//! Leaving is a protocol: a `mesh up` node stopped with SIGTERM says NOT_SERVING on its health
//! check, tells each attached terminal to attach again elsewhere (a `Reconnect` push, spread
//! over the drain window), and only then ends their streams and exits.

use crate::support;

use std::time::Duration;

use mesh_api::{
    gateway::v1::{self as gateway, push::Payload},
    locator::v1::TerminalKind,
};
use support::{MeshUp, Users, signal, tenants_folder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_tells_its_terminals_to_attach_again_before_it_goes() {
    let dir = tenants_folder(&["mall"], &[]);
    let mut up = MeshUp::start(dir.path(), &[("MESH_DRAIN_WINDOW_MS", "3000")]).await;
    up.shared_worker().await;
    let channel = up.channel().await;
    let users = Users::of(dir.path());
    let mut streams = Vec::new();
    for n in 0..3 {
        let user = format!("leaver{n}");
        let stream = gateway::GatewayCaller::new(channel.clone())
            .attach(
                &users.ctx("mall", &user),
                gateway::AttachRequest {
                    user_id: user.clone(),
                    terminal_id: "phone".into(),
                    kind: TerminalKind::Phone as i32,
                },
            )
            .await
            .unwrap();
        streams.push(stream);
    }
    // the worker holds them before it is asked to leave
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&up.pid(), "-TERM");
    let mut hints = Vec::new();
    for stream in &mut streams {
        let hint = tokio::time::timeout(
            Duration::from_secs(10),
            mesh_gateway::heartbeat::next_content(stream),
        )
        .await
        .expect("told within 10 s")
        .expect("the stream ends cleanly")
        .expect("a push before the end");
        match hint.payload {
            Some(Payload::Reconnect(r)) => hints.push(r.after_ms),
            other => panic!("expected a reconnect hint, got {other:?}"),
        }
        let end = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the stream ends after the hint");
        assert!(matches!(end, Ok(None)), "then the stream ends: {end:?}");
    }
    // spread over the window: not all at once
    hints.sort();
    hints.dedup();
    assert_eq!(hints.len(), 3, "each its own moment: {hints:?}");
    assert!(hints.iter().all(|&ms| ms < 3000), "{hints:?}");
    let status = tokio::time::timeout(Duration::from_secs(20), up.child.wait())
        .await
        .expect("the node exits")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

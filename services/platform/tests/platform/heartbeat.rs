//! A push is a hint, the timeline is the truth: a terminal that stays connected never
//! silently misses a message the node did not push (the node was paused, its registry lost
//! the terminal, a Deliver failed). Every stream carries the user's timeline head on a
//! heartbeat, and a push above a gap shows the gap; `Terminal` syncs from its cursor on
//! either.

use crate::support;

use std::time::Duration;

use mesh_api::gateway::v1::push::Payload;
use mesh_contract::TenantId;
use mesh_store::NewMessage;
use support::{Bus, Node, Store, next, run_id};

/// A message stored for `to` without the message service, so nobody pushes it: what a push
/// the node skipped looks like to the terminal.
async fn store_unpushed(node: &Node, tenant: &str, to: &str, id: &str) -> u64 {
    let accepted = node
        .store
        .accept(
            &TenantId::new(tenant).unwrap(),
            &NewMessage {
                message_id: format!("{id}-msg"),
                conversation_id: format!("c-{id}"),
                from_user: "alice".into(),
                to_user: to.into(),
                kind: 1,
                body: format!("skipped {id}"),
                sent_at_ms: 1,
                client_msg_id: id.into(),
                members_only: false,
            },
        )
        .await
        .expect("stored");
    accepted.message().position
}

/// Sends `body` to `to` as any message is sent (stored, then pushed).
async fn send(node: &Node, to: &str, body: &str) -> mesh_api::message::v1::SendResponse {
    let mut sender = mesh_api::message::v1::MessageCaller::new(node.channel.clone());
    sender
        .send(
            &node.user("mall", "alice"),
            mesh_api::message::v1::SendRequest {
                conversation_id: format!("c-live-{to}"),
                from_user: "alice".into(),
                to_user: to.into(),
                body: body.into(),
                client_msg_id: body.into(),
            },
        )
        .await
        .unwrap()
}

/// A terminal of `user` past its first sync (its first live push read): what it gets from
/// now on comes from pushes, heartbeats or the syncs they start.
async fn settled(node: &Node, user: &str) -> mesh_gateway::Terminal {
    let mut phone = node.terminal("mall", user, "phone").await;
    node.wait_connected(1).await;
    send(node, user, "hello").await;
    assert_eq!(body(next(&mut phone).await), "hello");
    phone
}

fn body(push: mesh_api::gateway::v1::Push) -> String {
    match push.payload {
        Some(Payload::Message(m)) => m.body,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn a_skipped_push_reaches_a_connected_terminal_with_the_next_heartbeat() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    let node = Node::start(Bus::Embedded, Store::Embedded).await;
    node.platform
        .set_terminal_heartbeat(Duration::from_millis(100));
    let user = format!("bob{}", run_id());
    let mut phone = settled(&node, &user).await;

    let position = store_unpushed(&node, "mall", &user, "s1").await;
    // nothing was pushed: only the heartbeat's head says the timeline moved on
    assert_eq!(body(next(&mut phone).await), "skipped s1");
    assert_eq!(phone.cursor(), position);
    assert!(phone.head() >= position, "head {}", phone.head());
    assert_eq!(phone.resyncs(), 1);

    // heartbeats that show nothing new start no sync
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = store_unpushed(&node, "mall", &user, "s2").await;
    assert_eq!(body(next(&mut phone).await), "skipped s2");
    assert_eq!((phone.cursor(), phone.resyncs()), (again, 2));
}

#[tokio::test]
async fn a_push_above_a_gap_makes_the_terminal_sync_what_it_lacks() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    let node = Node::start(Bus::Embedded, Store::Embedded).await;
    // no heartbeat during the test: only the gap can tell
    node.platform
        .set_terminal_heartbeat(Duration::from_secs(3600));
    let user = format!("carol{}", run_id());
    let mut phone = settled(&node, &user).await;
    store_unpushed(&node, "mall", &user, "g1").await;
    store_unpushed(&node, "mall", &user, "g2").await;

    // the third is sent as any message is, and pushed
    let sent = send(&node, &user, "live").await;
    assert_eq!(sent.delivered_terminals, ["phone"]);
    let mut bodies = vec![body(next(&mut phone).await)];
    bodies.push(body(next(&mut phone).await));
    bodies.push(body(next(&mut phone).await));
    bodies.sort();
    assert_eq!(bodies, ["live", "skipped g1", "skipped g2"]);
    assert_eq!(phone.cursor(), 4, "every position held, once");
    assert_eq!(phone.resyncs(), 1);
}

#[tokio::test]
async fn a_heartbeat_without_a_head_keeps_the_stream_alive_and_syncs_nothing() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    // a raw stream, as a client not ours reads it: a heartbeat with the head and the
    // interval, and a push's position never above the head a later heartbeat gives
    let node = Node::start(Bus::Embedded, Store::Embedded).await;
    node.platform
        .set_terminal_heartbeat(Duration::from_millis(100));
    let user = format!("dan{}", run_id());
    let mut gateway = mesh_api::gateway::v1::GatewayCaller::new(node.channel.clone());
    let mut stream = gateway
        .attach(
            &node.user("mall", &user),
            mesh_api::gateway::v1::AttachRequest {
                user_id: user.clone(),
                terminal_id: "raw".into(),
                kind: 0,
            },
        )
        .await
        .unwrap();
    let beat = tokio::time::timeout(support::WITHIN, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match beat.payload {
        Some(Payload::Heartbeat(h)) => assert_eq!((h.head, h.interval_ms), (0, 100)),
        other => panic!("expected a heartbeat, got {other:?}"),
    }
    let position = store_unpushed(&node, "mall", &user, "r1").await;
    loop {
        let push = stream.message().await.unwrap().unwrap();
        if let Some(Payload::Heartbeat(h)) = push.payload
            && h.head == position
        {
            break;
        }
    }
}

#[tokio::test]
async fn a_stream_past_its_maximum_age_attaches_again_and_misses_nothing() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    let node = Node::start(Bus::Embedded, Store::Embedded).await;
    node.platform
        .set_terminal_heartbeat(Duration::from_millis(50));
    let user = format!("erin{}", run_id());
    let mut phone = settled(&node, &user).await;
    node.platform
        .gateway()
        .set_max_stream_age(Some(Duration::from_millis(200)));
    // messages keep coming while the stream is replaced, more than once
    for n in 0..6 {
        send(&node, &user, &format!("aged-{n}")).await;
        assert_eq!(body(next(&mut phone).await), format!("aged-{n}"));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(phone.reconnects() >= 1, "{phone:?}");
    node.platform.gateway().set_max_stream_age(None);
}

/// A raw attach of `user`'s terminal `terminal`, as a client not ours holds it.
async fn raw_attach(
    node: &Node,
    user: &str,
    terminal: &str,
) -> tonic::Streaming<mesh_api::gateway::v1::Push> {
    let mut gateway = mesh_api::gateway::v1::GatewayCaller::new(node.channel.clone());
    gateway
        .attach(
            &node.user("mall", user),
            mesh_api::gateway::v1::AttachRequest {
                user_id: user.into(),
                terminal_id: terminal.into(),
                kind: 0,
            },
        )
        .await
        .unwrap()
}

/// The status a stream ends with, past the pushes before it.
async fn end_of(stream: &mut tonic::Streaming<mesh_api::gateway::v1::Push>) -> Option<tonic::Code> {
    loop {
        match tokio::time::timeout(support::WITHIN, stream.message())
            .await
            .expect("the stream ends")
        {
            Ok(Some(_)) => continue,
            Ok(None) => return None,
            Err(status) => return Some(status.code()),
        }
    }
}

#[tokio::test]
async fn a_stream_the_node_ends_says_attach_again_and_only_a_replaced_one_ends_ok() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    let node = Node::start(Bus::Embedded, Store::Embedded).await;
    let user = format!("fay{}", run_id());
    // the same terminal attached again (another tab, a reconnect): the old stream ends OK,
    // which a client reads as "opened elsewhere"
    let mut first = raw_attach(&node, &user, "phone").await;
    node.wait_connected(1).await;
    let mut second = raw_attach(&node, &user, "phone").await;
    assert_eq!(end_of(&mut first).await, None, "replaced: OK");
    // the tenant leaves this process (moved to another, or removed): UNAVAILABLE, attach again
    node.platform
        .remove_tenant(&TenantId::new("mall").unwrap(), false)
        .await
        .unwrap();
    assert_eq!(
        end_of(&mut second).await,
        Some(tonic::Code::Unavailable),
        "a moved tenant's terminal is told to attach again, not that it is done"
    );
}

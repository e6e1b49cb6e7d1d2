//! A user's devices through `mesh up` on RabbitMQ and PostgreSQL: read receipts are part of
//! the timeline, so a terminal that was away when the other side read gets every receipt it
//! missed, in order with the messages, on its next sync; a user at the tenant's device cap
//! attaching one more gets the tenant's policy (refused, or the oldest signed out); a user
//! lists their terminals and signs one out.

use crate::support;

use std::time::Duration;

use mesh_api::{gateway::v1::push::Payload, locator::v1::TerminalKind, message::v1 as message};
use mesh_gateway::Terminal;
use support::{Db, MeshUp, Users, Vhost, tenants_folder};
use tonic::{Code, transport::Channel};

/// A business line whose users hold 5 devices; a 6th signs the oldest out.
const SHOP: &str = "id = \"shop\"\ndisplay_name = \"Shop\"\ndata_namespace = \"shop\"\n\
    [credentials]\ntoken = \"shop-secret-token\"\n\
    [services.gateway.settings]\nmax_devices = 5\nat_device_cap = \"sign_out_oldest\"\n";

/// A business line whose users hold 2 devices; a 3rd is refused.
const DESK: &str = "id = \"desk\"\ndisplay_name = \"Desk\"\ndata_namespace = \"desk\"\n\
    [credentials]\ntoken = \"desk-secret-token\"\n\
    [services.gateway.settings]\nmax_devices = 2\n";

/// `user`'s terminal `terminal` of mall through the front door, synced from `cursor` (0: the
/// one the service keeps for it).
async fn terminal(
    front: &Channel,
    users: &Users,
    user: &str,
    terminal: &str,
    cursor: u64,
) -> Terminal {
    attach(front, users, "mall", user, terminal, cursor)
        .await
        .unwrap_or_else(|status| panic!("{user}/{terminal} attaching: {status}"))
}

/// [`terminal`] of `tenant`, or why it was refused.
async fn attach(
    front: &Channel,
    users: &Users,
    tenant: &str,
    user: &str,
    terminal: &str,
    cursor: u64,
) -> Result<Terminal, tonic::Status> {
    Terminal::resume(
        &users.ctx(tenant, user),
        front.clone(),
        front.clone(),
        user,
        terminal,
        TerminalKind::Phone,
        cursor,
    )
    .await
}

/// What `terminal` returns next: `m <seq>` for a message, `read <reader> <seq>` for a receipt.
async fn next(terminal: &mut Terminal) -> String {
    let push = tokio::time::timeout(Duration::from_secs(10), terminal.next())
        .await
        .unwrap_or_else(|_| panic!("{}: nothing within 10 s", terminal.id()))
        .unwrap()
        .expect("the stream stays open");
    match push.payload {
        Some(Payload::Message(m)) => format!("m {}", m.seq),
        Some(Payload::Receipt(r)) => format!("read {} {}", r.reader, r.up_to_seq),
        Some(Payload::SignedOut(s)) => format!("signed out: {}", s.reason),
        other => panic!("{}: {other:?}", terminal.id()),
    }
}

#[tokio::test]
async fn receipts_missed_while_away_are_synced_in_order_with_the_messages() {
    // a mesh on RabbitMQ and PostgreSQL with several terminals: takes turns with the tests
    // that load the machine (a thousand attaches at once must not be slowed by this one)
    let _heavy = support::heavy().await;
    let db = Db::create().await;
    let vhost = Vhost::create();
    let dir = tenants_folder(&["mall"], &[]);
    let mut up = MeshUp::start(
        dir.path(),
        &[
            ("MESH_AMQP_URI", &vhost.uri()),
            ("MESH_STORE_POSTGRES", &db.url()),
        ],
    )
    .await;
    up.shared_worker().await;
    let front = up.channel().await;
    let users = Users::of(dir.path());

    // alice writes from her phone; her tablet was here once, then went away
    let mut phone = terminal(&front, &users, "alice", "phone", 0).await;
    let tablet = terminal(&front, &users, "alice", "tablet", 0).await;
    drop(tablet);
    let mut desk = terminal(&front, &users, "agent-1", "desk", 0).await;
    let mut laptop = terminal(&front, &users, "agent-1", "laptop", 0).await;
    for n in 1..=3 {
        phone
            .send(
                "c-away",
                "agent-1",
                &format!("question {n}"),
                &format!("q{n}"),
            )
            .await
            .unwrap();
    }
    // the agent reads each at its desk: three receipts
    for seq in 1..=3 {
        assert_eq!(next(&mut desk).await, format!("m {seq}"));
        desk.mark_read("c-away", seq).await.unwrap();
    }
    // the agent's other terminal gets the messages and the desk's receipts; the desk none of
    // its own (its next entry is alice's next message)
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(next(&mut laptop).await);
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "m 1",
            "m 2",
            "m 3",
            "read agent-1 1",
            "read agent-1 2",
            "read agent-1 3"
        ]
    );
    // alice's phone, connected, got them live
    for seq in 1..=3 {
        assert_eq!(next(&mut phone).await, format!("read agent-1 {seq}"));
    }

    // the tablet comes back: the three receipts, in order, synced from its cursor
    let mut tablet = terminal(&front, &users, "alice", "tablet", 0).await;
    for seq in 1..=3 {
        assert_eq!(next(&mut tablet).await, format!("read agent-1 {seq}"));
    }
    assert_eq!(
        tablet.cursor(),
        3,
        "each receipt acknowledged like a message"
    );
    // reading less far again records nothing: the laptop's next entry is the next message
    desk.mark_read("c-away", 2).await.unwrap();
    phone
        .send("c-away", "agent-1", "one more", "q4")
        .await
        .unwrap();
    assert_eq!(next(&mut laptop).await, "m 4");
    drop(up);
    db.drop_database().await;
}

/// `user`'s terminals of `tenant` as ListTerminals shows them: (id, attached).
async fn listed(front: &Channel, users: &Users, tenant: &str, user: &str) -> Vec<(String, bool)> {
    message::MessageCaller::new(front.clone())
        .list_terminals(
            &users.ctx(tenant, user),
            message::ListTerminalsRequest {
                user_id: user.into(),
            },
        )
        .await
        .unwrap()
        .terminals
        .into_iter()
        .map(|t| (t.terminal_id, t.attached))
        .collect()
}

/// Whether `terminal`'s stream ended (its next push is none).
async fn ended(terminal: &mut Terminal) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(10), terminal.next()).await,
        Ok(Ok(None))
    )
}

#[tokio::test]
async fn a_user_at_the_device_cap_gets_the_tenants_policy_and_signs_devices_out() {
    // (takes turns, as above)
    let _heavy = support::heavy().await;
    let db = Db::create().await;
    let vhost = Vhost::create();
    let dir = tenants_folder(&[], &[("shop.toml", SHOP), ("desk.toml", DESK)]);
    let mut up = MeshUp::start(
        dir.path(),
        &[
            ("MESH_AMQP_URI", &vhost.uri()),
            ("MESH_STORE_POSTGRES", &db.url()),
        ],
    )
    .await;
    up.shared_worker().await;
    let front = up.channel().await;
    let users = Users::of(dir.path());
    let on =
        |t: &[&str]| -> Vec<(String, bool)> { t.iter().map(|t| (t.to_string(), true)).collect() };

    // shop: five devices, then a sixth signs out the one attached longest ago
    let mut carol = Vec::new();
    for n in 1..=5 {
        let terminal = attach(&front, &users, "shop", "carol", &format!("t{n}"), 0).await;
        carol.push(terminal.unwrap());
    }
    assert_eq!(
        listed(&front, &users, "shop", "carol").await,
        on(&["t1", "t2", "t3", "t4", "t5"])
    );
    let sixth = attach(&front, &users, "shop", "carol", "t6", 0)
        .await
        .unwrap();
    let said = next(&mut carol[0]).await;
    assert!(
        said.starts_with("signed out:") && said.contains("hold 5 at once"),
        "{said}"
    );
    assert!(ended(&mut carol[0]).await, "the signed-out stream ends");
    mesh_testkit::eventually("t1 to leave the registry", || async {
        let list = listed(&front, &users, "shop", "carol").await;
        (list.contains(&("t1".to_string(), false)) && list.iter().filter(|(_, a)| *a).count() == 5)
            .then_some(())
    })
    .await;

    // carol signs her lost t3 out from t6, its cursor dropped: gone from the list
    let mut messages = message::MessageCaller::new(front.clone());
    let signed = messages
        .sign_out_terminal(
            &users.ctx("shop", "carol"),
            message::SignOutTerminalRequest {
                user_id: "carol".into(),
                terminal_id: "t3".into(),
                drop_cursor: true,
                reason: "phone lost".into(),
            },
        )
        .await
        .unwrap();
    assert!(signed.was_attached && signed.cursor_dropped, "{signed:?}");
    mesh_testkit::eventually("t3 gone from the list", || async {
        let list = listed(&front, &users, "shop", "carol").await;
        (!list.iter().any(|(t, _)| t == "t3")).then_some(())
    })
    .await;
    assert_eq!(next(&mut carol[2]).await, "signed out: phone lost");
    assert!(ended(&mut carol[2]).await);
    // nobody signs out another user's terminal, and an unknown one is NOT_FOUND
    let foreign = messages
        .sign_out_terminal(
            &users.ctx("shop", "dave"),
            message::SignOutTerminalRequest {
                user_id: "carol".into(),
                terminal_id: "t4".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::PermissionDenied, "{foreign:?}");
    let unknown = messages
        .sign_out_terminal(
            &users.ctx("shop", "carol"),
            message::SignOutTerminalRequest {
                user_id: "carol".into(),
                terminal_id: "t9".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    drop(sixth);

    // desk: two devices, a third refused naming the cap; the two stay
    let mut erin = Vec::new();
    for n in 1..=2 {
        erin.push(
            attach(&front, &users, "desk", "erin", &format!("d{n}"), 0)
                .await
                .unwrap(),
        );
    }
    let refused = attach(&front, &users, "desk", "erin", "d3", 0)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("services.gateway.settings.max_devices = 2"),
        "{refused:?}"
    );
    // (d3 synced once while it attached: known, never attached)
    mesh_testkit::eventually("d3 refused and not registered", || async {
        let list = listed(&front, &users, "desk", "erin").await;
        let attached: Vec<_> = list.into_iter().filter(|(_, attached)| *attached).collect();
        (attached == on(&["d1", "d2"])).then_some(())
    })
    .await;
    drop(up);
    db.drop_database().await;
}

/// The contract's number for a receipt's timeline entry is the store's.
#[test]
fn the_store_and_the_contract_agree_on_the_receipt_kind() {
    assert_eq!(
        message::MessageKind::ReadReceipt as i32,
        mesh_store::READ_RECEIPT_KIND
    );
}

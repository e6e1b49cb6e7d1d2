//! One user holds a bounded number of terminals on a node (`limits.max_terminals_per_user`):
//! one more is refused at once, marked as the caller's own (no automatic rule samples it),
//! while a terminal attaching again replaces its own stream and other users attach as before.

use crate::support;

use mesh_api::locator::v1::TerminalKind;
use mesh_contract::TenantId;
use mesh_gateway::{Terminal, TerminalQuota};
use support::{Bus, Node, Store};

async fn attach(node: &Node, user: &str, terminal: &str) -> Result<Terminal, tonic::Status> {
    Terminal::connect(
        &node.user("mall", user),
        node.channel.clone(),
        node.channel.clone(),
        user,
        terminal,
        TerminalKind::Phone,
    )
    .await
}

#[tokio::test]
async fn a_user_past_the_terminal_quota_is_refused_and_nobody_else() {
    let node = Node::start(Bus::Embedded, Store::Embedded).await;
    // the shipped files give every user 16; three here, to see the edge
    let mall = &node.tenants.tenants["mall"];
    assert_eq!(mall.limits.max_terminals_per_user, 16);
    assert_eq!(mall.limits.max_terminals, 50_000);
    node.platform.gateway().set_terminal_quota(
        TenantId::new("mall").unwrap(),
        TerminalQuota {
            per_user: 3,
            per_tenant: 50_000,
        },
    );
    let mut held = Vec::new();
    for n in 1..=3 {
        held.push(attach(&node, "alice", &format!("phone-{n}")).await.unwrap());
    }
    let refused = attach(&node, "alice", "phone-4")
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused
            .message()
            .contains("holds 3 terminal(s) on this node, the most tenant mall allows (limits.max_terminals_per_user)"),
        "{refused:?}"
    );
    assert_eq!(
        refused
            .metadata()
            .get(mesh_contract::headers::OVER_QUOTA)
            .map(|v| v.to_str().unwrap()),
        Some("terminals"),
        "marked as the caller's own"
    );
    // a terminal attaching again replaces its own stream: not one more
    held.push(attach(&node, "alice", "phone-1").await.unwrap());
    // another user of the tenant is not affected
    let _bob = attach(&node, "bob", "phone-1").await.unwrap();
    // one closed gives its room back
    let closed = held.remove(1);
    drop(closed);
    node.wait_connected(3).await;
    let _fourth = attach(&node, "alice", "phone-4").await.unwrap();
    node.finish().await;
}

#[tokio::test]
async fn a_tenant_past_its_terminal_share_is_refused_and_no_other_tenant() {
    let node = Node::start(Bus::Embedded, Store::Embedded).await;
    node.platform.gateway().set_terminal_quota(
        TenantId::new("mall").unwrap(),
        TerminalQuota {
            per_user: 16,
            per_tenant: 4,
        },
    );
    let mut held = Vec::new();
    for user in ["alice", "bob", "carol", "dave"] {
        held.push(attach(&node, user, "phone").await.unwrap());
    }
    // a fifth user of mall, under their own quota, finds the tenant's share taken
    let refused = attach(&node, "erin", "phone").await.map(drop).unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains(
            "tenant mall holds 4 terminal(s) on this node, the most it allows (limits.max_terminals)"
        ),
        "{refused:?}"
    );
    assert_eq!(
        refused
            .metadata()
            .get(mesh_contract::headers::OVER_QUOTA)
            .map(|v| v.to_str().unwrap()),
        Some("terminals"),
        "marked as the caller's own"
    );
    // a terminal of mall attaching again replaces its stream: not one more
    held.push(attach(&node, "alice", "phone").await.unwrap());
    // paipai, on the same node and gateway, attaches as before
    let paipai = Terminal::connect(
        &node.user("paipai", "erin"),
        node.channel.clone(),
        node.channel.clone(),
        "erin",
        "phone",
        TerminalKind::Phone,
    )
    .await
    .unwrap();
    drop(paipai);
    // one of mall's closed gives the tenant its room back
    drop(held.remove(1));
    node.wait_connected(3).await;
    let _erin = attach(&node, "erin", "phone").await.unwrap();
    node.finish().await;
}

//! One user holds a bounded number of terminals on a node (`limits.max_terminals_per_user`):
//! one more is refused at once, marked as the caller's own (no automatic rule samples it),
//! while a terminal attaching again replaces its own stream and other users attach as before.

mod support;

use mesh_api::locator::v1::TerminalKind;
use mesh_contract::TenantId;
use mesh_gateway::Terminal;
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
    node.platform
        .gateway()
        .set_terminal_quota(TenantId::new("mall").unwrap(), 3);
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

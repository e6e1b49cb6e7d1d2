//! What one valid caller may do cannot hurt its tenant or another: through `mesh up`, one user
//! with a valid token opening 1000 terminal streams at once gets its quota of terminals and
//! refusals marked as its own, so the tenant's automatic degradation rule (which would switch
//! the optional tier off for every user when half the calls fail) trips no switch, and other
//! users and tenants attach as before.

use crate::support;

use std::time::Duration;

use mesh_api::{admin::v1 as admin_api, locator::v1::TerminalKind};
use mesh_gateway::Terminal;
use support::{MeshUp, Users, admin, tenants_folder};

const OPS: &str = "ops-abuse-token-0123";

/// A rule that switches mall's optional tier off when half its watched calls fail.
const RULE: &str = r#"
[[auto_degrade]]
name = "protect-core"
watch_tier = 1
error_rate_above = 0.5
switch_off_tiers_from = 2
window_secs = 3
calm_secs = 3
min_calls = 10
"#;

async fn attach(
    up: &MeshUp,
    users: &Users,
    tenant: &str,
    user: &str,
    terminal: &str,
) -> Result<Terminal, tonic::Status> {
    let channel = up.channel().await;
    Terminal::connect(
        &users.ctx(tenant, user),
        channel.clone(),
        channel,
        user,
        terminal,
        TerminalKind::Phone,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_user_opening_a_thousand_streams_trips_no_switch_and_hurts_nobody() {
    // one of the tests that load the machine or time a fault: they take turns
    let _heavy = support::heavy().await;
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tenants");
    let mall = std::fs::read_to_string(shipped.join("mall.toml")).unwrap() + RULE;
    let dir = tenants_folder(&["paipai"], &[("mall.toml", &mall)]);
    let mut up = MeshUp::start(dir.path(), &[("MESH_ADMIN_TOKEN", OPS)]).await;
    let admin_at = up.admin_address().await;
    up.shared_worker().await;
    let users = Users::of(dir.path());

    // 1000 attaches of alice's at once, over a few connections
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(up.channel().await);
    }
    let ctx = users.ctx("mall", "alice");
    let attaches = (0..1000).map(|n| {
        let (ctx, channel) = (ctx.clone(), channels[n % channels.len()].clone());
        async move {
            Terminal::connect(
                &ctx,
                channel.clone(),
                channel,
                "alice",
                &format!("tab-{n}"),
                TerminalKind::Web,
            )
            .await
        }
    });
    let results = futures::future::join_all(attaches).await;
    let mut held = Vec::new();
    let mut refused = Vec::new();
    let mut timed_out = 0;
    for result in results {
        match result {
            Ok(terminal) => held.push(terminal),
            // her own client gave up on a call queued behind her other 999 (on a loaded
            // machine): her doing, and the reason the rule must not count it
            Err(status) if own_timeout(&status) => timed_out += 1,
            Err(status) => refused.push(status),
        }
    }
    // alice holds at most her quota (a terminal whose sync the rate limit refused let go of
    // its stream), and every other attempt was refused at once as her own doing: over the
    // terminal quota, or over the tenant's rate (1000 calls at once, burst 100)
    let quota = users.config("mall").limits.max_terminals_per_user as usize;
    assert!(
        held.len() <= quota,
        "alice holds {} terminals ({timed_out} timed out)",
        held.len()
    );
    for status in &refused {
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(
            status
                .metadata()
                .contains_key(mesh_contract::headers::OVER_QUOTA),
            "{status:?}"
        );
    }
    // her flood met a quota (the terminal quota, or on a loaded machine where most of her
    // calls ran out of time first, the tenant's rate): the rule below must see that and not
    // her timeouts
    assert!(
        !refused.is_empty(),
        "no quota refused her ({} held, {timed_out} timed out)",
        held.len()
    );

    // the rule's window passes with the refusals in it: no switch was turned off
    tokio::time::sleep(Duration::from_secs(4)).await;
    let switches = admin(&admin_at, OPS)
        .await
        .list_switches(admin_api::ListSwitchesRequest {})
        .await
        .unwrap()
        .into_inner()
        .switches;
    assert!(
        switches.iter().all(|s| !s.changed_by.starts_with("auto:")),
        "a user's own refusals tripped a rule: {switches:?}"
    );

    // everybody else attaches as before, alice's terminals held meanwhile
    attach(&up, &users, "mall", "bob", "phone").await.unwrap();
    attach(&up, &users, "paipai", "carol", "phone")
        .await
        .unwrap();
    drop(held);
}

/// A call that ran out of time: her client gave up on it (CANCELLED "Timeout expired"), or
/// the worker did once her deadline passed while it queued (DEADLINE_EXCEEDED).
fn own_timeout(status: &tonic::Status) -> bool {
    match status.code() {
        tonic::Code::DeadlineExceeded => true,
        tonic::Code::Cancelled => status.message().contains("Timeout expired"),
        _ => false,
    }
}

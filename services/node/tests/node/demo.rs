//! The README's main command works: the demo runs the customer-service platform for the
//! three shipped tenants and tells the story it promises.

use std::process::Command;

#[test]
fn demo_tells_the_whole_story_for_three_tenants() {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .arg("demo")
        .output()
        .expect("run mesh demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let has = |line: &str| assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    for (tenant, order) in [("mall", "v1"), ("finance", "v1"), ("paipai", "v2")] {
        has(&format!(
            "== [{tenant}] a customer asks support about an order =="
        ));
        has("kept offline for [\"tablet\"]");
        has(&format!("publishes OrderCreated on order {order}"));
        has(&format!("GetOrder (order {order}) -> Paid, CNY 129.00"));
        has(&format!(
            "customer/desktop got #3 system message: \"Order {tenant}-o-77 was placed: CNY 129.00\""
        ));
        has(&format!(
            "in {tenant}'s namespace: 4 messages (#1, #2, #3, #4)"
        ));
    }
    has("agent/web        got receipt: customer read up to #3");
    // the phone's receipt is in the customer's timeline: the tablet away meanwhile syncs it too
    has(
        "customer/tablet comes back: syncs 3 missed messages and 1 read receipt(s) from its cursor, in order",
    );
    has("customer/tablet  got receipt: customer read up to #3");
    // the switch: mall degraded, paipai served, finance does not run recommend at all
    let after = &stdout[stdout
        .find("ops: `meshctl switch off")
        .expect("the switch step")..];
    assert!(
        after.contains("[mall] Suggest -> 0 product suggestions (degraded answer"),
        "{after}"
    );
    assert!(
        after.contains("[paipai] Suggest -> 3 product suggestions\n"),
        "{after}"
    );
    assert!(
        after.contains("[finance] Suggest -> refused: tenant finance does not run recommend"),
        "{after}"
    );
    has("order.v2.Order");
}

#[test]
fn demo_refuses_an_invalid_tenant_id_by_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["demo", "--tenants", "mall,Bad Tenant"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tenant \"Bad Tenant\""), "{stderr}");
    assert!(stderr.contains("invalid tenant id"), "{stderr}");
}

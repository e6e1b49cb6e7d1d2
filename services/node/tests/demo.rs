//! The README's main command works: the demo serves every tenant from its own namespace and
//! turns each tenant's order event into that tenant's system message.

use std::process::Command;

#[test]
fn demo_serves_three_tenants_end_to_end() {
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
    for tenant in ["mall", "finance", "paipai"] {
        assert!(
            stdout.contains(&format!(
                "[{tenant}] GetOrder(o-1001) -> user {tenant}-customer-1"
            )),
            "{tenant} call missing:\n{stdout}"
        );
        assert!(
            stdout.contains(&format!(
                "[{tenant}] message service turned it into: \"Order {tenant}-o-77 was placed"
            )),
            "{tenant} event missing:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("order.v2.Order"),
        "catalogue lists both order majors:\n{stdout}"
    );
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

//! `mesh-codegen new-service`: a service's crate from the contract as written, wired into the
//! platform and the tenants named; run again after a contract change, it adds what is new and
//! touches nothing the developer wrote. (That the crate it writes builds and serves through
//! `mesh up` is `services/node/tests/node/new_service.rs`.)

use std::{fs, path::Path};

use mesh_codegen::scaffold::{Layout, new_service};

/// A copy of the parts of the repository `new-service` reads and edits.
fn repository() -> tempfile::TempDir {
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let copy = |from: &str| {
        let (source, target) = (real.join(from), dir.path().join(from));
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        fs::copy(&source, &target).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
    };
    for file in [
        "Cargo.toml",
        "services/platform/Cargo.toml",
        "services/platform/src/plugins.rs",
        "tenants/_defaults.toml",
        "tenants/mall.toml",
        "tenants/paipai.toml",
        "contracts/mesh/options.proto",
    ] {
        copy(file);
    }
    dir
}

const COUPON: &str = r#"syntax = "proto3";
package coupon.v1;
import "google/protobuf/empty.proto";
import "mesh/options.proto";

service Coupon {
  option (mesh.service) = { name: "coupon" version: "1.0.0" tier: 2 owner: "growth" };

  // Gives a user a coupon.
  rpc IssueCoupon(IssueCouponRequest) returns (IssueCouponResponse) {
    option (mesh.method) = { kind: CALL audience: BACKEND timeout_ms: 300 };
  }
  // The caller's coupons.
  rpc ListMyCoupons(ListMyCouponsRequest) returns (ListMyCouponsResponse) {
    option (mesh.method) = { kind: CALL audience: USER timeout_ms: 200 degraded { empty: true } };
  }
  // A coupon was issued.
  rpc CouponIssued(.coupon.v1.CouponIssued) returns (google.protobuf.Empty) {
    option (mesh.method) = { kind: EVENT timeout_ms: 2000 };
  }
}

message CouponView { string coupon_id = 1; string user_id = 2; string title = 3; }
message IssueCouponRequest { string user_id = 1; string title = 2; }
message IssueCouponResponse { CouponView coupon = 1; }
message ListMyCouponsRequest { string user_id = 1; }
message ListMyCouponsResponse { repeated CouponView coupons = 1; }
message CouponIssued { CouponView coupon = 1; }
"#;

fn read(dir: &Path, file: &str) -> String {
    fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn the_skeleton_follows_the_contract_and_is_wired_in() {
    let repo = repository();
    let root = repo.path();
    fs::create_dir_all(root.join("contracts/coupon/v1")).unwrap();
    fs::write(root.join("contracts/coupon/v1/coupon.proto"), COUPON).unwrap();
    let layout = Layout::of(root);
    let done = new_service("coupon", &layout, &["mall".into()]).unwrap();
    assert_eq!(done.contract, "coupon/v1");

    // the developer's file: one method per call with its types, one handler per event
    let lib = read(root, "services/coupon/src/lib.rs");
    for wanted in [
        "pub async fn issue_coupon(",
        "request: v1::IssueCouponRequest,\n    ) -> Result<v1::IssueCouponResponse, Status>",
        "pub async fn list_my_coupons(",
        "pub async fn on_coupon_issued(",
        "event: v1::CouponIssued,",
        "events: v1::CouponPublisher<",
        "/// Gives a user a coupon.",
        "`IssueCoupon` (callers: BACKEND)",
        "`ListMyCoupons` (callers: USER). `request.user_id` is the caller's own user",
    ] {
        assert!(lib.contains(wanted), "{wanted:?} in\n{lib}");
    }
    // what is derived: act_as on the USER call's user_id only, the handler, the descriptor
    let generated = read(root, "services/coupon/src/generated.rs");
    assert_eq!(
        generated
            .matches("request.user_id = ctx.act_as(\"user_id\", &request.user_id)?;")
            .count(),
        1,
        "{generated}"
    );
    for wanted in [
        "impl v1::coupon_server::Coupon for CouponService",
        "impl v1::CouponHandler for CouponService",
        "pub static SERVICE: ServiceDescriptor",
        "consumer: \"coupon\"",
        "v1::CouponConsumer::new(self.0.clone()).subscription(tenant, queue)",
    ] {
        assert!(generated.contains(wanted), "{wanted:?} in\n{generated}");
    }
    let tests = read(root, "services/coupon/tests/coupon.rs");
    assert!(
        tests.contains("async fn issue_coupon_is_written()"),
        "{tests}"
    );
    assert!(
        tests.contains("async fn list_my_coupons_refuses_acting_as_another_user()"),
        "{tests}"
    );
    assert!(!tests.contains("issue_coupon_refuses_acting"), "{tests}");

    // wired: workspace, platform dependency and registry, tenants (off by default, on for mall)
    let workspace: toml::Table = read(root, "Cargo.toml").parse().unwrap();
    let members = workspace["workspace"]["members"].as_array().unwrap();
    assert!(
        members
            .iter()
            .any(|m| m.as_str() == Some("services/coupon"))
    );
    let platform: toml::Table = read(root, "services/platform/Cargo.toml").parse().unwrap();
    assert_eq!(
        platform["dependencies"]["mesh-coupon"]["path"].as_str(),
        Some("../coupon")
    );
    let registry = read(root, "services/platform/src/plugins.rs");
    assert_eq!(
        registry.matches("&mesh_coupon::SERVICE,").count(),
        1,
        "{registry}"
    );
    let defaults: toml::Table = read(root, "tenants/_defaults.toml").parse().unwrap();
    assert_eq!(
        defaults["services"]["coupon"]["version"].as_str(),
        Some("v1")
    );
    assert_eq!(
        defaults["services"]["coupon"]["enabled"].as_bool(),
        Some(false)
    );
    let mall: toml::Table = read(root, "tenants/mall.toml").parse().unwrap();
    assert_eq!(mall["services"]["coupon"]["enabled"].as_bool(), Some(true));
    let paipai = read(root, "tenants/paipai.toml");
    assert!(!paipai.contains("coupon"), "{paipai}");
    // comments kept where the files were edited
    assert!(read(root, "tenants/mall.toml").contains("# Development credential"));

    // the developer writes a call; the contract gains a call and an event; run again
    let written = lib.replace(
        "Err(Status::unimplemented(\"IssueCoupon is not written yet\"))",
        "todo!(\"the developer's own code\")",
    );
    fs::write(root.join("services/coupon/src/lib.rs"), &written).unwrap();
    let grown = COUPON
        .replace(
            "  // A coupon was issued.",
            "  // Takes a coupon back.\n  rpc RevokeCoupon(IssueCouponResponse) returns (google.protobuf.Empty) {\n    option (mesh.method) = { kind: CALL timeout_ms: 300 };\n  }\n  // A coupon was issued.",
        )
        .replace(
            "message CouponIssued",
            "message CouponRevoked { string coupon_id = 1; }\nmessage CouponIssued",
        )
        .replace(
            "  // A coupon was issued.",
            "  // A coupon was taken back.\n  rpc CouponRevoked(.coupon.v1.CouponRevoked) returns (google.protobuf.Empty) {\n    option (mesh.method) = { kind: EVENT timeout_ms: 2000 };\n  }\n  // A coupon was issued.",
        );
    fs::write(root.join("contracts/coupon/v1/coupon.proto"), grown).unwrap();
    let again = new_service("coupon", &layout, &["mall".into()]).unwrap();
    let lib = read(root, "services/coupon/src/lib.rs");
    assert!(
        lib.starts_with(&written),
        "what the developer wrote is untouched"
    );
    let appended = &lib[written.len()..];
    assert!(
        appended.contains("pub async fn revoke_coupon("),
        "{appended}"
    );
    assert!(
        appended.contains("pub async fn on_coupon_revoked("),
        "{appended}"
    );
    assert!(!appended.contains("issue_coupon"), "{appended}");
    assert!(
        read(root, "services/coupon/src/generated.rs").contains("async fn revoke_coupon("),
        "the trait impl follows the contract"
    );
    // nothing wired twice: only lib.rs changed among the existing files
    let edited: Vec<String> = again
        .edited
        .iter()
        .map(|(file, _)| file.display().to_string())
        .collect();
    assert_eq!(edited.len(), 1, "{edited:?}");
    assert!(
        edited[0].ends_with("services/coupon/src/lib.rs"),
        "{edited:?}"
    );
    assert_eq!(
        read(root, "services/platform/src/plugins.rs")
            .matches("&mesh_coupon::SERVICE,")
            .count(),
        1
    );
}

#[test]
fn without_a_contract_a_starter_is_written_and_followed() {
    let repo = repository();
    let root = repo.path();
    let done = new_service("gift_card", &Layout::of(root), &[]).unwrap();
    assert!(
        done.written
            .iter()
            .any(|f| f.ends_with("contracts/gift_card/v1/gift_card.proto"))
    );
    let set = mesh_codegen::load(&root.join("contracts")).expect("the starter is valid");
    let contract = set.get("gift_card/v1").unwrap();
    let methods: Vec<&str> = contract.calls().map(|m| m.name.as_str()).collect();
    assert_eq!(methods, ["CreateGiftCard", "ListMyGiftCards"]);
    let lib = read(root, "services/gift_card/src/lib.rs");
    assert!(lib.contains("pub struct GiftCardService"), "{lib}");
    assert!(lib.contains("pub async fn on_gift_card_created("), "{lib}");
    let cargo = read(root, "services/gift_card/Cargo.toml");
    assert!(cargo.contains("name = \"mesh-gift-card\""), "{cargo}");
}

#[test]
fn a_bad_name_or_tenant_writes_nothing() {
    let repo = repository();
    let root = repo.path();
    let layout = Layout::of(root);
    for bad in ["Coupon", "gift-card", "2fa", "common", "mesh", "a__b"] {
        let err = new_service(bad, &layout, &[]).unwrap_err().to_string();
        assert!(
            err.contains("service name") || err.contains("reserved"),
            "{bad}: {err}"
        );
    }
    let err = new_service("coupon", &layout, &["nobody".into()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--tenant nobody: no such tenant file"),
        "{err}"
    );
    assert!(!root.join("contracts/coupon").exists());
    assert!(!root.join("services/coupon").exists());
}

/// A crate written by hand (the platform's own services) is never touched; a contract with
/// events only, under a proto name of its own, gets a skeleton; a new major is refused, not
/// half-served.
#[test]
fn hand_written_crates_events_only_and_new_majors() {
    let repo = repository();
    let root = repo.path();
    let layout = Layout::of(root);
    // `order` is served by hand: services/order has no generated.rs
    let order = root.join("contracts/order/v1");
    fs::create_dir_all(&order).unwrap();
    fs::write(
        order.join("order.proto"),
        COUPON.replace("coupon", "order").replace("Coupon", "Order"),
    )
    .unwrap();
    fs::create_dir_all(root.join("services/order/src")).unwrap();
    fs::write(root.join("services/order/src/lib.rs"), "// by hand\n").unwrap();
    let err = new_service("order", &layout, &[]).unwrap_err().to_string();
    assert!(
        err.contains("was not written by `mesh-codegen new-service`"),
        "{err}"
    );
    assert_eq!(read(root, "services/order/src/lib.rs"), "// by hand\n");
    assert!(!read(root, "services/platform/src/plugins.rs").contains("mesh_order"));

    // events only, `service Audits` for contract `audit`
    let audit = root.join("contracts/audit/v1");
    fs::create_dir_all(&audit).unwrap();
    fs::write(
        audit.join("audit.proto"),
        r#"syntax = "proto3";
package audit.v1;
import "google/protobuf/empty.proto";
import "mesh/options.proto";
service Audits {
  option (mesh.service) = { name: "audit" version: "1.0.0" tier: 2 owner: "sec" };
  // Something happened.
  rpc Happened(.audit.v1.Happened) returns (google.protobuf.Empty) {
    option (mesh.method) = { kind: EVENT timeout_ms: 1000 };
  }
}
message Happened { string what = 1; }
"#,
    )
    .unwrap();
    new_service("audit", &layout, &[]).unwrap();
    let generated = read(root, "services/audit/src/generated.rs");
    assert!(
        !generated.contains("_server"),
        "no calls, no server: {generated}"
    );
    assert!(
        generated.contains("impl v1::AuditsHandler for AuditService"),
        "{generated}"
    );
    assert!(generated.contains("v1::AuditsConsumer::new"), "{generated}");
    let lib = read(root, "services/audit/src/lib.rs");
    assert!(lib.contains("v1::AuditsPublisher"), "{lib}");
    assert!(lib.contains("pub async fn on_happened("), "{lib}");

    // a v2 beside the v1 the crate serves: refused, nothing changed
    let v2 = root.join("contracts/audit/v2");
    fs::create_dir_all(&v2).unwrap();
    fs::write(
        v2.join("audit.proto"),
        read(&audit, "audit.proto")
            .replace("audit.v1", "audit.v2")
            .replace("1.0.0", "2.0.0"),
    )
    .unwrap();
    let err = new_service("audit", &layout, &[]).unwrap_err().to_string();
    assert!(
        err.contains("serves another major of audit than audit/v2"),
        "{err}"
    );
    assert_eq!(read(root, "services/audit/src/generated.rs"), generated);
}

/// A call end users make whose request comes from elsewhere, or a well-known type other than
/// Empty, is refused: the generator could not serve it safely.
#[test]
fn requests_it_cannot_pin_are_refused() {
    let repo = repository();
    let root = repo.path();
    let layout = Layout::of(root);
    let dir = root.join("contracts/coupon/v1");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("coupon.proto"),
        COUPON.replace(
            "rpc ListMyCoupons(ListMyCouponsRequest)",
            "rpc ListMyCoupons(google.protobuf.Empty)",
        ),
    )
    .unwrap();
    let err = new_service("coupon", &layout, &[]).unwrap_err().to_string();
    assert!(err.contains("is not a message of coupon/v1"), "{err}");
    assert!(!root.join("services/coupon").exists());
    let err = new_service("coupon", &layout, &["../Cargo".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a tenant id"), "{err}");
}

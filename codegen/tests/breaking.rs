//! One test per breaking-change kind, one proving compatible changes pass, and the CLI.

mod common;

use common::{Contracts, RPCS, THING_FIELDS, load_thing, thing};
use mesh_codegen::{BreakingKind, BreakingKind::*, compare};

/// Kinds of breaking change from `base` to `head` (both `thing/v1`).
fn kinds(base: &str, head: &str) -> Vec<BreakingKind> {
    let (_b, base) = load_thing(base);
    let (_h, head) = load_thing(head);
    let changes = compare(&base.expect("base is valid"), &head.expect("head is valid"));
    for change in &changes {
        // every message names the contract file and a line
        assert!(
            change.location.file.ends_with("thing/v1/thing.proto"),
            "{change}"
        );
        assert!(change.location.line.is_some(), "{change}");
    }
    changes.into_iter().map(|c| c.kind).collect()
}

fn fields(replace: &str, with: &str) -> String {
    thing(&[("{THING_FIELDS}", &THING_FIELDS.replace(replace, with))])
}

#[test]
fn compatible_changes_pass() {
    let base = thing(&[]);
    let head = thing(&[
        // minor version bump, tier raised to core, new field, new call, new event, new message
        ("version: \"1.0.0\"", "version: \"1.1.0\""),
        ("{SERVICE_OPTS}", "tier: 0"),
        (
            "{THING_FIELDS}",
            &format!("{THING_FIELDS}\n  string label = 5;"),
        ),
        (
            "{RPCS}",
            &format!(
                "{RPCS}\n  rpc ListThings(GetThingRequest) returns (GetThingResponse) {{\n    option (mesh.method) = {{ kind: CALL timeout_ms: 100 }};\n  }}\n  rpc ThingGone(.thing.v1.ThingGone) returns (google.protobuf.Empty) {{\n    option (mesh.method) = {{ kind: EVENT }};\n  }}"
            ),
        ),
        ("{EXTRA_MESSAGES}", "message ThingGone { string id = 1; }\n"),
    ]);
    assert_eq!(kinds(&base, &head), []);
    // a field deleted with its number and name reserved is compatible too
    let reserved = fields("  int64 size = 2;", "  reserved 2;\n  reserved \"size\";");
    assert_eq!(kinds(&base, &reserved), []);
    // and the timeout may change
    let slower = thing(&[(
        "{RPCS}",
        &RPCS.replacen("timeout_ms: 100", "timeout_ms: 900", 1),
    )]);
    assert_eq!(kinds(&base, &slower), []);
}

#[test]
fn removed_field() {
    assert_eq!(
        kinds(&thing(&[]), &fields("  int64 size = 2;\n", "")),
        [FieldRemoved]
    );
}

#[test]
fn renumbered_field() {
    assert_eq!(
        kinds(&thing(&[]), &fields("int64 size = 2;", "int64 size = 9;")),
        [FieldRenumbered]
    );
}

#[test]
fn renamed_field() {
    assert_eq!(
        kinds(&thing(&[]), &fields("int64 size = 2;", "int64 bytes = 2;")),
        [FieldRenamed]
    );
}

#[test]
fn changed_field_type() {
    assert_eq!(
        kinds(&thing(&[]), &fields("int64 size = 2;", "string size = 2;")),
        [FieldTypeChanged]
    );
}

#[test]
fn changed_field_label() {
    assert_eq!(
        kinds(
            &thing(&[]),
            &fields("int64 size = 2;", "repeated int64 size = 2;")
        ),
        [FieldLabelChanged]
    );
}

#[test]
fn field_moved_into_oneof() {
    assert_eq!(
        kinds(
            &thing(&[]),
            &fields(
                "  int64 size = 2;",
                "  oneof measure {\n    int64 size = 2;\n  }"
            )
        ),
        [FieldOneofChanged]
    );
}

#[test]
fn reused_reserved_tag() {
    let base = fields("  int64 size = 2;", "  reserved 2;");
    assert_eq!(
        kinds(&base, &fields("  int64 size = 2;", "  int64 weight = 2;")),
        [ReservedTagReused]
    );
}

#[test]
fn reused_reserved_name() {
    let base = fields("  int64 size = 2;", "  reserved 2;\n  reserved \"size\";");
    assert_eq!(
        kinds(
            &base,
            &fields("  int64 size = 2;", "  reserved 2;\n  int64 size = 6;")
        ),
        [ReservedNameReused]
    );
}

#[test]
fn removed_method() {
    let head = thing(&[(
        "{RPCS}",
        &RPCS[..RPCS.find("\n\n  rpc ThingChanged").unwrap()],
    )]);
    // the event's payload message stays, so only the event itself is gone
    assert_eq!(kinds(&thing(&[]), &head), [MethodRemoved]);
}

#[test]
fn method_turned_from_call_to_event() {
    let base = thing(&[(
        "{RPCS}",
        &format!(
            "{RPCS}\n  rpc Touch(.thing.v1.ThingChanged) returns (google.protobuf.Empty) {{\n    option (mesh.method) = {{ kind: CALL timeout_ms: 100 }};\n  }}"
        ),
    )]);
    let head = base.replace(
        "rpc Touch(.thing.v1.ThingChanged) returns (google.protobuf.Empty) {\n    option (mesh.method) = { kind: CALL timeout_ms: 100 };",
        "rpc Touch(.thing.v1.ThingGone) returns (google.protobuf.Empty) {\n    option (mesh.method) = { kind: EVENT timeout_ms: 100 };",
    ) + "message ThingGone { string id = 1; }\n";
    assert_eq!(kinds(&base, &head), [MethodKindChanged, MethodTypeChanged]);
}

#[test]
fn changed_method_types() {
    let head = thing(&[(
        "{RPCS}",
        &RPCS.replacen(
            "returns (GetThingResponse)",
            "returns (.thing.v1.ThingChanged)",
            1,
        ),
    )]);
    assert_eq!(kinds(&thing(&[]), &head), [MethodTypeChanged]);
}

#[test]
fn method_started_streaming() {
    let head = thing(&[(
        "{RPCS}",
        &RPCS.replacen(
            "returns (GetThingResponse)",
            "returns (stream GetThingResponse)",
            1,
        ),
    )]);
    assert_eq!(kinds(&thing(&[]), &head), [MethodStreamingChanged]);
}

#[test]
fn removed_timeout() {
    let head = thing(&[(
        "{RPCS}",
        &RPCS.replace("kind: EVENT timeout_ms: 100", "kind: EVENT"),
    )]);
    assert_eq!(kinds(&thing(&[]), &head), [TimeoutRemoved]);
}

#[test]
fn lowered_tier() {
    assert_eq!(
        kinds(&thing(&[]), &thing(&[("{SERVICE_OPTS}", "tier: 2")])),
        [TierLowered]
    );
}

#[test]
fn version_went_backwards() {
    let base = thing(&[("version: \"1.0.0\"", "version: \"1.4.0\"")]);
    assert_eq!(kinds(&base, &thing(&[])), [VersionDecreased]);
}

#[test]
fn renamed_service() {
    let head = thing(&[("service Thing {", "service Things {")]);
    assert_eq!(kinds(&thing(&[]), &head), [ServiceRenamed]);
}

#[test]
fn removed_message() {
    let base = thing(&[("{EXTRA_MESSAGES}", "message Spare { string id = 1; }\n")]);
    assert_eq!(kinds(&base, &thing(&[])), [MessageRemoved]);
}

#[test]
fn removed_enum_value() {
    let head = thing(&[]).replace("  COLOR_BLUE = 2;\n", "");
    assert_eq!(kinds(&thing(&[]), &head), [EnumValueRemoved]);
    let reserved = thing(&[]).replace("  COLOR_BLUE = 2;\n", "  reserved 2;\n");
    assert_eq!(kinds(&thing(&[]), &reserved), []);
}

#[test]
fn renumbered_enum_value() {
    let head = thing(&[]).replace("COLOR_BLUE = 2;", "COLOR_BLUE = 3;");
    assert_eq!(kinds(&thing(&[]), &head), [EnumValueRenumbered]);
}

#[test]
fn removed_enum() {
    let base = thing(&[(
        "{EXTRA_MESSAGES}",
        "enum Shape { SHAPE_UNSPECIFIED = 0; }\n",
    )]);
    assert_eq!(kinds(&base, &thing(&[])), [EnumRemoved]);
}

#[test]
fn removed_contract_and_new_major_beside_it() {
    let base = Contracts::with("thing/v1/thing.proto", &thing(&[]));
    // v1 removed, v2 added: the removal breaks; the new major is free to differ
    let head = Contracts::with(
        "thing/v2/thing.proto",
        &fields("int64 size = 2;", "string size = 2;")
            .replace("thing.v1", "thing.v2")
            .replace("\"1.0.0\"", "\"2.0.0\""),
    );
    let changes = compare(
        &mesh_codegen::load(base.path()).unwrap(),
        &mesh_codegen::load(head.path()).unwrap(),
    );
    let kinds: Vec<_> = changes.iter().map(|c| c.kind).collect();
    assert_eq!(kinds, [ContractRemoved]);
    assert_eq!(changes[0].contract, "thing/v1");
    // keeping v1 beside v2 is compatible
    head.write("thing/v1/thing.proto", &thing(&[]));
    assert!(
        compare(
            &mesh_codegen::load(base.path()).unwrap(),
            &mesh_codegen::load(head.path()).unwrap()
        )
        .is_empty()
    );
}

#[test]
fn cli_check_fails_on_breaking_change_and_names_it() {
    let base = Contracts::with("thing/v1/thing.proto", &thing(&[]));
    let head = Contracts::with(
        "thing/v1/thing.proto",
        &fields("int64 size = 2;", "string size = 2;"),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mesh-codegen"))
        .args(["check", "--contracts"])
        .arg(head.path())
        .arg("--against")
        .arg(base.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 breaking change(s)"), "{stderr}");
    assert!(stderr.contains("FieldTypeChanged: field thing.v1.GetThingResponse.size changed type from int64 to string"), "{stderr}");
    assert!(stderr.contains("thing/v1/thing.proto:"), "{stderr}");

    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_mesh-codegen"))
        .args(["check", "--contracts"])
        .arg(base.path())
        .arg("--against")
        .arg(base.path())
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("no breaking changes"));
}

#[test]
fn cli_refuses_invalid_contracts_with_exit_code_2() {
    let bad = Contracts::with("thing/v1/thing.proto", &thing(&[("{SERVICE_OPTS}", "")]));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mesh-codegen"))
        .args(["check", "--contracts"])
        .arg(bad.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("option (mesh.service).tier: is missing")
    );
}

#[test]
fn the_repository_contracts_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../contracts");
    let set = mesh_codegen::load(&root).expect("contracts/ is valid");
    let dirs: Vec<&str> = set.contracts.iter().map(|c| c.dir.as_str()).collect();
    assert_eq!(
        dirs,
        [
            "admin/v1",
            "gateway/v1",
            "locator/v1",
            "message/v1",
            "order/v1",
            "order/v2",
            "push/v1",
            "recommend/v1"
        ]
    );
    // the shipped options file is the one the generator embeds
    let shipped = std::fs::read_to_string(root.join("mesh/options.proto")).unwrap();
    assert_eq!(shipped, mesh_codegen::OPTIONS_PROTO);
}

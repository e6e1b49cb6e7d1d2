//! One test per breaking-change kind, one proving compatible changes pass, and the CLI.

use crate::common;

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
    // the reference platform's contracts are there (a new contract folder is simply one more)
    for dir in [
        "admin/v1",
        "gateway/v1",
        "locator/v1",
        "message/v1",
        "order/v1",
        "order/v2",
        "recommend/v1",
    ] {
        assert!(dirs.contains(&dir), "{dir} missing from {dirs:?}");
    }
    // the shipped options file is the one the generator embeds
    let shipped = std::fs::read_to_string(root.join("mesh/options.proto")).unwrap();
    assert_eq!(shipped, mesh_codegen::OPTIONS_PROTO);
}

// ---- rules buf has (and the manifest's own), each with a breaking case and a safe neighbour

#[test]
fn field_deleted_with_its_number_but_not_its_name_reserved() {
    let head = fields("  int64 size = 2;", "  reserved 2;");
    assert_eq!(kinds(&thing(&[]), &head), [FieldNameNotReserved]);
    let both = fields("  int64 size = 2;", "  reserved 2;\n  reserved \"size\";");
    assert_eq!(kinds(&thing(&[]), &both), []);
}

#[test]
fn changed_json_name() {
    let head = fields("int64 size = 2;", "int64 size = 2 [json_name = \"bytes\"];");
    assert_eq!(kinds(&thing(&[]), &head), [FieldJsonNameChanged]);
    // spelling out the default JSON name changes nothing
    let same = fields("int64 size = 2;", "int64 size = 2 [json_name = \"size\"];");
    assert_eq!(kinds(&thing(&[]), &same), []);
}

#[test]
fn removed_oneof() {
    let base = fields(
        "  int64 size = 2;",
        "  oneof measure {\n    int64 size = 2;\n  }",
    );
    assert_eq!(kinds(&base, &thing(&[])), [FieldOneofChanged, OneofRemoved]);
    // a new oneof with a new field is an addition
    let added = fields(
        "  int64 size = 2;",
        "  int64 size = 2;\n  oneof extra {\n    string note = 9;\n  }",
    );
    assert_eq!(kinds(&thing(&[]), &added), []);
}

#[test]
fn renamed_enum_value() {
    let head = thing(&[]).replace("COLOR_BLUE = 2;", "COLOR_NAVY = 2;");
    assert_eq!(kinds(&thing(&[]), &head), [EnumValueRenamed]);
    let added = thing(&[]).replace("COLOR_BLUE = 2;", "COLOR_BLUE = 2;\n  COLOR_NAVY = 3;");
    assert_eq!(kinds(&thing(&[]), &added), []);
}

#[test]
fn reserved_numbers_and_names_stay_reserved() {
    let base = fields("  int64 size = 2;", "  reserved 2;\n  reserved \"size\";");
    let dropped = fields("  int64 size = 2;", "");
    assert_eq!(kinds(&base, &dropped), [ReservedRemoved, ReservedRemoved]);
    let kept = fields(
        "  int64 size = 2;",
        "  reserved 2;\n  reserved \"size\";\n  string note = 9;",
    );
    assert_eq!(kinds(&base, &kept), []);

    let enum_base = thing(&[]).replace("COLOR_BLUE = 2;", "COLOR_BLUE = 2;\n  reserved 3;");
    assert_eq!(kinds(&enum_base, &thing(&[])), [ReservedRemoved]);

    // a range taken out is named as a range, a narrowed one by what it lost
    let range = fields("  int64 size = 2;", "  reserved 20 to 25;");
    let (_b, base) = load_thing(&range);
    let (_h, head) = load_thing(&fields("  int64 size = 2;", "  reserved 20 to 22;"));
    let changes = compare(&base.unwrap(), &head.unwrap());
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(
        changes[0].message.ends_with(
            "no longer reserves numbers 23 to 25: the next change could reuse them unnoticed"
        ),
        "{}",
        changes[0]
    );
}

#[test]
fn reused_reserved_enum_number_and_name() {
    let base = thing(&[]).replace(
        "COLOR_BLUE = 2;",
        "COLOR_BLUE = 2;\n  reserved 3;\n  reserved \"COLOR_GREEN\";",
    );
    let head = thing(&[]).replace("COLOR_BLUE = 2;", "COLOR_BLUE = 2;\n  COLOR_GREEN = 3;");
    assert_eq!(
        kinds(&base, &head),
        [EnumReservedReused, EnumReservedReused]
    );
    let fresh = thing(&[]).replace(
        "COLOR_BLUE = 2;",
        "COLOR_BLUE = 2;\n  reserved 3;\n  reserved \"COLOR_GREEN\";\n  COLOR_PINK = 4;",
    );
    assert_eq!(kinds(&base, &fresh), []);
}

#[test]
fn changed_idempotency_level() {
    let with = |level: &str| {
        thing(&[(
            "{RPCS}",
            &RPCS.replacen(
                "option (mesh.method) = { kind: CALL timeout_ms: 100 };",
                &format!("option (mesh.method) = {{ kind: CALL timeout_ms: 100 }};\n    option idempotency_level = {level};"),
                1,
            ),
        )])
    };
    assert_eq!(
        kinds(&with("NO_SIDE_EFFECTS"), &with("IDEMPOTENT")),
        [IdempotencyChanged]
    );
    assert_eq!(kinds(&with("IDEMPOTENT"), &with("IDEMPOTENT")), []);
}

#[test]
fn changed_syntax() {
    let proto2 = thing(&[])
        .replace("syntax = \"proto3\";", "syntax = \"proto2\";")
        .replace("  string id = 1;", "  optional string id = 1;")
        .replace("  int64 size = 2;", "  optional int64 size = 2;")
        .replace("  Color color = 4;", "  optional Color color = 4;");
    assert_eq!(kinds(&thing(&[]), &proto2), [SyntaxChanged]);
    assert_eq!(kinds(&proto2, &proto2), []);
}

#[test]
fn removed_capability() {
    let with = |capabilities: &str| {
        thing(&[(
            "{SERVICE_OPTS}",
            &format!("tier: 1\n    capabilities: [{capabilities}]"),
        )])
    };
    assert_eq!(
        kinds(
            &with("\"thing.read\", \"thing.write\""),
            &with("\"thing.read\"")
        ),
        [CapabilityRemoved]
    );
    assert_eq!(
        kinds(
            &with("\"thing.read\""),
            &with("\"thing.read\", \"thing.write\"")
        ),
        []
    );
}

#[test]
fn changed_degraded_answer_and_lowered_timeout_are_warnings() {
    let with = |option: &str| {
        thing(&[(
            "{RPCS}",
            &RPCS.replacen(
                "option (mesh.method) = { kind: CALL timeout_ms: 100 };",
                &format!("option (mesh.method) = {{ {option} }};"),
                1,
            ),
        )])
    };
    let base = with("kind: CALL timeout_ms: 100 degraded { empty: true }");
    let degraded = with(
        "kind: CALL timeout_ms: 100 degraded { error { code: \"UNAVAILABLE\" message: \"off\" } }",
    );
    assert_eq!(kinds(&base, &degraded), [DegradedAnswerChanged]);
    let lowered = with("kind: CALL timeout_ms: 50 degraded { empty: true }");
    assert_eq!(kinds(&base, &lowered), [TimeoutLowered]);
    let raised = with("kind: CALL timeout_ms: 500 degraded { empty: true }");
    assert_eq!(kinds(&base, &raised), []);
    for kind in [DegradedAnswerChanged, TimeoutLowered] {
        assert_eq!(kind.severity(), mesh_codegen::Severity::Warning);
    }
    assert_eq!(FieldRemoved.severity(), mesh_codegen::Severity::Breaking);
}

#[test]
fn narrowing_an_audience_declared_or_default_is_breaking_widening_one_is_a_warning() {
    let with = |audience: &str| {
        thing(&[(
            "{RPCS}",
            &RPCS.replacen(
                "option (mesh.method) = { kind: CALL timeout_ms: 100 };",
                &format!("option (mesh.method) = {{ kind: CALL timeout_ms: 100 {audience} }};"),
                1,
            ),
        )])
    };
    let unset = with("");
    let user_and_backend = with("audience: [USER, BACKEND]");
    let user = with("audience: USER");
    let everyone = with("audience: [USER, BACKEND, NODE]");
    // the default is [BACKEND]: a declaration without it narrows, as any other would
    assert_eq!(kinds(&unset, &user), [AudienceNarrowed]);
    assert_eq!(kinds(&unset, &user_and_backend), [AudienceDeclared]);
    assert_eq!(AudienceDeclared.severity(), mesh_codegen::Severity::Warning);
    // declaring the default itself changes nothing
    assert_eq!(kinds(&unset, &with("audience: BACKEND")), []);
    assert_eq!(kinds(&user_and_backend, &user), [AudienceNarrowed]);
    assert_eq!(
        AudienceNarrowed.severity(),
        mesh_codegen::Severity::Breaking
    );
    // a declared audience that gains a kind of caller: a warning, to review who gains access
    assert_eq!(kinds(&user_and_backend, &everyone), [AudienceWidened]);
    assert_eq!(
        kinds(&with("audience: BACKEND"), &user_and_backend),
        [AudienceWidened]
    );
    assert_eq!(AudienceWidened.severity(), mesh_codegen::Severity::Warning);
    let (_b, base) = load_thing(&user_and_backend);
    let (_h, head) = load_thing(&user);
    let report = compare(&base.unwrap(), &head.unwrap());
    assert!(
        report[0]
            .message
            .contains("from [USER, BACKEND] to [USER]: BACKEND callers lose access"),
        "{}",
        report[0]
    );
}

#[test]
fn messages_say_streaming_and_oneofs_in_words() {
    let (_b, base) = load_thing(&thing(&[]));
    let moved = fields(
        "  int64 size = 2;",
        "  oneof measure {\n    int64 size = 2;\n  }",
    );
    let (_h, head) = load_thing(&moved);
    let changes = compare(&base.unwrap(), &head.unwrap());
    assert_eq!(
        changes[0].message,
        "field thing.v1.GetThingResponse.size moved from outside any oneof to oneof measure"
    );
    let streaming = thing(&[(
        "{RPCS}",
        &RPCS.replacen(
            "returns (GetThingResponse)",
            "returns (stream GetThingResponse)",
            1,
        ),
    )]);
    let (_s, head) = load_thing(&streaming);
    let (_b, base) = load_thing(&thing(&[]));
    let changes = compare(&base.unwrap(), &head.unwrap());
    assert_eq!(
        changes[0].message,
        "thing.v1.Thing.GetThing changed from unary to server streaming"
    );
}

#[test]
fn cli_error_formats_for_tools_and_pull_requests_and_warnings_pass() {
    let base = Contracts::with("thing/v1/thing.proto", &thing(&[]));
    let head = Contracts::with(
        "thing/v1/thing.proto",
        &fields("int64 size = 2;", "string size = 2;"),
    );
    let run = |head: &Contracts, format: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mesh-codegen"))
            .args(["check", "--error-format", format, "--contracts"])
            .arg(head.path())
            .arg("--against")
            .arg(base.path())
            .output()
            .unwrap()
    };
    let json = run(&head, "json");
    assert_eq!(json.status.code(), Some(1));
    let items: serde_json::Value = serde_json::from_slice(
        json.stdout
            .split(|b| *b == b'\n')
            .find(|l| l.starts_with(b"["))
            .expect("a JSON array line"),
    )
    .unwrap();
    assert_eq!(items[0]["kind"], "FieldTypeChanged");
    assert_eq!(items[0]["severity"], "breaking");
    assert_eq!(items[0]["contract"], "thing/v1");
    assert!(items[0]["line"].as_u64().is_some());
    assert!(
        items[0]["file"]
            .as_str()
            .unwrap()
            .ends_with("thing/v1/thing.proto")
    );

    let github = run(&head, "github-actions");
    let out = String::from_utf8_lossy(&github.stdout);
    assert!(
        out.lines().any(|l| l.starts_with("::error file=")
            && l.contains("thing/v1/thing.proto,line=")
            && l.contains(",title=FieldTypeChanged::field thing.v1.GetThingResponse.size changed type from int64 to string")),
        "{out}"
    );

    // a warning alone is reported and passes
    let lowered = Contracts::with(
        "thing/v1/thing.proto",
        &thing(&[(
            "{RPCS}",
            &RPCS.replacen("timeout_ms: 100", "timeout_ms: 50", 1),
        )]),
    );
    let warned = run(&lowered, "text");
    assert!(
        warned.status.success(),
        "{}",
        String::from_utf8_lossy(&warned.stderr)
    );
    let stderr = String::from_utf8_lossy(&warned.stderr);
    assert!(
        stderr.contains("0 breaking change(s) and 1 warning(s)"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "warning TimeoutLowered: thing.v1.Thing.GetThing timeout_ms went down from 100 to 50"
        ),
        "{stderr}"
    );
}

/// buf's FILE rules and FIELD_SAME_JSTYPE / FIELD_SAME_CTYPE: options that name or shape the
/// code other languages generate.
#[test]
fn file_options_and_field_type_options_are_breaking() {
    let with_options = |options: &str| {
        thing(&[]).replace(
            "package thing.v1;",
            &format!("package thing.v1;\n{options}"),
        )
    };
    let base = with_options("option go_package = \"example.com/thing/v1\";");
    let moved = with_options("option go_package = \"example.com/things/v1\";");
    assert_eq!(kinds(&base, &moved), [FileOptionChanged]);
    let (_b, b) = load_thing(&base);
    let (_h, h) = load_thing(&moved);
    let report = compare(&b.unwrap(), &h.unwrap());
    assert!(
        report[0].message.contains(
            "option go_package changed from \"example.com/thing/v1\" to \"example.com/things/v1\""
        ),
        "{}",
        report[0]
    );
    // set where it was unset, and unset where it was set
    let java = with_options(
        "option go_package = \"example.com/thing/v1\";\noption java_multiple_files = true;",
    );
    assert_eq!(kinds(&base, &java), [FileOptionChanged]);
    assert_eq!(kinds(&java, &base), [FileOptionChanged]);
    let speed = with_options(
        "option go_package = \"example.com/thing/v1\";\noption optimize_for = CODE_SIZE;",
    );
    assert_eq!(kinds(&base, &speed), [FileOptionChanged]);
    // an option set to its default changes nothing (buf compares effective values)
    let explicit = with_options(
        "option go_package = \"example.com/thing/v1\";\noption optimize_for = SPEED;\noption java_multiple_files = false;",
    );
    assert_eq!(kinds(&base, &explicit), []);
    assert_eq!(kinds(&base, &base), []);
    assert_eq!(
        FileOptionChanged.severity(),
        mesh_codegen::Severity::Breaking
    );

    // a file renamed keeps its options or breaks: compared with the file its types went to
    let load_as = |path: &str, source: &str| {
        let contracts = common::Contracts::with(path, source);
        let set = mesh_codegen::load(contracts.path()).expect("valid");
        (contracts, set)
    };
    let (_b, before) = load_as("thing/v1/thing.proto", &base);
    let (_s, same) = load_as("thing/v1/things.proto", &base);
    assert!(compare(&before, &same).is_empty());
    let (_r, renamed) = load_as("thing/v1/things.proto", &moved);
    let report = compare(&before, &renamed);
    assert_eq!(
        report.iter().map(|c| c.kind).collect::<Vec<_>>(),
        [FileOptionChanged]
    );
    assert!(
        report[0].message.contains(
            "file thing/v1/thing.proto (now thing/v1/things.proto): option go_package changed"
        ),
        "{}",
        report[0]
    );

    let plain = fields("  int64 size = 2;", "  int64 size = 2;");
    let as_string = fields(
        "  int64 size = 2;",
        "  int64 size = 2 [jstype = JS_STRING];",
    );
    assert_eq!(kinds(&plain, &as_string), [FieldTypeOptionChanged]);
    assert_eq!(kinds(&as_string, &plain), [FieldTypeOptionChanged]);
    assert_eq!(kinds(&as_string, &as_string), []);
    let normal = fields(
        "  int64 size = 2;",
        "  int64 size = 2 [jstype = JS_NORMAL];",
    );
    assert_eq!(kinds(&plain, &normal), []);
}

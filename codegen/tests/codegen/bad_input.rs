//! Every kind of bad contract gets an error naming the file, the line where the compiler knows
//! it, and the offending element or field.

use crate::common;

use common::{RPCS, load_thing, thing};
use mesh_codegen::ContractError;

/// The error text of a contract that must fail to load.
fn error_of(source: &str) -> (String, String) {
    let (contracts, result) = load_thing(source);
    let err = result.expect_err("the contract must be refused");
    let file = contracts
        .path()
        .join("thing/v1/thing.proto")
        .display()
        .to_string();
    (err.to_string(), file)
}

/// 1-based line of the first line containing `needle`.
fn line_of(source: &str, needle: &str) -> usize {
    source
        .lines()
        .position(|l| l.contains(needle))
        .expect("needle in source")
        + 1
}

#[test]
fn the_baseline_contract_is_valid() {
    let (_dir, result) = load_thing(&thing(&[]));
    let set = result.expect("baseline is valid");
    let contract = set.get("thing/v1").unwrap();
    assert_eq!(contract.service.tier, 1);
    assert_eq!(contract.calls().count(), 1);
    assert_eq!(contract.events().count(), 1);
}

#[test]
fn malformed_proto_names_file_and_line() {
    let source = thing(&[(
        "message ThingChanged {\n  string id = 1;",
        "message ThingChanged {\n  string id = 1\n  int32 x = 2;",
    )]);
    let (contracts, result) = load_thing(&source);
    let err = result.unwrap_err();
    let ContractError::Proto { location, message } = &err else {
        panic!("expected a Proto error, got {err}")
    };
    assert_eq!(location.file, contracts.path().join("thing/v1/thing.proto"));
    assert_eq!(
        location.line,
        Some(line_of(&source, "int32 x = 2") as u32),
        "{err}"
    );
    assert!(message.contains("expected"), "{message}");
}

#[test]
fn unknown_option_field_is_named() {
    let source = thing(&[("{SERVICE_OPTS}", "tier: 1\n    colour: \"red\"")]);
    let (text, file) = error_of(&source);
    assert!(
        text.contains(&format!("{file}:{}", line_of(&source, "colour"))),
        "{text}"
    );
    assert!(text.contains("colour"), "{text}");
}

#[test]
fn unknown_option_extension_is_named() {
    let source = thing(&[(
        "{RPCS}",
        &RPCS.replacen(
            "kind: CALL timeout_ms: 100 };",
            "kind: CALL timeout_ms: 100 };\n    option (mesh.retries) = 3;",
            1,
        ),
    )]);
    let (text, file) = error_of(&source);
    assert!(
        text.contains(&format!("{file}:{}", line_of(&source, "mesh.retries"))),
        "{text}"
    );
    assert!(text.contains("mesh.retries"), "{text}");
}

#[test]
fn missing_tier_names_the_field() {
    let source = thing(&[("{SERVICE_OPTS}", "")]);
    let (text, file) = error_of(&source);
    assert!(
        text.contains(&format!(
            "{file}:{}",
            line_of(&source, "option (mesh.service)")
        )),
        "{text}"
    );
    assert!(
        text.contains("service thing.v1.Thing: option (mesh.service).tier: is missing"),
        "{text}"
    );
}

#[test]
fn tier_out_of_range_is_refused() {
    let (text, _) = error_of(&thing(&[("{SERVICE_OPTS}", "tier: 7")]));
    assert!(text.contains("option (mesh.service).tier: is 7"), "{text}");
}

#[test]
fn missing_service_option_is_refused() {
    let source = thing(&[]);
    let start = source.find("  option (mesh.service)").unwrap();
    let end = source[start..].find("};").unwrap() + start + 2;
    let source = format!("{}{}", &source[..start], &source[end..]);
    let (text, file) = error_of(&source);
    assert!(
        text.contains(&format!("{file}:{}", line_of(&source, "service Thing"))),
        "{text}"
    );
    assert!(text.contains("missing `option (mesh.service)"), "{text}");
}

#[test]
fn duplicate_method_name_names_file_and_line() {
    let dup = "\n  rpc GetThing(GetThingRequest) returns (GetThingResponse) {\n    option (mesh.method) = { kind: CALL timeout_ms: 100 };\n  }";
    let source = thing(&[("{RPCS}", &format!("{RPCS}{dup}"))]);
    let (text, file) = error_of(&source);
    let second = source
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("rpc GetThing("))
        .nth(1)
        .unwrap()
        .0
        + 1;
    assert!(text.contains(&format!("{file}:{second}")), "{text}");
    assert!(text.contains("GetThing"), "{text}");
}

#[test]
fn duplicate_event_name_after_case_folding_is_refused() {
    let dup = "\n  rpc Thing_Changed(ThingGone) returns (google.protobuf.Empty) {\n    option (mesh.method) = { kind: EVENT };\n  }";
    let source = thing(&[
        ("{RPCS}", &format!("{RPCS}{dup}")),
        ("{EXTRA_MESSAGES}", "message ThingGone { string id = 1; }\n"),
    ]);
    let (text, file) = error_of(&source);
    assert!(
        text.contains(&format!("{file}:{}", line_of(&source, "rpc Thing_Changed"))),
        "{text}"
    );
    assert!(text.contains("duplicate method or event name"), "{text}");
    assert!(text.contains("thing_changed"), "{text}");
}

#[test]
fn method_without_mesh_option_is_refused() {
    let source = thing(&[(
        "{RPCS}",
        &RPCS.replacen(
            "{\n    option (mesh.method) = { kind: CALL timeout_ms: 100 };\n  }",
            "{}",
            1,
        ),
    )]);
    let (text, file) = error_of(&source);
    assert!(
        text.contains(&format!("{file}:{}", line_of(&source, "rpc GetThing"))),
        "{text}"
    );
    assert!(
        text.contains("method thing.v1.Thing.GetThing: missing `option (mesh.method)"),
        "{text}"
    );
}

#[test]
fn call_without_timeout_is_refused() {
    let source = thing(&[(
        "{RPCS}",
        &RPCS.replacen("kind: CALL timeout_ms: 100", "kind: CALL", 1),
    )]);
    let (text, _) = error_of(&source);
    assert!(
        text.contains("GetThing: option (mesh.method).timeout_ms: is missing"),
        "{text}"
    );
}

#[test]
fn kind_is_required() {
    let source = thing(&[(
        "{RPCS}",
        &RPCS.replacen("kind: CALL timeout_ms: 100", "timeout_ms: 100", 1),
    )]);
    let (text, _) = error_of(&source);
    assert!(
        text.contains("GetThing: option (mesh.method).kind: is missing"),
        "{text}"
    );
}

#[test]
fn event_must_return_empty() {
    let source = thing(&[(
        "{RPCS}",
        &RPCS.replace(
            "returns (google.protobuf.Empty)",
            "returns (GetThingResponse)",
        ),
    )]);
    let (text, _) = error_of(&source);
    assert!(
        text.contains("ThingChanged: is an EVENT but returns thing.v1.GetThingResponse"),
        "{text}"
    );
}

#[test]
fn degraded_error_code_must_be_a_grpc_code() {
    let source = thing(&[(
        "{RPCS}",
        &RPCS.replacen(
            "timeout_ms: 100 }",
            "timeout_ms: 100 degraded { error { code: \"TEAPOT\" } } }",
            1,
        ),
    )]);
    let (text, _) = error_of(&source);
    assert!(
        text.contains("degraded.error.code: \"TEAPOT\" is not a gRPC code name"),
        "{text}"
    );
}

#[test]
fn version_major_must_match_folder() {
    let (text, _) = error_of(&thing(&[("version: \"1.0.0\"", "version: \"2.1.0\"")]));
    assert!(
        text.contains("option (mesh.service).version: is 2.1.0 but the folder is `v1`"),
        "{text}"
    );
    let (text, _) = error_of(&thing(&[("version: \"1.0.0\"", "version: \"one\"")]));
    assert!(text.contains("\"one\" is not a semantic version"), "{text}");
}

#[test]
fn package_must_match_folder() {
    let source = thing(&[("package thing.v1;", "package things.v1;")])
        .replace(".thing.v1.ThingChanged", ".things.v1.ThingChanged");
    let (text, _) = error_of(&source);
    assert!(
        text.contains(
            "package is `things.v1`, but a contract in `thing/v1/` must use package `thing.v1`"
        ),
        "{text}"
    );
}

#[test]
fn method_names_that_collide_with_tonic_are_refused() {
    let extra = "\n  rpc Connect(GetThingRequest) returns (GetThingResponse) {\n    option (mesh.method) = { kind: CALL timeout_ms: 100 };\n  }";
    let (text, _) = error_of(&thing(&[("{RPCS}", &format!("{RPCS}{extra}"))]));
    assert!(
        text.contains(
            "`Connect` becomes `connect`, which the generated tonic client already defines"
        ),
        "{text}"
    );
}

#[test]
fn all_violations_are_reported_at_once() {
    let source = thing(&[("{SERVICE_OPTS}", ""), ("owner: \"team\"", "")]);
    let (contracts, result) = load_thing(&source);
    let Err(ContractError::Invalid(violations)) = result else {
        panic!("expected violations")
    };
    let subjects: Vec<&str> = violations.iter().map(|v| v.subject.as_str()).collect();
    assert!(
        subjects.contains(&"service thing.v1.Thing: option (mesh.service).tier"),
        "{subjects:?}"
    );
    assert!(
        subjects.contains(&"service thing.v1.Thing: option (mesh.service).owner"),
        "{subjects:?}"
    );
    drop(contracts);
}

#[test]
fn bad_folder_layout_is_named() {
    let contracts = common::Contracts::with("thing/version1/thing.proto", &thing(&[]));
    let err = mesh_codegen::load(contracts.path()).unwrap_err();
    let ContractError::Layout { path, message } = &err else {
        panic!("expected a layout error, got {err}")
    };
    assert_eq!(path, &contracts.path().join("thing/version1"));
    assert!(
        message.contains("expected a major-version folder `v<N>`"),
        "{message}"
    );
}

#[test]
fn missing_import_is_named() {
    let source = thing(&[(
        "import \"mesh/options.proto\";",
        "import \"mesh/options.proto\";\nimport \"common/v1/money.proto\";",
    )]);
    let (text, file) = error_of(&source);
    assert!(
        text.contains(&format!(
            "{file}:{}",
            line_of(&source, "common/v1/money.proto")
        )),
        "{text}"
    );
    assert!(
        text.contains("import 'common/v1/money.proto' not found"),
        "{text}"
    );
}

#[test]
fn a_type_named_like_a_method_of_its_service_is_refused_as_protoc_would() {
    // protoc resolves `ThingChanged` to the method in the service's scope and refuses the file
    let source = thing(&[]).replace(
        "rpc ThingChanged(.thing.v1.ThingChanged)",
        "rpc ThingChanged(ThingChanged)",
    );
    let (err, file) = error_of(&source);
    let line = line_of(&source, "rpc ThingChanged(ThingChanged)");
    assert!(
        err.contains(&format!("{file}:{line}:3: rpc Thing.ThingChanged: its request type `ThingChanged` names the method")),
        "{err}"
    );
    assert!(
        err.contains("write it from the package: `.thing.v1.ThingChanged`"),
        "{err}"
    );
    // the neighbours protoc takes: the type from the package, and a type named unlike any
    // method (`GetThingRequest`) unqualified
    let (_dir, result) = load_thing(&thing(&[]));
    result.expect("a fully qualified type is accepted");
}

//! Types shared by several contracts live in `contracts/common/`: loaded, checked for breaking
//! changes and generated once. A `.proto` anywhere else outside a contract folder is refused.

use crate::common;

use common::{Contracts, THING_FIELDS, thing};
use mesh_codegen::{BreakingKind, ContractError, compare};

const MONEY: &str = r#"syntax = "proto3";

package common;

// An amount in minor units of a currency.
message Money {
  int64 minor_units = 1;
  string currency = 2;
}
"#;

/// `thing/v1` pricing its things in `common.Money`, beside `common/money.proto` = `money`.
fn priced(money: &str) -> Contracts {
    let source = thing(&[(
        "{THING_FIELDS}",
        &format!("{THING_FIELDS}\n  common.Money price = 5;"),
    )])
    .replace(
        "import \"mesh/options.proto\";",
        "import \"mesh/options.proto\";\nimport \"common/money.proto\";",
    );
    let contracts = Contracts::with("thing/v1/thing.proto", &source);
    contracts.write("common/money.proto", money);
    contracts
}

#[test]
fn a_shared_file_is_loaded_and_generated_once() {
    let contracts = priced(MONEY);
    let set = mesh_codegen::load(contracts.path()).expect("valid");
    assert_eq!(set.shared.files, ["common/money.proto"]);
    assert!(set.shared.messages.contains_key("common.Money"));
    let out = tempfile::tempdir().unwrap();
    let generated = mesh_codegen::generate(&set, out.path()).expect("generation succeeds");
    let names: Vec<String> = generated
        .files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"common.rs".to_owned()), "{names:?}");
    let money = std::fs::read_to_string(out.path().join("common.rs")).unwrap();
    assert!(money.contains("pub struct Money"), "{money}");
    let thing = std::fs::read_to_string(out.path().join("thing.v1.rs")).unwrap();
    assert!(thing.contains("super::super::common::Money"), "{thing}");
}

#[test]
fn a_breaking_change_in_a_shared_file_is_found() {
    let base = mesh_codegen::load(priced(MONEY).path()).unwrap();
    let without_currency = MONEY.replace("  string currency = 2;\n", "");
    let head = mesh_codegen::load(priced(&without_currency).path()).unwrap();
    let changes = compare(&base, &head);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].kind, BreakingKind::FieldRemoved);
    assert_eq!(changes[0].contract, "common");
    assert!(
        changes[0].location.file.ends_with("common/money.proto"),
        "{}",
        changes[0]
    );
    // adding a field is fine
    let more = MONEY.replace(
        "  string currency = 2;\n",
        "  string currency = 2;\n  int32 scale = 3;\n",
    );
    let head = mesh_codegen::load(priced(&more).path()).unwrap();
    assert!(compare(&base, &head).is_empty());
}

#[test]
fn a_shared_file_option_change_is_found() {
    let with_go = |go: &str| {
        MONEY.replace(
            "package common;",
            &format!("package common;\noption go_package = \"{go}\";"),
        )
    };
    let base = mesh_codegen::load(priced(&with_go("example.com/common")).path()).unwrap();
    let head = mesh_codegen::load(priced(&with_go("example.com/shared")).path()).unwrap();
    let changes = compare(&base, &head);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].kind, BreakingKind::FileOptionChanged);
    assert_eq!(changes[0].contract, "common");
    assert!(
        changes[0].location.file.ends_with("common/money.proto")
            && changes[0].location.line.is_some(),
        "{}",
        changes[0]
    );
    assert!(
        changes[0]
            .message
            .contains("file common/money.proto: option go_package changed"),
        "{}",
        changes[0]
    );
    let same = mesh_codegen::load(priced(&with_go("example.com/common")).path()).unwrap();
    assert!(compare(&base, &same).is_empty());
}

#[test]
fn a_shared_file_declares_types_only_in_a_common_package() {
    let with_service = format!("{MONEY}\nservice Bank {{}}\n");
    let err = mesh_codegen::load(priced(&with_service).path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("service common.Bank: shared files declare types only"),
        "{err}"
    );
    // a shared file in a contract's package (imported by nobody here)
    let contracts = Contracts::with("thing/v1/thing.proto", &thing(&[]));
    contracts.write(
        "common/extra.proto",
        &MONEY.replace("package common;", "package thing.v1;"),
    );
    let err = mesh_codegen::load(contracts.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "package is `thing.v1`; a shared file's package is `common` or `common.<name>`"
        ),
        "{err}"
    );
}

#[test]
fn a_stray_proto_file_is_refused_naming_it() {
    for stray in ["thing/loose.proto", "loose.proto"] {
        let contracts = Contracts::with("thing/v1/thing.proto", &thing(&[]));
        contracts.write(stray, MONEY);
        let err = mesh_codegen::load(contracts.path()).unwrap_err();
        assert!(matches!(err, ContractError::Layout { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(stray), "{text}");
        assert!(text.contains("belongs in `<service>/v<major>/`"), "{text}");
    }
    // other files beside the contracts are left alone
    let contracts = Contracts::with("thing/v1/thing.proto", &thing(&[]));
    contracts.write("README.md", "# contracts\n");
    contracts.write("thing/NOTES.txt", "notes\n");
    assert!(mesh_codegen::load(contracts.path()).is_ok());
}

#[test]
fn a_folder_inside_a_contract_folder_is_refused() {
    let contracts = Contracts::with("thing/v1/thing.proto", &thing(&[]));
    contracts.write("thing/v1/extra/extra.proto", MONEY);
    let err = mesh_codegen::load(contracts.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("thing/v1/extra"), "{err}");
    assert!(err.contains("holds its .proto files directly"), "{err}");
}

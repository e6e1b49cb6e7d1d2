//! `mesh-codegen new-service`: a contract valid as written, a crate implementing exactly its
//! calls, and nothing overwritten.

mod common;

use common::{Contracts, thing};

#[test]
fn a_new_service_is_a_valid_contract_and_a_crate_implementing_its_calls() {
    let contracts = Contracts::with("thing/v1/thing.proto", &thing(&[]));
    let services = tempfile::tempdir().unwrap();
    let scaffold =
        mesh_codegen::scaffold::new_service("gift_card", contracts.path(), services.path())
            .unwrap();
    assert_eq!(scaffold.files.len(), 3);
    let set = mesh_codegen::load(contracts.path()).expect("the new contract is valid");
    let contract = set.get("gift_card/v1").expect("gift_card/v1 is a contract");
    assert_eq!(contract.service.full_name, "gift_card.v1.GiftCard");
    assert_eq!(contract.service.tier, 2);
    let methods: Vec<&str> = contract
        .service
        .methods
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(methods, ["PutGiftCard", "GetGiftCard"]);
    let out = tempfile::tempdir().unwrap();
    let generated = mesh_codegen::generate(&set, out.path()).unwrap();
    assert!(
        generated
            .files
            .iter()
            .any(|f| f.ends_with("gift_card.v1.rs"))
    );
    let server = std::fs::read_to_string(out.path().join("gift_card.v1.rs")).unwrap();

    // the crate implements the generated trait, method by method
    let lib = std::fs::read_to_string(services.path().join("gift_card/src/lib.rs")).unwrap();
    assert!(lib.contains("impl GiftCard for GiftCardService"), "{lib}");
    for method in ["put_gift_card", "get_gift_card"] {
        assert!(server.contains(&format!("async fn {method}(")), "{method}");
        assert!(lib.contains(&format!("async fn {method}(")), "{method}");
    }
    let cargo = std::fs::read_to_string(services.path().join("gift_card/Cargo.toml")).unwrap();
    assert!(cargo.contains("name = \"mesh-gift-card\""), "{cargo}");
    assert!(
        scaffold
            .next_steps
            .iter()
            .any(|s| s.contains("GiftCardServer::new"))
    );
    assert!(
        scaffold
            .next_steps
            .iter()
            .any(|s| s.contains("[services.gift_card]"))
    );
}

#[test]
fn a_bad_or_taken_name_writes_nothing() {
    let contracts = Contracts::with("thing/v1/thing.proto", &thing(&[]));
    let services = tempfile::tempdir().unwrap();
    for bad in ["Coupon", "gift-card", "2fa", "common", "mesh", "a__b"] {
        let err = mesh_codegen::scaffold::new_service(bad, contracts.path(), services.path())
            .unwrap_err()
            .to_string();
        assert!(!err.is_empty(), "{bad}");
    }
    let err = mesh_codegen::scaffold::new_service("thing", contracts.path(), services.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("exists already; nothing was written"), "{err}");
    assert_eq!(std::fs::read_dir(services.path()).unwrap().count(), 0);
}

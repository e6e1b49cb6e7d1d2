//! Golden test: the code generated for `fixtures/shop/v1` is exactly `golden/`.
//! After an intended change to the generator, refresh with `UPDATE_GOLDEN=1 cargo test -p mesh-codegen --test codegen golden::`.

use crate::common;

use std::path::Path;

#[test]
fn generated_code_matches_golden_files() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let set = mesh_codegen::load(&fixtures).expect("fixture contracts are valid");
    let out = tempfile::tempdir().unwrap();
    let generated = mesh_codegen::generate(&set, out.path()).expect("generation succeeds");
    let names: Vec<String> = generated
        .files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["contracts.rs", "descriptors.binpb", "shop.v1.rs"]);
    // the descriptor set the servers reflect: the contract's calls, not its events
    let set: prost_types::FileDescriptorSet = prost::Message::decode(
        std::fs::read(out.path().join("descriptors.binpb"))
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    let shop = set
        .file
        .iter()
        .find(|f| f.name() == "shop/v1/shop.proto")
        .unwrap();
    let methods: Vec<&str> = shop.service[0].method.iter().map(|m| m.name()).collect();
    assert_eq!(methods, ["GetItem", "WatchStock", "Upload"]);
    assert!(
        set.file
            .iter()
            .any(|f| f.name() == "google/protobuf/empty.proto"),
        "imports are in the set, for tools that resolve types"
    );
    let names: Vec<String> = names.into_iter().filter(|n| n.ends_with(".rs")).collect();

    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    for name in names {
        let actual = std::fs::read_to_string(out.path().join(&name)).unwrap();
        let golden_file = golden.join(&name);
        if update {
            std::fs::write(&golden_file, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&golden_file)
            .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_GOLDEN=1", golden_file.display()));
        assert!(
            actual == expected,
            "{name} differs from {}; if the change is intended, run UPDATE_GOLDEN=1 cargo test -p mesh-codegen --test codegen golden::\n--- generated ---\n{actual}",
            golden_file.display()
        );
    }
}

#[test]
fn generation_is_deterministic_and_leaves_unchanged_files_alone() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let set = mesh_codegen::load(&fixtures).unwrap();
    let out = tempfile::tempdir().unwrap();
    mesh_codegen::generate(&set, out.path()).unwrap();
    let file = out.path().join("shop.v1.rs");
    let first = std::fs::read_to_string(&file).unwrap();
    let modified = std::fs::metadata(&file).unwrap().modified().unwrap();
    // the clock moves on: a rewrite would show in the modification time
    std::thread::sleep(std::time::Duration::from_millis(20));
    mesh_codegen::generate(&set, out.path()).unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), first);
    assert_eq!(
        std::fs::metadata(&file).unwrap().modified().unwrap(),
        modified
    );
}

#[test]
fn generated_stubs_carry_the_contract() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let set = mesh_codegen::load(&fixtures).unwrap();
    let out = tempfile::tempdir().unwrap();
    mesh_codegen::generate(&set, out.path()).unwrap();
    let code = std::fs::read_to_string(out.path().join("shop.v1.rs")).unwrap();
    for expected in [
        // tonic server and client exist for calls only
        "pub mod shop_client",
        "pub mod shop_server",
        "async fn get_item(",
        "async fn watch_stock(",
        // metadata constants
        "tier: ::mesh_contract::Tier::of(2)",
        "path: \"/shop.v1.Shop/GetItem\"",
        "code: ::tonic::Code::ResourceExhausted",
        "routing_key: \"item_added\"",
        // typed AMQP stubs
        "pub struct ShopPublisher<B>",
        "pub trait ShopHandler",
        "fn on_item_added(",
        "fn on_item_removed(",
        "pub struct ShopConsumer<H>",
        "pub struct ShopCaller<T",
        // the proto comment becomes the doc
        "/// Looks an item up.",
    ] {
        assert!(code.contains(expected), "generated code lacks {expected:?}");
    }
    // events are not HTTP/2 methods
    assert!(
        !code.contains("async fn item_added("),
        "events must not be tonic methods"
    );
}

/// A contract of events only (no call over HTTP/2) gets no tonic client or server, and its
/// mesh stubs all the same: the composed generator writes them for a service with no method.
#[test]
fn a_contract_of_events_only_gets_its_mesh_stubs_and_no_tonic_code() {
    let source = common::thing(&[(
        "{RPCS}",
        r#"
  rpc ThingChanged(.thing.v1.ThingChanged) returns (google.protobuf.Empty) {
    option (mesh.method) = { kind: EVENT timeout_ms: 100 };
  }"#,
    )]);
    let (_contracts, set) = common::load_thing(&source);
    let set = set.expect("an events-only contract is valid");
    let out = tempfile::tempdir().unwrap();
    mesh_codegen::generate(&set, out.path()).expect("generation succeeds");
    let code = std::fs::read_to_string(out.path().join("thing.v1.rs")).unwrap();
    assert!(code.contains("pub mod contract"), "the contract metadata");
    assert!(
        code.contains("pub struct ThingPublisher"),
        "the event publisher"
    );
    assert!(!code.contains("pub mod thing_client"), "no tonic client");
    assert!(!code.contains("pub mod thing_server"), "no tonic server");
}

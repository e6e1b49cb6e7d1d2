//! Generates the stubs of every contract in the repository's `contracts/` folder.

use std::path::{Path, PathBuf};

fn main() {
    let contracts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts");
    println!("cargo:rerun-if-changed={}", contracts.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let set = match mesh_codegen::load(&contracts) {
        Ok(set) => set,
        Err(err) => {
            // Cargo shows build-script stderr; make the contract error the first thing seen.
            eprintln!("{err}");
            panic!("contracts in {} are invalid:\n{err}", contracts.display());
        }
    };
    // the admin API is the mesh's own control plane, served to meshctl: no tenant runs it
    let options = mesh_codegen::GenerateOptions {
        not_in_catalogue: &["admin"],
    };
    if let Err(err) = mesh_codegen::generate_with(&set, &out, &options) {
        panic!("{err}");
    }
}

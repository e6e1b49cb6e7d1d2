//! Contracts in, code out.
//!
//! A mesh contract is a folder `contracts/<service>/v<major>/` of protobuf files whose one
//! service carries `(mesh.service)` and whose methods carry `(mesh.method)` options (tier,
//! call or event, deadline, degraded answer). This crate:
//!
//! - [`load`]s a contracts folder with protox (pure Rust, no `protoc`) and checks the mesh's
//!   rules, naming file, line and field on every error;
//! - [`generate`]s, per package, prost messages, tonic client and server for the calls, and the
//!   mesh stubs: contract metadata constants, a caller taking a `RequestContext`, and a typed
//!   event publisher, handler trait and consumer;
//! - [`check`]s two versions of the contracts for breaking changes within a major version,
//!   like `buf breaking`, and also over the manifest (tier lowered, deadline removed ...);
//!   the reference is the released baseline ([`ContractSet::baseline`], [`load_baseline`]),
//!   never merely the previous commit;
//! - [`scaffold`]s a new service: its contract and a crate implementing it.
//!
//! Use it from `build.rs`:
//!
//! ```no_run
//! let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap());
//! let contracts = mesh_codegen::load(std::path::Path::new("../../contracts")).unwrap();
//! mesh_codegen::generate(&contracts, &out).unwrap();
//! ```
//!
//! and include the result with
//! `include!(concat!(env!("OUT_DIR"), "/contracts.rs"));`, or from the `mesh-codegen` CLI.

pub mod check;
mod error;
mod generate;
mod load;
pub mod model;
pub mod release;
pub mod scaffold;
mod stubs;
pub mod tenants;

pub use check::{BreakingChange, BreakingKind, Severity, compare};
pub use error::{ContractError, Location, Violation};
pub use generate::{GenerateOptions, Generated, INCLUDE_FILE, generate, generate_with};
pub use load::{
    ContractSet, OPTIONS_PROTO, OPTIONS_PROTO_NAME, SHARED_DIR, Shared, load, load_baseline,
};

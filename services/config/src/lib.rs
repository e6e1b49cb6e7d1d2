//! What a mesh is told, parsed once: the crate `meshctl` needs and nothing more (no runtime, no
//! HTTP server, no telemetry SDK).
//!
//! - [`tenant`]: the tenant files (`tenants/_defaults.toml` + `tenants/<tenant>.toml` +
//!   `MESH_TENANT_<ID>__...` environment overrides, via figment), validated against the
//!   contracts with errors naming the file and the field. Business-line differences live here,
//!   never in `if tenant == ...` code.
//! - [`channels`]: a tenant's `[channels.<name>]` tables, the third-party platforms its
//!   customers write from.
//! - [`users`]: a tenant's `[users]` table, parsed into the verifier of its users' tokens.
//! - [`graph`]: the service dependency graph; a cycle refuses start-up, naming it.
//! - [`settings`]: every service setting a tenant file may set, declared once (type, bounds,
//!   default, meaning), and the check of a tenant's settings against them.
//! - [`switch`]: degradation switch targets (`recommend`, `order.GetOrder`, `tier>=2`) and
//!   switches.
//! - [`deploy`]: the deployment's own file (`ops/mesh.toml`: admin API, ops credential, state
//!   folder, telemetry, front door, TLS).
//!
//! Every error is a [`ConfigError`] naming where it comes from: a tenant file, the deployment
//! file, or an environment variable.

pub mod channels;
pub mod deploy;
mod error;
pub mod graph;
pub mod settings;
pub mod switch;
pub mod tenant;
pub mod users;
pub mod web;
pub mod worker;

pub use error::{ConfigError, FieldError, MIN_CREDENTIAL_LEN, check_credential};
pub use tenant::{TenantConfig, Tenants};

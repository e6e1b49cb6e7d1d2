//! What every mesh process shares, whatever services it runs: one dependency that names the
//! runtime's crates by the jobs they do, so a service or a binary writes
//! `mesh_runtime::layers::SwitchBoard` without knowing where the line between crates runs.
//!
//! The crates, bottom-up (each depends only on those above it):
//!
//! - [`mesh_stack`]: the request path. [`auth`] authenticates the tenant of every inbound call
//!   (a caller holding tenant A's credential cannot act as tenant B); [`layers`] are the tower
//!   layers (rate limit, degradation switches, service plan, per-tenant runtimes, contract
//!   deadlines inbound, bulkheads outbound); [`stack`] puts them together, once: [`Inbound`]
//!   and [`Outbound`]; [`probes`] answers health and reflection.
//! - [`mesh_front_door`]: one address routing each call to its tenant's process
//!   ([`front_door`]), its listener ([`connections`]: connection caps, preface timeout,
//!   keepalive, stream limits), its connections to each worker ([`upstream`]), mutual TLS
//!   ([`tls`]), the client that skips the hop ([`direct`]), and the deployment configuration
//!   with what a worker is told of it ([`deploy`]).
//! - [`mesh_supervisor`]: a process per tenant group, restarted alone when it dies
//!   ([`supervisor`], with both sides of its line protocol in [`supervisor::protocol`]).
//! - [`mesh_control`]: degradation switches at run time (persisted, pushed to every process,
//!   shared by a fleet), tenants onboarded while running, status, automatic rules, the audit
//!   log ([`control`]).
//!
//! What the mesh is told ([`config`], [`graph`], [`identity`], [`settings`]) comes from
//! `mesh-config`. The runtime knows nothing of any particular service: it is handed the
//! contract catalogue.

/// The control plane ([`mesh_control`]).
pub use mesh_control as control;
/// The front door ([`mesh_front_door`]).
pub use mesh_front_door as front_door;
pub use mesh_front_door::{connections, deploy, direct, tls, upstream};
pub use mesh_stack::{auth, layers, own_server, probes, stack};
/// The supervisor ([`mesh_supervisor`]).
pub use mesh_supervisor as supervisor;

/// The service dependency graph ([`mesh_config::graph`]).
pub use mesh_config::graph;
/// Every service setting a tenant file may set, declared once ([`mesh_config::settings`]).
pub use mesh_config::settings;
/// Tenant files ([`mesh_config::tenant`], re-exported: the runtime serves what they say).
pub use mesh_config::tenant as config;
/// Tenants' user tokens ([`mesh_config::users`]): their settings and verifiers.
pub use mesh_config::users as identity;

pub use auth::{TenantAuthLayer, TenantDirectory};
pub use config::{ConfigError, FieldError, TenantConfig, Tenants};
pub use own_server::OwnServer;
pub use stack::{Inbound, InboundLayerKind, Outbound, OutboundChannel, Peers};

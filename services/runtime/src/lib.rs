//! What every mesh process shares, whatever services it runs.
//!
//! - [`config`], [`graph`], [`identity`]: what the mesh is told (tenant files, the dependency
//!   graph, user-token settings), from the `mesh-config` crate, re-exported.
//! - [`auth`]: the tower layer that authenticates the tenant of every inbound call: a caller
//!   holding tenant A's credential cannot act as tenant B.
//! - [`layers`]: rate limit, degradation switches, service plan, per-tenant runtimes and
//!   contract deadlines for inbound calls, bulkheads for outbound ones; [`stack`] puts them
//!   together, once: [`Inbound`] and [`Outbound`].
//! - [`supervisor`] and [`front_door`]: a process per tenant group, restarted alone when it
//!   dies (the supervisor owns both sides of its line protocol with the workers,
//!   [`supervisor::protocol`]), and one address routing each call to its tenant's process; [`connections`] (the
//!   front door's listener: connection cap, keepalive, stream limits) and [`upstream`] (its
//!   connections to each worker).
//! - [`control`]: degradation switches at run time (persisted, pushed to every process),
//!   tenants onboarded while running, status, automatic degradation rules.
//! - [`deploy`]: the deployment's own configuration (admin API, ops credential, state folder),
//!   from `mesh-config`, and what a worker is told of it.
//!
//! The runtime knows nothing of any particular service: it is handed the contract catalogue.

pub mod auth;
/// The service dependency graph ([`mesh_config::graph`]).
pub use mesh_config::graph;
/// Every service setting a tenant file may set, declared once ([`mesh_config::settings`]).
pub use mesh_config::settings;
/// Tenant files ([`mesh_config::tenant`], re-exported: the runtime serves what they say).
pub use mesh_config::tenant as config;
/// Tenants' user tokens ([`mesh_config::users`]): their settings and verifiers.
pub use mesh_config::users as identity;
pub mod connections;
pub mod control;
pub mod deploy;
pub mod direct;
pub mod front_door;
pub mod layers;
pub mod probes;
pub mod stack;
pub mod supervisor;
pub mod tls;
pub mod upstream;

pub use auth::{TenantAuthLayer, TenantDirectory};
pub use config::{ConfigError, FieldError, TenantConfig, Tenants};
pub use stack::{Inbound, InboundLayerKind, Outbound, OutboundChannel};

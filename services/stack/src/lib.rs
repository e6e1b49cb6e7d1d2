//! The request path every mesh process runs, built in one place: tenant authentication
//! ([`auth`]), the tower layers for inbound and outbound calls ([`layers`]: rate limit,
//! degradation switches, service plan, per-tenant runtimes, contract deadlines, bulkheads),
//! and [`stack`], which puts them together once: [`Inbound`] and [`Outbound`]. [`probes`]
//! answers health and reflection, which belong to no tenant.
//!
//! Lowest of the runtime's crates: it depends on the configuration and the contract
//! vocabulary only. The front door, the supervisor and the control plane build on it.

pub mod auth;
pub mod layers;
pub mod own_server;
pub mod probes;
pub mod stack;

pub use auth::{TenantAuthLayer, TenantDirectory};
pub use own_server::OwnServer;
pub use stack::{Inbound, InboundLayerKind, Outbound, OutboundChannel, Peers};

// the configuration as the modules name it (`crate::config::TenantConfig`)
use mesh_config::{TenantConfig, tenant as config, users as identity};

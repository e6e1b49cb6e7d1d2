//! The mesh's control plane: degradation switches changed at run time and kept across
//! restarts, tenants onboarded while running, status, automatic degradation.
//!
//! - [`plane`]: [`ControlPlane`], what `mesh up` runs behind the admin API;
//! - [`store`]: the switch state on disk;
//! - [`shared`]: the tenant registry several nodes share (Redis);
//! - [`shared_switches`]: the switch state several nodes share, one versioned entry per switch;
//! - [`rules`]: the automatic degradation decision;
//! - [`audit`]: who changed what, when, kept by each node and shared by the fleet.

// the configuration and the crates below, as the modules name them (`crate::supervisor`)
use mesh_config::tenant as config;
use mesh_front_door as front_door;
use mesh_stack::{auth, layers};
use mesh_supervisor as supervisor;

pub mod audit;
pub mod plane;
pub mod rules;
pub mod shared;
pub mod shared_switches;
pub mod store;
pub mod versioned;

pub use plane::{ControlError, ControlPlane, FleetApplied, StatusReport, SwitchChange, TenantRow};

//! The mesh's control plane: degradation switches changed at run time and kept across
//! restarts, tenants onboarded while running, status, automatic degradation.
//!
//! - [`plane`]: [`ControlPlane`], what `mesh up` runs behind the admin API;
//! - [`store`]: the switch state on disk;
//! - [`rules`]: the automatic degradation decision.

pub mod plane;
pub mod rules;
pub mod store;

pub use plane::{ControlError, ControlPlane, StatusReport, SwitchChange, TenantRow};

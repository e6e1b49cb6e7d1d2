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

/// What a control plane is told: [`Config::build`] takes over a supervisor and starts the
/// tenants' groups; [`ControlPlane::run`] runs its automatic rules until stopped. (Sharing
/// state with a fleet through Redis is added to the built plane:
/// [`ControlPlane::share_switches`], [`ControlPlane::share_tenants`].)
#[derive(Debug)]
pub struct Config {
    /// The tenants folder (files are added and removed there).
    pub dir: std::path::PathBuf,
    /// The contracts the mesh serves.
    pub catalogue: &'static [&'static mesh_contract::ContractSpec],
    /// The tenants, as loaded.
    pub tenants: mesh_config::Tenants,
    /// The switch state saved on disk (see [`plane::initial_switches`]).
    pub saved: store::SavedSwitches,
    /// Where it is saved.
    pub store: store::SwitchStore,
    /// Whether workers run here (false for `mesh up --control-only`).
    pub start_workers: bool,
    /// Whether the workers keep stored data outside themselves (PostgreSQL), which
    /// `tenant move` needs.
    pub data_shared: bool,
}

impl Config {
    /// The control plane, driving `supervisor` and `front`.
    pub fn build(
        self,
        supervisor: supervisor::Supervisor,
        front: front_door::FrontDoor,
    ) -> Result<ControlPlane, ControlError> {
        let plane = ControlPlane::start(
            self.dir,
            self.catalogue,
            self.tenants,
            self.saved,
            self.store,
            supervisor,
            front,
            self.start_workers,
        )?;
        Ok(plane.with_data_shared(self.data_shared))
    }
}

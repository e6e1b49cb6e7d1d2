//! What `mesh deploy` renders: the configuration of established engines that run one mesh on
//! several machines, from the same tenants folder `mesh up` reads. Nothing here runs anything:
//! each renderer is a pure function from the tenants (and where their process groups run) to
//! the engine's own file, so it can be reviewed, versioned and validated by the engine's tools.
//!
//! - [`haproxy`]: HAProxy routing each call by its `x-mesh-tenant` header to the replicas of
//!   the tenant's process group, over HTTP/2, with health checks;
//! - [`k8s`]: Kubernetes manifests, a Deployment per process group.

use std::collections::BTreeMap;

use mesh_config::{Tenants, tenant::group_of};

pub mod haproxy;
pub mod k8s;

/// Why a configuration cannot be rendered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeployError {
    /// A process group serving tenants has nowhere to run.
    #[error(
        "process group {group} (tenants {tenants}) has no replicas: give them, e.g. --group {group}=10.0.0.5:7501,10.0.0.6:7501"
    )]
    NoReplicas {
        /// The group.
        group: String,
        /// Its tenants.
        tenants: String,
    },
    /// Replicas given for a group no tenant runs in.
    #[error("process group {0} has no tenant; groups: {1}")]
    UnknownGroup(String, String),
    /// An address that is not `host:port`.
    #[error("{0:?} is not host:port")]
    BadAddress(String),
    /// A tenant file could not be read.
    #[error("{0}: {1}")]
    Read(String, String),
}

/// The process groups of a tenants folder, each with its tenants: `shared`, and one per tenant
/// with a process of its own.
pub fn groups(tenants: &Tenants) -> BTreeMap<String, Vec<String>> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for config in tenants.tenants.values() {
        groups
            .entry(group_of(config))
            .or_default()
            .push(config.id.to_string());
    }
    groups
}

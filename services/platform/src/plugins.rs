//! The services added with `mesh-codegen new-service`, assembled through [`mesh_plugin`]:
//! their routes, their consumers on each tenant that enables them, their queues in
//! [`queues`](crate::queues) and in a purge. `new-service` adds a line here and the crate's
//! dependency in this crate's Cargo.toml; removing a service is deleting both.

/// Every added service, in the order they were added.
pub static SERVICES: &[&mesh_plugin::ServiceDescriptor] = &[
    // mesh-codegen new-service adds one line per service above this one
];

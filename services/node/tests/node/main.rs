//! The node's tests, in one binary (each file a module, as `cargo test` runs one binary's
//! tests side by side): `mesh up`, `mesh worker` and the other commands as child processes,
//! driven from outside with our clients and others (grpcio, pika, curl, HAProxy, a browser).
//! One file's tests: `cargo test -p mesh-node --test node -- web::`.

mod support;

mod abuse;
mod broker;
mod browser;
mod bulkheads;
mod channels;
mod convergence;
mod demo;
mod devices;
mod direct;
mod drain;
mod faults;
mod fleet;
mod identity;
mod k8s;
mod metrics;
mod new_service;
mod nodes;
mod probes;
mod proxy;
mod push;
mod telemetry;
mod tenant_edges;
mod terminals;
mod three_nodes;
mod tls;
mod up;
mod web;
mod wire;

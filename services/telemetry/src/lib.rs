//! Observability for the mesh: one business request followed through every process.
//!
//! - [`init`] installs the process's `tracing` subscriber: logs on stderr, optionally every mesh
//!   span printed as it closes ([`TelemetryConfig::console`]), and, when an OTLP endpoint is
//!   configured, spans and metrics exported over OTLP/gRPC in the background. Export runs on
//!   its own thread with a bounded queue: a slow or absent collector drops telemetry, it never
//!   slows or fails a call.
//! - [`TraceLayer`] opens a span per HTTP/2 call (server or client side) with the tenant,
//!   service, contract version, method and outcome (`ok`, `refused`, `error`, `degraded`, `shed`,
//!   `timed_out`), and carries the W3C trace context in the call's metadata.
//! - [`EventTrace`] does the same for a publish or a consume on the queue, whose headers carry
//!   the same context (the transports open one per message).
//! - Metrics per tenant, service and method ([`metrics`]): calls by outcome, latency, events,
//!   bulkheads in use.
//!
//! - The same metrics on a Prometheus scrape endpoint ([`scrape`]), when
//!   `[telemetry] prometheus_listen` is set.
//!
//! Nothing here knows a particular service: names come from the contract catalogue.

mod config;
mod json_log;
mod layer;
pub mod metrics;
pub mod outage;
mod propagation;
pub mod scrape;

pub use config::{LogFormat, Process, Telemetry, TelemetryConfig, TelemetryError, init, init_as};
pub use layer::{Outcome, Side, TraceLayer, Traced, TracedBody, is_error};
pub use propagation::{Destination, EventTrace, carry, continue_trace, parent_of, trace_of};

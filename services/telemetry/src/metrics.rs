//! Per-tenant metrics, on the global OpenTelemetry meter (exported over OTLP by [`crate::init`];
//! no-ops without it):
//!
//! - `mesh.rpc.calls` (counter): calls by `tenant`, `service`, `method`, `side` and `outcome`
//!   (so degraded and shed answers are counted as such);
//! - `mesh.rpc.duration` (histogram, ms): call latency by `tenant`, `service`, `method`, `side`;
//! - `mesh.events` (counter): publishes and consumes by `tenant`, `service`, `event`,
//!   `operation` and `outcome`;
//! - `mesh.bulkhead.in_use` (gauge): permits taken per `tenant` and `dependency`, from
//!   [`observe_bulkheads`].
//!
//! The calls a process served are also tallied in the process ([`tally`]), which is how
//! `meshctl status` reads them without a metrics backend.

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use opentelemetry::{
    KeyValue,
    metrics::{Counter, Histogram, Meter, ObservableGauge},
};

use crate::{Outcome, Side};

struct Instruments {
    calls: Counter<u64>,
    duration: Histogram<f64>,
    events: Counter<u64>,
}

fn meter() -> Meter {
    opentelemetry::global::meter("mesh")
}

/// Created on first use, after [`crate::init`] installed the meter provider.
fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = meter();
        Instruments {
            calls: meter
                .u64_counter("mesh.rpc.calls")
                .with_description("calls by tenant, service, method, side and outcome")
                .build(),
            duration: meter
                .f64_histogram("mesh.rpc.duration")
                .with_unit("ms")
                .with_description("call latency")
                .build(),
            events: meter
                .u64_counter("mesh.events")
                .with_description("events published and consumed, by outcome")
                .build(),
        }
    })
}

/// The calls of one tenant to one method that this process served, by outcome.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MethodTally {
    /// Tenant id.
    pub tenant: String,
    /// Service name.
    pub service: String,
    /// Method name.
    pub method: String,
    /// Every call.
    pub calls: u64,
    /// Answered by a degradation switch.
    pub degraded: u64,
    /// Refused for capacity (rate limit, bulkhead).
    pub shed: u64,
    /// Out of time.
    pub timed_out: u64,
    /// Failed otherwise.
    pub errors: u64,
    /// Time spent in all of them, in milliseconds (divide by `calls` for the mean).
    pub total_ms: f64,
}

/// By tenant, then by (service, method): a served call finds its tally without allocating.
type Tallies = HashMap<String, HashMap<(&'static str, &'static str), MethodTally>>;

fn tallies() -> &'static Mutex<Tallies> {
    static TALLIES: OnceLock<Mutex<Tallies>> = OnceLock::new();
    TALLIES.get_or_init(Mutex::default)
}

/// What this process served so far, per tenant and method, sorted.
pub fn tally() -> Vec<MethodTally> {
    let mut all: Vec<MethodTally> = tallies()
        .lock()
        .expect("lock")
        .values()
        .flat_map(HashMap::values)
        .cloned()
        .collect();
    all.sort_by(|a, b| (&a.tenant, &a.service, &a.method).cmp(&(&b.tenant, &b.service, &b.method)));
    all
}

/// Counts one call.
pub fn call(
    side: Side,
    tenant: &str,
    service: &'static str,
    method: &'static str,
    outcome: Outcome,
    took: Duration,
) {
    let i = instruments();
    let mut attributes = vec![
        KeyValue::new("tenant", tenant.to_owned()),
        KeyValue::new("service", service),
        KeyValue::new("method", method),
        KeyValue::new("side", side.as_str()),
    ];
    i.duration.record(took.as_secs_f64() * 1e3, &attributes);
    attributes.push(KeyValue::new("outcome", outcome.as_str()));
    i.calls.add(1, &attributes);
    if side == Side::Server {
        let mut tallies = tallies().lock().expect("lock");
        if !tallies.contains_key(tenant) {
            tallies.insert(tenant.to_owned(), HashMap::new());
        }
        let by_method = tallies.get_mut(tenant).expect("inserted above");
        let t = by_method
            .entry((service, method))
            .or_insert_with(|| MethodTally {
                tenant: tenant.to_owned(),
                service: service.into(),
                method: method.into(),
                ..MethodTally::default()
            });
        t.calls += 1;
        t.total_ms += took.as_secs_f64() * 1e3;
        match outcome {
            Outcome::Ok => {}
            Outcome::Degraded => t.degraded += 1,
            Outcome::Shed => t.shed += 1,
            Outcome::TimedOut => t.timed_out += 1,
            Outcome::Error => t.errors += 1,
        }
    }
}

/// Counts one publish or consume of an event (`operation` = `publish` or `process`).
pub fn event(
    tenant: &str,
    service: &'static str,
    event: &'static str,
    operation: &'static str,
    outcome: &'static str,
) {
    instruments().events.add(
        1,
        &[
            KeyValue::new("tenant", tenant.to_owned()),
            KeyValue::new("service", service),
            KeyValue::new("event", event),
            KeyValue::new("operation", operation),
            KeyValue::new("outcome", outcome),
        ],
    );
}

/// Reports bulkhead use at every export: `read` answers `(tenant, dependency, in_use)` rows.
/// Keep the returned gauge alive as long as it should report.
pub fn observe_bulkheads<F>(read: F) -> ObservableGauge<u64>
where
    F: Fn() -> Vec<(String, String, u64)> + Send + Sync + 'static,
{
    meter()
        .u64_observable_gauge("mesh.bulkhead.in_use")
        .with_description("bulkhead permits taken, per tenant and dependency")
        .with_callback(move |gauge| {
            for (tenant, dependency, in_use) in read() {
                gauge.observe(
                    in_use,
                    &[
                        KeyValue::new("tenant", tenant),
                        KeyValue::new("dependency", dependency),
                    ],
                );
            }
        })
        .build()
}

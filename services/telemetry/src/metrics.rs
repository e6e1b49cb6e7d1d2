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

use std::{sync::OnceLock, time::Duration};

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

//! Per-tenant metrics, on the global OpenTelemetry meter (exported over OTLP by [`crate::init`];
//! no-ops without it):
//!
//! - `rpc.server.call.duration` and `rpc.client.call.duration` (histograms, seconds, as the
//!   current OpenTelemetry RPC conventions name them; the older `rpc.server.duration` was in
//!   ms): every unary call served or made, timed to its status, by `rpc.system`,
//!   `rpc.service`, `rpc.method`, `rpc.grpc.status_code`, and the mesh's `tenant`,
//!   `contract.version` and `outcome` (so degraded, shed and cancelled calls are counted as
//!   such; a histogram's count is the number of calls);
//! - `rpc.server.stream.duration` and `rpc.client.stream.duration`: the same for streaming
//!   calls (a terminal's `Attach`), timed to their end, with boundaries up to a day: a stream
//!   that lasts hours is no slow call, and kept out of the calls' percentiles;
//! - `mesh.queue.messages` (gauge) by `tenant`, `queue` and `state` (`waiting`: a consumer's
//!   backlog; `dead_letters`), from [`observe_queues`] where the node reads the broker;
//! - `mesh.events` (counter): publishes and consumes by `tenant`, `service`, `event`,
//!   `operation` and `outcome`;
//! - `mesh.bulkhead.in_use` and `mesh.bulkhead.capacity` (gauges): permits taken and in all,
//!   per `tenant` and `dependency`, from [`observe_bulkheads`];
//! - `mesh.event.lag` (histogram, seconds): from an event's publish to its consumer done with
//!   it, by `tenant`, `service`, `event` and `consumer` (`consumer="storage"` is how far
//!   storage is behind), from [`event_lag`];
//! - `mesh.switch.off` (gauge, 1 per switch that is off) by `tenant` (`*` for all), `target`
//!   and `changed_by`, and `mesh.tenant.serving` (gauge, 1 or 0) by `tenant` and `state`, from
//!   [`observe_control`] in the process that holds the control plane.
//!
//! The calls a process served are also tallied in the process ([`tally`]), which is how
//! `meshctl status` reads them without a metrics backend.

use std::{
    collections::HashMap,
    sync::{
        Arc, OnceLock, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry::{
    KeyValue,
    metrics::{Counter, Histogram, Meter, ObservableGauge},
};

use crate::{Outcome, Side};

struct Instruments {
    server: Histogram<f64>,
    client: Histogram<f64>,
    server_streams: Histogram<f64>,
    client_streams: Histogram<f64>,
    events: Counter<u64>,
    lag: Histogram<f64>,
}

fn meter() -> Meter {
    opentelemetry::global::meter("mesh")
}

/// A stream's lifetime, in seconds: from 0.1 s (refused or cut at once) to a day.
const STREAM_BOUNDARIES: [f64; 10] = [
    0.1,
    1.0,
    10.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    12.0 * 3600.0,
    86400.0,
];

/// Created on first use, after [`crate::init`] installed the meter provider.
fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = meter();
        // seconds, with boundaries from 0.1 ms to 10 s (the SDK's default ones are for ms)
        let boundaries = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0,
        ];
        Instruments {
            server: meter
                .f64_histogram("rpc.server.call.duration")
                .with_unit("s")
                .with_description("duration of inbound RPCs, to their status")
                .with_boundaries(boundaries.clone())
                .build(),
            client: meter
                .f64_histogram("rpc.client.call.duration")
                .with_unit("s")
                .with_description("duration of outbound RPCs, to their status")
                .with_boundaries(boundaries)
                .build(),
            server_streams: meter
                .f64_histogram("rpc.server.stream.duration")
                .with_unit("s")
                .with_description("duration of inbound streaming RPCs, to their end")
                .with_boundaries(STREAM_BOUNDARIES.to_vec())
                .build(),
            client_streams: meter
                .f64_histogram("rpc.client.stream.duration")
                .with_unit("s")
                .with_description("duration of outbound streaming RPCs, to their end")
                .with_boundaries(STREAM_BOUNDARIES.to_vec())
                .build(),
            events: meter
                .u64_counter("mesh.events")
                .with_description("events published and consumed, by outcome")
                .build(),
            lag: meter
                .f64_histogram("mesh.event.lag")
                .with_unit("s")
                .with_description("from an event's publish to its consumer done with it")
                .with_boundaries(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0, 300.0, 900.0,
                ])
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
    /// The contract major it was called at (`v2`): a grey release shows its calls per major.
    #[serde(default)]
    pub major: String,
    /// Method name.
    pub method: String,
    /// Every call.
    pub calls: u64,
    /// Answered by a degradation switch.
    pub degraded: u64,
    /// Refused for capacity the platform lacked (bulkhead, stream limit).
    pub shed: u64,
    /// Refused because the caller went over its own quota (its tenant's rate, its terminals).
    #[serde(default)]
    pub over_quota: u64,
    /// Out of time.
    pub timed_out: u64,
    /// Failed otherwise.
    pub errors: u64,
    /// Time spent in all of them, in milliseconds (divide by `calls` for the mean).
    pub total_ms: f64,
}

/// One tally's counters, bumped without a lock.
#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    degraded: AtomicU64,
    shed: AtomicU64,
    over_quota: AtomicU64,
    timed_out: AtomicU64,
    errors: AtomicU64,
    total_us: AtomicU64,
}

/// By tenant, then by (service, protobuf service, method): the protobuf service names the
/// major. A served call takes a read lock and bumps atomics; only a tenant's first call to a
/// method takes the write lock.
type Tallies = HashMap<String, HashMap<(&'static str, &'static str, &'static str), Arc<Counters>>>;

fn tallies() -> &'static RwLock<Tallies> {
    static TALLIES: OnceLock<RwLock<Tallies>> = OnceLock::new();
    TALLIES.get_or_init(RwLock::default)
}

fn counters(tenant: &str, key: (&'static str, &'static str, &'static str)) -> Arc<Counters> {
    if let Some(found) = tallies()
        .read()
        .expect("lock")
        .get(tenant)
        .and_then(|m| m.get(&key))
    {
        return found.clone();
    }
    tallies()
        .write()
        .expect("lock")
        .entry(tenant.to_owned())
        .or_default()
        .entry(key)
        .or_default()
        .clone()
}

/// What this process served so far, per tenant and method, sorted.
pub fn tally() -> Vec<MethodTally> {
    let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
    let mut all: Vec<MethodTally> = tallies()
        .read()
        .expect("lock")
        .iter()
        .flat_map(|(tenant, by_method)| {
            by_method
                .iter()
                .map(|((service, rpc_service, method), c)| MethodTally {
                    tenant: tenant.clone(),
                    service: (*service).into(),
                    // `order.v2.Order`: the package's last part
                    major: rpc_service
                        .rsplit_once('.')
                        .and_then(|(package, _)| package.rsplit('.').next())
                        .unwrap_or_default()
                        .into(),
                    method: (*method).into(),
                    calls: get(&c.calls),
                    degraded: get(&c.degraded),
                    shed: get(&c.shed),
                    over_quota: get(&c.over_quota),
                    timed_out: get(&c.timed_out),
                    errors: get(&c.errors),
                    total_ms: get(&c.total_us) as f64 / 1e3,
                })
        })
        .collect();
    all.sort_by(|a, b| {
        (&a.tenant, &a.service, &a.major, &a.method)
            .cmp(&(&b.tenant, &b.service, &b.major, &b.method))
    });
    all
}

/// Whether metrics leave the process: without an exporter the OpenTelemetry instruments are
/// skipped (their attributes cost allocations per call), the tally is kept.
static EXPORTED: AtomicBool = AtomicBool::new(false);

/// Called by [`crate::init`] once metrics are exported.
pub(crate) fn exported() {
    EXPORTED.store(true, Ordering::Relaxed);
}

/// One call that ended, as [`call`] counts it.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    /// Served or made.
    pub side: Side,
    /// Whose call (empty when it named none).
    pub tenant: &'a str,
    /// The mesh's service name (`message`).
    pub service: &'static str,
    /// The fully qualified protobuf service (`message.v1.Message`).
    pub rpc_service: &'static str,
    /// The contract's version.
    pub version: &'static str,
    /// The method (`Send`).
    pub method: &'static str,
    /// Whether it streams (its duration is then a stream's lifetime, in its own series).
    pub streaming: bool,
    /// Its gRPC status.
    pub code: tonic::Code,
    /// How it ended.
    pub outcome: Outcome,
    /// From the request to the status.
    pub took: Duration,
}

/// Counts one call.
pub fn call(call: &Call<'_>) {
    let &Call {
        side,
        tenant,
        service,
        rpc_service,
        method,
        outcome,
        took,
        ..
    } = call;
    if side == Side::Server {
        let c = counters(tenant, (service, rpc_service, method));
        c.calls.fetch_add(1, Ordering::Relaxed);
        c.total_us.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let by_outcome = match outcome {
            // the caller's own refusals are no error of the service's
            Outcome::Ok | Outcome::Cancelled | Outcome::Refused => None,
            Outcome::Degraded => Some(&c.degraded),
            Outcome::Shed => Some(&c.shed),
            Outcome::OverQuota => Some(&c.over_quota),
            Outcome::TimedOut => Some(&c.timed_out),
            Outcome::Error => Some(&c.errors),
        };
        if let Some(n) = by_outcome {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }
    if !EXPORTED.load(Ordering::Relaxed) {
        return;
    }
    let i = instruments();
    let attributes = [
        KeyValue::new("rpc.system", "grpc"),
        KeyValue::new("rpc.service", call.rpc_service),
        KeyValue::new("rpc.method", method),
        KeyValue::new("rpc.grpc.status_code", call.code as i64),
        KeyValue::new("tenant", tenant.to_owned()),
        KeyValue::new("contract.version", call.version),
        KeyValue::new("outcome", outcome.as_str()),
    ];
    let histogram = match (side, call.streaming) {
        (Side::Server, false) => &i.server,
        (Side::Client, false) => &i.client,
        (Side::Server, true) => &i.server_streams,
        (Side::Client, true) => &i.client_streams,
    };
    histogram.record(took.as_secs_f64(), &attributes);
}

/// Counts one publish or consume of an event (`operation` = `publish` or `process`).
pub fn event(
    tenant: &str,
    service: &'static str,
    event: &'static str,
    operation: &'static str,
    outcome: &'static str,
) {
    if !EXPORTED.load(Ordering::Relaxed) {
        return;
    }
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

/// Counts how long one event waited, from its publish to `consumer` done with it (a clock
/// behind the publisher's reads as no wait).
pub fn event_lag(
    tenant: &str,
    service: &'static str,
    event: &'static str,
    consumer: &str,
    lag: Duration,
) {
    if !EXPORTED.load(Ordering::Relaxed) {
        return;
    }
    instruments().lag.record(
        lag.as_secs_f64(),
        &[
            KeyValue::new("tenant", tenant.to_owned()),
            KeyValue::new("service", service),
            KeyValue::new("event", event),
            KeyValue::new("consumer", consumer.to_owned()),
        ],
    );
}

/// A switch that is off, as [`observe_control`] reports it.
#[derive(Clone, Debug)]
pub struct SwitchOff {
    /// Its tenant, `*` for every tenant.
    pub tenant: String,
    /// What it turns off (`recommend`, `tier>=2`).
    pub target: String,
    /// Who turned it off (`ops`, `config`, `auto:<rule>`).
    pub changed_by: String,
}

impl From<&mesh_config::switch::Switch> for SwitchOff {
    fn from(switch: &mesh_config::switch::Switch) -> Self {
        Self {
            tenant: switch
                .tenant
                .as_ref()
                .map_or_else(|| "*".to_owned(), ToString::to_string),
            target: switch.target.to_string(),
            changed_by: switch.changed_by.clone(),
        }
    }
}

/// What the control plane knows, as [`observe_control`] reads it at every export or scrape:
/// the switches that are off, and each tenant with its state (`serving`, `starting`, `down`).
#[derive(Clone, Debug, Default)]
pub struct ControlState {
    /// Every switch that is off.
    pub switches: Vec<SwitchOff>,
    /// Every tenant and its state.
    pub tenants: Vec<(String, String)>,
}

/// Reports the control plane's switches and tenants at every export (`mesh.switch.off`,
/// `mesh.tenant.serving`). Keep the returned gauges alive as long as they should report.
pub fn observe_control<F>(read: F) -> Vec<ObservableGauge<u64>>
where
    F: Fn() -> ControlState + Send + Sync + 'static,
{
    let read = Arc::new(read);
    let switches = {
        let read = read.clone();
        meter()
            .u64_observable_gauge("mesh.switch.off")
            .with_description(
                "switches that are off (1 each), by tenant (* for all), target and who",
            )
            .with_callback(move |gauge| {
                for switch in read().switches {
                    gauge.observe(
                        1,
                        &[
                            KeyValue::new("tenant", switch.tenant),
                            KeyValue::new("target", switch.target),
                            KeyValue::new("changed_by", switch.changed_by),
                        ],
                    );
                }
            })
            .build()
    };
    let tenants = meter()
        .u64_observable_gauge("mesh.tenant.serving")
        .with_description("1 for a tenant served, 0 for one starting or down, by state")
        .with_callback(move |gauge| {
            for (tenant, state) in read().tenants {
                let serving = u64::from(state == "serving");
                gauge.observe(
                    serving,
                    &[
                        KeyValue::new("tenant", tenant),
                        KeyValue::new("state", state),
                    ],
                );
            }
        })
        .build();
    vec![switches, tenants]
}

/// Reports bulkhead use at every export (`mesh.bulkhead.in_use` and `mesh.bulkhead.capacity`):
/// `read` answers `(tenant, dependency, in_use, capacity)` rows. Keep the returned gauges alive
/// as long as they should report.
pub fn observe_bulkheads<F>(read: F) -> Vec<ObservableGauge<u64>>
where
    F: Fn() -> Vec<(String, String, u64, u64)> + Send + Sync + 'static,
{
    let read = Arc::new(read);
    let gauge = |name: &'static str, description: &'static str, capacity: bool| {
        let read = read.clone();
        meter()
            .u64_observable_gauge(name)
            .with_description(description)
            .with_callback(move |gauge| {
                for (tenant, dependency, in_use, size) in read() {
                    gauge.observe(
                        if capacity { size } else { in_use },
                        &[
                            KeyValue::new("tenant", tenant),
                            KeyValue::new("dependency", dependency),
                        ],
                    );
                }
            })
            .build()
    };
    vec![
        gauge(
            "mesh.bulkhead.in_use",
            "bulkhead permits taken, per tenant and dependency",
            false,
        ),
        gauge(
            "mesh.bulkhead.capacity",
            "bulkhead permits in all, per tenant and dependency",
            true,
        ),
    ]
}

/// Reports the broker's queues at every export (`mesh.queue.messages`): `read` answers
/// `(tenant, queue, waiting, dead_letters)` rows, as last read from the broker. Keep the
/// returned gauge alive as long as it should report.
pub fn observe_queues<F>(read: F) -> ObservableGauge<u64>
where
    F: Fn() -> Vec<(String, String, u64, u64)> + Send + Sync + 'static,
{
    meter()
        .u64_observable_gauge("mesh.queue.messages")
        .with_description(
            "messages in a tenant's consumer queue: waiting for the consumer, or dead-lettered",
        )
        .with_callback(move |gauge| {
            for (tenant, queue, waiting, dead_letters) in read() {
                for (state, count) in [("waiting", waiting), ("dead_letters", dead_letters)] {
                    gauge.observe(
                        count,
                        &[
                            KeyValue::new("tenant", tenant.clone()),
                            KeyValue::new("queue", queue.clone()),
                            KeyValue::new("state", state),
                        ],
                    );
                }
            }
        })
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_over_its_quota_is_tallied_apart_from_capacity_shed() {
        let served = |outcome, code| {
            call(&Call {
                side: Side::Server,
                tenant: "tally-over-quota",
                service: "order",
                rpc_service: "order.v1.Order",
                version: "1.0.0",
                method: "ListOrders",
                streaming: false,
                code,
                outcome,
                took: Duration::from_micros(50),
            })
        };
        served(Outcome::OverQuota, tonic::Code::ResourceExhausted);
        served(Outcome::OverQuota, tonic::Code::ResourceExhausted);
        served(Outcome::Shed, tonic::Code::ResourceExhausted);
        served(Outcome::Ok, tonic::Code::Ok);
        let tally = tally()
            .into_iter()
            .find(|t| t.tenant == "tally-over-quota")
            .expect("tallied");
        assert_eq!(
            (tally.calls, tally.over_quota, tally.shed, tally.errors),
            (4, 2, 1, 0)
        );
        assert_eq!(tally.major, "v1");
    }
}

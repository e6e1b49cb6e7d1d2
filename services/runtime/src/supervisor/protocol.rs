//! What a supervisor and its workers say to each other, one line at a time over the worker's
//! stdin and stdout. No port, no discovery: the pipes exist anyway, and closing stdin stops the
//! worker (so a worker never outlives its supervisor).
//!
//! - supervisor → worker: a [`WorkerState`] as one JSON line, the whole desired state each time
//!   (idempotent; a late line never undoes a newer one: versions only grow);
//! - worker → supervisor: `READY <address>` once serving, `APPLIED <version>` after each state,
//!   `STATS <json>` ([`WorkerStats`]) now and then. Any other line is the worker's own output.

use mesh_contract::TenantId;
use serde::{Deserialize, Serialize};

use crate::layers::Switch;

/// The line a worker prints once it serves: `READY 127.0.0.1:4567`.
pub const READY_PREFIX: &str = "READY ";
/// The line a worker prints once it applied a state: `APPLIED 7`.
pub const APPLIED_PREFIX: &str = "APPLIED ";
/// The line a worker prints with its statistics: `STATS {...}`.
pub const STATS_PREFIX: &str = "STATS ";

/// The state a worker must run with; sent before it serves and after every change.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerState {
    /// Grows with every change, across the whole mesh.
    pub version: u64,
    /// Every switch that is off (all tenants; the worker applies those of its tenants).
    pub switches: Vec<Switch>,
    /// The tenants the worker serves: it starts serving any it does not yet.
    pub tenants: Vec<TenantId>,
}

impl WorkerState {
    /// The state as one line (no trailing newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("a worker state always serializes")
    }

    /// Parses a line a supervisor wrote.
    pub fn from_line(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }
}

/// How full one bulkhead is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkheadUse {
    /// Its tenant.
    pub tenant: TenantId,
    /// The dependency it guards.
    pub dependency: String,
    /// Permits taken.
    pub in_use: u32,
    /// Permits in all.
    pub capacity: u32,
}

/// What a worker reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// Every bulkhead of the process.
    pub bulkheads: Vec<BulkheadUse>,
    /// The calls it served, per tenant and method.
    #[serde(default)]
    pub calls: Vec<mesh_telemetry::metrics::MethodTally>,
}

/// A line a worker prints: the worker writes it with `Display`, the supervisor reads it with
/// [`WorkerLine::parse`], so the two sides cannot drift apart.
///
/// ```
/// use mesh_runtime::supervisor::protocol::WorkerLine;
///
/// let line = WorkerLine::Ready("127.0.0.1:4567".into()).to_string();
/// assert_eq!(line, "READY 127.0.0.1:4567");
/// assert_eq!(WorkerLine::parse(&line), WorkerLine::Ready("127.0.0.1:4567".into()));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum WorkerLine {
    /// It serves at this address.
    Ready(String),
    /// It applied this state version.
    Applied(u64),
    /// Its statistics.
    Stats(WorkerStats),
    /// Anything else: its own output, shown to the operator.
    Output(String),
}

impl std::fmt::Display for WorkerLine {
    /// The line as the worker prints it (without its newline).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ready(address) => write!(f, "{READY_PREFIX}{address}"),
            Self::Applied(version) => write!(f, "{APPLIED_PREFIX}{version}"),
            Self::Stats(stats) => write!(
                f,
                "{STATS_PREFIX}{}",
                serde_json::to_string(stats).expect("statistics always serialize")
            ),
            Self::Output(line) => f.write_str(line),
        }
    }
}

impl WorkerLine {
    /// Reads one line of a worker's stdout.
    pub fn parse(line: &str) -> Self {
        if let Some(address) = line.strip_prefix(READY_PREFIX) {
            return Self::Ready(address.trim().to_owned());
        }
        if let Some(version) = line
            .strip_prefix(APPLIED_PREFIX)
            .and_then(|v| v.trim().parse().ok())
        {
            return Self::Applied(version);
        }
        if let Some(stats) = line
            .strip_prefix(STATS_PREFIX)
            .and_then(|json| serde_json::from_str(json).ok())
        {
            return Self::Stats(stats);
        }
        Self::Output(line.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_lines_are_told_apart_and_garbage_is_plain_output() {
        assert_eq!(
            WorkerLine::parse("READY 127.0.0.1:4000"),
            WorkerLine::Ready("127.0.0.1:4000".into())
        );
        assert_eq!(WorkerLine::parse("APPLIED 12"), WorkerLine::Applied(12));
        assert_eq!(
            WorkerLine::parse("APPLIED twelve"),
            WorkerLine::Output("APPLIED twelve".into())
        );
        assert_eq!(
            WorkerLine::parse(
                r#"STATS {"bulkheads":[{"tenant":"mall","dependency":"order","in_use":3,"capacity":64}]}"#
            ),
            WorkerLine::Stats(WorkerStats {
                bulkheads: vec![BulkheadUse {
                    tenant: TenantId::new("mall").unwrap(),
                    dependency: "order".into(),
                    in_use: 3,
                    capacity: 64
                }],
                calls: Vec::new(),
            })
        );
        assert_eq!(
            WorkerLine::parse("STATS {not json"),
            WorkerLine::Output("STATS {not json".into())
        );
    }

    #[test]
    fn every_worker_line_survives_being_printed_and_read() {
        let stats = WorkerStats {
            bulkheads: vec![BulkheadUse {
                tenant: TenantId::new("mall").unwrap(),
                dependency: "locator".into(),
                in_use: 1,
                capacity: 8,
            }],
            calls: Vec::new(),
        };
        for line in [
            WorkerLine::Ready("127.0.0.1:4000".into()),
            WorkerLine::Applied(7),
            WorkerLine::Stats(stats),
            WorkerLine::Output("listening".into()),
        ] {
            assert_eq!(WorkerLine::parse(&line.to_string()), line);
        }
    }

    #[test]
    fn a_state_survives_its_line_and_a_bad_tenant_id_is_refused() {
        let state = WorkerState {
            version: 3,
            switches: vec![],
            tenants: vec![TenantId::new("mall").unwrap()],
        };
        assert_eq!(WorkerState::from_line(&state.to_line()).unwrap(), state);
        let err =
            WorkerState::from_line(r#"{"version":1,"switches":[],"tenants":["Not A Tenant"]}"#)
                .unwrap_err();
        assert!(err.to_string().contains("Not A Tenant"), "{err}");
    }
}

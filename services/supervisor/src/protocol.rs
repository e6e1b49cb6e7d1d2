//! What a supervisor and its workers say to each other, one line at a time over the worker's
//! stdin and stdout. No port, no discovery: the pipes exist anyway, and closing stdin stops the
//! worker (so a worker never outlives its supervisor).
//!
//! - supervisor → worker: a [`WorkerState`] as one JSON line, the whole desired state each time
//!   (idempotent; a late line never undoes a newer one: versions only grow);
//! - worker → supervisor: `READY <address>` once serving, `APPLIED <version>` after each state
//!   (`APPLIED <version> {"tenant":"reason"}` naming the tenants it could not serve),
//!   `STATS <json>` ([`WorkerStats`]) now and then, `METRICS <address>` once its Prometheus
//!   scrape endpoint listens (when metrics are scraped). Any other line is the worker's own
//!   output.
//!
//! A worker is handed each tenant's file itself ([`TenantSource`]), not a folder to read: it
//! validates that text as start-up and `meshctl tenant check` do, and a file it cannot serve
//! is one tenant down with its reason, never the process.

use std::collections::BTreeMap;

use mesh_contract::TenantId;
use serde::{Deserialize, Serialize};

use crate::layers::Switch;

/// The line a worker prints once it serves: `READY 127.0.0.1:4567`.
pub const READY_PREFIX: &str = "READY ";
/// The line a worker prints once it applied a state: `APPLIED 7`.
pub const APPLIED_PREFIX: &str = "APPLIED ";
/// The line a worker prints with its statistics: `STATS {...}`.
pub const STATS_PREFIX: &str = "STATS ";
/// The line a worker prints once its scrape endpoint listens: `METRICS 127.0.0.1:4568`.
pub const METRICS_PREFIX: &str = "METRICS ";

/// The state a worker must run with; sent before it serves and after every change.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerState {
    /// Grows with every change, across the whole mesh.
    pub version: u64,
    /// Every switch that is off (all tenants; the worker applies those of its tenants).
    pub switches: Vec<Switch>,
    /// The tenants the worker serves, with their files: it starts serving any it does not yet,
    /// applies a file that changed, and drains and stops serving any no longer listed.
    pub tenants: Vec<TenantSource>,
    /// Tenants removed for good whose stored data goes too (`meshctl tenant remove
    /// --purge-data`).
    #[serde(default)]
    pub purge: Vec<TenantId>,
}

/// One tenant's file, as the worker validates and serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSource {
    /// The tenant.
    pub id: TenantId,
    /// Its file name (`mall.toml`): names its environment overrides and its errors.
    pub file: String,
    /// The file's text.
    pub text: String,
    /// The credential this file's replaced, still accepted until its overlap ends (a rotation
    /// by `meshctl tenant update`): a process that starts serving the tenant meanwhile (a
    /// move, a restart) accepts it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_credential: Option<PreviousCredential>,
}

/// A replaced credential and the end of its overlap. Only its SHA-256 digest travels and is
/// kept (in the mesh's state, across restarts): the old secret itself is written nowhere.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousCredential {
    /// SHA-256 of the credential, hex.
    pub sha256: String,
    /// Accepted until then (milliseconds since the Unix epoch).
    pub until_ms: u64,
}

impl PreviousCredential {
    /// The credential `token`, replaced now, accepted for `overlap` more.
    pub fn replaced(token: &str, overlap: std::time::Duration) -> Self {
        let until = std::time::SystemTime::now() + overlap;
        let until_ms = until
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        Self {
            sha256: crate::auth::digest_hex(token.as_bytes()),
            until_ms: u64::try_from(until_ms).unwrap_or(u64::MAX),
        }
    }

    /// How long it is still accepted from now.
    pub fn remaining(&self) -> std::time::Duration {
        let until = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.until_ms);
        until
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
    }
}

impl TenantSource {
    /// Reads a tenant's file.
    pub fn read(id: TenantId, path: &std::path::Path) -> std::io::Result<Self> {
        Ok(Self {
            id,
            file: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            text: std::fs::read_to_string(path)?,
            previous_credential: None,
        })
    }
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
/// use mesh_supervisor::protocol::WorkerLine;
///
/// let line = WorkerLine::Ready("127.0.0.1:4567".into()).to_string();
/// assert_eq!(line, "READY 127.0.0.1:4567");
/// assert_eq!(WorkerLine::parse(&line), WorkerLine::Ready("127.0.0.1:4567".into()));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum WorkerLine {
    /// It serves at this address.
    Ready(String),
    /// It applied this state version; the tenants it could not serve, with the reason.
    Applied {
        /// The state's version.
        version: u64,
        /// Tenants of the state it does not serve, and why.
        down: BTreeMap<TenantId, String>,
    },
    /// Its statistics.
    Stats(WorkerStats),
    /// Its Prometheus scrape endpoint listens at this address.
    Metrics(String),
    /// Anything else: its own output, shown to the operator.
    Output(String),
}

impl std::fmt::Display for WorkerLine {
    /// The line as the worker prints it (without its newline).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ready(address) => write!(f, "{READY_PREFIX}{address}"),
            Self::Applied { version, down } if down.is_empty() => {
                write!(f, "{APPLIED_PREFIX}{version}")
            }
            Self::Applied { version, down } => write!(
                f,
                "{APPLIED_PREFIX}{version} {}",
                serde_json::to_string(down).expect("reasons always serialize")
            ),
            Self::Stats(stats) => write!(
                f,
                "{STATS_PREFIX}{}",
                serde_json::to_string(stats).expect("statistics always serialize")
            ),
            Self::Metrics(address) => write!(f, "{METRICS_PREFIX}{address}"),
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
        if let Some(applied) = line.strip_prefix(APPLIED_PREFIX) {
            let (version, down) = applied
                .trim()
                .split_once(' ')
                .unwrap_or((applied.trim(), ""));
            let down = match down {
                "" => Some(BTreeMap::new()),
                json => serde_json::from_str(json).ok(),
            };
            if let (Ok(version), Some(down)) = (version.parse(), down) {
                return Self::Applied { version, down };
            }
        }
        if let Some(address) = line.strip_prefix(METRICS_PREFIX) {
            return Self::Metrics(address.trim().to_owned());
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
        assert_eq!(
            WorkerLine::parse("APPLIED 12"),
            WorkerLine::Applied {
                version: 12,
                down: BTreeMap::new()
            }
        );
        assert_eq!(
            WorkerLine::parse(r#"APPLIED 12 {"newco":"its schema cannot be created"}"#),
            WorkerLine::Applied {
                version: 12,
                down: BTreeMap::from([(
                    TenantId::new("newco").unwrap(),
                    "its schema cannot be created".to_owned()
                )])
            }
        );
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
            WorkerLine::Applied {
                version: 7,
                down: BTreeMap::new(),
            },
            WorkerLine::Applied {
                version: 8,
                down: BTreeMap::from([(
                    TenantId::new("mall").unwrap(),
                    "a \"quoted\" reason".into(),
                )]),
            },
            WorkerLine::Stats(stats),
            WorkerLine::Metrics("127.0.0.1:4001".into()),
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
            tenants: vec![TenantSource {
                id: TenantId::new("mall").unwrap(),
                file: "mall.toml".into(),
                text: "id = \"mall\"\n".into(),
                previous_credential: None,
            }],
            purge: vec![],
        };
        assert_eq!(WorkerState::from_line(&state.to_line()).unwrap(), state);
        let err = WorkerState::from_line(
            r#"{"version":1,"switches":[],"tenants":[{"id":"Not A Tenant","file":"x.toml","text":""}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("Not A Tenant"), "{err}");
    }
}

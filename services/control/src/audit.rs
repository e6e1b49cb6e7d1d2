//! Who changed what, when: every admin change (and every automatic degradation) as one
//! [`AuditEntry`], kept durably where the node keeps its state and, when the nodes share state,
//! in the fleet's log too.
//!
//! - **This node's file** (`audit.jsonl` in the state folder): one JSON line per entry,
//!   appended and synced before the change's answer goes out, so an entry the operator was
//!   told about survives a crash. At 16 MiB it is rotated once (`audit.jsonl.1`).
//! - **The fleet's log** ([`AuditLog::share`]): a Redis stream (`<prefix>:control:audit`, the
//!   newest 100,000), each entry sealed with a key derived from the node credential: whoever
//!   reads Redis learns nothing, whoever writes it cannot add an entry of their making. `meshctl
//!   audit` through any node lists every node's changes. An entry written while Redis was away
//!   is added once it is back, and a Redis that restarted empty is refilled from each node's
//!   file ([`AuditLog::reconcile`]); the same entry read twice is one (its id).
//!
//! An entry never holds a secret: a tenant's state is written as its services and versions,
//! never its file.
//!
//! ```
//! use mesh_control::audit::{AuditEntry, AuditLog};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let log = AuditLog::in_dir(dir.path(), "node-a");
//! log.record(AuditEntry::new("alice", "switch.off", "tier>=2@mall").tenant("mall").after("off"))
//!     .await
//!     .unwrap();
//! let (entries, _partial) = log.list(&Default::default()).await;
//! assert_eq!((entries[0].operator.as_str(), entries[0].node.as_str()), ("alice", "node-a"));
//! # });
//! ```

use std::{
    collections::{BTreeMap, HashSet},
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};

use super::{shared::SharedError, versioned::Versioned};

/// One admin change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Unique (a UUIDv7, ordered by time): the same entry read from two places is one.
    pub id: String,
    /// Unix time in milliseconds.
    pub at_ms: i64,
    /// Who: an operator's name, or `auto:<rule>`.
    pub operator: String,
    /// What (`switch.off`, `tenant.add`, ...).
    pub action: String,
    /// The tenant concerned: `*` for every tenant at once (a switch for all), empty when none
    /// is known (a tenant file that did not read).
    #[serde(default)]
    pub tenant: String,
    /// What it acted on (a switch's scope, a tenant, a queue).
    pub subject: String,
    /// State before, as `meshctl` shows it.
    #[serde(default)]
    pub before: String,
    /// State after.
    #[serde(default)]
    pub after: String,
    /// The reason the operator gave.
    #[serde(default)]
    pub reason: String,
    /// `ok`, or why it was refused.
    pub outcome: String,
    /// The node that made the change.
    pub node: String,
    /// Where the operator called from.
    #[serde(default)]
    pub peer: String,
}

impl AuditEntry {
    /// `operator` did `action` on `subject` (successfully, until [`AuditEntry::refused`]).
    pub fn new(
        operator: impl Into<String>,
        action: impl Into<String>,
        subject: impl Into<String>,
    ) -> Self {
        Self {
            operator: operator.into(),
            action: action.into(),
            subject: subject.into(),
            outcome: "ok".into(),
            ..Default::default()
        }
    }

    /// The tenant concerned.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = tenant.into();
        self
    }

    /// The state before.
    pub fn before(mut self, before: impl Into<String>) -> Self {
        self.before = before.into();
        self
    }

    /// The state after.
    pub fn after(mut self, after: impl Into<String>) -> Self {
        self.after = after.into();
        self
    }

    /// The operator's reason.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }

    /// Where the operator called from.
    pub fn peer(mut self, peer: impl Into<String>) -> Self {
        self.peer = peer.into();
        self
    }

    /// It was refused, for `why`; nothing changed.
    pub fn refused(mut self, why: impl std::fmt::Display) -> Self {
        self.outcome = format!("refused: {why}");
        self.after = self.before.clone();
        self
    }
}

/// Which entries to list.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Only this tenant's (and those of every tenant at once); `None` for all.
    pub tenant: Option<String>,
    /// Only this operator's.
    pub operator: Option<String>,
    /// Most entries, newest first; 0 = 50.
    pub limit: usize,
}

impl AuditFilter {
    fn admits(&self, entry: &AuditEntry) -> bool {
        self.tenant
            .as_ref()
            .is_none_or(|t| entry.tenant == *t || entry.tenant == "*")
            && self.operator.as_ref().is_none_or(|o| entry.operator == *o)
    }

    fn limit(&self) -> usize {
        match self.limit {
            0 => 50,
            n => n.min(MAX_LISTED),
        }
    }
}

/// Most entries one listing returns.
pub const MAX_LISTED: usize = 1000;
/// Entries the fleet's log keeps (the newest).
const FLEET_KEEPS: usize = 100_000;
/// A node's file is rotated past this.
const FILE_ROTATES_AT: u64 = 16 << 20;

/// Why an entry could not be kept.
#[derive(Debug, thiserror::Error)]
#[error("audit log {}: {source}", path.display())]
pub struct AuditError {
    path: PathBuf,
    source: std::io::Error,
}

/// The audit log of one node. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    node: String,
    /// Appends one at a time (whole lines, in order).
    file: tokio::sync::Mutex<()>,
    fleet: Mutex<Option<Versioned<()>>>,
    /// Entries not yet in the fleet's log (it was away when they were written).
    unshared: Mutex<Vec<AuditEntry>>,
}

impl AuditLog {
    /// The log of node `node`, in `audit.jsonl` in `dir` (the state folder).
    pub fn in_dir(dir: &Path, node: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                path: dir.join("audit.jsonl"),
                node: node.to_owned(),
                file: tokio::sync::Mutex::new(()),
                fleet: Mutex::new(None),
                unshared: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The file this node keeps its entries in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Shares the log with the nodes of mesh `prefix` at the Redis at `url`, sealed with a key
    /// derived from `node_credential`; what this node wrote before is added to it.
    pub async fn share(
        &self,
        url: &str,
        prefix: &str,
        node_credential: &str,
    ) -> Result<(), SharedError> {
        let fleet = Versioned::connect(url, format!("{prefix}:control:audit"))
            .await?
            .sealed("audit log", node_credential);
        *self.inner.fleet.lock().expect("lock") = Some(fleet);
        if let Err(err) = self.reconcile().await {
            tracing::warn!(error = %err, "audit log: this node's entries reach the fleet's log when Redis answers");
        }
        Ok(())
    }

    /// Keeps `entry` (stamped with this node, the time and an id): in this node's file before
    /// it returns, then in the fleet's log (or later, when that is away).
    pub async fn record(&self, mut entry: AuditEntry) -> Result<AuditEntry, AuditError> {
        // time-ordered, and in order within this process: two entries of one millisecond list
        // in the order they were made
        entry.id = uuid::Uuid::now_v7().simple().to_string();
        entry.at_ms = mesh_contract::fields::now_ms();
        entry.node.clone_from(&self.inner.node);
        tracing::info!(
            target: "mesh::audit",
            operator = %entry.operator,
            action = %entry.action,
            tenant = %entry.tenant,
            subject = %entry.subject,
            before = %entry.before,
            after = %entry.after,
            outcome = %entry.outcome,
            peer = %entry.peer,
            "admin change"
        );
        self.append(&entry).await?;
        self.inner
            .unshared
            .lock()
            .expect("lock")
            .push(entry.clone());
        if let Err(err) = self.flush().await {
            tracing::warn!(error = %err, "audit entry kept in this node's file; the fleet's log gets it when Redis is back");
        }
        Ok(entry)
    }

    async fn append(&self, entry: &AuditEntry) -> Result<(), AuditError> {
        let _one_at_a_time = self.inner.file.lock().await;
        let path = self.inner.path.clone();
        let mut line = serde_json::to_vec(entry).expect("an entry is JSON");
        line.push(b'\n');
        let error = |source| AuditError {
            path: path.clone(),
            source,
        };
        tokio::task::spawn_blocking({
            let path = path.clone();
            move || {
                if std::fs::metadata(&path).is_ok_and(|m| m.len() > FILE_ROTATES_AT) {
                    std::fs::rename(&path, path.with_extension("jsonl.1"))?;
                }
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?;
                file.write_all(&line)?;
                file.sync_data()
            }
        })
        .await
        .map_err(|e| error(std::io::Error::other(e)))?
        .map_err(error)
    }

    fn fleet(&self) -> Option<Versioned<()>> {
        self.inner.fleet.lock().expect("lock").clone()
    }

    /// Adds the entries the fleet's log lacks (written while it was away).
    async fn flush(&self) -> Result<(), SharedError> {
        let Some(fleet) = self.fleet() else {
            self.inner.unshared.lock().expect("lock").clear();
            return Ok(());
        };
        let pending = std::mem::take(&mut *self.inner.unshared.lock().expect("lock"));
        if let Err(err) = add(&fleet, &pending).await {
            let mut unshared = self.inner.unshared.lock().expect("lock");
            let newer = std::mem::replace(&mut *unshared, pending);
            unshared.extend(newer);
            return Err(err);
        }
        Ok(())
    }

    /// Brings the fleet's log up to date with this node: entries written while it was away,
    /// and, when it restarted empty, this node's recent entries (the newest
    /// [`MAX_LISTED`]). Run on [`AuditLog::share`] and every few seconds after.
    pub async fn reconcile(&self) -> Result<(), SharedError> {
        let Some(fleet) = self.fleet() else {
            return Ok(());
        };
        let mut connection = fleet.connection();
        let length: usize = redis::cmd("XLEN")
            .arg(fleet.key("log"))
            .query_async(&mut connection)
            .await
            .map_err(|e| fleet.error(e))?;
        if length == 0 {
            let mine = self.read_file().await;
            let start = mine.len().saturating_sub(MAX_LISTED);
            add(&fleet, &mine[start..]).await?;
        }
        self.flush().await
    }

    /// Reconciles every `every` for ever.
    pub async fn keep_reconciled(self, every: std::time::Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Err(err) = self.reconcile().await {
                tracing::debug!(error = %err, "audit log not reconciled with the fleet's");
            }
        }
    }

    /// The entries `filter` admits, newest first, and whether the list is partial: the nodes
    /// share a log that could not be read, so it holds this node's own entries only.
    pub async fn list(&self, filter: &AuditFilter) -> (Vec<AuditEntry>, bool) {
        let mut entries: BTreeMap<(i64, String), AuditEntry> = BTreeMap::new();
        let mut seen = HashSet::new();
        let mut keep = |entry: AuditEntry| {
            if filter.admits(&entry) && seen.insert(entry.id.clone()) {
                entries.insert((entry.at_ms, entry.id.clone()), entry);
            }
        };
        for entry in self.read_file().await {
            keep(entry);
        }
        let partial = match self.fleet() {
            None => false,
            Some(fleet) => match read_fleet(&fleet).await {
                Ok(theirs) => {
                    theirs.into_iter().for_each(&mut keep);
                    false
                }
                Err(err) => {
                    tracing::warn!(error = %err, "the fleet's audit log could not be read: this node's entries only");
                    true
                }
            },
        };
        let limit = filter.limit();
        (entries.into_values().rev().take(limit).collect(), partial)
    }

    /// This node's entries, oldest first (the rotated file's, then the current one's); a line
    /// that does not read (a crash mid-line) is skipped.
    async fn read_file(&self) -> Vec<AuditEntry> {
        let _one_at_a_time = self.inner.file.lock().await;
        let path = self.inner.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut entries = Vec::new();
            for path in [path.with_extension("jsonl.1"), path] {
                let Ok(text) = std::fs::read_to_string(&path) else {
                    continue;
                };
                entries.extend(
                    text.lines()
                        .filter_map(|line| serde_json::from_str::<AuditEntry>(line).ok()),
                );
            }
            entries
        })
        .await
        .unwrap_or_default()
    }
}

/// Appends `entries` to the fleet's stream, sealed, keeping its newest [`FLEET_KEEPS`].
async fn add(fleet: &Versioned<()>, entries: &[AuditEntry]) -> Result<(), SharedError> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for entry in entries {
        let sealed = fleet.seal_bytes(&serde_json::to_vec(entry).expect("an entry is JSON"));
        pipe.cmd("XADD")
            .arg(fleet.key("log"))
            .arg("MAXLEN")
            .arg("~")
            .arg(FLEET_KEEPS)
            .arg("*")
            .arg("entry")
            .arg(sealed)
            .ignore();
    }
    let mut connection = fleet.connection();
    pipe.query_async::<()>(&mut connection)
        .await
        .map_err(|e| fleet.error(e))
}

/// The fleet's newest entries ([`MAX_LISTED`] per node at most, read newest first); one that
/// does not open with the mesh's key is ignored (and logged).
async fn read_fleet(fleet: &Versioned<()>) -> Result<Vec<AuditEntry>, SharedError> {
    let mut connection = fleet.connection();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(fleet.key("log"))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(FLEET_KEEPS.min(20 * MAX_LISTED))
        .query_async(&mut connection)
        .await
        .map_err(|e| fleet.error(e))?;
    let mut entries = Vec::new();
    let mut foreign = 0;
    for id in reply.ids {
        let opened = id
            .get::<Vec<u8>>("entry")
            .and_then(|sealed| fleet.open_bytes(&sealed))
            .and_then(|plain| serde_json::from_slice::<AuditEntry>(&plain).ok());
        match opened {
            Some(entry) => entries.push(entry),
            None => foreign += 1,
        }
    }
    if foreign > 0 {
        tracing::warn!(
            foreign,
            "audit entries in Redis that this mesh did not seal are ignored"
        );
    }
    Ok(entries)
}

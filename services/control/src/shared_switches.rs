//! The switch state the nodes of one mesh share: one versioned entry per switch in Redis.
//!
//! Two operators switching different things through two nodes at the same moment must both
//! win, a node that was away (paused, cut off) must catch up, and a store that restarted empty
//! must be refilled, not taken for "every switch on". So:
//!
//! The store is a [`Versioned`] map (`<prefix>:control:switch`):
//!
//! - **One entry per switch**, never the whole list: `<prefix>:control:switch:entries` is a
//!   hash from a switch's key (`recommend@mall`, `tier>=2@*`) to `<revision>|<entry>`, where
//!   the entry says whether the switch is off or back on (a tombstone, kept so a node that
//!   was away learns the switch went back on). A write never touches another switch's entry.
//! - **A revision per write**: `<prefix>:control:switch:revision` counts every write; a write
//!   takes the next revision in the same Lua script that stores the entry and announces it
//!   (`PUBLISH <prefix>:control:switch:changed <revision>`), so the revisions order every
//!   change of the mesh and a node knows from one number whether it is behind.
//! - **An epoch**: `<prefix>:control:switch:epoch`, a random id set by whoever fills an empty
//!   store. A node that finds it missing (Redis restarted empty) or changed fills the store
//!   again with what it holds (entries missing only: [`SharedSwitches::seed`]).
//! - **Reconciliation**: every node compares its epoch and revision with the store's on every
//!   announcement and every [`RECONCILE_EVERY`], writes what it changed while the store was
//!   away, then applies the store's entries.
//! - **Who applied what**: each node writes the revision it applied and how many of its
//!   processes confirmed it (`<prefix>:control:switch:applied`, a report per node with its
//!   time, live while renewed), so a change reports what the whole fleet applied
//!   ([`SharedSwitches::applied`]).
//!
//! Why Redis and not etcd: every multi-node mesh runs Redis already (who is connected where),
//! and what a switch needs from the store is one atomic write with a revision and an
//! announcement, which a Lua script gives; etcd would add a service to run and secure for
//! that alone. What etcd has and this lacks is a history to watch from a revision: here a node
//! that missed announcements reads the whole state (a few entries), which is enough.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use super::{
    shared::SharedError,
    versioned::{Snapshot, Versioned},
};
use crate::layers::Switch;

pub use super::versioned::RECONCILE_EVERY;

/// How long a node's report of what it applied lives unless renewed: a node gone for longer
/// is not waited for.
pub const APPLIED_TTL: Duration = Duration::from_secs(5);

/// One switch's latest state in the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// `false`: the switch is off (degraded); `true`: it was turned back on.
    pub on: bool,
    /// The switch (who changed it, when, why).
    pub switch: Switch,
}

impl Snapshot<Entry> {
    /// The switches off, in key order.
    pub fn off(&self) -> Vec<Switch> {
        self.entries
            .values()
            .filter(|(_, e)| !e.on)
            .map(|(_, e)| e.switch.clone())
            .collect()
    }
}

/// What one node (or one worker following the store) applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeApplied {
    /// The node.
    pub node: String,
    /// The store revision it applied last.
    pub revision: u64,
    /// Its processes that confirmed that revision.
    pub processes: u64,
}

/// The key of a switch in the store: its target and tenant (`*` for every tenant).
pub fn key(switch: &Switch) -> String {
    match &switch.tenant {
        Some(tenant) => format!("{}@{tenant}", switch.target),
        None => format!("{}@*", switch.target),
    }
}

/// The switch state of one mesh in Redis. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SharedSwitches {
    store: Versioned<Entry>,
}

impl SharedSwitches {
    /// The switch state of the mesh `prefix` at the Redis at `url` (`redis://`, or
    /// `rediss://` for TLS; a user and password in the URL for an ACL user).
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, SharedError> {
        Ok(Self {
            store: Versioned::connect(url, format!("{prefix}:control:switch")).await?,
        })
    }

    /// The store's epoch and revision ([`Versioned::head`]).
    pub async fn head(&self) -> Result<(Option<String>, u64), SharedError> {
        self.store.head().await
    }

    /// Everything the store holds, read at one moment.
    pub async fn snapshot(&self) -> Result<Snapshot<Entry>, SharedError> {
        self.store.snapshot().await
    }

    /// Writes one switch's entry with the next revision and announces it; `None` when the
    /// store has no epoch (it restarted empty): [`SharedSwitches::seed`] it first.
    pub async fn write(&self, entry: &Entry) -> Result<Option<u64>, SharedError> {
        self.store.write(&key(&entry.switch), entry).await
    }

    /// Fills the store with the entries it lacks (a store that restarted empty gets back what
    /// the nodes knew: switches off and switches turned back on alike; one that has an entry
    /// keeps its own), and gives it an epoch if it has none. The store's epoch after.
    pub async fn seed(&self, entries: &[Entry]) -> Result<String, SharedError> {
        let keyed: Vec<(String, Entry)> = entries
            .iter()
            .map(|e| (key(&e.switch), e.clone()))
            .collect();
        self.store.seed(&keyed).await
    }

    /// Calls `announced` each time a write is announced, for ever.
    pub async fn on_announcement(self, announced: impl Fn() + Send + 'static) {
        self.store.on_announcement(announced).await
    }

    /// Says `node` applied `revision` in `processes` processes, for [`APPLIED_TTL`] (one hash
    /// of reports, `<prefix>:control:switch:applied`, each with the time it was made).
    pub async fn report_applied(
        &self,
        node: &str,
        revision: u64,
        processes: u64,
    ) -> Result<(), SharedError> {
        redis::cmd("HSET")
            .arg(self.store.key("applied"))
            .arg(node)
            .arg(format!(
                "{revision}|{processes}|{}",
                mesh_contract::fields::now_ms()
            ))
            .query_async::<()>(&mut self.store.connection())
            .await
            .map_err(|e| self.store.error(e))
    }

    /// What every live node (and worker following the store) said it applied: the reports of
    /// the last [`APPLIED_TTL`] (the nodes' clocks are taken to agree within a second or so);
    /// reports much older are removed.
    pub async fn applied(&self) -> Result<Vec<NodeApplied>, SharedError> {
        let mut connection = self.store.connection();
        let reports: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(self.store.key("applied"))
            .query_async(&mut connection)
            .await
            .map_err(|e| self.store.error(e))?;
        let now = mesh_contract::fields::now_ms();
        let ttl = APPLIED_TTL.as_millis() as i64;
        let mut nodes = Vec::new();
        let mut gone = Vec::new();
        for (node, value) in reports {
            let parsed = value.split('|').collect::<Vec<_>>();
            let (Some(revision), Some(processes), Some(at)) = (
                parsed.first().and_then(|r| r.parse().ok()),
                parsed.get(1).and_then(|p| p.parse().ok()),
                parsed.get(2).and_then(|t| t.parse::<i64>().ok()),
            ) else {
                gone.push(node);
                continue;
            };
            if now - at > ttl * 10 {
                gone.push(node);
            } else if now - at <= ttl {
                nodes.push(NodeApplied {
                    node,
                    revision,
                    processes,
                });
            }
        }
        if !gone.is_empty() {
            let _ = redis::cmd("HDEL")
                .arg(self.store.key("applied"))
                .arg(gone)
                .query_async::<()>(&mut connection)
                .await;
        }
        Ok(nodes)
    }

    /// Keeps `apply` fed with the switches off in the store, for ever: at once, on every
    /// announcement and every [`RECONCILE_EVERY`] when the store's epoch or revision moved;
    /// each time it applied a revision, reports it for `node` (one process). What a worker
    /// without a control plane (a Kubernetes replica) runs.
    pub async fn follow(self, node: String, apply: impl Fn(Vec<Switch>) + Send + 'static) {
        let wake = std::sync::Arc::new(tokio::sync::Notify::new());
        tokio::spawn(self.clone().on_announcement({
            let wake = wake.clone();
            move || wake.notify_one()
        }));
        let mut seen: Option<(Option<String>, u64)> = None;
        loop {
            match self.head().await {
                // an empty store (never filled, or restarted empty): this worker keeps what
                // it has until a control plane fills it, and reports nothing
                Ok((None, _)) => {}
                Ok(head) if seen.as_ref() != Some(&head) => match self.snapshot().await {
                    Ok(snapshot) if snapshot.epoch.is_some() => {
                        apply(snapshot.off());
                        seen = Some((snapshot.epoch.clone(), snapshot.revision));
                        let _ = self.report_applied(&node, snapshot.revision, 1).await;
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "reading shared switches"),
                },
                Ok((_, revision)) => {
                    let _ = self.report_applied(&node, revision, 1).await;
                }
                Err(err) => tracing::warn!(error = %err, "shared switches unreachable"),
            }
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(RECONCILE_EVERY) => {}
            }
        }
    }
}

//! The tenant registry the nodes of one mesh share, in Redis (`<prefix>:control:tenant`, a
//! [`Versioned`] map: one entry per tenant, its file or that it was removed, each write with a
//! revision of its own; the switch state has its own, [`super::shared_switches`]); the prefix
//! (`[state] redis_prefix`, `mesh` by default) keeps several meshes on one Redis apart. A node
//! writes each change it makes and announces it; every node reconciles with it on each
//! announcement and every [`RECONCILE_EVERY`](super::versioned::RECONCILE_EVERY). `meshctl`
//! pointed at any node changes them all.
//!
//! The node's own files (`switches.json`, the tenants folder) stay its copy for a restart
//! while Redis is away.
//!
//! The registry is **sealed** with a key derived from the node credential
//! (ChaCha20-Poly1305): tenant files may hold secrets (an inline development credential, a
//! user-token signing key), and whoever reads Redis must not read them; nor can whoever writes
//! Redis add a tenant of their own making (an entry that does not open with the key is ignored
//! and logged). Only the nodes, which hold the node credential, read and write it.

use std::collections::BTreeMap;

use mesh_contract::TenantId;
use serde::{Deserialize, Serialize};

use super::versioned::{Snapshot, Versioned};
use crate::supervisor::protocol::TenantSource;

pub use super::shared_switches::SharedSwitches;

/// Why the shared state could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("shared state (Redis {url}): {message}")]
pub struct SharedError {
    url: String,
    message: String,
}

impl SharedError {
    /// What went wrong with the Redis at `url`.
    pub fn new(url: &str, message: impl std::fmt::Display) -> Self {
        Self {
            url: url.to_owned(),
            message: message.to_string(),
        }
    }
}

/// One tenant's latest state in the registry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TenantEntry {
    /// `true`: the tenant was removed (its last file kept for the record).
    pub removed: bool,
    /// Its file.
    pub source: TenantSource,
}

impl Snapshot<TenantEntry> {
    /// The tenants the registry holds (not removed), with their files.
    pub fn live(&self) -> BTreeMap<TenantId, TenantSource> {
        self.entries
            .values()
            .filter(|(_, e)| !e.removed)
            .map(|(_, e)| (e.source.id.clone(), e.source.clone()))
            .collect()
    }
}

/// The tenant registry of one mesh in Redis, sealed. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SharedTenants {
    store: Versioned<TenantEntry>,
}

impl SharedTenants {
    /// The tenant registry of the mesh `prefix` at the Redis at `url`, sealed with a key
    /// derived from `node_credential` (the one every node of the mesh holds).
    pub async fn connect(
        url: &str,
        prefix: &str,
        node_credential: &str,
    ) -> Result<Self, SharedError> {
        Ok(Self {
            store: Versioned::connect(url, format!("{prefix}:control:tenant"))
                .await?
                .sealed("tenant registry", node_credential),
        })
    }

    /// The store's epoch and revision.
    pub async fn head(&self) -> Result<(Option<String>, u64), SharedError> {
        self.store.head().await
    }

    /// Everything the registry holds, read at one moment.
    pub async fn snapshot(&self) -> Result<Snapshot<TenantEntry>, SharedError> {
        self.store.snapshot().await
    }

    /// Writes one tenant's entry with the next revision; `None` when the store has no epoch
    /// (it restarted empty: [`SharedTenants::seed`] it first).
    pub async fn write(&self, entry: &TenantEntry) -> Result<Option<u64>, SharedError> {
        self.store.write(entry.source.id.as_str(), entry).await
    }

    /// Fills the registry with the entries it lacks, giving it an epoch if it has none.
    pub async fn seed(&self, entries: &[TenantEntry]) -> Result<String, SharedError> {
        let keyed: Vec<(String, TenantEntry)> = entries
            .iter()
            .map(|e| (e.source.id.to_string(), e.clone()))
            .collect();
        self.store.seed(&keyed).await
    }

    /// Calls `announced` each time a write is announced, for ever.
    pub async fn on_announcement(self, announced: impl Fn() + Send + 'static) {
        self.store.on_announcement(announced).await
    }
}

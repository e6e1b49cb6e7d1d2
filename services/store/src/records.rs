//! Keyed records for any service, in each tenant's own namespace.
//!
//! The message store and the order book have tables of their own; a service added with
//! `mesh-codegen new-service` keeps its data here instead of in its memory (where a restarted
//! worker would lose it). A record is a value (any bytes, usually an encoded protobuf message)
//! under a key in a named *collection*, with an *owner* (the user it belongs to, or any
//! grouping key) as its secondary lookup, and a *version* that every write increments: what
//! [`Expect`] compares, so two writers never overwrite each other silently. (A deleted record's
//! key starts again at version 1: a writer that may race a delete and re-create compares the
//! value it read, or never deletes and marks the record instead.)
//!
//! [`Collection`] is the typed view a service uses:
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use mesh_contract::TenantId;
//! use mesh_store::{Collection, MemoryStore, MessageStore, records::Expect};
//!
//! let store = Arc::new(MemoryStore::default());
//! let mall = TenantId::new("mall").unwrap();
//! store.open(&mall, "mall").await.unwrap();
//!
//! // any prost message; a `String` wrapper here
//! let coupons: Collection<String> = Collection::new(store, "coupons");
//! coupons.insert(&mall, "c-1", "alice", &"10% off".to_owned()).await.unwrap();
//! // a second insert of the same key is a conflict, never an overwrite
//! assert!(coupons.insert(&mall, "c-1", "alice", &"free".to_owned()).await.is_err());
//! assert_eq!(coupons.get(&mall, "c-1").await.unwrap().unwrap().value, "10% off");
//! assert_eq!(coupons.owned_by(&mall, "alice", 10).await.unwrap().len(), 1);
//! # let _ = Expect::Any;
//! # });
//! ```
//!
//! Both backends behave the same (one test suite runs against both): [`MemoryStore`](
//! crate::MemoryStore) for the embedded default, [`PgStore`](crate::PgStore) with table
//! `records` in the tenant's schema, written in one transaction per [`RecordStore::write_records`].

use std::{marker::PhantomData, sync::Arc};

use mesh_contract::TenantId;

use crate::StoreError;

/// Most bytes one record's value may hold: records are a service's rows, not its files.
pub const MAX_VALUE_BYTES: usize = 256 * 1024;
/// Most characters a collection name, key or owner may have.
pub const MAX_NAME_CHARS: usize = 256;

/// What a write expects to find, checked in the same transaction as the write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Whatever is there (or nothing): the write replaces it.
    Any,
    /// Nothing under the key: a second create of the same record is a [`StoreError::Conflict`].
    Absent,
    /// The record at exactly this version (read before): a writer that lost the race gets a
    /// [`StoreError::Conflict`] and reads again, instead of overwriting the winner.
    Version(u64),
}

/// One write of [`RecordStore::write_records`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordWrite {
    /// The collection (a service's kind of record: `coupons`).
    pub collection: String,
    /// Unique within the collection.
    pub key: String,
    /// The secondary lookup ([`RecordStore::records_of`]): usually the user it belongs to.
    pub owner: String,
    /// The value; [`MAX_VALUE_BYTES`] at most.
    pub value: Vec<u8>,
    /// What must be there for the write to happen.
    pub expect: Expect,
}

/// A stored record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<V = Vec<u8>> {
    /// Its key.
    pub key: String,
    /// Its owner.
    pub owner: String,
    /// Its value.
    pub value: V,
    /// 1 when created, one more with every write.
    pub version: u64,
    /// When it was last written.
    pub updated_at_ms: i64,
}

/// Keyed records of every tenant, each tenant's in its own namespace (opened with
/// [`MessageStore::open`](crate::MessageStore::open), as the platform does for every tenant
/// that runs a service).
#[async_trait::async_trait]
pub trait RecordStore: Send + Sync + 'static {
    /// Writes every one of `writes` or none (one transaction): the versions they left, in
    /// order. The first write whose [`Expect`] does not hold fails them all with
    /// [`StoreError::Conflict`].
    async fn write_records(
        &self,
        tenant: &TenantId,
        writes: &[RecordWrite],
    ) -> Result<Vec<u64>, StoreError>;

    /// The record under `key`, if any.
    async fn record(
        &self,
        tenant: &TenantId,
        collection: &str,
        key: &str,
    ) -> Result<Option<Record>, StoreError>;

    /// Up to `limit` records of `owner` in `collection`, most recently written first.
    async fn records_of(
        &self,
        tenant: &TenantId,
        collection: &str,
        owner: &str,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError>;

    /// Deletes the record under `key`; whether there was one.
    async fn delete_record(
        &self,
        tenant: &TenantId,
        collection: &str,
        key: &str,
    ) -> Result<bool, StoreError>;
}

/// Milliseconds since the Unix epoch: when a record was written.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The conflict of `write` for `tenant`, when the record was at `version` (`None`: absent).
pub(crate) fn conflict(tenant: &TenantId, write: &RecordWrite, version: Option<u64>) -> StoreError {
    StoreError::Conflict {
        tenant: tenant.clone(),
        record: format!("{}/{}", write.collection, write.key),
        found: found(write.expect, version),
    }
}

/// What a [`StoreError::Conflict`] says was found instead of what `expect` wanted.
fn found(expect: Expect, version: Option<u64>) -> String {
    match (expect, version) {
        (Expect::Absent, Some(v)) => format!("exists already (version {v})"),
        (Expect::Version(want), Some(v)) => {
            format!("is at version {v}, not {want}: another writer changed it first")
        }
        (Expect::Version(want), None) => format!("does not exist (expected version {want})"),
        (_, _) => "was not as expected".to_owned(),
    }
}

/// Refuses what no backend should store: empty or overlong names, oversized values.
pub(crate) fn check(tenant: &TenantId, writes: &[RecordWrite]) -> Result<(), StoreError> {
    for w in writes {
        for (what, text) in [
            ("collection", &w.collection),
            ("key", &w.key),
            ("owner", &w.owner),
        ] {
            if (what != "owner" && text.is_empty()) || text.chars().count() > MAX_NAME_CHARS {
                return Err(StoreError::InvalidRecord {
                    tenant: tenant.clone(),
                    reason: format!(
                        "{what} {text:?} must have 1-{MAX_NAME_CHARS} characters{}",
                        if what == "owner" { " or none" } else { "" }
                    ),
                });
            }
        }
        if w.value.len() > MAX_VALUE_BYTES {
            return Err(StoreError::InvalidRecord {
                tenant: tenant.clone(),
                reason: format!(
                    "record {}/{} holds {} bytes; at most {MAX_VALUE_BYTES}",
                    w.collection,
                    w.key,
                    w.value.len()
                ),
            });
        }
    }
    Ok(())
}

/// A collection of records holding `M` (a prost message), as a service uses it. Cheap to
/// clone.
pub struct Collection<M> {
    store: Arc<dyn RecordStore>,
    name: Arc<str>,
    _value: PhantomData<fn() -> M>,
}

impl<M> Clone for Collection<M> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            name: self.name.clone(),
            _value: PhantomData,
        }
    }
}

impl<M> std::fmt::Debug for Collection<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<M: prost::Message + Default> Collection<M> {
    /// The collection `name` of `store`.
    pub fn new(store: Arc<dyn RecordStore>, name: &str) -> Self {
        Self {
            store,
            name: name.into(),
            _value: PhantomData,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A write of `value` under `key` for [`RecordStore::write_records`] (several records in one
    /// transaction).
    pub fn write(&self, key: &str, owner: &str, value: &M, expect: Expect) -> RecordWrite {
        RecordWrite {
            collection: self.name.to_string(),
            key: key.to_owned(),
            owner: owner.to_owned(),
            value: value.encode_to_vec(),
            expect,
        }
    }

    /// Creates the record under `key`: [`StoreError::Conflict`] if there is one (a retried
    /// create finds it with [`Collection::get`]). Its version (1).
    pub async fn insert(
        &self,
        tenant: &TenantId,
        key: &str,
        owner: &str,
        value: &M,
    ) -> Result<u64, StoreError> {
        self.put_expecting(tenant, key, owner, value, Expect::Absent)
            .await
    }

    /// Stores `value` under `key`, replacing what is there; its new version.
    pub async fn put(
        &self,
        tenant: &TenantId,
        key: &str,
        owner: &str,
        value: &M,
    ) -> Result<u64, StoreError> {
        self.put_expecting(tenant, key, owner, value, Expect::Any)
            .await
    }

    /// Stores `value` under `key` if `expect` holds; its new version.
    pub async fn put_expecting(
        &self,
        tenant: &TenantId,
        key: &str,
        owner: &str,
        value: &M,
        expect: Expect,
    ) -> Result<u64, StoreError> {
        let versions = self
            .store
            .write_records(tenant, &[self.write(key, owner, value, expect)])
            .await?;
        Ok(versions[0])
    }

    /// The record under `key`.
    pub async fn get(&self, tenant: &TenantId, key: &str) -> Result<Option<Record<M>>, StoreError> {
        match self.store.record(tenant, &self.name, key).await? {
            Some(record) => self.decode(tenant, record).map(Some),
            None => Ok(None),
        }
    }

    /// Up to `limit` records of `owner`, most recently written first.
    pub async fn owned_by(
        &self,
        tenant: &TenantId,
        owner: &str,
        limit: usize,
    ) -> Result<Vec<Record<M>>, StoreError> {
        self.store
            .records_of(tenant, &self.name, owner, limit)
            .await?
            .into_iter()
            .map(|record| self.decode(tenant, record))
            .collect()
    }

    /// Deletes the record under `key`; whether there was one.
    pub async fn delete(&self, tenant: &TenantId, key: &str) -> Result<bool, StoreError> {
        self.store.delete_record(tenant, &self.name, key).await
    }

    fn decode(&self, tenant: &TenantId, record: Record) -> Result<Record<M>, StoreError> {
        let value = M::decode(record.value.as_slice()).map_err(|e| StoreError::InvalidRecord {
            tenant: tenant.clone(),
            reason: format!(
                "record {}/{} does not decode as {}: {e}",
                self.name,
                record.key,
                std::any::type_name::<M>()
            ),
        })?;
        Ok(Record {
            key: record.key,
            owner: record.owner,
            value,
            version: record.version,
            updated_at_ms: record.updated_at_ms,
        })
    }
}

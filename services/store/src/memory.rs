//! The embedded store: one map per tenant in this process.

use std::{
    collections::{BTreeMap, HashMap},
    sync::RwLock,
};

use mesh_contract::TenantId;

use crate::{MessageStore, Saved, StoreError, StoredMessage, StoredReceipt, valid_namespace};

/// The embedded default: no external service, data lives as long as the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    owners: HashMap<String, TenantId>,
    tenants: HashMap<TenantId, Namespace>,
}

#[derive(Debug, Default)]
struct Namespace {
    /// By (conversation, seq); the id index below keeps saves idempotent.
    messages: BTreeMap<(String, u64), StoredMessage>,
    ids: HashMap<String, (String, u64)>,
    receipts: HashMap<(String, String), StoredReceipt>,
}

impl MemoryStore {
    fn read<T>(&self, tenant: &TenantId, f: impl FnOnce(&Namespace) -> T) -> Result<T, StoreError> {
        let inner = self.inner.read().expect("store lock");
        let ns = inner
            .tenants
            .get(tenant)
            .ok_or_else(|| StoreError::UnknownTenant(tenant.clone()))?;
        Ok(f(ns))
    }

    fn write<T>(
        &self,
        tenant: &TenantId,
        f: impl FnOnce(&mut Namespace) -> T,
    ) -> Result<T, StoreError> {
        let mut inner = self.inner.write().expect("store lock");
        let ns = inner
            .tenants
            .get_mut(tenant)
            .ok_or_else(|| StoreError::UnknownTenant(tenant.clone()))?;
        Ok(f(ns))
    }
}

#[async_trait::async_trait]
impl MessageStore for MemoryStore {
    async fn open(&self, tenant: &TenantId, namespace: &str) -> Result<(), StoreError> {
        valid_namespace(namespace)?;
        let mut inner = self.inner.write().expect("store lock");
        match inner.owners.get(namespace) {
            Some(owner) if owner != tenant => {
                return Err(StoreError::NamespaceTaken {
                    namespace: namespace.to_owned(),
                    owner: owner.clone(),
                });
            }
            Some(_) => return Ok(()),
            None => {}
        }
        inner.owners.insert(namespace.to_owned(), tenant.clone());
        inner.tenants.entry(tenant.clone()).or_default();
        Ok(())
    }

    async fn save_message(
        &self,
        tenant: &TenantId,
        message: &StoredMessage,
    ) -> Result<Saved, StoreError> {
        self.write(tenant, |ns| {
            if ns.ids.contains_key(&message.message_id) {
                return Saved::Duplicate;
            }
            let key = (message.conversation_id.clone(), message.seq);
            ns.ids.insert(message.message_id.clone(), key.clone());
            ns.messages.insert(key, message.clone());
            Saved::New
        })
    }

    async fn history(
        &self,
        tenant: &TenantId,
        conversation_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.read(tenant, |ns| {
            let from = (conversation_id.to_owned(), after_seq.saturating_add(1));
            let to = (conversation_id.to_owned(), u64::MAX);
            ns.messages
                .range(from..=to)
                .take(limit)
                .map(|(_, m)| m.clone())
                .collect()
        })
    }

    async fn save_receipt(
        &self,
        tenant: &TenantId,
        receipt: &StoredReceipt,
    ) -> Result<(), StoreError> {
        self.write(tenant, |ns| {
            let key = (receipt.conversation_id.clone(), receipt.reader.clone());
            let keep = ns
                .receipts
                .get(&key)
                .is_some_and(|old| old.up_to_seq >= receipt.up_to_seq);
            if !keep {
                ns.receipts.insert(key, receipt.clone());
            }
        })
    }

    async fn receipt(
        &self,
        tenant: &TenantId,
        conversation_id: &str,
        reader: &str,
    ) -> Result<Option<StoredReceipt>, StoreError> {
        self.read(tenant, |ns| {
            ns.receipts
                .get(&(conversation_id.to_owned(), reader.to_owned()))
                .cloned()
        })
    }

    async fn purge_before(&self, tenant: &TenantId, cutoff_ms: i64) -> Result<u64, StoreError> {
        self.write(tenant, |ns| {
            let before = ns.messages.len();
            ns.messages.retain(|_, m| m.sent_at_ms >= cutoff_ms);
            let messages = &ns.messages;
            ns.ids.retain(|_, key| messages.contains_key(key));
            (before - ns.messages.len()) as u64
        })
    }
}

//! Where the messaging platform keeps its data, one namespace per tenant.
//!
//! Services never name a namespace: every operation takes the [`TenantId`] of the
//! authenticated request, and the store maps it to the namespace the tenant's config gave it
//! (`data_namespace`) when the tenant was [opened](MessageStore::open). A tenant that was not
//! opened gets [`StoreError::UnknownTenant`], never another tenant's data.
//!
//! Two backends, same behaviour (one test suite runs against both):
//! - [`MemoryStore`]: the embedded default, no external service; data lives as long as the
//!   process.
//! - [`PgStore`]: PostgreSQL, one schema per tenant (`<prefix><namespace>`); every statement
//!   names exactly one schema, the caller's, so no query can cross tenants.

mod memory;
mod postgres;

pub use memory::MemoryStore;
pub use postgres::PgStore;

use mesh_contract::TenantId;

/// A chat message as stored (the `message.v1.ChatMessage` fields, free of any contract
/// version).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredMessage {
    /// Unique within the tenant.
    pub message_id: String,
    /// The conversation it belongs to.
    pub conversation_id: String,
    /// Position in the conversation.
    pub seq: u64,
    /// Sender (`system` for platform messages).
    pub from_user: String,
    /// Receiver.
    pub to_user: String,
    /// `message.v1.MessageKind` number.
    pub kind: i32,
    /// Text.
    pub body: String,
    /// When it was accepted.
    pub sent_at_ms: i64,
}

/// How far a reader has read a conversation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredReceipt {
    /// The conversation.
    pub conversation_id: String,
    /// Who read it.
    pub reader: String,
    /// Highest sequence number read.
    pub up_to_seq: u64,
    /// When that was recorded.
    pub read_at_ms: i64,
}

/// What [`MessageStore::save_message`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saved {
    /// The message is stored now.
    New,
    /// A message with that id was already stored (a redelivered event); nothing changed.
    Duplicate,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The tenant's namespace was never opened in this store.
    #[error("tenant {0} has no data namespace in this store (it is not onboarded here)")]
    UnknownTenant(TenantId),
    /// A namespace name that cannot name a schema.
    #[error(
        "data namespace {0:?} is invalid: use 1-63 lowercase letters, digits or '_', starting with a letter, prefix included"
    )]
    InvalidNamespace(String),
    /// Two tenants asked for the same namespace.
    #[error(
        "data namespace {namespace:?} already belongs to tenant {owner}; tenants never share data"
    )]
    NamespaceTaken {
        /// The namespace.
        namespace: String,
        /// The tenant it belongs to.
        owner: TenantId,
    },
    /// The backend failed (connection lost, statement refused).
    #[error("store backend failed for tenant {tenant} ({operation}): {reason}")]
    Backend {
        /// Whose data.
        tenant: TenantId,
        /// What was being done.
        operation: &'static str,
        /// What the backend said.
        reason: String,
    },
}

/// A tenant-scoped message store. Cheap to share (`Arc<dyn MessageStore>`).
#[async_trait::async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Makes `namespace` the tenant's, creating it if needed; idempotent for the same pair.
    async fn open(&self, tenant: &TenantId, namespace: &str) -> Result<(), StoreError>;

    /// Stores a message once; a second save of the same id changes nothing.
    async fn save_message(
        &self,
        tenant: &TenantId,
        message: &StoredMessage,
    ) -> Result<Saved, StoreError>;

    /// Up to `limit` messages of a conversation after `after_seq`, in sequence order.
    async fn history(
        &self,
        tenant: &TenantId,
        conversation_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;

    /// Records a read receipt; a receipt never moves a reader backwards.
    async fn save_receipt(
        &self,
        tenant: &TenantId,
        receipt: &StoredReceipt,
    ) -> Result<(), StoreError>;

    /// How far `reader` has read the conversation.
    async fn receipt(
        &self,
        tenant: &TenantId,
        conversation_id: &str,
        reader: &str,
    ) -> Result<Option<StoredReceipt>, StoreError>;

    /// Deletes the tenant's messages sent before `cutoff_ms` (its retention ran out); returns
    /// how many.
    async fn purge_before(&self, tenant: &TenantId, cutoff_ms: i64) -> Result<u64, StoreError>;
}

/// Checks a namespace (prefix included) can name a PostgreSQL schema unquoted.
fn valid_namespace(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidNamespace(name.to_owned()))
    }
}

//! Where the messaging platform keeps its data, one namespace per tenant.
//!
//! The store is the truth of the messaging platform: a message exists once [`MessageStore::accept`]
//! returned, numbered in its conversation (`seq`) and in its receiver's timeline (`position`),
//! and a retried send with the same client id finds it instead of making a second one. A terminal
//! syncs from its cursor over that timeline; nothing of this lives in a worker's memory, so a
//! restarted or replaced worker goes on exactly where the last one stopped.
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
pub mod records;

pub use memory::MemoryStore;
pub use postgres::PgStore;
pub use records::{Collection, Record, RecordStore};

use mesh_contract::TenantId;

/// A chat message as stored (the `message.v1.ChatMessage` fields, free of any contract
/// version).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredMessage {
    /// Unique within the tenant.
    pub message_id: String,
    /// The conversation it belongs to.
    pub conversation_id: String,
    /// Position in the conversation: 1, 2, 3 ... without gaps.
    pub seq: u64,
    /// Position in the receiver's timeline: 1, 2, 3 ... without gaps, per receiver. A
    /// terminal's sync cursor is such a position.
    pub position: u64,
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

/// The kind of a read receipt's timeline entry (`message.v1.MessageKind`'s
/// `MESSAGE_KIND_READ_RECEIPT`; the message service's tests check the two agree). Such an
/// entry is no message of its conversation: [`MessageStore::history`] leaves it out, and its
/// `seq` is the receipt's `up_to_seq`, its `from_user` the reader, its body empty.
pub const READ_RECEIPT_KIND: i32 = 3;

impl StoredMessage {
    /// The receipt a read receipt's timeline entry carries; `None` for a message.
    pub fn receipt(&self) -> Option<StoredReceipt> {
        (self.kind == READ_RECEIPT_KIND).then(|| StoredReceipt {
            conversation_id: self.conversation_id.clone(),
            reader: self.from_user.clone(),
            up_to_seq: self.seq,
            read_at_ms: self.sent_at_ms,
        })
    }

    /// A read receipt's timeline entry for `receiver`, at `position` of their timeline.
    fn of_receipt(receipt: &StoredReceipt, receiver: &str, position: u64) -> Self {
        Self {
            message_id: uuid::Uuid::new_v4().to_string(),
            conversation_id: receipt.conversation_id.clone(),
            seq: receipt.up_to_seq,
            position,
            from_user: receipt.reader.clone(),
            to_user: receiver.to_owned(),
            kind: READ_RECEIPT_KIND,
            body: String::new(),
            sent_at_ms: receipt.read_at_ms,
        }
    }
}

/// One terminal a user synced from: where it is in the timeline and when it was last seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TerminalCursor {
    /// The terminal.
    pub terminal_id: String,
    /// Every entry of the user's timeline up to here is the terminal's.
    pub position: u64,
    /// When it last synced or acknowledged (0: not since this was recorded).
    pub seen_at_ms: i64,
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

/// A message to accept: everything but its numbers, which the store gives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewMessage {
    /// Unique within the tenant (chosen by the caller, e.g. a UUID).
    pub message_id: String,
    /// The conversation it belongs to.
    pub conversation_id: String,
    /// The sender's id for this send; a second accept of the same sender with the same id in
    /// the same conversation returns the first message. Empty: no deduplication.
    pub client_msg_id: String,
    /// Sender.
    pub from_user: String,
    /// Receiver: the message goes into this user's timeline.
    pub to_user: String,
    /// `message.v1.MessageKind` number.
    pub kind: i32,
    /// Text.
    pub body: String,
    /// When it was accepted.
    pub sent_at_ms: i64,
    /// Only a participant may write into an existing conversation (an end user's message):
    /// checked in the same transaction as the store, so a conversation between two people
    /// cannot be joined by a third who guesses its id. The first message of a conversation
    /// makes its sender and receiver its participants; a participant writing to someone new
    /// brings them in.
    pub members_only: bool,
}

/// What [`MessageStore::accept`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Stored now, with new numbers.
    New(StoredMessage),
    /// The conversation already held a message of this sender with this client id (a retried
    /// send); this is that message, unchanged.
    Existing(StoredMessage),
}

impl Accepted {
    /// The message, new or not.
    pub fn message(&self) -> &StoredMessage {
        match self {
            Accepted::New(m) | Accepted::Existing(m) => m,
        }
    }

    /// The message, new or not.
    pub fn into_message(self) -> StoredMessage {
        match self {
            Accepted::New(m) | Accepted::Existing(m) => m,
        }
    }
}

/// One page of a user's timeline after a cursor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// Messages received, in position order.
    pub messages: Vec<StoredMessage>,
    /// More follow after the last one.
    pub more: bool,
}

/// What a conversation holds, for read receipts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConversationInfo {
    /// The highest sequence number given.
    pub last_seq: u64,
    /// Everyone who sent or received a message in it, sorted.
    pub participants: Vec<String>,
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
    /// A sender who is not a participant wrote into an existing conversation
    /// ([`NewMessage::members_only`]).
    #[error("{user:?} is not a participant of conversation {conversation:?}")]
    NotAParticipant {
        /// The conversation.
        conversation: String,
        /// The sender.
        user: String,
    },
    /// A record write found something other than it expected ([`records::Expect`]): the
    /// record exists already, or another writer changed it first. Nothing was written.
    #[error("record {record} of tenant {tenant}: {found}")]
    Conflict {
        /// Whose record.
        tenant: TenantId,
        /// `<collection>/<key>`.
        record: String,
        /// What was there instead of what the write expected.
        found: String,
    },
    /// A record the store does not keep (empty key, oversized value) or cannot read back as
    /// the type asked for.
    #[error("tenant {tenant}: {reason}")]
    InvalidRecord {
        /// Whose record.
        tenant: TenantId,
        /// What is wrong with it.
        reason: String,
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
        /// The same operation may succeed later (database unreachable, pool exhausted,
        /// connection lost, serialization conflict); false when the data itself is refused.
        transient: bool,
    },
}

impl StoreError {
    /// Whether trying again later can succeed: a caller retries these (with backoff) until the
    /// backend is back, and gives up at once on the others.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Backend {
                transient: true,
                ..
            }
        )
    }
}

/// An order as the order book keeps it (the order service's fields, free of contract
/// versions).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredOrder {
    /// Unique within the tenant.
    pub order_id: String,
    /// Buyer.
    pub user_id: String,
    /// Seller.
    pub merchant_id: String,
    /// Lifecycle state (the order contract's `OrderStatus` number).
    pub status: i32,
    /// Total in minor units.
    pub total_minor: i64,
    /// ISO 4217 currency.
    pub currency: String,
    /// Creation time.
    pub created_at_ms: i64,
    /// The conversation it is discussed in.
    pub conversation_id: String,
}

/// The order book of each tenant, in the same namespace as its messages: shared by every
/// replica of a process group, kept across restarts and moves (a tenant moved to another
/// process finds its orders there).
#[async_trait::async_trait]
pub trait OrderRecords: Send + Sync + 'static {
    /// Stores `order`, replacing the one with its id.
    async fn put_order(&self, tenant: &TenantId, order: &StoredOrder) -> Result<(), StoreError>;

    /// Stores `order` unless the tenant has one with its id (an announcement arriving after
    /// the order moved on must not take it back); whether it was stored.
    async fn put_new_order(
        &self,
        tenant: &TenantId,
        order: &StoredOrder,
    ) -> Result<bool, StoreError>;

    /// One order of the tenant.
    async fn order(
        &self,
        tenant: &TenantId,
        order_id: &str,
    ) -> Result<Option<StoredOrder>, StoreError>;

    /// Up to `limit` orders of `user_id`, newest first.
    async fn orders_of(
        &self,
        tenant: &TenantId,
        user_id: &str,
        limit: usize,
    ) -> Result<Vec<StoredOrder>, StoreError>;

    /// Moves a known order from status `from` (any, when `None`) to `to`, unless it is in
    /// `final_status` (a cancelled order stays cancelled); the order as it is now when it
    /// moved, `None` when it is unknown or was not in `from`.
    async fn move_order(
        &self,
        tenant: &TenantId,
        order_id: &str,
        from: Option<i32>,
        to: i32,
        final_status: i32,
    ) -> Result<Option<StoredOrder>, StoreError>;
}

/// A tenant-scoped message store (and order book). Cheap to share
/// (`Arc<dyn MessageStore>`, which is an `Arc<dyn OrderRecords>` too).
#[async_trait::async_trait]
pub trait MessageStore: OrderRecords + RecordStore + Send + Sync + 'static {
    /// Makes `namespace` the tenant's, creating it if needed; idempotent for the same pair.
    async fn open(&self, tenant: &TenantId, namespace: &str) -> Result<(), StoreError>;

    /// Stores a message durably, numbering it in its conversation and in its receiver's
    /// timeline, all or nothing. A message of the same sender with the same non-empty
    /// `client_msg_id` in the conversation is returned as [`Accepted::Existing`] instead, so a send retried after any
    /// failure is stored once. Numbers are never given twice, and a reader never sees a
    /// position before every lower one of the same timeline is visible.
    async fn accept(&self, tenant: &TenantId, message: &NewMessage)
    -> Result<Accepted, StoreError>;

    /// Up to `limit` messages received by `user` after timeline position `after`, in order.
    async fn timeline(
        &self,
        tenant: &TenantId,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Page, StoreError>;

    /// Where `terminal` of `user` is in the user's timeline; a terminal seen for the first
    /// time is recorded at 0 (so it counts among the user's terminals from now on).
    async fn cursor(
        &self,
        tenant: &TenantId,
        user: &str,
        terminal: &str,
    ) -> Result<u64, StoreError>;

    /// Moves the terminal's cursor to `position`, never backwards and never past the last
    /// position of the user's timeline (a cursor ahead would skip the messages to come); with
    /// `contiguous`, only from `position - 1` (an ack of one message must not skip one the
    /// terminal lacks). Returns the cursor after the move.
    async fn advance_cursor(
        &self,
        tenant: &TenantId,
        user: &str,
        terminal: &str,
        position: u64,
        contiguous: bool,
    ) -> Result<u64, StoreError>;

    /// The last position of each user's timeline (0 for a user who received nothing), in the
    /// order of `users`: the head a gateway's heartbeat carries, so a terminal that holds less
    /// syncs. One read for many users (a gateway asks for all its terminals' users at once).
    async fn heads(&self, tenant: &TenantId, users: &[String]) -> Result<Vec<u64>, StoreError>;

    /// The timeline position of message `message_id` if `user` received it.
    async fn position_of(
        &self,
        tenant: &TenantId,
        user: &str,
        message_id: &str,
    ) -> Result<Option<u64>, StoreError>;

    /// The user's known terminals (those that synced or acked), sorted.
    async fn terminals(&self, tenant: &TenantId, user: &str) -> Result<Vec<String>, StoreError>;

    /// The user's known terminals with their cursors and when each was last seen (a sync or
    /// an acknowledgement), by terminal id.
    async fn terminal_cursors(
        &self,
        tenant: &TenantId,
        user: &str,
    ) -> Result<Vec<TerminalCursor>, StoreError>;

    /// Forgets a terminal's cursor (signed out for good): it no longer counts among the
    /// user's terminals, and syncs from the start if it comes back. Whether it was known.
    async fn forget_terminal(
        &self,
        tenant: &TenantId,
        user: &str,
        terminal: &str,
    ) -> Result<bool, StoreError>;

    /// The conversation's last sequence number and participants; `None` if it has no message.
    async fn conversation(
        &self,
        tenant: &TenantId,
        conversation_id: &str,
    ) -> Result<Option<ConversationInfo>, StoreError>;

    /// Up to `limit` messages of a conversation after `after_seq`, in sequence order (read
    /// receipts' timeline entries are no messages of it, and left out).
    async fn history(
        &self,
        tenant: &TenantId,
        conversation_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;

    /// Records a read receipt and, when it moves the reader forward, appends it to the
    /// timeline of each of `receivers` (the reader, for their other terminals, and the
    /// conversation's other participants), all or nothing: a terminal that was away syncs
    /// every receipt it missed, in order with the messages. Returns the entries appended, one
    /// per receiver in the order given; none when the receipt moved nothing (repeated, or
    /// less far than one recorded before).
    async fn record_receipt(
        &self,
        tenant: &TenantId,
        receipt: &StoredReceipt,
        receivers: &[String],
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

    /// Deletes the tenant's namespace with everything in it (`meshctl tenant remove
    /// --purge-data`); a tenant never opened here has nothing to delete.
    async fn drop_tenant(&self, tenant: &TenantId) -> Result<(), StoreError>;
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

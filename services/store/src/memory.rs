//! The embedded store: one map per tenant in this process.

use std::{
    collections::{BTreeMap, HashMap},
    sync::RwLock,
};

use mesh_contract::TenantId;

use crate::{
    Accepted, ConversationInfo, MessageStore, NewMessage, OrderRecords, Page, StoreError,
    StoredMessage, StoredOrder, StoredReceipt, TerminalCursor,
    records::{self, Expect, Record, RecordStore, RecordWrite, now_ms},
    valid_namespace,
};

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

/// What a timeline position holds.
#[derive(Debug)]
enum Entry {
    /// The message at (conversation, seq).
    Message(String, u64),
    /// A read receipt (kept here: it is no message of its conversation).
    Receipt(StoredMessage),
}

#[derive(Debug, Default)]
struct Namespace {
    /// By (conversation, seq).
    messages: BTreeMap<(String, u64), StoredMessage>,
    /// (conversation, sender, client id) -> seq: retried sends find their message.
    by_client_id: HashMap<(String, String, String), u64>,
    /// message id -> (conversation, seq).
    ids: HashMap<String, (String, u64)>,
    /// (receiver, position) -> what is there: each user's timeline.
    timelines: BTreeMap<(String, u64), Entry>,
    /// Per conversation: last seq and participants (kept when messages are purged).
    conversations: HashMap<String, ConversationInfo>,
    /// Per receiver: last position given.
    positions: HashMap<String, u64>,
    /// Per user: terminal -> cursor.
    cursors: HashMap<String, BTreeMap<String, u64>>,
    /// (user, terminal) -> when it last synced or acknowledged.
    seen: HashMap<(String, String), i64>,
    receipts: HashMap<(String, String), StoredReceipt>,
    /// The order book, by order id.
    orders: BTreeMap<String, StoredOrder>,
    /// Services' records, by (collection, key).
    records: HashMap<(String, String), Record>,
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
impl RecordStore for MemoryStore {
    async fn write_records(
        &self,
        tenant: &TenantId,
        writes: &[RecordWrite],
    ) -> Result<Vec<u64>, StoreError> {
        records::check(tenant, writes)?;
        let now = now_ms();
        self.write(tenant, |ns| {
            // every expectation is checked against what the earlier writes of the same call
            // leave, before anything is applied: all or none
            let mut staged: HashMap<(String, String), Record> = HashMap::new();
            let mut versions = Vec::with_capacity(writes.len());
            for w in writes {
                let id = (w.collection.clone(), w.key.clone());
                let current = staged.get(&id).or_else(|| ns.records.get(&id));
                let found = current.map(|r| r.version);
                let holds = match w.expect {
                    Expect::Any => true,
                    Expect::Absent => found.is_none(),
                    Expect::Version(v) => found == Some(v),
                };
                if !holds {
                    return Err(records::conflict(tenant, w, found));
                }
                let version = found.unwrap_or(0) + 1;
                versions.push(version);
                staged.insert(
                    id,
                    Record {
                        key: w.key.clone(),
                        owner: w.owner.clone(),
                        value: w.value.clone(),
                        version,
                        updated_at_ms: now,
                    },
                );
            }
            ns.records.extend(staged);
            Ok(versions)
        })?
    }

    async fn record(
        &self,
        tenant: &TenantId,
        collection: &str,
        key: &str,
    ) -> Result<Option<Record>, StoreError> {
        self.read(tenant, |ns| {
            ns.records
                .get(&(collection.to_owned(), key.to_owned()))
                .cloned()
        })
    }

    async fn records_of(
        &self,
        tenant: &TenantId,
        collection: &str,
        owner: &str,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.read(tenant, |ns| {
            let mut found: Vec<Record> = ns
                .records
                .iter()
                .filter(|((c, _), r)| c == collection && r.owner == owner)
                .map(|(_, r)| r.clone())
                .collect();
            found.sort_by(|a, b| {
                b.updated_at_ms
                    .cmp(&a.updated_at_ms)
                    .then_with(|| b.key.cmp(&a.key))
            });
            found.truncate(limit);
            found
        })
    }

    async fn delete_record(
        &self,
        tenant: &TenantId,
        collection: &str,
        key: &str,
    ) -> Result<bool, StoreError> {
        self.write(tenant, |ns| {
            ns.records
                .remove(&(collection.to_owned(), key.to_owned()))
                .is_some()
        })
    }
}

#[async_trait::async_trait]
impl OrderRecords for MemoryStore {
    async fn put_order(&self, tenant: &TenantId, order: &StoredOrder) -> Result<(), StoreError> {
        self.write(tenant, |ns| {
            ns.orders.insert(order.order_id.clone(), order.clone());
        })
    }

    async fn put_new_order(
        &self,
        tenant: &TenantId,
        order: &StoredOrder,
    ) -> Result<bool, StoreError> {
        self.write(tenant, |ns| {
            if ns.orders.contains_key(&order.order_id) {
                return false;
            }
            ns.orders.insert(order.order_id.clone(), order.clone());
            true
        })
    }

    async fn order(
        &self,
        tenant: &TenantId,
        order_id: &str,
    ) -> Result<Option<StoredOrder>, StoreError> {
        self.read(tenant, |ns| ns.orders.get(order_id).cloned())
    }

    async fn orders_of(
        &self,
        tenant: &TenantId,
        user_id: &str,
        limit: usize,
    ) -> Result<Vec<StoredOrder>, StoreError> {
        self.read(tenant, |ns| {
            let mut orders: Vec<StoredOrder> = ns
                .orders
                .values()
                .filter(|o| o.user_id == user_id)
                .cloned()
                .collect();
            orders.sort_by_key(|o| std::cmp::Reverse(o.created_at_ms));
            orders.truncate(limit);
            orders
        })
    }

    async fn move_order(
        &self,
        tenant: &TenantId,
        order_id: &str,
        from: Option<i32>,
        to: i32,
        final_status: i32,
    ) -> Result<Option<StoredOrder>, StoreError> {
        self.write(tenant, |ns| match ns.orders.get_mut(order_id) {
            Some(order)
                if order.status != final_status && from.is_none_or(|from| from == order.status) =>
            {
                order.status = to;
                Some(order.clone())
            }
            _ => None,
        })
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

    async fn drop_tenant(&self, tenant: &TenantId) -> Result<(), StoreError> {
        let mut inner = self.inner.write().expect("store lock");
        inner.tenants.remove(tenant);
        inner.owners.retain(|_, owner| owner != tenant);
        Ok(())
    }

    async fn accept(&self, tenant: &TenantId, new: &NewMessage) -> Result<Accepted, StoreError> {
        self.write(tenant, |ns| -> Result<Accepted, StoreError> {
            let client_key = (!new.client_msg_id.is_empty()).then(|| {
                (
                    new.conversation_id.clone(),
                    new.from_user.clone(),
                    new.client_msg_id.clone(),
                )
            });
            if let Some(seq) = client_key.as_ref().and_then(|k| ns.by_client_id.get(k))
                && let Some(first) = ns.messages.get(&(new.conversation_id.clone(), *seq))
            {
                return Ok(Accepted::Existing(first.clone()));
            }
            if new.members_only
                && let Some(conversation) = ns.conversations.get(&new.conversation_id)
                && conversation.last_seq > 0
                && conversation
                    .participants
                    .binary_search(&new.from_user)
                    .is_err()
            {
                return Err(StoreError::NotAParticipant {
                    conversation: new.conversation_id.clone(),
                    user: new.from_user.clone(),
                });
            }
            let conversation = ns
                .conversations
                .entry(new.conversation_id.clone())
                .or_default();
            conversation.last_seq += 1;
            let seq = conversation.last_seq;
            for user in [&new.from_user, &new.to_user] {
                if let Err(at) = conversation.participants.binary_search(user) {
                    conversation.participants.insert(at, user.clone());
                }
            }
            let position = ns.positions.entry(new.to_user.clone()).or_default();
            *position += 1;
            let message = StoredMessage {
                message_id: new.message_id.clone(),
                conversation_id: new.conversation_id.clone(),
                seq,
                position: *position,
                from_user: new.from_user.clone(),
                to_user: new.to_user.clone(),
                kind: new.kind,
                body: new.body.clone(),
                sent_at_ms: new.sent_at_ms,
            };
            ns.timelines.insert(
                (new.to_user.clone(), message.position),
                Entry::Message(new.conversation_id.clone(), seq),
            );
            if let Some(key) = client_key {
                ns.by_client_id.insert(key, seq);
            }
            ns.ids
                .insert(new.message_id.clone(), (new.conversation_id.clone(), seq));
            ns.messages
                .insert((new.conversation_id.clone(), seq), message.clone());
            Ok(Accepted::New(message))
        })?
    }

    async fn timeline(
        &self,
        tenant: &TenantId,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.read(tenant, |ns| {
            let from = (user.to_owned(), after.saturating_add(1));
            let to = (user.to_owned(), u64::MAX);
            let mut messages: Vec<StoredMessage> = ns
                .timelines
                .range(from..=to)
                .filter_map(|(_, entry)| match entry {
                    Entry::Message(conversation, seq) => {
                        ns.messages.get(&(conversation.clone(), *seq)).cloned()
                    }
                    Entry::Receipt(entry) => Some(entry.clone()),
                })
                .take(limit.saturating_add(1))
                .collect();
            let more = messages.len() > limit;
            messages.truncate(limit);
            Page { messages, more }
        })
    }

    async fn cursor(
        &self,
        tenant: &TenantId,
        user: &str,
        terminal: &str,
    ) -> Result<u64, StoreError> {
        self.write(tenant, |ns| {
            ns.seen
                .insert((user.to_owned(), terminal.to_owned()), now_ms());
            *ns.cursors
                .entry(user.to_owned())
                .or_default()
                .entry(terminal.to_owned())
                .or_default()
        })
    }

    async fn advance_cursor(
        &self,
        tenant: &TenantId,
        user: &str,
        terminal: &str,
        position: u64,
        contiguous: bool,
    ) -> Result<u64, StoreError> {
        self.write(tenant, |ns| {
            // never past what the timeline holds: a cursor ahead would skip what comes next
            let position = position.min(ns.positions.get(user).copied().unwrap_or(0));
            ns.seen
                .insert((user.to_owned(), terminal.to_owned()), now_ms());
            let cursor = ns
                .cursors
                .entry(user.to_owned())
                .or_default()
                .entry(terminal.to_owned())
                .or_default();
            if position > *cursor && (!contiguous || position == *cursor + 1) {
                *cursor = position;
            }
            *cursor
        })
    }

    async fn heads(&self, tenant: &TenantId, users: &[String]) -> Result<Vec<u64>, StoreError> {
        self.read(tenant, |ns| {
            users
                .iter()
                .map(|u| ns.positions.get(u).copied().unwrap_or(0))
                .collect()
        })
    }

    async fn position_of(
        &self,
        tenant: &TenantId,
        user: &str,
        message_id: &str,
    ) -> Result<Option<u64>, StoreError> {
        self.read(tenant, |ns| {
            ns.ids
                .get(message_id)
                .and_then(|key| ns.messages.get(key))
                .filter(|m| m.to_user == user)
                .map(|m| m.position)
        })
    }

    async fn terminals(&self, tenant: &TenantId, user: &str) -> Result<Vec<String>, StoreError> {
        self.read(tenant, |ns| {
            ns.cursors
                .get(user)
                .map(|terminals| terminals.keys().cloned().collect())
                .unwrap_or_default()
        })
    }

    async fn terminal_cursors(
        &self,
        tenant: &TenantId,
        user: &str,
    ) -> Result<Vec<TerminalCursor>, StoreError> {
        self.read(tenant, |ns| {
            ns.cursors
                .get(user)
                .into_iter()
                .flatten()
                .map(|(terminal, position)| TerminalCursor {
                    terminal_id: terminal.clone(),
                    position: *position,
                    seen_at_ms: ns
                        .seen
                        .get(&(user.to_owned(), terminal.clone()))
                        .copied()
                        .unwrap_or(0),
                })
                .collect()
        })
    }

    async fn forget_terminal(
        &self,
        tenant: &TenantId,
        user: &str,
        terminal: &str,
    ) -> Result<bool, StoreError> {
        self.write(tenant, |ns| {
            ns.seen.remove(&(user.to_owned(), terminal.to_owned()));
            ns.cursors
                .get_mut(user)
                .is_some_and(|terminals| terminals.remove(terminal).is_some())
        })
    }

    async fn conversation(
        &self,
        tenant: &TenantId,
        conversation_id: &str,
    ) -> Result<Option<ConversationInfo>, StoreError> {
        self.read(tenant, |ns| ns.conversations.get(conversation_id).cloned())
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

    async fn record_receipt(
        &self,
        tenant: &TenantId,
        receipt: &StoredReceipt,
        receivers: &[String],
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.write(tenant, |ns| {
            let key = (receipt.conversation_id.clone(), receipt.reader.clone());
            if ns
                .receipts
                .get(&key)
                .is_some_and(|old| old.up_to_seq >= receipt.up_to_seq)
            {
                return Vec::new();
            }
            ns.receipts.insert(key, receipt.clone());
            receivers
                .iter()
                .map(|receiver| {
                    let position = ns.positions.entry(receiver.clone()).or_default();
                    *position += 1;
                    let entry = StoredMessage::of_receipt(receipt, receiver, *position);
                    ns.timelines.insert(
                        (receiver.clone(), entry.position),
                        Entry::Receipt(entry.clone()),
                    );
                    entry
                })
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
            ns.timelines.retain(|_, entry| match entry {
                Entry::Message(conversation, seq) => {
                    messages.contains_key(&(conversation.clone(), *seq))
                }
                Entry::Receipt(receipt) => receipt.sent_at_ms >= cutoff_ms,
            });
            ns.ids.retain(|_, key| messages.contains_key(key));
            // client ids of purged messages are forgotten too: a retry that late is a new send
            ns.by_client_id.retain(|(conversation, _, _), seq| {
                messages.contains_key(&(conversation.clone(), *seq))
            });
            (before - ns.messages.len()) as u64
        })
    }
}

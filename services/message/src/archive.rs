//! The storage consumer: message events into the tenant's store.

use std::sync::Arc;

use mesh_api::message::v1 as message;
use mesh_contract::{HandlerError, RequestContext, TenantId};
use mesh_store::{MessageStore, StoreError, StoredMessage, StoredReceipt};

use crate::MessageSettings;

/// Persists `MessageSent` and `MessageRead` into the store, in the namespace of the event's
/// tenant. Subscribe it per tenant with
/// `MessageConsumer::new(archive).subscription(tenant, "storage")`.
#[derive(Clone)]
pub struct Archive {
    store: Arc<dyn MessageStore>,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive").finish_non_exhaustive()
    }
}

/// A store failure as the bus should treat it: a backend hiccup is retried, anything about
/// the tenant itself can never succeed and is dead-lettered with the reason.
fn handler_error(err: StoreError) -> HandlerError {
    match err {
        StoreError::Backend { .. } => HandlerError::Retry(err.to_string()),
        _ => HandlerError::Reject(err.to_string()),
    }
}

impl Archive {
    /// Archives into `store`.
    pub fn new(store: Arc<dyn MessageStore>) -> Self {
        Self { store }
    }

    /// The store it writes to.
    pub fn store(&self) -> &Arc<dyn MessageStore> {
        &self.store
    }

    /// Deletes the tenant's messages older than its retention allows; returns how many.
    pub async fn purge_expired(
        &self,
        tenant: &TenantId,
        settings: &MessageSettings,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        self.store
            .purge_before(tenant, settings.retention_cutoff_ms(now_ms))
            .await
    }
}

/// The stored form of a chat message.
pub fn stored(m: message::ChatMessage) -> StoredMessage {
    StoredMessage {
        message_id: m.message_id,
        conversation_id: m.conversation_id,
        seq: m.seq,
        from_user: m.from_user,
        to_user: m.to_user,
        kind: m.kind,
        body: m.body,
        sent_at_ms: m.sent_at_ms,
    }
}

impl message::MessageHandler for Archive {
    async fn on_message_sent(
        &self,
        ctx: &RequestContext,
        event: message::MessageSent,
    ) -> Result<(), HandlerError> {
        let m = event
            .message
            .ok_or_else(|| HandlerError::Reject("MessageSent carries no message".into()))?;
        // a redelivered event finds the message stored and changes nothing
        self.store
            .save_message(&ctx.tenant, &stored(m))
            .await
            .map(drop)
            .map_err(handler_error)
    }

    async fn on_message_read(
        &self,
        ctx: &RequestContext,
        event: message::MessageRead,
    ) -> Result<(), HandlerError> {
        let r = event
            .receipt
            .ok_or_else(|| HandlerError::Reject("MessageRead carries no receipt".into()))?;
        let receipt = StoredReceipt {
            conversation_id: r.conversation_id,
            reader: r.reader,
            up_to_seq: r.up_to_seq,
            read_at_ms: r.read_at_ms,
        };
        self.store
            .save_receipt(&ctx.tenant, &receipt)
            .await
            .map_err(handler_error)
    }
}

#[cfg(test)]
mod tests {
    use mesh_api::message::v1::MessageHandler as _;
    use mesh_store::MemoryStore;

    use super::*;

    fn ctx(tenant: &str) -> RequestContext {
        RequestContext::new(TenantId::new(tenant).unwrap())
    }

    #[tokio::test]
    async fn events_that_can_never_be_stored_are_rejected_with_the_reason() {
        let store = Arc::new(MemoryStore::default());
        store
            .open(&TenantId::new("mall").unwrap(), "mall")
            .await
            .unwrap();
        let archive = Archive::new(store.clone());

        let empty = archive
            .on_message_sent(&ctx("mall"), message::MessageSent { message: None })
            .await;
        assert_eq!(
            empty,
            Err(HandlerError::Reject(
                "MessageSent carries no message".into()
            ))
        );
        let sent = message::MessageSent {
            message: Some(message::ChatMessage {
                message_id: "m-1".into(),
                conversation_id: "c".into(),
                seq: 1,
                ..Default::default()
            }),
        };
        let stranger = archive
            .on_message_sent(&ctx("stranger"), sent.clone())
            .await;
        assert!(
            matches!(&stranger, Err(HandlerError::Reject(reason)) if reason.contains("tenant stranger")),
            "{stranger:?}"
        );
        // stored once, however often the event is delivered
        for _ in 0..2 {
            archive
                .on_message_sent(&ctx("mall"), sent.clone())
                .await
                .unwrap();
        }
        let mall = TenantId::new("mall").unwrap();
        assert_eq!(store.history(&mall, "c", 0, 10).await.unwrap().len(), 1);
    }
}

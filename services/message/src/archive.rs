//! The storage consumer: read receipts into the tenant's store.
//!
//! Messages themselves are stored by Send before it answers (see [`crate::MessageService`]);
//! a `MessageSent` event is an announcement of a stored message, never a way in, so one
//! published by hand cannot put a message into anyone's conversation.

use std::sync::Arc;

use mesh_api::message::v1 as message;
use mesh_contract::{HandlerError, RequestContext, TenantId};
use mesh_store::{MessageStore, StoreError, StoredReceipt};

use crate::MessageSettings;

/// Persists `MessageRead` into the store, in the namespace of the event's tenant (and lets
/// `MessageSent` pass: that message is stored already). Subscribe it per tenant with
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

/// A store failure as the bus should treat it: a transient one (database unreachable, pool
/// exhausted) is retried until the store is back; one about the data or the tenant can never
/// succeed and is dead-lettered with the reason.
fn handler_error(err: StoreError) -> HandlerError {
    if err.is_transient() {
        HandlerError::Retry(err.to_string())
    } else {
        HandlerError::Reject(err.to_string())
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

impl message::MessageHandler for Archive {
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
    async fn receipts_that_can_never_be_stored_are_rejected_with_the_reason() {
        let store = Arc::new(MemoryStore::default());
        store
            .open(&TenantId::new("mall").unwrap(), "mall")
            .await
            .unwrap();
        let archive = Archive::new(store.clone());

        let empty = archive
            .on_message_read(&ctx("mall"), message::MessageRead { receipt: None })
            .await;
        assert_eq!(
            empty,
            Err(HandlerError::Reject(
                "MessageRead carries no receipt".into()
            ))
        );
        let read = message::MessageRead {
            receipt: Some(message::ReadReceipt {
                conversation_id: "c".into(),
                reader: "bob".into(),
                up_to_seq: 3,
                read_at_ms: 1,
                position: 0,
            }),
        };
        let stranger = archive
            .on_message_read(&ctx("stranger"), read.clone())
            .await;
        assert!(
            matches!(&stranger, Err(HandlerError::Reject(reason)) if reason.contains("tenant stranger")),
            "{stranger:?}"
        );
        // the same receipt twice is one receipt
        for _ in 0..2 {
            archive
                .on_message_read(&ctx("mall"), read.clone())
                .await
                .unwrap();
        }
        let mall = TenantId::new("mall").unwrap();
        assert_eq!(
            store
                .receipt(&mall, "c", "bob")
                .await
                .unwrap()
                .map(|r| r.up_to_seq),
            Some(3)
        );
        // a message announced on the bus is not a way into the store
        let forged = message::MessageSent {
            message: Some(message::ChatMessage {
                message_id: "forged".into(),
                conversation_id: "c".into(),
                seq: 1,
                from_user: "mallory".into(),
                ..Default::default()
            }),
        };
        archive.on_message_sent(&ctx("mall"), forged).await.unwrap();
        assert!(store.history(&mall, "c", 0, 10).await.unwrap().is_empty());
    }
}

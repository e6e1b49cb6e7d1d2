//! Dead letters, seen and handled by operators: count, peek, replay through the normal
//! consumer, purge. Each subscription `Q` has its dead-letter queue `Q.dead`, where the
//! consumer puts (confirmed) what its handler rejected for good, with the reason, the number
//! of runs, the queue it came from and the event's routing key in headers; RabbitMQ's own
//! dead-lettering routes there too whatever the broker itself dead-letters from `Q`. A
//! dead-letter queue is bounded (`dead_letter_max_length`, `dead_letter_ttl`): past the
//! length the oldest go first.
//!
//! Replay publishes a dead letter back to its queue only (not to the other consumers of the
//! exchange), with its message id: a message replayed twice, or replayed after it was handled,
//! is handled once, as the delivery log drops ids it has seen.

use lapin::{
    BasicProperties,
    options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions, QueuePurgeOptions},
    types::FieldTable,
};
use mesh_contract::BusError;

use crate::{AmqpBus, envelope, unavailable};

/// One dead letter, as an operator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The AMQP message id (the idempotency key).
    pub message_id: String,
    /// The event (`OrderCreated`), from its headers.
    pub event: String,
    /// The tenant, from its headers.
    pub tenant: String,
    /// Why it was dead-lettered.
    pub reason: String,
    /// How many times the handler ran.
    pub attempts: u32,
    /// The payload's size in bytes.
    pub bytes: usize,
}

fn letter(properties: &BasicProperties, bytes: usize) -> DeadLetter {
    let headers = properties.headers().as_ref();
    let text = |name| envelope::text(headers, name).unwrap_or_default().to_owned();
    DeadLetter {
        message_id: properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default(),
        // a raw publisher may set no event header: its routing key says which event it meant
        event: Some(text(envelope::headers::EVENT))
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| text(envelope::headers::ROUTING_KEY)),
        tenant: text(mesh_contract::headers::TENANT),
        reason: text(envelope::headers::DEAD_REASON),
        attempts: text(envelope::headers::DEAD_ATTEMPTS).parse().unwrap_or(0),
        bytes,
    }
}

impl AmqpBus {
    /// How many dead letters the queue `queue` (a subscription's queue, not its `.dead`) holds.
    pub async fn dead_letter_count(&self, queue: &str) -> Result<u32, BusError> {
        self.waiting(&mesh_contract::spec::names::dead_letter_queue(queue))
            .await
    }

    /// [`dead_letter_count`](Self::dead_letter_count), or `None` when the dead-letter queue is
    /// not declared (yet: its consumer never subscribed).
    pub async fn dead_letter_count_if_declared(
        &self,
        queue: &str,
    ) -> Result<Option<u32>, BusError> {
        self.waiting_if_declared(&mesh_contract::spec::names::dead_letter_queue(queue))
            .await
    }

    /// How many messages wait in `queue` for its consumer (not counting those it holds
    /// unacknowledged): how far the consumer lags.
    pub async fn waiting(&self, queue: &str) -> Result<u32, BusError> {
        self.waiting_if_declared(queue).await?.ok_or_else(|| {
            BusError::Topology(format!("queue {queue} is not declared on the broker"))
        })
    }

    /// [`waiting`](Self::waiting), or `None` when the broker answers that `queue` does not
    /// exist (told by the AMQP reply code, 404 NOT_FOUND, not by its text).
    pub async fn waiting_if_declared(&self, queue: &str) -> Result<Option<u32>, BusError> {
        let channel = self.admin_channel().await?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        let declared = match declared {
            Ok(declared) => declared,
            // the broker closed the channel with the error: nothing to close
            Err(err) if not_found(&err) => return Ok(None),
            Err(err) => return Err(BusError::Topology(format!("queue {queue}: {err}"))),
        };
        let _ = channel.close(200, "done".into()).await;
        Ok(Some(declared.message_count()))
    }

    /// Up to `limit` dead letters of `queue`, oldest first, left where they are.
    pub async fn peek_dead_letters(
        &self,
        queue: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        let channel = self.admin_channel().await?;
        let dead = mesh_contract::spec::names::dead_letter_queue(queue);
        let mut letters = Vec::new();
        while letters.len() < limit {
            let got = channel
                .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(|e| BusError::Topology(format!("dead-letter queue {dead}: {e}")))?;
            let Some(message) = got else { break };
            letters.push(letter(
                &message.delivery.properties,
                message.delivery.data.len(),
            ));
        }
        // unacknowledged: closing the channel puts them back, in their order
        let _ = channel.close(200, "peeked".into()).await;
        Ok(letters)
    }

    /// Sends up to `limit` dead letters of `queue` back to it (the handler runs them again),
    /// each removed from the dead-letter queue only once the broker confirmed the replay.
    /// Only the letters there when the replay starts: one that fails again and comes back is
    /// not replayed a second time in the same call. Returns how many.
    pub async fn replay_dead_letters(&self, queue: &str, limit: usize) -> Result<u32, BusError> {
        let limit = limit.min(self.dead_letter_count(queue).await? as usize);
        let channel = self.admin_channel().await?;
        let dead = mesh_contract::spec::names::dead_letter_queue(queue);
        let mut replayed = 0;
        while (replayed as usize) < limit {
            let got = channel
                .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(|e| BusError::Topology(format!("dead-letter queue {dead}: {e}")))?;
            let Some(message) = got else { break };
            let delivery = message.delivery;
            let mut headers = delivery.properties.headers().clone().unwrap_or_default();
            let mut kept = FieldTable::default();
            for (name, value) in headers.inner() {
                if !name.as_str().starts_with("x-mesh-dead-") && name.as_str() != "x-death" {
                    kept.insert(name.clone(), value.clone());
                }
            }
            headers = kept;
            let properties = delivery.properties.clone().with_headers(headers);
            self.publish_confirmed("", queue, "replay", &delivery.data, properties)
                .await?;
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(|e| unavailable("acknowledging a replayed dead letter", e))?;
            replayed += 1;
        }
        let _ = channel.close(200, "replayed".into()).await;
        Ok(replayed)
    }

    /// Deletes every dead letter of `queue`; returns how many.
    pub async fn purge_dead_letters(&self, queue: &str) -> Result<u32, BusError> {
        let channel = self.admin_channel().await?;
        let dead = mesh_contract::spec::names::dead_letter_queue(queue);
        let purged = channel
            .queue_purge(dead.as_str().into(), QueuePurgeOptions::default())
            .await
            .map_err(|e| BusError::Topology(format!("dead-letter queue {dead}: {e}")))?;
        let _ = channel.close(200, "purged".into()).await;
        Ok(purged)
    }

    async fn admin_channel(&self) -> Result<lapin::Channel, BusError> {
        let deadline = std::time::Instant::now() + self.inner.config.publish_timeout;
        let link = self.link_until(deadline).await?;
        link.connection
            .create_channel()
            .await
            .map_err(|e| unavailable("opening a channel", e))
    }
}

/// Whether the broker answered 404 NOT_FOUND (a passive declare of a queue that does not exist).
fn not_found(err: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(
        err.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
    )
}

//! The RabbitMQ transport for contract events (AMQP 0-9-1 via lapin).
//!
//! [`AmqpBus`] implements [`mesh_contract::EventBus`], so generated publishers and consumers
//! run on it unchanged. What it guarantees:
//!
//! - **Topology from the contract**: one durable topic exchange per tenant, service and major
//!   version (`mesh.<tenant>.<service>.v<major>`), one durable queue per consuming service
//!   (`<exchange>.<consumer>`) bound to the events it handles, and a dead-letter queue beside it
//!   (`<queue>.dead`).
//! - **Publishing**: persistent messages, publisher confirms (a publish returns once the broker
//!   confirmed it) and `mandatory`, so an event no queue would take is an error, not a loss.
//!   The tenant, request id, credential, trace context, event name and contract version travel
//!   as headers; the message id as the AMQP message id.
//! - **Consuming**: bounded prefetch, manual acks after the handler succeeded, bounded retries
//!   with backoff for [`HandlerError::Retry`], and dead-lettering with the reason in the
//!   `x-mesh-dead-reason` header for rejected, undecodable, oversized or foreign-tenant
//!   messages, while the consumer keeps running.

mod consume;
mod envelope;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions},
    types::FieldTable,
};
use mesh_contract::{
    BusError, EventBus, EventSpec, RequestContext, Subscription, SubscriptionHandle,
    bus::{BoxFuture, Bytes},
};

pub use envelope::headers;

/// Settings of the RabbitMQ transport.
#[derive(Clone, Debug)]
pub struct AmqpConfig {
    /// Broker address, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`; the vhost is the path.
    pub uri: String,
    /// Unacknowledged deliveries a consumer holds at most.
    pub prefetch: u16,
    /// Largest payload published or handled; larger ones are refused or dead-lettered.
    pub max_payload_bytes: usize,
    /// Runs of a handler that keeps asking to retry before the message is dead-lettered.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for each further one.
    pub retry_backoff: Duration,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            uri: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefetch: 32,
            max_payload_bytes: 1024 * 1024,
            max_attempts: 3,
            retry_backoff: Duration::from_millis(100),
        }
    }
}

/// An [`EventBus`] on RabbitMQ. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct AmqpBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: AmqpConfig,
    connection: Connection,
    /// Confirm-mode channel for publishing (and dead-lettering).
    publisher: Channel,
    /// Exchanges already declared on this connection.
    declared: Mutex<HashSet<String>>,
}

fn unavailable(context: &str, err: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("{context}: {err}"))
}

impl AmqpBus {
    /// Connects to the broker and opens the confirm-mode publishing channel.
    pub async fn connect(config: AmqpConfig) -> Result<Self, BusError> {
        let connection = Connection::connect(&config.uri, ConnectionProperties::default())
            .await
            .map_err(|e| unavailable(&format!("connecting to {}", redact(&config.uri)), e))?;
        let publisher = connection
            .create_channel()
            .await
            .map_err(|e| unavailable("opening a channel", e))?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| unavailable("enabling publisher confirms", e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                connection,
                publisher,
                declared: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// The transport's settings.
    pub fn config(&self) -> &AmqpConfig {
        &self.inner.config
    }

    /// Closes the connection; subscriptions stop.
    pub async fn close(&self) -> Result<(), BusError> {
        self.inner
            .connection
            .close(200, "closing".into())
            .await
            .map_err(|e| unavailable("closing", e))
    }

    /// Declares the durable topic exchange of a tenant's contract, once per connection.
    async fn declare_exchange(&self, channel: &Channel, exchange: &str) -> Result<(), BusError> {
        if self.inner.declared.lock().expect("lock").contains(exchange) {
            return Ok(());
        }
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| BusError::Topology(format!("declaring exchange {exchange}: {e}")))?;
        self.inner
            .declared
            .lock()
            .expect("lock")
            .insert(exchange.to_owned());
        Ok(())
    }

    /// Publishes with confirm and `mandatory`; a nack or a returned message is an error.
    async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        event: &'static str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BusError> {
        let confirm = self
            .inner
            .publisher
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                payload,
                properties,
            )
            .await
            .map_err(|e| unavailable("publishing", e))?
            .await
            .map_err(|e| unavailable("waiting for the publish confirm", e))?;
        let not_confirmed = |reason: String| BusError::NotConfirmed {
            event,
            exchange: exchange.to_owned(),
            reason,
        };
        if confirm.is_nack() {
            return Err(not_confirmed(
                "the broker refused the message (nack)".into(),
            ));
        }
        match confirm.take_message() {
            None => Ok(()),
            Some(returned) => Err(not_confirmed(format!(
                "unroutable ({} {}): no queue is bound for routing key {routing_key:?}; start a consumer first",
                returned.reply_code, returned.reply_text
            ))),
        }
    }
}

/// The URI without its password, for error messages.
fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &uri[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &uri[..scheme + 3], &uri[at..])
        }
        _ => uri.to_owned(),
    }
}

impl EventBus for AmqpBus {
    fn publish<'a>(
        &'a self,
        ctx: &'a RequestContext,
        event: &'static EventSpec,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let limit = self.inner.config.max_payload_bytes;
            if payload.len() > limit {
                return Err(BusError::PayloadTooLarge {
                    event: event.name,
                    size: payload.len(),
                    limit,
                });
            }
            let exchange = event.exchange(&ctx.tenant);
            self.declare_exchange(&self.inner.publisher, &exchange)
                .await?;
            let properties = envelope::properties(ctx, event);
            self.publish_confirmed(
                &exchange,
                event.routing_key,
                event.name,
                &payload,
                properties,
            )
            .await
        })
    }

    fn subscribe(
        &self,
        subscription: Subscription,
    ) -> BoxFuture<'_, Result<SubscriptionHandle, BusError>> {
        Box::pin(consume::subscribe(self.clone(), subscription))
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}

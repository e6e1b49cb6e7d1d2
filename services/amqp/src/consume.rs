//! The consuming side: topology for a subscription, then one task per subscription that runs
//! the handler for each delivery in order and acks, retries or dead-letters it.

use futures::StreamExt;
use lapin::{
    BasicProperties, Channel,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::FieldTable,
};
use mesh_contract::{
    BusError, HandlerError, RequestContext, Subscription, SubscriptionHandle,
    bus::{Bytes, StopSignal},
    spec::names,
};

use crate::{AmqpBus, envelope, unavailable};

/// Where one subscription's messages live.
struct Queues {
    queue: String,
    dead: String,
}

pub(crate) async fn subscribe(
    bus: AmqpBus,
    sub: Subscription,
) -> Result<SubscriptionHandle, BusError> {
    let first = sub
        .events
        .first()
        .ok_or_else(|| BusError::Topology("the subscription names no events".into()))?;
    let exchange = names::exchange(&sub.tenant, first.service, first.major);
    let queue = names::queue(&sub.tenant, first.service, first.major, &sub.consumer);
    let queues = Queues {
        dead: names::dead_letter_queue(&queue),
        queue,
    };
    let channel = bus
        .inner
        .connection
        .create_channel()
        .await
        .map_err(|e| unavailable("opening a consumer channel", e))?;
    bus.declare_exchange(&channel, &exchange).await?;
    let topology = |what: String| move |e: lapin::Error| BusError::Topology(format!("{what}: {e}"));
    for name in [&queues.queue, &queues.dead] {
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(topology(format!("declaring queue {name}")))?;
    }
    for event in sub.events {
        channel
            .queue_bind(
                queues.queue.as_str().into(),
                exchange.as_str().into(),
                event.routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(topology(format!(
                "binding {} to {exchange} for {}",
                queues.queue, event.routing_key
            )))?;
    }
    channel
        .basic_qos(bus.inner.config.prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| unavailable("setting prefetch", e))?;
    let tag = format!("{}-{}", sub.consumer, uuid::Uuid::new_v4());
    let consumer = channel
        .basic_consume(
            queues.queue.as_str().into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| unavailable(&format!("consuming {}", queues.queue), e))?;
    let (handle, stop) = SubscriptionHandle::new();
    tracing::debug!(queue = %queues.queue, "consuming");
    tokio::spawn(run(bus, channel, consumer, sub, queues, stop));
    Ok(handle)
}

async fn run(
    bus: AmqpBus,
    channel: Channel,
    mut consumer: lapin::Consumer,
    sub: Subscription,
    queues: Queues,
    mut stop: StopSignal,
) {
    loop {
        tokio::select! {
            // A stopped subscription takes no further delivery, even one already waiting.
            biased;
            _ = &mut stop => break,
            next = consumer.next() => match next {
                Some(Ok(delivery)) => handle(&bus, &sub, &queues, delivery).await,
                Some(Err(err)) => {
                    tracing::warn!(queue = %queues.queue, error = %err, "consumer stopped");
                    break;
                }
                None => break,
            },
        }
    }
    let _ = channel.close(200, "subscription stopped".into()).await;
}

/// What becomes of a delivery.
enum Outcome {
    Done,
    Dead { reason: String, attempts: u32 },
}

fn dead(reason: impl Into<String>) -> Outcome {
    Outcome::Dead {
        reason: reason.into(),
        attempts: 0,
    }
}

async fn handle(bus: &AmqpBus, sub: &Subscription, queues: &Queues, delivery: Delivery) {
    let outcome = decide(bus, sub, &delivery).await;
    let acked = match outcome {
        Outcome::Done => delivery.acker.ack(BasicAckOptions::default()).await,
        Outcome::Dead { reason, attempts } => {
            tracing::warn!(queue = %queues.queue, %reason, "dead-lettering a message");
            match dead_letter(bus, queues, &delivery, &reason, attempts).await {
                Ok(()) => delivery.acker.ack(BasicAckOptions::default()).await,
                Err(err) => {
                    // Not safely stored elsewhere: hand it back to the broker rather than lose it.
                    tracing::error!(queue = %queues.queue, error = %err, "dead-lettering failed; requeueing");
                    delivery
                        .acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await
                }
            }
        }
    };
    if let Err(err) = acked {
        tracing::warn!(queue = %queues.queue, error = %err, "acknowledging failed; the broker will redeliver");
    }
}

async fn decide(bus: &AmqpBus, sub: &Subscription, delivery: &Delivery) -> Outcome {
    let config = &bus.inner.config;
    if delivery.data.len() > config.max_payload_bytes {
        return dead(format!(
            "payload is {} bytes, over the limit of {} bytes",
            delivery.data.len(),
            config.max_payload_bytes
        ));
    }
    let headers = delivery.properties.headers().as_ref();
    let ctx = match RequestContext::from_headers(|name| envelope::text(headers, name)) {
        Ok(ctx) => ctx,
        Err(err) => return dead(err.to_string()),
    };
    if ctx.tenant != sub.tenant {
        return dead(format!(
            "message for tenant {} arrived on a queue of tenant {}",
            ctx.tenant, sub.tenant
        ));
    }
    let routing_key = delivery.routing_key.as_str();
    let Some(event) = sub.events.iter().find(|e| e.routing_key == routing_key) else {
        return dead(format!(
            "no subscribed event has routing key {routing_key:?}"
        ));
    };
    let payload = Bytes::from(delivery.data.clone());
    for attempt in 1..=config.max_attempts.max(1) {
        let run = sub.dispatch.dispatch(ctx.clone(), event, payload.clone());
        let result = match event.timeout {
            Some(limit) => tokio::time::timeout(limit, run).await.unwrap_or_else(|_| {
                Err(HandlerError::Retry(format!(
                    "handler did not finish within {limit:?}"
                )))
            }),
            None => run.await,
        };
        match result {
            Ok(()) => return Outcome::Done,
            Err(HandlerError::Reject(reason)) => {
                return Outcome::Dead {
                    reason,
                    attempts: attempt,
                };
            }
            Err(HandlerError::Retry(reason)) if attempt == config.max_attempts.max(1) => {
                return Outcome::Dead {
                    reason: format!("gave up after {attempt} attempt(s): {reason}"),
                    attempts: attempt,
                };
            }
            Err(HandlerError::Retry(reason)) => {
                let wait = config.retry_backoff * 2u32.saturating_pow(attempt - 1);
                tracing::debug!(event = event.name, attempt, %reason, ?wait, "handler asked to retry");
                tokio::time::sleep(wait).await;
            }
        }
    }
    unreachable!("the loop returns on its last attempt")
}

/// Copies the message, with the reason, into the subscription's dead-letter queue (confirmed).
async fn dead_letter(
    bus: &AmqpBus,
    queues: &Queues,
    delivery: &Delivery,
    reason: &str,
    attempts: u32,
) -> Result<(), BusError> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    envelope::insert(&mut headers, envelope::headers::DEAD_REASON, reason);
    envelope::insert(
        &mut headers,
        envelope::headers::DEAD_ATTEMPTS,
        &attempts.to_string(),
    );
    envelope::insert(&mut headers, envelope::headers::DEAD_QUEUE, &queues.queue);
    let properties: BasicProperties = delivery.properties.clone().with_headers(headers);
    bus.publish_confirmed("", &queues.dead, "dead-letter", &delivery.data, properties)
        .await
}

//! The consuming side: topology for a subscription, then one task per subscription that runs
//! the handler for each delivery in order and acks, retries or dead-letters it.

use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::{
    BasicProperties, Channel,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use mesh_contract::{
    Backoff, BusError, EventSpec, HandlerError, RequestContext, Subscription, SubscriptionHandle,
    bus::{Bytes, StopSignal},
    spec::names,
};
use mesh_telemetry::{Destination, EventTrace};
use tracing::Instrument;

use crate::{AmqpBus, Link, envelope, unavailable};

/// Where one subscription's messages live.
struct Queues {
    exchange: String,
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
    let queue = names::queue(&sub.tenant, first.service, first.major, &sub.consumer);
    let queues = Queues {
        exchange: names::exchange(&sub.tenant, first.service, first.major),
        dead: names::dead_letter_queue(&queue),
        queue,
    };
    let deadline = Instant::now() + bus.inner.config.publish_timeout;
    let link = bus.link_until(deadline).await?;
    let (channel, consumer) = attach(&bus, &link, &sub, &queues).await?;
    let (handle, stop) = SubscriptionHandle::new();
    tracing::debug!(queue = %queues.queue, "consuming");
    tokio::spawn(run(bus, channel, consumer, sub, queues, stop));
    Ok(handle)
}

/// Declares the subscription's topology on `link` and starts consuming its queue.
async fn attach(
    bus: &AmqpBus,
    link: &Link,
    sub: &Subscription,
    queues: &Queues,
) -> Result<(Channel, lapin::Consumer), BusError> {
    let channel = link
        .connection
        .create_channel()
        .await
        .map_err(|e| unavailable("opening a consumer channel", e))?;
    bus.declare_exchange(link, &channel, &queues.exchange)
        .await?;
    let config = &bus.inner.config;
    let mut dead_args = FieldTable::default();
    dead_args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(i64::from(config.dead_letter_max_length)),
    );
    dead_args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(
            i64::try_from(config.dead_letter_ttl.as_millis()).unwrap_or(i64::MAX),
        ),
    );
    if config.queue_type == crate::QueueType::Quorum {
        dead_args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    // RabbitMQ's own dead-lettering (nack without requeue, a TTL or length limit an operator
    // sets by policy) lands in the same dead-letter queue
    let mut queue_args = FieldTable::default();
    queue_args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    queue_args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(queues.dead.as_str().into()),
    );
    if config.queue_type == crate::QueueType::Quorum {
        queue_args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    for (name, args) in [(&queues.dead, dead_args), (&queues.queue, queue_args)] {
        declare_keeping_existing(link, name, args).await?;
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable(&format!("declaring queue {name}"), e))?;
    }
    for event in sub.events {
        channel
            .queue_bind(
                queues.queue.as_str().into(),
                queues.exchange.as_str().into(),
                event.routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                unavailable(
                    &format!("binding {} for {}", queues.queue, event.routing_key),
                    e,
                )
            })?;
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
    Ok((channel, consumer))
}

/// Declares a durable queue with `args`; a queue of that name that already exists with other
/// arguments (declared by an earlier version) is kept as it is, with a warning, rather than
/// failing the subscription. The declaration runs on a channel of its own, which a refusal
/// closes.
async fn declare_keeping_existing(
    link: &Link,
    name: &str,
    args: FieldTable,
) -> Result<(), BusError> {
    let channel = link
        .connection
        .create_channel()
        .await
        .map_err(|e| unavailable("opening a channel", e))?;
    let declared = channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await;
    match declared {
        Ok(_) => {
            let _ = channel.close(200, "declared".into()).await;
            Ok(())
        }
        // PRECONDITION_FAILED: the queue exists with other arguments
        Err(e) if matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406) =>
        {
            tracing::warn!(queue = name, error = %e, "queue exists with other arguments; keeping it (delete it to get dead-letter bounds)");
            Ok(())
        }
        Err(e) => Err(unavailable(&format!("declaring queue {name}"), e)),
    }
}

/// Consumes until stopped; when the connection drops, reattaches on a new one.
async fn run(
    bus: AmqpBus,
    mut channel: Channel,
    mut consumer: lapin::Consumer,
    sub: Subscription,
    queues: Queues,
    mut stop: StopSignal,
) {
    loop {
        let lost = loop {
            tokio::select! {
                // A stopped subscription takes no further delivery, even one already waiting.
                biased;
                _ = &mut stop => {
                    let _ = channel.close(200, "subscription stopped".into()).await;
                    return;
                }
                next = consumer.next() => match next {
                    // a handler retrying a transient failure waits for its dependency as long
                    // as it takes, but a stop still ends it: the delivery, unacked, goes back
                    // to the queue with the channel
                    Some(Ok(delivery)) => tokio::select! {
                        biased;
                        _ = &mut stop => {
                            let _ = channel.close(200, "subscription stopped".into()).await;
                            return;
                        }
                        () = handle(&bus, &sub, &queues, delivery) => {}
                    },
                    Some(Err(err)) => break err.to_string(),
                    None => break "consumer cancelled".to_owned(),
                },
            }
        };
        tracing::warn!(queue = %queues.queue, reason = %lost, "consumer lost its connection; reattaching");
        let mut backoff = Backoff::new(
            Duration::from_millis(50),
            bus.inner.config.max_reconnect_backoff,
        );
        loop {
            if bus.is_closed() {
                return;
            }
            tokio::select! {
                biased;
                _ = &mut stop => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
            let attached = match bus.link_once().await {
                Ok(link) => match attach(&bus, &link, &sub, &queues).await {
                    Ok(attached) => Ok(attached),
                    Err(err) => {
                        bus.drop_link(&link).await;
                        Err(err)
                    }
                },
                Err(err) => Err(err),
            };
            match attached {
                Ok((new_channel, new_consumer)) => {
                    tracing::info!(queue = %queues.queue, "consumer reattached");
                    (channel, consumer) = (new_channel, new_consumer);
                    break;
                }
                Err(err) => {
                    tracing::debug!(queue = %queues.queue, error = %err, "reattaching failed");
                }
            }
        }
    }
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
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned());
    let log = &bus.inner.log;
    let already = match &message_id {
        Some(id) => log.handled(&queues.queue, id).await.unwrap_or_else(|err| {
            tracing::warn!(queue = %queues.queue, error = %err, "cannot tell whether the message was handled; running it");
            false
        }),
        None => false,
    };
    let outcome = if already {
        tracing::debug!(queue = %queues.queue, message_id = ?message_id, "already handled; acknowledging the redelivery");
        Outcome::Done
    } else {
        let outcome = decide(bus, sub, queues, &delivery).await;
        if let (Outcome::Done, Some(id)) = (&outcome, &message_id)
            && let Err(err) = log.record(&queues.queue, id).await
        {
            tracing::warn!(queue = %queues.queue, error = %err, "could not record the message as handled");
        }
        outcome
    };
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

async fn decide(
    bus: &AmqpBus,
    sub: &Subscription,
    queues: &Queues,
    delivery: &Delivery,
) -> Outcome {
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
    // a replayed dead letter comes straight to the queue, its routing key in a header
    let routing_key = if delivery.exchange.as_str().is_empty() {
        envelope::text(headers, envelope::headers::ROUTING_KEY).unwrap_or_default()
    } else {
        delivery.routing_key.as_str()
    };
    let Some(event) = sub.events.iter().find(|e| e.routing_key == routing_key) else {
        return dead(format!(
            "no subscribed event has routing key {routing_key:?}"
        ));
    };
    let payload = Bytes::from(delivery.data.clone());
    // the consume continues the publisher's trace
    let destination = Destination {
        exchange: &queues.exchange,
        routing_key,
        queue: Some(&queues.queue),
        message_id: delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str()),
    };
    let (trace, ctx) = EventTrace::start("rabbitmq", "process", &ctx, event, &destination);
    let outcome = run_handler(bus, sub, &ctx, event, payload)
        .instrument(trace.span().clone())
        .await;
    match &outcome {
        Outcome::Done => trace.finish("ok", false),
        Outcome::Dead { reason, .. } => trace.fail("dead_lettered", reason),
    }
    if let Some(age) = envelope::age(&delivery.properties) {
        mesh_telemetry::metrics::event_lag(
            sub.tenant.as_str(),
            event.service,
            event.name,
            &sub.consumer,
            age,
        );
    }
    outcome
}

/// Runs the handler until it succeeds or rejects the message: a transient failure (retry, or
/// the event's timeout) is retried with backoff doubling up to `max_retry_backoff`, for as
/// long as the dependency is down.
async fn run_handler(
    bus: &AmqpBus,
    sub: &Subscription,
    ctx: &RequestContext,
    event: &'static EventSpec,
    payload: Bytes,
) -> Outcome {
    let config = &bus.inner.config;
    let mut backoff = Backoff::new(
        config.retry_backoff,
        config.max_retry_backoff.max(config.retry_backoff),
    );
    for attempt in 1u32.. {
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
            Err(HandlerError::Retry(reason)) => {
                let wait = backoff.next_delay();
                // a dependency down for long says so every tenth run, not every run
                if attempt % 10 == 1 {
                    tracing::warn!(event = event.name, tenant = %ctx.tenant, attempt, %reason, ?wait, "transient failure; retrying until the dependency is back");
                } else {
                    tracing::debug!(event = event.name, attempt, %reason, ?wait, "retrying");
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
    unreachable!("attempts never run out")
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
    if envelope::text(Some(&headers), envelope::headers::ROUTING_KEY).is_none() {
        envelope::insert(
            &mut headers,
            envelope::headers::ROUTING_KEY,
            delivery.routing_key.as_str(),
        );
    }
    let properties: BasicProperties = delivery.properties.clone().with_headers(headers);
    bus.publish_confirmed("", &queues.dead, "dead-letter", &delivery.data, properties)
        .await
}

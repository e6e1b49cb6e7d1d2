//! An in-process [`EventBus`]: the default when no broker is configured, so the demo and a
//! single-process deployment run with nothing installed.
//!
//! It keeps the semantics of the RabbitMQ transport where they make sense in one process:
//! queues named and bound exactly as on the broker (per tenant, service, major version and
//! consumer), so tenants never share one; a queue outlives its subscription and keeps
//! messages until a consumer comes back; an event no queue would take is an error, not a
//! silent loss; handlers run in order, retried with backoff when they ask to, and messages are
//! dead-lettered with the reason when they are rejected or out of retries. What it does not
//! have is durability across a restart of the process.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use mesh_contract::{
    Backoff, BusError, EventBus, EventSpec, HandlerError, RequestContext, Subscription,
    SubscriptionHandle,
    bus::{BoxFuture, Bytes},
    spec::names,
};
use mesh_telemetry::{Destination, EventTrace};
use tokio::sync::Notify;
use tracing::Instrument;

/// Settings of the embedded bus, mirroring the RabbitMQ transport's.
#[derive(Clone, Debug)]
pub struct EmbeddedConfig {
    /// Largest payload published.
    pub max_payload_bytes: usize,
    /// Wait before the first retry of a transient failure; doubled for each further one.
    pub retry_backoff: Duration,
    /// Longest wait between two retries: a transient failure is retried at this pace until
    /// the dependency is back, never dead-lettered.
    pub max_retry_backoff: Duration,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1024 * 1024,
            retry_backoff: Duration::from_millis(100),
            max_retry_backoff: Duration::from_secs(5),
        }
    }
}

/// A message as it waits in a queue.
#[derive(Clone, Debug)]
struct Envelope {
    message_id: String,
    ctx: RequestContext,
    event: &'static EventSpec,
    payload: Bytes,
}

/// A message a consumer could not handle, and why.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// Id the message was published with.
    pub message_id: String,
    /// Its event.
    pub event: &'static str,
    /// Its tenant.
    pub tenant: String,
    /// Why it was dead-lettered.
    pub reason: String,
    /// How many times the handler ran.
    pub attempts: u32,
    /// The payload, untouched.
    pub payload: Bytes,
}

#[derive(Default)]
struct Queue {
    messages: Mutex<VecDeque<Envelope>>,
    ready: Notify,
    dead: Mutex<Vec<DeadLetter>>,
}

impl Queue {
    fn push(&self, envelope: Envelope) {
        self.messages.lock().expect("lock").push_back(envelope);
        self.ready.notify_one();
    }

    /// Waits for the next message.
    async fn pop(&self) -> Envelope {
        loop {
            let notified = self.ready.notified();
            if let Some(envelope) = self.messages.lock().expect("lock").pop_front() {
                return envelope;
            }
            notified.await;
        }
    }
}

#[derive(Default)]
struct Broker {
    /// Queues by name.
    queues: HashMap<String, Arc<Queue>>,
    /// (exchange, routing key) -> bound queue names.
    bindings: HashMap<(String, String), Vec<String>>,
}

/// The in-process bus. Cheap to clone; clones share the queues.
#[derive(Clone, Default)]
pub struct EmbeddedBus {
    config: EmbeddedConfig,
    broker: Arc<Mutex<Broker>>,
}

impl EmbeddedBus {
    /// A bus with `config`.
    pub fn new(config: EmbeddedConfig) -> Self {
        Self {
            config,
            broker: Arc::default(),
        }
    }

    /// Dead letters of a consumer's queue (`names::queue(..)`), oldest first.
    pub fn dead_letters(&self, queue: &str) -> Vec<DeadLetter> {
        let broker = self.broker.lock().expect("lock");
        broker
            .queues
            .get(queue)
            .map(|q| q.dead.lock().expect("lock").clone())
            .unwrap_or_default()
    }

    /// Messages waiting in a queue.
    pub fn depth(&self, queue: &str) -> usize {
        let broker = self.broker.lock().expect("lock");
        broker
            .queues
            .get(queue)
            .map_or(0, |q| q.messages.lock().expect("lock").len())
    }
}

impl EmbeddedBus {
    /// Puts a copy of the message in every queue bound to its routing key.
    fn enqueue(
        &self,
        ctx: &RequestContext,
        event: &'static EventSpec,
        payload: Bytes,
    ) -> Result<(), BusError> {
        let exchange = event.exchange(&ctx.tenant);
        let broker = self.broker.lock().expect("lock");
        let bound = broker
            .bindings
            .get(&(exchange.clone(), event.routing_key.to_owned()))
            .filter(|queues| !queues.is_empty())
            .ok_or_else(|| BusError::NotConfirmed {
                event: event.name,
                exchange: exchange.clone(),
                reason: format!(
                    "unroutable: no queue is bound for routing key {:?}; start a consumer first",
                    event.routing_key
                ),
            })?;
        let envelope = Envelope {
            message_id: uuid::Uuid::new_v4().to_string(),
            // as a broker would hand it over: no credential, no established caller
            ctx: ctx.as_received(),
            event,
            payload,
        };
        for queue in bound {
            broker.queues[queue].push(envelope.clone());
        }
        Ok(())
    }
}

impl EventBus for EmbeddedBus {
    fn publish<'a>(
        &'a self,
        ctx: &'a RequestContext,
        event: &'static EventSpec,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            if payload.len() > self.config.max_payload_bytes {
                return Err(BusError::PayloadTooLarge {
                    event: event.name,
                    size: payload.len(),
                    limit: self.config.max_payload_bytes,
                });
            }
            let exchange = event.exchange(&ctx.tenant);
            let destination = Destination::publish(&exchange, event);
            let (trace, ctx) = EventTrace::start("embedded", "publish", ctx, event, &destination);
            let published = self.enqueue(&ctx, event, payload);
            match &published {
                Ok(()) => trace.finish("ok", false),
                Err(err) => trace.fail("error", &err.to_string()),
            }
            published
        })
    }

    fn purge_tenant<'a>(
        &'a self,
        tenant: &'a mesh_contract::TenantId,
        contracts: &'a [(&'static str, u32)],
        consumers: &'a [String],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let names = mesh_contract::spec::names::tenant_topology(tenant, contracts, consumers);
            let mut broker = self.broker.lock().expect("lock");
            for queue in &names.queues {
                broker.queues.remove(queue);
            }
            broker
                .bindings
                .retain(|(exchange, _), _| !names.exchanges.contains(exchange));
            Ok(())
        })
    }

    fn subscribe(&self, sub: Subscription) -> BoxFuture<'_, Result<SubscriptionHandle, BusError>> {
        Box::pin(async move {
            let first = sub
                .events
                .first()
                .ok_or_else(|| BusError::Topology("the subscription names no events".into()))?;
            let exchange = names::exchange(&sub.tenant, first.service, first.major);
            let name = names::queue(&sub.tenant, first.service, first.major, &sub.consumer);
            let queue = {
                let mut broker = self.broker.lock().expect("lock");
                let queue = broker.queues.entry(name.clone()).or_default().clone();
                for event in sub.events {
                    let bound = broker
                        .bindings
                        .entry((exchange.clone(), event.routing_key.to_owned()))
                        .or_default();
                    if !bound.contains(&name) {
                        bound.push(name.clone());
                    }
                }
                queue
            };
            let (handle, mut stop) = SubscriptionHandle::new();
            let config = self.config.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        biased;
                        _ = &mut stop => break,
                        envelope = queue.pop() => {
                            let exchange = envelope.event.exchange(&envelope.ctx.tenant);
                            let destination = Destination {
                                exchange: &exchange,
                                routing_key: envelope.event.routing_key,
                                queue: Some(&name),
                                message_id: None,
                            };
                            let (trace, ctx) = EventTrace::start("embedded", "process", &envelope.ctx, envelope.event, &destination);
                            let envelope = Envelope { ctx, ..envelope };
                            // a stop ends a handler that waits for its dependency
                            let dead = tokio::select! {
                                biased;
                                _ = &mut stop => break,
                                dead = handle_one(&config, &sub, envelope)
                                    .instrument(trace.span().clone()) => dead,
                            };
                            match &dead {
                                None => trace.finish("ok", false),
                                Some(dead) => trace.fail("dead_lettered", &dead.reason),
                            }
                            if let Some(dead) = dead {
                                tracing::warn!(queue = %name, reason = %dead.reason, "dead-lettering a message");
                                queue.dead.lock().expect("lock").push(dead);
                            }
                        }
                    }
                }
            });
            Ok(handle)
        })
    }
}

/// Runs the handler for one message until it succeeds or rejects it (then: the dead letter).
/// A transient failure (retry, or the event's timeout) is retried with backoff doubling up to
/// `max_retry_backoff`, for as long as the dependency is down.
async fn handle_one(
    config: &EmbeddedConfig,
    sub: &Subscription,
    envelope: Envelope,
) -> Option<DeadLetter> {
    let mut backoff = Backoff::new(
        config.retry_backoff,
        config.max_retry_backoff.max(config.retry_backoff),
    );
    for attempt in 1u32.. {
        let run = sub.dispatch.dispatch(
            envelope.ctx.clone(),
            envelope.event,
            envelope.payload.clone(),
        );
        let result = match envelope.event.timeout {
            Some(limit) => tokio::time::timeout(limit, run).await.unwrap_or_else(|_| {
                Err(HandlerError::Retry(format!(
                    "handler did not finish within {limit:?}"
                )))
            }),
            None => run.await,
        };
        match result {
            Ok(()) => return None,
            Err(HandlerError::Reject(reason)) => {
                return Some(DeadLetter {
                    message_id: envelope.message_id.clone(),
                    event: envelope.event.name,
                    tenant: envelope.ctx.tenant.to_string(),
                    reason,
                    attempts: attempt,
                    payload: envelope.payload.clone(),
                });
            }
            Err(HandlerError::Retry(reason)) => {
                if attempt % 10 == 1 {
                    tracing::warn!(event = envelope.event.name, tenant = %envelope.ctx.tenant, attempt, %reason, "transient failure; retrying until the dependency is back");
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
    unreachable!("attempts never run out")
}

//! The interface generated publishers and consumers run on.
//!
//! A transport (RabbitMQ via lapin, or the embedded in-process bus) implements [`EventBus`];
//! generated code turns typed events into bytes plus an [`EventSpec`] and, on the consuming side,
//! implements [`Dispatch`] to turn bytes back into typed handler calls. Transports therefore
//! know nothing of any particular contract.

use std::{fmt, sync::Arc};

use futures::channel::oneshot;

pub use bytes::Bytes;
pub use futures::future::BoxFuture;

use crate::{RequestContext, TenantId, spec::EventSpec};

/// Why a publish or subscribe failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The broker cannot be reached, or the connection dropped and did not come back in time.
    #[error("message bus unavailable: {0}")]
    Unavailable(String),
    /// The broker did not confirm the message (nack, or returned as unroutable).
    #[error("broker did not confirm event {event} to exchange {exchange}: {reason}")]
    NotConfirmed {
        /// The event.
        event: &'static str,
        /// Where it was published.
        exchange: String,
        /// What the broker said.
        reason: String,
    },
    /// Declaring exchanges, queues or bindings failed.
    #[error("declaring broker topology failed: {0}")]
    Topology(String),
    /// The payload exceeds the transport's configured limit.
    #[error("event {event} is {size} bytes, over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The event.
        event: &'static str,
        /// Encoded size.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The context cannot travel as headers.
    #[error(transparent)]
    Context(#[from] crate::ContextError),
}

/// How a consumer's handler failed, which decides what the transport does next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Transient (a dependency is down, a timeout): run again with growing backoff until it
    /// succeeds or rejects; never dead-lettered, since the dependency will be back. The
    /// subscription's later messages wait meanwhile (order is kept).
    #[error("retry: {0}")]
    Retry(String),
    /// Permanent (the message can never succeed): dead-letter it now, with this reason.
    #[error("reject: {0}")]
    Reject(String),
}

/// Turns a delivered payload into a typed handler call; implemented by generated consumers.
pub trait Dispatch: Send + Sync + 'static {
    /// Decodes `payload` as the payload of `event` and runs the handler for it.
    fn dispatch(
        &self,
        ctx: RequestContext,
        event: &'static EventSpec,
        payload: Bytes,
    ) -> BoxFuture<'static, Result<(), HandlerError>>;
}

/// A consumer's request to receive some events of one contract for one tenant.
#[derive(Clone)]
pub struct Subscription {
    /// Only this tenant's events are delivered.
    pub tenant: TenantId,
    /// Name of the consuming service; one queue per consumer, shared by its replicas.
    pub consumer: String,
    /// Events to receive; all of one contract (same service and major).
    pub events: &'static [EventSpec],
    /// Where deliveries go.
    pub dispatch: Arc<dyn Dispatch>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("tenant", &self.tenant)
            .field("consumer", &self.consumer)
            .field(
                "events",
                &self.events.iter().map(|e| e.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Keeps a subscription alive; dropping it (or [`SubscriptionHandle::stop`]) stops consuming.
#[derive(Debug)]
#[must_use = "dropping the handle stops the subscription"]
pub struct SubscriptionHandle {
    stop: Option<oneshot::Sender<()>>,
}

/// Resolves when the [`SubscriptionHandle`] is stopped or dropped; held by the transport.
pub type StopSignal = oneshot::Receiver<()>;

impl SubscriptionHandle {
    /// A handle and the signal the transport's consume loop watches.
    pub fn new() -> (Self, StopSignal) {
        let (tx, rx) = oneshot::channel();
        (Self { stop: Some(tx) }, rx)
    }

    /// Stops consuming; messages in flight finish first.
    pub fn stop(mut self) {
        self.stop.take();
    }
}

/// A message transport for contract events.
pub trait EventBus: Send + Sync + 'static {
    /// Publishes one event for `ctx.tenant`; returns once the transport holds it durably (for
    /// RabbitMQ: the broker confirmed it).
    fn publish<'a>(
        &'a self,
        ctx: &'a RequestContext,
        event: &'static EventSpec,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), BusError>>;

    /// Starts delivering the subscribed events to its dispatcher until the handle is dropped.
    fn subscribe(
        &self,
        subscription: Subscription,
    ) -> BoxFuture<'_, Result<SubscriptionHandle, BusError>>;

    /// Deletes everything the transport holds for `tenant` (off-boarding with its data): the
    /// exchanges of the `contracts` (service, major) given and, for each of `consumers`, its
    /// queue and dead letters. A tenant added again under the same id starts empty. Its
    /// consumers must have stopped. A transport that keeps nothing once its consumers are
    /// gone (in memory) has nothing to do.
    fn purge_tenant<'a>(
        &'a self,
        tenant: &'a crate::TenantId,
        contracts: &'a [(&'static str, u32)],
        consumers: &'a [String],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        let _ = (tenant, contracts, consumers);
        Box::pin(async { Ok(()) })
    }
}

impl<B: EventBus + ?Sized> EventBus for Arc<B> {
    fn publish<'a>(
        &'a self,
        ctx: &'a RequestContext,
        event: &'static EventSpec,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        (**self).publish(ctx, event, payload)
    }

    fn subscribe(
        &self,
        subscription: Subscription,
    ) -> BoxFuture<'_, Result<SubscriptionHandle, BusError>> {
        (**self).subscribe(subscription)
    }

    fn purge_tenant<'a>(
        &'a self,
        tenant: &'a crate::TenantId,
        contracts: &'a [(&'static str, u32)],
        consumers: &'a [String],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        (**self).purge_tenant(tenant, contracts, consumers)
    }
}

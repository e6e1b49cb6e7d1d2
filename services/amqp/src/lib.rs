// Long on purpose: the bus's connection, publish with confirms and reconnection in one place,
// where the delivery promise is read whole; consuming, dead letters and the envelope are apart.
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
//!   with backoff for [`HandlerError::Retry`](mesh_contract::HandlerError::Retry), and
//!   dead-lettering with the reason in the `x-mesh-dead-reason` header for rejected,
//!   undecodable, oversized or foreign-tenant messages, while the consumer keeps running.
//! - **Idempotency**: a message id already in the [`DeliveryLog`] (handled, but its ack was
//!   lost with the connection or the process) is acknowledged without running the handler.
//! - **Recovery**: when the connection drops, publishes reconnect and retry until
//!   [`AmqpConfig::publish_timeout`], then fail with a clear error; consumers reconnect with
//!   backoff, redeclare their topology and resume. Unacknowledged messages go back to the
//!   queue on the broker, so nothing acknowledged is lost.

mod consume;
mod dead_letters;
mod envelope;
mod idempotency;
mod placement;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions},
    types::FieldTable,
};
use mesh_contract::{
    Backoff, BusError, EventBus, EventSpec, RequestContext, Subscription, SubscriptionHandle,
    bus::{BoxFuture, Bytes},
};
use mesh_telemetry::{Destination, EventTrace};
use tracing::Instrument;

pub use dead_letters::DeadLetter;
pub use envelope::headers;
pub use idempotency::{DeliveryLog, DeliveryLogError, MemoryLog, RedisLog};
pub use placement::{PlacedBuses, Placement};

/// Settings of the RabbitMQ transport.
#[derive(Clone, Debug)]
pub struct AmqpConfig {
    /// Broker address, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`; the vhost is the path.
    pub uri: String,
    /// Unacknowledged deliveries a consumer holds at most.
    pub prefetch: u16,
    /// Largest payload published or handled; larger ones are refused or dead-lettered.
    pub max_payload_bytes: usize,
    /// Wait before the first retry of a transient failure; doubled for each further one.
    pub retry_backoff: Duration,
    /// Longest wait between two retries: a transient failure is retried at this pace until
    /// the dependency is back, never dead-lettered.
    pub max_retry_backoff: Duration,
    /// Most dead letters a subscription's dead-letter queue keeps; past it the oldest go.
    pub dead_letter_max_length: u32,
    /// How long a dead letter is kept.
    pub dead_letter_ttl: Duration,
    /// How long a publish waits for the broker (reconnecting if need be) before it fails.
    pub publish_timeout: Duration,
    /// Longest pause between two reconnection attempts.
    pub max_reconnect_backoff: Duration,
    /// The other nodes of the broker's cluster (`host:port`), tried in turn when the one in
    /// `uri` cannot be reached: the same user, password and vhost on each.
    pub other_nodes: Vec<String>,
    /// How the subscriptions' queues are declared.
    pub queue_type: QueueType,
}

/// How queues are declared. Quorum queues are replicated over a cluster's nodes (Raft): with
/// publisher confirms, a confirmed message survives the loss of a minority of them. Classic
/// queues live on one node; enough for one broker (development, `mesh demo`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueueType {
    /// One node's queue.
    #[default]
    Classic,
    /// Replicated over the cluster (the production choice).
    Quorum,
}

impl std::str::FromStr for QueueType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "classic" => Ok(Self::Classic),
            "quorum" => Ok(Self::Quorum),
            other => Err(format!("queue type {other:?}: `classic` or `quorum`")),
        }
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            uri: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefetch: 32,
            max_payload_bytes: 1024 * 1024,
            retry_backoff: Duration::from_millis(100),
            max_retry_backoff: Duration::from_secs(5),
            dead_letter_max_length: 100_000,
            dead_letter_ttl: Duration::from_secs(14 * 24 * 60 * 60),
            publish_timeout: Duration::from_secs(5),
            max_reconnect_backoff: Duration::from_secs(2),
            other_nodes: Vec::new(),
            queue_type: QueueType::Classic,
        }
    }
}

impl AmqpConfig {
    /// The same settings on virtual host `vhost` (a tenant's `broker.vhost`): a vhost of its
    /// own, with a broker user allowed only there, isolates a tenant on a shared broker.
    pub fn with_vhost(&self, vhost: &str) -> Self {
        let encoded: String = vhost
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                other => format!("%{other:02x}"),
            })
            .collect();
        let (base, query) = match self.uri.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (self.uri.as_str(), String::new()),
        };
        let authority_start = base.find("://").map_or(0, |i| i + 3);
        let authority_end = base[authority_start..]
            .find('/')
            .map_or(base.len(), |i| authority_start + i);
        Self {
            uri: format!("{}/{encoded}{query}", &base[..authority_end]),
            ..self.clone()
        }
    }

    /// The URIs to try, in order: `uri`, then the same with each of `other_nodes` as its
    /// host and port.
    pub fn candidates(&self) -> Vec<String> {
        let scheme_end = self.uri.find("://").map_or(0, |i| i + 3);
        let rest = &self.uri[scheme_end..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let userinfo = authority.rfind('@').map_or("", |at| &authority[..=at]);
        std::iter::once(self.uri.clone())
            .chain(self.other_nodes.iter().map(|node| {
                format!(
                    "{}{userinfo}{node}{}",
                    &self.uri[..scheme_end],
                    &rest[authority_end..]
                )
            }))
            .collect()
    }

    /// The same settings as broker user `user` with `password` (a tenant's own broker user).
    pub fn with_credentials(&self, user: &str, password: &str) -> Self {
        let encode = |text: &str| -> String {
            text.bytes()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    other => format!("%{other:02X}"),
                })
                .collect()
        };
        let scheme_end = self.uri.find("://").map_or(0, |i| i + 3);
        let rest = &self.uri[scheme_end..];
        let host_and_rest = match rest.find('/') {
            // user info, if any, ends at the last '@' before the path
            Some(path) => match rest[..path].rfind('@') {
                Some(at) => &rest[at + 1..],
                None => rest,
            },
            None => rest.rsplit_once('@').map_or(rest, |(_, host)| host),
        };
        Self {
            uri: format!(
                "{}{}:{}@{host_and_rest}",
                &self.uri[..scheme_end],
                encode(user),
                encode(password)
            ),
            ..self.clone()
        }
    }
}

/// An [`EventBus`] on RabbitMQ. Cheap to clone; clones share one connection, which is
/// re-established (and the topology redeclared) whenever it drops.
#[derive(Clone)]
pub struct AmqpBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: AmqpConfig,
    /// The current connection, `None` once it is known to be lost.
    link: tokio::sync::Mutex<Option<Link>>,
    /// Bumped on every new connection, so a stale failure does not drop a fresh link.
    generation: std::sync::atomic::AtomicU64,
    log: Arc<dyn DeliveryLog>,
    /// Set by [`AmqpBus::close`]: no reconnecting after that.
    closed: std::sync::atomic::AtomicBool,
    /// Which of the config's candidate URIs connected last.
    node: std::sync::atomic::AtomicUsize,
}

/// One live connection with its confirm-mode publishing channel.
#[derive(Clone)]
struct Link {
    generation: u64,
    connection: Arc<Connection>,
    publisher: Channel,
    /// Exchanges declared on this connection.
    declared: Arc<Mutex<HashSet<String>>>,
}

impl Link {
    fn healthy(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

fn unavailable(context: &str, err: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("{context}: {err}"))
}

impl AmqpBus {
    /// Connects to the broker, remembering handled messages in memory.
    pub async fn connect(config: AmqpConfig) -> Result<Self, BusError> {
        Self::connect_with_log(config, Arc::new(MemoryLog::default())).await
    }

    /// Connects to the broker, remembering handled messages in `log` (e.g. a [`RedisLog`], so
    /// a redelivery after a crash of this process is still recognised).
    pub async fn connect_with_log(
        config: AmqpConfig,
        log: Arc<dyn DeliveryLog>,
    ) -> Result<Self, BusError> {
        let bus = Self {
            inner: Arc::new(Inner {
                config,
                link: tokio::sync::Mutex::new(None),
                generation: Default::default(),
                log,
                closed: Default::default(),
                node: Default::default(),
            }),
        };
        bus.link_once().await?;
        Ok(bus)
    }

    /// The transport's settings.
    pub fn config(&self) -> &AmqpConfig {
        &self.inner.config
    }

    /// Closes the connection for good; subscriptions stop.
    pub async fn close(&self) -> Result<(), BusError> {
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let link = self.inner.link.lock().await.take();
        match link {
            Some(link) => link
                .connection
                .close(200, "closing".into())
                .await
                .map_err(|e| unavailable("closing", e)),
            None => Ok(()),
        }
    }

    fn is_closed(&self) -> bool {
        self.inner.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The live link, connecting once if there is none.
    async fn link_once(&self) -> Result<Link, BusError> {
        if self.is_closed() {
            return Err(BusError::Unavailable("the bus was closed".into()));
        }
        let mut slot = self.inner.link.lock().await;
        if let Some(link) = slot.as_ref().filter(|l| l.healthy()) {
            return Ok(link.clone());
        }
        // the node that answered last first, then the cluster's others
        let candidates = self.inner.config.candidates();
        let start = self.inner.node.load(std::sync::atomic::Ordering::Relaxed) % candidates.len();
        let mut failure = None;
        let mut connected = None;
        for n in (0..candidates.len()).map(|i| (start + i) % candidates.len()) {
            let uri = &candidates[n];
            match Connection::connect(uri, ConnectionProperties::default()).await {
                Ok(connection) => {
                    self.inner
                        .node
                        .store(n, std::sync::atomic::Ordering::Relaxed);
                    connected = Some(connection);
                    break;
                }
                Err(e) => failure = Some(unavailable(&format!("connecting to {}", redact(uri)), e)),
            }
        }
        let connection = match connected {
            Some(connection) => connection,
            None => return Err(failure.expect("at least the uri was tried")),
        };
        let publisher = connection
            .create_channel()
            .await
            .map_err(|e| unavailable("opening a channel", e))?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| unavailable("enabling publisher confirms", e))?;
        let generation = self
            .inner
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        if generation > 1 {
            tracing::info!(generation, "reconnected to the broker");
        }
        let link = Link {
            generation,
            connection: Arc::new(connection),
            publisher,
            declared: Arc::default(),
        };
        *slot = Some(link.clone());
        Ok(link)
    }

    /// The live link, reconnecting with backoff until `deadline`.
    async fn link_until(&self, deadline: Instant) -> Result<Link, BusError> {
        let mut backoff = Backoff::new(
            Duration::from_millis(50),
            self.inner.config.max_reconnect_backoff,
        );
        loop {
            match self.link_once().await {
                Ok(link) => return Ok(link),
                Err(err) if self.is_closed() || Instant::now() >= deadline => return Err(err),
                Err(err) => {
                    // the last pause ends at the deadline, for one last attempt there: the
                    // bound is used whole, whatever the jitter drew
                    let pause = backoff
                        .next_delay()
                        .min(deadline.saturating_duration_since(Instant::now()));
                    tracing::debug!(error = %err, ?pause, "broker unreachable; retrying");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Forgets `link` if it is still the current one, so the next use reconnects.
    async fn drop_link(&self, link: &Link) {
        let mut slot = self.inner.link.lock().await;
        if slot
            .as_ref()
            .is_some_and(|l| l.generation == link.generation)
        {
            *slot = None;
        }
    }

    /// Declares the durable topic exchange of a tenant's contract, once per connection.
    async fn declare_exchange(
        &self,
        link: &Link,
        channel: &Channel,
        exchange: &str,
    ) -> Result<(), BusError> {
        if link.declared.lock().expect("lock").contains(exchange) {
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
            .map_err(|e| unavailable(&format!("declaring exchange {exchange}"), e))?;
        link.declared
            .lock()
            .expect("lock")
            .insert(exchange.to_owned());
        Ok(())
    }

    /// Publishes with confirm and `mandatory`, reconnecting while the broker is unreachable,
    /// until [`AmqpConfig::publish_timeout`]. A nack is retried too until then: a quorum
    /// queue nacks while its leader is being elected again (a cluster node died), and takes
    /// the message once it is (a nacked message that was stored after all is a duplicate the
    /// consumers' delivery log recognises). A returned (unroutable) message is final.
    async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        event: &'static str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BusError> {
        let timeout = self.inner.config.publish_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            let link = self.link_until(deadline).await.map_err(|e| {
                BusError::Unavailable(format!(
                    "event {event} not published: the broker stayed unreachable for {timeout:?} ({e})"
                ))
            })?;
            match self
                .publish_on(
                    &link,
                    exchange,
                    routing_key,
                    event,
                    payload,
                    properties.clone(),
                )
                .await
            {
                Err(BusError::Unavailable(reason)) => {
                    self.drop_link(&link).await;
                    if Instant::now() >= deadline {
                        return Err(BusError::Unavailable(format!(
                            "event {event} not published within {timeout:?}: {reason}"
                        )));
                    }
                    tracing::debug!(%reason, "publish interrupted; retrying on a new connection");
                }
                Err(nacked @ BusError::NotConfirmed { .. })
                    if self.nacked(&nacked) && Instant::now() + NACK_PAUSE < deadline =>
                {
                    // lapin also nacks what was awaiting a confirm when its connection died:
                    // the next attempt goes out on a connection known to be alive
                    tracing::debug!(error = %nacked, "publish nacked; retrying");
                    self.drop_link(&link).await;
                    tokio::time::sleep(NACK_PAUSE).await;
                }
                other => return other,
            }
        }
    }

    fn nacked(&self, err: &BusError) -> bool {
        matches!(err, BusError::NotConfirmed { reason, .. } if reason == NACKED)
    }

    async fn publish_on(
        &self,
        link: &Link,
        exchange: &str,
        routing_key: &str,
        event: &'static str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BusError> {
        if !exchange.is_empty() {
            self.declare_exchange(link, &link.publisher, exchange)
                .await?;
        }
        let confirm = link
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
            return Err(not_confirmed(NACKED.into()));
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

/// Why a publish was not confirmed when the broker nacked it.
const NACKED: &str = "the broker refused the message (nack)";
/// The pause before a nacked publish is sent again.
const NACK_PAUSE: Duration = Duration::from_millis(50);

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
            // the message carries this publish's span, so its consumers continue the trace
            let exchange = event.exchange(&ctx.tenant);
            let destination = Destination::publish(&exchange, event);
            let (trace, ctx) = EventTrace::start("rabbitmq", "publish", ctx, event, &destination);
            let properties = envelope::properties(&ctx, event);
            if let Some(id) = properties.message_id() {
                trace.identify(id.as_str());
            }
            let published = self
                .publish_confirmed(
                    &exchange,
                    event.routing_key,
                    event.name,
                    &payload,
                    properties,
                )
                .instrument(trace.span().clone())
                .await;
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
            let deadline = Instant::now() + self.inner.config.publish_timeout;
            let link = self.link_until(deadline).await?;
            let channel = link
                .connection
                .create_channel()
                .await
                .map_err(|e| unavailable("opening a channel", e))?;
            let names = mesh_contract::spec::names::tenant_topology(tenant, contracts, consumers);
            // queues first (with their dead letters), then the exchanges they were bound to;
            // deleting what does not exist is no error on RabbitMQ
            for queue in &names.queues {
                channel
                    .queue_delete(queue.as_str().into(), Default::default())
                    .await
                    .map_err(|e| unavailable(&format!("deleting queue {queue}"), e))?;
            }
            for exchange in &names.exchanges {
                channel
                    .exchange_delete(exchange.as_str().into(), Default::default())
                    .await
                    .map_err(|e| unavailable(&format!("deleting exchange {exchange}"), e))?;
                link.declared.lock().expect("lock").remove(exchange);
            }
            let _ = channel.close(200, "purged".into()).await;
            tracing::info!(%tenant, queues = names.queues.len(), exchanges = names.exchanges.len(), "tenant's broker topology deleted");
            Ok(())
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
    use super::{AmqpConfig, redact};

    #[test]
    fn credentials_replace_the_uri_user() {
        let base = AmqpConfig {
            uri: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            ..Default::default()
        };
        assert_eq!(
            base.with_credentials("mesh-newco", "p@ss/word").uri,
            "amqp://mesh-newco:p%40ss%2Fword@127.0.0.1:5672/%2f"
        );
        let anonymous = AmqpConfig {
            uri: "amqp://127.0.0.1:5672/%2f".into(),
            ..Default::default()
        };
        assert_eq!(
            anonymous.with_credentials("u", "p").with_vhost("v").uri,
            "amqp://u:p@127.0.0.1:5672/v"
        );
    }

    #[test]
    fn the_vhost_replaces_the_uri_path() {
        let base = super::AmqpConfig::default();
        assert_eq!(
            base.with_vhost("/").uri,
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            base.with_vhost("finance").uri,
            "amqp://guest:guest@127.0.0.1:5672/finance"
        );
        let with_query = super::AmqpConfig {
            uri: "amqp://u:p@broker:5672/old?heartbeat=10".into(),
            ..Default::default()
        };
        assert_eq!(
            with_query.with_vhost("a b").uri,
            "amqp://u:p@broker:5672/a%20b?heartbeat=10"
        );
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}

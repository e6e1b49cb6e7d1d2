//! The event-bus behaviour suite on the real RabbitMQ at 127.0.0.1:5672 (override with
//! `MESH_TEST_AMQP_URI`), plus what only a broker has: the wire format, and raw messages from
//! broken or hostile publishers. Every test uses tenants of its own, so its exchanges and
//! queues are its own, and deletes them at the end.

use crate::broker;
use crate::suite;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use lapin::{
    BasicProperties, Connection,
    options::{
        BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use mesh_amqp::{AmqpBus, AmqpConfig, headers};
use mesh_api::order::v1 as order;
use mesh_contract::{EventBus, TenantId, bus::BoxFuture, spec::names};
use suite::{Probe, created, fresh_tenant, next, recorder};

async fn bus() -> AmqpBus {
    AmqpBus::connect(AmqpConfig {
        uri: broker::uri(),
        retry_backoff: Duration::from_millis(20),
        max_payload_bytes: 64 * 1024,
        max_retry_backoff: Duration::from_millis(50),
        ..Default::default()
    })
    .await
    .expect(broker::BROKER_DOWN)
}

/// A raw broker connection: sees queues directly and cleans up after a test.
struct Broker {
    raw: Connection,
    tenants: Vec<TenantId>,
}

impl Broker {
    async fn new() -> Self {
        Self {
            raw: broker::connect().await,
            tenants: Vec::new(),
        }
    }

    /// A fresh tenant whose order v1 objects are deleted by [`Broker::cleanup`].
    fn tenant(&mut self) -> TenantId {
        let tenant = fresh_tenant();
        self.tenants.push(tenant.clone());
        tenant
    }

    /// Publishes raw bytes as if from a broken or hostile publisher.
    async fn publish_raw(&self, tenant: &TenantId, payload: &[u8], headers: &[(&str, &str)]) {
        let channel = self.raw.create_channel().await.unwrap();
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert((*k).into(), AMQPValue::LongString((*v).into()));
        }
        channel
            .basic_publish(
                names::exchange(tenant, "order", 1).as_str().into(),
                "order_created".into(),
                BasicPublishOptions::default(),
                payload,
                BasicProperties::default().with_headers(table),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Waits for one message on a queue (polling, bounded to 10 s).
    async fn get(&self, queue: &str) -> lapin::message::BasicGetMessage {
        let channel = self.raw.create_channel().await.unwrap();
        for _ in 0..200 {
            if let Some(message) = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                return message;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no message arrived on {queue} within 10 s");
    }

    async fn cleanup(self, consumers: &[&str]) {
        let channel = self.raw.create_channel().await.unwrap();
        for tenant in &self.tenants {
            broker::delete_order_topology(&channel, tenant, consumers).await;
        }
    }
}

fn text_header(table: &FieldTable, name: &str) -> String {
    match table.inner().get(name) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("header {name}: {other:?}"),
    }
}

impl Probe for Broker {
    fn dead_reasons<'a>(&'a self, queue: &'a str, count: usize) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async move {
            let dead = names::dead_letter_queue(queue);
            let mut reasons = Vec::new();
            for _ in 0..count {
                let message = self.get(&dead).await;
                let headers = message
                    .delivery
                    .properties
                    .headers()
                    .clone()
                    .expect("headers");
                reasons.push(text_header(&headers, headers::DEAD_REASON));
            }
            reasons
        })
    }

    fn waiting<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            let channel = self.raw.create_channel().await.unwrap();
            let declared = channel
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
            declared.message_count() as usize
        })
    }

    fn dead_count<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            let dead = names::dead_letter_queue(queue);
            self.waiting(&dead).await
        })
    }
}

#[tokio::test]
async fn round_trip_with_context() {
    let mut broker = Broker::new().await;
    suite::round_trip_with_context(bus().await, &broker.tenant()).await;
    broker.cleanup(&["message"]).await;
}

#[tokio::test]
async fn rejected_events_are_dead_lettered_while_good_ones_flow() {
    let mut broker = Broker::new().await;
    let tenant = broker.tenant();
    suite::rejected_events_are_dead_lettered_while_good_ones_flow(bus().await, &tenant, &broker)
        .await;
    broker.cleanup(&["message"]).await;
}

#[tokio::test]
async fn retry_then_success() {
    let mut broker = Broker::new().await;
    suite::retry_then_success(bus().await, &broker.tenant()).await;
    broker.cleanup(&["message"]).await;
}

#[tokio::test]
async fn transient_failures_are_retried_until_they_pass_never_dead_lettered() {
    let mut broker = Broker::new().await;
    let tenant = broker.tenant();
    suite::transient_failures_are_retried_until_they_pass_never_dead_lettered(
        bus().await,
        &tenant,
        &broker,
    )
    .await;
    broker.cleanup(&["message"]).await;
}

#[tokio::test]
async fn tenants_never_see_each_others_events() {
    let mut broker = Broker::new().await;
    let (a, b) = (broker.tenant(), broker.tenant());
    suite::tenants_never_see_each_others_events(bus().await, &a, &b).await;
    broker.cleanup(&["message"]).await;
}

#[tokio::test]
async fn publishing_with_no_consumer_queue_fails() {
    let mut broker = Broker::new().await;
    suite::publishing_with_no_consumer_queue_fails(bus().await, &broker.tenant()).await;
    broker.cleanup(&[]).await;
}

#[tokio::test]
async fn oversized_publish_is_refused() {
    suite::oversized_publish_is_refused(bus().await, &fresh_tenant()).await;
}

#[tokio::test]
async fn a_stopped_subscription_leaves_events_queued() {
    let mut broker = Broker::new().await;
    let tenant = broker.tenant();
    suite::a_stopped_subscription_leaves_events_queued(bus().await, &tenant, &broker).await;
    broker.cleanup(&["message"]).await;
}

#[tokio::test]
async fn events_travel_persistent_with_tenant_and_contract_headers() {
    let mut broker = Broker::new().await;
    let tenant = broker.tenant();
    let bus = bus().await;
    let (handler, _rx) = recorder();
    let _sub = bus
        .subscribe(order::OrderConsumer::new(handler).subscription(tenant.clone(), "message"))
        .await
        .unwrap();
    // a plain queue bound to the tenant's exchange shows the wire format
    let tap = suite::queue(&tenant, "tap");
    let channel = broker.raw.create_channel().await.unwrap();
    channel
        .queue_declare(
            tap.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            tap.as_str().into(),
            names::exchange(&tenant, "order", 1).as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let ctx = suite::ctx(&tenant);
    order::OrderPublisher::new(bus.clone())
        .publish(&ctx, created("o-2"))
        .await
        .unwrap();
    let message = broker.get(&tap).await;
    let props = &message.delivery.properties;
    assert_eq!(message.delivery.routing_key.as_str(), "order_created");
    assert_eq!(*props.delivery_mode(), Some(2), "persistent");
    assert_eq!(
        props.content_type().as_ref().map(|s| s.as_str()),
        Some("application/x-protobuf")
    );
    assert_eq!(
        props.kind().as_ref().map(|s| s.as_str()),
        Some("order.v1.OrderCreated")
    );
    assert!(props.message_id().is_some());
    let table = props.headers().clone().unwrap();
    assert_eq!(text_header(&table, "x-mesh-tenant"), tenant.as_str());
    assert_eq!(text_header(&table, "x-mesh-request-id"), ctx.request_id);
    assert_eq!(
        text_header(&table, "traceparent"),
        ctx.trace.traceparent.clone().unwrap()
    );
    assert_eq!(text_header(&table, headers::EVENT), "OrderCreated");
    assert_eq!(text_header(&table, headers::CONTRACT), "order/v1@1.0.0");
    let decoded: order::OrderCreated =
        prost::Message::decode(message.delivery.data.as_slice()).unwrap();
    assert_eq!(decoded, created("o-2"));
    broker.cleanup(&["message", "tap"]).await;
}

#[tokio::test]
async fn garbage_from_raw_publishers_is_dead_lettered_with_reason_while_good_events_flow() {
    let mut broker = Broker::new().await;
    let tenant = broker.tenant();
    let bus = bus().await;
    let (handler, mut rx) = recorder();
    let _sub = bus
        .subscribe(order::OrderConsumer::new(handler).subscription(tenant.clone(), "message"))
        .await
        .unwrap();
    let id = tenant.to_string();
    broker
        .publish_raw(&tenant, &[0xff, 0xff, 0xff], &[("x-mesh-tenant", &id)])
        .await;
    broker.publish_raw(&tenant, &[], &[]).await;
    broker
        .publish_raw(&tenant, &[], &[("x-mesh-tenant", "intruder")])
        .await;
    broker
        .publish_raw(&tenant, &[], &[("x-mesh-tenant", "Not A Tenant")])
        .await;
    broker
        .publish_raw(&tenant, &vec![0u8; 65 * 1024], &[("x-mesh-tenant", &id)])
        .await;
    order::OrderPublisher::new(bus.clone())
        .publish(&suite::ctx(&tenant), created("good"))
        .await
        .unwrap();

    assert_eq!(
        next(&mut rx).await.1,
        "created good",
        "the consumer keeps running past garbage"
    );
    let reasons = broker
        .dead_reasons(&suite::queue(&tenant, "message"), 5)
        .await;
    assert!(
        reasons[0].starts_with("payload is not a valid order.v1.OrderCreated"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("request carries no tenant"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].contains("message for tenant intruder arrived on a queue of tenant"),
        "{reasons:?}"
    );
    assert!(
        reasons[3].contains("invalid tenant id \"Not A Tenant\""),
        "{reasons:?}"
    );
    assert!(
        reasons[4].contains("over the limit of 65536 bytes"),
        "{reasons:?}"
    );
    broker.cleanup(&["message"]).await;
}

/// Runs `rabbitmqctl` (the test creates and removes a vhost of its own).
fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl is installed with RabbitMQ");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn tenants_on_separate_vhosts_never_meet_even_with_the_same_names() {
    let vhost = format!(
        "mesh-test-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    rabbitmqctl(&["add_vhost", &vhost]);
    rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
    let tenant = fresh_tenant();
    let shared = bus().await;
    let own = AmqpBus::connect(shared.config().with_vhost(&vhost))
        .await
        .expect(broker::BROKER_DOWN);

    // the consumer lives on the tenant's own vhost
    let (_sub, mut rx) = suite::subscribe_recorder(&own, &tenant).await;
    // the same tenant id, exchange and routing key on the default vhost reach nothing
    let err = order::OrderPublisher::new(shared.clone())
        .publish(&suite::ctx(&tenant), created("wrong-vhost"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no queue is bound"), "{err}");
    order::OrderPublisher::new(own.clone())
        .publish(&suite::ctx(&tenant), created("own-vhost"))
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await.1, "created own-vhost");
    own.close().await.unwrap();
    rabbitmqctl(&["delete_vhost", &vhost]);
    let channel = broker::connect().await.create_channel().await.unwrap();
    broker::delete_order_topology(&channel, &tenant, &[]).await;
}

/// Rejects every order while its bug is in (a bad deploy); handles them once fixed.
struct Buggy {
    fixed: Arc<AtomicBool>,
    handled: tokio::sync::mpsc::UnboundedSender<String>,
}

impl order::OrderHandler for Buggy {
    async fn on_order_created(
        &self,
        _: &mesh_contract::RequestContext,
        event: order::OrderCreated,
    ) -> Result<(), mesh_contract::HandlerError> {
        let id = event.order.unwrap_or_default().order_id;
        if !self.fixed.load(Ordering::SeqCst) {
            return Err(mesh_contract::HandlerError::Reject(format!(
                "order {id}: handler bug"
            )));
        }
        self.handled.send(id).unwrap();
        Ok(())
    }
}

/// A `Buggy` consumer of the tenant's orders: its subscription, its fix switch, and what it
/// handled.
async fn subscribe_buggy(
    bus: &AmqpBus,
    tenant: &TenantId,
) -> (
    mesh_contract::SubscriptionHandle,
    Arc<AtomicBool>,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let fixed = Arc::new(AtomicBool::new(false));
    let (handled, seen) = tokio::sync::mpsc::unbounded_channel();
    let sub = bus
        .subscribe(
            order::OrderConsumer::new(Buggy {
                fixed: fixed.clone(),
                handled,
            })
            .subscription(tenant.clone(), "message"),
        )
        .await
        .unwrap();
    (sub, fixed, seen)
}

/// Waits (bounded to 10 s) until `queue` holds `count` dead letters; how many it holds then.
async fn dead_letters_reach(bus: &AmqpBus, queue: &str, count: u32) -> u32 {
    let mut held = 0;
    for _ in 0..200 {
        held = bus.dead_letter_count(queue).await.unwrap();
        if held == count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    held
}

#[tokio::test]
async fn dead_letters_are_shown_replayed_once_their_cause_is_fixed_and_purged() {
    let mut broker = Broker::new().await;
    let tenant = broker.tenant();
    let bus = bus().await;
    let (_sub, fixed, mut seen) = subscribe_buggy(&bus, &tenant).await;
    let publisher = order::OrderPublisher::new(bus.clone());
    for id in ["o-1", "o-2", "o-3"] {
        publisher
            .publish(&suite::ctx(&tenant), created(id))
            .await
            .unwrap();
    }
    let queue = suite::queue(&tenant, "message");
    assert_eq!(dead_letters_reach(&bus, &queue, 3).await, 3);

    // shown with their reason, and left in place
    let peeked = bus.peek_dead_letters(&queue, 2).await.unwrap();
    assert_eq!(peeked.len(), 2);
    assert_eq!(peeked[0].reason, "order o-1: handler bug");
    assert_eq!(peeked[1].reason, "order o-2: handler bug");
    assert_eq!(
        (
            peeked[0].event.as_str(),
            peeked[0].tenant.as_str(),
            peeked[0].attempts
        ),
        ("OrderCreated", tenant.as_str(), 1)
    );
    assert!(!peeked[0].message_id.is_empty() && peeked[0].bytes > 0);
    assert_eq!(
        bus.dead_letter_count(&queue).await.unwrap(),
        3,
        "peeking moves nothing"
    );

    // replayed before the fix, they fail again and come back: each replayed once, no loop
    assert_eq!(
        bus.replay_dead_letters(&queue, usize::MAX).await.unwrap(),
        3
    );
    assert_eq!(dead_letters_reach(&bus, &queue, 3).await, 3);

    // the fix is deployed: two are replayed through the normal consumer, in order, once
    fixed.store(true, Ordering::SeqCst);
    assert_eq!(bus.replay_dead_letters(&queue, 2).await.unwrap(), 2);
    for id in ["o-1", "o-2"] {
        let got = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .expect("replayed within 10 s")
            .unwrap();
        assert_eq!(got, id);
    }
    assert_eq!(bus.dead_letter_count(&queue).await.unwrap(), 1);
    // the last one is purged instead; nothing more arrives
    assert_eq!(bus.purge_dead_letters(&queue).await.unwrap(), 1);
    assert_eq!(bus.dead_letter_count(&queue).await.unwrap(), 0);
    assert_eq!(bus.replay_dead_letters(&queue, 10).await.unwrap(), 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), seen.recv())
            .await
            .is_err(),
        "nothing handled twice or from the purge"
    );
    broker.cleanup(&["message"]).await;
}

/// A queue nobody declared yet is told apart by the broker's reply code (404), not by the
/// text of its error: counted as absent, while a declared queue counts what it holds.
#[tokio::test]
async fn a_queue_not_declared_yet_is_absent_not_an_error() {
    let bus = bus().await;
    let missing = format!(
        "mesh.never-declared-{}.order.v1.message",
        uuid::Uuid::new_v4()
    );
    assert_eq!(bus.waiting_if_declared(&missing).await.unwrap(), None);
    assert_eq!(
        bus.dead_letter_count_if_declared(&missing).await.unwrap(),
        None
    );
    let err = bus.waiting(&missing).await.unwrap_err().to_string();
    assert!(err.contains("is not declared"), "{err}");
    // the admin channel is not left broken by the refusal: a declared queue still counts
    let mut broker = Broker::new().await;
    let tenant = broker.tenant();
    let (_sub, _fixed, _seen) = subscribe_buggy(&bus, &tenant).await;
    let queue = suite::queue(&tenant, "message");
    assert_eq!(bus.waiting_if_declared(&queue).await.unwrap(), Some(0));
    broker.cleanup(&["message"]).await;
}

#[tokio::test]
async fn a_replayed_message_already_handled_is_not_handled_again() {
    let mut broker = Broker::new().await;
    let tenant = broker.tenant();
    let bus = bus().await;
    let (_sub, fixed, mut seen) = subscribe_buggy(&bus, &tenant).await;
    order::OrderPublisher::new(bus.clone())
        .publish(&suite::ctx(&tenant), created("o-9"))
        .await
        .unwrap();
    let queue = suite::queue(&tenant, "message");
    assert_eq!(dead_letters_reach(&bus, &queue, 1).await, 1);
    // an operator copies the dead letter before replaying (two replays of one message)
    let dead = names::dead_letter_queue(&queue);
    let channel = broker.raw.create_channel().await.unwrap();
    // confirmed: both copies are in the queue before the replay counts them
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let original = broker.get(&dead).await;
    for _ in 0..2 {
        channel
            .basic_publish(
                "".into(),
                dead.as_str().into(),
                BasicPublishOptions::default(),
                &original.delivery.data,
                original.delivery.properties.clone(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    fixed.store(true, Ordering::SeqCst);
    assert_eq!(bus.replay_dead_letters(&queue, 10).await.unwrap(), 2);
    let got = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, "o-9");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), seen.recv())
            .await
            .is_err(),
        "the same message id is handled once"
    );
    broker.cleanup(&["message"]).await;
}

#[tokio::test]
async fn queues_an_earlier_version_declared_without_bounds_are_kept_and_consumed() {
    let mut broker = Broker::new().await;
    let tenant = broker.tenant();
    let queue = suite::queue(&tenant, "message");
    let channel = broker.raw.create_channel().await.unwrap();
    for name in [queue.clone(), names::dead_letter_queue(&queue)] {
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
            .unwrap();
    }
    let bus = bus().await;
    let (handler, mut seen) = recorder();
    let _sub = bus
        .subscribe(order::OrderConsumer::new(handler).subscription(tenant.clone(), "message"))
        .await
        .expect("an existing queue with other arguments is used as it is");
    order::OrderPublisher::new(bus.clone())
        .publish(&suite::ctx(&tenant), created("o-1"))
        .await
        .unwrap();
    assert_eq!(next(&mut seen).await.1, "created o-1");
    broker.cleanup(&["message"]).await;
}

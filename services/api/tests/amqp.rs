//! The generated AMQP publisher and consumer exchange events through the real RabbitMQ on
//! 127.0.0.1:5672 (override with `MESH_TEST_AMQP_URI`). Every test uses its own tenant, so
//! its exchanges and queues are its own, and deletes them at the end.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{
        BasicGetOptions, BasicPublishOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};
use mesh_amqp::{AmqpBus, AmqpConfig, headers};
use mesh_api::order::v1 as order;
use mesh_contract::{BusError, EventBus, HandlerError, RequestContext, TenantId};
use tokio::sync::mpsc;

fn uri() -> String {
    std::env::var("MESH_TEST_AMQP_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A tenant of its own for one test, and the broker objects to delete afterwards.
struct Scope {
    tenant: TenantId,
    raw: Connection,
}

impl Scope {
    async fn new() -> Self {
        let id = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let raw = Connection::connect(&uri(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ must be running on 127.0.0.1:5672 (bash .ci/test starts it)");
        Self {
            tenant: TenantId::new(&id).unwrap(),
            raw,
        }
    }

    fn ctx(&self) -> RequestContext {
        let mut ctx = RequestContext::new(self.tenant.clone());
        ctx.trace.traceparent =
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        ctx
    }

    fn exchange(&self) -> String {
        mesh_contract::spec::names::exchange(&self.tenant, "order", 1)
    }

    fn queue(&self, consumer: &str) -> String {
        mesh_contract::spec::names::queue(&self.tenant, "order", 1, consumer)
    }

    /// Publishes raw bytes as if from a broken or hostile publisher.
    async fn publish_raw(&self, routing_key: &str, payload: &[u8], headers: &[(&str, &str)]) {
        let channel = self.raw.create_channel().await.unwrap();
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert((*k).into(), AMQPValue::LongString((*v).into()));
        }
        channel
            .basic_publish(
                self.exchange().into(),
                routing_key.into(),
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
        for consumer in consumers {
            let queue = self.queue(consumer);
            for name in [queue.clone(), format!("{queue}.dead")] {
                let _ = channel
                    .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
        }
        let _ = channel
            .exchange_delete(
                self.exchange().as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
}

/// Forwards every event it handles, with its context, to the test.
struct Recorder {
    tx: mpsc::UnboundedSender<(RequestContext, String)>,
}

impl order::OrderHandler for Recorder {
    async fn on_order_created(
        &self,
        ctx: &RequestContext,
        event: order::OrderCreated,
    ) -> Result<(), HandlerError> {
        let id = event.order.map(|o| o.order_id).unwrap_or_default();
        self.tx
            .send((ctx.clone(), format!("created {id}")))
            .unwrap();
        Ok(())
    }

    async fn on_order_updated(
        &self,
        ctx: &RequestContext,
        event: order::OrderUpdated,
    ) -> Result<(), HandlerError> {
        self.tx
            .send((
                ctx.clone(),
                format!("updated {} to {:?}", event.order_id, event.status()),
            ))
            .unwrap();
        Ok(())
    }
}

fn recorder() -> (Recorder, mpsc::UnboundedReceiver<(RequestContext, String)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Recorder { tx }, rx)
}

async fn next(
    rx: &mut mpsc::UnboundedReceiver<(RequestContext, String)>,
) -> (RequestContext, String) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("event handled within 10 s")
        .expect("handler alive")
}

fn created(id: &str) -> order::OrderCreated {
    order::OrderCreated {
        order: Some(order::OrderView {
            order_id: id.into(),
            total_cents: 4200,
            currency: "CNY".into(),
            ..Default::default()
        }),
        conversation_id: "c1".into(),
    }
}

async fn bus() -> AmqpBus {
    AmqpBus::connect(AmqpConfig {
        uri: uri(),
        retry_backoff: Duration::from_millis(20),
        max_payload_bytes: 64 * 1024,
        ..Default::default()
    })
    .await
    .expect("RabbitMQ must be running on 127.0.0.1:5672 (bash .ci/test starts it)")
}

#[tokio::test]
async fn publish_and_consume_round_trip_with_context() {
    let scope = Scope::new().await;
    let bus = bus().await;
    let (handler, mut rx) = recorder();
    let _subscription = bus
        .subscribe(order::OrderConsumer::new(handler).subscription(scope.tenant.clone(), "message"))
        .await
        .unwrap();
    let publisher = order::OrderPublisher::new(bus.clone());
    let ctx = scope.ctx();
    publisher.publish(&ctx, created("o-1")).await.unwrap();
    publisher
        .publish(
            &ctx,
            order::OrderUpdated {
                order_id: "o-1".into(),
                status: order::OrderStatus::Shipped as i32,
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let (seen, what) = next(&mut rx).await;
    assert_eq!(what, "created o-1");
    assert_eq!(
        seen, ctx,
        "tenant, request id and trace context travel with the event"
    );
    let (_, what) = next(&mut rx).await;
    assert_eq!(what, "updated o-1 to Shipped");
    scope.cleanup(&["message"]).await;
}

#[tokio::test]
async fn events_travel_persistent_with_tenant_and_contract_headers() {
    let scope = Scope::new().await;
    let bus = bus().await;
    // a plain queue bound to the tenant's exchange shows the wire format
    let channel = scope.raw.create_channel().await.unwrap();
    let (handler, _rx) = recorder();
    let _sub = bus
        .subscribe(order::OrderConsumer::new(handler).subscription(scope.tenant.clone(), "unused"))
        .await
        .unwrap();
    let tap = scope.queue("tap");
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
            scope.exchange().as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let ctx = scope.ctx();
    order::OrderPublisher::new(bus.clone())
        .publish(&ctx, created("o-2"))
        .await
        .unwrap();
    let message = scope.get(&tap).await;
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
    let table = props.headers().as_ref().unwrap().inner();
    let header = |name: &str| match table.get(name) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("header {name}: {other:?}"),
    };
    assert_eq!(header("x-mesh-tenant"), scope.tenant.as_str());
    assert_eq!(header("x-mesh-request-id"), ctx.request_id);
    assert_eq!(
        header("traceparent"),
        ctx.trace.traceparent.clone().unwrap()
    );
    assert_eq!(header(headers::EVENT), "OrderCreated");
    assert_eq!(header(headers::CONTRACT), "order/v1@1.0.0");
    let decoded: order::OrderCreated =
        prost::Message::decode(message.delivery.data.as_slice()).unwrap();
    assert_eq!(decoded, created("o-2"));
    scope.cleanup(&["unused", "tap"]).await;
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_with_reason_while_good_ones_flow() {
    let scope = Scope::new().await;
    let bus = bus().await;
    let (handler, mut rx) = recorder();
    let _sub = bus
        .subscribe(order::OrderConsumer::new(handler).subscription(scope.tenant.clone(), "message"))
        .await
        .unwrap();
    let tenant = scope.tenant.to_string();
    // undecodable payload, no tenant, someone else's tenant, oversized
    scope
        .publish_raw(
            "order_created",
            &[0xff, 0xff, 0xff],
            &[("x-mesh-tenant", &tenant)],
        )
        .await;
    scope.publish_raw("order_created", &[], &[]).await;
    scope
        .publish_raw("order_created", &[], &[("x-mesh-tenant", "intruder")])
        .await;
    scope
        .publish_raw(
            "order_created",
            &vec![0u8; 65 * 1024],
            &[("x-mesh-tenant", &tenant)],
        )
        .await;
    order::OrderPublisher::new(bus.clone())
        .publish(&scope.ctx(), created("good"))
        .await
        .unwrap();

    let (_, what) = next(&mut rx).await;
    assert_eq!(
        what, "created good",
        "the consumer keeps running past poison messages"
    );
    let dead = format!("{}.dead", scope.queue("message"));
    let mut reasons = Vec::new();
    for _ in 0..4 {
        let message = scope.get(&dead).await;
        let table = message.delivery.properties.headers().clone().unwrap();
        match table.inner().get(headers::DEAD_REASON) {
            Some(AMQPValue::LongString(s)) => reasons.push(s.to_string()),
            other => panic!("dead letter without reason: {other:?}"),
        }
    }
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
        reasons[3].contains("over the limit of 65536 bytes"),
        "{reasons:?}"
    );
    scope.cleanup(&["message"]).await;
}

/// Fails with Retry until its third run.
struct Flaky {
    runs: Arc<AtomicU32>,
    done: mpsc::UnboundedSender<u32>,
}

impl order::OrderHandler for Flaky {
    async fn on_order_created(
        &self,
        _: &RequestContext,
        _: order::OrderCreated,
    ) -> Result<(), HandlerError> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        if run < 3 {
            return Err(HandlerError::Retry(format!("dependency down (run {run})")));
        }
        self.done.send(run).unwrap();
        Ok(())
    }
}

#[tokio::test]
async fn a_handler_asking_to_retry_runs_again_then_succeeds() {
    let scope = Scope::new().await;
    let bus = bus().await;
    let runs = Arc::new(AtomicU32::new(0));
    let (done, mut finished) = mpsc::unbounded_channel();
    let _sub = bus
        .subscribe(
            order::OrderConsumer::new(Flaky {
                runs: runs.clone(),
                done,
            })
            .subscription(scope.tenant.clone(), "message"),
        )
        .await
        .unwrap();
    order::OrderPublisher::new(bus.clone())
        .publish(&scope.ctx(), created("o-3"))
        .await
        .unwrap();
    let run = tokio::time::timeout(Duration::from_secs(10), finished.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run, 3);
    assert_eq!(runs.load(Ordering::SeqCst), 3, "no run after success");
    scope.cleanup(&["message"]).await;
}

#[tokio::test]
async fn tenants_never_see_each_others_events() {
    let (a, b) = (Scope::new().await, Scope::new().await);
    let bus = bus().await;
    let (handler_a, mut rx_a) = recorder();
    let (handler_b, mut rx_b) = recorder();
    let _sa = bus
        .subscribe(order::OrderConsumer::new(handler_a).subscription(a.tenant.clone(), "message"))
        .await
        .unwrap();
    let _sb = bus
        .subscribe(order::OrderConsumer::new(handler_b).subscription(b.tenant.clone(), "message"))
        .await
        .unwrap();
    let publisher = order::OrderPublisher::new(bus.clone());
    publisher.publish(&a.ctx(), created("for-a")).await.unwrap();
    publisher.publish(&b.ctx(), created("for-b")).await.unwrap();
    let (ctx_a, what_a) = next(&mut rx_a).await;
    let (ctx_b, what_b) = next(&mut rx_b).await;
    assert_eq!(
        (ctx_a.tenant, what_a.as_str()),
        (a.tenant.clone(), "created for-a")
    );
    // b's first (and only) event is its own: a's event, published earlier, never reached it
    assert_eq!(
        (ctx_b.tenant, what_b.as_str()),
        (b.tenant.clone(), "created for-b")
    );
    assert!(rx_a.try_recv().is_err() && rx_b.try_recv().is_err());
    a.cleanup(&["message"]).await;
    b.cleanup(&["message"]).await;
}

#[tokio::test]
async fn publishing_with_no_consumer_queue_fails_instead_of_losing_the_event() {
    let scope = Scope::new().await;
    let bus = bus().await;
    let err = order::OrderPublisher::new(bus.clone())
        .publish(&scope.ctx(), created("lost?"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BusError::NotConfirmed {
                event: "OrderCreated",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("no queue is bound"), "{err}");
    scope.cleanup(&[]).await;
}

#[tokio::test]
async fn oversized_publish_is_refused_before_the_broker() {
    let scope = Scope::new().await;
    let bus = bus().await;
    let mut big = created("big");
    big.conversation_id = "x".repeat(70 * 1024);
    let err = order::OrderPublisher::new(bus.clone())
        .publish(&scope.ctx(), big)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BusError::PayloadTooLarge {
                event: "OrderCreated",
                limit: 65536,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn dropping_the_subscription_stops_consuming() {
    let scope = Scope::new().await;
    let bus = bus().await;
    let (handler, mut rx) = recorder();
    let sub = bus
        .subscribe(order::OrderConsumer::new(handler).subscription(scope.tenant.clone(), "message"))
        .await
        .unwrap();
    let publisher = order::OrderPublisher::new(bus.clone());
    publisher
        .publish(&scope.ctx(), created("before"))
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await.1, "created before");
    sub.stop();
    // the queue outlives the subscription (durable), so the event waits there, unconsumed
    publisher
        .publish(&scope.ctx(), created("after"))
        .await
        .unwrap();
    let waiting = scope.get(&scope.queue("message")).await;
    let decoded: order::OrderCreated =
        prost::Message::decode(waiting.delivery.data.as_slice()).unwrap();
    assert_eq!(decoded, created("after"));
    assert!(rx.try_recv().is_err());
    scope.cleanup(&["message"]).await;
}

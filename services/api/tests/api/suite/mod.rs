//! The event-bus behaviour suite: the same tests run against RabbitMQ (`amqp.rs`) and the
//! embedded bus (`embedded.rs`), through the generated publisher and consumer.

#![allow(dead_code)]

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use mesh_api::order::v1 as order;
use mesh_contract::{
    BusError, EventBus, HandlerError, RequestContext, TenantId, bus::BoxFuture, spec::names,
};
use tokio::sync::mpsc;

/// What a test needs to see inside a transport.
pub trait Probe: Sync {
    /// Reasons of the first `count` dead letters of a queue, waiting up to 10 s for them.
    fn dead_reasons<'a>(&'a self, queue: &'a str, count: usize) -> BoxFuture<'a, Vec<String>>;
    /// Messages waiting, unconsumed, in a queue.
    fn waiting<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, usize>;
    /// Dead letters of a queue, now.
    fn dead_count<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, usize>;
}

/// A tenant id no other test uses.
pub fn fresh_tenant() -> TenantId {
    TenantId::new(&format!(
        "t{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    ))
    .unwrap()
}

pub fn ctx(tenant: &TenantId) -> RequestContext {
    let mut ctx = RequestContext::new(tenant.clone());
    ctx.trace.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    ctx
}

/// The queue of `consumer` for order v1 events of `tenant`.
pub fn queue(tenant: &TenantId, consumer: &str) -> String {
    names::queue(tenant, "order", 1, consumer)
}

pub type Seen = mpsc::UnboundedReceiver<(RequestContext, String)>;

/// Forwards every event it handles, with its context, to the test; rejects orders whose id
/// starts with `poison`.
pub struct Recorder {
    tx: mpsc::UnboundedSender<(RequestContext, String)>,
}

impl order::OrderHandler for Recorder {
    async fn on_order_created(
        &self,
        ctx: &RequestContext,
        event: order::OrderCreated,
    ) -> Result<(), HandlerError> {
        let id = event.order.map(|o| o.order_id).unwrap_or_default();
        if id.starts_with("poison") {
            return Err(HandlerError::Reject(format!(
                "order {id} can never be handled"
            )));
        }
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

/// Waits (the test kit's poll, at most 10 s) until `done` holds; fails the test naming `what`
/// otherwise.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    mesh_testkit::eventually(what, || std::future::ready(done().then_some(()))).await
}

/// Subscribes a [`Recorder`] as consumer `message` of `tenant`'s order v1 events.
pub async fn subscribe_recorder<B: EventBus>(
    bus: &B,
    tenant: &TenantId,
) -> (mesh_contract::SubscriptionHandle, Seen) {
    let (handler, rx) = recorder();
    let handle = bus
        .subscribe(order::OrderConsumer::new(handler).subscription(tenant.clone(), "message"))
        .await
        .unwrap();
    (handle, rx)
}

pub fn recorder() -> (Recorder, Seen) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Recorder { tx }, rx)
}

pub async fn next(rx: &mut Seen) -> (RequestContext, String) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("event handled within 10 s")
        .expect("handler alive")
}

pub fn created(id: &str) -> order::OrderCreated {
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

pub async fn round_trip_with_context<B: EventBus + Clone>(bus: B, tenant: &TenantId) {
    let (_sub, mut rx) = subscribe_recorder(&bus, tenant).await;
    let publisher = order::OrderPublisher::new(bus.clone());
    let ctx = ctx(tenant);
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
    // who called is not on the wire: a consumer knows only what the headers say
    let sent = mesh_contract::RequestContext {
        caller: mesh_contract::Caller::Anonymous,
        ..ctx.clone()
    };
    assert_eq!(
        seen, sent,
        "tenant, request id and trace context travel with the event"
    );
    assert_eq!(
        next(&mut rx).await.1,
        "updated o-1 to Shipped",
        "events arrive in order"
    );
}

pub async fn rejected_events_are_dead_lettered_while_good_ones_flow<B: EventBus + Clone>(
    bus: B,
    tenant: &TenantId,
    probe: &dyn Probe,
) {
    let (_sub, mut rx) = subscribe_recorder(&bus, tenant).await;
    let publisher = order::OrderPublisher::new(bus.clone());
    publisher
        .publish(&ctx(tenant), created("poison-1"))
        .await
        .unwrap();
    publisher
        .publish(&ctx(tenant), created("good"))
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await.1, "created good");
    let reasons = probe.dead_reasons(&queue(tenant, "message"), 1).await;
    assert_eq!(reasons, ["order poison-1 can never be handled"]);
}

/// Fails with Retry until its third run.
struct Flaky {
    runs: Arc<AtomicU32>,
    done: mpsc::UnboundedSender<u32>,
    succeed_on: u32,
}

impl order::OrderHandler for Flaky {
    async fn on_order_created(
        &self,
        _: &RequestContext,
        _: order::OrderCreated,
    ) -> Result<(), HandlerError> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        if run < self.succeed_on {
            return Err(HandlerError::Retry(format!("dependency down (run {run})")));
        }
        self.done.send(run).unwrap();
        Ok(())
    }
}

/// `bus` must allow 3 attempts.
pub async fn retry_then_success<B: EventBus + Clone>(bus: B, tenant: &TenantId) {
    let runs = Arc::new(AtomicU32::new(0));
    let (done, mut finished) = mpsc::unbounded_channel();
    let handler = Flaky {
        runs: runs.clone(),
        done,
        succeed_on: 3,
    };
    let _sub = bus
        .subscribe(order::OrderConsumer::new(handler).subscription(tenant.clone(), "message"))
        .await
        .unwrap();
    order::OrderPublisher::new(bus.clone())
        .publish(&ctx(tenant), created("o-3"))
        .await
        .unwrap();
    let run = tokio::time::timeout(Duration::from_secs(10), finished.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run, 3);
    assert_eq!(runs.load(Ordering::SeqCst), 3, "no run after success");
}

/// A dependency down for many runs: the message waits, is never dead-lettered, succeeds when
/// the dependency is back, and the message behind it follows in order.
pub async fn transient_failures_are_retried_until_they_pass_never_dead_lettered<
    B: EventBus + Clone,
>(
    bus: B,
    tenant: &TenantId,
    probe: &dyn Probe,
) {
    let runs = Arc::new(AtomicU32::new(0));
    let (done, mut finished) = mpsc::unbounded_channel();
    let handler = Flaky {
        runs: runs.clone(),
        done,
        succeed_on: 12,
    };
    let _sub = bus
        .subscribe(order::OrderConsumer::new(handler).subscription(tenant.clone(), "message"))
        .await
        .unwrap();
    let publisher = order::OrderPublisher::new(bus.clone());
    publisher
        .publish(&ctx(tenant), created("o-4"))
        .await
        .unwrap();
    publisher
        .publish(&ctx(tenant), created("o-5"))
        .await
        .unwrap();
    for (expected, what) in [
        (12, "o-4 passed on its 12th run"),
        (13, "o-5 followed, once"),
    ] {
        let run = tokio::time::timeout(Duration::from_secs(20), finished.recv())
            .await
            .expect("handled within 20 s")
            .unwrap();
        assert_eq!(run, expected, "{what}");
    }
    assert_eq!(probe.waiting(&queue(tenant, "message")).await, 0);
    assert_eq!(
        probe.dead_count(&queue(tenant, "message")).await,
        0,
        "a transient failure is never dead-lettered"
    );
}

pub async fn tenants_never_see_each_others_events<B: EventBus + Clone>(
    bus: B,
    a: &TenantId,
    b: &TenantId,
) {
    let (handler_a, mut rx_a) = recorder();
    let (handler_b, mut rx_b) = recorder();
    let _sa = bus
        .subscribe(order::OrderConsumer::new(handler_a).subscription(a.clone(), "message"))
        .await
        .unwrap();
    let _sb = bus
        .subscribe(order::OrderConsumer::new(handler_b).subscription(b.clone(), "message"))
        .await
        .unwrap();
    let publisher = order::OrderPublisher::new(bus.clone());
    publisher.publish(&ctx(a), created("for-a")).await.unwrap();
    publisher.publish(&ctx(b), created("for-b")).await.unwrap();
    let (ctx_a, what_a) = next(&mut rx_a).await;
    let (ctx_b, what_b) = next(&mut rx_b).await;
    assert_eq!((&ctx_a.tenant, what_a.as_str()), (a, "created for-a"));
    // b's first (and only) event is its own: a's event, published earlier, never reached it
    assert_eq!((&ctx_b.tenant, what_b.as_str()), (b, "created for-b"));
    assert!(rx_a.try_recv().is_err() && rx_b.try_recv().is_err());
}

pub async fn publishing_with_no_consumer_queue_fails<B: EventBus + Clone>(
    bus: B,
    tenant: &TenantId,
) {
    let err = order::OrderPublisher::new(bus)
        .publish(&ctx(tenant), created("lost?"))
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
}

/// `bus` must have a payload limit of 64 KiB.
pub async fn oversized_publish_is_refused<B: EventBus + Clone>(bus: B, tenant: &TenantId) {
    let mut big = created("big");
    big.conversation_id = "x".repeat(70 * 1024);
    let err = order::OrderPublisher::new(bus)
        .publish(&ctx(tenant), big)
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

pub async fn a_stopped_subscription_leaves_events_queued<B: EventBus + Clone>(
    bus: B,
    tenant: &TenantId,
    probe: &dyn Probe,
) {
    let (sub, mut rx) = subscribe_recorder(&bus, tenant).await;
    let publisher = order::OrderPublisher::new(bus.clone());
    publisher
        .publish(&ctx(tenant), created("before"))
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await.1, "created before");
    sub.stop();
    publisher
        .publish(&ctx(tenant), created("after"))
        .await
        .unwrap();
    let queue = queue(tenant, "message");
    let mut waiting = 0;
    for _ in 0..200 {
        waiting = probe.waiting(&queue).await;
        if waiting == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(waiting, 1, "the event waits in the queue");
    assert!(rx.try_recv().is_err(), "nothing was consumed after stop");

    // a new subscription picks it up
    let (handler, mut rx) = recorder();
    let _again = bus
        .subscribe(order::OrderConsumer::new(handler).subscription(tenant.clone(), "message"))
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await.1, "created after");
}

/// Counts handler runs per order id.
#[derive(Clone, Default)]
pub struct Counter {
    pub runs: Arc<Mutex<HashMap<String, u32>>>,
}

impl order::OrderHandler for Counter {
    async fn on_order_created(
        &self,
        _: &RequestContext,
        event: order::OrderCreated,
    ) -> Result<(), HandlerError> {
        let id = event.order.unwrap_or_default().order_id;
        *self.runs.lock().unwrap().entry(id).or_default() += 1;
        Ok(())
    }
}

impl Counter {
    /// Waits (up to `within`) until each of `confirmed` was handled, and asserts none was
    /// handled twice; how many events were handled in all.
    pub async fn each_handled_once(&self, confirmed: &[String], within: Duration) -> usize {
        let deadline = std::time::Instant::now() + within;
        loop {
            let runs = self.runs.lock().unwrap().clone();
            let missing: Vec<_> = confirmed
                .iter()
                .filter(|id| !runs.contains_key(*id))
                .collect();
            if missing.is_empty() {
                let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
                assert!(twice.is_empty(), "handlers ran twice: {twice:?}");
                return runs.len();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} confirmed events never handled, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

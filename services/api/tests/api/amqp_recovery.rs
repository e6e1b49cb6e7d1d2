//! Recovery on the real RabbitMQ: connections cut by a loopback TCP proxy in the test (the
//! shared broker itself is never restarted), redeliveries after a consumer crash, and bounded
//! waiting while the broker is unreachable. Redis at 127.0.0.1:6379 (override with
//! `MESH_TEST_REDIS_URL`) holds the delivery log shared by two consumer instances.

use crate::broker;
use crate::suite;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use mesh_amqp::{AmqpBus, AmqpConfig, RedisLog};
use mesh_api::order::v1 as order;
use mesh_contract::{BusError, EventBus, HandlerError, RequestContext, TenantId};
use suite::{Counter, created, ctx, fresh_tenant};
use tokio::{net::TcpListener, task::AbortHandle};

/// Where the proxy forwards to.
const BROKER: &str = "127.0.0.1:5672";

/// A loopback TCP proxy in front of the broker that the test can cut and block.
struct Proxy {
    addr: SocketAddr,
    refusing: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let refusing = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (r, l) = (refusing.clone(), links.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if r.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut upstream) = tokio::net::TcpStream::connect(BROKER).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
                l.lock().unwrap().push(link.abort_handle());
            }
        })
        .abort_handle();
        Self {
            addr,
            refusing,
            links,
            accept,
        }
    }

    fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// Drops every open connection, as a broker restart or a network cut would.
    fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn refuse(&self, refuse: bool) {
        self.refusing.store(refuse, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

fn config(uri: String) -> AmqpConfig {
    AmqpConfig {
        uri,
        publish_timeout: Duration::from_secs(15),
        max_reconnect_backoff: Duration::from_millis(200),
        retry_backoff: Duration::from_millis(20),
        ..Default::default()
    }
}

async fn cleanup(tenant: &TenantId) {
    let channel = broker::connect().await.create_channel().await.unwrap();
    broker::delete_order_topology(&channel, tenant, &["message"]).await;
}

#[tokio::test]
async fn a_connection_cut_mid_stream_loses_no_confirmed_event_and_runs_none_twice() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    const EVENTS: usize = 300;
    let proxy = Proxy::start().await;
    let tenant = fresh_tenant();
    let bus = AmqpBus::connect(config(proxy.uri()))
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    let counter = Counter::default();
    let _sub = bus
        .subscribe(
            order::OrderConsumer::new(counter.clone()).subscription(tenant.clone(), "message"),
        )
        .await
        .unwrap();

    let publisher = order::OrderPublisher::new(bus.clone());
    let ctx = ctx(&tenant);
    let publishing = tokio::spawn(async move {
        let mut confirmed = Vec::new();
        let mut failed = Vec::new();
        for i in 0..EVENTS {
            let id = format!("o-{i}");
            match publisher.publish(&ctx, created(&id)).await {
                Ok(()) => confirmed.push(id),
                Err(err) => failed.push((id, err.to_string())),
            }
        }
        (confirmed, failed)
    });

    // cut every connection (publisher's and consumer's) once the stream is flowing, and keep
    // the broker unreachable for a moment
    let started = Instant::now();
    while counter.runs.lock().unwrap().len() < 50 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "stream never got going"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.refuse(true);
    proxy.cut();
    // the outage: the broker refuses connections for half a second, so the clients' reconnect meets refusals first
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.refuse(false);

    let (confirmed, failed) = publishing.await.unwrap();
    assert!(
        failed.is_empty(),
        "publishes wait out a short outage: {failed:?}"
    );
    assert_eq!(confirmed.len(), EVENTS);

    let handled = counter
        .each_handled_once(&confirmed, Duration::from_secs(30))
        .await;
    assert_eq!(handled, EVENTS, "only published events were handled");
    println!("{EVENTS} confirmed, {handled} handled once each, 0 lost, 0 duplicated");
    bus.close().await.unwrap();
    cleanup(&tenant).await;
}

#[tokio::test]
async fn publishing_while_the_broker_is_unreachable_fails_within_the_bound() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    let proxy = Proxy::start().await;
    let tenant = fresh_tenant();
    let mut config = config(proxy.uri());
    config.publish_timeout = Duration::from_secs(1);
    let bus = AmqpBus::connect(config)
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    let counter = Counter::default();
    let _sub = bus
        .subscribe(
            order::OrderConsumer::new(counter.clone()).subscription(tenant.clone(), "message"),
        )
        .await
        .unwrap();
    proxy.refuse(true);
    proxy.cut();
    let started = Instant::now();
    let err = order::OrderPublisher::new(bus.clone())
        .publish(&ctx(&tenant), created("o-down"))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(err, BusError::Unavailable(_)), "{err}");
    assert!(
        err.to_string().contains("event OrderCreated not published"),
        "{err}"
    );
    assert!(
        waited >= Duration::from_millis(900),
        "gave up before the bound: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "waited far past the bound: {waited:?}"
    );

    // once the broker is back, the same bus publishes and the same consumer resumes
    proxy.refuse(false);
    order::OrderPublisher::new(bus.clone())
        .publish(&ctx(&tenant), created("o-back"))
        .await
        .unwrap();
    suite::eventually("event after recovery not handled", || {
        counter.runs.lock().unwrap().contains_key("o-back")
    })
    .await;
    bus.close().await.unwrap();
    cleanup(&tenant).await;
}

/// Handles an event, then "crashes": closes its bus before the ack can reach the broker.
struct CrashAfterHandling {
    bus: Arc<Mutex<Option<AmqpBus>>>,
    runs: Arc<Mutex<Vec<String>>>,
}

impl order::OrderHandler for CrashAfterHandling {
    async fn on_order_created(
        &self,
        _: &RequestContext,
        event: order::OrderCreated,
    ) -> Result<(), HandlerError> {
        self.runs
            .lock()
            .unwrap()
            .push(event.order.unwrap_or_default().order_id);
        let bus = self.bus.lock().unwrap().take();
        if let Some(bus) = bus {
            bus.close().await.unwrap();
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_redelivery_after_a_consumer_crash_does_not_run_the_handler_again() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    let redis =
        std::env::var("MESH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let log = Arc::new(
        RedisLog::connect(&redis, Duration::from_secs(600))
            .await
            .expect("Redis must be running on 127.0.0.1:6379 (bash .ci/test starts it)"),
    );
    let tenant = fresh_tenant();
    let uri = broker::uri();

    // instance A handles the event, then dies before acknowledging it
    let bus_a = AmqpBus::connect_with_log(config(uri.clone()), log.clone())
        .await
        .unwrap();
    let runs_a = Arc::new(Mutex::new(Vec::new()));
    let _sub_a = bus_a
        .subscribe(
            order::OrderConsumer::new(CrashAfterHandling {
                bus: Arc::new(Mutex::new(Some(bus_a.clone()))),
                runs: runs_a.clone(),
            })
            .subscription(tenant.clone(), "message"),
        )
        .await
        .unwrap();
    let publisher_bus = AmqpBus::connect(config(uri.clone())).await.unwrap();
    let publisher = order::OrderPublisher::new(publisher_bus.clone());
    publisher
        .publish(&ctx(&tenant), created("o-once"))
        .await
        .unwrap();
    suite::eventually("instance A never handled the event", || {
        !runs_a.lock().unwrap().is_empty()
    })
    .await;

    // instance B takes over the queue: the unacknowledged event is redelivered to it, and
    // recognised as handled; a new event runs normally
    let bus_b = AmqpBus::connect_with_log(config(uri), log).await.unwrap();
    let counter_b = Counter::default();
    let _sub_b = bus_b
        .subscribe(
            order::OrderConsumer::new(counter_b.clone()).subscription(tenant.clone(), "message"),
        )
        .await
        .unwrap();
    publisher
        .publish(&ctx(&tenant), created("o-next"))
        .await
        .unwrap();
    suite::eventually("instance B never handled the new event", || {
        counter_b.runs.lock().unwrap().contains_key("o-next")
    })
    .await;
    // B consumes in order, so the redelivered o-once was settled before o-next ran
    assert_eq!(*runs_a.lock().unwrap(), ["o-once"]);
    let runs_b = counter_b.runs.lock().unwrap().clone();
    assert_eq!(
        runs_b,
        HashMap::from([("o-next".to_owned(), 1)]),
        "B must not run o-once again"
    );
    let channel = broker::connect().await.create_channel().await.unwrap();
    let queue = channel
        .queue_declare(
            suite::queue(&tenant, "message").as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(queue.message_count(), 0, "the redelivery was acknowledged");
    bus_b.close().await.unwrap();
    publisher_bus.close().await.unwrap();
    cleanup(&tenant).await;
}

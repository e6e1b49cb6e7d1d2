//! One business request is one trace across processes, HTTP/2 and the queue, as an OTLP
//! collector receives it; and a collector that is down never fails a request.
//!
//! Two processes: this test (the business request's root span, the client call, and the
//! storage consumer on RabbitMQ) and a child running a message service (`message.v1.Message`
//! behind the mesh's server trace layer, whose `Send` publishes `MessageSent`). The child is
//! this test binary again, running the ignored `message_service_process` test. The collector is
//! a tonic server implementing the OTLP trace and metrics services of `opentelemetry-proto`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use mesh_amqp::{AmqpBus, AmqpConfig};
use mesh_api::message::v1 as message;
use mesh_contract::{EventBus, RequestContext, TenantId};
use mesh_telemetry::{TelemetryConfig, TraceLayer};
use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    common::v1::{KeyValue, any_value},
    metrics::v1::metric,
    resource::v1::Resource,
    trace::v1::{Span, span::SpanKind},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};
use tonic::{Request, Response, Status, transport::server::TcpIncoming};
use tracing::Instrument;

use crate::support;

/// Where the child sends its telemetry; its presence makes the ignored test the child.
const FIXTURE_COLLECTOR: &str = "MESH_TEST_FIXTURE_COLLECTOR";

fn amqp() -> AmqpConfig {
    AmqpConfig {
        uri: std::env::var("MESH_TEST_AMQP_URI").unwrap_or_else(|_| AmqpConfig::default().uri),
        ..AmqpConfig::default()
    }
}

// ---- the collector -------------------------------------------------------------------------

fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .and_then(|v| match v {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
}

fn int(attributes: &[KeyValue], key: &str) -> Option<i64> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .and_then(|v| match v {
            any_value::Value::IntValue(i) => Some(*i),
            _ => None,
        })
}

fn service_name(resource: Option<&Resource>) -> String {
    resource
        .and_then(|r| text(&r.attributes, "service.name"))
        .unwrap_or_default()
}

/// A span as received, with the process that sent it.
#[derive(Clone, Debug)]
struct Received {
    process: String,
    span: Span,
}

impl Received {
    fn attr(&self, key: &str) -> Option<String> {
        text(&self.span.attributes, key)
    }

    fn int(&self, key: &str) -> Option<i64> {
        int(&self.span.attributes, key)
    }

    /// The span's status code (0 unset, 1 ok, 2 error) and message.
    fn status(&self) -> (i32, String) {
        self.span
            .status
            .as_ref()
            .map(|s| (s.code, s.message.clone()))
            .unwrap_or_default()
    }
}

/// A metric data point as received: (process, metric name, attributes).
type Point = (String, String, HashMap<String, String>);

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
    points: Arc<Mutex<Vec<Point>>>,
    /// Every resource seen, its attributes as text.
    resources: Arc<Mutex<Vec<HashMap<String, String>>>>,
}

impl Collector {
    /// Every span received of the trace with (hex) id `trace`.
    fn trace(&self, trace: &str) -> Vec<Received> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|r| hex(&r.span.trace_id) == trace)
            .cloned()
            .collect()
    }

    fn saw(&self, resource: Option<&Resource>) {
        let Some(resource) = resource else { return };
        let attributes = resource
            .attributes
            .iter()
            .filter_map(|kv| {
                let value = match kv.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => s.clone(),
                    any_value::Value::IntValue(i) => i.to_string(),
                    _ => return None,
                };
                Some((kv.key.clone(), value))
            })
            .collect();
        let mut resources = self.resources.lock().unwrap();
        if !resources.contains(&attributes) {
            resources.push(attributes);
        }
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            self.saw(resource.resource.as_ref());
            let process = service_name(resource.resource.as_ref());
            for scope in resource.scope_spans {
                spans.extend(scope.spans.into_iter().map(|span| Received {
                    process: process.clone(),
                    span,
                }));
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut points = self.points.lock().unwrap();
        for resource in request.into_inner().resource_metrics {
            self.saw(resource.resource.as_ref());
            let process = service_name(resource.resource.as_ref());
            for scope in resource.scope_metrics {
                for m in scope.metrics {
                    let attributes = match &m.data {
                        Some(metric::Data::Sum(sum)) => {
                            sum.data_points.iter().map(|p| &p.attributes).collect()
                        }
                        Some(metric::Data::Histogram(h)) => {
                            h.data_points.iter().map(|p| &p.attributes).collect()
                        }
                        Some(metric::Data::Gauge(g)) => {
                            g.data_points.iter().map(|p| &p.attributes).collect()
                        }
                        _ => Vec::new(),
                    };
                    for attributes in attributes {
                        let map = attributes
                            .iter()
                            .filter_map(|kv| Some((kv.key.clone(), text(attributes, &kv.key)?)))
                            .collect();
                        points.push((process.clone(), m.name.clone(), map));
                    }
                }
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

async fn start_collector() -> (Collector, SocketAddr) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .add_service(MetricsServiceServer::new(collector.clone()))
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true))),
    );
    (collector, addr)
}

/// `mesh up` on the tenants in `dir` (with extra environment `env`), exporting every 200 ms to
/// a collector of its own.
async fn traced_mesh_up(
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (Collector, support::MeshUp) {
    let (collector, addr) = start_collector().await;
    let endpoint = format!("http://{addr}");
    let mut all = vec![
        ("MESH_TELEMETRY_OTLP_ENDPOINT", endpoint.as_str()),
        ("MESH_TELEMETRY_EXPORT_INTERVAL_MS", "200"),
    ];
    all.extend_from_slice(env);
    (collector, support::MeshUp::start(dir, &all).await)
}

// ---- the message service process -----------------------------------------------------------

struct MessageFixture {
    publisher: message::MessagePublisher<AmqpBus>,
}

#[tonic::async_trait]
impl message::message_server::Message for MessageFixture {
    async fn send(
        &self,
        request: Request<message::SendRequest>,
    ) -> Result<Response<message::SendResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let r = request.into_inner();
        let sent = message::MessageSent {
            message: Some(message::ChatMessage {
                message_id: r.client_msg_id,
                conversation_id: r.conversation_id,
                from_user: r.from_user,
                to_user: r.to_user,
                body: r.body,
                ..Default::default()
            }),
        };
        // persisted asynchronously: the storage consumer gets it from the queue
        self.publisher
            .publish(&ctx, sent)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(message::SendResponse::default()))
    }
    async fn ack_delivery(
        &self,
        _: Request<message::AckDeliveryRequest>,
    ) -> Result<Response<message::AckDeliveryResponse>, Status> {
        Err(Status::unimplemented("not in this fixture"))
    }
    async fn fetch_offline(
        &self,
        _: Request<message::FetchOfflineRequest>,
    ) -> Result<Response<message::FetchOfflineResponse>, Status> {
        Err(Status::unimplemented("not in this fixture"))
    }
    async fn mark_read(
        &self,
        _: Request<message::MarkReadRequest>,
    ) -> Result<Response<message::MarkReadResponse>, Status> {
        Err(Status::unimplemented("not in this fixture"))
    }
    async fn send_system(
        &self,
        _: Request<message::SendSystemRequest>,
    ) -> Result<Response<message::SendResponse>, Status> {
        Err(Status::unimplemented("not in this fixture"))
    }
    async fn send_from_channel(
        &self,
        _: Request<message::SendRequest>,
    ) -> Result<Response<message::SendResponse>, Status> {
        Err(Status::unimplemented("not in this fixture"))
    }
    async fn history(
        &self,
        _: Request<message::HistoryRequest>,
    ) -> Result<Response<message::HistoryResponse>, Status> {
        Err(Status::unimplemented("not in this fixture"))
    }
    async fn list_terminals(
        &self,
        _: Request<message::ListTerminalsRequest>,
    ) -> Result<Response<message::ListTerminalsResponse>, Status> {
        Err(Status::unimplemented("not in this fixture"))
    }
    async fn sign_out_terminal(
        &self,
        _: Request<message::SignOutTerminalRequest>,
    ) -> Result<Response<message::SignOutTerminalResponse>, Status> {
        Err(Status::unimplemented("not in this fixture"))
    }
}

/// The child process: serves the message service until its stdin closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of the tests below, started by them"]
async fn message_service_process() {
    let Ok(collector) = std::env::var(FIXTURE_COLLECTOR) else {
        return;
    };
    let telemetry = mesh_telemetry::init(
        "message-process",
        &TelemetryConfig {
            otlp_endpoint: Some(collector),
            console: false,
            export_interval_ms: 200,
            prometheus_listen: None,
            log_format: Default::default(),
        },
        "warn",
    )
    .unwrap();
    let bus = AmqpBus::connect(amqp()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("READY {}", listener.local_addr().unwrap());
    let server = tonic::transport::Server::builder()
        .layer(TraceLayer::server(mesh_api::CONTRACTS))
        .add_service(message::message_server::MessageServer::new(
            MessageFixture {
                publisher: message::MessagePublisher::new(bus),
            },
        ))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = tokio::io::stdin().read_to_end(&mut Vec::new()).await;
            },
        );
    server.await.unwrap();
    telemetry.shutdown().await; // sends what is buffered
}

/// The child, and the address it serves.
async fn start_message_process(collector: &str) -> (Child, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            // its path in this binary (`telemetry::message_service_process`)
            concat!(module_path!(), "::message_service_process")
                .split_once("::")
                .map_or("message_service_process", |(_, path)| path),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(FIXTURE_COLLECTOR, collector)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let address = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // the test harness may have written `test message_service_process ... ` first
            if let Some((_, address)) = line.split_once("READY ") {
                return address.trim().to_owned();
            }
        }
        panic!("the message process ended before serving");
    })
    .await
    .expect("the message process serves within 30 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, address)
}

/// Closes the child's stdin (its stop signal) and waits for a clean exit.
async fn stop(mut child: Child) {
    drop(child.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the message process stops")
        .unwrap();
    assert!(status.success(), "{status}");
}

/// The storage consumer: reports the context of each `MessageSent` it handles.
struct Storage(mpsc::UnboundedSender<(String, RequestContext)>);

impl message::MessageHandler for Storage {
    async fn on_message_sent(
        &self,
        ctx: &RequestContext,
        event: message::MessageSent,
    ) -> Result<(), mesh_contract::HandlerError> {
        let id = event.message.map(|m| m.message_id).unwrap_or_default();
        let _ = self.0.send((id, ctx.clone()));
        Ok(())
    }
}

async fn storage(
    tenant: &TenantId,
) -> (
    mesh_contract::SubscriptionHandle,
    mpsc::UnboundedReceiver<(String, RequestContext)>,
) {
    let bus = AmqpBus::connect(amqp())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = bus
        .subscribe(
            message::MessageConsumer::new(Storage(tx)).subscription(tenant.clone(), "storage"),
        )
        .await
        .unwrap();
    (handle, rx)
}

/// Waits for the storage consumer to handle message `id` (older runs' messages are skipped).
async fn stored(
    rx: &mut mpsc::UnboundedReceiver<(String, RequestContext)>,
    id: &str,
) -> RequestContext {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let (got, ctx) = rx.recv().await.expect("consumer running");
            if got == id {
                return ctx;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("message {id} not stored within 20 s"))
}

fn send_request(id: &str) -> message::SendRequest {
    message::SendRequest {
        conversation_id: "c-1".into(),
        from_user: "customer-1".into(),
        to_user: "merchant-1".into(),
        body: "is my order on its way?".into(),
        client_msg_id: id.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_one_trace_across_http2_the_queue_and_two_processes() {
    let (collector, addr) = start_collector().await;
    let endpoint = format!("http://{addr}");
    let telemetry = mesh_telemetry::init(
        "test-process",
        &TelemetryConfig {
            otlp_endpoint: Some(endpoint.clone()),
            console: false,
            export_interval_ms: 200,
            prometheus_listen: None,
            log_format: Default::default(),
        },
        "warn",
    )
    .unwrap();
    let tenant = TenantId::new("tracetest").unwrap();
    let (_storage, mut stored_rx) = storage(&tenant).await;
    let (child, address) = start_message_process(&endpoint).await;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut caller = message::MessageCaller::new(
        tower::ServiceBuilder::new()
            .layer(TraceLayer::client(mesh_api::CONTRACTS))
            .service(channel),
    );
    let id = format!("m-{}", uuid::Uuid::new_v4());
    let root = tracing::info_span!(target: "mesh::test", "business request", tenant = "tracetest");
    caller
        .send(&RequestContext::new(tenant.clone()), send_request(&id))
        .instrument(root.clone())
        .await
        .expect("Send answers");
    let consumed = stored(&mut stored_rx, &id).await;
    assert!(
        consumed.trace.traceparent.is_some(),
        "the consumer's context carries the trace on"
    );
    drop(root);
    stop(child).await;

    // everything of this request, as the collector got it: the root, the call's two ends,
    // the publish and the consume
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        telemetry.flush();
        let spans = collector.spans.lock().unwrap().clone();
        let root = spans
            .iter()
            .find(|s| s.span.name == "business request")
            .cloned();
        if let Some(root) = root {
            let trace: Vec<Received> = spans
                .into_iter()
                .filter(|s| s.span.trace_id == root.span.trace_id)
                .collect();
            if trace.len() >= 5 {
                break trace;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the collector did not get the whole trace within 20 s: {:#?}",
            collector.spans.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let find = |name: &str, kind: SpanKind| {
        spans
            .iter()
            .find(|s| s.span.name == name && s.span.kind == kind as i32)
            .unwrap_or_else(|| panic!("no {kind:?} span {name:?} in {spans:#?}"))
            .clone()
    };
    let root = find("business request", SpanKind::Internal);
    let client = find("message.v1.Message/Send", SpanKind::Client);
    let server = find("message.v1.Message/Send", SpanKind::Server);
    let publish = find("publish mesh.tracetest.message.v1", SpanKind::Producer);
    let process = find("process mesh.tracetest.message.v1", SpanKind::Consumer);

    // one trace, each span the child of the one before it
    for (child, parent) in [
        (&client, &root),
        (&server, &client),
        (&publish, &server),
        (&process, &publish),
    ] {
        assert_eq!(
            child.span.parent_span_id, parent.span.span_id,
            "{} is the child of {}",
            child.span.name, parent.span.name
        );
    }
    // across two processes
    for s in [&root, &client, &process] {
        assert_eq!(s.process, "test-process", "{}", s.span.name);
    }
    for s in [&server, &publish] {
        assert_eq!(s.process, "message-process", "{}", s.span.name);
    }
    // with the tenant, service, contract version, method and outcome
    for s in [&client, &server, &publish, &process] {
        assert_eq!(
            s.attr("tenant").as_deref(),
            Some("tracetest"),
            "{}",
            s.span.name
        );
        assert_eq!(
            s.attr("service").as_deref(),
            Some("message"),
            "{}",
            s.span.name
        );
        assert_eq!(s.attr("outcome").as_deref(), Some("ok"), "{}", s.span.name);
        assert!(
            s.attr("contract.version")
                .is_some_and(|v| v.starts_with('1')),
            "{}",
            s.span.name
        );
    }
    assert_eq!(server.attr("method").as_deref(), Some("Send"));
    assert_eq!(publish.attr("event").as_deref(), Some("MessageSent"));

    // and metrics per tenant x service x method, from both processes
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        telemetry.flush();
        let points = collector.points.lock().unwrap().clone();
        let has = |process: &str, name: &str, want: &[(&str, &str)]| {
            points.iter().any(|(p, n, attrs)| {
                p == process
                    && n == name
                    && want
                        .iter()
                        .all(|(k, v)| attrs.get(*k).map(String::as_str) == Some(*v))
            })
        };
        let call = [
            ("tenant", "tracetest"),
            ("rpc.system", "grpc"),
            ("rpc.service", "message.v1.Message"),
            ("rpc.method", "Send"),
            ("outcome", "ok"),
        ];
        if has("message-process", "rpc.server.call.duration", &call)
            && has("test-process", "rpc.client.call.duration", &call)
            && has(
                "test-process",
                "mesh.events",
                &[
                    ("tenant", "tracetest"),
                    ("event", "MessageSent"),
                    ("operation", "process"),
                ],
            )
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics missing after 20 s: {points:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_never_fails_a_request() {
    // nothing listens on port 1: every export of the child fails
    let tenant = TenantId::new("tracedown").unwrap();
    let (_storage, mut stored_rx) = storage(&tenant).await;
    let (child, address) = start_message_process("http://127.0.0.1:1").await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut caller = message::MessageCaller::new(channel);
    for n in 0..30 {
        let id = format!("down-{n}-{}", uuid::Uuid::new_v4());
        caller
            .send(&RequestContext::new(tenant.clone()), send_request(&id))
            .await
            .expect("a request succeeds while the collector is down");
        stored(&mut stored_rx, &id).await;
    }
    // and the process still stops cleanly, giving up on what it could not send
    stop(child).await;
}

/// Each worker of a mesh exports a resource of its own: the same `service.name`, but its
/// group, tenants, process id, a fresh instance id and the mesh's version, so a collector tells
/// the processes (and a restarted one) apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_exports_a_resource_that_tells_it_apart() {
    let dir = support::tenants_folder(&["mall", "finance"], &[]);
    let (collector, mut up) = traced_mesh_up(dir.path(), &[]).await;
    let mut pids = HashMap::new();
    for _ in 0..2 {
        let line = up
            .output
            .wait_for("a worker", |l| l.starts_with("serving group="))
            .await;
        pids.insert(
            support::field(&line, "group").to_owned(),
            support::field(&line, "pid").to_owned(),
        );
    }
    // a call for each, so each has spans to export (metrics come on their own too)
    let channel = up.channel().await;
    for (tenant, token) in [("mall", "dev-mall-token"), ("finance", "dev-finance-token")] {
        let _ = mesh_api::order::v1::OrderCaller::new(channel.clone())
            .list_orders(
                &support::ctx(tenant, token),
                mesh_api::order::v1::ListOrdersRequest {
                    user_id: "alice".into(),
                    limit: 1,
                },
            )
            .await;
    }
    let worker = |group: &str| {
        collector
            .resources
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.get("mesh.worker.group").map(String::as_str) == Some(group))
            .cloned()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while (worker("shared").is_none() || worker("finance").is_none()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (shared, finance) = (
        worker("shared").expect("the shared worker's resource"),
        worker("finance").expect("finance's worker's resource"),
    );
    for (group, resource, tenants) in [
        ("shared", &shared, "mall"),
        ("finance", &finance, "finance"),
    ] {
        assert_eq!(resource["service.name"], "mesh-worker", "{resource:?}");
        assert_eq!(resource["mesh.tenants"], tenants, "{resource:?}");
        assert_eq!(resource["process.pid"], pids[group], "{resource:?}");
        assert!(!resource["service.version"].is_empty(), "{resource:?}");
        assert_eq!(resource["service.instance.id"].len(), 36, "{resource:?}");
    }
    assert_ne!(
        shared["service.instance.id"],
        finance["service.instance.id"]
    );
}

/// A collector that is down is said once per outage and signal, not once a second: `mesh up`
/// exporting every 100 ms to a closed port for 3 s logs the outage once per signal and process
/// and none of the SDK's per-export errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_is_said_once_per_outage() {
    // a port nobody listens on
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let dir = support::tenants_folder(&["mall"], &[]);
    let mut child = support::MeshUp::command(support::mesh_binary(), dir.path(), "127.0.0.1:0")
        .env("MESH_TELEMETRY_OTLP_ENDPOINT", &endpoint)
        .env("MESH_TELEMETRY_EXPORT_INTERVAL_MS", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let read = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    // 3 s with the collector down: several export attempts fail, and must be said once
    tokio::time::sleep(Duration::from_secs(3)).await;
    // SIGTERM: the supervisor stops its worker and both flush what they hold
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    let logs = read.await.unwrap();
    let said = logs.matches("telemetry export fails").count();
    assert!(
        (1..=4).contains(&said),
        "once per signal and process, not per export: {said}\n{logs}"
    );
    assert!(!logs.contains("ExportError"), "{logs}");
}

/// The front door traces every call it answers or forwards: a routed call's worker span is the
/// child of the front door's, in the caller's trace; a call it refuses has a span too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_front_door_traces_every_call_as_the_parent_of_its_workers() {
    let dir = support::tenants_folder(&["mall"], &[]);
    let (collector, mut up) = traced_mesh_up(dir.path(), &[]).await;
    up.shared_worker().await;
    let channel = up.channel().await;
    let call = |token: &'static str, trace: &'static str| {
        let channel = channel.clone();
        async move {
            let mut ctx = support::ctx("mall", token);
            ctx.trace.traceparent = Some(format!("00-{trace}-00f067aa0ba902b7-01"));
            mesh_api::order::v1::OrderCaller::new(channel)
                .list_orders(
                    &ctx,
                    mesh_api::order::v1::ListOrdersRequest {
                        user_id: "alice".into(),
                        limit: 1,
                    },
                )
                .await
        }
    };
    const ROUTED: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const REFUSED: &str = "5bf92f3577b34da6a3ce929d0e0e4737";
    call("dev-mall-token", ROUTED).await.unwrap();
    call("not-the-token", REFUSED).await.unwrap_err();

    let spans_of = |trace: &str| collector.trace(trace);
    let deadline = Instant::now() + Duration::from_secs(20);
    let complete = |spans: &[Received]| {
        spans.iter().any(|r| r.process == "mesh-front-door")
            && spans.iter().any(|r| r.process == "mesh-worker")
    };
    while (!complete(&spans_of(ROUTED)) || spans_of(REFUSED).is_empty())
        && Instant::now() < deadline
    {
        // polling the collector until the spans of both processes arrived
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let routed = spans_of(ROUTED);
    let front = routed
        .iter()
        .find(|r| r.process == "mesh-front-door")
        .unwrap_or_else(|| panic!("no front door span: {routed:#?}"));
    let worker = routed
        .iter()
        .find(|r| r.process == "mesh-worker" && r.span.kind == SpanKind::Server as i32)
        .unwrap_or_else(|| panic!("no worker span: {routed:#?}"));
    assert_eq!(front.span.kind, SpanKind::Server as i32);
    assert_eq!(
        hex(&front.span.parent_span_id),
        "00f067aa0ba902b7",
        "the caller's span"
    );
    assert_eq!(
        worker.span.parent_span_id, front.span.span_id,
        "the worker's span is the front door's child"
    );
    assert_eq!(front.attr("outcome").as_deref(), Some("ok"));
    let refused = spans_of(REFUSED);
    assert!(
        refused
            .iter()
            .any(|r| r.process == "mesh-front-door"
                && r.attr("outcome").as_deref() == Some("refused")),
        "{refused:#?}"
    );
    assert!(
        !refused.iter().any(|r| r.process == "mesh-worker"),
        "refused at the door"
    );
}

/// Hex of a span or trace id.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One chat through `mesh up` on RabbitMQ, as an OTLP collector receives it: one span tree
/// from the caller's span through the front door, the worker's `Send`, its CLIENT calls to the
/// locator and the gateway and their SERVER ends, the publish and the storage consume, each
/// with the OpenTelemetry RPC or messaging attributes beside the mesh's own; and calls that
/// fail carry their gRPC code, status message and the status the conventions rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_chat_through_mesh_up_is_one_span_tree_with_the_conventions() {
    use mesh_api::{gateway::v1 as gateway, locator::v1::TerminalKind, order::v2 as order2};

    // a business line of its own per run: its queues on the shared broker are its own
    let tenant = format!("otel{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let file = format!(
        "id = \"{tenant}\"\ndisplay_name = \"Telemetry test\"\ndata_namespace = \"{tenant}\"\n\
         [credentials]\ntoken = \"otel-secret-token\"\n"
    );
    let dir = support::tenants_folder(&[], &[(&format!("{tenant}.toml"), &file)]);
    let (collector, mut up) =
        traced_mesh_up(dir.path(), &[("MESH_AMQP_URI", support::LOCAL_AMQP)]).await;
    up.shared_worker().await;
    let users = support::Users::of(dir.path());
    let channel = up.channel().await;

    // bob is attached; alice writes to him, in the caller's trace
    let mut bob = gateway::GatewayCaller::new(channel.clone())
        .attach(
            &users.ctx(&tenant, "bob"),
            gateway::AttachRequest {
                user_id: "bob".into(),
                terminal_id: "phone".into(),
                kind: TerminalKind::Phone as i32,
            },
        )
        .await
        .expect("bob attaches");
    const CHAT: &str = "6bf92f3577b34da6a3ce929d0e0e4738";
    const CALLER_SPAN: &str = "00f067aa0ba902b7";
    let in_trace = |user: &str, trace: &str| {
        let mut ctx = users.ctx(&tenant, user);
        ctx.trace.traceparent = Some(format!("00-{trace}-{CALLER_SPAN}-01"));
        ctx
    };
    let sent = message::MessageCaller::new(channel.clone())
        .send(
            &in_trace("alice", CHAT),
            message::SendRequest {
                conversation_id: "c-otel".into(),
                from_user: "alice".into(),
                to_user: "bob".into(),
                body: "hello".into(),
                client_msg_id: "otel-1".into(),
            },
        )
        .await
        .expect("alice's message is accepted");
    assert!(sent.message.is_some());
    let pushed = tokio::time::timeout(
        Duration::from_secs(10),
        mesh_gateway::heartbeat::next_content(&mut bob),
    )
    .await
    .expect("bob's push within 10 s")
    .unwrap();
    assert!(pushed.is_some(), "bob got alice's message");
    // bob stays a while, then leaves: his Attach span lasts as long as he stayed
    tokio::time::sleep(Duration::from_millis(400)).await;
    drop(bob);
    // made-up tenants with made-up credentials: refused, and no metric series of their own
    for i in 0..5 {
        let forged = support::ctx(&format!("madeup{i}"), "not-a-credential");
        let refused = message::MessageCaller::new(channel.clone())
            .send(&forged, message::SendRequest::default())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }

    // two failures: the caller's mistake (a message without a receiver: INVALID_ARGUMENT) and
    // a service the tenant does not run at that major (order v2: FAILED_PRECONDITION)
    const MISTAKE: &str = "7bf92f3577b34da6a3ce929d0e0e4739";
    const NOT_RUN: &str = "8bf92f3577b34da6a3ce929d0e0e473a";
    let mistake = message::MessageCaller::new(channel.clone())
        .send(
            &in_trace("alice", MISTAKE),
            message::SendRequest {
                conversation_id: "c-otel".into(),
                from_user: "alice".into(),
                to_user: String::new(),
                body: "to nobody".into(),
                client_msg_id: "otel-2".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(mistake.code(), tonic::Code::InvalidArgument, "{mistake:?}");
    let not_run = order2::OrderCaller::new(channel.clone())
        .list_orders(
            &in_trace("alice", NOT_RUN),
            order2::ListOrdersRequest {
                user_id: "alice".into(),
                limit: 1,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        not_run.code(),
        tonic::Code::FailedPrecondition,
        "{not_run:?}"
    );

    // the collector's view of each trace
    let spans_of = |trace: &str| collector.trace(trace);
    let named = |spans: &[Received], name: &str, kind: SpanKind| -> Option<Received> {
        spans
            .iter()
            .find(|s| s.span.name == name && s.span.kind == kind as i32)
            .cloned()
    };
    let exchange = format!("mesh.{tenant}.message.v1");
    let storage_queue = format!("{exchange}.storage");
    let wanted: Vec<(String, SpanKind)> = vec![
        ("message.v1.Message/Send".into(), SpanKind::Server),
        ("locator.v1.Locator/Locate".into(), SpanKind::Client),
        ("locator.v1.Locator/Locate".into(), SpanKind::Server),
        ("gateway.v1.Gateway/Deliver".into(), SpanKind::Client),
        ("gateway.v1.Gateway/Deliver".into(), SpanKind::Server),
        (format!("publish {exchange}"), SpanKind::Producer),
    ];
    let storage_consume = |spans: &[Received]| {
        spans
            .iter()
            .find(|s| {
                s.span.kind == SpanKind::Consumer as i32
                    && s.attr("messaging.consumer.group.name").as_deref()
                        == Some(storage_queue.as_str())
            })
            .cloned()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let chat = loop {
        let spans = spans_of(CHAT);
        let complete =
            wanted
                .iter()
                .all(|(name, kind)| named(&spans, name, *kind).is_some())
                && spans
                    .iter()
                    .filter(|s| s.span.name == "message.v1.Message/Send")
                    .count()
                    >= 2
                && storage_consume(&spans).is_some()
                && !spans_of(MISTAKE).is_empty()
                && spans_of(NOT_RUN).len() >= 2
                && collector.spans.lock().unwrap().iter().any(|s| {
                    s.process == "mesh-worker" && s.span.name == "gateway.v1.Gateway/Attach"
                });
        if complete {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "the collector did not get the chat's span tree within 30 s: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let of = |process: &str, name: &str, kind: SpanKind| {
        chat.iter()
            .find(|s| s.process == process && s.span.name == name && s.span.kind == kind as i32)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind:?} {name:?} from {process}: {chat:#?}"))
    };
    let front = of(
        "mesh-front-door",
        "message.v1.Message/Send",
        SpanKind::Server,
    );
    let send = of("mesh-worker", "message.v1.Message/Send", SpanKind::Server);
    let locate_client = of("mesh-worker", "locator.v1.Locator/Locate", SpanKind::Client);
    let locate_server = of("mesh-worker", "locator.v1.Locator/Locate", SpanKind::Server);
    let deliver_client = of(
        "mesh-worker",
        "gateway.v1.Gateway/Deliver",
        SpanKind::Client,
    );
    let deliver_server = of(
        "mesh-worker",
        "gateway.v1.Gateway/Deliver",
        SpanKind::Server,
    );
    let publish = of(
        "mesh-worker",
        &format!("publish {exchange}"),
        SpanKind::Producer,
    );
    let consume = storage_consume(&chat).unwrap();
    assert_eq!(consume.process, "mesh-worker");

    // the tree: caller -> front door -> worker Send -> {CLIENT -> SERVER, PRODUCER -> CONSUMER}
    assert_eq!(hex(&front.span.parent_span_id), CALLER_SPAN);
    for (child, parent) in [
        (&send, &front),
        (&locate_client, &send),
        (&locate_server, &locate_client),
        (&deliver_client, &send),
        (&deliver_server, &deliver_client),
        (&publish, &send),
        (&consume, &publish),
    ] {
        assert_eq!(
            child.span.parent_span_id, parent.span.span_id,
            "{} ({:?}) is the child of {} ({:?})",
            child.span.name, child.span.kind, parent.span.name, parent.span.kind
        );
    }

    // RPC conventions beside the mesh's own attributes, on every call span
    for (span, service, method) in [
        (&front, "message.v1.Message", "Send"),
        (&send, "message.v1.Message", "Send"),
        (&locate_client, "locator.v1.Locator", "Locate"),
        (&locate_server, "locator.v1.Locator", "Locate"),
        (&deliver_client, "gateway.v1.Gateway", "Deliver"),
        (&deliver_server, "gateway.v1.Gateway", "Deliver"),
    ] {
        let what = format!(
            "{} {:?} of {}",
            span.span.name, span.span.kind, span.process
        );
        assert_eq!(span.attr("rpc.system").as_deref(), Some("grpc"), "{what}");
        assert_eq!(span.attr("rpc.service").as_deref(), Some(service), "{what}");
        assert_eq!(span.attr("rpc.method").as_deref(), Some(method), "{what}");
        assert_eq!(span.int("rpc.grpc.status_code"), Some(0), "{what}");
        assert_eq!(
            span.attr("tenant").as_deref(),
            Some(tenant.as_str()),
            "{what}"
        );
        assert_eq!(span.attr("outcome").as_deref(), Some("ok"), "{what}");
        assert!(span.attr("contract.version").is_some(), "{what}");
        assert_eq!(
            span.attr("server.address").as_deref(),
            Some("127.0.0.1"),
            "{what}"
        );
        assert!(span.int("server.port").is_some_and(|p| p > 0), "{what}");
        assert_eq!(span.status().0, 0, "unset: {what}");
    }
    // a server knows who called it: over the network, its address; the worker's calls to
    // itself (locator, gateway) never left the process, and say so
    for span in [&front, &send] {
        assert_eq!(
            span.attr("network.peer.address").as_deref(),
            Some("127.0.0.1"),
            "{} of {}",
            span.span.name,
            span.process
        );
        assert!(span.int("network.peer.port").is_some());
        assert_eq!(span.attr("network.transport"), None);
    }
    for span in [&locate_server, &deliver_server] {
        let what = format!("{} of {}", span.span.name, span.process);
        assert_eq!(
            span.attr("network.transport").as_deref(),
            Some("inproc"),
            "{what}"
        );
        assert_eq!(span.attr("network.peer.address"), None, "{what}");
    }
    // messaging conventions on the publish and the consume
    for span in [&publish, &consume] {
        let what = format!("{} {:?}", span.span.name, span.span.kind);
        assert_eq!(
            span.attr("messaging.system").as_deref(),
            Some("rabbitmq"),
            "{what}"
        );
        assert_eq!(
            span.attr("messaging.destination.name").as_deref(),
            Some(exchange.as_str()),
            "{what}"
        );
        assert!(
            span.attr("messaging.rabbitmq.destination.routing_key")
                .is_some_and(|k| !k.is_empty()),
            "{what}"
        );
        assert_eq!(
            span.attr("tenant").as_deref(),
            Some(tenant.as_str()),
            "{what}"
        );
        assert_eq!(span.attr("event").as_deref(), Some("MessageSent"), "{what}");
        assert_eq!(span.attr("outcome").as_deref(), Some("ok"), "{what}");
    }
    assert_eq!(
        publish.attr("messaging.operation.type").as_deref(),
        Some("send")
    );
    assert_eq!(
        consume.attr("messaging.operation.type").as_deref(),
        Some("process")
    );
    assert_eq!(
        publish.attr("messaging.operation.name").as_deref(),
        Some("publish")
    );
    assert_eq!(
        consume.attr("messaging.operation.name").as_deref(),
        Some("process")
    );
    let message_id = publish
        .attr("messaging.message.id")
        .expect("the message id");
    assert_eq!(
        consume.attr("messaging.message.id"),
        Some(message_id),
        "the consume names the message the publish sent"
    );

    // the caller's mistake: its code and message, the server spans' status left unset
    for span in spans_of(MISTAKE) {
        assert_eq!(span.int("rpc.grpc.status_code"), Some(3), "{span:#?}");
        assert_eq!(span.attr("error.type").as_deref(), Some("INVALID_ARGUMENT"));
        // the caller's own mistake: refused, not a failure the error alerts count
        assert_eq!(span.attr("outcome").as_deref(), Some("refused"));
        assert!(span.attr("status_message").is_some_and(|m| !m.is_empty()));
        assert_eq!(
            span.status().0,
            0,
            "a SERVER span leaves the caller's mistake unset"
        );
    }
    // a method the tenant does not run: the caller's doing too (FAILED_PRECONDITION, not a
    // server fault), with its message; server spans leave the status unset
    let not_run = spans_of(NOT_RUN);
    assert!(
        not_run.iter().any(|s| s.process == "mesh-worker"),
        "{not_run:#?}"
    );
    for span in not_run {
        assert_eq!(span.int("rpc.grpc.status_code"), Some(9), "{span:#?}");
        assert_eq!(
            span.attr("error.type").as_deref(),
            Some("FAILED_PRECONDITION")
        );
        assert_eq!(span.attr("outcome").as_deref(), Some("refused"));
        let message = span.attr("status_message").unwrap_or_default();
        assert!(
            message.contains("does not run") || message.contains("runs order"),
            "{message}"
        );
        assert_eq!(span.status().0, 0, "{span:#?}");
    }

    // a stream's span ends when the stream does, not when its headers went out
    let attach = collector
        .spans
        .lock()
        .unwrap()
        .iter()
        .find(|s| s.process == "mesh-worker" && s.span.name == "gateway.v1.Gateway/Attach")
        .cloned()
        .unwrap();
    let lasted =
        Duration::from_nanos(attach.span.end_time_unix_nano - attach.span.start_time_unix_nano);
    assert!(
        lasted >= Duration::from_millis(400),
        "bob's Attach span lasted {lasted:?}"
    );
    assert_eq!(attach.attr("outcome").as_deref(), Some("cancelled"));
    assert_eq!(
        attach.attr("error.type"),
        None,
        "bob leaving is no error of the server"
    );

    // the RPC duration metrics, in seconds, from the front door and the worker
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let points = collector.points.lock().unwrap().clone();
        let has = |process: &str, name: &str, service: &str| {
            points.iter().any(|(p, n, attrs)| {
                p == process
                    && n == name
                    && attrs.get("rpc.service").map(String::as_str) == Some(service)
                    && attrs.get("tenant").map(String::as_str) == Some(tenant.as_str())
            })
        };
        if has(
            "mesh-front-door",
            "rpc.server.call.duration",
            "message.v1.Message",
        ) && has(
            "mesh-worker",
            "rpc.server.call.duration",
            "message.v1.Message",
        ) && has(
            "mesh-worker",
            "rpc.client.call.duration",
            "locator.v1.Locator",
        ) {
            let made_up = points
                .iter()
                .any(|(_, _, attrs)| attrs.get("tenant").is_some_and(|t| t.starts_with("madeup")));
            assert!(!made_up, "a refused tenant made a series: {points:#?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "RPC metrics missing after 20 s: {points:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(up);
}

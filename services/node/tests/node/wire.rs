//! What a caller that is not our generated stubs sees at the front door: a body that does not
//! decode is its mistake (INVALID_ARGUMENT naming the message expected), and an event called
//! as if it were a call is told where events travel.

use crate::support;

use bytes::{Buf, BufMut, Bytes};
use support::{MeshUp, Users, ctx, python, run, tenants_folder};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Sends and receives raw bytes: whatever a foreign client puts on the wire.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

async fn call(up: &MeshUp, path: &'static str, body: &'static [u8]) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(up.channel().await);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(Bytes::from_static(body));
    ctx("mall", "dev-mall-token")
        .inject(request.metadata_mut())
        .unwrap();
    grpc.unary(request, http::uri::PathAndQuery::from_static(path), Raw)
        .await
        .expect_err("the call must be refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_invalid_argument_and_an_event_called_as_a_call_says_where_events_go() {
    let dir = tenants_folder(&["mall"], &[]);
    let mut up = MeshUp::start(dir.path(), &[]).await;
    up.shared_worker().await;

    // field 1 as a varint whose bytes never end: not a GetOrderRequest
    let garbage = call(&up, "/order.v1.Order/GetOrder", &[0x08, 0xff, 0xff]).await;
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument, "{garbage:?}");
    assert!(
        garbage
            .message()
            .starts_with("the body does not decode as a GetOrderRequest: "),
        "{garbage:?}"
    );

    let event = call(&up, "/order.v1.Order/OrderCreated", b"").await;
    assert_eq!(event.code(), tonic::Code::Unimplemented, "{event:?}");
    assert_eq!(
        event.message(),
        "OrderCreated is an event, not a call: publish it to exchange mesh.mall.order.v1 with \
         routing key order_created (AMQP; see the envelope in README.md)"
    );
}

/// The envelope as README.md documents it, used by pika (not our publisher): the example in
/// `ops/examples/` becomes a system message in the customer's conversation, once however often
/// it is published with the same message id; a payload that does not decode is dead-lettered
/// with the reason, and the tenant's other events keep flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_publisher_following_the_envelope_reaches_the_tenant_and_garbage_is_dead_lettered()
{
    const OPS_TOKEN: &str = "ops-wire-suite-token";
    let python = python();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let stubs = support::order_v1_stubs(&python);

    let tenant = format!("py{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let file = format!(
        "id = \"{tenant}\"\ndisplay_name = \"Python publisher\"\ndata_namespace = \"{tenant}\"\n\
         [credentials]\ntoken = \"py-secret-token\"\n"
    );
    let dir = tenants_folder(&[], &[(&format!("{tenant}.toml"), &file)]);
    let (up, admin_at) = MeshUp::on_rabbitmq(dir.path(), OPS_TOKEN).await;

    let publish = |message_id: &str, order: &str, cents: &str| {
        run(std::process::Command::new(&python)
            .env("PYTHONPATH", stubs.path())
            .arg(root.join("ops/examples/publish_order_created.py"))
            .args(["--tenant", &tenant, "--order", order, "--user", "alice"])
            .args(["--conversation", "c-alice", "--total-cents", cents])
            .args(["--currency", "EUR", "--message-id", message_id]))
    };
    publish("checkout-event-1", "o-1", "4999");
    // the publisher retries after a lost confirm: same id, handled once
    publish("checkout-event-1", "o-1", "4999");

    // garbage on the same exchange and key: not an OrderCreated
    run(std::process::Command::new(&python).args([
        "-c",
        &format!(
            "import pika\n\
             c = pika.BlockingConnection(pika.URLParameters('amqp://guest:guest@127.0.0.1:5672/%2f'))\n\
             ch = c.channel(); ch.confirm_delivery()\n\
             ch.basic_publish('mesh.{tenant}.order.v1', 'order_created', b'\\xff\\xff\\xff',\n\
               pika.BasicProperties(message_id='garbage-1', delivery_mode=2,\n\
                 headers={{'x-mesh-tenant': '{tenant}'}}), mandatory=True)\n\
             c.close()\n"
        ),
    ]));
    publish("checkout-event-2", "o-2", "1000"); // a later event still flows past the garbage

    let alice = Users::of(dir.path()).ctx(&tenant, "alice");
    let bodies = support::timeline_bodies(up.channel().await, &alice, 2).await;
    // event 1 once (published twice with one id), then event 2
    assert_eq!(
        bodies,
        [
            "Order o-1 was placed: EUR 49.99",
            "Order o-2 was placed: EUR 10.00"
        ]
    );

    let mut ops = support::admin(&admin_at, OPS_TOKEN).await;
    let mut letters = Vec::new();
    for _ in 0..100 {
        letters = ops
            .show_dead_letters(mesh_api::admin::v1::DeadLettersRequest {
                tenant: tenant.clone(),
                queue: format!("mesh.{tenant}.order.v1.message"),
                limit: 10,
            })
            .await
            .unwrap()
            .into_inner()
            .letters;
        if !letters.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].message_id, "garbage-1");
    assert!(
        letters[0].reason.contains("OrderCreated"),
        "{:?}",
        letters[0]
    );
}

/// Python grpcio, with stubs protoc generated from `contracts/`, against `mesh up` on RabbitMQ,
/// at the front door and directly at a worker: health and reflection, every method's success path, the error codes a caller can
/// meet with their messages, and a chat end to end over a server stream, following the
/// stream's heartbeat (a head above what it holds makes it sync) (`tests/python/conformance.py`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpc_clients_get_every_answer_intact_at_the_front_door_and_a_worker() {
    let python = python();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let stubs = tempfile::tempdir().unwrap();
    let protos: Vec<String> = [
        "mesh/options.proto",
        "gateway/v1/gateway.proto",
        "locator/v1/locator.proto",
        "message/v1/message.proto",
        "order/v1/order.proto",
        "order/v2/order.proto",
        "push/v1/push.proto",
        "recommend/v1/recommend.proto",
    ]
    .map(String::from)
    .to_vec();
    run(std::process::Command::new(&python)
        .current_dir(&root)
        .args(["-m", "grpc_tools.protoc", "-Icontracts"])
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()))
        .args(&protos));
    let dir = tenants_folder(&["mall", "paipai"], &[]);
    // events on RabbitMQ, as deployed
    // and a heartbeat on every terminal's stream each 300 ms, for the client to follow
    let mut up = MeshUp::start(
        dir.path(),
        &[
            ("MESH_AMQP_URI", support::LOCAL_AMQP),
            ("MESH_TERMINAL_HEARTBEAT_MS", "300"),
        ],
    )
    .await;
    let serving = up.shared_worker().await;
    let worker = support::field(&serving, "address").to_owned();
    let front = up.front.clone();
    let script = root.join("services/node/tests/python/conformance.py");
    let stubs_dir = stubs.path().to_owned();
    let tenants = dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        run(std::process::Command::new(&python)
            .arg(script)
            .arg("--stubs")
            .arg(stubs_dir)
            .args(["--front", &front, "--worker", &worker])
            .arg("--tenants")
            .arg(tenants))
    })
    .await
    .unwrap();
    println!("{out}");
    assert!(out.ends_with("all checks passed\n"), "{out}");
}

/// Every early answer (one no service handler wrote: the front door's, tenant auth, the rate
/// limit, the service plan, an event called as a call, an undecodable body, a service error
/// through the answer cache) reaches a plain HTTP/2 client (the `h2` crate, read as grpc-core
/// reads it) as a single HEADERS frame that ends the stream and carries `grpc-status`:
/// trailers-only, never headers then an empty DATA frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_early_answer_is_a_single_trailers_only_headers_frame() {
    let throttled = "id = \"throttled\"\ndisplay_name = \"Throttled\"\ndata_namespace = \"throttled\"\n\
        [credentials]\ntoken = \"throttled-token\"\n[limits]\nrequests_per_second = 1\nburst = 1\n";
    let dir = tenants_folder(&["mall", "paipai"], &[("throttled.toml", throttled)]);
    let mut up = MeshUp::start(dir.path(), &[]).await;
    let mut worker = None;
    while worker.is_none() {
        let line = up
            .output
            .wait_for("the workers", |l| l.starts_with("serving group="))
            .await;
        if line.contains("mall") {
            worker = Some(support::field(&line, "address").to_owned());
        }
    }
    let worker = worker.unwrap();
    let get_order = |id: &str| {
        use prost::Message as _;
        mesh_api::order::v1::GetOrderRequest {
            order_id: id.into(),
        }
        .encode_to_vec()
    };
    /// What is sent, and the `grpc-status` expected: (case, path, tenant, token, message,
    /// status).
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        Vec<u8>,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "no tenant",
            "/order.v1.Order/GetOrder",
            None,
            None,
            get_order("o"),
            "16",
        ),
        (
            "wrong token",
            "/order.v1.Order/GetOrder",
            Some("mall"),
            Some("wrong-token"),
            get_order("o"),
            "16",
        ),
        (
            "plan refusal",
            "/order.v1.Order/GetOrder",
            Some("paipai"),
            Some("dev-paipai-token"),
            get_order("o"),
            "9",
        ),
        (
            "event as a call",
            "/order.v1.Order/OrderCreated",
            Some("mall"),
            Some("dev-mall-token"),
            vec![],
            "12",
        ),
        (
            "undecodable body",
            "/order.v1.Order/GetOrder",
            Some("mall"),
            Some("dev-mall-token"),
            vec![0x08, 0xff],
            "3",
        ),
        (
            "service error via the cache",
            "/order.v1.Order/GetOrder",
            Some("mall"),
            Some("dev-mall-token"),
            get_order("missing"),
            "5",
        ),
        (
            "rate limit",
            "/recommend.v1.Recommend/Suggest",
            Some("throttled"),
            Some("throttled-token"),
            vec![],
            "8",
        ),
    ];
    for address in [up.front.clone(), worker] {
        let tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
        let (send, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        for (what, path, tenant, token, message, status) in &cases {
            let mut frame = vec![0u8];
            frame.extend((message.len() as u32).to_be_bytes());
            frame.extend(message);
            let request = || {
                let mut request = http::Request::post(format!("http://{address}{path}"))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers");
                if let Some(tenant) = tenant {
                    request = request.header("x-mesh-tenant", *tenant);
                }
                if let Some(token) = token {
                    request = request.header("x-mesh-token", *token);
                }
                request.body(()).unwrap()
            };
            // the rate limit needs a call to spend its one token on first
            let attempts = if *what == "rate limit" { 2 } else { 1 };
            let mut last = None;
            for _ in 0..attempts {
                let mut ready = send.clone().ready().await.unwrap();
                let (response, mut body) = ready.send_request(request(), false).unwrap();
                // an early answer may close the stream before the body is sent (the front
                // door refuses from the headers alone): HTTP/2 allows it, so does the test
                let _ = body.send_data(bytes::Bytes::from(frame.clone()), true);
                last = Some(response.await.unwrap());
            }
            let response = last.unwrap();
            assert_eq!(
                response
                    .headers()
                    .get("grpc-status")
                    .map(|v| v.to_str().unwrap()),
                Some(*status),
                "{address} {what}: {response:?}"
            );
            assert!(
                response.body().is_end_stream(),
                "{address} {what}: one HEADERS frame with END_STREAM, got {response:?}"
            );
        }
    }
}

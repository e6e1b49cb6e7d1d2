//! Third-party channels through `mesh up` on RabbitMQ and PostgreSQL, against a fake platform
//! on loopback that speaks WeChat's documented format (its address check, signed XML message
//! callbacks, its access-token and customer-service message APIs) and a generic JSON webhook
//! called by a Python client (the standard library's hmac, not ours): a customer writes from
//! the platform and the mall's agent receives it; the agent answers and the platform receives
//! the send, also after being down for 10 s (retried, sent once); a forged, replayed or stale
//! callback is refused; the same callback delivered twice is stored once; a send the platform
//! refuses for good is dead-lettered.

use crate::support;

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use hmac::Mac;
use http_body_util::BodyExt;
use mesh_api::{gateway::v1::push::Payload, locator::v1::TerminalKind};
use mesh_gateway::Terminal;
use sha1::Digest;
use support::{Db, MeshUp, Users, Vhost, tenants_folder};
use tokio::sync::mpsc;

const WECHAT_TOKEN: &str = "wechat-token-0123456789";
const SITE_SECRET: &str = "site-secret-0123456789";

/// What the fake platform received on its API.
#[derive(Debug)]
struct Received {
    path: String,
    query: String,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
}

/// The fake platform's API on a loopback port: answers WeChat's token call, takes sends
/// (answering the scripted errcodes in turn, then 0), and can go down and come back on the
/// same port.
struct FakePlatform {
    port: u16,
    received: mpsc::UnboundedReceiver<Received>,
    sender: mpsc::UnboundedSender<Received>,
    errcodes: Arc<Mutex<VecDeque<i64>>>,
    serving: Option<tokio::task::JoinHandle<()>>,
}

impl FakePlatform {
    async fn start() -> Self {
        let (sender, received) = mpsc::unbounded_channel();
        let mut platform = Self {
            port: support::free_port(),
            received,
            sender,
            errcodes: Arc::default(),
            serving: None,
        };
        platform.up().await;
        platform
    }

    /// Serves on its port (again).
    async fn up(&mut self) {
        use hyper::{Response, body::Incoming, server::conn::http1, service::service_fn};
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        let (tx, errcodes) = (self.sender.clone(), self.errcodes.clone());
        self.serving = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (tx, errcodes) = (tx.clone(), errcodes.clone());
                let service = service_fn(move |request: hyper::Request<Incoming>| {
                    let (tx, errcodes) = (tx.clone(), errcodes.clone());
                    async move {
                        let path = request.uri().path().to_owned();
                        let query = request.uri().query().unwrap_or_default().to_owned();
                        let headers = request.headers().clone();
                        let body = request.into_body().collect().await?.to_bytes().to_vec();
                        let answer = if path == "/cgi-bin/token" {
                            serde_json::json!({"access_token": "token-1", "expires_in": 7200})
                        } else {
                            let errcode = errcodes.lock().unwrap().pop_front().unwrap_or(0);
                            let _ = tx.send(Received {
                                path,
                                query,
                                headers,
                                body,
                            });
                            serde_json::json!({"errcode": errcode, "errmsg": if errcode == 0 { "ok" } else { "scripted" }})
                        };
                        Ok::<_, hyper::Error>(Response::new(http_body_util::Full::new(
                            hyper::body::Bytes::from(answer.to_string()),
                        )))
                    }
                });
                connections.spawn(
                    http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        }));
    }

    /// Stops answering: the port refuses connections (open ones are cut).
    fn down(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.abort();
        }
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(30), self.received.recv())
            .await
            .expect("a send within 30 s")
            .expect("the platform runs")
    }

    /// Nothing arrives within `wait`.
    async fn quiet_for(&mut self, wait: Duration) {
        if let Ok(Some(r)) = tokio::time::timeout(wait, self.received.recv()).await {
            panic!("unexpected send: {r:?}");
        }
    }
}

/// WeChat's signature, computed here as its documentation says (not with the mesh's code):
/// the token, timestamp and nonce sorted, joined, SHA-1 in hex.
fn wechat_signature(timestamp: &str, nonce: &str) -> String {
    let mut parts = [WECHAT_TOKEN, timestamp, nonce];
    parts.sort_unstable();
    sha1::Sha1::digest(parts.concat().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A text message callback as WeChat sends one.
fn wechat_text(from: &str, msg_id: &str, content: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_mall]]></ToUserName><FromUserName><![CDATA[{from}]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content>\
         <MsgId>{msg_id}</MsgId></xml>",
        now_secs()
    )
}

/// WeChat calling the mesh: `method` with the signed query (`timestamp` and `nonce` as given,
/// the signature computed, or `signature` when forged) and `body`; the status and body.
async fn wechat_calls(
    web: &str,
    method: reqwest::Method,
    (timestamp, nonce, signature): (&str, &str, Option<&str>),
    body: &str,
) -> (u16, String) {
    let signature = signature.map_or_else(|| wechat_signature(timestamp, nonce), str::to_owned);
    let answer = reqwest::Client::new()
        .request(method, format!("{web}/channels/mall/wx"))
        .query(&[
            ("signature", signature.as_str()),
            ("timestamp", timestamp),
            ("nonce", nonce),
            ("echostr", "echo-4242"),
            ("openid", "oCustomer1"),
        ])
        .header("content-type", "text/xml")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (answer.status().as_u16(), answer.text().await.unwrap())
}

/// The agent's next message: (from, body).
async fn next_message(terminal: &mut Terminal) -> (String, String) {
    loop {
        let push = tokio::time::timeout(Duration::from_secs(15), terminal.next())
            .await
            .expect("a message within 15 s")
            .unwrap()
            .expect("the stream stays open");
        if let Some(Payload::Message(m)) = push.payload {
            return (m.from_user, m.body);
        }
    }
}

#[tokio::test]
async fn customers_write_from_other_platforms_and_agents_answer_them_there() {
    let _heavy = support::heavy().await;
    let db = Db::create().await;
    let vhost = Vhost::create();
    let mut wechat = FakePlatform::start().await;
    let mut site = FakePlatform::start().await;
    let dir = tenants_folder(&["mall"], &[]);
    let channels = format!(
        "[services.channel]\nenabled = true\n\
         [channels.wx]\nkind = \"wechat\"\nagent = \"agent-1\"\naccount = \"gh_mall\"\n\
         secret = \"{WECHAT_TOKEN}\"\napp_id = \"wxmall\"\napp_secret = \"wechat-app-secret-0123\"\n\
         send_url = \"http://127.0.0.1:{}\"\ntimeout_ms = 1000\n\
         [channels.site]\nkind = \"webhook\"\nagent = \"agent-1\"\nsecret = \"{SITE_SECRET}\"\n\
         send_url = \"http://127.0.0.1:{}/outbound\"\n",
        wechat.port, site.port
    );
    let mall = dir.path().join("mall.toml");
    let body = std::fs::read_to_string(&mall).unwrap() + "\n" + &channels;
    std::fs::write(&mall, body).unwrap();
    let mut up = MeshUp::start(
        dir.path(),
        &[
            ("MESH_AMQP_URI", &vhost.uri()),
            ("MESH_STORE_POSTGRES", &db.url()),
        ],
    )
    .await;
    let web = format!("http://{}", up.web_address().await);
    up.shared_worker().await;
    let front = up.channel().await;
    let users = Users::of(dir.path());
    let mut desk = Terminal::connect(
        &users.ctx("mall", "agent-1"),
        front.clone(),
        front.clone(),
        "agent-1",
        "desk",
        TerminalKind::Desktop,
    )
    .await
    .unwrap();
    let now = now_secs().to_string();

    // WeChat checks the address: the echo, signed
    let check = wechat_calls(&web, reqwest::Method::GET, (&now, "n-0", None), "").await;
    assert_eq!(check, (200, "echo-4242".into()));

    // a customer writes; WeChat is answered "success" and the agent has it
    let first = wechat_text("oCustomer1", "1000000001", "where is my order?");
    let said = wechat_calls(&web, reqwest::Method::POST, (&now, "n-1", None), &first).await;
    assert_eq!(said, (200, "success".into()));
    assert_eq!(
        next_message(&mut desk).await,
        ("ch:wx:oCustomer1".into(), "where is my order?".into())
    );
    // WeChat's retry of the same callback: answered, stored once (the next message the agent
    // gets is the next one)
    let again = wechat_calls(&web, reqwest::Method::POST, (&now, "n-1", None), &first).await;
    assert_eq!(again.0, 200);
    let redelivered = wechat_text("oCustomer1", "1000000001", "where is my order?");
    let later = wechat_calls(
        &web,
        reqwest::Method::POST,
        (&now, "n-2", None),
        &redelivered,
    )
    .await;
    assert_eq!(later.0, 200, "the same MsgId under a new nonce: answered");
    let second = wechat_text("oCustomer1", "1000000002", "order 42");
    wechat_calls(&web, reqwest::Method::POST, (&now, "n-3", None), &second).await;
    assert_eq!(next_message(&mut desk).await.1, "order 42");

    // forged, replayed with another body, stale: refused, nothing stored
    let forged_body = wechat_text("oCustomer1", "1000000003", "refund me");
    let forged = wechat_calls(
        &web,
        reqwest::Method::POST,
        (&now, "n-4", Some("0".repeat(40).as_str())),
        &forged_body,
    )
    .await;
    assert_eq!(forged.0, 401, "{forged:?}");
    let replayed = wechat_calls(
        &web,
        reqwest::Method::POST,
        (&now, "n-1", None),
        &forged_body,
    )
    .await;
    assert_eq!(replayed.0, 401, "{replayed:?}");
    let stale = (now_secs() - 3600).to_string();
    let old = wechat_calls(
        &web,
        reqwest::Method::POST,
        (&stale, "n-5", None),
        &forged_body,
    )
    .await;
    assert_eq!(old.0, 401, "{old:?}");

    // the agent answers: the platform gets the customer-service send, with the token it gave
    desk.send(
        "ch:wx:oCustomer1",
        "ch:wx:oCustomer1",
        "it ships today",
        "a-1",
    )
    .await
    .unwrap();
    let sent = wechat.next().await;
    assert_eq!(sent.path, "/cgi-bin/message/custom/send");
    assert!(
        sent.query.contains("access_token=token-1"),
        "{}",
        sent.query
    );
    let json: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(json["touser"], "oCustomer1");
    assert_eq!(json["text"]["content"], "it ships today");

    // the platform is down for 10 s: the answer waits in the queue, is retried, arrives once
    wechat.down();
    desk.send(
        "ch:wx:oCustomer1",
        "ch:wx:oCustomer1",
        "sorry for the wait",
        "a-2",
    )
    .await
    .unwrap();
    // the outage's length is what this checks: a platform away for 10 s
    tokio::time::sleep(Duration::from_secs(10)).await;
    wechat.up().await;
    let retried = wechat.next().await;
    let json: serde_json::Value = serde_json::from_slice(&retried.body).unwrap();
    assert_eq!(json["text"]["content"], "sorry for the wait");
    wechat.quiet_for(Duration::from_secs(3)).await;

    // a send WeChat refuses for good (45015: the user wrote more than 48 hours ago) is
    // dead-lettered with its words; the next goes on
    wechat.errcodes.lock().unwrap().push_back(45015);
    desk.send("ch:wx:oCustomer1", "ch:wx:oCustomer1", "too late", "a-3")
        .await
        .unwrap();
    assert_eq!(wechat.next().await.path, "/cgi-bin/message/custom/send");
    mesh_testkit::eventually("the refused send in the dead-letter queue", || async {
        vhost
            .queues("mesh.mall.message.v1.channel")
            .contains(&("mesh.mall.message.v1.channel.dead".to_owned(), 1))
            .then_some(())
    })
    .await;

    // the webhook channel, called by a Python client signing with the standard library
    let script = r#"
import hashlib, hmac, json, sys, time, urllib.request, urllib.error
web, secret = sys.argv[1], sys.argv[2].encode()
def call(body, key=secret, stamp=None):
    stamp = str(int(time.time())) if stamp is None else stamp
    sig = "v1=" + hmac.new(key, (stamp + ".").encode() + body, hashlib.sha256).hexdigest()
    req = urllib.request.Request(web + "/channels/mall/site", data=body, method="POST",
        headers={"content-type": "application/json", "x-mesh-webhook-timestamp": stamp,
                 "x-mesh-webhook-signature": sig})
    try:
        with urllib.request.urlopen(req) as r: return r.status
    except urllib.error.HTTPError as e: return e.code
body = json.dumps({"message_id": "w-1", "user": "u-42", "text": "hi from the site"}).encode()
odd = json.dumps({"message_id": "w-2", "user": "h-1", "text": "a user named like a digest"}).encode()
print(call(body), call(body, key=b"not-the-secret-0123"), call(body, stamp="1000"), call(body), call(odd))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &web, SITE_SECRET])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "200 401 401 200 200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        next_message(&mut desk).await,
        ("ch:site:u-42".into(), "hi from the site".into())
    );
    // a platform id that reads like the mesh's digest of one is digested itself: two
    // customers never share an id
    let (digested, said) = next_message(&mut desk).await;
    assert_eq!(said, "a user named like a digest");
    assert!(
        digested.starts_with("ch:site:h-") && digested != "ch:site:h-1",
        "{digested}"
    );
    desk.send("ch:site:u-42", "ch:site:u-42", "hello u-42", "a-4")
        .await
        .unwrap();
    let posted = site.next().await;
    assert_eq!(posted.path, "/outbound");
    // the platform checks the mesh's signature as its own code would
    let header = |name: &str| {
        posted
            .headers
            .get(name)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SITE_SECRET.as_bytes()).unwrap();
    mac.update(format!("{}.", header("x-mesh-webhook-timestamp")).as_bytes());
    mac.update(&posted.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(header("x-mesh-webhook-signature"), format!("v1={expected}"));
    let json: serde_json::Value = serde_json::from_slice(&posted.body).unwrap();
    assert_eq!(
        (json["user"].as_str(), json["text"].as_str()),
        (Some("u-42"), Some("hello u-42"))
    );
    // the user whose id reads like a digest is answered too (the platform's id is recorded)
    desk.send(&digested, &digested, "hello h-1", "a-5")
        .await
        .unwrap();
    let posted: serde_json::Value = serde_json::from_slice(&site.next().await.body).unwrap();
    assert_eq!(posted["user"], "h-1");
    // nobody opens a customer's conversation before them, nor writes into one as a stranger
    let mut alice = mesh_api::message::v1::MessageCaller::new(front.clone());
    for (conversation, to) in [
        ("ch:wx:oNew", "agent-1"),
        ("ch:wx:oNew", "ch:wx:oNew"),
        ("ch:wx:oCustomer1", "ch:wx:oCustomer1"),
        ("c-side", "ch:wx:oCustomer1"),
    ] {
        let refused = alice
            .send(
                &users.ctx("mall", "alice"),
                mesh_api::message::v1::SendRequest {
                    conversation_id: conversation.into(),
                    from_user: "alice".into(),
                    to_user: to.into(),
                    body: "me too".into(),
                    client_msg_id: format!("squat-{conversation}-{to}"),
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                refused.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::PermissionDenied
            ),
            "{conversation} -> {to}: {refused:?}"
        );
    }
    // the duplicate Python sent was stored once: nothing more for the agent
    assert!(
        tokio::time::timeout(Duration::from_secs(2), desk.next())
            .await
            .is_err(),
        "a duplicate callback reached the agent"
    );
    drop(up);
    db.drop_database().await;
}

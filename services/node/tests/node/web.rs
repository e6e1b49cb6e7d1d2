//! The browsers' access of `mesh up`, used with curl (HTTP/1.1 and HTTP/2), not with a client
//! of ours: calls as JSON through the same layers as gRPC (user tokens acting as their user
//! only, switches with the degraded mark, the admin API behind the ops credential), the
//! terminal stream as server-sent events, and every kind of bad request answered with its
//! HTTP status and a JSON error naming what is wrong.

use crate::support;

use std::process::Stdio;

use support::{MeshUp, Users};
use tokio::io::{AsyncBufReadExt, BufReader};

const OPS: &str = "ops-web-suite-token";

/// An HTTP answer as curl printed it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: String,
    body: serde_json::Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn error_status(&self) -> &str {
        self.body["error"]["status"].as_str().unwrap_or_default()
    }

    fn error_message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or_default()
    }
}

/// `curl` with `args`, the answer parsed (headers, then a JSON body).
async fn curl(args: &[&str]) -> Answer {
    curl_with_body(args, None).await
}

/// `curl` with `args`, sending `body` (from its standard input: a body may be larger than a
/// command line), the answer parsed.
async fn curl_with_body(args: &[&str], body: Option<&str>) -> Answer {
    use tokio::io::AsyncWriteExt;
    let mut command = tokio::process::Command::new("curl");
    command.args(["-s", "-i", "-H", "expect:"]).args(args);
    if body.is_some() {
        command.args(["--data-binary", "@-"]);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl is installed");
    let mut stdin = child.stdin.take().unwrap();
    if let Some(body) = body {
        stdin.write_all(body.as_bytes()).await.unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (headers, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("curl {args:?}: no answer: {text:?}"));
    let status = headers.split_whitespace().nth(1).unwrap().parse().unwrap();
    Answer {
        status,
        headers: headers.to_owned(),
        body: serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("curl {args:?}: the body is not JSON ({e}): {body:?}")),
    }
}

/// What the server answers to `request` written as is on a fresh connection (at most 15 s).
async fn raw_http(at: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(at).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(15), stream.read(&mut answer))
        .await
        .expect("an answer within 15 s")
        .unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

/// POSTs `body` to `path` at `web` as `tenant`, with `credential` header lines.
async fn post(web: &str, path: &str, headers: &[String], body: &str) -> Answer {
    let url = format!("http://{web}{path}");
    let mut args: Vec<&str> = vec![&url];
    for h in headers {
        args.extend(["-H", h]);
    }
    curl_with_body(&args, Some(body)).await
}

fn user(tenant: &str, token: &str) -> Vec<String> {
    vec![
        format!("x-mesh-tenant: {tenant}"),
        format!("authorization: Bearer {token}"),
    ]
}

fn ops() -> Vec<String> {
    vec![format!("authorization: Bearer {OPS}")]
}

/// A terminal attached with `curl -N`: the events it prints, line by line.
struct Sse {
    _child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Sse {
    async fn attach(web: &str, headers: &[String], body: &str) -> Self {
        let mut command = tokio::process::Command::new("curl");
        command
            .args(["-s", "-N", &format!("http://{web}/gateway/v1/Attach")])
            .args(["--data-binary", body]);
        for h in headers {
            command.args(["-H", h]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            _child: child,
            lines,
        }
    }

    /// The next event's name and JSON data (keepalive comments and the stream's heartbeats
    /// skipped), within 10 s.
    async fn next(&mut self) -> (String, serde_json::Value) {
        let read = async {
            let mut name = String::new();
            loop {
                let line = self
                    .lines
                    .next_line()
                    .await
                    .unwrap()
                    .expect("the stream ended");
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(data) = line.strip_prefix("data: ") {
                    let data: serde_json::Value = serde_json::from_str(data).unwrap();
                    if data.get("heartbeat").is_some() {
                        continue;
                    }
                    return (name, data);
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("an event within 10 s")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_chats_over_json_and_server_sent_events_through_the_mesh_layers() {
    // a business line allowed one call a second, to meet its rate limit over HTTP
    let tiny = "id = \"tiny\"\ndisplay_name = \"Tiny\"\ndata_namespace = \"tiny\"\n\
                [credentials]\ntoken = \"tiny-backend-token\"\n\
                [limits]\nrequests_per_second = 1\nburst = 1\n";
    let dir = support::tenants_folder(&["mall", "paipai"], &[("tiny.toml", tiny)]);
    let mut up = MeshUp::start(dir.path(), &[("MESH_ADMIN_TOKEN", OPS)]).await;
    up.admin_address().await;
    let web = up.web_address().await;
    let worker = up.shared_worker().await;
    let users = Users::of(dir.path());
    let alice = user("mall", &users.token("mall", "alice"));
    let bob = user("mall", &users.token("mall", "bob"));

    // bob's browser attaches; the stream opens once the gateway registered the terminal
    let mut terminal = Sse::attach(
        &web,
        &bob,
        r#"{"userId": "bob", "terminalId": "web-1", "kind": "TERMINAL_KIND_WEB"}"#,
    )
    .await;
    // alice sends (the proto3 JSON mapping: lowerCamelCase names, 64-bit numbers as strings)
    let send = r#"{"conversationId": "c1", "fromUser": "alice", "toUser": "bob",
                   "body": "hello <b>bob</b>", "clientMsgId": "m-1"}"#;
    let mut resends = 0;
    let sent = loop {
        resends += 1;
        assert!(resends < 200, "bob's terminal was never reported delivered");
        let sent = post(&web, "/message/v1/Send", &alice, send).await;
        assert_eq!(sent.status, 200, "{sent:?}");
        // the terminal registers as its stream opens: resend (same client id, stored once)
        // until the send reports it delivered
        if sent.body["deliveredTerminals"] == serde_json::json!(["web-1"]) {
            break sent;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(sent.body["message"]["seq"], "1", "{sent:?}");
    assert_eq!(sent.header("content-type"), Some("application/json"));
    let (name, push) = terminal.next().await;
    assert_eq!(name, "message");
    assert_eq!(push["message"]["body"], "hello <b>bob</b>");
    assert_eq!(
        push["message"]["messageId"],
        sent.body["message"]["messageId"]
    );

    // the same over HTTP/2 (prior knowledge), with snake_case names, read back by bob's sync
    let url = format!("http://{web}/message/v1/FetchOffline");
    let mut args = vec![
        "--http2-prior-knowledge",
        &url,
        "--data-binary",
        r#"{"user_id": "bob", "terminal_id": "web-2"}"#,
    ];
    for h in &bob {
        args.extend(["-H", h.as_str()]);
    }
    let synced = curl(&args).await;
    assert_eq!(synced.status, 200, "{synced:?}");
    assert!(synced.headers.starts_with("HTTP/2 200"), "{synced:?}");
    assert_eq!(synced.body["messages"][0]["body"], "hello <b>bob</b>");

    // a user token acts as its own user only
    let forged = post(
        &web,
        "/message/v1/Send",
        &alice,
        r#"{"conversationId": "c1", "fromUser": "bob", "toUser": "alice", "body": "x", "clientMsgId": "m-2"}"#,
    )
    .await;
    assert_eq!(
        (forged.status, forged.error_status()),
        (403, "PERMISSION_DENIED")
    );
    // a token of another tenant, an unknown tenant: refused alike
    let wrong = post(
        &web,
        "/message/v1/Send",
        &user("paipai", &users.token("mall", "alice")),
        send,
    )
    .await;
    let unknown = post(&web, "/message/v1/Send", &user("nobody", "x"), send).await;
    assert_eq!(
        (wrong.status, wrong.error_status()),
        (401, "UNAUTHENTICATED")
    );
    assert_eq!(
        (unknown.status, unknown.error_status()),
        (401, "UNAUTHENTICATED")
    );
    // a typo never reaches the mesh, and the answer names the message and the field
    let typo = post(&web, "/message/v1/Send", &alice, r#"{"toUsr": "bob"}"#).await;
    assert_eq!(
        (typo.status, typo.error_status()),
        (400, "INVALID_ARGUMENT")
    );
    assert!(
        typo.error_message().contains("message.v1.SendRequest")
            && typo.error_message().contains("toUsr"),
        "{typo:?}"
    );
    let not_json = post(&web, "/message/v1/Send", &alice, "body=hi").await;
    assert_eq!(not_json.status, 400, "{not_json:?}");
    let deadline = post(
        &web,
        "/message/v1/Send",
        &[alice.clone(), vec!["x-mesh-timeout-ms: soon".into()]].concat(),
        send,
    )
    .await;
    assert_eq!(deadline.status, 400, "{deadline:?}");
    assert!(
        deadline.error_message().contains("x-mesh-timeout-ms"),
        "{deadline:?}"
    );
    // over the body limit (1 MiB by default)
    let huge = format!(r#"{{"body": "{}"}}"#, "a".repeat(1_100_000));
    let too_big = post(&web, "/message/v1/Send", &alice, &huge).await;
    assert_eq!(
        (too_big.status, too_big.error_status()),
        (413, "RESOURCE_EXHAUSTED")
    );
    // no such call; the mesh's internal calls are not served here; a call wants POST
    let nowhere = post(
        &web,
        "/message/v9/Send",
        &[alice.clone(), vec!["x-mesh-request-id: req-404".into()]].concat(),
        "{}",
    )
    .await;
    assert_eq!(nowhere.status, 404, "{nowhere:?}");
    // the caller's request id comes back with the access's own errors too
    assert_eq!(
        nowhere.header("x-mesh-request-id"),
        Some("req-404"),
        "{nowhere:?}"
    );
    let internal = post(&web, "/gateway/v1/Deliver", &alice, "{}").await;
    assert_eq!(internal.status, 404, "{internal:?}");
    let get = curl(&[&format!("http://{web}/message/v1/Send")]).await;
    assert_eq!((get.status, get.header("allow")), (405, Some("POST")));

    // a declared body over the limit is refused before it is sent; a body that trickles in
    // is cut off (408) rather than holding its connection
    let answer = raw_http(
        &web,
        "POST /message/v1/Send HTTP/1.1\r\nhost: x\r\ncontent-length: 99999999999\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let answer = raw_http(
        &web,
        "POST /message/v1/Send HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"body\"",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // a forwarded header too long for the mesh's own hop
    let long_id = format!("x-mesh-request-id: {}", "r".repeat(20_000));
    let too_long = post(
        &web,
        "/message/v1/Send",
        &[alice.clone(), vec![long_id]].concat(),
        send,
    )
    .await;
    assert_eq!(too_long.status, 431, "{too_long:?}");
    // the caller's request id comes back
    let traced = post(
        &web,
        "/recommend/v1/Suggest",
        &[alice.clone(), vec!["x-mesh-request-id: req-42".into()]].concat(),
        r#"{"userId": "alice"}"#,
    )
    .await;
    assert_eq!(
        traced.header("x-mesh-request-id"),
        Some("req-42"),
        "{traced:?}"
    );

    // the admin API: behind the ops credential, as for meshctl
    let anyone = post(&web, "/admin/v1/ListSwitches", &alice, "{}").await;
    assert_eq!(
        (anyone.status, anyone.error_status()),
        (401, "UNAUTHENTICATED")
    );
    let off = post(
        &web,
        "/admin/v1/SetSwitch",
        &ops(),
        r#"{"target": {"service": "recommend"}, "tenant": "mall", "on": false, "reason": "drill"}"#,
    )
    .await;
    assert_eq!(off.status, 200, "{off:?}");
    assert_eq!(off.body["switches"][0]["scope"], "recommend@mall");
    // mall's suggestions are degraded (the empty answer, marked); paipai's are served
    let suggest = r#"{"userId": "alice", "limit": 3}"#;
    let mall = post(&web, "/recommend/v1/Suggest", &alice, suggest).await;
    assert_eq!(mall.status, 200, "{mall:?}");
    assert_eq!(mall.header("x-mesh-degraded"), Some("recommend@mall"));
    assert_eq!(mall.body["products"], serde_json::json!([]));
    let paipai = post(
        &web,
        "/recommend/v1/Suggest",
        &user("paipai", &users.token("paipai", "alice")),
        suggest,
    )
    .await;
    assert_eq!(paipai.status, 200, "{paipai:?}");
    assert_eq!(paipai.header("x-mesh-degraded"), None);
    assert_eq!(
        paipai.body["products"].as_array().unwrap().len(),
        3,
        "{paipai:?}"
    );

    // a degraded error answer (messaging off): 503 with the contract's message, marked
    post(
        &web,
        "/admin/v1/SetSwitch",
        &ops(),
        r#"{"target": {"service": "message", "method": "Send"}, "tenant": "mall", "on": false}"#,
    )
    .await;
    let refused = post(&web, "/message/v1/Send", &alice, send).await;
    assert_eq!(
        (refused.status, refused.error_status()),
        (503, "UNAVAILABLE")
    );
    assert_eq!(
        refused.error_message(),
        "messaging is temporarily unavailable"
    );
    assert_eq!(refused.header("x-mesh-degraded"), Some("message.Send@mall"));

    // the tenant's rate limit: the call over it is 429, with the limiter's words
    let backend = vec![
        "x-mesh-tenant: tiny".to_owned(),
        "x-mesh-token: tiny-backend-token".to_owned(),
    ];
    let mut codes = Vec::new();
    let mut retry_after = Vec::new();
    for _ in 0..3 {
        let answer = post(&web, "/recommend/v1/Suggest", &backend, suggest).await;
        codes.push((answer.status, answer.error_status().to_owned()));
        if answer.status == 429 {
            retry_after.push(answer.header("retry-after").map(str::to_owned));
        }
    }
    assert_eq!(codes[0].0, 200, "{codes:?}");
    assert!(
        codes.contains(&(429, "RESOURCE_EXHAUSTED".to_owned())),
        "{codes:?}"
    );
    // and says when to call again, in whole seconds, from the limiter
    assert!(
        retry_after.iter().all(|s| s
            .as_deref()
            .is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1))),
        "{retry_after:?}"
    );

    // the caller's deadline: a drill delays paipai's recommend by 2 s; with 300 ms to answer
    // the call is a 504, as a gRPC caller's DEADLINE_EXCEEDED
    let fault = post(
        &web,
        "/admin/v1/SetFault",
        &ops(),
        r#"{"tenant": "paipai", "service": "recommend", "delayMs": 2000}"#,
    )
    .await;
    assert_eq!(fault.status, 200, "{fault:?}");
    let late = post(
        &web,
        "/recommend/v1/Suggest",
        &[
            user("paipai", &users.token("paipai", "alice")),
            vec!["x-mesh-timeout-ms: 300".into()],
        ]
        .concat(),
        suggest,
    )
    .await;
    assert_eq!(
        (late.status, late.error_status()),
        (504, "DEADLINE_EXCEEDED"),
        "{late:?}"
    );

    // the OpenAPI document of the same routes, valid as OpenAPI 3.1 to a validator that is not
    // ours (openapi-spec-validator), describing the calls just made
    let described = curl(&[&format!("http://{web}/openapi.json")]).await;
    assert_eq!(described.status, 200, "{described:?}");
    assert_eq!(described.body["openapi"], "3.1.0");
    for path in [
        "/message/v1/Send",
        "/message/v1/History",
        "/gateway/v1/Attach",
    ] {
        assert!(
            described.body["paths"][path]["post"].is_object(),
            "{path} described"
        );
    }
    let mut validator = tokio::process::Command::new(support::python())
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import validate\n\
             validate(json.load(sys.stdin))\n\
             print('valid')",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = validator.stdin.take().unwrap();
        stdin
            .write_all(described.body.to_string().as_bytes())
            .await
            .unwrap();
    }
    let verdict = validator.wait_with_output().await.unwrap();
    assert!(
        verdict.status.success() && String::from_utf8_lossy(&verdict.stdout).contains("valid"),
        "{}",
        String::from_utf8_lossy(&verdict.stderr)
    );

    // a stream refused before it opens is a plain error answer, not an event stream
    let stranger = curl(&[
        &format!("http://{web}/gateway/v1/Attach"),
        "--data-binary",
        r#"{"userId": "bob", "terminalId": "t"}"#,
        "-H",
        &alice[0],
        "-H",
        &alice[1],
    ])
    .await;
    assert_eq!(
        (stranger.status, stranger.error_status()),
        (403, "PERMISSION_DENIED")
    );

    // the tenant's process is killed under bob's open stream: it ends with an error event
    // saying to attach again (UNAVAILABLE), not with the transport's words
    support::signal(support::field(&worker, "pid"), "-KILL");
    let (name, error) = terminal.next().await;
    assert_eq!(name, "error", "{error}");
    assert_eq!(error["error"]["status"], "UNAVAILABLE", "{error}");
    assert_eq!(error["error"]["code"], 503, "{error}");
}

/// gRPC-Web, as a browser's gRPC client sends it (here curl with the bytes such a client
/// writes): the same call at its gRPC path, through the same layers, the status in a trailer
/// frame; a degraded answer carries its mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_calls_pass_the_same_layers() {
    use prost::Message as _;
    let dir = support::tenants_folder(&["mall", "paipai"], &[]);
    // (and the console kept off this port: its admin calls and page are not served here)
    let mut up = MeshUp::start(
        dir.path(),
        &[("MESH_ADMIN_TOKEN", OPS), ("MESH_WEB_CONSOLE", "false")],
    )
    .await;
    let admin_at = up.admin_address().await;
    let web = up.web_address().await;
    up.shared_worker().await;
    let users = Users::of(dir.path());
    let files = tempfile::tempdir().unwrap();
    let no_admin = post(&web, "/admin/v1/ListSwitches", &ops(), "{}").await;
    assert_eq!(no_admin.status, 404, "{no_admin:?}");
    let console = curl(&[&format!("http://{web}/console")]).await;
    assert_eq!(console.status, 404, "{console:?}");

    // one gRPC-Web call: (HTTP status, headers, messages, trailer text)
    let call = |tenant: &'static str, token: String| {
        let web = web.clone();
        let files = files.path().to_owned();
        async move {
            let request = mesh_api::recommend::v1::SuggestRequest {
                user_id: "alice".into(),
                limit: 3,
                ..Default::default()
            }
            .encode_to_vec();
            let mut body = vec![0];
            body.extend_from_slice(&(request.len() as u32).to_be_bytes());
            body.extend_from_slice(&request);
            let input = files.join(format!("{tenant}.in"));
            let output = files.join(format!("{tenant}.out"));
            std::fs::write(&input, body).unwrap();
            let out = tokio::process::Command::new("curl")
                .args(["-s", "-D", "-", "-o"])
                .arg(&output)
                .arg(format!("http://{web}/recommend.v1.Recommend/Suggest"))
                .args([
                    "-H",
                    "content-type: application/grpc-web+proto",
                    "-H",
                    "x-grpc-web: 1",
                ])
                .args(["-H", &format!("x-mesh-tenant: {tenant}")])
                .args(["-H", &format!("authorization: Bearer {token}")])
                .arg("--data-binary")
                .arg(format!("@{}", input.display()))
                .output()
                .await
                .unwrap();
            let headers = String::from_utf8_lossy(&out.stdout).to_lowercase();
            let mut body = &std::fs::read(&output).unwrap()[..];
            let (mut messages, mut trailers) = (Vec::new(), String::new());
            while body.len() >= 5 {
                let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
                let frame = &body[5..5 + len];
                if body[0] & 0x80 != 0 {
                    trailers.push_str(&String::from_utf8_lossy(frame).to_lowercase());
                } else {
                    messages.push(mesh_api::recommend::v1::SuggestResponse::decode(frame).unwrap());
                }
                body = &body[5 + len..];
            }
            (headers, messages, trailers)
        }
    };

    let (headers, messages, trailers) = call("paipai", users.token("paipai", "alice")).await;
    assert!(headers.starts_with("http/1.1 200"), "{headers}");
    assert!(
        headers.contains("content-type: application/grpc-web"),
        "{headers}"
    );
    assert!(trailers.contains("grpc-status:0"), "{trailers:?}");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].products.len(), 3);

    // text mode, grpc-web's default, with a Content-Length (as every browser fetch sends): the
    // decoded body is shorter than the length declared for the base64 one
    let request = mesh_api::recommend::v1::SuggestRequest {
        user_id: "alice".into(),
        limit: 3,
        ..Default::default()
    }
    .encode_to_vec();
    let mut framed = vec![0];
    framed.extend_from_slice(&(request.len() as u32).to_be_bytes());
    framed.extend_from_slice(&request);
    let binary = files.path().join("text.bin");
    std::fs::write(&binary, framed).unwrap();
    let encoded = support::run(std::process::Command::new("base64").arg("-w0").arg(&binary));
    let text = tokio::process::Command::new("curl")
        .args(["-s", "-D", "-"])
        .arg(format!("http://{web}/recommend.v1.Recommend/Suggest"))
        .args([
            "-H",
            "content-type: application/grpc-web-text",
            "-H",
            "accept: application/grpc-web-text",
            "-H",
            "x-grpc-web: 1",
            "-H",
            "x-mesh-tenant: paipai",
        ])
        .args([
            "-H",
            &format!("authorization: Bearer {}", users.token("paipai", "alice")),
        ])
        .args(["--data-binary", &encoded])
        .output()
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&text.stdout).to_lowercase();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    assert!(head.starts_with("http/1.1 200"), "{answer}");
    assert!(
        !head.contains("grpc-status"),
        "a message answered, not a trailers-only error: {answer}"
    );
    // a data frame first (its flag byte 0 is `AA` in base64)
    assert!(body.starts_with("aa"), "{answer}");

    // a token of another tenant: refused by the front door, as over gRPC
    let (headers, messages, trailers) = call("paipai", users.token("mall", "alice")).await;
    assert!(messages.is_empty(), "{messages:?}");
    assert!(
        headers.contains("grpc-status: 16") || trailers.contains("grpc-status:16"),
        "{headers} {trailers:?}"
    );

    // the mesh's internal calls are not served to browsers over gRPC-Web either
    let internal = tokio::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{web}/gateway.v1.Gateway/Deliver"))
        .args([
            "-H",
            "content-type: application/grpc-web+proto",
            "-H",
            "x-mesh-tenant: mall",
        ])
        .args(["--data-binary", "not a call"])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&internal.stdout), "404");

    support::switch_recommend(&admin_at, OPS, "mall", false, "grpc-web drill").await;
    let (headers, messages, _) = call("mall", users.token("mall", "alice")).await;
    assert!(
        headers.contains("x-mesh-degraded: recommend@mall"),
        "{headers}"
    );
    assert!(messages[0].products.is_empty());
}

/// Past one machine the browsers' access has its counterpart: a worker serving alone (a pod)
/// serves it itself (`MESH_WORKER_WEB_LISTEN`, as `mesh deploy k8s` sets), and HAProxy as
/// `mesh deploy haproxy --web-listen` configures it routes browsers by tenant to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_worker_behind_haproxy_serves_browsers_as_a_node_does() {
    let dir = support::tenants_folder(&["mall", "paipai"], &[]);
    let users = Users::of(dir.path());
    let web_port = support::free_port();
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args([
            "worker",
            "--tenant",
            "mall,paipai",
            "--listen",
            "127.0.0.1:0",
            "--tenants",
        ])
        .arg(dir.path())
        .env("MESH_WORKER_WEB_LISTEN", format!("127.0.0.1:{web_port}"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(worker.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        loop {
            let line = lines.next_line().await.unwrap().expect("the worker ended");
            if let Some(address) = line.strip_prefix("READY ") {
                return address.to_owned();
            }
        }
    })
    .await
    .expect("the worker is ready within 60 s");

    // HAProxy: gRPC to the worker's address, browsers to its web port
    let web_listen = format!("127.0.0.1:{}", support::free_port());
    let (_haproxy, _) = support::start_haproxy_with(
        dir.path(),
        &format!("shared={ready}"),
        &[
            "--web-listen",
            &web_listen,
            "--web-port",
            &web_port.to_string(),
        ],
    )
    .await;

    let alice = user("paipai", &users.token("paipai", "alice"));
    let suggest = r#"{"userId": "alice", "limit": 2}"#;
    // HAProxy listens, then checks the worker before it sends it anything
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&web_listen).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut answer = post(&web_listen, "/recommend/v1/Suggest", &alice, suggest).await;
    for _ in 0..100 {
        if answer.status == 200 {
            break;
        }
        // polling: the worker answers once its tenants are served
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        answer = post(&web_listen, "/recommend/v1/Suggest", &alice, suggest).await;
    }
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.body["products"].as_array().unwrap().len(),
        2,
        "{answer:?}"
    );
    // the worker's own layers: a forged user and a stranger refused, through the proxy too
    let forged = post(
        &web_listen,
        "/message/v1/Send",
        &alice,
        r#"{"conversationId": "c", "fromUser": "bob", "toUser": "x", "body": "x", "clientMsgId": "m"}"#,
    )
    .await;
    assert_eq!(
        (forged.status, forged.error_status()),
        (403, "PERMISSION_DENIED")
    );
    let stranger = post(
        &web_listen,
        "/recommend/v1/Suggest",
        &user("nobody", "x"),
        suggest,
    )
    .await;
    assert_eq!(
        (stranger.status, stranger.error_status()),
        (401, "UNAUTHENTICATED")
    );
    // the pages come through too
    let page = tokio::process::Command::new("curl")
        .args(["-s", &format!("http://{web_listen}/chat")])
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&page.stdout).contains("<title>Mesh chat</title>"));
}

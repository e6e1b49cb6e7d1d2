//! TLS on the front door and the admin API, with certificates made for the test (a CA, the
//! mesh's certificate for 127.0.0.1, a client certificate): clients that trust the CA connect,
//! clients that do not, or that speak plain HTTP/2, are refused; with a client CA configured,
//! only clients presenting a certificate it signed get in (mutual TLS). Clients: curl and
//! Python grpcio, neither of them ours.

use crate::support;

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use support::{MeshUp, python, tenants_folder};

/// Files of a test PKI.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// A CA nobody configured, with a client certificate of its own.
    stranger_cert: PathBuf,
    stranger_key: PathBuf,
}

fn ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (cert, Issuer::new(params, key))
}

fn leaf(names: &[&str], issuer: &Issuer<'_, KeyPair>) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    (
        params.signed_by(&key, issuer).unwrap().pem(),
        key.serialize_pem(),
    )
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let (ca_cert, issuer) = ca("mesh test CA");
    let (cert, key) = leaf(&["127.0.0.1", "localhost"], &issuer);
    let (client_cert, client_key) = leaf(&["ops.example"], &issuer);
    let (_, stranger) = ca("someone else's CA");
    let (stranger_cert, stranger_key) = leaf(&["ops.example"], &stranger);
    Pki {
        ca: write("ca.pem", &ca_cert.pem()),
        cert: write("mesh.pem", &cert),
        key: write("mesh.key", &key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
        stranger_cert: write("stranger.pem", &stranger_cert),
        stranger_key: write("stranger.key", &stranger_key),
        _dir: dir,
    }
}

/// curl's flags trusting `ca` and presenting `cert` / `key`.
fn presenting<'a>(ca: &'a Path, cert: &'a Path, key: &'a Path) -> [&'a Path; 6] {
    [
        Path::new("--cacert"),
        ca,
        Path::new("--cert"),
        cert,
        Path::new("--key"),
        key,
    ]
}

/// The front door's health check.
const HEALTH: &str = "/grpc.health.v1.Health/Check";
/// The admin API's tenant list (the ops credential in `authorization`).
const TENANTS: &str = "/admin.v1.Admin/ListTenants";

/// A gRPC call with an empty request message to `url` + `path`, with curl over HTTP/2
/// (`extra` adds trust and client certificates): its exit code and what it printed.
fn curl(url: &str, path: &str, extra: &[&Path]) -> (i32, String) {
    let mut command = std::process::Command::new("curl");
    command.args([
        "--silent",
        "--show-error",
        "--verbose",
        "--max-time",
        "10",
        "--http2",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "-H",
        "authorization: Bearer ops-tls-test-token",
        "--data-binary",
        "@-",
        "--output",
        "/dev/null",
    ]);
    let mut flags = extra.iter();
    while let (Some(flag), Some(value)) = (flags.next(), flags.next()) {
        command.arg(flag).arg(value);
    }
    command.arg(format!("{url}{path}"));
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("curl is installed");
    use std::io::Write;
    // an empty request message: uncompressed, length 0
    child.stdin.take().unwrap().write_all(&[0; 5]).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn mesh(pki: &Pki, client_ca: bool) -> (tempfile::TempDir, MeshUp, String) {
    let dir = tenants_folder(&["mall"], &[]);
    let mut env = vec![
        ("MESH_TLS_CERT_FILE", pki.cert.to_str().unwrap()),
        ("MESH_TLS_KEY_FILE", pki.key.to_str().unwrap()),
        ("MESH_ADMIN_TOKEN", "ops-tls-test-token"),
    ];
    if client_ca {
        env.push(("MESH_TLS_CLIENT_CA_FILE", pki.ca.to_str().unwrap()));
    }
    let mut up = MeshUp::start(dir.path(), &env).await;
    let admin = up.admin_address().await;
    up.shared_worker().await;
    (dir, up, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trusting_the_ca_connects_and_others_are_refused() {
    let pki = pki();
    let (_dir, up, admin) = mesh(&pki, false).await;
    let front = format!("https://{}", up.front);

    let ca = pki.ca.as_path();
    let (code, out) = curl(&front, HEALTH, &[Path::new("--cacert"), ca]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ALPN: server accepted h2"), "{out}");
    assert!(out.contains("grpc-status: 0"), "{out}");

    // the system's roots do not vouch for a private CA
    let (code, out) = curl(&front, HEALTH, &[]);
    assert_eq!(code, 60, "certificate not trusted: {out}");
    // plain HTTP/2 to a TLS port gets nowhere
    let (code, out) = curl(
        &format!("http://{}", up.front),
        HEALTH,
        &[Path::new("--http2-prior-knowledge")],
    );
    assert_ne!(code, 0, "{out}");

    // a real gRPC call with Python grpcio over TLS, with the backend credential
    let script = format!(
        "import grpc\n\
         from grpc_health.v1 import health_pb2, health_pb2_grpc\n\
         creds = grpc.ssl_channel_credentials(root_certificates=open({ca:?}, 'rb').read())\n\
         channel = grpc.secure_channel({target:?}, creds)\n\
         print(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status)\n\
         try:\n\
         \x20   grpc.channel_ready_future(grpc.secure_channel({target:?}, grpc.ssl_channel_credentials())).result(timeout=3)\n\
         \x20   print('untrusted connected')\n\
         except grpc.FutureTimeoutError:\n\
         \x20   print('untrusted refused')\n",
        ca = pki.ca.display().to_string(),
        target = up.front,
    );
    let out = support::run(std::process::Command::new(python()).args(["-c", &script]));
    assert_eq!(out, "1\nuntrusted refused\n", "SERVING (1) over TLS");

    // the admin API is behind the same certificate
    let (code, out) = curl(
        &format!("https://{admin}"),
        TENANTS,
        &[Path::new("--cacert"), ca],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("grpc-status: 0"), "{out}");
    let (code, _) = curl(&format!("https://{admin}"), TENANTS, &[]);
    assert_eq!(code, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_only_clients_it_signed_get_in() {
    let pki = pki();
    let (_dir, up, admin) = mesh(&pki, true).await;
    for (url, path) in [
        (format!("https://{}", up.front), HEALTH),
        (format!("https://{admin}"), TENANTS),
    ] {
        let ca = pki.ca.as_path();
        let (code, out) = curl(
            &url,
            path,
            &presenting(ca, &pki.client_cert, &pki.client_key),
        );
        assert_eq!(code, 0, "{url} with a client certificate: {out}");
        assert!(out.contains("grpc-status: 0"), "{out}");
        let (code, out) = curl(&url, path, &[Path::new("--cacert"), ca]);
        assert_ne!(code, 0, "{url} without a client certificate: {out}");
        let stranger = presenting(ca, &pki.stranger_cert, &pki.stranger_key);
        let (code, out) = curl(&url, path, &stranger);
        assert_ne!(code, 0, "{url} with a certificate another CA signed: {out}");
    }
}

/// With `node_ca_file`, the hops between the mesh's own processes use mutual TLS too: a worker
/// answers only callers presenting a certificate the nodes' CA signed, and a chat still goes
/// from the front door to the worker, from the message service to the locator and to the
/// gateway holding the terminal, all over those hops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_s_own_hops_use_mutual_tls_when_asked() {
    use mesh_api::{gateway::v1 as gateway, locator::v1::TerminalKind, message::v1 as message};
    let pki = pki();
    let dir = tenants_folder(&["mall"], &[]);
    let mut up = MeshUp::start(
        dir.path(),
        &[
            ("MESH_TLS_CERT_FILE", pki.cert.to_str().unwrap()),
            ("MESH_TLS_KEY_FILE", pki.key.to_str().unwrap()),
            ("MESH_TLS_NODE_CA_FILE", pki.ca.to_str().unwrap()),
        ],
    )
    .await;
    let worker = format!(
        "https://{}",
        support::field(&up.shared_worker().await, "address")
    );
    let ca = pki.ca.as_path();
    // the mesh's certificate is the node certificate here: it opens the worker
    let (code, out) = curl(&worker, HEALTH, &presenting(ca, &pki.cert, &pki.key));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("grpc-status: 0"), "{out}");
    let (code, out) = curl(&worker, HEALTH, &[Path::new("--cacert"), ca]);
    assert_ne!(code, 0, "a caller without a node certificate: {out}");
    let (code, out) = curl(
        &worker.replace("https://", "http://"),
        HEALTH,
        &[Path::new("--http2-prior-knowledge")],
    );
    assert_ne!(code, 0, "plain HTTP/2 to a worker: {out}");

    // a chat through the front door (TLS to callers, mutual TLS behind it)
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", up.front))
        .unwrap()
        .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(std::fs::read(ca).unwrap()),
        ))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let users = support::Users::of(dir.path());
    let mut phone = gateway::GatewayCaller::new(channel.clone())
        .attach(
            &users.ctx("mall", "bob"),
            gateway::AttachRequest {
                user_id: "bob".into(),
                terminal_id: "phone".into(),
                kind: TerminalKind::Phone as i32,
            },
        )
        .await
        .unwrap();
    let sent = message::MessageCaller::new(channel)
        .send(
            &users.ctx("mall", "alice"),
            message::SendRequest {
                conversation_id: "c-tls".into(),
                to_user: "bob".into(),
                body: "over mutual TLS".into(),
                client_msg_id: "t1".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(sent.delivered_terminals, ["phone"]);
    let push = mesh_gateway::heartbeat::next_content(&mut phone)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(push.payload, Some(gateway::push::Payload::Message(m)) if m.body == "over mutual TLS")
    );
}

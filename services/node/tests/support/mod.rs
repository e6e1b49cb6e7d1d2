//! What the node tests share: `mesh up` as a child process and its output, tenants folders,
//! signals.

#![allow(dead_code)]

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use mesh_contract::{RequestContext, TenantId};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

/// Lines `mesh up` prints, as they come.
pub struct Output(mpsc::UnboundedReceiver<String>);

impl Output {
    /// The next line matching `pred`, waiting up to 60 s (workers are fresh processes).
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.0.recv()).await {
                Ok(Some(line)) if pred(&line) => return line,
                Ok(Some(_)) => {}
                Ok(None) => panic!("mesh up ended before {what}"),
                Err(_) => panic!("no {what} within 60 s"),
            }
        }
    }
}

/// The value of `name=` in a line `mesh up` printed.
pub fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

/// Whether process `pid` lives.
pub fn alive(pid: &str) -> bool {
    std::process::Command::new("kill")
        .args(["-0", pid])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Sends `sig` (`-KILL`, `-TERM`) to `pid`.
pub fn signal(pid: &str, sig: &str) {
    assert!(
        std::process::Command::new("kill")
            .args([sig, pid])
            .status()
            .unwrap()
            .success()
    );
}

/// A tenants folder: the shipped defaults, the named shipped tenants, and `extra` files.
pub fn tenants_folder(shipped_tenants: &[&str], extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tenants");
    for tenant in std::iter::once("_defaults").chain(shipped_tenants.iter().copied()) {
        let file = format!("{tenant}.toml");
        std::fs::copy(shipped.join(&file), dir.path().join(&file)).unwrap();
    }
    for (name, body) in extra {
        // every test tenant signs its users' tokens with a development key, as shipped ones do
        let body = if body.contains("[users]") || name.starts_with('_') {
            body.to_string()
        } else {
            let id = name.trim_end_matches(".toml");
            format!(
                "{body}\n[users]\nissuer = \"{id}-accounts\"\nhs256_secret = \"test-{id}-user-signing-key-0123456789abcdef\"\n"
            )
        };
        std::fs::write(dir.path().join(name), body).unwrap();
    }
    dir
}

/// Signs end-user tokens for the tenants of a tenants folder, with their development keys.
#[derive(Clone)]
pub struct Users(std::sync::Arc<mesh_runtime::Tenants>);

impl Users {
    /// `tenant`'s config, as loaded.
    pub fn config(&self, tenant: &str) -> &mesh_runtime::TenantConfig {
        self.0.get(tenant).expect("a tenant of the folder")
    }

    /// The tenants of `dir`.
    pub fn of(dir: &Path) -> Self {
        Self(std::sync::Arc::new(
            mesh_runtime::Tenants::load(dir, mesh_api::CONTRACTS).expect("valid tenants"),
        ))
    }

    /// The shipped tenants (mall, finance, paipai).
    pub fn shipped() -> Self {
        Self::of(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tenants"))
    }

    /// A token for `user` of `tenant`.
    pub fn token(&self, tenant: &str, user: &str) -> String {
        let config = self.0.get(tenant).expect("a configured tenant");
        let users = config.users.as_ref().expect("the tenant has [users]");
        users.issue(user, None, 600).expect("a development key")
    }

    /// A token for `user` of `tenant` signed with its key but addressed to another audience.
    pub fn token_for_audience(&self, tenant: &str, user: &str, audience: &str) -> String {
        let config = self.0.get(tenant).expect("a configured tenant");
        let mut users = config.users.clone().expect("the tenant has [users]");
        users.audience = audience.into();
        users.issue(user, None, 600).expect("a development key")
    }

    /// A request context acting as `user` of `tenant`, with a token of its own.
    pub fn ctx(&self, tenant: &str, user: &str) -> RequestContext {
        RequestContext::new(TenantId::new(tenant).unwrap())
            .with_user_token(&self.token(tenant, user))
    }
}

/// Runs `rabbitmqctl` on the machine's RabbitMQ (installed with it; the tests run as root),
/// and what it printed; any failure fails the test, with its words.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl is installed with RabbitMQ");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The machine's RabbitMQ, for tests that run `mesh up` on a real broker.
pub const LOCAL_AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The node credential the tests give `mesh up` (its workers present it to each other).
pub const NODE_CREDENTIAL: &str = "test-node-credential-0123456789abcdef";

/// A request context of one of the mesh's own nodes, for `tenant`: what a worker presents to
/// another. Only a worker accepts it (the front door refuses internal methods).
pub fn node_ctx(tenant: &str) -> RequestContext {
    RequestContext::new(TenantId::new(tenant).unwrap()).with_token(NODE_CREDENTIAL)
}

/// A channel straight to a worker (`address=` of its `serving` line), bypassing the front door
/// as the mesh's own nodes do.
pub async fn worker_channel(serving_line: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", field(serving_line, "address")))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A tenant's request context with its backend credential.
pub fn ctx(tenant: &str, token: &str) -> RequestContext {
    RequestContext::new(TenantId::new(tenant).unwrap()).with_token(token)
}

/// A running `mesh up`, killed when dropped.
pub struct MeshUp {
    pub child: Child,
    pub output: Output,
    /// `host:port` of the front door.
    pub front: String,
}

impl MeshUp {
    /// Starts `mesh up` on the tenants in `dir` with extra environment `env`, and waits for
    /// its front door.
    pub async fn start(dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_on(dir, "127.0.0.1:0", env).await
    }

    /// [`MeshUp::start`] with its front door on `listen` (a node restarted where a proxy
    /// expects it).
    pub async fn start_on(dir: &Path, listen: &str, env: &[(&str, &str)]) -> Self {
        Self::start_binary(Path::new(env!("CARGO_BIN_EXE_mesh")), dir, listen, env).await
    }

    /// [`MeshUp::start_on`] with the `mesh` binary at `binary` (one built elsewhere: a
    /// repository with a service added).
    pub async fn start_binary(
        binary: &Path,
        dir: &Path,
        listen: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let mut child = Command::new(binary)
            .args(["up", "--listen", listen, "--tenants"])
            .arg(dir)
            .env("MESH_STATE_DIR", dir.join(".state"))
            // tests run side by side: the admin API of each on a port of its own (figment
            // finds the repository's ops/mesh.toml from any folder below it)
            .env("MESH_ADMIN_LISTEN", "127.0.0.1:0")
            .env("MESH_WEB_LISTEN", "127.0.0.1:0")
            // known to the test, which may then act as one of the mesh's nodes at a worker
            .env("MESH_NODE_CREDENTIAL", NODE_CREDENTIAL)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                println!("mesh up: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut output = Output(rx);
        let front = output
            .wait_for("front door", |l| l.starts_with("front door listening on "))
            .await
            .trim_start_matches("front door listening on ")
            .to_owned();
        Self {
            child,
            output,
            front,
        }
    }

    /// `mesh up` on the tenants in `dir`, on the machine's RabbitMQ, with the admin API open to
    /// `ops_token`: itself and the admin API's address, once the shared worker serves.
    pub async fn on_rabbitmq(dir: &Path, ops_token: &str) -> (Self, String) {
        let mut up = Self::start(
            dir,
            &[
                ("MESH_AMQP_URI", LOCAL_AMQP),
                ("MESH_ADMIN_TOKEN", ops_token),
            ],
        )
        .await;
        let admin_at = up.admin_address().await;
        up.shared_worker().await;
        (up, admin_at)
    }

    /// A channel to the front door.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.front))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// The line announcing the worker of the shared group (`serving group=shared pid=..
    /// address=.. tenants=..`), once it serves.
    pub async fn shared_worker(&mut self) -> String {
        self.output
            .wait_for("the worker", |l| l.starts_with("serving group=shared"))
            .await
    }

    /// Where its admin API listens (waits for the line saying so).
    pub async fn admin_address(&mut self) -> String {
        self.output
            .wait_for("the admin API", |l| l.starts_with("admin listening on "))
            .await
            .trim_start_matches("admin listening on ")
            .to_owned()
    }

    /// Where its browsers' access listens (`host:port`; waits for the line saying so).
    pub async fn web_address(&mut self) -> String {
        let line = self
            .output
            .wait_for("the web access", |l| l.starts_with("web access at http://"))
            .await;
        line.trim_start_matches("web access at http://")
            .split('/')
            .next()
            .unwrap()
            .to_owned()
    }

    /// The pid of this process.
    pub fn pid(&self) -> String {
        self.child.id().unwrap().to_string()
    }
}

/// The admin API client at `at`, with the ops credential `token`, as `meshctl` connects it.
pub async fn admin(
    at: &str,
    token: &str,
) -> mesh_api::admin::v1::admin_client::AdminClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{at}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    mesh_api::admin::v1::admin_client::AdminClient::with_interceptor(
        channel,
        Bearer(format!("Bearer {token}").parse().unwrap()),
    )
}

/// Adds the ops credential to every admin call.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// The Python interpreter with grpcio-tools and pika that `bash .ci/test` prepares
/// (`target/ci-python`), or `MESH_PYTHON`.
pub fn python() -> std::path::PathBuf {
    let python = std::env::var_os("MESH_PYTHON").map_or_else(
        || {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/ci-python/bin/python")
        },
        std::path::PathBuf::from,
    );
    let ready = std::process::Command::new(&python)
        .args(["-c", "import grpc_tools, pika"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ready,
        "{} lacks grpcio-tools or pika: run the suite with `bash .ci/test` (it prepares \
         target/ci-python), or point MESH_PYTHON at a Python that has both",
        python.display()
    );
    python
}

/// Python stubs of `order.v1` (and the options it imports) generated by protoc, as a Python
/// checkout has them: the folder to put on `PYTHONPATH`.
pub fn order_v1_stubs(python: &Path) -> tempfile::TempDir {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let stubs = tempfile::tempdir().unwrap();
    run(std::process::Command::new(python)
        .current_dir(&root)
        .args(["-m", "grpc_tools.protoc", "-Icontracts"])
        .arg(format!("--python_out={}", stubs.path().display()))
        .args(["order/v1/order.proto", "mesh/options.proto"]));
    stubs
}

/// Runs `command`; its standard output, failing the test with both outputs if it fails.
pub fn run(command: &mut std::process::Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The bodies in the timeline of `who`'s user (synced as terminal `phone`), once it holds at
/// least `at_least` messages or 10 s have passed (events arrive asynchronously).
pub async fn timeline_bodies(
    channel: tonic::transport::Channel,
    who: &RequestContext,
    at_least: usize,
) -> Vec<String> {
    let mut messages = mesh_api::message::v1::MessageCaller::new(channel);
    let mut bodies = Vec::new();
    for _ in 0..100 {
        bodies = messages
            .fetch_offline(
                who,
                mesh_api::message::v1::FetchOfflineRequest {
                    terminal_id: "phone".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .messages
            .into_iter()
            .map(|m| m.body)
            .collect::<Vec<_>>();
        if bodies.len() >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bodies
}

/// A PostgreSQL database of the test's own, which it can cut off from every client.
pub struct Db {
    name: String,
    admin: tokio_postgres::Client,
}

pub fn postgres_base() -> String {
    std::env::var("MESH_TEST_POSTGRES_BASE")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} (bash .ci/test starts it): {e}"));
    tokio::spawn(connection);
    client
}

impl Db {
    pub async fn create() -> Self {
        let name = format!(
            "mesh_fault_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let admin = connect(&format!("{}/postgres", postgres_base())).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        Self { name, admin }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", postgres_base(), self.name)
    }

    /// The database refuses new connections and loses its current ones, as if unreachable.
    pub async fn cut(&self) {
        self.admin
            .batch_execute(&format!(
                "ALTER DATABASE {0} ALLOW_CONNECTIONS false;
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{0}';",
                self.name
            ))
            .await
            .unwrap();
    }

    pub async fn restore(&self) {
        self.admin
            .batch_execute(&format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS true",
                self.name
            ))
            .await
            .unwrap();
    }

    /// (conversation, seq, client id, message id) of the stored messages of conversations
    /// starting with `prefix`, in mall's schema.
    pub async fn stored(&self, prefix: &str) -> Vec<(String, i64, Option<String>, String)> {
        let client = connect(&self.url()).await;
        client
            .query(
                "SELECT conversation_id, seq, client_msg_id, message_id FROM mesh_mall.messages
                 WHERE conversation_id LIKE $1 ORDER BY conversation_id, seq",
                &[&format!("{prefix}%")],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }

    /// Runs `sql` in the database.
    pub async fn sql(&self, sql: &str) {
        connect(&self.url()).await.batch_execute(sql).await.unwrap();
    }

    pub async fn drop_database(self) {
        let _ = self
            .admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await;
    }
}

/// The Redis tests share (`MESH_TEST_REDIS_URL`, or 127.0.0.1:6379).
pub fn redis_url() -> String {
    std::env::var("MESH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A prefix of its own for the keys of a test's mesh in the shared Redis: tests running side
/// by side (or a crashed run's leftovers) never see each other's state.
pub fn redis_prefix() -> String {
    format!(
        "test-mesh-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Deletes the control state a test's mesh left in Redis under `prefix`.
pub async fn clear_shared_state(prefix: &str) {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis on 127.0.0.1:6379 (bash .ci/test starts it)");
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:control:switch:*"))
        .query_async(&mut connection)
        .await
        .unwrap();
    let tenants: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:control:tenant:*"))
        .query_async(&mut connection)
        .await
        .unwrap();
    keys.extend(tenants);
    keys.push(format!("{prefix}:control:tenants"));
    redis::cmd("DEL")
        .arg(keys)
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
}

/// The body of the next chat message `terminal` reads, within 10 s.
pub async fn next_body(terminal: &mut mesh_gateway::Terminal) -> String {
    loop {
        let push = tokio::time::timeout(Duration::from_secs(10), terminal.next())
            .await
            .expect("a push within 10 s")
            .unwrap()
            .expect("the stream is open");
        if let Some(mesh_api::gateway::v1::push::Payload::Message(m)) = push.payload {
            return m.body;
        }
    }
}

/// `user`'s phone of mall attaches again through `channel` from `cursor` (where it held
/// everything up to); it, and the bodies of the chat messages it synced.
pub async fn reattach_phone(
    users: &Users,
    user: &str,
    channel: &tonic::transport::Channel,
    cursor: u64,
) -> (mesh_gateway::Terminal, Vec<String>) {
    let mut phone = mesh_gateway::Terminal::resume(
        &users.ctx("mall", user),
        channel.clone(),
        channel.clone(),
        user,
        "phone",
        mesh_api::locator::v1::TerminalKind::Phone,
        cursor,
    )
    .await
    .unwrap();
    let mut synced = Vec::new();
    while phone.missed() > 0 {
        synced.push(next_body(&mut phone).await);
    }
    (phone, synced)
}

/// A port free on loopback now (for a process that must be told its port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// HAProxy as `mesh deploy haproxy` configures it for the tenants in `dir`, listening on a free
/// port of loopback with `group` (`shared=host:port,...`) as its servers; it, and where it
/// listens. (Debian's `haproxy`; `bash .ci/test` installs it.)
pub async fn start_haproxy(dir: &Path, group: &str) -> (Child, String) {
    start_haproxy_with(dir, group, &[]).await
}

/// [`start_haproxy`] with more arguments for `mesh deploy haproxy` (`--web-listen ...`).
pub async fn start_haproxy_with(dir: &Path, group: &str, more: &[&str]) -> (Child, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let rendered = std::process::Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["deploy", "haproxy", "--tenants"])
        .arg(dir)
        .args(["--listen", &listen, "--group", group])
        // the file-descriptor limit of a test machine, not a fleet's
        .args(["--maxconn", "4096"])
        .args(more)
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let config = dir.join("haproxy.cfg");
    std::fs::write(&config, &rendered.stdout).unwrap();
    let haproxy = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&config)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("haproxy (Debian's haproxy package; bash .ci/test installs it)");
    (haproxy, listen)
}

/// Turns recommend off (`on` false) or on again for `tenant` through the admin API at `at`, as
/// `meshctl switch off|on recommend --tenant <tenant>` does.
pub async fn switch_recommend(at: &str, token: &str, tenant: &str, on: bool, reason: &str) {
    admin(at, token)
        .await
        .set_switch(mesh_api::admin::v1::SetSwitchRequest {
            target: Some(mesh_api::admin::v1::SwitchTarget {
                service: "recommend".into(),
                ..Default::default()
            }),
            tenant: tenant.into(),
            on,
            reason: reason.into(),
        })
        .await
        .unwrap();
}

/// A Redis server of a test's own on a free port (no persistence: a restart starts it
/// empty), for faults the machine's shared Redis must not see.
pub struct OwnRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    /// Starts it and waits until it answers.
    pub async fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            child: None,
        };
        redis.up().await;
        redis
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it again (empty) on the same port, if it is down, and waits until it answers.
    pub async fn up(&mut self) {
        if self.child.is_some() {
            return;
        }
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server; bash .ci/test installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server up within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills it outright: its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A connection to it.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One of two switches of mall two operators set at once in the fleet tests: 0 is
/// `recommend@mall`, anything else `tier>=2@mall`.
pub fn mall_switch(which: usize) -> mesh_api::admin::v1::SwitchTarget {
    match which {
        0 => mesh_api::admin::v1::SwitchTarget {
            service: "recommend".into(),
            ..Default::default()
        },
        _ => mesh_api::admin::v1::SwitchTarget {
            tier: Some(2),
            ..Default::default()
        },
    }
}

/// Turns [`mall_switch`] `which` off (or on again) through the admin API at `at`.
pub async fn set_mall_switch(
    at: &str,
    token: &str,
    which: usize,
    on: bool,
) -> mesh_api::admin::v1::SetSwitchResponse {
    admin(at, token)
        .await
        .set_switch(mesh_api::admin::v1::SetSwitchRequest {
            target: Some(mall_switch(which)),
            tenant: "mall".into(),
            on,
            reason: format!("fleet test {which}"),
        })
        .await
        .unwrap_or_else(|s| panic!("switch {which} through {at}: {s:?}"))
        .into_inner()
}

/// The switches off on the node whose admin API is at `at`, by scope.
pub async fn switches_off(at: &str, token: &str) -> std::collections::BTreeSet<String> {
    admin(at, token)
        .await
        .list_switches(mesh_api::admin::v1::ListSwitchesRequest {})
        .await
        .unwrap()
        .into_inner()
        .switches
        .into_iter()
        .map(|s| s.scope)
        .collect()
}

/// Waits until every node whose admin API is in `nodes` lists exactly `expected` as off;
/// how long it took.
pub async fn switches_agree(
    nodes: &[&str],
    token: &str,
    expected: &std::collections::BTreeSet<String>,
    what: &str,
) -> Duration {
    let started = Instant::now();
    loop {
        let mut seen = Vec::new();
        for at in nodes {
            seen.push(switches_off(at, token).await);
        }
        if seen.iter().all(|s| s == expected) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: the nodes still list {seen:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A tenants folder with mall alone, its rate limits raised so a test measures the mesh, not
/// admission.
pub fn mall_unthrottled() -> tempfile::TempDir {
    let dir = tenants_folder(&["mall"], &[]);
    let mall = dir.path().join("mall.toml");
    let raised = std::fs::read_to_string(&mall).unwrap()
        + "\n[limits]\nrequests_per_second = 50000\nburst = 50000\n";
    std::fs::write(&mall, raised).unwrap();
    dir
}

/// A RabbitMQ vhost of a test's own (guest may use it), deleted with everything in it when
/// dropped: queues a test creates never outlive it.
pub struct Vhost(pub String);

impl Vhost {
    /// A fresh vhost.
    pub fn create() -> Self {
        let name = format!(
            "mesh-edges-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Self(name)
    }

    /// Its AMQP URI.
    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.0)
    }

    /// `name messages` of every queue of the vhost starting with `prefix`.
    pub fn queues(&self, prefix: &str) -> Vec<(String, u64)> {
        rabbitmqctl(&[
            "list_queues",
            "-p",
            &self.0,
            "-q",
            "--no-table-headers",
            "name",
            "messages",
        ])
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (name, count) = (fields.next()?, fields.next()?.parse().ok()?);
            name.starts_with(prefix).then(|| (name.to_owned(), count))
        })
        .collect()
    }

    /// The exchanges of the vhost starting with `prefix`.
    pub fn exchanges(&self, prefix: &str) -> Vec<String> {
        rabbitmqctl(&[
            "list_exchanges",
            "-p",
            &self.0,
            "-q",
            "--no-table-headers",
            "name",
        ])
        .lines()
        .map(str::trim)
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect()
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.0])
            .output();
    }
}

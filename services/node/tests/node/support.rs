//! What the node tests share beyond the test kit (re-exported here): tokens of the tenants'
//! users, the admin API as ops call it, switches, HAProxy in front, terminals' pushes.

#![allow(dead_code)]

pub use mesh_testkit::{
    Db, LOCAL_AMQP, MeshUp, NODE_CREDENTIAL, OwnRabbit, OwnRedis, TenantsFolder, Vhost, alive,
    clear_shared_state, connect, field, free_port, heavy, mesh_binary, rabbitmqctl, redis_prefix,
    redis_url, run, signal,
};

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use mesh_contract::{RequestContext, TenantId};
use tokio::process::{Child, Command};

/// A tenants folder: the shipped defaults, the named shipped tenants, and `extra` tenant
/// files (each given a development key for its users' tokens unless it says otherwise).
pub fn tenants_folder(shipped_tenants: &[&str], extra: &[(&str, &str)]) -> tempfile::TempDir {
    extra
        .iter()
        .fold(
            TenantsFolder::new().shipped(shipped_tenants),
            |folder, (name, body)| folder.tenant(name, body),
        )
        .into_dir()
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

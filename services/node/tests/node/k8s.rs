//! The Kubernetes rendering, started as the manifests say: `mesh deploy k8s` renders the
//! manifests for mall (shared group) and finance (a group of its own), each tenant's
//! credential in a `token_env` secret; each group's pod is started from its Deployment as
//! rendered (its args, its env, the tenants ConfigMap as its folder, and of the Secret only
//! the keys it references), on a Redis, a database and a RabbitMQ virtual host of the test's
//! own. Both pods serve their tenants, the shared pod without finance's secret; SIGTERMed, a
//! pod drains and exits within its grace period. The control pod (`mesh up --control-only`)
//! switches a service off through its admin API, and both groups' pods apply it and say so.
//!
//! What differs from a cluster: the ports. A pod has a network namespace of its own; here the
//! listen addresses of the manifests are remapped to free loopback ports.

use crate::support;

use std::{
    collections::BTreeMap,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Db, NODE_CREDENTIAL, OwnRedis, ctx, free_port, rabbitmqctl, signal, tenants_folder};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// The documents `mesh deploy k8s` prints.
fn render(dir: &Path) -> Vec<Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["deploy", "k8s", "--tenants"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split("---\n")
        .skip(1)
        .map(|doc| serde_json::from_str(doc).expect("each document is JSON"))
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

/// The tenants ConfigMap written out as the pod's volume shows it.
fn mount_config_map(docs: &[Value], deployment: &Value, at: &Path) {
    let data = &find(docs, "ConfigMap", "mesh-tenants")["data"];
    let pod = &deployment["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "tenants")
        .unwrap();
    for item in volume["configMap"]["items"].as_array().unwrap() {
        let path = at.join(item["path"].as_str().unwrap());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data[item["key"].as_str().unwrap()].as_str().unwrap()).unwrap();
    }
}

/// A pod of `deployment` as its manifest says: the container's args and env, the Secret's
/// keys it references (from `secret`; a key it does not reference is not given), listen
/// addresses on free loopback ports. The pod, and its gRPC address once it is ready.
async fn start_pod(
    docs: &[Value],
    deployment: &str,
    secret: &BTreeMap<&str, String>,
) -> (Child, String, tempfile::TempDir) {
    let (pod, grpc, folder, _) = start_pod_until(docs, deployment, secret, "READY ").await;
    (pod, grpc, folder)
}

/// [`start_pod`] for a pod whose process says it is ready with a line starting with `ready`
/// (that line returned too); an `emptyDir` at `/var/lib/mesh` is a folder of its own.
async fn start_pod_until(
    docs: &[Value],
    deployment: &str,
    secret: &BTreeMap<&str, String>,
    ready: &str,
) -> (Child, String, tempfile::TempDir, String) {
    let deployment = find(docs, "Deployment", deployment);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let folder = tempfile::tempdir().unwrap();
    mount_config_map(docs, deployment, folder.path());
    let grpc = format!("127.0.0.1:{}", free_port());
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .map(|a| match a.as_str() {
            "/etc/mesh/tenants" => folder.path().display().to_string(),
            listen if listen.starts_with("0.0.0.0:") => grpc.clone(),
            _ => a,
        })
        .collect();
    let mut env = BTreeMap::new();
    for var in container["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap();
        let value = if let Some(value) = var["value"].as_str() {
            value.replace("$(POD_IP)", "127.0.0.1")
        } else if var["valueFrom"]["fieldRef"].is_object() {
            "127.0.0.1".to_owned()
        } else {
            let key = var["valueFrom"]["secretKeyRef"]["key"].as_str().unwrap();
            secret
                .get(key)
                .unwrap_or_else(|| panic!("the Secret holds {key}"))
                .clone()
        };
        // a pod's own network namespace: its fixed ports are free loopback ports here
        let value = match value.strip_prefix("0.0.0.0:") {
            Some(_) => format!("127.0.0.1:{}", free_port()),
            None if value == "/var/lib/mesh" => folder.path().join("state").display().to_string(),
            None => value,
        };
        env.insert(name.to_owned(), value);
    }
    let mut pod = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(&args)
        .env_clear()
        .envs(&env)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(pod.stdout.take().unwrap()).lines();
    let said = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with(ready) {
                return line;
            }
        }
        panic!(
            "the pod of {} ended before it was ready",
            deployment["metadata"]["name"]
        )
    })
    .await
    .expect("ready within 60 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (pod, grpc, folder, said)
}

/// `order.v1.ListOrders` for `tenant` with its backend credential, at `at`.
async fn list_orders(at: &str, tenant: &str, token: &str) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{at}"))
        .unwrap()
        .connect_lazy();
    mesh_api::order::v1::OrderCaller::new(channel)
        .list_orders(
            &ctx(tenant, token),
            mesh_api::order::v1::ListOrdersRequest {
                user_id: "bob".into(),
                limit: 5,
            },
        )
        .await
        .map(drop)
}

/// Whether mall's `recommend.Suggest` at `at` is answered degraded.
async fn suggest_degraded(at: &str, token: &str) -> bool {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{at}"))
        .unwrap()
        .connect_lazy();
    let mut request = tonic::Request::new(mesh_api::recommend::v1::SuggestRequest::default());
    ctx("mall", token).inject(request.metadata_mut()).unwrap();
    mesh_api::recommend::v1::recommend_client::RecommendClient::new(channel)
        .suggest(request)
        .await
        .unwrap()
        .metadata()
        .get("x-mesh-degraded")
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_started_as_the_manifests_say_serve_with_their_own_secrets_only() {
    // tenants whose credentials are secrets of the deployment, named by environment variable
    let dir = tenants_folder(&["mall", "finance"], &[]);
    for (file, token) in [
        ("mall.toml", "MALL_TOKEN"),
        ("finance.toml", "FINANCE_TOKEN"),
    ] {
        let path = dir.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let inline = text
            .lines()
            .find(|l| l.starts_with("token = "))
            .expect("a dev token inline")
            .to_owned();
        std::fs::write(
            &path,
            text.replace(&inline, &format!("token_env = \"{token}\"")),
        )
        .unwrap();
    }
    let docs = render(dir.path());

    // the Secret the operator creates, with every key; each pod gets what it references
    let redis = OwnRedis::start().await;
    let db = Db::create().await;
    let vhost = format!("k8s-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    rabbitmqctl(&["add_vhost", &vhost]);
    rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
    let secret: BTreeMap<&str, String> = [
        ("MESH_NODE_CREDENTIAL", NODE_CREDENTIAL.to_owned()),
        ("MESH_STATE_REDIS_URL", redis.url()),
        ("MESH_STORE_POSTGRES", db.url()),
        (
            "MESH_AMQP_URI",
            format!("amqp://guest:guest@127.0.0.1:5672/{vhost}"),
        ),
        ("MALL_TOKEN", "mall-secret-from-the-secret".to_owned()),
        ("MESH_ADMIN_TOKEN", "ops-secret-from-the-secret".to_owned()),
        ("FINANCE_TOKEN", "finance-secret-from-the-secret".to_owned()),
    ]
    .into();
    let shared_env = &find(&docs, "Deployment", "mesh-shared")["spec"]["template"]["spec"]["containers"]
        [0]["env"];
    assert!(
        !shared_env.to_string().contains("FINANCE_TOKEN"),
        "the shared group's pods are not given finance's secret"
    );

    let (mut shared, shared_at, _shared_dir) = start_pod(&docs, "mesh-shared", &secret).await;
    let (mut finance, finance_at, _finance_dir) = start_pod(&docs, "mesh-finance", &secret).await;
    list_orders(&shared_at, "mall", &secret["MALL_TOKEN"])
        .await
        .expect("the shared pod serves mall with the credential from the Secret");
    list_orders(&finance_at, "finance", &secret["FINANCE_TOKEN"])
        .await
        .expect("finance's pod serves finance");
    let refused = list_orders(&shared_at, "mall", "dev-mall-token")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // ops switch on Kubernetes through the control pod: the workers follow and say so
    let (mut control, _, _control_dir, said) =
        start_pod_until(&docs, "mesh-control", &secret, "admin listening on ").await;
    let admin_at = said.trim_start_matches("admin listening on ").to_owned();
    // (a worker pod reports once it has read the state the control pod filled the store
    // with: until then the control pod does not know it, so the switch is set again until
    // the fleet it reports is the whole fleet)
    let started = Instant::now();
    let fleet = loop {
        let answer = support::admin(&admin_at, &secret["MESH_ADMIN_TOKEN"])
            .await
            .set_switch(mesh_api::admin::v1::SetSwitchRequest {
                target: Some(mesh_api::admin::v1::SwitchTarget {
                    service: "recommend".into(),
                    ..Default::default()
                }),
                tenant: "mall".into(),
                on: false,
                reason: "switched on Kubernetes".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let fleet = answer
            .fleet
            .expect("the control pod shares the switch state");
        assert!(fleet.shared, "{fleet:?}");
        if fleet.nodes_total == 3 || started.elapsed() > Duration::from_secs(10) {
            break fleet;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (
            fleet.nodes_applied,
            fleet.nodes_total,
            fleet.processes_applied
        ),
        (3, 3, 2),
        "the control pod and both worker pods, whose two processes serve: {fleet:?}"
    );
    assert!(
        suggest_degraded(&shared_at, &secret["MALL_TOKEN"]).await,
        "the shared pod answers recommend@mall degraded"
    );
    // a tenant change is refused there, saying where tenants live on Kubernetes
    let refused = support::admin(&admin_at, &secret["MESH_ADMIN_TOKEN"])
        .await
        .remove_tenant(mesh_api::admin::v1::RemoveTenantRequest {
            tenant: "mall".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(refused.message().contains("ConfigMap"), "{refused:?}");
    let _ = control.kill().await;

    // a pod stopped as the kubelet stops it drains and exits within its grace period
    let grace = find(&docs, "Deployment", "mesh-shared")["spec"]["template"]["spec"]
        ["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    let pod = &find(&docs, "Deployment", "mesh-shared")["spec"]["template"]["spec"];
    assert!(pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"].is_u64());
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"], true,
        "the worker writes nothing to its image"
    );
    let stopping = Instant::now();
    signal(&shared.id().unwrap().to_string(), "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(grace), shared.wait())
        .await
        .expect("exits within its grace period")
        .unwrap();
    assert!(status.success(), "{status:?}");
    println!(
        "FIGURE a pod SIGTERMed exits in {:?} (grace {grace} s)",
        stopping.elapsed()
    );
    let _ = finance.kill().await;
    let _ = finance.wait().await;
    rabbitmqctl(&["delete_vhost", &vhost]);
    db.drop_database().await;
}

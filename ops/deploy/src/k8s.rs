//! Kubernetes manifests for a mesh: on Kubernetes, what `mesh up` does on one machine is the
//! cluster's job. Each process group is a Deployment of `mesh worker` replicas (restarted by
//! Kubernetes, isolated as pods), with a Service, a PodDisruptionBudget and a
//! HorizontalPodAutoscaler; the tenant files are a ConfigMap; every secret a tenant file names
//! by environment variable (`token_env`, `hs256_secret_env`, `password_env`), and the mesh's
//! own (node credential, database, broker), comes from the Secret `mesh-secrets`, which the
//! operator creates and this never contains. HAProxy, configured by [`crate::haproxy`], routes
//! by tenant to each group's Service. Replicas share Redis (who is connected where, the switch
//! state), PostgreSQL and RabbitMQ, named in the Secret.
//!
//! The manifests are JSON documents (JSON is YAML), separated by `---`; CI validates them
//! offline with `kubernetes-validate` against [`KUBERNETES_VERSION`].
//!
//! ```
//! let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tenants");
//! let tenants = mesh_config::Tenants::load(&folder, mesh_api::CONTRACTS).unwrap();
//! let yaml = mesh_deploy::k8s::render(&tenants, &folder, &Default::default()).unwrap();
//! assert!(yaml.contains(r#""name": "mesh-finance""#), "finance's own process group");
//! ```

use std::{collections::BTreeMap, path::Path};

use mesh_config::Tenants;
use serde_json::{Value, json};

use crate::{
    DeployError, groups,
    haproxy::{self, Haproxy},
};

/// The Kubernetes version the manifests are written for, and validated against.
pub const KUBERNETES_VERSION: &str = "1.33.0";
/// The port every worker serves on, in its pod.
pub const WORKER_PORT: u16 = 7501;
/// The Secret every secret comes from.
pub const SECRET: &str = "mesh-secrets";

/// What the manifests need beyond the tenants.
#[derive(Clone, Debug)]
pub struct Options {
    /// Kubernetes namespace.
    pub namespace: String,
    /// The image holding the `mesh` binary.
    pub image: String,
    /// Replicas of each process group (at least; the autoscaler may add up to 4 times as many).
    pub replicas: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            namespace: "mesh".into(),
            image: "mesh:latest".into(),
            replicas: 2,
        }
    }
}

fn labels(group: &str) -> Value {
    json!({ "app.kubernetes.io/name": "mesh", "app.kubernetes.io/component": group })
}

fn metadata(name: &str, options: &Options, group: &str) -> Value {
    json!({ "name": name, "namespace": options.namespace, "labels": labels(group) })
}

fn secret_env(name: &str) -> Value {
    json!({
        "name": name,
        "valueFrom": { "secretKeyRef": { "name": SECRET, "key": name } },
    })
}

/// Every environment variable the tenant files read, sorted.
fn tenant_secrets(tenants: &Tenants) -> Vec<String> {
    let mut names: Vec<String> = tenants
        .tenants
        .values()
        .flat_map(|config| {
            [
                config.credentials.token_env.clone(),
                config
                    .users
                    .as_ref()
                    .and_then(|u| u.hs256_secret_env.clone()),
                config.broker.password_env.clone(),
            ]
        })
        .flatten()
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The manifests for `tenants` (read from `dir`, whose files go into the ConfigMap).
pub fn render(tenants: &Tenants, dir: &Path, options: &Options) -> Result<String, DeployError> {
    let mut files = BTreeMap::new();
    let defaults = dir.join(mesh_config::tenant::DEFAULTS_FILE);
    let paths = tenants
        .files
        .values()
        .cloned()
        .chain(defaults.exists().then_some(defaults));
    for path in paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| DeployError::Read(path.display().to_string(), e.to_string()))?;
        files.insert(name, text);
    }
    let mut docs = vec![json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata("mesh-tenants", options, "tenants"),
        "data": files,
    })];
    let secrets = tenant_secrets(tenants);
    let mut replicas = BTreeMap::new();
    for (group, members) in groups(tenants) {
        let name = format!("mesh-{group}");
        replicas.insert(
            group.clone(),
            vec![format!(
                "{name}.{}.svc.cluster.local:{WORKER_PORT}",
                options.namespace
            )],
        );
        let mut env = vec![
            json!({ "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } }),
            // what the other replicas dial to push to this one's terminals
            json!({ "name": "MESH_WORKER_ADVERTISE_ADDRESS", "value": format!("$(POD_IP):{WORKER_PORT}") }),
            json!({ "name": "MESH_WORKER_GROUP", "value": group }),
            // replicated over the broker cluster: a confirmed event survives a broker node
            json!({ "name": "MESH_AMQP_QUEUE_TYPE", "value": "quorum" }),
        ];
        for shared in [
            "MESH_NODE_CREDENTIAL",
            "MESH_STATE_REDIS_URL",
            "MESH_STORE_POSTGRES",
            "MESH_AMQP_URI",
        ] {
            env.push(secret_env(shared));
        }
        env.extend(secrets.iter().map(|s| secret_env(s)));
        let probe = |delay: u32| json!({ "grpc": { "port": WORKER_PORT }, "initialDelaySeconds": delay, "periodSeconds": 5 });
        docs.push(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(&name, options, &group),
            "spec": {
                "replicas": options.replicas,
                "selector": { "matchLabels": labels(&group) },
                "template": {
                    "metadata": { "labels": labels(&group) },
                    "spec": {
                        "terminationGracePeriodSeconds": 40,
                        "containers": [{
                            "name": "worker",
                            "image": options.image,
                            "args": [
                                "worker", "--tenants", "/etc/mesh/tenants",
                                "--tenant", members.join(","),
                                "--listen", format!("0.0.0.0:{WORKER_PORT}"),
                            ],
                            "ports": [{ "name": "grpc", "containerPort": WORKER_PORT }],
                            "env": env,
                            "resources": {
                                "requests": { "cpu": "250m", "memory": "128Mi" },
                                "limits": { "cpu": "2", "memory": "1Gi" },
                            },
                            "readinessProbe": probe(2),
                            "livenessProbe": probe(10),
                            "volumeMounts": [{ "name": "tenants", "mountPath": "/etc/mesh/tenants", "readOnly": true }],
                        }],
                        "volumes": [{ "name": "tenants", "configMap": { "name": "mesh-tenants" } }],
                    },
                },
            },
        }));
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(&name, options, &group),
            "spec": {
                "selector": labels(&group),
                "ports": [{ "name": "grpc", "port": WORKER_PORT, "targetPort": "grpc", "appProtocol": "kubernetes.io/h2c" }],
            },
        }));
        docs.push(json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": metadata(&name, options, &group),
            "spec": {
                "minAvailable": options.replicas.saturating_sub(1).max(1),
                "selector": { "matchLabels": labels(&group) },
            },
        }));
        docs.push(json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": metadata(&name, options, &group),
            "spec": {
                "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": name },
                "minReplicas": options.replicas.max(1),
                "maxReplicas": options.replicas.max(1) * 4,
                "metrics": [{
                    "type": "Resource",
                    "resource": { "name": "cpu", "target": { "type": "Utilization", "averageUtilization": 70 } },
                }],
            },
        }));
    }
    // the proxy in front, routing by tenant to each group's Service
    let proxy = haproxy::render(
        tenants,
        &Haproxy {
            listen: "0.0.0.0:7400".into(),
            replicas,
        },
    )?;
    docs.push(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata("mesh-proxy", options, "proxy"),
        "data": { "haproxy.cfg": proxy },
    }));
    docs.push(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata("mesh-proxy", options, "proxy"),
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": labels("proxy") },
            "template": {
                "metadata": { "labels": labels("proxy") },
                "spec": {
                    "containers": [{
                        "name": "haproxy",
                        "image": "haproxy:2.6",
                        "args": ["-f", "/usr/local/etc/haproxy/haproxy.cfg"],
                        "ports": [{ "name": "grpc", "containerPort": 7400 }],
                        "readinessProbe": { "tcpSocket": { "port": 7400 }, "periodSeconds": 5 },
                        "volumeMounts": [{ "name": "config", "mountPath": "/usr/local/etc/haproxy", "readOnly": true }],
                    }],
                    "volumes": [{ "name": "config", "configMap": { "name": "mesh-proxy" } }],
                },
            },
        },
    }));
    docs.push(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata("mesh", options, "proxy"),
        "spec": {
            "type": "LoadBalancer",
            "selector": labels("proxy"),
            "ports": [{ "name": "grpc", "port": 7400, "targetPort": "grpc", "appProtocol": "kubernetes.io/h2c" }],
        },
    }));
    let mut out = format!(
        "# Rendered by `mesh deploy k8s` for Kubernetes {KUBERNETES_VERSION}. Secrets come from the \
         Secret {SECRET} (keys: MESH_NODE_CREDENTIAL, MESH_STATE_REDIS_URL, MESH_STORE_POSTGRES, \
         MESH_AMQP_URI{}), which you create.\n",
        secrets.iter().map(|s| format!(", {s}")).collect::<String>()
    );
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_json::to_string_pretty(&doc).expect("plain JSON values"));
        out.push('\n');
    }
    Ok(out)
}

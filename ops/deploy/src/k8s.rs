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
/// The port of every worker's Prometheus scrape endpoint, in its pod (the pods carry the
/// `prometheus.io/*` annotations that name it).
pub const METRICS_PORT: u16 = 9464;
/// The control pod's admin API port (`meshctl --admin`).
pub const CONTROL_ADMIN_PORT: u16 = 7401;
/// How long a leaving pod keeps serving before it is told to stop: the proxy's resolver holds
/// a pod's address up to 5 s, so calls still arrive that long.
pub const PRE_STOP_SECONDS: u32 = 6;
/// The port browsers reach the mesh on: every worker serves its tenants' calls as HTTP/JSON
/// there, and the proxy in front routes them by tenant.
pub const WEB_PORT: u16 = 7480;

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
            image: concat!("mesh:", env!("CARGO_PKG_VERSION")).into(),
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

/// Every environment variable the files of `members` read, sorted: a group's pods get their
/// own tenants' secrets, never another group's.
fn tenant_secrets(tenants: &Tenants, members: &[String]) -> Vec<String> {
    let mut names: Vec<String> = tenants
        .tenants
        .values()
        .filter(|config| members.iter().any(|m| m == config.id.as_str()))
        .flat_map(|config| config.secret_envs())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The manifests for `tenants` (read from `dir`, whose files go into the ConfigMap; load them
/// with [`Tenants::load_without_secrets`] where the secrets they name are not set).
pub fn render(tenants: &Tenants, dir: &Path, options: &Options) -> Result<String, DeployError> {
    let (files, items) = tenant_files(tenants, dir)?;
    let mut docs = vec![json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata("mesh-tenants", options, "tenants"),
        "data": files,
    })];
    let mut all_secrets = Vec::new();
    let mut replicas = BTreeMap::new();
    for (group, members) in groups(tenants) {
        // a headless Service: one DNS record per ready pod, which HAProxy balances over
        replicas.insert(
            group.clone(),
            vec![format!(
                "mesh-{group}.{}.svc.cluster.local:{WORKER_PORT}",
                options.namespace
            )],
        );
        let secrets = tenant_secrets(tenants, &members);
        all_secrets.extend(secrets.iter().cloned());
        docs.extend(group_docs(&group, &members, &secrets, &items, options));
    }
    docs.extend(control_docs(&items, options));
    docs.extend(proxy_docs(tenants, replicas, options)?);
    all_secrets.sort();
    all_secrets.dedup();
    let mut out = format!(
        "# Rendered by `mesh deploy k8s` for Kubernetes {KUBERNETES_VERSION}. Secrets come from the \
         Secret {SECRET} (keys: MESH_NODE_CREDENTIAL, MESH_STATE_REDIS_URL, MESH_STORE_POSTGRES, \
         MESH_AMQP_URI, MESH_ADMIN_TOKEN{}), which you create.\n",
        all_secrets
            .iter()
            .map(|s| format!(", {s}"))
            .collect::<String>()
    );
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_json::to_string_pretty(&doc).expect("plain JSON values"));
        out.push('\n');
    }
    Ok(out)
}

/// The tenant files, and the key files they name (a user key, a JWKS), each at its path below
/// the mounted folder: ConfigMap keys are flat, so each key (the ConfigMap's data) is mapped to
/// its path (the volume's items).
fn tenant_files(
    tenants: &Tenants,
    dir: &Path,
) -> Result<(BTreeMap<String, String>, Vec<Value>), DeployError> {
    let mut files = BTreeMap::new();
    let mut items = Vec::new();
    let defaults = dir.join(mesh_config::tenant::DEFAULTS_FILE);
    let mut paths: Vec<(std::path::PathBuf, String)> = tenants
        .files
        .values()
        .cloned()
        .chain(defaults.exists().then_some(defaults))
        .map(|path| (path, String::new()))
        .collect();
    for (id, config) in &tenants.tenants {
        // a secret never goes into the ConfigMap, and the renderer cannot know which Secret a
        // file would be mounted from: the pods take tenant credentials from the mesh Secret
        if let Some(file) = &config.credentials.token_file {
            return Err(DeployError::Read(
                format!("{id}: credentials.token_file"),
                format!(
                    "{} is read on the host; in Kubernetes name the credential with token_env (a key of Secret {SECRET})",
                    file.display()
                ),
            ));
        }
        let Some(users) = &config.users else { continue };
        for (field, key) in [
            ("users.public_key_file", &users.public_key_file),
            ("users.jwks_file", &users.jwks_file),
        ] {
            if let Some(key) = key {
                paths.push((key.clone(), format!("tenant {id}: {field}")));
            }
        }
    }
    for (path, named_by) in paths {
        // below the folder for real: no `..` climbing out of it (`keys/../../x.pem`)
        let relative = path
            .strip_prefix(dir)
            .ok()
            .filter(|r| {
                !r.as_os_str().is_empty()
                    && r.components()
                        .all(|c| matches!(c, std::path::Component::Normal(_)))
            })
            .map(|r| r.to_string_lossy().into_owned())
            .ok_or_else(|| {
                DeployError::Read(
                    path.display().to_string(),
                    format!(
                        "{named_by} names a file outside the tenants folder {}: on Kubernetes \
                         the folder is the ConfigMap, so keep it there",
                        dir.display()
                    ),
                )
            })?;
        let key = relative.replace(['/', '\\'], "..");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| DeployError::Read(path.display().to_string(), e.to_string()))?;
        items.push(json!({ "key": key, "path": relative }));
        files.insert(key, text);
    }
    Ok((files, items))
}

/// A process group's Deployment of `mesh worker` pods, its headless Service, its
/// PodDisruptionBudget and its autoscaler.
fn group_docs(
    group: &str,
    members: &[String],
    secrets: &[String],
    items: &[Value],
    options: &Options,
) -> [Value; 4] {
    let name = format!("mesh-{group}");
    let mut env = vec![
        json!({ "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } }),
        // what the other replicas dial to push to this one's terminals: its pod IP (v4 or
        // v6) on the port it listens on
        json!({ "name": "MESH_WORKER_ADVERTISE_HOST", "value": "$(POD_IP)" }),
        json!({ "name": "MESH_WORKER_GROUP", "value": group }),
        // replicated over the broker cluster: a confirmed event survives a broker node
        json!({ "name": "MESH_AMQP_QUEUE_TYPE", "value": "quorum" }),
        // each pod's own metrics, scraped by Prometheus (the annotations below)
        json!({ "name": "MESH_TELEMETRY_PROMETHEUS_LISTEN", "value": format!("0.0.0.0:{METRICS_PORT}") }),
        // the browsers' access of its tenants (HTTP/JSON, server-sent events, gRPC-Web)
        json!({ "name": "MESH_WORKER_WEB_LISTEN", "value": format!("0.0.0.0:{WEB_PORT}") }),
        // a leaving pod's terminals attach again spread over 5 s, not all at once
        json!({ "name": "MESH_DRAIN_WINDOW_MS", "value": "5000" }),
        // a terminal attached for 30 min attaches again: after a scale-out the terminals
        // spread onto the new pods instead of staying on the old ones for good
        json!({ "name": "MESH_TERMINAL_MAX_AGE_SECS", "value": "1800" }),
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
    [
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(&name, options, group),
            "spec": {
                "replicas": options.replicas,
                "selector": { "matchLabels": labels(group) },
                "template": {
                    "metadata": {
                        "labels": labels(group),
                        "annotations": {
                            "prometheus.io/scrape": "true",
                            "prometheus.io/port": METRICS_PORT.to_string(),
                            "prometheus.io/path": "/metrics",
                        },
                    },
                    "spec": {
                        // the preStop pause, the drain (terminals told to attach elsewhere,
                        // in-flight calls finished) and a margin
                        "terminationGracePeriodSeconds": PRE_STOP_SECONDS + 25,
                        // spread over the nodes: one node lost takes few replicas of a group
                        "topologySpreadConstraints": [{
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": { "matchLabels": labels(group) },
                        }],
                        "securityContext": {
                            "runAsNonRoot": true,
                            "runAsUser": 65532,
                            "seccompProfile": { "type": "RuntimeDefault" },
                        },
                        "containers": [{
                            "name": "worker",
                            "image": options.image,
                            // while the proxy's resolver still names this pod (it re-resolves
                            // every 5 s), it keeps serving; then SIGTERM drains it: health
                            // says NOT_SERVING, each terminal is told to attach again
                            // elsewhere (spread over MESH_DRAIN_WINDOW_MS), calls finish
                            "lifecycle": { "preStop": { "sleep": { "seconds": PRE_STOP_SECONDS } } },
                            "securityContext": {
                                "allowPrivilegeEscalation": false,
                                "readOnlyRootFilesystem": true,
                                "capabilities": { "drop": ["ALL"] },
                            },
                            "args": [
                                "worker", "--tenants", "/etc/mesh/tenants",
                                "--tenant", members.join(","),
                                "--listen", format!("0.0.0.0:{WORKER_PORT}"),
                            ],
                            "ports": [
                                { "name": "grpc", "containerPort": WORKER_PORT },
                                { "name": "metrics", "containerPort": METRICS_PORT },
                                { "name": "web", "containerPort": WEB_PORT },
                            ],
                            "env": env,
                            "resources": {
                                "requests": { "cpu": "250m", "memory": "128Mi" },
                                "limits": { "cpu": "2", "memory": "1Gi" },
                            },
                            "readinessProbe": probe(2),
                            "livenessProbe": probe(10),
                            "volumeMounts": [{ "name": "tenants", "mountPath": "/etc/mesh/tenants", "readOnly": true }],
                        }],
                        "volumes": [{ "name": "tenants", "configMap": { "name": "mesh-tenants", "items": items } }],
                    },
                },
            },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(&name, options, group),
            "spec": {
                "clusterIP": "None",
                "selector": labels(group),
                "ports": [
                    { "name": "grpc", "port": WORKER_PORT, "targetPort": "grpc", "appProtocol": "kubernetes.io/h2c" },
                    { "name": "web", "port": WEB_PORT, "targetPort": "web", "appProtocol": "http" },
                ],
            },
        }),
        json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": metadata(&name, options, group),
            "spec": {
                "minAvailable": options.replicas.saturating_sub(1).max(1),
                "selector": { "matchLabels": labels(group) },
            },
        }),
        json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": metadata(&name, options, group),
            "spec": {
                "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": name },
                "minReplicas": options.replicas.max(1),
                "maxReplicas": options.replicas.max(1) * 4,
                "metrics": [{
                    "type": "Resource",
                    "resource": { "name": "cpu", "target": { "type": "Utilization", "averageUtilization": 70 } },
                }],
            },
        }),
    ]
}

/// The control plane: the admin API and the ops console, switches shared through Redis with
/// every group's pods (which follow it and report what they applied), no workers.
fn control_docs(items: &[Value], options: &Options) -> [Value; 2] {
    let admin_port = CONTROL_ADMIN_PORT;
    [
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata("mesh-control", options, "control"),
            "spec": {
                // one writer of its own state folder; switches live in Redis, so a restart loses
                // nothing
                "replicas": 1,
                "strategy": { "type": "Recreate" },
                "selector": { "matchLabels": labels("control") },
                "template": {
                    "metadata": { "labels": labels("control") },
                    "spec": {
                        "securityContext": {
                            "runAsNonRoot": true,
                            "runAsUser": 65532,
                            "seccompProfile": { "type": "RuntimeDefault" },
                        },
                        "containers": [{
                            "name": "control",
                            "image": options.image,
                            "args": ["up", "--control-only", "--tenants", "/etc/mesh/tenants"],
                            "ports": [
                                { "name": "admin", "containerPort": admin_port },
                                { "name": "web", "containerPort": WEB_PORT },
                            ],
                            "env": [
                                json!({ "name": "MESH_ADMIN_LISTEN", "value": format!("0.0.0.0:{admin_port}") }),
                                json!({ "name": "MESH_WEB_LISTEN", "value": format!("0.0.0.0:{WEB_PORT}") }),
                                // the console beyond loopback: this Service is for the ops network
                                json!({ "name": "MESH_WEB_CONSOLE", "value": "true" }),
                                json!({ "name": "MESH_STATE_DIR", "value": "/var/lib/mesh" }),
                                secret_env("MESH_ADMIN_TOKEN"),
                                secret_env("MESH_STATE_REDIS_URL"),
                                secret_env("MESH_NODE_CREDENTIAL"),
                            ],
                            "securityContext": {
                                "allowPrivilegeEscalation": false,
                                "readOnlyRootFilesystem": true,
                                "capabilities": { "drop": ["ALL"] },
                            },
                            "resources": {
                                "requests": { "cpu": "50m", "memory": "64Mi" },
                                "limits": { "cpu": "1", "memory": "256Mi" },
                            },
                            "readinessProbe": { "tcpSocket": { "port": admin_port }, "periodSeconds": 5 },
                            "volumeMounts": [
                                { "name": "tenants", "mountPath": "/etc/mesh/tenants", "readOnly": true },
                                { "name": "state", "mountPath": "/var/lib/mesh" },
                            ],
                        }],
                        "volumes": [
                            { "name": "tenants", "configMap": { "name": "mesh-tenants", "items": items } },
                            { "name": "state", "emptyDir": {} },
                        ],
                    },
                },
            },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata("mesh-control", options, "control"),
            "spec": {
                // the ops network only: no LoadBalancer
                "type": "ClusterIP",
                "selector": labels("control"),
                "ports": [
                    { "name": "admin", "port": admin_port, "targetPort": "admin", "appProtocol": "kubernetes.io/h2c" },
                    { "name": "web", "port": WEB_PORT, "targetPort": "web", "appProtocol": "http" },
                ],
            },
        }),
    ]
}

/// The proxy in front, routing by tenant to each group's Service: its configuration, its
/// Deployment and the load-balanced Service clients reach.
fn proxy_docs(
    tenants: &Tenants,
    replicas: BTreeMap<String, Vec<String>>,
    options: &Options,
) -> Result<[Value; 3], DeployError> {
    let proxy = haproxy::render(
        tenants,
        &Haproxy {
            listen: "0.0.0.0:7400".into(),
            replicas,
            // as many as the autoscaler may run
            dns_slots: Some(options.replicas.max(1) * 4),
            maxconn: 0,
            web: Some(haproxy::HaproxyWeb {
                listen: format!("0.0.0.0:{WEB_PORT}"),
                port: WEB_PORT,
            }),
        },
    )?;
    Ok([
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata("mesh-proxy", options, "proxy"),
            "data": { "haproxy.cfg": proxy },
        }),
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata("mesh-proxy", options, "proxy"),
            "spec": {
                "replicas": 2,
                "selector": { "matchLabels": labels("proxy") },
                "template": {
                    "metadata": { "labels": labels("proxy") },
                    "spec": {
                        // the image's own unprivileged user (haproxy, uid 99)
                        "securityContext": {
                            "runAsNonRoot": true,
                            "runAsUser": 99,
                            "seccompProfile": { "type": "RuntimeDefault" },
                        },
                        "containers": [{
                            "name": "haproxy",
                            "image": "haproxy:2.6",
                            // out of the load balancer's endpoints before it stops routing
                            "lifecycle": { "preStop": { "sleep": { "seconds": PRE_STOP_SECONDS } } },
                            "securityContext": {
                                "allowPrivilegeEscalation": false,
                                "capabilities": { "drop": ["ALL"] },
                            },
                            "args": ["-f", "/usr/local/etc/haproxy/haproxy.cfg"],
                            "ports": [
                                { "name": "grpc", "containerPort": 7400 },
                                { "name": "web", "containerPort": WEB_PORT },
                            ],
                            "readinessProbe": { "tcpSocket": { "port": 7400 }, "periodSeconds": 5 },
                            "volumeMounts": [{ "name": "config", "mountPath": "/usr/local/etc/haproxy", "readOnly": true }],
                        }],
                        "volumes": [{ "name": "config", "configMap": { "name": "mesh-proxy" } }],
                    },
                },
            },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata("mesh", options, "proxy"),
            "spec": {
                "type": "LoadBalancer",
                "selector": labels("proxy"),
                "ports": [
                    { "name": "grpc", "port": 7400, "targetPort": "grpc", "appProtocol": "kubernetes.io/h2c" },
                    { "name": "web", "port": WEB_PORT, "targetPort": "web", "appProtocol": "http" },
                ],
            },
        }),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A public key (P-256) for a tenant's user tokens.
    const PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEA4ZN7WDXQrcB19GPPNeG2qkuuSJB
48Z6hpVrtaoSiaopf9Y0K5OLnuzQIQvLJSeiarX5leiWFUaLdE+XqN619Q==
-----END PUBLIC KEY-----
";

    /// A tenant whose token is in the environment variable `<ID>_TOKEN` and broker password
    /// in `<ID>_BROKER_PASSWORD`, neither set here.
    fn tenant(id: &str, extra: &str) -> String {
        let var = id.to_uppercase();
        format!(
            "id = \"{id}\"\ndisplay_name = \"{id}\"\ndata_namespace = \"{id}\"\n\
             [credentials]\ntoken_env = \"{var}_TOKEN\"\n\
             [broker]\nuser = \"mesh-{id}\"\npassword_env = \"{var}_BROKER_PASSWORD\"\n{extra}"
        )
    }

    fn docs(yaml: &str) -> Vec<Value> {
        yaml.split("---\n")
            .skip(1)
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    #[test]
    fn key_files_are_mounted_where_their_tenant_names_them_and_secrets_stay_in_their_group() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        std::fs::write(dir.path().join("keys/newco.pem"), PUBLIC_KEY).unwrap();
        std::fs::write(
            dir.path().join("newco.toml"),
            tenant(
                "newco",
                "[isolation]\nprocess = \"own\"\n[users]\nissuer = \"newco\"\n\
                 public_key_file = \"keys/newco.pem\"\nalgorithm = \"ES256\"\n\
                 [services.message]\nversion = \"v1\"\n[services.channel]\nversion = \"v1\"\n\
                 depends_on = [\"message\"]\n[channels.site]\nkind = \"webhook\"\n\
                 agent = \"agent-1\"\nsecret_env = \"NEWCO_SITE_SECRET\"\n\
                 send_url = \"https://chat.example.com/out\"\n",
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("shop.toml"), tenant("shop", "")).unwrap();
        // rendered where the secrets are not: they go into the Secret, not through here
        let load = |dir: &Path| Tenants::load_without_secrets(dir, mesh_api::CONTRACTS).unwrap();
        let tenants = load(dir.path());
        let docs = docs(&render(&tenants, dir.path(), &Options::default()).unwrap());
        let config_map = docs
            .iter()
            .find(|d| d["metadata"]["name"] == "mesh-tenants")
            .unwrap();
        assert_eq!(config_map["data"]["keys..newco.pem"], PUBLIC_KEY);
        let deployment = |name: &str| {
            docs.iter()
                .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == name)
                .unwrap()
                .clone()
        };
        let newco = deployment("mesh-newco");
        let pod = &newco["spec"]["template"]["spec"];
        let items = pod["volumes"][0]["configMap"]["items"].as_array().unwrap();
        assert!(
            items.contains(&json!({ "key": "keys..newco.pem", "path": "keys/newco.pem" })),
            "{items:?}"
        );
        assert!(items.contains(&json!({ "key": "newco.toml", "path": "newco.toml" })));
        let env_of = |deployment: &Value| -> Vec<String> {
            deployment["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["name"].as_str().unwrap().to_owned())
                .collect()
        };
        let (newco_env, shop_env) = (env_of(&newco), env_of(&deployment("mesh-shared")));
        assert!(newco_env.contains(&"NEWCO_BROKER_PASSWORD".to_owned()));
        assert!(newco_env.contains(&"NEWCO_TOKEN".to_owned()));
        // a channel's secret too, its group's only
        assert!(
            newco_env.contains(&"NEWCO_SITE_SECRET".to_owned()),
            "{newco_env:?}"
        );
        assert!(
            !newco_env.contains(&"SHOP_TOKEN".to_owned()),
            "{newco_env:?}"
        );
        assert!(
            !newco_env.contains(&"SHOP_BROKER_PASSWORD".to_owned()),
            "{newco_env:?}"
        );
        assert!(shop_env.contains(&"SHOP_BROKER_PASSWORD".to_owned()));
        assert!(!shop_env.contains(&"NEWCO_SITE_SECRET".to_owned()));
        assert!(
            !shop_env.contains(&"NEWCO_BROKER_PASSWORD".to_owned()),
            "{shop_env:?}"
        );
        assert!(newco_env.contains(&"MESH_TELEMETRY_PROMETHEUS_LISTEN".to_owned()));
        assert_eq!(
            newco["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
            METRICS_PORT.to_string()
        );
        // HAProxy finds each group's pods through its headless Service
        let service = docs
            .iter()
            .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "mesh-newco")
            .unwrap();
        assert_eq!(service["spec"]["clusterIP"], "None");
        let proxy = docs
            .iter()
            .find(|d| d["metadata"]["name"] == "mesh-proxy" && d["kind"] == "ConfigMap")
            .unwrap();
        assert!(
            proxy["data"]["haproxy.cfg"]
                .as_str()
                .unwrap()
                .contains("server-template newco_ 8 mesh-newco.mesh.svc.cluster.local:7501 proto h2 check check-proto h2 resolvers dns")
        );
        // and browsers, routed alike to each pod's web port, which every worker serves
        assert!(newco_env.contains(&"MESH_WORKER_WEB_LISTEN".to_owned()));
        assert!(proxy["data"]["haproxy.cfg"].as_str().unwrap().contains(
            "server-template newco_ 8 mesh-newco.mesh.svc.cluster.local:7480 check check-proto h2 port 7501 resolvers dns"
        ));
        assert_eq!(service["spec"]["ports"][1]["port"], WEB_PORT);

        // a key outside the folder cannot be in the ConfigMap: said, naming tenant and field
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("k.pem"), PUBLIC_KEY).unwrap();
        std::fs::write(
            dir.path().join("newco.toml"),
            tenant(
                "newco",
                &format!(
                    "[users]\nissuer = \"newco\"\npublic_key_file = \"{}\"\nalgorithm = \"ES256\"\n",
                    outside.path().join("k.pem").display()
                ),
            ),
        )
        .unwrap();
        let tenants = load(dir.path());
        let err = render(&tenants, dir.path(), &Options::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "tenant newco: users.public_key_file names a file outside the tenants folder"
            ),
            "{err}"
        );
    }
}

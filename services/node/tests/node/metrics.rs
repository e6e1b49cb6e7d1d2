//! The metrics where operators already look: `mesh up` with a Prometheus scrape endpoint, a
//! chat through it on RabbitMQ, and `GET /metrics` read as Prometheus reads it.
//!
//! The node's exposition is valid for Prometheus's own linter (`promtool check metrics`, from
//! Debian's `prometheus` package, which `.ci/test` installs); it holds, per tenant and per
//! process, the calls, the events, the storage consumer's lag, the bulkheads, the switches and
//! the tenants' states; and every series the shipped alert rules and Grafana dashboard
//! (`ops/prometheus/alerts.yml`, `ops/grafana/mesh.json`) query is one it serves.

use crate::support;

use std::{
    collections::BTreeSet,
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use mesh_api::message::v1 as message;
use support::{MeshUp, Users, tenants_folder};

const OPS_TOKEN: &str = "metrics-test-ops-token";

/// The value of the sample `name` whose labels include every `label="value"` of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The sample names and label names of an exposition (`rpc_server_call_duration_seconds_count`,
/// `tenant`, ...).
fn names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, rest) = line.split_once(['{', ' ']).unwrap_or((line, ""));
        names.insert(name.to_owned());
        // `k="v",k2="v2"}`: a label name runs to its `=`, its value to the next unescaped `"`
        let mut rest = rest;
        while let Some((label, value)) = rest.split_once("=\"") {
            names.insert(label.trim_start_matches(',').to_owned());
            let mut escaped = false;
            let end = value
                .char_indices()
                .find(|&(_, c)| {
                    let closes = c == '"' && !escaped;
                    escaped = c == '\\' && !escaped;
                    closes
                })
                .map_or(value.len(), |(i, _)| i + 1);
            rest = &value[end..];
            if rest.starts_with('}') {
                break;
            }
        }
    }
    names
}

/// The metric names a PromQL text mentions (the mesh's own: `mesh_*`, `rpc_*`).
fn queried(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let word_start = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if word_start && (text[i..].starts_with("mesh_") || text[i..].starts_with("rpc_")) {
            let end = text[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(text.len(), |n| i + n);
            found.insert(text[i..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    found
}

async fn scrape(at: &str) -> String {
    let response = reqwest::get(format!("http://{at}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_serves_every_process_metrics_per_tenant_as_prometheus_reads_them() {
    // two business lines of their own per run (their queues on the shared broker are theirs),
    // one in the shared process, one in a process of its own
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let (a, b) = (format!("prom{run}"), format!("solo{run}"));
    let file = |id: &str, own: bool| {
        format!(
            "id = \"{id}\"\ndisplay_name = \"Metrics test\"\ndata_namespace = \"{id}\"\n\
             [credentials]\ntoken = \"{id}-secret-token\"\n{}",
            if own {
                "[isolation]\nprocess = \"own\"\n"
            } else {
                ""
            }
        )
    };
    let dir = tenants_folder(
        &[],
        &[
            (&format!("{a}.toml"), &file(&a, false)),
            (&format!("{b}.toml"), &file(&b, true)),
        ],
    );
    let mut up = MeshUp::start(
        dir.path(),
        &[
            ("MESH_AMQP_URI", support::LOCAL_AMQP),
            ("MESH_ADMIN_TOKEN", OPS_TOKEN),
            ("MESH_TELEMETRY_PROMETHEUS_LISTEN", "127.0.0.1:0"),
        ],
    )
    .await;
    let admin_at = up.admin_address().await;
    let metrics_at = up
        .output
        .wait_for("the metrics endpoint", |l| {
            l.starts_with("metrics at http://")
        })
        .await
        .trim_start_matches("metrics at http://")
        .trim_end_matches("/metrics")
        .to_owned();
    // both workers serve, in whichever order they said so
    let mut serving = BTreeSet::new();
    while serving.len() < 2 {
        let line = up
            .output
            .wait_for("both workers", |l| {
                l.starts_with("serving group=shared")
                    || l.starts_with(&format!("serving group={b}"))
            })
            .await;
        serving.insert(support::field(&line, "group").to_owned());
    }
    let users = Users::of(dir.path());
    let channel = up.channel().await;

    // a chat in each tenant: alice writes to bob, bob reads it (a MessageRead event that the
    // storage consumer stores); a switch off for a only
    for tenant in [&a, &b] {
        let mut messages = message::MessageCaller::new(channel.clone());
        let sent = messages
            .send(
                &users.ctx(tenant, "alice"),
                message::SendRequest {
                    conversation_id: "c-metrics".into(),
                    from_user: "alice".into(),
                    to_user: "bob".into(),
                    body: "hello".into(),
                    client_msg_id: "m-1".into(),
                },
            )
            .await
            .expect("alice's message is accepted")
            .message
            .unwrap();
        messages
            .mark_read(
                &users.ctx(tenant, "bob"),
                message::MarkReadRequest {
                    conversation_id: "c-metrics".into(),
                    user_id: "bob".into(),
                    terminal_id: "phone".into(),
                    up_to_seq: sent.seq,
                },
            )
            .await
            .expect("bob reads it");
        // a terminal attached and gone: a stream, timed in its own series
        let terminal = mesh_gateway::Terminal::connect(
            &users.ctx(tenant, "carol"),
            channel.clone(),
            channel.clone(),
            "carol",
            "phone",
            mesh_api::locator::v1::TerminalKind::Phone,
        )
        .await
        .expect("carol attaches");
        drop(terminal);
    }
    // calls that take no credential (health, reflection) naming made-up tenants make no series
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for i in 0..5 {
        let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest::default());
        request
            .metadata_mut()
            .insert("x-mesh-tenant", format!("madeup{i}").parse().unwrap());
        health.check(request).await.expect("health answers anyone");
    }
    support::switch_recommend(&admin_at, OPS_TOKEN, &a, false, "metrics test").await;

    // the storage consumer's lag shows once it took both receipts
    let started = Instant::now();
    let text = loop {
        let text = scrape(&metrics_at).await;
        let stored = |tenant: &str| {
            sample(
                &text,
                "mesh_event_lag_seconds_count",
                &[
                    ("tenant", tenant),
                    ("consumer", "storage"),
                    ("event", "MessageRead"),
                ],
            )
            .is_some_and(|n| n >= 1.0)
        };
        let streamed = |tenant: &str| {
            sample(
                &text,
                "rpc_server_stream_duration_seconds_count",
                &[
                    ("tenant", tenant),
                    ("rpc_method", "Attach"),
                    ("service_name", "mesh-worker"),
                ],
            )
            .is_some_and(|n| n >= 1.0)
        };
        let queued = |tenant: &str| {
            sample(
                &text,
                "mesh_queue_messages",
                &[("tenant", tenant), ("state", "dead_letters")],
            )
            .is_some()
        };
        if stored(&a) && stored(&b) && streamed(&a) && streamed(&b) && queued(&a) && queued(&b) {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no storage lag, Attach stream or queue depth for both tenants within 30 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    assert!(
        !text.contains("tenant=\"madeup"),
        "a tenant nobody vouched for is no series"
    );
    // a stream's lifetime is no call's latency: Attach is in no call percentile
    assert_eq!(
        sample(
            &text,
            "rpc_server_call_duration_seconds_count",
            &[("rpc_method", "Attach")]
        ),
        None,
        "streams are timed in rpc_server_stream_duration_seconds only"
    );
    assert_eq!(
        sample(
            &text,
            "mesh_queue_messages",
            &[("tenant", &a), ("state", "dead_letters")]
        ),
        Some(0.0),
        "nothing dead-lettered"
    );

    // Prometheus's own linter takes it: one family each, valid names, types and samples
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; .ci/test installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let linted = promtool.wait_with_output().unwrap();
    assert!(
        linted.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&linted.stdout),
        String::from_utf8_lossy(&linted.stderr)
    );

    // per tenant and per process: each tenant's calls in the worker that served them, and at
    // the front door
    for (tenant, group) in [(&a, "shared"), (&b, b.as_str())] {
        for method in ["Send", "MarkRead"] {
            let at_worker = sample(
                &text,
                "rpc_server_call_duration_seconds_count",
                &[
                    ("tenant", tenant),
                    ("rpc_method", method),
                    ("outcome", "ok"),
                    ("mesh_worker_group", group),
                ],
            );
            assert_eq!(at_worker, Some(1.0), "{tenant} {method} in group {group}");
            let at_front_door = sample(
                &text,
                "rpc_server_call_duration_seconds_count",
                &[
                    ("tenant", tenant),
                    ("rpc_method", method),
                    ("service_name", "mesh-front-door"),
                ],
            );
            assert_eq!(
                at_front_door,
                Some(1.0),
                "{tenant} {method} at the front door"
            );
        }
        let published = sample(
            &text,
            "mesh_events_total",
            &[
                ("tenant", tenant),
                ("event", "MessageSent"),
                ("operation", "publish"),
                ("outcome", "ok"),
            ],
        );
        assert_eq!(
            published,
            Some(1.0),
            "{tenant}'s MessageSent published once"
        );
        assert_eq!(
            sample(
                &text,
                "mesh_tenant_serving",
                &[("tenant", tenant), ("state", "serving")]
            ),
            Some(1.0)
        );
        assert!(
            sample(
                &text,
                "mesh_bulkhead_capacity",
                &[("tenant", tenant), ("mesh_worker_group", group)]
            )
            .is_some_and(|n| n > 0.0),
            "{tenant}'s bulkheads in {group}"
        );
        assert_eq!(
            sample(
                &text,
                "mesh_worker_scraped",
                &[("mesh_worker_group", group)]
            ),
            Some(1.0)
        );
    }
    assert_eq!(
        sample(
            &text,
            "mesh_switch_off",
            &[
                ("tenant", &a),
                ("target", "recommend"),
                ("changed_by", "ops")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "mesh_switch_off", &[("tenant", &b)]),
        None,
        "the switch is a's only"
    );

    // what operators are given to look at and be paged by asks only for series (and labels)
    // served here
    let served = names(&text);
    let ops_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../ops");
    let alerts = std::fs::read_to_string(format!("{ops_dir}/prometheus/alerts.yml")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ops_dir}/grafana/mesh.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut exprs = vec![alerts];
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    let asked: BTreeSet<String> = exprs.iter().flat_map(|e| queried(e)).collect();
    assert!(asked.len() >= 8, "the rules and dashboard query {asked:?}");
    let missing: Vec<&String> = asked.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "queried but not served: {missing:?}\nserved: {served:?}"
    );

    // b's worker dies: while it restarts, the node says it could not read it (the alert
    // MeshWorkerNotScraped counts on that), and the exposition stays valid
    let pid = sample(&text, "target_info", &[("mesh_worker_group", &b)])
        .map(|_| {
            text.lines()
                .find(|l| {
                    l.starts_with("target_info{")
                        && l.contains(&format!("mesh_worker_group=\"{b}\""))
                })
                .and_then(|l| l.split("process_pid=\"").nth(1))
                .and_then(|rest| rest.split('"').next())
                .unwrap()
                .to_owned()
        })
        .expect("b's worker is in the scrape");
    support::signal(&pid, "-KILL");
    let killed = Instant::now();
    loop {
        let text = scrape(&metrics_at).await;
        if sample(&text, "mesh_worker_scraped", &[("mesh_worker_group", &b)]) == Some(0.0) {
            assert_eq!(
                sample(
                    &text,
                    "mesh_worker_scraped",
                    &[("mesh_worker_group", "shared")]
                ),
                Some(1.0)
            );
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "b's worker never read as not scraped:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_alone_serves_its_tenants_and_switches_as_a_node_would() {
    // paipai starts with recommend off (its file's switch defaults)
    let dir = tenants_folder(&["mall", "paipai"], &[]);
    let paipai = dir.path().join("paipai.toml");
    let text = std::fs::read_to_string(&paipai).unwrap()
        + "\n[switches]\nservices_off = [\"recommend\"]\n";
    std::fs::write(&paipai, text).unwrap();
    let port = support::free_port();
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args([
            "worker",
            "--tenant",
            "mall",
            "--tenant",
            "paipai",
            "--listen",
            "127.0.0.1:0",
            "--tenants",
        ])
        .arg(dir.path())
        .env(
            "MESH_TELEMETRY_PROMETHEUS_LISTEN",
            format!("127.0.0.1:{port}"),
        )
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let at = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let text = loop {
        if let Ok(response) = reqwest::get(format!("http://{at}/metrics")).await {
            let text = response.text().await.unwrap();
            if text.contains("mesh_tenant_serving") {
                break text;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the worker's metrics"
        );
        // polling the worker's endpoint until it serves its first scrape
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for tenant in ["mall", "paipai"] {
        assert_eq!(
            sample(
                &text,
                "mesh_tenant_serving",
                &[("tenant", tenant), ("state", "serving")]
            ),
            Some(1.0),
            "{text}"
        );
    }
    assert_eq!(
        sample(
            &text,
            "mesh_switch_off",
            &[
                ("tenant", "paipai"),
                ("target", "recommend"),
                ("changed_by", "config")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "mesh_switch_off", &[("tenant", "mall")]),
        None
    );
    let _ = worker.kill().await;
}

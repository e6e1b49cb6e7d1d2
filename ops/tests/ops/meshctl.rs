//! The real `meshctl` binary against a real `mesh up` (supervisor, worker processes, front door,
//! admin API) on loopback: switches degrade one tenant at once and survive a restart, tenants
//! are onboarded at run time, an automatic rule trips under injected latency and restores when
//! calm, and every bad input fails with a clear message and its exit code.
//!
//! `mesh` is the binary beside `meshctl` (built by `cargo test --workspace`); if it is missing
//! (`cargo test -p mesh-ops` on a fresh tree) the test builds it.

use crate::support;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use mesh_api::order::v1 as order;
use mesh_testkit::MeshUp;
use serde_json::Value;
use support::{Mesh, TOKEN, ctl, ctx, mesh_binary, shipped_tenants_with};

fn scopes(list: &Value) -> Vec<String> {
    list["switches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["scope"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_2_off_for_one_tenant_degrades_it_at_once_and_survives_a_restart() {
    let tenants = shipped_tenants_with(&["mall", "finance", "paipai"], &[]);
    let state = tempfile::tempdir().unwrap();
    let mesh = Mesh::up(tenants.path(), state.path(), 2).await;
    assert_eq!(mesh.suggest("mall", "dev-mall-token").await.0, None);
    assert!(
        mesh.ok(&["switch", "list"])
            .await
            .contains("every switch is on")
    );

    let off = mesh
        .ok(&[
            "switch", "off", "--tier", "2", "--tenant", "mall", "--reason", "drill 42",
        ])
        .await;
    assert!(off.contains("tier>=2@mall is off"), "{off}");
    // counted: the one process serving mall (finance's own process applied it too, but does
    // not serve mall)
    assert!(off.contains("applied by 1 process(es)"), "{off}");
    // the command answers once every process applied it: the very next call is degraded
    assert_eq!(
        mesh.suggest("mall", "dev-mall-token").await,
        (Some("tier>=2@mall".into()), 0)
    );
    let (paipai, products) = mesh.suggest("paipai", "dev-paipai-token").await;
    assert_eq!(paipai, None, "paipai keeps recommend");
    assert!(products > 0);

    let list = mesh.json(&["switch", "list"]).await;
    let switch = &list["switches"][0];
    assert_eq!(scopes(&list), ["tier>=2@mall"]);
    assert_eq!(switch["tenant"], "mall");
    assert_eq!(switch["tier"], 2);
    assert_eq!(switch["changed_by"], "ops");
    assert_eq!(switch["reason"], "drill 42");
    let table = mesh.ok(&["switch", "list"]).await;
    assert!(
        table.contains("tier>=2@mall") && table.contains("drill 42"),
        "{table}"
    );
    let status = mesh.json(&["status"]).await;
    let recent = &status["recent_degraded"][0];
    assert_eq!(recent["tenant"], "mall");
    assert_eq!(recent["switch"], "tier>=2@mall");
    assert!(recent["method"].as_str().unwrap().contains("Suggest"));
    assert_eq!(status["processes"].as_array().unwrap().len(), 2);
    let find = |list: &str, tenant: &str| {
        status[list]
            .as_array()
            .unwrap()
            .iter()
            .filter(|row| row["tenant"] == tenant)
            .cloned()
            .collect::<Vec<_>>()
    };
    let mall_bulkheads = find("bulkheads", "mall");
    assert_eq!(
        mall_bulkheads.len(),
        2,
        "one per dependency (locator, gateway): {mall_bulkheads:?}"
    );
    assert!(mall_bulkheads.iter().all(|b| b["capacity"] == 64));
    assert_eq!(find("load", "mall")[0]["degraded"], 1);
    // what the workers served, per tenant and method (they report every second)
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = mesh.json(&["status"]).await;
        let suggest = status["calls"].as_array().unwrap().iter().find(|c| {
            c["tenant"] == "mall" && c["service"] == "recommend" && c["method"] == "Suggest"
        });
        if let Some(suggest) = suggest.filter(|c| c["degraded"] == 1) {
            assert_eq!(suggest["calls"], 2, "{suggest}");
            assert_eq!(suggest["errors"], 0, "{suggest}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no served calls in status: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // a restart keeps the switch: the workers get it before they serve their first call
    mesh.stop().await;
    let mesh = Mesh::up(tenants.path(), state.path(), 2).await;
    assert_eq!(
        mesh.suggest("mall", "dev-mall-token").await.0.as_deref(),
        Some("tier>=2@mall")
    );
    assert_eq!(
        scopes(&mesh.json(&["switch", "list"]).await),
        ["tier>=2@mall"]
    );

    // switched on by the scope `switch list` shows; the next call is served again
    let on = mesh.ok(&["switch", "on", "tier>=2@mall"]).await;
    assert!(on.contains("tier>=2@mall is on again"), "{on}");
    let (degraded, products) = mesh.suggest("mall", "dev-mall-token").await;
    assert_eq!(degraded, None);
    assert_eq!(products, 3);
    let again = mesh.ok(&["switch", "on", "tier>=2@mall"]).await;
    assert!(again.contains("was not off"), "{again}");

    // a method for every tenant, then the service for one
    mesh.ok(&["switch", "off", "recommend.Suggest"]).await;
    assert_eq!(
        mesh.suggest("paipai", "dev-paipai-token")
            .await
            .0
            .as_deref(),
        Some("recommend.Suggest@all")
    );
    mesh.ok(&["switch", "on", "recommend.Suggest"]).await;
    // (finance runs no recommend: a switch of it for finance is refused; a tier is not)
    mesh.ok(&["switch", "off", "--tier", "2", "--tenant", "finance"])
        .await;
    assert_eq!(
        mesh.suggest("finance", "dev-finance-token")
            .await
            .0
            .as_deref(),
        Some("tier>=2@finance"),
        "finance runs in its own process, which applied it too"
    );
    assert_eq!(mesh.suggest("paipai", "dev-paipai-token").await.0, None);
    mesh.stop().await;
}

const NEWCO: &str = r#"
id = "newco"
display_name = "New Co"
data_namespace = "newco"
[credentials]
token = "newco-secret-token"
"#;

const SOLO: &str = r#"
id = "solo"
display_name = "Solo"
data_namespace = "solo"
[credentials]
token = "solo-secret-token"
[isolation]
process = "own"
"#;

fn tenant_pid(list: &Value, tenant: &str) -> u64 {
    list["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == tenant)
        .unwrap_or_else(|| panic!("{tenant} not listed: {list}"))["pid"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_added_at_run_time_is_served_without_restarting_the_others() {
    let tenants = shipped_tenants_with(&["mall", "finance"], &[]);
    let state = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let newco = files.path().join("newco.toml");
    let solo = files.path().join("solo.toml");
    std::fs::write(&newco, NEWCO).unwrap();
    std::fs::write(&solo, SOLO).unwrap();
    let newco = newco.to_str().unwrap();
    let solo = solo.to_str().unwrap();
    let mut mesh = Mesh::up(tenants.path(), state.path(), 2).await;

    // checked by the mesh, and without one against the folder
    let checked = mesh.ok(&["tenant", "check", newco]).await;
    assert!(
        checked.contains("tenant newco would run in process group shared"),
        "{checked}"
    );
    let dir = tenants.path().to_str().unwrap();
    let local = ctl(&["tenant", "check", solo, "--tenants", dir], &[]).await;
    assert_eq!(local.code, 0, "{}", local.stderr);
    assert!(
        local.stdout.contains("process group solo"),
        "{}",
        local.stdout
    );

    let before = mesh.json(&["tenant", "list"]).await;
    let (mall_pid, finance_pid) = (tenant_pid(&before, "mall"), tenant_pid(&before, "finance"));

    // shared: served by the process already running mall
    let added = mesh.json(&["tenant", "add", newco]).await;
    assert_eq!(added["added"][0]["id"], "newco");
    assert_eq!(
        added["added"][0]["pid"], mall_pid,
        "served by mall's process"
    );
    assert_eq!(
        mesh.suggest("newco", "newco-secret-token").await,
        (None, 3),
        "newco is served with the defaults"
    );
    assert!(
        tenants.path().join("newco.toml").exists(),
        "kept for the next start"
    );

    // own process: a new worker, the others untouched
    let table = mesh.ok(&["tenant", "add", solo]).await;
    assert!(table.contains("tenant solo is served by pid"), "{table}");
    let serving = mesh.wait_line("solo's process", "serving group=solo").await;
    let list = mesh.json(&["tenant", "list"]).await;
    let solo_pid = tenant_pid(&list, "solo");
    assert!(serving.contains(&format!("pid={solo_pid}")), "{serving}");
    assert!(![mall_pid, finance_pid].contains(&solo_pid));
    assert_eq!(
        tenant_pid(&list, "mall"),
        mall_pid,
        "mall was not restarted"
    );
    assert_eq!(tenant_pid(&list, "finance"), finance_pid);
    assert_eq!(tenant_pid(&list, "newco"), mall_pid);
    for t in list["tenants"].as_array().unwrap() {
        assert_eq!(t["health"], "serving", "{t}");
    }
    assert_eq!(mesh.suggest("solo", "solo-secret-token").await.0, None);

    // switches reach a process started later, before its first call
    mesh.ok(&["switch", "off", "recommend@solo"]).await;
    assert_eq!(
        mesh.suggest("solo", "solo-secret-token").await.0.as_deref(),
        Some("recommend@solo")
    );

    // onboarding twice is refused by name
    let twice = mesh.ctl(&["tenant", "add", newco]).await;
    assert_eq!(twice.code, 1);
    assert!(
        twice.stderr.contains("newco.toml") && twice.stderr.contains("exists already"),
        "{}",
        twice.stderr
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_rule_trips_under_injected_latency_and_restores_when_calm() {
    let rule = r#"
[[auto_degrade]]
name = "protect-core"
watch_tier = 1
p99_ms_above = 100
switch_off_tiers_from = 2
window_secs = 2
calm_secs = 2
min_calls = 10
"#;
    let tenants = shipped_tenants_with(&["mall", "paipai"], &[("mall", rule)]);
    let state = tempfile::tempdir().unwrap();
    let mesh = Mesh::up(tenants.path(), state.path(), 1).await;

    // mall's core calls keep coming, from a few concurrent callers, until told to stop
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let callers: Vec<_> = (0..6)
        .map(|_| {
            let mut orders = order::OrderCaller::new(mesh.channel.clone());
            let stopping = stopping.clone();
            tokio::spawn(async move {
                let mall = ctx("mall", "dev-mall-token");
                let started = Instant::now();
                while !*stopping.borrow() && started.elapsed() < Duration::from_secs(60) {
                    let _ = orders
                        .list_orders(
                            &mall,
                            order::ListOrdersRequest {
                                user_id: "u-1".into(),
                                limit: 5,
                            },
                        )
                        .await;
                    // 6 callers at most ~50/s each: well inside mall's 500 calls/s, so the
                    // rate limit never answers the suggest calls below
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();

    let wait_for = |want: bool| {
        let mesh = &mesh;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let list = mesh.json(&["switch", "list"]).await;
                if list["switches"].as_array().unwrap().is_empty() != want {
                    return list;
                }
                assert!(
                    Instant::now() < deadline,
                    "rule did not {} within 30 s",
                    if want { "trip" } else { "restore" }
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };

    // calm traffic never trips it
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(scopes(&mesh.json(&["switch", "list"]).await).is_empty());

    let faults = mesh
        .json(&[
            "fault",
            "delay",
            "150",
            "--tenant",
            "mall",
            "--service",
            "order",
        ])
        .await;
    assert_eq!(faults["faults"][0]["delay_ms"], 150);
    let tripped = wait_for(true).await;
    let switch = &tripped["switches"][0];
    assert_eq!(switch["scope"], "tier>=2@mall");
    assert_eq!(switch["changed_by"], "auto:protect-core");
    assert!(
        switch["reason"].as_str().unwrap().contains("p99"),
        "{switch}"
    );
    // `switch list` shows the rule's decision as it is taken; the workers apply it a moment
    // later (a rule does not wait for them, as an operator's `switch off` does)
    mesh.answered_by(("mall", "dev-mall-token"), Some("tier>=2@mall"))
        .await;
    assert_eq!(
        mesh.suggest("paipai", "dev-paipai-token").await.0,
        None,
        "only mall's rule tripped"
    );

    mesh.json(&["fault", "clear", "--tenant", "mall", "--service", "order"])
        .await;
    wait_for(false).await;
    mesh.answered_by(("mall", "dev-mall-token"), None).await;

    stop.send(true).unwrap();
    for caller in callers {
        caller.await.unwrap();
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_fails_clearly_with_a_non_zero_exit() {
    let tenants = shipped_tenants_with(&["mall"], &[]);
    let state = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let mesh = Mesh::up(tenants.path(), state.path(), 1).await;

    let fails = |args: &'static [&'static str], code: i32, says: &'static [&'static str]| {
        let mesh = &mesh;
        async move {
            let out = mesh.ctl(args).await;
            assert_eq!(out.code, code, "meshctl {args:?}: {}", out.stderr);
            for s in says {
                assert!(
                    out.stderr.contains(s),
                    "meshctl {args:?}: {:?} lacks {s:?}",
                    out.stderr
                );
            }
        }
    };
    fails(
        &["switch", "off", "nope", "--tenant", "mall"],
        1,
        &["unknown switch", "unknown service \"nope\"", "recommend"],
    )
    .await;
    fails(
        &["switch", "off", "recommend.Nope"],
        1,
        &["recommend has no method \"Nope\"", "Suggest"],
    )
    .await;
    fails(&["switch", "off", "--tier", "7"], 1, &["7 is not a tier"]).await;
    fails(
        &["switch", "off", "recommend", "--tenant", "ghost"],
        1,
        &["unknown tenant \"ghost\"", "mall"],
    )
    .await;
    // mall does not run push (it names no notifier): nothing to switch off for it
    fails(
        &["switch", "off", "push", "--tenant", "mall"],
        1,
        &["tenant mall does not run push", "it runs: ", "recommend"],
    )
    .await;
    fails(&["switch", "off"], 2, &["which switch?"]).await;
    fails(&["switch", "off", "tier>=two"], 2, &["tier>=two"]).await;
    fails(
        &["fault", "delay", "100", "--tenant", "ghost"],
        1,
        &["unknown tenant \"ghost\""],
    )
    .await;

    // a bad tenant file is refused with the runtime's error, naming the file and the field
    let bad = files.path().join("badco.toml");
    std::fs::write(
        &bad,
        "id = \"badco\"\ndisplay_name = \"Bad\"\ndata_namespace = \"badco\"\n[credentials]\ntoken = \"badco-secret-token\"\n[limits]\nburst = \"many\"\n",
    )
    .unwrap();
    let bad = bad.to_str().unwrap();
    for args in [vec!["tenant", "check", bad], vec!["tenant", "add", bad]] {
        let out = mesh.ctl(&args).await;
        assert_eq!(out.code, 1, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("badco.toml") && out.stderr.contains("limits.burst"),
            "{args:?}: {}",
            out.stderr
        );
    }
    // a bad service setting is refused the same way, at once, and nothing is kept or started:
    // it would have taken down the process shared with mall and paipai
    for (file, body, field) in [
        (
            "zeroco.toml",
            "id = \"zeroco\"\ndisplay_name = \"Zero\"\ndata_namespace = \"zeroco\"\n[credentials]\ntoken = \"zeroco-secret-token\"\n[services.recommend.settings]\nmax_suggestions = 0\n",
            "services.recommend.settings.max_suggestions",
        ),
        (
            "typoco.toml",
            "id = \"typoco\"\ndisplay_name = \"Typo\"\ndata_namespace = \"typoco\"\n[credentials]\ntoken = \"typoco-secret-token\"\n[services.recommend.settings]\nmax_sugestions = 4\n",
            "services.recommend.settings.max_sugestions`: unknown setting; did you mean `max_suggestions`?",
        ),
    ] {
        let path = files.path().join(file);
        std::fs::write(&path, body).unwrap();
        let path = path.to_str().unwrap();
        for args in [vec!["tenant", "check", path], vec!["tenant", "add", path]] {
            let out = mesh.ctl(&args).await;
            assert_eq!(out.code, 1, "{args:?}: {}", out.stderr);
            assert!(
                out.stderr.contains(file) && out.stderr.contains(field),
                "{args:?}: {}",
                out.stderr
            );
        }
        assert!(
            !tenants.path().join(file).exists(),
            "a refused file is not kept"
        );
        // offline too, with the very same check
        let dir = tenants.path().to_str().unwrap();
        let local = ctl(&["tenant", "check", path, "--tenants", dir], &[]).await;
        assert_eq!(local.code, 1, "{}", local.stderr);
        assert!(
            local.stderr.contains(file) && local.stderr.contains(field),
            "{}",
            local.stderr
        );
    }
    assert_eq!(
        mesh.suggest("mall", "dev-mall-token").await.0,
        None,
        "mall still served"
    );

    let dir = tenants.path().to_str().unwrap();
    let local = ctl(&["tenant", "check", bad, "--tenants", dir], &[]).await;
    assert_eq!(local.code, 1);
    assert!(local.stderr.contains("limits.burst"), "{}", local.stderr);
    assert!(
        !tenants.path().join("badco.toml").exists(),
        "a refused tenant file is not kept"
    );
    let missing = files.path().join("missing.toml");
    let out = mesh
        .ctl(&["tenant", "add", missing.to_str().unwrap()])
        .await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("cannot read") && out.stderr.contains("missing.toml"),
        "{}",
        out.stderr
    );

    // credentials: missing, wrong, a tenant's
    let admin = mesh.admin.as_str();
    let out = ctl(&["switch", "list"], &[("MESH_ADMIN", admin)]).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("no ops credential"), "{}", out.stderr);
    for wrong in ["wrong-credential-123", "dev-mall-token"] {
        let out = ctl(
            &["--token", wrong, "switch", "list"],
            &[("MESH_ADMIN", admin)],
        )
        .await;
        assert_eq!(out.code, 4, "{}", out.stderr);
        assert!(
            out.stderr.contains("refused the ops credential"),
            "{}",
            out.stderr
        );
    }

    // dead letters live in RabbitMQ: a mesh on the embedded bus says so; a bad queue is named
    let out = mesh.ctl(&["dlq", "list"]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("dead letters are kept by RabbitMQ")
            && out.stderr.contains("MESH_AMQP_URI"),
        "{}",
        out.stderr
    );
    let out = mesh
        .ctl(&[
            "dlq",
            "show",
            "mesh.nobody.order.v1.message",
            "--tenant",
            "nobody",
        ])
        .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("unknown tenant \"nobody\""),
        "{}",
        out.stderr
    );
    let out = mesh
        .ctl(&[
            "dlq",
            "replay",
            "mesh.paipai.order.v2.message",
            "--tenant",
            "mall",
        ])
        .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("is not a queue of tenant mall; its queues: mesh.mall.message.v1.storage, mesh.mall.order.v1.message"),
        "{}",
        out.stderr
    );

    // no mesh there
    let out = ctl(
        &["--admin", "127.0.0.1:1", "switch", "list"],
        &[("MESH_OPS_TOKEN", TOKEN)],
    )
    .await;
    assert_eq!(out.code, 3);
    assert!(
        out.stderr
            .contains("cannot reach the mesh admin API at 127.0.0.1:1")
            && out.stderr.contains("mesh up"),
        "{}",
        out.stderr
    );

    // none of it changed anything or hurt the mesh
    assert!(
        mesh.ok(&["switch", "list"])
            .await
            .contains("every switch is on")
    );
    assert_eq!(mesh.suggest("mall", "dev-mall-token").await.0, None);
    mesh.stop().await;
}

/// The admin API over TLS: meshctl trusts the mesh's CA with `--ca-file` (and presents its own
/// certificate with `--cert-file`/`--key-file` when the mesh asks for one); without them it
/// cannot reach the mesh, and says so with exit code 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshctl_reaches_an_admin_api_over_tls_only_trusting_its_ca() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let pki = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: String| {
        let path = pki.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = write("ca.pem", ca_params.self_signed(&ca_key).unwrap().pem());
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: &[&str], stem: &str| {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap().pem();
        (
            write(&format!("{stem}.pem"), cert),
            write(&format!("{stem}.key"), key.serialize_pem()),
        )
    };
    let (cert, key) = leaf(&["127.0.0.1"], "mesh");
    let (client_cert, client_key) = leaf(&["ops.example"], "ops");

    let tenants = shipped_tenants_with(&["mall"], &[]);
    let state = tempfile::tempdir().unwrap();
    let mesh = Mesh::up_with(
        tenants.path(),
        state.path(),
        1,
        &[
            ("MESH_TLS_CERT_FILE", &cert),
            ("MESH_TLS_KEY_FILE", &key),
            ("MESH_TLS_CLIENT_CA_FILE", &ca),
        ],
    )
    .await;
    let https = format!("https://{}", mesh.admin);
    let with = |extra: &[(&'static str, String)]| {
        let mut env = vec![
            ("MESH_ADMIN", https.clone()),
            ("MESH_OPS_TOKEN", TOKEN.to_owned()),
        ];
        env.extend(extra.iter().cloned());
        env
    };
    let run = |env: Vec<(&'static str, String)>| async move {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ctl(&["tenant", "list", "--json"], &env).await
    };
    let trusted = run(with(&[
        ("MESH_ADMIN_CA_FILE", ca.clone()),
        ("MESH_ADMIN_CERT_FILE", client_cert.clone()),
        ("MESH_ADMIN_KEY_FILE", client_key.clone()),
    ]))
    .await;
    assert_eq!(trusted.code, 0, "{}", trusted.stderr);
    assert!(trusted.stdout.contains("\"mall\""), "{}", trusted.stdout);
    // no client certificate: the mesh asks for one
    let anonymous = run(with(&[("MESH_ADMIN_CA_FILE", ca.clone())])).await;
    assert_eq!(anonymous.code, 3, "{}", anonymous.stderr);
    assert!(
        anonymous.stderr.contains("TLS with the mesh admin API")
            && anonymous.stderr.contains("client certificate"),
        "{}",
        anonymous.stderr
    );
    // no trust in the mesh's CA
    let untrusting = run(with(&[
        ("MESH_ADMIN_CERT_FILE", client_cert.clone()),
        ("MESH_ADMIN_KEY_FILE", client_key.clone()),
    ]))
    .await;
    assert_eq!(untrusting.code, 3, "{}", untrusting.stderr);
    assert!(
        untrusting.stderr.contains("TLS with the mesh admin API")
            && untrusting.stderr.contains("--ca-file"),
        "{}",
        untrusting.stderr
    );
    // a --ca-file that is no certificate is named before anything is tried
    let garbage = write("garbage.pem", "not a certificate".into());
    let named = run(with(&[("MESH_ADMIN_CA_FILE", garbage.clone())])).await;
    assert_eq!(named.code, 2, "{}", named.stderr);
    assert!(
        named
            .stderr
            .contains(&format!("--ca-file {garbage} holds no PEM certificate")),
        "{}",
        named.stderr
    );
    // plain HTTP/2 to the TLS port cannot reach it
    let plain = ctl(
        &["tenant", "list"],
        &[
            ("MESH_ADMIN", &format!("http://{}", mesh.admin)),
            ("MESH_OPS_TOKEN", TOKEN),
        ],
    )
    .await;
    assert_eq!(plain.code, 3, "{}", plain.stderr);
    mesh.stop().await;
}

/// The problem an output states about `file`: the rest of the line that is about `file` (the
/// file is where the line starts saying something, `file: ...`) and names `naming` (the same
/// whatever folder the file was read from).
fn problem_in(output: &str, file: &str, naming: &str) -> Option<String> {
    let about = format!("{file}: ");
    output
        .lines()
        .filter(|line| line.contains(naming))
        .find_map(|line| line.find(&about).map(|at| line[at..].trim_end().to_owned()))
}

/// Every broken tenant file kept in `tests/broken-tenants` (one defect each, its second line
/// saying what the refusal must name) is refused with the same problem, naming the file and
/// the field, by `meshctl tenant check` offline, `tenant check` and `tenant add` against a
/// running mesh, and `mesh up` at start-up; nothing is kept, and the running mesh keeps
/// serving its tenant throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_tenant_files_are_refused_identically_everywhere() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken-tenants");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 30, "{} broken files", files.len());

    // mall runs: a broken file may take its namespace or its credential
    let tenants = shipped_tenants_with(&["mall"], &[]);
    let state = tempfile::tempdir().unwrap();
    let mesh = Mesh::up(tenants.path(), state.path(), 1).await;
    let dir = tenants.path().to_str().unwrap().to_owned();
    for path in &files {
        let file = path.file_name().unwrap().to_str().unwrap();
        let naming = std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("# refused naming: ").map(str::to_owned))
            .unwrap_or_else(|| panic!("{file} says what its refusal names"));
        let path_arg = path.to_str().unwrap();

        let offline = ctl(&["tenant", "check", path_arg, "--tenants", &dir], &[]).await;
        let check = mesh.ctl(&["tenant", "check", path_arg]).await;
        let add = mesh.ctl(&["tenant", "add", path_arg]).await;
        // start-up: the shipped defaults and mall, and the broken file
        let folder = shipped_tenants_with(&["mall"], &[]);
        std::fs::copy(path, folder.path().join(file)).unwrap();
        let started = tokio::time::timeout(
            Duration::from_secs(60),
            MeshUp::command(mesh_binary(), folder.path(), "127.0.0.1:0")
                .arg("--config")
                .arg(state.path().join("no-such-mesh.toml"))
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{file}: mesh up neither refused nor served within 60 s"))
        .unwrap();
        let start_up = String::from_utf8_lossy(&started.stderr).into_owned();
        assert!(!started.status.success(), "{file}: mesh up started");

        let mut problems = Vec::new();
        for (how, code, output) in [
            ("offline tenant check", offline.code, &offline.stderr),
            ("tenant check", check.code, &check.stderr),
            ("tenant add", add.code, &add.stderr),
            ("mesh up", 1, &start_up),
        ] {
            assert_eq!(code, 1, "{file}: {how} exit code: {output}");
            let problem = problem_in(output, file, &naming)
                .unwrap_or_else(|| panic!("{file}: {how} does not name {naming}: {output}"));
            problems.push((how, problem));
        }
        for (how, problem) in &problems[1..] {
            assert_eq!(
                problem, &problems[0].1,
                "{file}: {how} states the problem as offline tenant check does"
            );
        }
        assert!(
            !tenants.path().join(file).exists(),
            "{file}: a refused file is not kept"
        );
    }
    assert_eq!(
        mesh.suggest("mall", "dev-mall-token").await.0,
        None,
        "mall still served"
    );
}

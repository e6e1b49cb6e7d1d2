//! `mesh up` with real processes: every tenant is served through the front door by its own
//! group's worker, including a tenant whose file the test writes; a killed worker is restarted
//! while the other tenants keep answering; SIGTERM stops everything.

use crate::support;

use std::time::{Duration, Instant};

use mesh_api::{order::v1 as order1, recommend::v1 as recommend};
use support::{MeshUp, Users, alive, ctx, field, mesh_binary, signal, tenants_folder};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_run_in_supervised_processes_behind_one_front_door() {
    // the shipped tenants plus one the test onboards with a file of its own
    let dir = tenants_folder(
        &["mall", "finance", "paipai"],
        &[(
            "acme.toml",
            "id = \"acme\"\ndisplay_name = \"Acme\"\ndata_namespace = \"acme\"\n[credentials]\ntoken = \"acme-secret-token\"\n",
        )],
    );

    let mut up = MeshUp::start(dir.path(), &[]).await;
    let supervisor_pid = up.pid();
    let channel = up.channel().await;
    let output = &mut up.output;
    let mut serving = Vec::new();
    for _ in 0..2 {
        serving.push(
            output
                .wait_for("a serving group", |l| l.starts_with("serving "))
                .await,
        );
    }
    let group = |name: &str| {
        serving
            .iter()
            .find(|l| field(l, "group") == name)
            .unwrap()
            .clone()
    };
    let (shared, finance) = (group("shared"), group("finance"));
    assert_eq!(field(&shared, "tenants"), "acme,mall,paipai");
    assert_eq!(
        field(&finance, "tenants"),
        "finance",
        "finance runs in a process of its own"
    );
    assert_ne!(field(&shared, "pid"), field(&finance, "pid"));

    let mut recommend = recommend::RecommendCaller::new(channel.clone());
    let mut orders = order1::OrderCaller::new(channel.clone());
    let suggest = recommend::SuggestRequest::default;
    let mall = ctx("mall", "dev-mall-token");
    let finance_ctx = ctx("finance", "dev-finance-token");

    // each tenant gets what its config says, from the same code
    assert_eq!(
        recommend
            .suggest(&mall, suggest())
            .await
            .unwrap()
            .products
            .len(),
        5
    );
    assert_eq!(
        recommend
            .suggest(&ctx("paipai", "dev-paipai-token"), suggest())
            .await
            .unwrap()
            .products
            .len(),
        3
    );
    assert_eq!(
        recommend
            .suggest(&ctx("acme", "acme-secret-token"), suggest())
            .await
            .unwrap()
            .products
            .len(),
        3,
        "a new tenant file is served"
    );
    let status = recommend
        .suggest(&finance_ctx, suggest())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("tenant finance does not run recommend"),
        "{status:?}"
    );
    let status = orders
        .get_order(
            &ctx("paipai", "dev-paipai-token"),
            order1::GetOrderRequest {
                order_id: "o-1".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::FailedPrecondition,
            "tenant paipai runs order v2, not v1"
        )
    );
    let status = orders
        .get_order(
            &finance_ctx,
            order1::GetOrderRequest {
                order_id: "o-1".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::NotFound, "order \"o-1\" of tenant finance"),
        "finance's process answers"
    );
    let status = recommend
        .suggest(&ctx("mall", "dev-paipai-token"), suggest())
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "paipai's credential cannot act as mall"
    );

    // the chat platform through the front door: a terminal's stream reaches its tenant's
    // worker, whose message service pushes to it; in the shared process and in finance's own
    // (each terminal holds its user's token, signed with the tenant's development key)
    let users = Users::of(dir.path());
    for tenant in ["mall", "finance"] {
        let mut phone = mesh_gateway::Terminal::connect(
            &users.ctx(tenant, "bob"),
            channel.clone(),
            channel.clone(),
            "bob",
            "phone",
            mesh_api::locator::v1::TerminalKind::Phone,
        )
        .await
        .unwrap_or_else(|status| panic!("{tenant}: attaching through the front door: {status}"));
        let sent = mesh_api::message::v1::MessageCaller::new(channel.clone())
            .send(
                &users.ctx(tenant, "alice"),
                mesh_api::message::v1::SendRequest {
                    conversation_id: "c-1".into(),
                    from_user: "alice".into(),
                    to_user: "bob".into(),
                    body: format!("hello from {tenant}"),
                    client_msg_id: "m-1".into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(sent.delivered_terminals, ["phone"], "{tenant}");
        let push = tokio::time::timeout(Duration::from_secs(10), phone.next())
            .await
            .expect("a push within 10 s")
            .unwrap()
            .expect("the stream is open");
        match push.payload {
            Some(mesh_api::gateway::v1::push::Payload::Message(m)) => {
                assert_eq!(m.body, format!("hello from {tenant}"))
            }
            other => panic!("{tenant}: expected a message, got {other:?}"),
        }
    }

    // kill finance's worker; mall keeps answering throughout, finance comes back
    let calm = tokio::spawn({
        let mut recommend = recommend::RecommendCaller::new(channel.clone());
        let mall = mall.clone();
        async move {
            let (mut ok, started) = (0, Instant::now());
            while started.elapsed() < Duration::from_secs(3) {
                recommend
                    .suggest(&mall, recommend::SuggestRequest::default())
                    .await
                    .expect("mall answers while finance restarts");
                ok += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            ok
        }
    });
    let old_pid = field(&finance, "pid").to_owned();
    signal(&old_pid, "-KILL");
    let exited = output
        .wait_for("finance exit", |l| l.starts_with("exited group=finance"))
        .await;
    assert!(exited.contains("SIGKILL"), "{exited}");
    let restarted = output
        .wait_for("finance restart", |l| {
            l.starts_with("serving group=finance")
        })
        .await;
    assert_ne!(field(&restarted, "pid"), old_pid);
    let status = orders
        .get_order(
            &finance_ctx,
            order1::GetOrderRequest {
                order_id: "o-1".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::NotFound,
        "finance is served again: {status:?}"
    );
    let calm_calls = calm.await.unwrap();
    assert!(calm_calls > 50, "mall kept answering: {calm_calls} calls");
    assert!(
        alive(field(&shared, "pid")),
        "the shared worker was never touched"
    );

    // SIGTERM stops the workers, then the supervisor
    signal(&supervisor_pid, "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(20), up.child.wait())
        .await
        .expect("mesh up stops")
        .unwrap();
    assert!(status.success(), "{status}");
    for pid in [field(&shared, "pid"), field(&restarted, "pid")] {
        assert!(!alive(pid), "worker {pid} outlived the supervisor");
    }
}

#[tokio::test]
async fn a_dependency_cycle_is_refused_at_start_up_and_named() {
    let dir = tenants_folder(
        &[],
        &[(
            "loop.toml",
            "id = \"loop\"\ndisplay_name = \"Loop\"\ndata_namespace = \"loop\"\n[credentials]\ntoken = \"loop-secret-token\"\n[services.locator]\ndepends_on = [\"message\"]\n",
        )],
    );
    let (stderr, stdout) = refused_at_start(dir.path()).await;
    assert!(
        stderr.contains("loop.toml: field `services.locator.depends_on`: dependency cycle: locator -> message -> locator"),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "nothing was started");
}

#[tokio::test]
async fn workers_listening_everywhere_without_an_address_to_reach_them_are_refused() {
    let dir = support::tenants_folder(&["mall"], &[]);
    let (stderr, _) =
        refused_at_start_with(dir.path(), &[("MESH_WORKERS_LISTEN_HOST", "0.0.0.0")]).await;
    assert!(
        stderr.contains("workers.advertise_host: listen_host \"0.0.0.0\" is every interface"),
        "{stderr}"
    );
}

/// Runs `mesh up` on the tenants in `dir`, which must refuse to start; its stderr and stdout.
async fn refused_at_start(dir: &std::path::Path) -> (String, String) {
    refused_at_start_with(dir, &[]).await
}

/// [`refused_at_start`] with more environment.
async fn refused_at_start_with(dir: &std::path::Path, env: &[(&str, &str)]) -> (String, String) {
    let out = MeshUp::command(mesh_binary(), dir, "127.0.0.1:0")
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "mesh up must refuse to start");
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn a_bad_service_setting_is_refused_at_start_up_and_named() {
    let dir = tenants_folder(
        &["mall"],
        &[(
            "zeroco.toml",
            "id = \"zeroco\"\ndisplay_name = \"Zero\"\ndata_namespace = \"zeroco\"\n[credentials]\ntoken = \"zeroco-secret-token\"\n[services.recommend.settings]\nmax_suggestions = 0\n",
        )],
    );
    let (stderr, stdout) = refused_at_start(dir.path()).await;
    assert!(
        stderr
            .contains("zeroco.toml: field `services.recommend.settings.max_suggestions`: 0 is not"),
        "{stderr}"
    );
    assert!(!stdout.contains("serving"), "no process was started");
}

/// `mesh up` says first which deployment config it read, or that it found none and what that
/// leaves off: started in another folder, it must not run on defaults without saying so.
#[tokio::test]
async fn mesh_up_says_which_config_it_read_or_that_it_found_none() {
    use tokio::io::AsyncBufReadExt;
    let dir = tenants_folder(&["mall"], &[]);
    let first_line = |config: std::path::PathBuf| {
        let dir = dir.path().to_owned();
        async move {
            let mut child = MeshUp::command(mesh_binary(), &dir, "127.0.0.1:0")
                .arg("--config")
                .arg(&config)
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
            tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .expect("a first line within 30 s")
                .unwrap()
                .expect("mesh up printed a line")
        }
    };
    let missing = dir.path().join("nowhere/mesh.toml");
    let line = first_line(missing.clone()).await;
    assert!(
        line.starts_with(&format!("config {} not found", missing.display()))
            && line.contains("admin API off"),
        "{line}"
    );
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops/mesh.toml");
    let line = first_line(shipped.clone()).await;
    assert_eq!(line, format!("config {}", shipped.display()));
}

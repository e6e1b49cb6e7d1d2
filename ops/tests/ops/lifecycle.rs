//! The tenant lifecycle through the real `mesh up` and `meshctl`, under a steady call loop
//! from the other tenants: a tenant is added, refused when its process cannot serve it
//! (nothing kept, neighbours untouched), updated (settings, limits, credential rotated with an
//! overlap), moved into a process of its own and back, and removed, while mall's and paipai's
//! calls keep succeeding, every one of them, and the moving tenant's own calls too.
//!
//! Stored data lives in a PostgreSQL database of the test's own (a move needs data outside
//! the workers); `bash .ci/test` starts PostgreSQL.

use crate::support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use mesh_api::recommend::v1 as recommend;
use mesh_testkit::{Db, connect};
use serde_json::Value;
use support::{Mesh, ctx, shipped_tenants_with};
use tokio::task::JoinHandle;
use tonic::{Request, transport::Channel};

const NEWCO: &str = r#"# a business line onboarded at run time
id = "newco"
display_name = "New Co"
data_namespace = "newco"

[credentials]
token = "newco-secret-token"
rotation_overlap_secs = 600
"#;

/// One Suggest call; the answer's product count, or the failure.
async fn suggest(channel: &Channel, tenant: &str, token: &str) -> Result<usize, tonic::Status> {
    let mut client = recommend::recommend_client::RecommendClient::new(channel.clone());
    let mut request = Request::new(recommend::SuggestRequest {
        user_id: "u-1".into(),
        limit: 5,
        ..Default::default()
    });
    ctx(tenant, token).inject(request.metadata_mut()).unwrap();
    request.set_timeout(Duration::from_secs(5));
    Ok(client.suggest(request).await?.into_inner().products.len())
}

/// [`suggest`], its failure's code only.
async fn answered(channel: &Channel, tenant: &str, token: &str) -> Result<usize, tonic::Code> {
    suggest(channel, tenant, token).await.map_err(|s| s.code())
}

/// A tenant's calls from a few callers at once, each one call after another, until stopped:
/// how many, and every failure.
struct Loop {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<(u64, Vec<String>)>>,
}

/// Callers per tenant in a loop.
const CALLERS: usize = 4;

impl Loop {
    fn start(channel: &Channel, tenant: &'static str, token: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..CALLERS)
            .map(|_| {
                let (channel, until) = (channel.clone(), stop.clone());
                tokio::spawn(async move {
                    let (mut calls, mut failed) = (0, Vec::new());
                    while !until.load(Ordering::Relaxed) {
                        calls += 1;
                        if let Err(status) = suggest(&channel, tenant, token).await {
                            failed.push(format!("{:?}: {}", status.code(), status.message()));
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    (calls, failed)
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops it; its calls, asserting none failed.
    async fn stop_without_failures(self, tenant: &str) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let (mut calls, mut failed) = (0, Vec::new());
        for task in self.tasks {
            let (n, mut f) = task.await.unwrap();
            calls += n;
            failed.append(&mut f);
        }
        assert!(
            failed.is_empty(),
            "{} of {tenant}'s {calls} calls failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        assert!(calls > 20, "{tenant} made only {calls} calls");
        calls
    }
}

/// How many schemas of the test's database are named `name` (0 or 1).
async fn schemas_named(db: &Db, name: &str) -> i64 {
    connect(&db.url())
        .await
        .query_one(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0)
}

fn row<'a>(list: &'a Value, tenant: &str) -> Option<&'a Value> {
    list["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == tenant)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_come_change_move_and_go_while_their_neighbours_fail_no_call() {
    let db = Db::create().await;
    let tenants = shipped_tenants_with(&["mall", "paipai", "finance"], &[]);
    let state = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::up_with(
        tenants.path(),
        state.path(),
        2,
        &[("MESH_STORE_POSTGRES", &db.url())],
    )
    .await;
    let mall = Loop::start(&mesh.channel, "mall", "dev-mall-token");
    let paipai = Loop::start(&mesh.channel, "paipai", "dev-paipai-token");
    // the neighbours' loops under way (a call every 2 ms) before the first change
    tokio::time::sleep(Duration::from_millis(300)).await;

    // --- add: served by the shared process before its file is written
    let newco_file = files.path().join("newco.toml");
    std::fs::write(&newco_file, NEWCO).unwrap();
    let newco_path = newco_file.to_str().unwrap();
    let added = mesh.json(&["tenant", "add", newco_path]).await;
    assert_eq!(added["added"][0]["health"], "serving", "{added}");
    assert!(tenants.path().join("newco.toml").exists());
    assert_eq!(
        answered(&mesh.channel, "newco", "newco-secret-token").await,
        Ok(3)
    );
    let newco = Loop::start(&mesh.channel, "newco", "newco-secret-token");

    // --- add refused inside the process: its data namespace is another tenant's schema in
    // the database, which only the worker opening it can find out. Nothing is kept.
    let taken = connect(&db.url()).await;
    taken
        .batch_execute(
            "CREATE SCHEMA mesh_daojia;
             CREATE TABLE mesh_daojia.owner (tenant text PRIMARY KEY);
             INSERT INTO mesh_daojia.owner VALUES ('someone_else');",
        )
        .await
        .unwrap();
    let daojia = files.path().join("daojia.toml");
    std::fs::write(
        &daojia,
        NEWCO
            .replace("newco", "daojia")
            .replace("daojia-secret-token", "daojia-secret-token-1"),
    )
    .unwrap();
    let refused = mesh.ctl(&["tenant", "add", daojia.to_str().unwrap()]).await;
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert!(
        refused.stderr.contains("daojia") && refused.stderr.contains("someone_else"),
        "the process's reason is said: {}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("nothing was changed"),
        "{}",
        refused.stderr
    );
    assert!(
        !tenants.path().join("daojia.toml").exists(),
        "nothing written"
    );
    let list = mesh.json(&["tenant", "list"]).await;
    assert!(row(&list, "daojia").is_none(), "nothing kept: {list}");
    for t in ["mall", "paipai", "finance", "newco"] {
        assert_eq!(row(&list, t).unwrap()["health"], "serving", "{list}");
    }
    let unknown = answered(&mesh.channel, "daojia", "daojia-secret-token-1").await;
    assert_eq!(unknown.unwrap_err(), tonic::Code::Unauthenticated);

    // --- update: a setting and the credential, without a restart; the old credential
    // overlaps, so newco's own loop (still on it) fails nothing
    let shared_pid = row(&list, "newco").unwrap()["pid"].as_u64().unwrap();
    let updated_text = NEWCO.replace("newco-secret-token", "newco-rotated-token")
        + "\n[services.recommend.settings]\nmax_suggestions = 2\n";
    std::fs::write(&newco_file, &updated_text).unwrap();
    let updated = mesh.json(&["tenant", "update", newco_path]).await;
    assert_eq!(
        updated["updated"][0]["pid"], shared_pid,
        "no restart: {updated}"
    );
    assert_eq!(
        answered(&mesh.channel, "newco", "newco-rotated-token").await,
        Ok(2),
        "the new setting and credential hold"
    );
    assert_eq!(
        answered(&mesh.channel, "newco", "newco-secret-token").await,
        Ok(2),
        "the old credential overlaps"
    );
    assert_eq!(
        std::fs::read_to_string(tenants.path().join("newco.toml")).unwrap(),
        updated_text
    );
    // an update the validation refuses changes nothing
    std::fs::write(&newco_file, updated_text.replace("= 2", "= 0")).unwrap();
    let bad = mesh.ctl(&["tenant", "update", newco_path]).await;
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("max_suggestions"), "{}", bad.stderr);
    assert_eq!(
        answered(&mesh.channel, "newco", "newco-rotated-token").await,
        Ok(2)
    );
    // its data stays where it is
    std::fs::write(
        &newco_file,
        updated_text.replace("data_namespace = \"newco\"", "data_namespace = \"newco_b\""),
    )
    .unwrap();
    let moved_data = mesh.ctl(&["tenant", "update", newco_path]).await;
    assert_eq!(moved_data.code, 1);
    assert!(
        moved_data.stderr.contains("data_namespace"),
        "{}",
        moved_data.stderr
    );
    std::fs::write(&newco_file, &updated_text).unwrap();

    // --- move: into a process of its own and back, its calls and its neighbours' unbroken
    let moved = mesh
        .json(&["tenant", "move", "newco", "--process", "own"])
        .await;
    assert_eq!(moved["moved"][0]["group"], "newco", "{moved}");
    let own_pid = moved["moved"][0]["pid"].as_u64().unwrap();
    assert_ne!(own_pid, shared_pid);
    assert!(
        std::fs::read_to_string(tenants.path().join("newco.toml"))
            .unwrap()
            .contains("process = \"own\""),
        "the file says where it runs now"
    );
    assert_eq!(
        answered(&mesh.channel, "newco", "newco-rotated-token").await,
        Ok(2)
    );
    let back = mesh
        .json(&["tenant", "move", "newco", "--process", "shared"])
        .await;
    assert_eq!(back["moved"][0]["pid"], shared_pid, "{back}");
    mesh.wait_line("newco's own process stopping", "stopped group=newco")
        .await;
    let newco_calls = newco.stop_without_failures("newco").await;

    // --- remove: refused from then on as an unknown tenant; the file is kept aside
    let removed = mesh.json(&["tenant", "remove", "newco"]).await;
    assert_eq!(removed["removed"][0]["health"], "removed", "{removed}");
    let gone = answered(&mesh.channel, "newco", "newco-rotated-token").await;
    assert_eq!(gone.unwrap_err(), tonic::Code::Unauthenticated);
    assert!(!tenants.path().join("newco.toml").exists());
    assert!(state.path().join("removed/newco.toml").exists());
    let list = mesh.json(&["tenant", "list"]).await;
    assert!(row(&list, "newco").is_none(), "{list}");
    assert_eq!(
        schemas_named(&db, "mesh_newco").await,
        1,
        "its data stays without --purge-data"
    );

    // --- remove with its data: finance's own process stops, its schema is gone
    assert_eq!(schemas_named(&db, "mesh_finance").await, 1);
    let purged = mesh
        .json(&["tenant", "remove", "finance", "--purge-data"])
        .await;
    assert_eq!(purged["removed"][0]["health"], "removed", "{purged}");
    mesh.wait_line("finance's process stopping", "stopped group=finance")
        .await;
    assert_eq!(schemas_named(&db, "mesh_finance").await, 0, "purged");

    let mall_calls = mall.stop_without_failures("mall").await;
    let paipai_calls = paipai.stop_without_failures("paipai").await;
    println!(
        "calls without a failure: mall {mall_calls}, paipai {paipai_calls}, newco {newco_calls}"
    );
    mesh.stop().await;
    db.drop_database().await;
}

/// `ListOrders` of order v`major` as `user` of mall (a user token): the number of orders, or
/// the failure's code and message.
async fn list_orders(
    channel: &Channel,
    major: u32,
    user: &str,
) -> Result<usize, (tonic::Code, String)> {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tenants");
    let mall = mesh_config::tenant::load_file(
        &folder.join("mall.toml"),
        Some(&folder.join("_defaults.toml")),
        mesh_api::CONTRACTS,
    )
    .unwrap();
    let token = mall.users.unwrap().issue(user, None, 600).unwrap();
    let ctx = mesh_contract::RequestContext::new(mesh_contract::TenantId::new("mall").unwrap())
        .with_user_token(&token);
    let failed = |s: tonic::Status| (s.code(), s.message().to_owned());
    match major {
        1 => {
            let mut client = mesh_api::order::v1::order_client::OrderClient::new(channel.clone());
            let mut request = Request::new(mesh_api::order::v1::ListOrdersRequest {
                user_id: user.into(),
                limit: 5,
            });
            ctx.inject(request.metadata_mut()).unwrap();
            let orders = client.list_orders(request).await.map_err(failed)?;
            Ok(orders.into_inner().orders.len())
        }
        _ => {
            let mut client = mesh_api::order::v2::order_client::OrderClient::new(channel.clone());
            let mut request = Request::new(mesh_api::order::v2::ListOrdersRequest {
                user_id: user.into(),
                limit: 5,
            });
            ctx.inject(request.metadata_mut()).unwrap();
            let orders = client.list_orders(request).await.map_err(failed)?;
            Ok(orders.into_inner().orders.len())
        }
    }
}

/// Calls of mall's order at `major` that the status counts.
fn order_calls(status: &Value, major: &str) -> u64 {
    status["calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["tenant"] == "mall" && c["service"] == "order" && c["major"] == major)
        .map(|c| c["calls"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grey_release_widens_and_rolls_back_while_the_neighbours_fail_no_call() {
    let tenants = shipped_tenants_with(&["mall", "paipai"], &[]);
    let state = tempfile::tempdir().unwrap();
    let mesh = Mesh::up(tenants.path(), state.path(), 1).await;
    let mall = Loop::start(&mesh.channel, "mall", "dev-mall-token");
    let paipai = Loop::start(&mesh.channel, "paipai", "dev-paipai-token");
    let channel = &mesh.channel;

    // mall runs order v1; v2 first for alice
    assert!(list_orders(channel, 1, "alice").await.is_ok());
    let (code, _) = list_orders(channel, 2, "alice").await.unwrap_err();
    assert_eq!(code, tonic::Code::FailedPrecondition, "no grey release yet");
    let started = mesh
        .json(&[
            "grey",
            "widen",
            "order",
            "--tenant",
            "mall",
            "--version",
            "v2",
            "--users",
            "alice",
        ])
        .await;
    let services = started["grey release widened"][0]["services"].to_string();
    assert!(
        services.contains("order@v1+v2(grey:1users,0%)"),
        "{started}"
    );
    assert!(
        list_orders(channel, 2, "alice").await.is_ok(),
        "alice is in it"
    );
    let (code, message) = list_orders(channel, 2, "bob").await.unwrap_err();
    assert_eq!(code, tonic::Code::FailedPrecondition);
    assert!(message.contains("call order v1"), "{message}");
    assert!(
        list_orders(channel, 1, "bob").await.is_ok(),
        "bob stays on v1"
    );
    assert!(
        list_orders(channel, 1, "alice").await.is_ok(),
        "alice may still call v1"
    );

    // widened to everyone by share; never narrowed
    mesh.ok(&[
        "grey",
        "widen",
        "order",
        "--tenant",
        "mall",
        "--percent",
        "100",
    ])
    .await;
    assert!(
        list_orders(channel, 2, "bob").await.is_ok(),
        "bob is in 100 %"
    );
    let narrow = mesh
        .ctl(&[
            "grey",
            "widen",
            "order",
            "--tenant",
            "mall",
            "--percent",
            "50",
        ])
        .await;
    assert_eq!(narrow.code, 1);
    assert!(
        narrow.stderr.contains("does not narrow"),
        "{}",
        narrow.stderr
    );
    // workers report their calls every second
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = mesh.json(&["status"]).await;
        if order_calls(&status, "v2") >= 2 && order_calls(&status, "v1") >= 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "calls per major: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // rolled back: v2 is closed again, v1 serves everyone, the file says v1 only
    mesh.ok(&["grey", "rollback", "order", "--tenant", "mall"])
        .await;
    let (code, _) = list_orders(channel, 2, "alice").await.unwrap_err();
    assert_eq!(code, tonic::Code::FailedPrecondition);
    assert!(list_orders(channel, 1, "alice").await.is_ok());
    let file = std::fs::read_to_string(tenants.path().join("mall.toml")).unwrap();
    assert!(
        !file.contains("grey") && !file.contains("[services.order]"),
        "back as it was: {file}"
    );
    let unknown = mesh
        .ctl(&[
            "grey",
            "widen",
            "ordr",
            "--tenant",
            "mall",
            "--version",
            "v2",
            "--users",
            "a",
        ])
        .await;
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.stderr.contains("does not run ordr"),
        "{}",
        unknown.stderr
    );
    let again = mesh
        .ctl(&["grey", "rollback", "order", "--tenant", "mall"])
        .await;
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("no grey release"), "{}", again.stderr);

    mall.stop_without_failures("mall").await;
    paipai.stop_without_failures("paipai").await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_down_at_start_up_is_served_once_its_dependency_is_back() {
    let db = Db::create().await;
    // paipai's schema belongs to someone else when the mesh starts
    let raw = connect(&db.url()).await;
    raw.batch_execute(
        "CREATE SCHEMA mesh_paipai;
         CREATE TABLE mesh_paipai.owner (tenant text PRIMARY KEY);
         INSERT INTO mesh_paipai.owner VALUES ('someone_else');",
    )
    .await
    .unwrap();
    let tenants = shipped_tenants_with(&["mall", "paipai"], &[]);
    let state = tempfile::tempdir().unwrap();
    let mesh = Mesh::up_with(
        tenants.path(),
        state.path(),
        1,
        &[("MESH_STORE_POSTGRES", &db.url())],
    )
    .await;
    let list = mesh.json(&["tenant", "list"]).await;
    let paipai = row(&list, "paipai").unwrap();
    assert_eq!(paipai["health"], "down", "{list}");
    assert!(
        paipai["reason"].as_str().unwrap().contains("someone_else"),
        "{list}"
    );
    assert_eq!(row(&list, "mall").unwrap()["health"], "serving");
    assert_eq!(
        answered(&mesh.channel, "paipai", "dev-paipai-token").await,
        Err(tonic::Code::Unavailable)
    );
    let mall = Loop::start(&mesh.channel, "mall", "dev-mall-token");

    // the schema is freed: the worker serves paipai on its own, nobody restarts
    raw.batch_execute("DROP SCHEMA mesh_paipai CASCADE")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let list = mesh.json(&["tenant", "list"]).await;
        if row(&list, "paipai").unwrap()["health"] == "serving" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still down: {list}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        answered(&mesh.channel, "paipai", "dev-paipai-token")
            .await
            .is_ok()
    );
    mall.stop_without_failures("mall").await;
    mesh.stop().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_credential_keeps_overlapping_across_a_restart_of_the_mesh() {
    let tenants = shipped_tenants_with(&["mall", "paipai"], &[]);
    let state = tempfile::tempdir().unwrap();
    let mesh = Mesh::up(tenants.path(), state.path(), 1).await;
    let file = tenants.path().join("mall.toml");
    let rotated = std::fs::read_to_string(&file)
        .unwrap()
        .replace("dev-mall-token", "mall-rotated-token");
    let edited = tempfile::tempdir().unwrap();
    let copy = edited.path().join("mall.toml");
    std::fs::write(&copy, &rotated).unwrap();
    // offline, against the folder: a dry run of the update
    let dir = tenants.path().to_str().unwrap();
    let dry = support::ctl(
        &["tenant", "check", copy.to_str().unwrap(), "--tenants", dir],
        &[],
    )
    .await;
    assert!(
        dry.stdout.contains("`tenant update` would apply it"),
        "{}",
        dry.stdout
    );
    mesh.ok(&["tenant", "update", copy.to_str().unwrap()]).await;
    for token in ["mall-rotated-token", "dev-mall-token"] {
        assert!(
            answered(&mesh.channel, "mall", token).await.is_ok(),
            "{token}"
        );
    }
    // nobody else may take the retired credential while it is still accepted
    let taker = edited.path().join("taker.toml");
    std::fs::write(
        &taker,
        NEWCO
            .replace("newco", "taker")
            .replace("taker-secret-token", "dev-mall-token"),
    )
    .unwrap();
    let refused = mesh.ctl(&["tenant", "add", taker.to_str().unwrap()]).await;
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("credential tenant mall retired"),
        "{}",
        refused.stderr
    );
    mesh.stop().await;
    let saved = std::fs::read_to_string(state.path().join("switches.json")).unwrap();
    assert!(
        !saved.contains("dev-mall-token"),
        "only a digest is kept: {saved}"
    );

    let mesh = Mesh::up(tenants.path(), state.path(), 1).await;
    for token in ["mall-rotated-token", "dev-mall-token"] {
        assert!(
            answered(&mesh.channel, "mall", token).await.is_ok(),
            "{token} after the restart"
        );
    }
    assert_eq!(
        answered(&mesh.channel, "mall", "some-other-token").await,
        Err(tonic::Code::Unauthenticated)
    );
    mesh.stop().await;
}

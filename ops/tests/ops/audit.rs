//! Operators as people: each has a credential of their own (`[[admin.operators]]`), and
//! every change they make through `meshctl` is in `meshctl audit` under their name, with the
//! state before and after, refused attempts too, across a restart of the mesh. Wrong
//! credentials from one address are refused outright after a few.

use crate::support;

use mesh_testkit::MeshUp;
use serde_json::Value;
use support::{Mesh, TOKEN, ctl, mesh_binary, shipped_tenants_with};

const ALICE: &str = "alice-ops-credential-0123456789";
const BOB: &str = "bob-ops-credential-0123456789ab";

/// `meshctl ARGS` as the operator holding `token`.
/// `ListSwitches` through the web port's admin route with `token`: the answer as it came.
async fn web_admin(web: &str, token: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(web).await.unwrap();
    let request = format!(
        "POST /admin/v1/ListSwitches HTTP/1.1\r\nhost: {web}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

async fn as_operator(mesh: &Mesh, token: &str, args: &[&str]) -> support::Ctl {
    ctl(
        args,
        &[("MESH_ADMIN", &mesh.admin), ("MESH_OPS_TOKEN", token)],
    )
    .await
}

fn entries(list: &Value) -> Vec<(String, String, String, String, String, String)> {
    list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap().to_owned();
            (
                s("operator"),
                s("action"),
                s("subject"),
                s("before"),
                s("after"),
                s("outcome"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_change_is_in_the_audit_log_under_its_operators_name() {
    let tenants = shipped_tenants_with(&["mall", "paipai"], &[]);
    let state = tempfile::tempdir().unwrap();
    let config = state.path().join("mesh.toml");
    std::fs::write(
        &config,
        format!(
            "[[admin.operators]]\nname = \"alice\"\ntoken_env = \"MESH_TEST_OPS_ALICE\"\n\n\
             [[admin.operators]]\nname = \"bob\"\ntoken = \"{BOB}\"\n"
        ),
    )
    .unwrap();
    // the web port too: the console's admin calls count against the same address
    let web = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let env = [("MESH_TEST_OPS_ALICE", ALICE), ("MESH_WEB_LISTEN", &web)];
    let mesh = Mesh::up_configured(tenants.path(), state.path(), 1, &config, &env).await;

    let off = as_operator(
        &mesh,
        ALICE,
        &[
            "switch",
            "off",
            "--tier",
            "2",
            "--tenant",
            "mall",
            "--reason",
            "incident 7",
        ],
    )
    .await;
    assert_eq!(off.code, 0, "{}", off.stderr);
    // who turned it off is the operator, not a shared "ops"
    let list = mesh.json(&["switch", "list"]).await;
    assert_eq!(list["switches"][0]["changed_by"], "alice");
    let on = as_operator(
        &mesh,
        BOB,
        &["switch", "on", "--tier", "2", "--tenant", "mall"],
    )
    .await;
    assert_eq!(on.code, 0, "{}", on.stderr);
    // a refused change is a change tried: listed, with why
    let bad = tenants.path().join("../bad-tenant.toml");
    std::fs::write(&bad, "id = \"newco\"\n[credentials]\n").unwrap();
    let refused = as_operator(&mesh, ALICE, &["tenant", "add", bad.to_str().unwrap()]).await;
    assert_ne!(refused.code, 0);
    // the shared credential reads as `ops`
    let fault = mesh
        .ctl(&["fault", "delay", "5", "--tenant", "paipai"])
        .await;
    assert_eq!(fault.code, 0, "{}", fault.stderr);
    let removed = as_operator(&mesh, BOB, &["tenant", "remove", "paipai"]).await;
    assert_eq!(removed.code, 0, "{}", removed.stderr);

    let audit = mesh.json(&["audit"]).await;
    assert_eq!(audit["partial"], false);
    let listed = entries(&audit);
    let want = |o: &str, a: &str, subject: &str| (o.to_owned(), a.to_owned(), subject.to_owned());
    let heads: Vec<_> = listed
        .iter()
        .map(|(o, a, s, ..)| (o.clone(), a.clone(), s.clone()))
        .collect();
    assert_eq!(
        heads,
        [
            want("bob", "tenant.remove", "paipai"),
            want("ops", "fault.set", "*@paipai"),
            want("alice", "tenant.add", "bad-tenant.toml"),
            want("bob", "switch.on", "tier>=2@mall"),
            want("alice", "switch.off", "tier>=2@mall"),
        ],
        "newest first"
    );
    let (_, _, _, before, after, outcome) = &listed[4];
    assert_eq!(
        (before.as_str(), after.as_str(), outcome.as_str()),
        ("on", "off", "ok")
    );
    let (_, _, _, before, after, _) = &listed[3];
    assert!(before.starts_with("off (by alice: incident 7)"), "{before}");
    assert_eq!(after, "on");
    assert!(
        listed[2].5.starts_with("refused: InvalidArgument"),
        "{:?}",
        listed[2]
    );
    let (_, _, _, before, after, _) = &listed[1];
    assert_eq!(
        (before.as_str(), after.as_str()),
        ("no delay", "5 ms added")
    );
    let (_, _, _, before, after, _) = &listed[0];
    // the tenant as it stood: group, services, limits, a digest of its file (no secret)
    assert!(
        before.contains("rate=") && before.contains("config="),
        "{before}"
    );
    assert!(
        before.starts_with("group=") && before.contains("order@v2"),
        "{before}"
    );
    assert_eq!(after, "absent");
    let first = &audit["entries"][4];
    assert_eq!(first["reason"], "incident 7");
    assert!(first["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(first["node"].as_str().unwrap().contains("/node-"));
    // filters, and the table people read
    let alice = mesh.json(&["audit", "--operator", "alice"]).await;
    assert_eq!(entries(&alice).len(), 2);
    let paipai = mesh.json(&["audit", "--tenant", "paipai"]).await;
    assert_eq!(entries(&paipai).len(), 2);
    let table = mesh.ok(&["audit", "--limit", "1"]).await;
    assert!(
        table.contains("bob") && table.contains("tenant.remove") && !table.contains("alice"),
        "{table}"
    );

    // kept across a restart of the mesh
    mesh.stop().await;
    let mesh = Mesh::up_configured(tenants.path(), state.path(), 1, &config, &env).await;
    let after_restart = mesh.json(&["audit"]).await;
    assert_eq!(entries(&after_restart), listed);

    // someone guessing: after a few wrong credentials the address is refused outright, even
    // with a right one, so guessing gets nowhere (and it is said in the log at once)
    assert!(web_admin(&web, ALICE).await.starts_with("HTTP/1.1 200"));
    for n in 0..5 {
        let wrong = as_operator(&mesh, &format!("guess-{n:026}"), &["switch", "list"]).await;
        assert_eq!(wrong.code, 4, "a wrong credential: {}", wrong.stderr);
        let wrong = web_admin(&web, &format!("web-guess-{n:022}")).await;
        assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    }
    let blocked = web_admin(&web, ALICE).await;
    assert!(
        blocked.contains("too many wrong ops credentials from this address"),
        "{blocked}"
    );
    let blocked = as_operator(&mesh, ALICE, &["switch", "list"]).await;
    assert_ne!(blocked.code, 0);
    assert!(
        blocked
            .stderr
            .contains("too many wrong ops credentials from this address"),
        "{}",
        blocked.stderr
    );
    mesh.stop().await;
}

#[tokio::test]
async fn two_operators_with_one_credential_do_not_start() {
    let tenants = shipped_tenants_with(&["mall"], &[]);
    let state = tempfile::tempdir().unwrap();
    let config = state.path().join("mesh.toml");
    std::fs::write(
        &config,
        format!("[[admin.operators]]\nname = \"carol\"\ntoken = \"{TOKEN}\"\n"),
    )
    .unwrap();
    let out = MeshUp::command(mesh_binary(), tenants.path(), "127.0.0.1:0")
        .arg("--config")
        .arg(&config)
        .env("MESH_ADMIN_TOKEN", TOKEN)
        .env("MESH_STATE_DIR", state.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("admin.operators[0].token")
            && stderr.contains("another operator's credential"),
        "{stderr}"
    );
}

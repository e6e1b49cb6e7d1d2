//! The web chat and the ops console in a real browser: headless Chromium (Debian's `chromium`
//! and `chromium-driver`, which `bash .ci/test` installs) driven by selenium from
//! `tests/python/browser.py`, against `mesh up` on the machine's RabbitMQ. Two sessions of
//! mall chat, an order from a Python checkout shows up, the console switches recommend off for
//! mall and only mall's chat shows it degraded. The composer loses no word and sends each
//! message once (a double click, sends taking 800 ms while the user types on, Shift+Enter), a
//! hidden tab sends no read receipt, a 4000-character word at a phone's width keeps Send on
//! screen, and a reload keeps the sign-in. An app on another origin calls as mall, whose file
//! allows it (CORS), and is refused as paipai, whose file does not. The screenshots land in
//! `target/screenshots/` (README shows copies from `services/web/screenshots/`).

use crate::support;

use support::{LOCAL_AMQP, MeshUp, Users, python};

const OPS: &str = "ops-browser-suite-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_chat_and_the_console_degrades_one_tenant_only() {
    // one of the tests that load the machine or time a fault: they take turns
    let _heavy = support::heavy().await;
    let chromedriver = std::env::var("MESH_CHROMEDRIVER").unwrap_or("/usr/bin/chromedriver".into());
    assert!(
        std::path::Path::new(&chromedriver).exists(),
        "{chromedriver} is missing: run the suite with `bash .ci/test` (it installs Debian's \
         chromium and chromium-driver), or point MESH_CHROMEDRIVER at one"
    );
    let python = python();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let stubs = support::order_v1_stubs(&python);

    // an app served from another origin (a port of its own) that mall's file allows
    let app_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let shipped = root.join("tenants");
    let mall = std::fs::read_to_string(shipped.join("mall.toml")).unwrap()
        + &format!("\n[web]\nallowed_origins = [\"http://127.0.0.1:{app_port}\"]\n");
    let dir = support::tenants_folder(&["paipai"], &[("mall.toml", &mall)]);
    let mut up = MeshUp::start(
        dir.path(),
        &[("MESH_AMQP_URI", LOCAL_AMQP), ("MESH_ADMIN_TOKEN", OPS)],
    )
    .await;
    up.admin_address().await;
    let web = up.web_address().await;
    up.shared_worker().await;

    let users = Users::of(dir.path());
    let tokens: serde_json::Map<String, serde_json::Value> =
        [("mall", "alice"), ("mall", "bob"), ("paipai", "carol")]
            .into_iter()
            .map(|(tenant, user)| (format!("{user}@{tenant}"), users.token(tenant, user).into()))
            .collect();
    let screenshots = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join("target"))
        .join("screenshots");
    let args = serde_json::json!({
        "web": web,
        "tokens": tokens,
        "ops": OPS,
        "amqp": LOCAL_AMQP,
        "order": format!("o-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        "conversation": format!("desk-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        "new_tenant": format!("web{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        "publisher": root.join("ops/examples/publish_order_created.py"),
        "stubs": stubs.path(),
        "screenshots": screenshots,
        "chromedriver": chromedriver,
        "app_port": app_port,
    });
    let script = root.join("services/node/tests/python/browser.py");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(240),
        tokio::process::Command::new(&python)
            .arg(&script)
            .arg(args.to_string())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser run ends within 4 minutes")
    .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(said.contains("browser: every check passed"), "{said}");
    for page in [
        "chat-mall-customer-degraded",
        "chat-mall-agent",
        "chat-paipai-live",
        "chat-phone",
        "console",
    ] {
        let file = screenshots.join(format!("{page}.png"));
        let png = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            png.starts_with(b"\x89PNG"),
            "{} is not a PNG",
            file.display()
        );
    }
}

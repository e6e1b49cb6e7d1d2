//! A business line on a vhost of its own, as a broker user of its own: `mesh up` (on the
//! machine's RabbitMQ) consumes and publishes its events there, and the shared broker account
//! can neither reach its events nor forge them. Publishers are pika, as a Python service would.

use crate::support;

use support::{MeshUp, python, rabbitmqctl, run, tenants_folder};

/// Runs `rabbitmqctl` (the test creates its vhost and user, and removes them).
/// Removes the vhost and user when the test ends, however it ends.
struct Placement(String);

impl Drop for Placement {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.0])
            .output();
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &self.0])
            .output();
    }
}

/// pika publishing an OrderCreated for alice to `tenant`'s order exchange on `uri`: what the
/// script printed (`published`, or why not).
fn publish(stubs: &std::path::Path, uri: &str, tenant: &str, id: &str) -> String {
    let script = format!(
        "import pika, sys\n\
         from order.v1 import order_pb2\n\
         event = order_pb2.OrderCreated(order=order_pb2.OrderView(order_id={id:?}, user_id='alice',\n\
           total_cents=100, currency='EUR'), conversation_id='c-alice')\n\
         try:\n\
         \x20   c = pika.BlockingConnection(pika.URLParameters({uri:?}))\n\
         except pika.exceptions.AMQPConnectionError as e:\n\
         \x20   print('connection refused:', type(e).__name__); sys.exit(0)\n\
         ch = c.channel(); ch.confirm_delivery()\n\
         try:\n\
         \x20   ch.basic_publish('mesh.{tenant}.order.v1', 'order_created', event.SerializeToString(),\n\
         \x20     pika.BasicProperties(message_id={id:?}, delivery_mode=2,\n\
         \x20       headers={{'x-mesh-tenant': '{tenant}'}}), mandatory=True)\n\
         \x20   print('published')\n\
         except pika.exceptions.ChannelClosedByBroker as e:\n\
         \x20   print('channel closed:', e.reply_code)\n"
    );
    run(std::process::Command::new(python())
        .env("PYTHONPATH", stubs)
        .args(["-c", &script]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forging_events_with_the_shared_broker_account_reaches_nothing_on_a_tenants_own_vhost() {
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let tenant = format!("iso{suffix}");
    let vhost = format!("mesh-test-{suffix}");
    let password = uuid::Uuid::new_v4().simple().to_string();
    let password_env = format!("MESH_TEST_BROKER_PASSWORD_{}", suffix.to_uppercase());
    rabbitmqctl(&["add_vhost", &vhost]);
    let _cleanup = Placement(vhost.clone());
    rabbitmqctl(&["add_user", &vhost, &password]);
    // the vhost is open to its own user only (guest gets no permission there)
    rabbitmqctl(&["set_permissions", "-p", &vhost, &vhost, ".*", ".*", ".*"]);

    let file = format!(
        "id = \"{tenant}\"\ndisplay_name = \"Isolated\"\ndata_namespace = \"{tenant}\"\n\
         [credentials]\ntoken = \"{tenant}-secret-token\"\n\
         [broker]\nvhost = \"{vhost}\"\nuser = \"{vhost}\"\npassword_env = \"{password_env}\"\n"
    );
    // and a tenant whose vhost does not exist: it alone is not served
    let missing = format!("gone{suffix}");
    let missing_file = format!(
        "id = \"{missing}\"\ndisplay_name = \"Gone\"\ndata_namespace = \"{missing}\"\n\
         [credentials]\ntoken = \"{missing}-secret-token\"\n\
         [broker]\nvhost = \"mesh-no-such-vhost-{suffix}\"\n"
    );
    let dir = tenants_folder(
        &["mall"],
        &[
            (&format!("{tenant}.toml"), &file),
            (&format!("{missing}.toml"), &missing_file),
        ],
    );
    let mut up = MeshUp::start(
        dir.path(),
        &[
            ("MESH_AMQP_URI", support::LOCAL_AMQP),
            (&password_env, &password),
        ],
    )
    .await;
    up.shared_worker().await;

    // its exchanges and queues live on its vhost
    let exchanges = rabbitmqctl(&["list_exchanges", "-p", &vhost, "name"]);
    assert!(
        exchanges.contains(&format!("mesh.{tenant}.order.v1")),
        "{exchanges}"
    );

    let stubs = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    run(std::process::Command::new(python())
        .current_dir(&root)
        .args(["-m", "grpc_tools.protoc", "-Icontracts"])
        .arg(format!("--python_out={}", stubs.path().display()))
        .args(["order/v1/order.proto", "mesh/options.proto"]));
    let own = format!("amqp://{vhost}:{password}@127.0.0.1:5672/{vhost}");
    let guest_there = format!("amqp://guest:guest@127.0.0.1:5672/{vhost}");
    // the shared account cannot open the tenant's vhost
    let refused = publish(stubs.path(), &guest_there, &tenant, "forged-1");
    assert!(refused.starts_with("connection refused"), "{refused}");
    // and the tenant's exchange does not exist on the shared vhost: a forged event goes nowhere
    let nowhere = publish(stubs.path(), support::LOCAL_AMQP, &tenant, "forged-2");
    assert_eq!(nowhere.trim(), "channel closed: 404", "{nowhere}");
    // the tenant's own publisher reaches its consumers
    assert_eq!(
        publish(stubs.path(), &own, &tenant, "real-1").trim(),
        "published"
    );

    // the system message is in alice's timeline: the worker consumed it on the tenant's vhost
    let token = run(std::process::Command::new(env!("CARGO_BIN_EXE_mesh"))
        .env(&password_env, &password)
        .args([
            "token",
            "issue",
            "--tenant",
            &tenant,
            "--user",
            "alice",
            "--tenants",
        ])
        .arg(dir.path()));
    let alice = mesh_contract::RequestContext::new(mesh_contract::TenantId::new(&tenant).unwrap())
        .with_user_token(token.trim());
    let bodies = support::timeline_bodies(up.channel().await, &alice, 1).await;
    assert_eq!(bodies.len(), 1, "only the tenant's own event: {bodies:?}");
    assert!(bodies[0].contains("real-1"), "{bodies:?}");

    // the tenant that could not be placed took nobody down with it
    let suggested = mesh_api::recommend::v1::RecommendCaller::new(up.channel().await)
        .suggest(
            &support::ctx("mall", "dev-mall-token"),
            mesh_api::recommend::v1::SuggestRequest::default(),
        )
        .await
        .unwrap();
    assert!(!suggested.products.is_empty());
}

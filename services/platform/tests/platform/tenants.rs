//! What differs between the shipped tenants comes from their files, and bad input is refused
//! with a message naming the tenant and the field.

use crate::support;

use std::{str::FromStr, time::SystemTime};

use mesh_api::{message::v1 as message, recommend::v1 as recommend};
use mesh_contract::{RequestContext, TenantId};
use mesh_platform::{Platform, PlatformError};
use mesh_runtime::{
    Tenants,
    layers::{Switch, SwitchTarget},
};
use mesh_store::{MemoryStore, NewMessage};
use support::{Bus, Node, Store};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

#[tokio::test]
async fn finance_keeps_messages_past_the_others_retention() {
    let node = Node::start(Bus::Embedded, Store::Embedded).await;
    let now = 1_000 * DAY_MS;
    for tenant in support::SHIPPED {
        let old = NewMessage {
            message_id: format!("{tenant}-old"),
            conversation_id: "c".into(),
            from_user: "alice".into(),
            to_user: "bob".into(),
            body: "old".into(),
            sent_at_ms: now - 40 * DAY_MS,
            members_only: false,
            ..Default::default()
        };
        node.store
            .accept(&TenantId::new(tenant).unwrap(), &old)
            .await
            .unwrap();
    }
    let purged = node.platform.purge_expired(now).await.unwrap();
    let purged: Vec<(String, u64)> = purged
        .into_iter()
        .map(|(t, n)| (t.to_string(), n))
        .collect();
    // mall and paipai keep 30 days (tenants/_defaults.toml), finance 2555 (tenants/finance.toml)
    assert_eq!(
        purged,
        [
            ("finance".into(), 0),
            ("mall".into(), 1),
            ("paipai".into(), 1)
        ]
    );
    node.finish().await;
}

async fn suggestions(node: &Node, tenant: &str) -> Result<usize, tonic::Status> {
    let answer = recommend::RecommendCaller::new(node.channel.clone())
        .suggest(
            &node.ctx(tenant),
            recommend::SuggestRequest {
                user_id: "bob".into(),
                ..Default::default()
            },
        )
        .await?;
    Ok(answer.products.len())
}

#[tokio::test]
async fn recommend_switched_off_for_mall_leaves_paipai_served() {
    let node = Node::start(Bus::Embedded, Store::Embedded).await;
    // per-tenant settings: mall shows 5, paipai the default 3, finance does not run recommend
    assert_eq!(suggestions(&node, "mall").await.unwrap(), 5);
    assert_eq!(suggestions(&node, "paipai").await.unwrap(), 3);
    let refused = suggestions(&node, "finance").await.unwrap_err();
    assert!(
        refused
            .message()
            .starts_with("tenant finance does not run recommend"),
        "{refused:?}"
    );

    node.switches.turn_off(Switch {
        tenant: Some(TenantId::new("mall").unwrap()),
        target: SwitchTarget::from_str("recommend").unwrap(),
        reason: "incident drill".into(),
        changed_by: "ops".into(),
        changed_at: SystemTime::now(),
    });
    assert_eq!(
        suggestions(&node, "mall").await.unwrap(),
        0,
        "the contract's degraded answer: empty"
    );
    assert_eq!(suggestions(&node, "paipai").await.unwrap(), 3);
    node.finish().await;
}

#[tokio::test]
async fn bad_sends_are_refused_naming_tenant_and_field() {
    let node = Node::start(Bus::Embedded, Store::Embedded).await;
    let send = |ctx: RequestContext, from: &str, body: String| {
        let mut caller = message::MessageCaller::new(node.channel.clone());
        let from = from.to_owned();
        async move {
            caller
                .send(
                    &ctx,
                    message::SendRequest {
                        conversation_id: "c".into(),
                        from_user: from,
                        to_user: "bob".into(),
                        body,
                        client_msg_id: "m-1".into(),
                    },
                )
                .await
                .unwrap_err()
        }
    };
    let too_big = send(node.user("finance", "alice"), "alice", "x".repeat(4097)).await;
    assert_eq!(too_big.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        too_big.message(),
        "body is 4097 bytes, over tenant finance's limit of 4096 bytes (services.message.settings.max_body_bytes)"
    );
    let empty = send(node.user("mall", "alice"), "alice", String::new()).await;
    assert_eq!(empty.message(), "body is required");
    let spoofed = send(
        node.user("mall", "alice"),
        "system",
        "I am the platform".into(),
    )
    .await;
    assert_eq!(spoofed.code(), tonic::Code::PermissionDenied);
    let spoofed = send(
        node.user("mall", "alice"),
        "System",
        "I am the platform".into(),
    )
    .await;
    assert_eq!(spoofed.code(), tonic::Code::PermissionDenied, "in any case");
    // a backend has no business sending as a person: Send is for USER callers
    let backend = send(node.ctx("mall"), "alice", "hi".into()).await;
    assert_eq!(backend.code(), tonic::Code::PermissionDenied, "{backend:?}");
    // nor does a node: the mesh's own processes never send chat messages
    let node_sends = send(node.node_ctx("mall"), "alice", "hi".into()).await;
    assert_eq!(
        node_sends.code(),
        tonic::Code::PermissionDenied,
        "{node_sends:?}"
    );
    // but for a third-party channel's customers (SendFromChannel), and for them only; no
    // end user sends as one
    let mut messages = message::MessageCaller::new(node.channel.clone());
    let as_channel = |from: &str| message::SendRequest {
        conversation_id: "ch:wx:o1".into(),
        from_user: from.into(),
        to_user: "agent-1".into(),
        body: "from wechat".into(),
        client_msg_id: "in:wx:1".into(),
    };
    let relayed = messages
        .send_from_channel(&node.node_ctx("mall"), as_channel("ch:wx:o1"))
        .await
        .unwrap();
    assert_eq!(relayed.message.unwrap().from_user, "ch:wx:o1");
    let not_a_channel = messages
        .send_from_channel(&node.node_ctx("mall"), as_channel("alice"))
        .await
        .unwrap_err();
    assert_eq!(not_a_channel.code(), tonic::Code::InvalidArgument);
    let by_a_user = messages
        .send_from_channel(&node.user("mall", "alice"), as_channel("ch:wx:o1"))
        .await
        .unwrap_err();
    assert_eq!(by_a_user.code(), tonic::Code::PermissionDenied);
    // (a token naming one is refused before anything else)
    let posing = send(node.user("mall", "ch:wx:o1"), "ch:wx:o1", "hi".into()).await;
    assert_eq!(posing.code(), tonic::Code::Unauthenticated, "{posing:?}");

    let unknown = RequestContext::new(TenantId::new("intruder").unwrap()).with_token("guess");
    let refused = send(unknown, "alice", "hi".into()).await;
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(refused.message().contains("intruder"), "{refused:?}");
    let wrong_token = node.ctx("paipai").with_token("dev-mall-token");
    assert_eq!(
        send(wrong_token, "alice", "hi".into()).await.code(),
        tonic::Code::Unauthenticated
    );
    node.finish().await;
}

#[tokio::test]
async fn a_bad_service_setting_names_tenant_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tenants");
    std::fs::copy(
        shipped.join("_defaults.toml"),
        dir.path().join("_defaults.toml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("newco.toml"),
        "id = \"newco\"\ndisplay_name = \"NewCo\"\ndata_namespace = \"newco\"\n\
         [credentials]\ntoken = \"newco-dev-token\"\n\
         [services.message.settings]\nretention_days = \"forever\"\n",
    )
    .unwrap();
    // refused as the file loads, naming file and key
    let err = Tenants::load(dir.path(), mesh_api::CONTRACTS)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "newco.toml: field `services.message.settings.retention_days`: \"forever\" is not a \
             whole number from 1 to 36500"
        ),
        "{err}"
    );
    // and a config built in code, by the platform, with the same check
    let shipped = Tenants::load(&shipped, mesh_api::CONTRACTS).unwrap();
    let mut bad = shipped.tenants["mall"].clone();
    bad.services.get_mut("message").unwrap().settings.insert(
        "retention_days".into(),
        figment::value::Value::from("forever"),
    );
    let platform = Platform::new(
        "node",
        "127.0.0.1:9".parse().unwrap(),
        std::sync::Arc::new(mesh_embedded::EmbeddedBus::default()),
        std::sync::Arc::new(MemoryStore::default()),
    );
    let err = platform.add_tenant(&bad).await.unwrap_err();
    assert!(matches!(err, PlatformError::Setting { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("tenant mall: services.message.settings.retention_days: "),
        "{err}"
    );
}

#[test]
fn the_queues_of_each_tenant_follow_its_services_and_majors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tenants");
    let tenants = Tenants::load(&dir, mesh_api::CONTRACTS).unwrap();
    let queues = |id: &str| mesh_platform::queues(&tenants.tenants[id]).unwrap();
    // the queues of the services added with `mesh-codegen new-service` that the tenant's file
    // enables, first: derived from their descriptors, whatever is registered
    let added = |id: &str| -> Vec<String> {
        let config = &tenants.tenants[id];
        mesh_platform::plugins::SERVICES
            .iter()
            .filter(|d| config.enabled_services().any(|(name, _)| name == d.name))
            .flat_map(|d| d.consumers.iter().map(|c| c.queue(&config.tenant_id())))
            .collect()
    };
    // storage of messages; order events turned into system messages, and recorded by the
    // order book
    assert_eq!(
        queues("mall"),
        [
            added("mall"),
            vec![
                "mesh.mall.message.v1.storage".to_owned(),
                "mesh.mall.order.v1.message".to_owned(),
                "mesh.mall.order.v1.order".to_owned(),
            ]
        ]
        .concat()
    );
    assert_eq!(
        queues("paipai"),
        [
            added("paipai"),
            vec![
                "mesh.paipai.message.v1.storage".to_owned(),
                "mesh.paipai.order.v2.message".to_owned(),
                "mesh.paipai.order.v2.order".to_owned(),
            ]
        ]
        .concat(),
        "paipai runs order v2"
    );
}

#[test]
fn unknown_settings_are_refused_naming_the_key_and_what_the_service_takes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tenants");
    let tenants = Tenants::load(&dir, mesh_api::CONTRACTS).unwrap();
    for config in tenants.tenants.values() {
        mesh_platform::check(config).expect("the shipped tenants are valid");
    }
    let mut typo = tenants.tenants["mall"].clone();
    typo.services
        .get_mut("message")
        .unwrap()
        .settings
        .insert("retention_day".into(), figment::value::Value::from(7));
    let err = mesh_platform::check(&typo).unwrap_err();
    assert_eq!(
        err.to_string(),
        "tenant mall: services.message.settings.retention_day: unknown setting; did you mean \
         `retention_days`? (service message takes: retention_days, max_body_bytes)"
    );
}

#[test]
fn push_needs_a_notifier_url_once_enabled() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tenants");
    let tenants = Tenants::load(&dir, mesh_api::CONTRACTS).unwrap();
    let with_push = |settings: &[(&str, figment::value::Value)]| {
        let mut config = tenants.tenants["mall"].clone();
        let push = config
            .services
            .get_mut("push")
            .expect("push is in the defaults");
        push.enabled = true;
        push.settings = settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        mesh_platform::check(&config).map_err(|e| e.to_string())
    };
    assert_eq!(
        with_push(&[]).unwrap_err(),
        "tenant mall: services.push.settings.webhook: push is enabled but sets no `webhook` (the \
         business line's notifier: where offline notices are posted; required once \
         `services.push.enabled = true`)"
    );
    let err = with_push(&[("webhook", "push.example.com".into())]).unwrap_err();
    assert!(
        err.starts_with(
            "tenant mall: services.push.settings.webhook: \"push.example.com\" is not a URL"
        ),
        "{err}"
    );
    let err = with_push(&[
        ("webhook", "https://push.example.com/notify".into()),
        ("timeout_ms", 0.into()),
    ])
    .unwrap_err();
    assert!(
        err.ends_with(
            "services.push.settings.timeout_ms: 0 is not a whole number from 1 to 600000"
        ),
        "{err}"
    );
    with_push(&[
        ("webhook", "https://push.example.com/notify".into()),
        ("timeout_ms", 1500.into()),
    ])
    .unwrap();
    // and its consumer's queue is the tenant's to inspect
    let mut config = tenants.tenants["mall"].clone();
    config.services.get_mut("push").unwrap().enabled = true;
    assert!(
        mesh_platform::queues(&config)
            .unwrap()
            .contains(&"mesh.mall.message.v1.push".to_owned())
    );
}

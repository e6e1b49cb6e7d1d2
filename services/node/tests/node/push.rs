//! Offline push through `mesh up` on RabbitMQ, with a local webhook as the business line's
//! notifier: a message for a user with no attached terminal reaches the webhook (once, with its
//! idempotency key) through the queue, an attached user's does not; a notifier answering 503
//! is retried until it takes the notification; one refusing it (400) gets it dead-lettered;
//! with push switched off nobody is notified, and `Notify` answers its degraded answer.

use crate::support;

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::BodyExt;
use mesh_api::{
    admin::v1 as admin_api, gateway::v1 as gateway, locator::v1::TerminalKind,
    message::v1 as message, push::v1 as push,
};
use mesh_contract::RequestContext;
use support::{MeshUp, Users, admin, tenants_folder};
use tokio::sync::mpsc;
use tonic::transport::Channel;

const OPS_TOKEN: &str = "ops-push-suite-token";

/// A request the webhook received.
#[derive(Debug)]
struct Received {
    idempotency_key: String,
    body: serde_json::Value,
}

/// A webhook receiver on loopback: records every request and answers the scripted statuses
/// in turn (200 once the script is used up).
struct Webhook {
    url: String,
    received: mpsc::UnboundedReceiver<Received>,
    script: Arc<Mutex<VecDeque<u16>>>,
}

impl Webhook {
    async fn start() -> Self {
        use hyper::{Response, body::Incoming, server::conn::http1, service::service_fn};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/notify", listener.local_addr().unwrap());
        let (tx, received) = mpsc::unbounded_channel();
        let script: Arc<Mutex<VecDeque<u16>>> = Arc::default();
        let answers = script.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tx, answers) = (tx.clone(), answers.clone());
                let service = service_fn(move |request: hyper::Request<Incoming>| {
                    let (tx, answers) = (tx.clone(), answers.clone());
                    async move {
                        let key = request
                            .headers()
                            .get("idempotency-key")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let bytes = request.into_body().collect().await?.to_bytes();
                        let _ = tx.send(Received {
                            idempotency_key: key,
                            body: serde_json::from_slice(&bytes).unwrap_or_default(),
                        });
                        let status = answers.lock().unwrap().pop_front().unwrap_or(200);
                        let mut answer = Response::new(http_body_util::Full::new(
                            hyper::body::Bytes::from_static(b"scripted"),
                        ));
                        *answer.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, hyper::Error>(answer)
                    }
                });
                tokio::spawn(
                    http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        Self {
            url,
            received,
            script,
        }
    }

    fn answer_next(&self, statuses: &[u16]) {
        self.script.lock().unwrap().extend(statuses);
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(30), self.received.recv())
            .await
            .expect("a notification within 30 s")
            .expect("the receiver runs")
    }

    /// Nothing arrives within `wait`.
    async fn quiet_for(&mut self, wait: Duration) {
        if let Ok(Some(r)) = tokio::time::timeout(wait, self.received.recv()).await {
            panic!("unexpected notification: {r:?}");
        }
    }
}

async fn send(channel: Channel, ctx: &RequestContext, to: &str, id: &str) -> String {
    message::MessageCaller::new(channel)
        .send(
            ctx,
            message::SendRequest {
                conversation_id: format!("c-{to}"),
                from_user: "agent".into(),
                to_user: to.into(),
                body: format!("about your order ({id})"),
                client_msg_id: id.into(),
            },
        )
        .await
        .unwrap()
        .message
        .expect("the stored message")
        .message_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_receivers_are_notified_through_the_queue_with_retries_dead_letters_and_a_switch() {
    let mut hook = Webhook::start().await;
    // a business line of its own per run: its queues on the shared broker are its own
    let tenant = format!("push{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let file = format!(
        "id = \"{tenant}\"\ndisplay_name = \"Push test\"\ndata_namespace = \"{tenant}\"\n\
         [credentials]\ntoken = \"push-secret-token\"\n\
         [services.push]\nenabled = true\n\
         settings = {{ webhook = \"{}\", timeout_ms = 1000 }}\n",
        hook.url
    );
    let dir = tenants_folder(&[], &[(&format!("{tenant}.toml"), &file)]);
    let (up, admin_at) = MeshUp::on_rabbitmq(dir.path(), OPS_TOKEN).await;
    let users = Users::of(dir.path());
    // the support agent sends; olga's phone holds her own token
    let ctx = users.ctx(&tenant, "agent");
    // the business backend notifies with its tenant credential
    let backend = support::ctx(&tenant, "push-secret-token");
    let channel = up.channel().await;

    // an attached user is not notified; an offline one is, once, with the message's id
    let mut online = gateway::GatewayCaller::new(channel.clone())
        .attach(
            &users.ctx(&tenant, "olga"),
            gateway::AttachRequest {
                user_id: "olga".into(),
                terminal_id: "phone".into(),
                kind: TerminalKind::Phone as i32,
            },
        )
        .await
        .unwrap();
    send(channel.clone(), &ctx, "olga", "to-online").await;
    assert!(
        mesh_gateway::heartbeat::next_content(&mut online)
            .await
            .unwrap()
            .is_some(),
        "olga got her push"
    );
    let id = send(channel.clone(), &ctx, "bob", "to-offline").await;
    let first = hook.next().await;
    assert_eq!(
        first.body["user_id"], "bob",
        "olga (online) was not notified: {first:?}"
    );
    assert_eq!(first.idempotency_key, format!("{tenant}:{id}"));
    assert_eq!(first.body["tenant"], tenant.as_str());
    assert_eq!(first.body["title"], "agent");
    assert_eq!(first.body["body"], "about your order (to-offline)");
    assert_eq!(first.body["data"]["conversation_id"], "c-bob");
    assert_eq!(first.body["data"]["message_id"], id.as_str());
    hook.quiet_for(Duration::from_millis(500)).await;

    // a notifier that is down (503, 503) is retried until it takes the notification
    hook.answer_next(&[503, 503]);
    let id = send(channel.clone(), &ctx, "bob", "while-down").await;
    for attempt in 0..3 {
        let r = hook.next().await;
        assert_eq!(r.body["notification_id"], id.as_str(), "attempt {attempt}");
    }
    hook.quiet_for(Duration::from_millis(500)).await;

    // a notifier refusing a notification (400) gets it dead-lettered, with its answer
    hook.answer_next(&[400]);
    let refused = send(channel.clone(), &ctx, "bob", "refused").await;
    assert_eq!(hook.next().await.body["notification_id"], refused.as_str());
    let mut ops = admin(&admin_at, OPS_TOKEN).await;
    let queue = format!("mesh.{tenant}.message.v1.push");
    let letters = {
        let mut letters = Vec::new();
        for _ in 0..100 {
            letters = ops
                .show_dead_letters(admin_api::DeadLettersRequest {
                    tenant: tenant.clone(),
                    queue: queue.clone(),
                    limit: 10,
                })
                .await
                .unwrap()
                .into_inner()
                .letters;
            if !letters.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        letters
    };
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0].reason.contains("400"), "{:?}", letters[0]);

    // push switched off for this business line: nobody is notified, Notify degrades at once
    ops.set_switch(admin_api::SetSwitchRequest {
        target: Some(admin_api::SwitchTarget {
            service: "push".into(),
            ..Default::default()
        }),
        tenant: tenant.clone(),
        on: false,
        reason: "incident drill".into(),
    })
    .await
    .unwrap();
    send(channel.clone(), &ctx, "bob", "while-off").await;
    let degraded = push::PushCaller::new(channel.clone())
        .notify(
            &backend,
            push::NotifyRequest {
                user_id: "bob".into(),
                body: "your order shipped".into(),
                notification_id: "n-1".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!degraded.notified);
    hook.quiet_for(Duration::from_secs(1)).await;

    // back on: Notify reaches the webhook directly
    ops.set_switch(admin_api::SetSwitchRequest {
        target: Some(admin_api::SwitchTarget {
            service: "push".into(),
            ..Default::default()
        }),
        tenant: tenant.clone(),
        on: true,
        reason: "drill over".into(),
    })
    .await
    .unwrap();
    let notified = push::PushCaller::new(channel.clone())
        .notify(
            &backend,
            push::NotifyRequest {
                user_id: "bob".into(),
                title: "Shop".into(),
                body: "your order shipped".into(),
                notification_id: "n-2".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(notified.notified);
    let r = hook.next().await;
    assert_eq!(r.idempotency_key, format!("{tenant}:n-2"));
    assert_eq!(r.body["body"], "your order shipped");
}

//! Who is calling, tried as an outsider holding mall's user token (and mall's backend
//! credential) would, through the front door of `mesh up`: each attempt an earlier review made
//! against a victim of the same tenant, which must now do no harm.

use crate::support;

use mesh_api::{
    gateway::v1 as gateway, locator::v1 as locator, locator::v1::TerminalKind,
    message::v1 as message,
};
use mesh_contract::RequestContext;
use support::{MeshUp, Users, ctx, tenants_folder};
use tonic::{Code, Status, Streaming, transport::Channel};

struct Mesh {
    _dir: tempfile::TempDir,
    _up: MeshUp,
    users: Users,
    channel: Channel,
}

impl Mesh {
    async fn start() -> Self {
        let dir = tenants_folder(&["mall", "finance"], &[]);
        let mut up = MeshUp::start(dir.path(), &[]).await;
        // mall in the shared process, finance in its own: both serving
        for _ in 0..2 {
            up.output
                .wait_for("a worker", |l| l.starts_with("serving group="))
                .await;
        }
        let channel = up.channel().await;
        Self {
            users: Users::of(dir.path()),
            _dir: dir,
            _up: up,
            channel,
        }
    }

    fn mall(&self, user: &str) -> RequestContext {
        self.users.ctx("mall", user)
    }

    /// The victim's phone, attached with her own token.
    async fn victims_phone(&self) -> Streaming<gateway::Push> {
        gateway::GatewayCaller::new(self.channel.clone())
            .attach(
                &self.mall("victim"),
                gateway::AttachRequest {
                    user_id: "victim".into(),
                    terminal_id: "phone".into(),
                    kind: TerminalKind::Phone as i32,
                },
            )
            .await
            .expect("the victim attaches her phone")
    }

    async fn send(
        &self,
        who: &RequestContext,
        from: &str,
        to: &str,
        id: &str,
    ) -> Result<message::SendResponse, Status> {
        message::MessageCaller::new(self.channel.clone())
            .send(
                who,
                message::SendRequest {
                    conversation_id: format!("c-{to}"),
                    from_user: from.into(),
                    to_user: to.into(),
                    body: format!("message {id}"),
                    client_msg_id: id.into(),
                },
            )
            .await
    }
}

fn refused<T: std::fmt::Debug>(answer: Result<T, Status>, code: Code, what: &str) -> Status {
    let status = answer.expect_err(what);
    assert_eq!(status.code(), code, "{what}: {status:?}");
    status
}

/// The next chat message on the victim's phone.
async fn next_body(phone: &mut Streaming<gateway::Push>) -> String {
    let push = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        mesh_gateway::heartbeat::next_content(phone),
    )
    .await
    .expect("a push within 20 s")
    .unwrap()
    .expect("the stream is open");
    match push.payload {
        Some(gateway::push::Payload::Message(m)) => format!("{}: {}", m.from_user, m.body),
        other => panic!("expected a chat message, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locating_a_victim_from_outside_is_refused() {
    let mesh = Mesh::start().await;
    let _phone = mesh.victims_phone().await;
    for (who, kind) in [
        (mesh.mall("mallory"), "a user token"),
        (ctx("mall", "dev-mall-token"), "the backend credential"),
    ] {
        let status = refused(
            locator::LocatorCaller::new(mesh.channel.clone())
                .locate(
                    &who,
                    locator::LocateRequest {
                        user_id: "victim".into(),
                    },
                )
                .await,
            Code::PermissionDenied,
            kind,
        );
        assert!(
            status.message().contains("internal to the mesh"),
            "{status:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetching_a_victims_messages_is_refused() {
    let mesh = Mesh::start().await;
    mesh.send(&mesh.mall("agent"), "agent", "victim", "secret-1")
        .await
        .unwrap();
    let mut messages = message::MessageCaller::new(mesh.channel.clone());
    let fetch = |user: &str| message::FetchOfflineRequest {
        user_id: user.into(),
        terminal_id: "phone".into(),
        ..Default::default()
    };
    let status = refused(
        messages
            .fetch_offline(&mesh.mall("mallory"), fetch("victim"))
            .await,
        Code::PermissionDenied,
        "mallory reading the victim's timeline",
    );
    assert!(
        status.message().contains("acts only as its own user"),
        "{status:?}"
    );
    refused(
        messages
            .fetch_offline(&ctx("mall", "dev-mall-token"), fetch("victim"))
            .await,
        Code::PermissionDenied,
        "the backend credential reading a timeline",
    );
    // mallory's own timeline holds nothing of the victim's
    let own = messages
        .fetch_offline(&mesh.mall("mallory"), fetch(""))
        .await
        .unwrap();
    assert!(own.messages.is_empty(), "{own:?}");
    // the victim herself reads it
    let hers = messages
        .fetch_offline(&mesh.mall("victim"), fetch(""))
        .await
        .unwrap();
    assert_eq!(hers.messages.len(), 1);

    // nor the conversation's history: as the victim, as herself (no participant), as the backend
    let history = |user: &str| message::HistoryRequest {
        conversation_id: "c-victim".into(),
        user_id: user.into(),
        ..Default::default()
    };
    refused(
        messages
            .history(&mesh.mall("mallory"), history("victim"))
            .await,
        Code::PermissionDenied,
        "mallory reading the victim's history as the victim",
    );
    refused(
        messages.history(&mesh.mall("mallory"), history("")).await,
        Code::NotFound,
        "mallory reading a conversation she is not in",
    );
    refused(
        messages
            .history(&ctx("mall", "dev-mall-token"), history("victim"))
            .await,
        Code::PermissionDenied,
        "the backend credential reading a history",
    );
    let page = messages
        .history(&mesh.mall("victim"), history(""))
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 1, "the victim reads her own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_a_fake_terminal_for_a_victim_is_refused() {
    let mesh = Mesh::start().await;
    let mut phone = mesh.victims_phone().await;
    // the attacker's "gateway": counts whoever dials it
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_address = format!("http://{}", fake.local_addr().unwrap());
    let dialled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let dialled = dialled.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = fake.accept().await {
                dialled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(socket);
            }
        });
    }
    for (who, kind) in [
        (mesh.mall("mallory"), "a user token"),
        (mesh.mall("victim"), "even the victim's own token"),
        (ctx("mall", "dev-mall-token"), "the backend credential"),
    ] {
        refused(
            locator::LocatorCaller::new(mesh.channel.clone())
                .register(
                    &who,
                    locator::RegisterRequest {
                        location: Some(locator::TerminalLocation {
                            user_id: "victim".into(),
                            terminal_id: "evil".into(),
                            kind: TerminalKind::Phone as i32,
                            node_id: "evil-node".into(),
                            node_address: fake_address.clone(),
                            connected_at_ms: 0,
                        }),
                        others_over: 0,
                    },
                )
                .await,
            Code::PermissionDenied,
            kind,
        );
    }
    let sent = mesh
        .send(&mesh.mall("agent"), "agent", "victim", "after-register")
        .await
        .unwrap();
    assert_eq!(sent.delivered_terminals, ["phone"]);
    assert_eq!(next_body(&mut phone).await, "agent: message after-register");
    assert_eq!(
        dialled.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nobody dialled the attacker's address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistering_the_victims_phone_is_refused() {
    let mesh = Mesh::start().await;
    let mut phone = mesh.victims_phone().await;
    refused(
        locator::LocatorCaller::new(mesh.channel.clone())
            .unregister(
                &mesh.mall("mallory"),
                locator::UnregisterRequest {
                    user_id: "victim".into(),
                    terminal_id: "phone".into(),
                    ..Default::default()
                },
            )
            .await,
        Code::PermissionDenied,
        "mallory cutting the victim off",
    );
    let sent = mesh
        .send(&mesh.mall("agent"), "agent", "victim", "still-there")
        .await
        .unwrap();
    assert_eq!(
        sent.delivered_terminals,
        ["phone"],
        "the phone is still reached"
    );
    assert_eq!(next_body(&mut phone).await, "agent: message still-there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivering_a_forged_system_message_is_refused() {
    let mesh = Mesh::start().await;
    let mut phone = mesh.victims_phone().await;
    let forged = gateway::DeliverRequest {
        user_id: "victim".into(),
        terminal_id: "phone".into(),
        push: Some(gateway::Push {
            payload: Some(gateway::push::Payload::Message(message::ChatMessage {
                from_user: "system".into(),
                kind: message::MessageKind::System as i32,
                body: "Your account is locked".into(),
                ..Default::default()
            })),
        }),
    };
    for (who, kind) in [
        (mesh.mall("mallory"), "a user token"),
        (ctx("mall", "dev-mall-token"), "the backend credential"),
    ] {
        refused(
            gateway::GatewayCaller::new(mesh.channel.clone())
                .deliver(&who, forged.clone())
                .await,
            Code::PermissionDenied,
            kind,
        );
    }
    // the first thing the phone gets is a real message
    mesh.send(&mesh.mall("agent"), "agent", "victim", "real")
        .await
        .unwrap();
    assert_eq!(next_body(&mut phone).await, "agent: message real");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_as_another_user_or_as_the_system_is_refused() {
    let mesh = Mesh::start().await;
    let mallory = mesh.mall("mallory");
    for from in ["victim", "system", "System", "SYSTEM"] {
        refused(
            mesh.send(&mallory, from, "bob", &format!("as-{from}"))
                .await,
            Code::PermissionDenied,
            from,
        );
    }
    // "system " and look-alikes are not ids at all, and not mallory either
    for from in ["system ", "sys\u{200b}tem"] {
        refused(
            mesh.send(&mallory, from, "bob", "look-alike").await,
            Code::PermissionDenied,
            from,
        );
    }
    // a token naming the platform's sender is refused however validly it is signed
    let system = RequestContext::new(mesh_contract::TenantId::new("mall").unwrap())
        .with_user_token(&mesh.users.token("mall", "system"));
    refused(
        mesh.send(&system, "", "bob", "system-token").await,
        Code::Unauthenticated,
        "a user token for \"system\"",
    );
    // the backend credential sends as nobody
    refused(
        mesh.send(&ctx("mall", "dev-mall-token"), "victim", "bob", "backend")
            .await,
        Code::PermissionDenied,
        "the backend credential on Send",
    );
    // mallory sends as mallory: from_user comes from her token
    let own = mesh.send(&mallory, "", "bob", "own").await.unwrap();
    assert_eq!(own.message.unwrap().from_user, "mallory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_tenant_is_answered_as_a_wrong_credential() {
    let mesh = Mesh::start().await;
    let unknown = refused(
        mesh.send(&ctx("acme", "acme-secret-token"), "a", "b", "x")
            .await,
        Code::Unauthenticated,
        "an unknown tenant",
    );
    let wrong = refused(
        mesh.send(&ctx("mall", "acme-secret-token"), "a", "b", "x")
            .await,
        Code::Unauthenticated,
        "a wrong credential",
    );
    assert_eq!(
        unknown.message(),
        "the credential presented is not valid for tenant acme"
    );
    assert_eq!(
        wrong.message().replace("mall", "acme"),
        unknown.message(),
        "nobody learns which tenants exist"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_another_tenant_or_for_another_audience_are_refused() {
    let mesh = Mesh::start().await;
    // finance's account system signed it: not a mall user
    let foreign = RequestContext::new(mesh_contract::TenantId::new("mall").unwrap())
        .with_user_token(&mesh.users.token("finance", "alice"));
    refused(
        mesh.send(&foreign, "", "bob", "foreign").await,
        Code::Unauthenticated,
        "finance's token at mall",
    );
    // alice's token works at finance, as finance's user
    let finance_alice = mesh.users.ctx("finance", "alice");
    assert!(mesh.send(&finance_alice, "", "bob", "home").await.is_ok());
    // and a mall token for another audience (another platform of the same account system)
    let elsewhere = mesh
        .users
        .token_for_audience("mall", "alice", "another-platform");
    let status = refused(
        mesh.send(
            &RequestContext::new(mesh_contract::TenantId::new("mall").unwrap())
                .with_user_token(&elsewhere),
            "",
            "bob",
            "elsewhere",
        )
        .await,
        Code::Unauthenticated,
        "a token for another audience",
    );
    assert_eq!(
        status.message(),
        "the credential presented is not valid for tenant mall"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_into_someone_elses_conversation_is_refused() {
    let mesh = Mesh::start().await;
    let mut phone = mesh.victims_phone().await;
    let talk = |from: &str, to: &str, id: &str| message::SendRequest {
        conversation_id: "c-victim-bob".into(),
        from_user: from.into(),
        to_user: to.into(),
        body: format!("{from}: {id}"),
        client_msg_id: id.into(),
    };
    let mut messages = message::MessageCaller::new(mesh.channel.clone());
    messages
        .send(&mesh.mall("bob"), talk("bob", "victim", "b1"))
        .await
        .unwrap();
    let status = refused(
        messages
            .send(&mesh.mall("mallory"), talk("mallory", "victim", "m1"))
            .await,
        Code::PermissionDenied,
        "mallory writing into bob and the victim's conversation",
    );
    assert!(status.message().contains("not a participant"), "{status:?}");
    // nor may she mark it read: it is not hers
    refused(
        messages
            .mark_read(
                &mesh.mall("mallory"),
                message::MarkReadRequest {
                    conversation_id: "c-victim-bob".into(),
                    up_to_seq: 1,
                    ..Default::default()
                },
            )
            .await,
        Code::NotFound,
        "mallory marking it read",
    );
    // the victim's phone holds bob's messages, nothing of mallory's in between
    messages
        .send(&mesh.mall("bob"), talk("bob", "victim", "b2"))
        .await
        .unwrap();
    assert_eq!(next_body(&mut phone).await, "bob: bob: b1");
    assert_eq!(next_body(&mut phone).await, "bob: bob: b2");
}

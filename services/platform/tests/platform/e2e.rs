//! The customer-service platform end to end, over real sockets: terminals hold gRPC streams
//! to the gateway, the message service reaches locator and gateways over HTTP/2, events go
//! over the embedded bus or RabbitMQ, data into the embedded store or PostgreSQL. Every
//! scenario runs once for each shipped tenant (`tenants/*.toml`).

use crate::support;

use std::sync::Arc;

use mesh_api::{
    gateway::v1::{Push, push::Payload},
    message::v1::{ChatMessage, MessageKind, ReadReceipt},
    order::v2::OrderStatus,
};
use mesh_contract::TenantId;
use mesh_order::Order;
use mesh_store::{
    Accepted, ConversationInfo, MemoryStore, MessageStore, NewMessage, Page, StoreError,
    StoredMessage, StoredReceipt,
};
use support::{Bus, Node, Store, eventually, next, run_id};
use tokio::sync::Semaphore;

fn chat(push: Push) -> ChatMessage {
    match push.payload {
        Some(Payload::Message(m)) => m,
        other => panic!("expected a chat message, got {other:?}"),
    }
}

fn receipt(push: Push) -> ReadReceipt {
    match push.payload {
        Some(Payload::Receipt(r)) => r,
        other => panic!("expected a read receipt, got {other:?}"),
    }
}

/// Ids of one test run, so tests sharing the broker never meet.
struct Ids(String);

impl Ids {
    fn new() -> Self {
        Self(run_id())
    }
    fn of(&self, name: &str) -> String {
        format!("{name}-{}", self.0)
    }
}

async fn stored(node: &Node, tenant: &str, conversation: &str) -> Vec<StoredMessage> {
    node.store
        .history(&TenantId::new(tenant).unwrap(), conversation, 0, 100)
        .await
        .unwrap()
}

async fn delivers_to_every_online_terminal(tenant: &str) {
    let node = Node::start(Bus::Embedded, Store::Embedded).await;
    let ids = Ids::new();
    let (alice, bob, conv) = (ids.of("alice"), ids.of("bob"), ids.of("conv"));
    let mut phone = node.terminal(tenant, &bob, "phone").await;
    let mut desktop = node.terminal(tenant, &bob, "desktop").await;
    let mut sender = node.terminal(tenant, &alice, "web").await;

    let sent = sender.send(&conv, &bob, "hello bob", "c-1").await.unwrap();
    let mut delivered = sent.delivered_terminals.clone();
    delivered.sort();
    assert_eq!(delivered, ["desktop", "phone"]);
    assert!(sent.offline_terminals.is_empty(), "{sent:?}");
    let message = sent.message.unwrap();
    assert_eq!((message.seq, message.kind()), (1, MessageKind::Text));
    for terminal in [&mut phone, &mut desktop] {
        let got = chat(next(terminal).await);
        assert_eq!(
            (got.message_id.as_str(), got.body.as_str()),
            (message.message_id.as_str(), "hello bob")
        );
    }

    // a retried send (same client_msg_id) is the same message, not a second one
    let retried = sender.send(&conv, &bob, "hello bob", "c-1").await.unwrap();
    assert_eq!(retried.message.unwrap().message_id, message.message_id);
    // the same id for another message is refused, not silently taken for the first
    let reused = sender
        .send(&conv, &bob, "something else", "c-1")
        .await
        .unwrap_err();
    assert_eq!(reused.code(), tonic::Code::AlreadyExists, "{reused:?}");
    assert!(
        reused.message().contains("a new message needs a new id"),
        "{reused:?}"
    );
    // another user's send with the same id is another message
    let mut bobs = node.terminal(tenant, &bob, "tablet").await;
    let reply = bobs.send(&conv, &alice, "hi alice", "c-1").await.unwrap();
    assert_eq!(reply.message.unwrap().seq, 2);
    let second = sender
        .send(&conv, &bob, "still there?", "c-2")
        .await
        .unwrap();
    assert_eq!(second.message.unwrap().seq, 3);
    assert_eq!(chat(next(&mut phone).await).body, "still there?");
    node.finish().await;
}

async fn offline_messages_arrive_in_order_on_reconnect(tenant: &str) {
    let node = Node::start(Bus::Embedded, Store::Embedded).await;
    let ids = Ids::new();
    let (alice, bob, conv) = (ids.of("alice"), ids.of("bob"), ids.of("conv"));
    let mut sender = node.terminal(tenant, &alice, "web").await;
    let desktop = node.terminal(tenant, &bob, "desktop").await;
    drop(desktop); // bob closes the app
    node.wait_connected(1).await;
    // the gateway told the locator: bob has no terminal anywhere now
    eventually("the locator to forget bob's desktop", || async {
        mesh_api::locator::v1::LocatorCaller::new(node.channel.clone())
            .locate(
                &node.node_ctx(tenant),
                mesh_api::locator::v1::LocateRequest {
                    user_id: bob.clone(),
                },
            )
            .await
            .unwrap()
            .terminals
            .is_empty()
    })
    .await;

    for (i, body) in ["one", "two", "three"].iter().enumerate() {
        let sent = sender
            .send(&conv, &bob, body, &format!("m{i}"))
            .await
            .unwrap();
        assert!(sent.delivered_terminals.is_empty(), "{sent:?}");
        assert_eq!(
            sent.offline_terminals,
            ["desktop"],
            "kept for the terminal bob has"
        );
    }

    let mut desktop = node.terminal(tenant, &bob, "desktop").await;
    assert_eq!(desktop.missed(), 3);
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let m = chat(next(&mut desktop).await);
        bodies.push((m.seq, m.body));
    }
    assert_eq!(
        bodies,
        [(1, "one".into()), (2, "two".into()), (3, "three".into())]
    );
    // live again: the next one is pushed
    sender.send(&conv, &bob, "four", "m3").await.unwrap();
    assert_eq!(chat(next(&mut desktop).await).seq, 4);

    // all four were acknowledged by the desktop: nothing is missed after another reconnect
    drop(desktop);
    node.wait_connected(1).await;
    let desktop = node.terminal(tenant, &bob, "desktop").await;
    assert_eq!(desktop.missed(), 0);
    assert_eq!(desktop.cursor(), 4);
    // a phone bob never used syncs his timeline from its start (multi-device sync)
    let phone = node.terminal(tenant, &bob, "phone").await;
    assert_eq!(phone.missed(), 4);
    node.finish().await;
}

async fn read_receipts_reach_other_terminals_and_the_sender(tenant: &str) {
    let node = Node::start(Bus::Embedded, Store::Embedded).await;
    let ids = Ids::new();
    let (alice, bob, conv) = (ids.of("alice"), ids.of("bob"), ids.of("conv"));
    let mut phone = node.terminal(tenant, &bob, "phone").await;
    let mut desktop = node.terminal(tenant, &bob, "desktop").await;
    let mut sender = node.terminal(tenant, &alice, "web").await;
    for (i, body) in ["a", "b"].iter().enumerate() {
        sender
            .send(&conv, &bob, body, &format!("m{i}"))
            .await
            .unwrap();
    }
    for terminal in [&mut phone, &mut desktop] {
        assert_eq!(chat(next(terminal).await).seq, 1);
        assert_eq!(chat(next(terminal).await).seq, 2);
    }

    let read = phone.mark_read(&conv, 2).await.unwrap().unwrap();
    assert_eq!((read.reader.as_str(), read.up_to_seq), (bob.as_str(), 2));
    for terminal in [&mut desktop, &mut sender] {
        let synced = receipt(next(terminal).await);
        assert_eq!(
            (
                synced.conversation_id.as_str(),
                synced.reader.as_str(),
                synced.up_to_seq
            ),
            (conv.as_str(), bob.as_str(), 2)
        );
    }
    // the phone that read gets no receipt of its own: its next push is the next message
    sender.send(&conv, &bob, "c", "m2").await.unwrap();
    assert_eq!(chat(next(&mut phone).await).seq, 3);

    // the receipt is persisted too, through its event
    let t = TenantId::new(tenant).unwrap();
    eventually("the read receipt to be stored", || async {
        node.store
            .receipt(&t, &conv, &bob)
            .await
            .unwrap()
            .map(|r| r.up_to_seq)
            == Some(2)
    })
    .await;
    // reading a conversation one is not in is refused, naming it
    let err = sender.mark_read(&ids.of("elsewhere"), 1).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(
        err.message().contains(&format!("in tenant {tenant}")),
        "{err:?}"
    );
    node.finish().await;
}

/// A conversation's history pages backwards from its latest message, each page oldest first,
/// for its participants; anyone else is told it has no such conversation.
async fn history_pages_backwards_for_its_participants_only(tenant: &str, store: Store) {
    let node = Node::start(Bus::Embedded, store).await;
    let ids = Ids::new();
    let (alice, bob, carol, conv) = (
        ids.of("alice"),
        ids.of("bob"),
        ids.of("carol"),
        ids.of("conv"),
    );
    let mut sender = node.terminal(tenant, &alice, "web").await;
    for n in 1..=5 {
        sender
            .send(&conv, &bob, &format!("m{n}"), &format!("id{n}"))
            .await
            .unwrap();
    }
    // bob, on a new device, has missed nothing to sync there yet: history shows it all
    let phone = node.terminal(tenant, &bob, "new-phone").await;
    let seqs = |page: &(Vec<ChatMessage>, bool)| page.0.iter().map(|m| m.seq).collect::<Vec<_>>();
    let latest = phone.history(&conv, 0, 2).await.unwrap();
    assert_eq!((seqs(&latest), latest.1), (vec![4, 5], true));
    assert_eq!(latest.0[1].body, "m5");
    let older = phone.history(&conv, 4, 2).await.unwrap();
    assert_eq!((seqs(&older), older.1), (vec![2, 3], true));
    let oldest = phone.history(&conv, 2, 10).await.unwrap();
    assert_eq!((seqs(&oldest), oldest.1), (vec![1], false));
    let all = sender.history(&conv, 0, 0).await.unwrap();
    assert_eq!((seqs(&all), all.1), (vec![1, 2, 3, 4, 5], false));
    // not a participant (nor a conversation that does not exist): NOT_FOUND, naming the tenant
    let stranger = node.terminal(tenant, &carol, "web").await;
    for conversation in [conv.as_str(), "no-such-conversation"] {
        let err = stranger.history(conversation, 0, 0).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
        assert!(
            err.message().contains(&format!("in tenant {tenant}")),
            "{err:?}"
        );
    }
    node.finish().await;
}

/// A store whose accepts wait until the test opens the gate.
struct GatedStore {
    inner: MemoryStore,
    gate: Semaphore,
}

#[async_trait::async_trait]
impl mesh_store::OrderRecords for GatedStore {
    async fn put_order(&self, t: &TenantId, o: &mesh_store::StoredOrder) -> Result<(), StoreError> {
        self.inner.put_order(t, o).await
    }
    async fn put_new_order(
        &self,
        t: &TenantId,
        o: &mesh_store::StoredOrder,
    ) -> Result<bool, StoreError> {
        self.inner.put_new_order(t, o).await
    }
    async fn order(
        &self,
        t: &TenantId,
        id: &str,
    ) -> Result<Option<mesh_store::StoredOrder>, StoreError> {
        self.inner.order(t, id).await
    }
    async fn orders_of(
        &self,
        t: &TenantId,
        user: &str,
        limit: usize,
    ) -> Result<Vec<mesh_store::StoredOrder>, StoreError> {
        self.inner.orders_of(t, user, limit).await
    }
    async fn move_order(
        &self,
        t: &TenantId,
        id: &str,
        from: Option<i32>,
        to: i32,
        final_status: i32,
    ) -> Result<Option<mesh_store::StoredOrder>, StoreError> {
        self.inner.move_order(t, id, from, to, final_status).await
    }
}

#[async_trait::async_trait]
impl mesh_store::RecordStore for GatedStore {
    async fn write_records(
        &self,
        t: &TenantId,
        writes: &[mesh_store::records::RecordWrite],
    ) -> Result<Vec<u64>, StoreError> {
        self.inner.write_records(t, writes).await
    }
    async fn record(
        &self,
        t: &TenantId,
        collection: &str,
        key: &str,
    ) -> Result<Option<mesh_store::Record>, StoreError> {
        self.inner.record(t, collection, key).await
    }
    async fn records_of(
        &self,
        t: &TenantId,
        collection: &str,
        owner: &str,
        limit: usize,
    ) -> Result<Vec<mesh_store::Record>, StoreError> {
        self.inner.records_of(t, collection, owner, limit).await
    }
    async fn delete_record(
        &self,
        t: &TenantId,
        collection: &str,
        key: &str,
    ) -> Result<bool, StoreError> {
        self.inner.delete_record(t, collection, key).await
    }
}

#[async_trait::async_trait]
impl MessageStore for GatedStore {
    async fn open(&self, tenant: &TenantId, namespace: &str) -> Result<(), StoreError> {
        self.inner.open(tenant, namespace).await
    }
    async fn drop_tenant(&self, tenant: &TenantId) -> Result<(), StoreError> {
        self.inner.drop_tenant(tenant).await
    }
    async fn accept(&self, t: &TenantId, m: &NewMessage) -> Result<Accepted, StoreError> {
        let _pass = self.gate.acquire().await.expect("gate");
        self.inner.accept(t, m).await
    }
    async fn timeline(
        &self,
        t: &TenantId,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.inner.timeline(t, user, after, limit).await
    }
    async fn heads(&self, t: &TenantId, users: &[String]) -> Result<Vec<u64>, StoreError> {
        self.inner.heads(t, users).await
    }
    async fn cursor(&self, t: &TenantId, user: &str, terminal: &str) -> Result<u64, StoreError> {
        self.inner.cursor(t, user, terminal).await
    }
    async fn advance_cursor(
        &self,
        t: &TenantId,
        user: &str,
        terminal: &str,
        position: u64,
        contiguous: bool,
    ) -> Result<u64, StoreError> {
        self.inner
            .advance_cursor(t, user, terminal, position, contiguous)
            .await
    }
    async fn position_of(
        &self,
        t: &TenantId,
        user: &str,
        message_id: &str,
    ) -> Result<Option<u64>, StoreError> {
        self.inner.position_of(t, user, message_id).await
    }
    async fn terminals(&self, t: &TenantId, user: &str) -> Result<Vec<String>, StoreError> {
        self.inner.terminals(t, user).await
    }
    async fn conversation(
        &self,
        t: &TenantId,
        c: &str,
    ) -> Result<Option<ConversationInfo>, StoreError> {
        self.inner.conversation(t, c).await
    }
    async fn history(
        &self,
        t: &TenantId,
        c: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.inner.history(t, c, after, limit).await
    }
    async fn terminal_cursors(
        &self,
        t: &TenantId,
        user: &str,
    ) -> Result<Vec<mesh_store::TerminalCursor>, StoreError> {
        self.inner.terminal_cursors(t, user).await
    }
    async fn forget_terminal(
        &self,
        t: &TenantId,
        user: &str,
        terminal: &str,
    ) -> Result<bool, StoreError> {
        self.inner.forget_terminal(t, user, terminal).await
    }
    async fn record_receipt(
        &self,
        t: &TenantId,
        r: &StoredReceipt,
        receivers: &[String],
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.inner.record_receipt(t, r, receivers).await
    }
    async fn save_receipt(&self, t: &TenantId, r: &StoredReceipt) -> Result<(), StoreError> {
        self.inner.save_receipt(t, r).await
    }
    async fn receipt(
        &self,
        t: &TenantId,
        c: &str,
        reader: &str,
    ) -> Result<Option<StoredReceipt>, StoreError> {
        self.inner.receipt(t, c, reader).await
    }
    async fn purge_before(&self, t: &TenantId, cutoff: i64) -> Result<u64, StoreError> {
        self.inner.purge_before(t, cutoff).await
    }
}

/// OK is a promise: a send answers only once stored; a call cut off (deadline, disconnect)
/// while storing still stores the message exactly once, and its retry answers that message.
async fn a_send_cut_off_while_storing_is_stored_once_and_its_retry_answers_it(tenant: &str) {
    let gated = Arc::new(GatedStore {
        inner: MemoryStore::default(),
        gate: Semaphore::new(0),
    });
    let node = Node::start(Bus::RabbitMq, Store::Custom(gated.clone())).await;
    let ids = Ids::new();
    let (alice, bob, conv) = (ids.of("alice"), ids.of("bob"), ids.of("conv"));
    let mut phone = node.terminal(tenant, &bob, "phone").await;
    let mut sender = node.terminal(tenant, &alice, "web").await;

    // storage is blocked: the caller gives up (its future is dropped, the stream reset)
    let cut = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        sender.send(&conv, &bob, "first", "m0"),
    )
    .await;
    assert!(
        cut.is_err(),
        "no answer while the store holds the send: {cut:?}"
    );
    assert!(stored(&node, tenant, &conv).await.is_empty());

    // the store comes back: the message the cut call started is stored, once
    gated.gate.add_permits(1_000);
    eventually("the cut-off send to be stored", || async {
        stored(&node, tenant, &conv).await.len() == 1
    })
    .await;
    let retried = sender.send(&conv, &bob, "first", "m0").await.unwrap();
    let first = retried.message.unwrap();
    assert_eq!((first.seq, first.body.as_str()), (1, "first"));
    assert_eq!(
        stored(&node, tenant, &conv).await.len(),
        1,
        "the retry stored nothing"
    );
    let second = sender.send(&conv, &bob, "second", "m1").await.unwrap();
    assert_eq!(second.message.unwrap().seq, 2, "numbering goes on");
    // bob's phone shows each once, in order, whatever was pushed twice
    assert_eq!(chat(next(&mut phone).await).body, "first");
    assert_eq!(chat(next(&mut phone).await).body, "second");
    let rows = stored(&node, tenant, &conv).await;
    assert_eq!(
        rows.iter()
            .map(|m| (m.seq, m.body.as_str()))
            .collect::<Vec<_>>(),
        [(1, "first"), (2, "second")]
    );
    node.finish().await;
}

async fn an_order_event_becomes_a_system_message_over_rabbitmq(tenant: &str) {
    let node = Node::start(Bus::RabbitMq, Store::Embedded).await;
    let ids = Ids::new();
    let (bob, conv, order_id) = (ids.of("bob"), ids.of("conv"), ids.of("o"));
    let mut desktop = node.terminal(tenant, &bob, "desktop").await;

    let ctx = node.ctx(tenant);
    let order = Order {
        order_id: order_id.clone(),
        user_id: bob.clone(),
        merchant_id: "shop-1".into(),
        status: OrderStatus::Paid as i32,
        total_minor: 12900,
        currency: "CNY".into(),
        created_at_ms: 0,
        conversation_id: conv.clone(),
    };
    node.platform.orders().place(&ctx, order).await.unwrap();
    let placed = chat(next(&mut desktop).await);
    assert_eq!(placed.kind(), MessageKind::System);
    assert_eq!(placed.from_user, mesh_message::SYSTEM_SENDER);
    assert_eq!(
        placed.body,
        format!("Order {order_id} was placed: CNY 129.00")
    );
    assert_eq!(
        (placed.conversation_id.as_str(), placed.seq),
        (conv.as_str(), 1)
    );

    node.platform
        .orders()
        .set_status(&ctx, &order_id, OrderStatus::Shipped as i32)
        .await
        .unwrap();
    let shipped = chat(next(&mut desktop).await);
    assert_eq!(
        shipped.body,
        format!("Order {order_id} is now shipped (was paid)")
    );

    eventually("both system messages to be stored", || async {
        stored(&node, tenant, &conv).await.len() == 2
    })
    .await;
    let kinds: Vec<i32> = stored(&node, tenant, &conv)
        .await
        .iter()
        .map(|m| m.kind)
        .collect();
    assert_eq!(kinds, [MessageKind::System as i32; 2]);
    node.finish().await;
}

/// The tested tenant and another one use the same user and conversation ids on one node;
/// neither sees the other's messages, pushed or stored.
async fn tenant_data_stays_in_its_namespace(tenant: &str, store: Store) {
    let postgres = matches!(store, Store::Postgres);
    let node = Node::start(Bus::Embedded, store).await;
    let other = support::SHIPPED.iter().find(|t| **t != tenant).unwrap();
    let ids = Ids::new();
    let (alice, bob, conv) = (ids.of("alice"), ids.of("bob"), ids.of("conv"));
    let mut mine = node.terminal(tenant, &bob, "phone").await;
    let mut theirs = node.terminal(other, &bob, "phone").await;
    let mut my_sender = node.terminal(tenant, &alice, "web").await;
    let mut their_sender = node.terminal(other, &alice, "web").await;

    their_sender
        .send(&conv, &bob, &format!("for {other} only"), "m")
        .await
        .unwrap();
    my_sender
        .send(&conv, &bob, &format!("for {tenant} only"), "m")
        .await
        .unwrap();
    assert_eq!(
        chat(next(&mut mine).await).body,
        format!("for {tenant} only")
    );
    assert_eq!(
        chat(next(&mut theirs).await).body,
        format!("for {other} only")
    );

    eventually("both tenants' messages to be stored", || async {
        stored(&node, tenant, &conv).await.len() == 1
            && stored(&node, other, &conv).await.len() == 1
    })
    .await;
    assert_eq!(
        stored(&node, tenant, &conv).await[0].body,
        format!("for {tenant} only")
    );
    assert_eq!(
        stored(&node, other, &conv).await[0].body,
        format!("for {other} only")
    );

    if postgres {
        // look at the database itself: each row sits in its own tenant's schema
        let (raw, connection) =
            tokio_postgres::connect(&support::postgres_url(), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(connection);
        for (owner, namespace) in [
            (
                tenant,
                node.tenants.get(tenant).unwrap().data_namespace.clone(),
            ),
            (
                other,
                node.tenants.get(other).unwrap().data_namespace.clone(),
            ),
        ] {
            let schema = format!("t{}_{namespace}", node.run);
            let bodies: Vec<String> = raw
                .query(
                    &format!("SELECT body FROM {schema}.messages WHERE conversation_id = $1"),
                    &[&conv],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert_eq!(bodies, [format!("for {owner} only")], "schema {schema}");
        }
    }
    node.finish().await;
}

macro_rules! for_every_shipped_tenant {
    ($($tenant:ident),*) => {$(
        mod $tenant {
            use super::*;

            #[tokio::test]
            async fn delivers_to_every_online_terminal() {
                super::delivers_to_every_online_terminal(stringify!($tenant)).await;
            }

            #[tokio::test]
            async fn offline_messages_arrive_in_order_on_reconnect() {
                super::offline_messages_arrive_in_order_on_reconnect(stringify!($tenant)).await;
            }

            #[tokio::test]
            async fn read_receipts_reach_other_terminals_and_the_sender() {
                super::read_receipts_reach_other_terminals_and_the_sender(stringify!($tenant)).await;
            }

            #[tokio::test]
            async fn history_pages_backwards_on_the_embedded_store() {
                super::history_pages_backwards_for_its_participants_only(stringify!($tenant), Store::Embedded).await;
            }

            #[tokio::test]
            async fn history_pages_backwards_on_postgresql() {
                super::history_pages_backwards_for_its_participants_only(stringify!($tenant), Store::Postgres).await;
            }

            #[tokio::test]
            async fn a_send_cut_off_while_storing_is_stored_once_and_its_retry_answers_it() {
                super::a_send_cut_off_while_storing_is_stored_once_and_its_retry_answers_it(stringify!($tenant)).await;
            }

            #[tokio::test]
            async fn an_order_event_becomes_a_system_message_over_rabbitmq() {
                super::an_order_event_becomes_a_system_message_over_rabbitmq(stringify!($tenant)).await;
            }

            #[tokio::test]
            async fn data_stays_in_its_namespace_on_the_embedded_store() {
                super::tenant_data_stays_in_its_namespace(stringify!($tenant), Store::Embedded).await;
            }

            #[tokio::test]
            async fn data_stays_in_its_namespace_on_postgresql() {
                super::tenant_data_stays_in_its_namespace(stringify!($tenant), Store::Postgres).await;
            }
        }
    )*};
}

for_every_shipped_tenant!(mall, finance, paipai);

/// Garbage published on a tenant's message exchange is dead-lettered with its reason, and the
/// storage consumer goes on storing the real messages after it.
#[tokio::test]
async fn garbage_on_the_queue_is_dead_lettered_and_storage_goes_on() {
    use lapin::{
        BasicProperties,
        options::{BasicGetOptions, BasicPublishOptions},
        types::{AMQPValue, FieldTable},
    };
    use mesh_contract::spec::names;

    let node = Node::start(Bus::RabbitMq, Store::Embedded).await;
    let mall = TenantId::new("mall").unwrap();
    let connection =
        lapin::Connection::connect(&support::amqp_uri(), lapin::ConnectionProperties::default())
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut headers = FieldTable::default();
    headers.insert("x-mesh-tenant".into(), AMQPValue::LongString("mall".into()));
    channel
        .basic_publish(
            names::exchange(&mall, "message", 1).as_str().into(),
            "message_sent".into(),
            BasicPublishOptions::default(),
            b"\xff\xfe not protobuf",
            BasicProperties::default().with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let queue = names::queue(&mall, "message", 1, &format!("storage-{}", node.run));
    let dead = names::dead_letter_queue(&queue);
    let mut reason = None;
    for _ in 0..500 {
        if let Some(message) = channel
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            reason = match message
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("x-mesh-dead-reason").cloned())
            {
                Some(AMQPValue::LongString(text)) => Some(text.to_string()),
                other => panic!("dead letter without a reason: {other:?}"),
            };
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let reason = reason.expect("the garbage was dead-lettered within 10 s");
    assert!(
        reason.starts_with("payload is not a valid message.v1.MessageSent"),
        "dead-letter reason: {reason}"
    );

    let ids = Ids::new();
    let (alice, bob, conv) = (ids.of("alice"), ids.of("bob"), ids.of("conv"));
    let mut sender = node.terminal("mall", &alice, "web").await;
    sender
        .send(&conv, &bob, "after the garbage", "m")
        .await
        .unwrap();
    eventually("the next message to be stored", || async {
        stored(&node, "mall", &conv).await.len() == 1
    })
    .await;
    node.finish().await;
}

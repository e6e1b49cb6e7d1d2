//! One suite, both backends: the embedded store and PostgreSQL (127.0.0.1:5432, or
//! `MESH_TEST_POSTGRES`), each tenant in a schema of its own.

use mesh_contract::TenantId;
use mesh_store::{
    Accepted, MessageStore, NewMessage, PgStore, StoreError, StoredMessage, StoredReceipt,
};

fn postgres_url() -> String {
    std::env::var("MESH_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A store whose schemas carry a prefix of their own, dropped at the end of the test.
async fn postgres() -> PgStore {
    let prefix = format!("t{}_", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    PgStore::connect_with_prefix(&postgres_url(), &prefix)
        .await
        .expect("PostgreSQL must run on 127.0.0.1:5432 (bash .ci/test starts it)")
}

fn tenant(id: &str) -> TenantId {
    TenantId::new(id).unwrap()
}

/// Alice's message `id` to Bob in `conversation`, with client id `c-<id>`.
fn msg(id: &str, conversation: &str, sent_at_ms: i64) -> NewMessage {
    NewMessage {
        message_id: id.into(),
        conversation_id: conversation.into(),
        client_msg_id: format!("c-{id}"),
        from_user: "alice".into(),
        to_user: "bob".into(),
        kind: 1,
        body: format!("body of {id}"),
        sent_at_ms,
        members_only: false,
    }
}

async fn accept(store: &dyn MessageStore, tenant: &TenantId, m: NewMessage) -> StoredMessage {
    match store.accept(tenant, &m).await.unwrap() {
        Accepted::New(stored) => stored,
        Accepted::Existing(old) => panic!("{} was new, found {old:?}", m.message_id),
    }
}

/// The same conversation id in two tenants never mixes: not in history, receipts or purges.
async fn tenants_never_see_each_other(store: &dyn MessageStore) {
    let (mall, paipai) = (tenant("mall"), tenant("paipai"));
    store.open(&mall, "mall").await.unwrap();
    store.open(&paipai, "paipai").await.unwrap();
    accept(store, &mall, msg("m-1", "c-1", 10)).await;
    accept(store, &mall, msg("m-2", "c-1", 20)).await;
    let p1 = accept(store, &paipai, msg("p-1", "c-1", 10)).await;
    assert_eq!((p1.seq, p1.position), (1, 1), "numbering is per tenant");

    let ids = |v: Vec<StoredMessage>| v.into_iter().map(|m| m.message_id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.history(&mall, "c-1", 0, 10).await.unwrap()),
        ["m-1", "m-2"]
    );
    assert_eq!(
        ids(store.history(&paipai, "c-1", 0, 10).await.unwrap()),
        ["p-1"]
    );

    // the same ids in another tenant are another message, not a duplicate
    accept(store, &paipai, msg("m-1", "c-9", 10)).await;
    assert_eq!(
        store
            .timeline(&mall, "bob", 0, 10)
            .await
            .unwrap()
            .messages
            .len(),
        2
    );
    assert_eq!(
        store.terminals(&paipai, "bob").await.unwrap(),
        Vec::<String>::new()
    );
    store.cursor(&mall, "bob", "phone").await.unwrap();
    assert_eq!(
        store.terminals(&paipai, "bob").await.unwrap(),
        Vec::<String>::new()
    );
    assert!(
        store
            .conversation(&paipai, "c-1")
            .await
            .unwrap()
            .unwrap()
            .last_seq
            == 1
    );
    assert_eq!(
        ids(store.history(&mall, "c-9", 0, 10).await.unwrap()),
        Vec::<String>::new()
    );

    let receipt = StoredReceipt {
        conversation_id: "c-1".into(),
        reader: "bob".into(),
        up_to_seq: 2,
        read_at_ms: 30,
    };
    store.save_receipt(&mall, &receipt).await.unwrap();
    assert_eq!(
        store.receipt(&mall, "c-1", "bob").await.unwrap(),
        Some(receipt)
    );
    assert_eq!(store.receipt(&paipai, "c-1", "bob").await.unwrap(), None);

    assert_eq!(store.purge_before(&paipai, 1_000).await.unwrap(), 2);
    assert_eq!(
        store.history(&mall, "c-1", 0, 10).await.unwrap().len(),
        2,
        "mall's data untouched"
    );
}

async fn accepts_are_numbered_once_and_history_is_ordered(store: &dyn MessageStore) {
    let finance = tenant("finance");
    store.open(&finance, "finance").await.unwrap();
    for (i, id) in ["f-1", "f-2", "f-3"].into_iter().enumerate() {
        let stored = accept(store, &finance, msg(id, "c", 0)).await;
        assert_eq!((stored.seq, stored.position), (i as u64 + 1, i as u64 + 1));
    }
    // a retry with the same client id is the first message, numbers unchanged, nothing added
    let mut retry = msg("f-2-retry", "c", 0);
    retry.client_msg_id = "c-f-2".into();
    match store.accept(&finance, &retry).await.unwrap() {
        Accepted::Existing(first) => {
            assert_eq!((first.message_id.as_str(), first.seq), ("f-2", 2));
        }
        other => panic!("a retry made a new message: {other:?}"),
    }
    // another sender's id that happens to be the same is another message
    let mut other_sender = msg("h-1", "c", 0);
    other_sender.client_msg_id = "c-f-2".into();
    other_sender.from_user = "carol".into();
    let h1 = accept(store, &finance, other_sender).await;
    assert_eq!(h1.seq, 4, "carol's send is not alice's");
    // the same client id in another conversation is another message
    let mut elsewhere = msg("g-1", "other", 0);
    elsewhere.client_msg_id = "c-f-2".into();
    let g1 = accept(store, &finance, elsewhere).await;
    assert_eq!(
        (g1.seq, g1.position),
        (1, 5),
        "seq per conversation, position per receiver"
    );
    // an empty client id never deduplicates
    for id in ["n-1", "n-2"] {
        let mut m = msg(id, "c", 0);
        m.client_msg_id.clear();
        accept(store, &finance, m).await;
    }
    let seqs = |v: Vec<StoredMessage>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.history(&finance, "c", 0, 10).await.unwrap()),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(seqs(store.history(&finance, "c", 1, 1).await.unwrap()), [2]);
    let info = store.conversation(&finance, "c").await.unwrap().unwrap();
    assert_eq!(info.last_seq, 6);
    assert_eq!(info.participants, ["alice", "bob", "carol"]);
    assert_eq!(store.conversation(&finance, "none").await.unwrap(), None);

    // a receipt never moves a reader backwards
    let at = |up_to_seq| StoredReceipt {
        conversation_id: "c".into(),
        reader: "bob".into(),
        up_to_seq,
        read_at_ms: up_to_seq as i64,
    };
    store.save_receipt(&finance, &at(3)).await.unwrap();
    store.save_receipt(&finance, &at(2)).await.unwrap();
    assert_eq!(
        store
            .receipt(&finance, "c", "bob")
            .await
            .unwrap()
            .unwrap()
            .up_to_seq,
        3
    );
}

/// A terminal syncs its user's timeline from its cursor, in pages; acks move the cursor
/// forward only, and an ack of one message never skips one the terminal lacks.
async fn terminals_sync_from_their_cursor(store: &dyn MessageStore) {
    let mall = tenant("mall");
    store.open(&mall, "mall").await.unwrap();
    assert_eq!(store.cursor(&mall, "bob", "phone").await.unwrap(), 0);
    for i in 1..=25 {
        // two conversations interleaved, one timeline
        let conversation = if i % 2 == 0 { "even" } else { "odd" };
        accept(store, &mall, msg(&format!("m-{i}"), conversation, i)).await;
    }
    // to alice, not in bob's timeline
    let mut reply = msg("r-1", "odd", 0);
    (reply.from_user, reply.to_user) = ("bob".into(), "alice".into());
    accept(store, &mall, reply).await;

    let mut after = 0;
    let mut got = Vec::new();
    loop {
        let page = store.timeline(&mall, "bob", after, 10).await.unwrap();
        assert!(page.messages.len() <= 10);
        got.extend(page.messages.iter().map(|m| m.position));
        after = page.messages.last().map_or(after, |m| m.position);
        if !page.more {
            break;
        }
    }
    assert_eq!(got, (1..=25).collect::<Vec<u64>>());
    let empty = store.timeline(&mall, "bob", 25, 10).await.unwrap();
    assert!(empty.messages.is_empty() && !empty.more);
    // the heads a gateway's heartbeat carries: in the order asked, 0 for nobody's timeline
    let users = ["bob", "nobody", "alice", "bob"].map(String::from);
    assert_eq!(
        store.heads(&mall, &users).await.unwrap(),
        vec![25, 0, 1, 25]
    );
    assert!(store.heads(&mall, &[]).await.unwrap().is_empty());

    let third = store.timeline(&mall, "bob", 2, 1).await.unwrap().messages;
    assert_eq!(
        store
            .position_of(&mall, "bob", &third[0].message_id)
            .await
            .unwrap(),
        Some(3)
    );
    assert_eq!(
        store
            .position_of(&mall, "alice", &third[0].message_id)
            .await
            .unwrap(),
        None,
        "only the receiver's timeline holds it"
    );
    assert_eq!(store.position_of(&mall, "bob", "nope").await.unwrap(), None);

    // contiguous acks: 1 moves, 3 does not skip 2, then 2 and 3 do
    assert_eq!(
        store
            .advance_cursor(&mall, "bob", "phone", 1, true)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .advance_cursor(&mall, "bob", "phone", 3, true)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .advance_cursor(&mall, "bob", "phone", 2, true)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .advance_cursor(&mall, "bob", "phone", 3, true)
            .await
            .unwrap(),
        3
    );
    // "I hold everything up to 20" moves at once; never backwards
    assert_eq!(
        store
            .advance_cursor(&mall, "bob", "phone", 20, false)
            .await
            .unwrap(),
        20
    );
    assert_eq!(
        store
            .advance_cursor(&mall, "bob", "phone", 5, false)
            .await
            .unwrap(),
        20
    );
    // never past the timeline's end: a bogus ack does not skip the messages to come
    assert_eq!(
        store
            .advance_cursor(&mall, "bob", "phone", 1_000_000, false)
            .await
            .unwrap(),
        25
    );
    assert_eq!(
        store
            .advance_cursor(&mall, "carol", "phone", 7, false)
            .await
            .unwrap(),
        0,
        "an empty timeline"
    );
    assert_eq!(store.cursor(&mall, "bob", "phone").await.unwrap(), 25);
    // a first ack of a later message from an unknown terminal does not claim the earlier ones
    assert_eq!(
        store
            .advance_cursor(&mall, "bob", "desk", 7, true)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store.terminals(&mall, "bob").await.unwrap(),
        ["desk", "phone"]
    );
    assert_eq!(
        store.terminals(&mall, "alice").await.unwrap(),
        Vec::<String>::new()
    );
}

/// Concurrent accepts into one conversation and one timeline: numbers are unique and gap-free,
/// and concurrent retries of one send make one message.
async fn concurrent_accepts_never_share_a_number(store: &dyn MessageStore) {
    let mall = tenant("mall");
    store.open(&mall, "mall").await.unwrap();
    let mall = &mall;
    let sends = (0..40).map(|i| {
        // every send twice at once, as a client retrying a send that timed out would
        let m = msg(&format!("m-{}", i / 2), "c", 0);
        let mut m = m;
        m.message_id = format!("attempt-{i}");
        async move { store.accept(mall, &m).await.unwrap() }
    });
    let results = futures::future::join_all(sends).await;
    let new = results
        .iter()
        .filter(|a| matches!(a, Accepted::New(_)))
        .count();
    assert_eq!(new, 20, "each of the 20 sends stored once");
    let history = store.history(mall, "c", 0, 100).await.unwrap();
    assert_eq!(
        history.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<u64>>()
    );
    let mut positions: Vec<u64> = history.iter().map(|m| m.position).collect();
    positions.sort();
    assert_eq!(positions, (1..=20).collect::<Vec<u64>>());
    // every attempt answered with the one stored message of its client id
    for result in &results {
        let m = result.message();
        assert!(history.iter().any(|h| h == m), "{m:?}");
    }
}

async fn purging_respects_the_cutoff(store: &dyn MessageStore) {
    let mall = tenant("mall");
    store.open(&mall, "mall").await.unwrap();
    accept(store, &mall, msg("old", "c", 100)).await;
    accept(store, &mall, msg("new", "c", 200)).await;
    assert_eq!(store.purge_before(&mall, 150).await.unwrap(), 1);
    let left = store.history(&mall, "c", 0, 10).await.unwrap();
    assert_eq!(
        left.into_iter().map(|m| m.message_id).collect::<Vec<_>>(),
        ["new"]
    );
    let timeline = store.timeline(&mall, "bob", 0, 10).await.unwrap();
    assert_eq!(timeline.messages.len(), 1);
    // numbering goes on after a purge: nothing is numbered twice
    let next = accept(store, &mall, msg("later", "c", 300)).await;
    assert_eq!((next.seq, next.position), (3, 3));
}

async fn bad_tenants_get_clear_errors(store: &dyn MessageStore) {
    let (mall, intruder) = (tenant("mall"), tenant("intruder"));
    let err = store.history(&intruder, "c", 0, 10).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::UnknownTenant(t) if t == &intruder),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "tenant intruder has no data namespace in this store (it is not onboarded here)"
    );
    store.open(&mall, "mall").await.unwrap();
    store
        .open(&mall, "mall")
        .await
        .expect("opening twice is fine");
    let err = store.open(&intruder, "mall").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::NamespaceTaken { owner, .. } if owner == &mall),
        "{err}"
    );
    let err = store.open(&intruder, "Bad-Name").await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidNamespace(_)), "{err}");
    assert!(
        store.history(&intruder, "c", 0, 10).await.is_err(),
        "refused open grants nothing"
    );
}

/// Only participants write into an existing conversation when `members_only`: its first
/// message makes sender and receiver participants, a participant brings someone new in, an
/// outsider is refused (and nothing of it is stored); the platform's own messages go anywhere.
async fn only_participants_write_into_a_conversation(store: &dyn MessageStore) {
    let mall = tenant("mall");
    store.open(&mall, "mall").await.unwrap();
    let from = |id: &str, sender: &str, receiver: &str| NewMessage {
        from_user: sender.into(),
        to_user: receiver.into(),
        members_only: true,
        ..msg(id, "c-ab", 10)
    };
    accept(store, &mall, from("m-1", "alice", "bob")).await;
    accept(store, &mall, from("m-2", "bob", "alice")).await;
    let refused = store
        .accept(&mall, &from("m-3", "mallory", "alice"))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, StoreError::NotAParticipant { conversation, user }
            if conversation == "c-ab" && user == "mallory"),
        "{refused:?}"
    );
    assert!(!refused.is_transient());
    // alice brings carol in; carol may then write
    accept(store, &mall, from("m-4", "alice", "carol")).await;
    let carols = accept(store, &mall, from("m-5", "carol", "alice")).await;
    assert_eq!(carols.seq, 4, "the refused message took no number");
    // the platform writes anywhere
    let system = NewMessage {
        members_only: false,
        ..from("m-6", "system", "alice")
    };
    accept(store, &mall, system).await;
    let conversation = store.conversation(&mall, "c-ab").await.unwrap().unwrap();
    assert!(!conversation.participants.contains(&"mallory".to_owned()));
}

fn order(id: &str, user: &str, status: i32, created_at_ms: i64) -> mesh_store::StoredOrder {
    mesh_store::StoredOrder {
        order_id: id.into(),
        user_id: user.into(),
        merchant_id: "m-1".into(),
        status,
        total_minor: 4999,
        currency: "EUR".into(),
        created_at_ms,
        conversation_id: "c-1".into(),
    }
}

/// The order book: per tenant, a replayed announcement keeps what moved on, moves apply only
/// from the state they left, a final state stays, newest first per user.
async fn the_order_book_keeps_each_tenants_orders(store: &dyn MessageStore) {
    const CANCELLED: i32 = 5;
    let (mall, paipai) = (tenant("mall"), tenant("paipai"));
    store.open(&mall, "mall").await.unwrap();
    store.open(&paipai, "paipai").await.unwrap();
    assert!(
        store
            .put_new_order(&mall, &order("o-1", "alice", 1, 10))
            .await
            .unwrap()
    );
    store
        .put_order(&mall, &order("o-2", "alice", 1, 20))
        .await
        .unwrap();
    store
        .put_order(&paipai, &order("o-1", "bob", 2, 30))
        .await
        .unwrap();
    // the same id in another tenant is another order
    assert_eq!(
        store.order(&mall, "o-1").await.unwrap().unwrap().user_id,
        "alice"
    );
    assert_eq!(
        store.order(&paipai, "o-1").await.unwrap().unwrap().user_id,
        "bob"
    );
    assert!(store.order(&mall, "o-9").await.unwrap().is_none());
    // moved from the state it is in; not from another
    let paid = store
        .move_order(&mall, "o-1", Some(1), 2, CANCELLED)
        .await
        .unwrap();
    assert_eq!(paid.map(|o| o.status), Some(2));
    assert!(
        store
            .move_order(&mall, "o-1", Some(1), 3, CANCELLED)
            .await
            .unwrap()
            .is_none()
    );
    // a replayed announcement does not take it back
    assert!(
        !store
            .put_new_order(&mall, &order("o-1", "alice", 1, 10))
            .await
            .unwrap()
    );
    assert_eq!(store.order(&mall, "o-1").await.unwrap().unwrap().status, 2);
    // cancelled stays cancelled
    store
        .move_order(&mall, "o-1", None, CANCELLED, CANCELLED)
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .move_order(&mall, "o-1", None, 2, CANCELLED)
            .await
            .unwrap()
            .is_none()
    );
    let listed: Vec<String> = store
        .orders_of(&mall, "alice", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.order_id)
        .collect();
    assert_eq!(listed, ["o-2", "o-1"]);
    assert!(
        store
            .orders_of(&paipai, "alice", 10)
            .await
            .unwrap()
            .is_empty()
    );
    // an unopened tenant reads nothing of anyone's
    assert!(matches!(
        store.order(&tenant("guoji"), "o-1").await,
        Err(StoreError::UnknownTenant(_))
    ));
}

/// Services' records: per tenant, a create never overwrites, a write at a stale version is a
/// conflict, several writes are all or none, an owner's records newest first, values checked.
async fn records_are_kept_per_tenant_with_versions(store: std::sync::Arc<dyn MessageStore>) {
    use mesh_store::{
        Collection,
        records::{Expect, MAX_VALUE_BYTES, RecordStore, RecordWrite},
    };
    let (mall, paipai) = (tenant("mall"), tenant("paipai"));
    store.open(&mall, "mall").await.unwrap();
    store.open(&paipai, "paipai").await.unwrap();
    let records: std::sync::Arc<dyn RecordStore> = store;
    let coupons: Collection<String> = Collection::new(records.clone(), "coupons");
    assert_eq!(
        coupons
            .insert(&mall, "c-1", "alice", &"10% off".into())
            .await
            .unwrap(),
        1
    );
    // a second create of the same key is refused, the first value kept
    let again = coupons.insert(&mall, "c-1", "bob", &"free".into()).await;
    assert!(
        matches!(&again, Err(StoreError::Conflict { found, .. }) if found.contains("exists already")),
        "{again:?}"
    );
    // the same key in another tenant is another record
    coupons
        .insert(&paipai, "c-1", "carol", &"5% off".into())
        .await
        .unwrap();
    let c1 = coupons.get(&mall, "c-1").await.unwrap().unwrap();
    assert_eq!(
        (c1.value.as_str(), c1.owner.as_str(), c1.version),
        ("10% off", "alice", 1)
    );
    // optimistic concurrency: the writer at version 1 wins, the second at version 1 loses
    assert_eq!(
        coupons
            .put_expecting(&mall, "c-1", "alice", &"used".into(), Expect::Version(1))
            .await
            .unwrap(),
        2
    );
    let stale = coupons
        .put_expecting(&mall, "c-1", "alice", &"unused".into(), Expect::Version(1))
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
    assert_eq!(
        coupons.get(&mall, "c-1").await.unwrap().unwrap().value,
        "used"
    );
    // all or none: the second write's conflict leaves the first unwritten
    let both = records
        .write_records(
            &mall,
            &[
                coupons.write("c-2", "alice", &"new".into(), Expect::Absent),
                coupons.write("c-1", "alice", &"x".into(), Expect::Absent),
            ],
        )
        .await;
    assert!(
        matches!(both, Err(StoreError::Conflict { ref record, .. }) if record == "coupons/c-1"),
        "{both:?}"
    );
    assert!(coupons.get(&mall, "c-2").await.unwrap().is_none());
    records
        .write_records(
            &mall,
            &[
                coupons.write("c-2", "alice", &"b".into(), Expect::Absent),
                coupons.write("c-3", "bob", &"c".into(), Expect::Any),
            ],
        )
        .await
        .unwrap();
    // the clock moves on: the update is newer than the first write, which the order by time shows
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    coupons
        .put(&mall, "c-2", "alice", &"b2".into())
        .await
        .unwrap();
    let alices: Vec<String> = coupons
        .owned_by(&mall, "alice", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(alices, ["c-2", "c-1"]);
    assert_eq!(coupons.owned_by(&mall, "alice", 1).await.unwrap().len(), 1);
    assert!(
        coupons
            .owned_by(&paipai, "alice", 10)
            .await
            .unwrap()
            .is_empty()
    );
    // another collection of the same tenant is apart
    let gifts: Collection<String> = Collection::new(records.clone(), "gifts");
    assert!(gifts.get(&mall, "c-1").await.unwrap().is_none());
    assert!(coupons.delete(&mall, "c-3").await.unwrap());
    assert!(!coupons.delete(&mall, "c-3").await.unwrap());
    // what no backend keeps: an empty key, an oversized value
    let empty = records
        .write_records(
            &mall,
            &[RecordWrite {
                collection: "coupons".into(),
                key: String::new(),
                owner: String::new(),
                value: vec![],
                expect: Expect::Any,
            }],
        )
        .await;
    assert!(
        matches!(empty, Err(StoreError::InvalidRecord { .. })),
        "{empty:?}"
    );
    let big = coupons
        .put(&mall, "c-9", "alice", &"x".repeat(MAX_VALUE_BYTES + 1))
        .await;
    assert!(
        matches!(big, Err(StoreError::InvalidRecord { .. })),
        "{big:?}"
    );
    // an unopened tenant reads nothing of anyone's
    assert!(matches!(
        coupons.get(&tenant("guoji"), "c-1").await,
        Err(StoreError::UnknownTenant(_))
    ));
}

/// A read receipt that moves its reader is an entry of every receiver's timeline, between the
/// messages around it, synced like them; one that moves nothing (repeated, or less far) adds
/// nothing; the conversation's history and numbering never see it.
async fn receipts_are_timeline_entries(store: &dyn MessageStore) {
    let mall = tenant("mall");
    store.open(&mall, "mall").await.unwrap();
    for i in 1..=3 {
        accept(store, &mall, msg(&format!("m-{i}"), "c", i)).await;
    }
    let read = |up_to_seq| StoredReceipt {
        conversation_id: "c".into(),
        reader: "bob".into(),
        up_to_seq,
        read_at_ms: 100 + up_to_seq as i64,
    };
    let receivers = ["bob".to_string(), "alice".to_string()];
    let entries = store
        .record_receipt(&mall, &read(2), &receivers)
        .await
        .unwrap();
    let at: Vec<(&str, u64)> = entries
        .iter()
        .map(|e| (e.to_user.as_str(), e.position))
        .collect();
    // bob's 4th entry (after his 3 messages), alice's first; in the order asked
    assert_eq!(at, [("bob", 4), ("alice", 1)]);
    assert_eq!(entries[0].receipt(), Some(read(2)));
    assert_eq!(entries[0].kind, mesh_store::READ_RECEIPT_KIND);
    // repeated, or less far: nothing new
    for seq in [2, 1] {
        let again = store.record_receipt(&mall, &read(seq), &receivers).await;
        assert_eq!(again.unwrap(), [], "a receipt up to {seq} moved nothing");
    }
    assert_eq!(
        store.receipt(&mall, "c", "bob").await.unwrap(),
        Some(read(2))
    );
    accept(store, &mall, msg("m-4", "c", 4)).await;
    store
        .record_receipt(&mall, &read(4), &receivers)
        .await
        .unwrap();
    // bob's timeline: 3 messages, the receipt, the 4th message, the receipt up to it
    let bob = store.timeline(&mall, "bob", 0, 10).await.unwrap().messages;
    let kinds: Vec<(u64, Option<u64>)> = bob
        .iter()
        .map(|e| (e.position, e.receipt().map(|r| r.up_to_seq)))
        .collect();
    assert_eq!(
        kinds,
        [
            (1, None),
            (2, None),
            (3, None),
            (4, Some(2)),
            (5, None),
            (6, Some(4))
        ]
    );
    let alice = store
        .timeline(&mall, "alice", 0, 10)
        .await
        .unwrap()
        .messages;
    let receipts: Vec<Option<StoredReceipt>> = alice.iter().map(|e| e.receipt()).collect();
    assert_eq!(receipts, [Some(read(2)), Some(read(4))]);
    assert_eq!(store.heads(&mall, &receivers).await.unwrap(), [6, 2]);
    // the conversation holds its 4 messages, no receipt
    let history = store.history(&mall, "c", 0, 10).await.unwrap();
    assert_eq!(
        history.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(
        store
            .conversation(&mall, "c")
            .await
            .unwrap()
            .unwrap()
            .last_seq,
        4
    );
    // a cursor moves over receipts like over messages
    assert_eq!(
        store
            .advance_cursor(&mall, "alice", "desk", 2, false)
            .await
            .unwrap(),
        2
    );
}

/// A user's terminals are listed with their cursors and when each was last seen; a forgotten
/// one is gone from the list and syncs from the start if it comes back.
async fn terminals_are_listed_and_forgotten(store: &dyn MessageStore) {
    let mall = tenant("mall");
    store.open(&mall, "mall").await.unwrap();
    for i in 1..=2 {
        accept(store, &mall, msg(&format!("m-{i}"), "c", i)).await;
    }
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    store.cursor(&mall, "bob", "phone").await.unwrap();
    store
        .advance_cursor(&mall, "bob", "desk", 2, false)
        .await
        .unwrap();
    let listed = store.terminal_cursors(&mall, "bob").await.unwrap();
    let at: Vec<(&str, u64)> = listed
        .iter()
        .map(|t| (t.terminal_id.as_str(), t.position))
        .collect();
    assert_eq!(at, [("desk", 2), ("phone", 0)]);
    assert!(listed.iter().all(|t| t.seen_at_ms >= before), "{listed:?}");
    assert!(store.forget_terminal(&mall, "bob", "desk").await.unwrap());
    assert!(!store.forget_terminal(&mall, "bob", "desk").await.unwrap());
    assert_eq!(store.terminals(&mall, "bob").await.unwrap(), ["phone"]);
    assert_eq!(store.cursor(&mall, "bob", "desk").await.unwrap(), 0);
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&mesh_store::MemoryStore::default()).await;
                }
            )*
        }
        mod postgresql {
            $(
                #[tokio::test]
                async fn $name() {
                    let store = super::postgres().await;
                    super::$name(&store).await;
                    store.drop_opened().await.unwrap();
                }
            )*
        }
    };
}

both_backends!(
    tenants_never_see_each_other,
    accepts_are_numbered_once_and_history_is_ordered,
    terminals_sync_from_their_cursor,
    concurrent_accepts_never_share_a_number,
    purging_respects_the_cutoff,
    bad_tenants_get_clear_errors,
    only_participants_write_into_a_conversation,
    the_order_book_keeps_each_tenants_orders,
    receipts_are_timeline_entries,
    terminals_are_listed_and_forgotten,
);

/// The record suite takes the store shared, as services hold it.
mod records {
    use std::sync::Arc;

    #[tokio::test]
    async fn embedded() {
        super::records_are_kept_per_tenant_with_versions(Arc::new(
            mesh_store::MemoryStore::default(),
        ))
        .await;
    }

    #[tokio::test]
    async fn postgresql() {
        let store = Arc::new(super::postgres().await);
        super::records_are_kept_per_tenant_with_versions(store.clone()).await;
        store.drop_opened().await.unwrap();
    }
}

#[tokio::test]
async fn postgresql_keeps_each_tenant_in_its_own_schema() {
    let store = postgres().await;
    let (mall, finance) = (tenant("mall"), tenant("finance"));
    store.open(&mall, "mall").await.unwrap();
    store.open(&finance, "finance").await.unwrap();
    accept(&store, &mall, msg("m-1", "c", 0)).await;

    // look with a plain connection: the row is in mall's schema and nowhere else
    let (raw, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let schemas: Vec<String> = raw
        .query(
            "SELECT table_schema FROM information_schema.tables
             WHERE table_name = 'messages' AND table_schema LIKE $1 ORDER BY 1",
            &[&format!("{}%", store_prefix(&store))],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let prefix = store_prefix(&store);
    assert_eq!(
        schemas,
        [format!("{prefix}finance"), format!("{prefix}mall")]
    );
    let count = |schema: String| {
        let raw = &raw;
        async move {
            raw.query_one(&format!("SELECT count(*) FROM {schema}.messages"), &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(count(format!("{prefix}mall")).await, 1);
    assert_eq!(count(format!("{prefix}finance")).await, 0);
    store.drop_opened().await.unwrap();
}

/// A namespace whose schema names another owner is refused before anything is created in
/// it, and dropping a tenant deletes its schema only.
#[tokio::test]
async fn postgresql_refuses_a_foreign_schema_untouched_and_drops_only_its_own() {
    let store = postgres().await;
    let prefix = store_prefix(&store);
    let (raw, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    raw.batch_execute(&format!(
        "CREATE SCHEMA {prefix}squat;
         CREATE TABLE {prefix}squat.owner (tenant text PRIMARY KEY);
         INSERT INTO {prefix}squat.owner VALUES ('mall');"
    ))
    .await
    .unwrap();
    let tables = |schema: String| {
        let raw = &raw;
        async move {
            raw.query_one(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
                &[&schema],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
        }
    };
    let intruder = tenant("intruder");
    let err = store.open(&intruder, "squat").await.unwrap_err();
    assert!(matches!(err, StoreError::NamespaceTaken { .. }), "{err}");
    assert_eq!(
        tables(format!("{prefix}squat")).await,
        1,
        "only its owner table"
    );

    let finance = tenant("finance");
    store.open(&finance, "finance").await.unwrap();
    store.drop_tenant(&intruder).await.unwrap();
    assert_eq!(
        tables(format!("{prefix}squat")).await,
        1,
        "not the intruder's"
    );
    store.drop_tenant(&finance).await.unwrap();
    assert_eq!(tables(format!("{prefix}finance")).await, 0, "dropped");
    raw.batch_execute(&format!("DROP SCHEMA {prefix}squat CASCADE"))
        .await
        .unwrap();
}

fn store_prefix(store: &PgStore) -> String {
    store.prefix().to_owned()
}

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error() {
    let err = PgStore::connect("postgres://postgres@127.0.0.1:1/postgres")
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with(
            "cannot connect to PostgreSQL at postgres://postgres@127.0.0.1:1/postgres"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn postgresql_recovers_when_its_connections_are_killed() {
    let app = format!(
        "mesh-store-test-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let url = format!("{}?application_name={app}", postgres_url());
    let prefix = format!("t{}_", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let store = PgStore::connect_with_prefix(&url, &prefix).await.unwrap();
    let mall = tenant("mall");
    store.open(&mall, "mall").await.unwrap();
    accept(&store, &mall, msg("before", "c", 0)).await;

    // the database goes away under the store's connections (a restart, a failover)
    let (raw, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let killed = raw
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap();
    assert!(!killed.is_empty(), "the store had connections to kill");

    // an operation may fail while the pool notices; it then opens fresh connections
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match store.accept(&mall, &msg("after", "c", 0)).await {
            Ok(_) => break,
            Err(err) => {
                assert!(err.is_transient(), "a lost connection passes: {err}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "no recovery within 10 s: {err}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    let ids: Vec<String> = store
        .history(&mall, "c", 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    assert_eq!(ids, ["before", "after"]);
    store.drop_opened().await.unwrap();
}

#[tokio::test]
async fn postgresql_tells_transient_from_permanent_failures() {
    let store = postgres().await;
    let mall = tenant("mall");
    store.open(&mall, "mall").await.unwrap();
    // a NUL byte can never be stored in a text column: the data is refused, for good
    let mut bad = msg("nul", "c", 0);
    bad.body = "a\u{0}b".into();
    let err = store.accept(&mall, &bad).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    // and nothing of it was kept: the next message takes seq 1
    let next = accept(&store, &mall, msg("ok", "c", 0)).await;
    assert_eq!((next.seq, next.position), (1, 1));
    // a database nobody listens on passes
    let unreachable = PgStore::connect("postgres://postgres@127.0.0.1:1/postgres").await;
    assert!(unreachable.is_err());
    store.drop_opened().await.unwrap();
}

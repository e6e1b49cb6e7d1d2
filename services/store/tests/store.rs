//! One suite, both backends: the embedded store and PostgreSQL (127.0.0.1:5432, or
//! `MESH_TEST_POSTGRES`), each tenant in a schema of its own.

use mesh_contract::TenantId;
use mesh_store::{MessageStore, PgStore, Saved, StoreError, StoredMessage, StoredReceipt};

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

fn msg(id: &str, conversation: &str, seq: u64, sent_at_ms: i64) -> StoredMessage {
    StoredMessage {
        message_id: id.into(),
        conversation_id: conversation.into(),
        seq,
        from_user: "alice".into(),
        to_user: "bob".into(),
        kind: 1,
        body: format!("body of {id}"),
        sent_at_ms,
    }
}

/// The same conversation id in two tenants never mixes: not in history, receipts or purges.
async fn tenants_never_see_each_other(store: &dyn MessageStore) {
    let (mall, paipai) = (tenant("mall"), tenant("paipai"));
    store.open(&mall, "mall").await.unwrap();
    store.open(&paipai, "paipai").await.unwrap();
    store
        .save_message(&mall, &msg("m-1", "c-1", 1, 10))
        .await
        .unwrap();
    store
        .save_message(&mall, &msg("m-2", "c-1", 2, 20))
        .await
        .unwrap();
    store
        .save_message(&paipai, &msg("p-1", "c-1", 1, 10))
        .await
        .unwrap();

    let ids = |v: Vec<StoredMessage>| v.into_iter().map(|m| m.message_id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.history(&mall, "c-1", 0, 10).await.unwrap()),
        ["m-1", "m-2"]
    );
    assert_eq!(
        ids(store.history(&paipai, "c-1", 0, 10).await.unwrap()),
        ["p-1"]
    );

    // the same message id in another tenant is another message, not a duplicate
    assert_eq!(
        store
            .save_message(&paipai, &msg("m-1", "c-9", 1, 10))
            .await
            .unwrap(),
        Saved::New
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

async fn saves_are_idempotent_and_history_is_ordered(store: &dyn MessageStore) {
    let finance = tenant("finance");
    store.open(&finance, "finance").await.unwrap();
    for seq in [3, 1, 2] {
        let saved = store
            .save_message(&finance, &msg(&format!("f-{seq}"), "c", seq, 0))
            .await
            .unwrap();
        assert_eq!(saved, Saved::New);
    }
    assert_eq!(
        store
            .save_message(&finance, &msg("f-2", "c", 2, 0))
            .await
            .unwrap(),
        Saved::Duplicate
    );
    let seqs = |v: Vec<StoredMessage>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.history(&finance, "c", 0, 10).await.unwrap()),
        [1, 2, 3]
    );
    assert_eq!(seqs(store.history(&finance, "c", 1, 1).await.unwrap()), [2]);

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

async fn purging_respects_the_cutoff(store: &dyn MessageStore) {
    let mall = tenant("mall");
    store.open(&mall, "mall").await.unwrap();
    store
        .save_message(&mall, &msg("old", "c", 1, 100))
        .await
        .unwrap();
    store
        .save_message(&mall, &msg("new", "c", 2, 200))
        .await
        .unwrap();
    assert_eq!(store.purge_before(&mall, 150).await.unwrap(), 1);
    let left = store.history(&mall, "c", 0, 10).await.unwrap();
    assert_eq!(
        left.into_iter().map(|m| m.message_id).collect::<Vec<_>>(),
        ["new"]
    );
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
    saves_are_idempotent_and_history_is_ordered,
    purging_respects_the_cutoff,
    bad_tenants_get_clear_errors,
);

#[tokio::test]
async fn postgresql_keeps_each_tenant_in_its_own_schema() {
    let store = postgres().await;
    let (mall, finance) = (tenant("mall"), tenant("finance"));
    store.open(&mall, "mall").await.unwrap();
    store.open(&finance, "finance").await.unwrap();
    store
        .save_message(&mall, &msg("m-1", "c", 1, 0))
        .await
        .unwrap();

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
    store
        .save_message(&mall, &msg("before", "c", 1, 0))
        .await
        .unwrap();

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
        match store.save_message(&mall, &msg("after", "c", 2, 0)).await {
            Ok(_) => break,
            Err(err) => {
                assert!(matches!(err, StoreError::Backend { .. }), "{err}");
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

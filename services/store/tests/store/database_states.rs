//! PostgreSQL as a real dependency, in the states it passes through: a schema it refuses, a
//! long read holding a table, read-only during a failover, a lock it will not give, and
//! connections that go silent. Each case: the failing tenant's work fails (transient where
//! the state passes), and nothing of it reaches the next caller.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use mesh_contract::TenantId;
use mesh_store::{Accepted, MessageStore, NewMessage, PgStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn postgres_url() -> String {
    std::env::var("MESH_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn prefix() -> String {
    format!("t{}_", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

fn tenant(id: &str) -> TenantId {
    TenantId::new(id).unwrap()
}

fn msg(id: &str) -> NewMessage {
    NewMessage {
        message_id: id.into(),
        conversation_id: "c".into(),
        client_msg_id: format!("c-{id}"),
        from_user: "alice".into(),
        to_user: "bob".into(),
        kind: 1,
        body: format!("body of {id}"),
        sent_at_ms: 0,
        members_only: false,
    }
}

/// A connection of the test's own, beside the store's.
async fn raw() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    tokio::spawn(connection);
    client
}

/// `url` with `options` given to every connection (`-c name=value`).
fn with_options(url: &str, options: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options={}", options.replace(' ', "%20"))
}

#[tokio::test]
async fn a_schema_the_database_refuses_leaves_nothing_for_the_next_caller() {
    let prefix = prefix();
    let refused = format!("{prefix}refused");
    let admin = raw().await;
    // a policy of the database's own (an event trigger) refuses one tenant's schema
    let function = format!("{prefix}refuse");
    admin
        .batch_execute(&format!(
            "CREATE FUNCTION {function}() RETURNS event_trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands()
                          WHERE object_identity LIKE '{refused}%') THEN
                 RAISE EXCEPTION 'schema {refused} refused by policy';
               END IF;
             END $$;
             CREATE EVENT TRIGGER {function} ON ddl_command_end EXECUTE FUNCTION {function}();"
        ))
        .await
        .unwrap();
    let store = PgStore::connect_with_prefix(&postgres_url(), &prefix)
        .await
        .unwrap();
    let (mall, guoji) = (tenant("mall"), tenant("guoji"));
    store.open(&mall, "mall").await.unwrap();

    for attempt in 0..3 {
        let err = store.open(&guoji, "refused").await.unwrap_err();
        assert!(err.to_string().contains("refused by policy"), "{err}");
        // the neighbour's next calls run on connections in no aborted transaction
        for i in 0..5 {
            let id = format!("m{attempt}-{i}");
            assert!(
                matches!(store.accept(&mall, &msg(&id)).await, Ok(Accepted::New(_))),
                "mall's send after guoji's refused schema"
            );
        }
    }
    // the refused tenant has nothing: not served, no schema left half made
    assert!(store.accept(&guoji, &msg("x")).await.is_err());
    let left = admin
        .query(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = $1",
            &[&refused],
        )
        .await
        .unwrap();
    assert!(left.is_empty(), "the refused schema was rolled back");

    // the policy lifted, the same store opens it (a worker retrying the tenant)
    admin
        .batch_execute(&format!(
            "DROP EVENT TRIGGER {function}; DROP FUNCTION {function}();"
        ))
        .await
        .unwrap();
    store.open(&guoji, "refused").await.unwrap();
    assert!(matches!(
        store.accept(&guoji, &msg("first")).await,
        Ok(Accepted::New(_))
    ));
    store.drop_opened().await.unwrap();
}

#[tokio::test]
async fn opening_a_current_schema_never_waits_behind_a_long_read() {
    let prefix = prefix();
    let first = PgStore::connect_with_prefix(&postgres_url(), &prefix)
        .await
        .unwrap();
    let mall = tenant("mall");
    first.open(&mall, "mall").await.unwrap();
    first.accept(&mall, &msg("before")).await.unwrap();

    // a report reads the tenant's messages in a long transaction (its lock held until it ends)
    let mut report = raw().await;
    let read = report.transaction().await.unwrap();
    read.query(&format!("SELECT count(*) FROM {prefix}mall.messages"), &[])
        .await
        .unwrap();

    // a worker restarting opens the schema again: it is current, so nothing is altered and
    // nothing waits (before schema versions, ALTER TABLE queued behind the read)
    let restarted = PgStore::connect_with_prefix(&postgres_url(), &prefix)
        .await
        .unwrap();
    restarted.open(&mall, "mall").await.unwrap();
    assert!(matches!(
        restarted.accept(&mall, &msg("during")).await,
        Ok(Accepted::New(_))
    ));

    // a schema that does need its tables changed (an older version) gives up on the lock
    // as transient, and is set up once the read is over
    let admin = raw().await;
    admin
        .batch_execute(&format!("DELETE FROM {prefix}mall.schema_version"))
        .await
        .unwrap();
    let upgraded = PgStore::connect_with_prefix(&postgres_url(), &prefix)
        .await
        .unwrap();
    let err = upgraded.open(&mall, "mall").await.unwrap_err();
    assert!(err.is_transient(), "a lock not given passes: {err}");
    read.commit().await.unwrap();
    upgraded.open(&mall, "mall").await.unwrap();
    first.drop_opened().await.unwrap();
}

#[tokio::test]
async fn a_read_only_database_and_a_lock_timeout_are_transient() {
    let prefix = prefix();
    let writable = PgStore::connect_with_prefix(&postgres_url(), &prefix)
        .await
        .unwrap();
    let mall = tenant("mall");
    writable.open(&mall, "mall").await.unwrap();

    // a demoted primary during a failover answers every write with SQLSTATE 25006
    let read_only = PgStore::connect_with_prefix(
        &with_options(&postgres_url(), "-c default_transaction_read_only=on"),
        &prefix,
    )
    .await
    .unwrap();
    read_only.open(&mall, "mall").await.unwrap();
    let err = read_only.accept(&mall, &msg("ro")).await.unwrap_err();
    assert!(err.is_transient(), "read-only passes: {err}");
    assert!(err.to_string().contains("read-only"), "{err}");

    // a row another session holds, with a lock timeout: SQLSTATE 55P03
    writable.accept(&mall, &msg("first")).await.unwrap();
    let mut holder = raw().await;
    let hold = holder.transaction().await.unwrap();
    hold.query(
        &format!("SELECT * FROM {prefix}mall.conversations WHERE conversation_id = 'c' FOR UPDATE"),
        &[],
    )
    .await
    .unwrap();
    let impatient = PgStore::connect_with_prefix(
        &with_options(&postgres_url(), "-c lock_timeout=100"),
        &prefix,
    )
    .await
    .unwrap();
    impatient.open(&mall, "mall").await.unwrap();
    let err = impatient.accept(&mall, &msg("locked")).await.unwrap_err();
    assert!(err.is_transient(), "a lock timeout passes: {err}");
    hold.rollback().await.unwrap();
    // and the same store's connection is fine afterwards
    assert!(matches!(
        impatient.accept(&mall, &msg("locked")).await,
        Ok(Accepted::New(_))
    ));
    writable.drop_opened().await.unwrap();
}

/// A TCP relay to PostgreSQL whose connections can be frozen: bytes stop flowing both ways,
/// the sockets stay open (a failover behind a NAT, a paused proxy). Connections opened after
/// a freeze flow.
struct FreezingRelay {
    address: std::net::SocketAddr,
    /// Connections numbered below this are frozen.
    frozen_below: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
}

impl FreezingRelay {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let frozen_below = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(0));
        let (frozen, count) = (frozen_below.clone(), next.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let number = count.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = tokio::net::TcpStream::connect("127.0.0.1:5432").await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, number, frozen.clone()));
                tokio::spawn(pipe(sr, cw, number, frozen.clone()));
            }
        });
        Self {
            address,
            frozen_below,
            next,
        }
    }

    /// Every connection open now stops passing bytes.
    fn freeze_open_connections(&self) {
        self.frozen_below
            .store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres@{}:{}/postgres",
            self.address.ip(),
            self.address.port()
        )
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    number: u64,
    frozen_below: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if number < frozen_below.load(Ordering::SeqCst) {
            // frozen: hold both sockets, pass nothing, until the test ends
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn silent_connections_are_replaced_within_seconds() {
    let relay = FreezingRelay::start().await;
    let prefix = prefix();
    let store = PgStore::connect_with_prefix(&relay.url(), &prefix)
        .await
        .unwrap();
    let mall = tenant("mall");
    store.open(&mall, "mall").await.unwrap();
    // a few connections in the pool, all in use at once
    let warm: Vec<_> = (0..6)
        .map(|i| {
            let (store, mall) = (&store, &mall);
            async move { store.accept(mall, &msg(&format!("warm{i}"))).await }
        })
        .collect();
    for done in futures::future::join_all(warm).await {
        done.unwrap();
    }

    relay.freeze_open_connections();
    // sends go on; those that met a silent connection fail as transient, and then the pool
    // holds only connections opened since
    let started = Instant::now();
    let (mut failed, mut sent) = (0, 0);
    let mut i = 0;
    while sent < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "sends did not recover: {failed} failed, {sent} sent"
        );
        i += 1;
        // as a call does: with a deadline (Send's is 1 s) shorter than the store's own bound
        let message = msg(&format!("after{i}"));
        let sending = store.accept(&mall, &message);
        match tokio::time::timeout(Duration::from_secs(1), sending).await {
            Ok(Ok(_)) => sent += 1,
            Ok(Err(err)) => {
                assert!(err.is_transient(), "a silent connection passes: {err}");
                failed += 1;
            }
            Err(_) => failed += 1, // the caller gave up
        }
    }
    // the first send meets a silent connection and gives up; the next finds the next one
    // silent when it is checked, which replaces all six: not one failure per connection
    assert!(
        failed <= 3,
        "one silent connection found replaces every one opened before it: {failed} failed"
    );
    // a fresh store to clean up: this one's old connections are frozen
    let cleanup = PgStore::connect_with_prefix(&postgres_url(), &prefix)
        .await
        .unwrap();
    cleanup.open(&mall, "mall").await.unwrap();
    cleanup.drop_opened().await.unwrap();
}

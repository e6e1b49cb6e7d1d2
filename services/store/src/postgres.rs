//! The PostgreSQL store: one schema per tenant.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Metrics, Object, Pool, RecyclingMethod,
};
use mesh_contract::TenantId;
use tokio_postgres::NoTls;

use crate::{
    Accepted, ConversationInfo, MessageStore, NewMessage, OrderRecords, Page, StoreError,
    StoredMessage, StoredOrder, StoredReceipt,
    records::{self, Expect, Record, RecordStore, RecordWrite, now_ms},
    valid_namespace,
};

/// Schema prefix of [`PgStore::connect`]: tenant `mall` with namespace `mall` lives in schema
/// `mesh_mall`.
pub const DEFAULT_PREFIX: &str = "mesh_";

/// Connections the store keeps open at most.
const POOL_SIZE: usize = 8;
/// Longest wait for a pooled connection, a new one, or checking an idle one: past it the
/// operation fails as transient rather than hang (a database that stopped answering).
const POOL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a statement may run on the server (`statement_timeout`): the store's statements
/// touch a handful of rows, so one running longer waits on something (a lock, a failing disk)
/// and is better answered as transient than left holding a connection.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest one store operation may take, seen from here: past it the connection is taken for
/// silent (a failover, a NAT that dropped its state, a frozen proxy: the server's own timeout
/// never reaches us) and every connection opened before is replaced, not reused.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(6);
/// Longest wait for a table lock while setting a schema up: a long read holding one makes
/// the set-up fail as transient (retried) rather than queue every other statement behind it.
const DDL_LOCK_TIMEOUT: &str = "2s";
/// Longest dropping a tenant's schema may take (a purge: maintenance, not a call).
const DROP_WITHIN: Duration = Duration::from_secs(120);
/// Expired messages deleted per statement: a retention purge of a large backlog runs as many
/// short statements, each within the bounds of any other.
const PURGE_BATCH: i64 = 5000;
/// A connection not handed out for this long is checked (an empty query, answered within
/// [`CHECK_WITHIN`]) before it is used again: one the network silently dropped is replaced,
/// not tried. So is every connection handed out before a caller last gave up mid-operation
/// (and the abandoned one itself is checked in the background: [`PgStore::within`]).
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(10);
/// An empty query answers in well under a millisecond on a live connection nearby, and in
/// far less than this on a busy server; past it the connection, and every one opened before
/// it, is taken for silent.
const CHECK_WITHIN: Duration = Duration::from_millis(500);
/// A connection is replaced after this long, whatever its state: a server-side setting or
/// a primary that moved is picked up without a restart.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(600);
/// What the tables of a tenant's schema look like: recorded in `<schema>.schema_version`
/// once set up, so opening a schema that is current reads one row and takes no lock (a
/// worker restarting never waits behind a long report query). Raise it with any DDL change.
const SCHEMA_VERSION: i32 = 3;

/// PostgreSQL backend: each tenant's tables live in schema `<prefix><namespace>`, created on
/// [`MessageStore::open`]. Statements are built from that one schema name, which was
/// validated as a plain identifier, so a statement reaches exactly one tenant's tables.
///
/// A pool of connections (deadpool-postgres) with prepared statements cached per connection.
/// The database is a dependency that fails in many ways, and none of them may reach a tenant
/// other than the one whose work met it:
/// - a connection whose work failed mid-way (a schema the server refused) is discarded, never
///   handed to the next caller in an aborted transaction;
/// - every operation is bounded ([`OPERATION_TIMEOUT`], and `statement_timeout` on the
///   server); one that takes longer marks every connection opened before it as suspect, so
///   a pool of silently dead connections is replaced at once rather than one by one;
/// - connections idle a while are checked before use, TCP keepalives are on, and no
///   connection lives longer than [`MAX_CONNECTION_AGE`];
/// - states the server passes through (read-only during a failover, a lock timeout, too many
///   connections, shutting down) are [transient](StoreError::is_transient): retried, not
///   answered as the caller's mistake or dead-lettered.
pub struct PgStore {
    pool: Pool,
    prefix: String,
    schemas: RwLock<HashMap<TenantId, String>>,
    /// Connections created before this instant are not used again.
    suspect_before: Arc<Mutex<Option<Instant>>>,
    /// When a caller last gave up on an operation mid-way: connections handed out before
    /// then are checked before their next use (the one it held may have gone silent, and its
    /// siblings with it).
    abandoned_at: Arc<Mutex<Option<Instant>>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("prefix", &self.prefix)
            .field("schemas", &self.schemas)
            .finish_non_exhaustive()
    }
}

/// Why [`PgStore::connect`] failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to PostgreSQL at {url}: {reason}")]
pub struct ConnectError {
    url: String,
    reason: String,
}

impl PgStore {
    /// Connects with the schema prefix [`DEFAULT_PREFIX`].
    pub async fn connect(url: &str) -> Result<Self, ConnectError> {
        Self::connect_with_prefix(url, DEFAULT_PREFIX).await
    }

    /// Connects; tenant schemas are named `<prefix><namespace>` (tests use a prefix per run).
    pub async fn connect_with_prefix(url: &str, prefix: &str) -> Result<Self, ConnectError> {
        let error = |reason: String| ConnectError {
            url: url.to_owned(),
            reason,
        };
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| error(format!("{e}")))?;
        // the server ends a statement stuck on a lock rather than let it hold a connection;
        // options the URL gives are kept, after ours (theirs win)
        let options = format!(
            "-c statement_timeout={} {}",
            STATEMENT_TIMEOUT.as_millis(),
            config.get_options().unwrap_or_default()
        );
        config
            .options(options.trim_end())
            .connect_timeout(POOL_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .tcp_user_timeout(OPERATION_TIMEOUT);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let suspect_before: Arc<Mutex<Option<Instant>>> = Arc::default();
        let abandoned_at: Arc<Mutex<Option<Instant>>> = Arc::default();
        let (suspect, abandoned) = (suspect_before.clone(), abandoned_at.clone());
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .pre_recycle(Hook::async_fn(move |client, metrics| {
                let (suspect, abandoned) = (suspect.clone(), *abandoned.lock().expect("lock"));
                Box::pin(async move { reusable(client, metrics, &suspect, abandoned).await })
            }))
            .build()
            .map_err(|e| error(e.to_string()))?;
        // fail now, with the address, rather than on the first message
        drop(pool.get().await.map_err(|e| error(e.to_string()))?);
        Ok(Self {
            pool,
            prefix: prefix.to_owned(),
            schemas: RwLock::default(),
            suspect_before,
            abandoned_at,
        })
    }

    /// Runs one operation of `tenant`'s on a pooled connection, bounded by
    /// [`OPERATION_TIMEOUT`] from when it has the connection (waiting for one is bounded by the
    /// pool). What becomes of the connection:
    /// - the operation answered: back to the pool; it failed in a way that may pass (the
    ///   server read-only, shutting down, the connection broken): closed, so the next one is
    ///   opened afresh (to the new primary, say);
    /// - no answer within the bound (the server's own `statement_timeout` would have answered):
    ///   closed, and every connection opened before it is taken for silent too;
    /// - the caller gave up first (its deadline): checked in the background, as a statement
    ///   may still be running on it; back to the pool if it answers, else treated as silent.
    async fn within<T>(
        &self,
        tenant: &TenantId,
        operation: &'static str,
        work: impl AsyncFnOnce(&mut Object) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.leased(tenant, operation, false, work).await
    }

    /// [`PgStore::within`]; with `discard_on_error`, the connection is closed after any
    /// failure (set-up work that may have left session state behind).
    async fn leased<T>(
        &self,
        tenant: &TenantId,
        operation: &'static str,
        discard_on_error: bool,
        work: impl AsyncFnOnce(&mut Object) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut lease = Lease {
            client: Some(self.client(tenant).await?),
            suspect_before: self.suspect_before.clone(),
            abandoned_at: self.abandoned_at.clone(),
        };
        let client = lease.client.as_mut().expect("leased");
        let outcome = tokio::time::timeout(OPERATION_TIMEOUT, work(client)).await;
        match outcome {
            Ok(Ok(value)) => {
                lease.give_back();
                Ok(value)
            }
            Ok(Err(err)) => {
                if discard_on_error || err.is_transient() {
                    lease.discard();
                } else {
                    lease.give_back();
                }
                Err(err)
            }
            Err(_) => {
                lease.discard();
                self.suspect_connections();
                Err(StoreError::Backend {
                    tenant: tenant.clone(),
                    operation,
                    reason: format!(
                        "no answer from PostgreSQL within {} ms",
                        OPERATION_TIMEOUT.as_millis()
                    ),
                    transient: true,
                })
            }
        }
    }

    /// Marks every connection opened until now as not to be used again: the idle ones are
    /// closed now, those in use when they come back.
    fn suspect_connections(&self) {
        let now = Instant::now();
        *self.suspect_before.lock().expect("lock") = Some(now);
        self.pool.retain(|_, metrics| metrics.created > now);
        tracing::warn!("a PostgreSQL operation got no answer: replacing the pooled connections");
    }

    /// Drops the schema of every tenant opened through this store, with its data (off-boarding,
    /// and tests cleaning up after themselves).
    pub async fn drop_opened(&self) -> Result<(), StoreError> {
        let schemas: Vec<(TenantId, String)> =
            self.schemas.write().expect("lock").drain().collect();
        for (tenant, schema) in schemas {
            self.drop_schema(&tenant, &schema).await?;
        }
        Ok(())
    }

    /// Drops `schema` with everything in it: maintenance work, so not under the bounds of a
    /// call's statements ([`DROP_WITHIN`]), and on a connection closed afterwards.
    async fn drop_schema(&self, tenant: &TenantId, schema: &str) -> Result<(), StoreError> {
        const OP: &str = "dropping its schema";
        let mut client = self.client(tenant).await?;
        let dropped = tokio::time::timeout(DROP_WITHIN, async {
            let tx = client.transaction().await.map_err(backend(tenant, OP))?;
            tx.batch_execute(&format!(
                "SET LOCAL statement_timeout = {};
                 SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}';
                 DROP SCHEMA IF EXISTS {schema} CASCADE;",
                DROP_WITHIN.as_millis()
            ))
            .await
            .map_err(backend(tenant, OP))?;
            tx.commit().await.map_err(backend(tenant, OP))
        })
        .await;
        drop(Object::take(client));
        dropped.unwrap_or_else(|_| {
            Err(StoreError::Backend {
                tenant: tenant.clone(),
                operation: OP,
                reason: format!("not done within {} s", DROP_WITHIN.as_secs()),
                transient: true,
            })
        })
    }

    /// `sql` prepared on `client` (once per connection), for `operation` on `tenant`'s data.
    async fn prepared<'c>(
        &self,
        client: &'c Object,
        tenant: &TenantId,
        operation: &'static str,
        sql: &str,
    ) -> Result<(&'c Object, tokio_postgres::Statement), StoreError> {
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(backend(tenant, operation))?;
        Ok((client, statement))
    }

    /// The rows of `sql` (one statement, prepared once per connection) with `params`, for
    /// `operation` on `tenant`'s data: the shape of every single-statement read.
    async fn rows(
        &self,
        tenant: &TenantId,
        operation: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        self.within(tenant, operation, async |client: &mut Object| {
            let (client, statement) = self.prepared(client, tenant, operation, sql).await?;
            client
                .query(&statement, params)
                .await
                .map_err(backend(tenant, operation))
        })
        .await
    }

    /// A pooled connection, for work on `tenant`'s data.
    async fn client(&self, tenant: &TenantId) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(|e| StoreError::Backend {
            tenant: tenant.clone(),
            operation: "getting a connection",
            reason: e.to_string(),
            // unreachable, refusing connections, or the pool exhausted: all pass
            transient: true,
        })
    }

    /// The schema prefix this store was opened with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn schema(&self, tenant: &TenantId) -> Result<String, StoreError> {
        self.schemas
            .read()
            .expect("lock")
            .get(tenant)
            .cloned()
            .ok_or_else(|| StoreError::UnknownTenant(tenant.clone()))
    }
}

fn backend(
    tenant: &TenantId,
    operation: &'static str,
) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    let tenant = tenant.clone();
    move |err| StoreError::Backend {
        tenant,
        operation,
        transient: transient(&err),
        reason: err
            .as_db_error()
            .map_or_else(|| err.to_string(), |db| db.message().to_owned()),
    }
}

/// A pooled connection lent to one operation ([`PgStore::within`]). Dropped while still
/// holding it, the operation was abandoned by its caller mid-way.
struct Lease {
    client: Option<Object>,
    suspect_before: Arc<Mutex<Option<Instant>>>,
    abandoned_at: Arc<Mutex<Option<Instant>>>,
}

impl Lease {
    fn give_back(&mut self) {
        self.client.take();
    }

    fn discard(&mut self) {
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        *self.abandoned_at.lock().expect("lock") = Some(Instant::now());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            drop(Object::take(client));
            return;
        };
        // a statement of the abandoned operation may still run: the check answers after it,
        // at the latest when the server's statement_timeout ends it
        let suspect_before = self.suspect_before.clone();
        runtime.spawn(async move {
            let checked = tokio::time::timeout(
                STATEMENT_TIMEOUT + Duration::from_secs(1),
                client.simple_query(""),
            )
            .await;
            if !matches!(checked, Ok(Ok(_))) {
                *suspect_before.lock().expect("lock") = Some(Instant::now());
                drop(Object::take(client));
            }
        });
    }
}

/// Whether a pooled connection may be handed out again: not one opened before the store took
/// its connections for silent, nor one older than [`MAX_CONNECTION_AGE`]. One not handed out
/// for [`IDLE_CHECK_AFTER`], or handed out before a caller last gave up mid-operation
/// (`abandoned`: that connection, and its siblings, may have gone silent together), must
/// answer an empty query within [`CHECK_WITHIN`] first; one that does not makes every
/// connection opened before it suspect (a failover, a NAT that dropped its state).
async fn reusable(
    client: &mut deadpool_postgres::ClientWrapper,
    metrics: &Metrics,
    suspect_before: &Mutex<Option<Instant>>,
    abandoned: Option<Instant>,
) -> Result<(), HookError> {
    if suspect_before
        .lock()
        .expect("lock")
        .is_some_and(|before| metrics.created <= before)
    {
        return Err(HookError::message("opened before a connection went silent"));
    }
    if metrics.age() > MAX_CONNECTION_AGE {
        return Err(HookError::message("old enough to be replaced"));
    }
    // `recycled` is when it was last handed out; `last_used` counts from then
    let handed_out = metrics.recycled.unwrap_or(metrics.created);
    let out_when_abandoned = abandoned.is_some_and(|at| handed_out < at);
    if metrics.last_used() > IDLE_CHECK_AFTER || out_when_abandoned {
        match tokio::time::timeout(CHECK_WITHIN, client.simple_query("")).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(HookError::Backend(e)),
            Err(_) => {
                *suspect_before.lock().expect("lock") = Some(Instant::now());
                return Err(HookError::message("silent when checked"));
            }
        }
    }
    Ok(())
}

/// Whether the same statement can succeed later. No SQLSTATE: transient when the connection
/// failed (closed, I/O), permanent otherwise (a value that cannot be encoded). With one, the
/// states a server passes through are transient:
/// - 08 connection exception, 53 insufficient resources (too many connections, disk full),
///   57 operator intervention (shutting down, a statement cancelled by its timeout), 58
///   system error;
/// - 25006 read-only (a demoted primary during a failover), 25P02 a connection left in an
///   aborted transaction;
/// - 55P03 lock not available (`lock_timeout`), 55006 object in use;
/// - 40001 serialization failure, 40P01 deadlock.
///
/// Everything else (data exceptions, constraint violations, program limits such as an index
/// row too large) is about the data and fails the same way again. The connection a transient
/// failure met is closed ([`PgStore::within`]): the next try opens a new one, to wherever the
/// database is now.
fn transient(err: &tokio_postgres::Error) -> bool {
    match err.code() {
        None => {
            err.is_closed()
                || std::error::Error::source(err).is_some_and(|s| s.is::<std::io::Error>())
        }
        Some(state) => transient_state(state.code()),
    }
}

fn transient_state(code: &str) -> bool {
    ["08", "53", "57", "58"]
        .iter()
        .any(|class| code.starts_with(class))
        || ["25006", "25P02", "55P03", "55006", "40001", "40P01"].contains(&code)
}

/// Opens `schema` for `tenant`: claims it (a namespace that is another tenant's is refused
/// before anything is created in it) and brings its tables to [`SCHEMA_VERSION`]. A schema at
/// that version already is only read: no DDL, no lock, so opening never waits behind a long
/// query of somebody else's. Set-up runs in transactions that end (commit or roll back)
/// before this returns, waits at most [`DDL_LOCK_TIMEOUT`] for a lock, and an advisory lock
/// keeps two processes opening the same schema from racing on CREATE.
async fn set_up(
    client: &mut Object,
    tenant: &TenantId,
    schema: &str,
    namespace: &str,
) -> Result<(), StoreError> {
    if let Some((owner, version)) = recorded(client, tenant, schema).await?
        && version >= SCHEMA_VERSION
    {
        return owned(tenant, namespace, &owner);
    }
    let err = |operation| backend(tenant, operation);
    let tx = client
        .transaction()
        .await
        .map_err(err("claiming its schema"))?;
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}';
         SELECT pg_advisory_xact_lock(hashtext('mesh-store:{schema}'));
         CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.owner (tenant text PRIMARY KEY);
         INSERT INTO {schema}.owner (tenant)
           SELECT '{tenant}' WHERE NOT EXISTS (SELECT 1 FROM {schema}.owner);"
    ))
    .await
    .map_err(err("creating its schema"))?;
    let owner: String = tx
        .query_one(&format!("SELECT tenant FROM {schema}.owner"), &[])
        .await
        .map_err(err("reading its schema's owner"))?
        .get(0);
    // another tenant's: nothing is created in it (the transaction rolls back on drop)
    owned(tenant, namespace, &owner)?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {schema}.messages (
           message_id text PRIMARY KEY,
           conversation_id text NOT NULL,
           seq bigint NOT NULL,
           from_user text NOT NULL,
           to_user text NOT NULL,
           kind integer NOT NULL,
           body text NOT NULL,
           sent_at_ms bigint NOT NULL);
         CREATE INDEX IF NOT EXISTS messages_by_conversation
           ON {schema}.messages (conversation_id, seq);
         ALTER TABLE {schema}.messages
           ADD COLUMN IF NOT EXISTS client_msg_id text,
           ADD COLUMN IF NOT EXISTS position bigint;
         DROP INDEX IF EXISTS {schema}.messages_by_client_id;
         CREATE UNIQUE INDEX IF NOT EXISTS messages_by_sender_client_id
           ON {schema}.messages (conversation_id, from_user, client_msg_id);
         CREATE UNIQUE INDEX IF NOT EXISTS messages_by_receiver
           ON {schema}.messages (to_user, position);
         CREATE TABLE IF NOT EXISTS {schema}.conversations (
           conversation_id text PRIMARY KEY,
           last_seq bigint NOT NULL);
         CREATE TABLE IF NOT EXISTS {schema}.participants (
           conversation_id text NOT NULL,
           user_id text NOT NULL,
           PRIMARY KEY (conversation_id, user_id));
         CREATE TABLE IF NOT EXISTS {schema}.timelines (
           user_id text PRIMARY KEY,
           last_position bigint NOT NULL);
         CREATE TABLE IF NOT EXISTS {schema}.cursors (
           user_id text NOT NULL,
           terminal_id text NOT NULL,
           position bigint NOT NULL,
           PRIMARY KEY (user_id, terminal_id));
         CREATE TABLE IF NOT EXISTS {schema}.receipts (
           conversation_id text NOT NULL,
           reader text NOT NULL,
           up_to_seq bigint NOT NULL,
           read_at_ms bigint NOT NULL,
           PRIMARY KEY (conversation_id, reader));
         CREATE TABLE IF NOT EXISTS {schema}.orders (
           order_id text PRIMARY KEY,
           user_id text NOT NULL,
           merchant_id text NOT NULL,
           status integer NOT NULL,
           total_minor bigint NOT NULL,
           currency text NOT NULL,
           created_at_ms bigint NOT NULL,
           conversation_id text NOT NULL);
         CREATE INDEX IF NOT EXISTS orders_by_user
           ON {schema}.orders (user_id, created_at_ms DESC);
         CREATE TABLE IF NOT EXISTS {schema}.records (
           collection text NOT NULL,
           key text NOT NULL,
           owner text NOT NULL,
           value bytea NOT NULL,
           version bigint NOT NULL,
           updated_at_ms bigint NOT NULL,
           PRIMARY KEY (collection, key));
         CREATE INDEX IF NOT EXISTS records_by_owner
           ON {schema}.records (collection, owner, updated_at_ms DESC, key DESC);
         CREATE TABLE IF NOT EXISTS {schema}.schema_version (
           only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
           version integer NOT NULL);
         INSERT INTO {schema}.schema_version (version) VALUES ({SCHEMA_VERSION})
           ON CONFLICT (only_row) DO UPDATE SET version = EXCLUDED.version;"
    ))
    .await
    .map_err(err("creating its tables"))?;
    tx.commit().await.map_err(err("creating its tables"))
}

/// The owner and version recorded in `schema`, read without taking any lock; `None` when the
/// schema or those tables do not exist yet (an error outside a transaction leaves the
/// connection as it was).
async fn recorded(
    client: &Object,
    tenant: &TenantId,
    schema: &str,
) -> Result<Option<(String, i32)>, StoreError> {
    let read = client
        .query_opt(
            &format!("SELECT o.tenant, v.version FROM {schema}.owner o, {schema}.schema_version v"),
            &[],
        )
        .await;
    match read {
        Ok(row) => Ok(row.map(|row| (row.get(0), row.get(1)))),
        // 3F000 no such schema, 42P01 no such table: not set up yet
        Err(e)
            if e.code()
                .is_some_and(|c| ["3F000", "42P01"].contains(&c.code())) =>
        {
            Ok(None)
        }
        Err(e) => Err(backend(tenant, "reading its schema's version")(e)),
    }
}

/// `Ok` when `owner` (of `namespace`) is `tenant`.
fn owned(tenant: &TenantId, namespace: &str, owner: &str) -> Result<(), StoreError> {
    if owner == tenant.as_str() {
        return Ok(());
    }
    Err(StoreError::NamespaceTaken {
        namespace: namespace.to_owned(),
        owner: TenantId::new(owner).map_err(|_| StoreError::InvalidNamespace(owner.to_owned()))?,
    })
}

fn message(row: &tokio_postgres::Row) -> StoredMessage {
    StoredMessage {
        message_id: row.get(0),
        conversation_id: row.get(1),
        seq: row.get::<_, i64>(2) as u64,
        from_user: row.get(3),
        to_user: row.get(4),
        kind: row.get(5),
        body: row.get(6),
        sent_at_ms: row.get(7),
        // rows written before positions existed have none
        position: row.get::<_, Option<i64>>(8).unwrap_or(0) as u64,
    }
}

/// The columns [`message`] reads, in its order.
const MESSAGE_COLUMNS: &str =
    "message_id, conversation_id, seq, from_user, to_user, kind, body, sent_at_ms, position";

/// Sequence numbers are `bigint` in PostgreSQL.
fn seq(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The columns [`order`] reads, in its order.
const ORDER_COLUMNS: &str =
    "order_id, user_id, merchant_id, status, total_minor, currency, created_at_ms, conversation_id";

fn order(row: &tokio_postgres::Row) -> StoredOrder {
    StoredOrder {
        order_id: row.get(0),
        user_id: row.get(1),
        merchant_id: row.get(2),
        status: row.get(3),
        total_minor: row.get(4),
        currency: row.get(5),
        created_at_ms: row.get(6),
        conversation_id: row.get(7),
    }
}

impl PgStore {
    /// Runs `sql` (an insert of all [`ORDER_COLUMNS`], `$1..$8`) for `order`; rows changed.
    async fn write_order(
        &self,
        tenant: &TenantId,
        operation: &'static str,
        sql: &str,
        o: &StoredOrder,
    ) -> Result<u64, StoreError> {
        self.within(tenant, operation, async |client: &mut Object| {
            let (client, statement) = self.prepared(client, tenant, operation, sql).await?;
            client
                .execute(
                    &statement,
                    &[
                        &o.order_id,
                        &o.user_id,
                        &o.merchant_id,
                        &o.status,
                        &o.total_minor,
                        &o.currency,
                        &o.created_at_ms,
                        &o.conversation_id,
                    ],
                )
                .await
                .map_err(backend(tenant, operation))
        })
        .await
    }
}

/// The columns of a record, as [`record`] reads them.
const RECORD_COLUMNS: &str = "key, owner, value, version, updated_at_ms";

fn record(row: &tokio_postgres::Row) -> Record {
    Record {
        key: row.get(0),
        owner: row.get(1),
        value: row.get(2),
        version: u64::try_from(row.get::<_, i64>(3)).unwrap_or_default(),
        updated_at_ms: row.get(4),
    }
}

#[async_trait::async_trait]
impl RecordStore for PgStore {
    async fn write_records(
        &self,
        tenant: &TenantId,
        writes: &[RecordWrite],
    ) -> Result<Vec<u64>, StoreError> {
        const OP: &str = "writing records";
        records::check(tenant, writes)?;
        let schema = self.schema(tenant)?;
        let now = now_ms();
        // one statement per kind of expectation; each answers the version it left, or no row
        // when the expectation does not hold (then the transaction rolls back: all or none)
        let upsert = format!(
            "INSERT INTO {schema}.records AS r (collection, key, owner, value, version, updated_at_ms)
             VALUES ($1, $2, $3, $4, 1, $5)
             ON CONFLICT (collection, key) DO UPDATE SET owner = $3, value = $4,
               version = r.version + 1, updated_at_ms = $5
             RETURNING version"
        );
        let create = format!(
            "INSERT INTO {schema}.records (collection, key, owner, value, version, updated_at_ms)
             VALUES ($1, $2, $3, $4, 1, $5)
             ON CONFLICT (collection, key) DO NOTHING
             RETURNING version"
        );
        let replace = format!(
            "UPDATE {schema}.records SET owner = $3, value = $4, version = version + 1,
               updated_at_ms = $5
             WHERE collection = $1 AND key = $2 AND version = $6
             RETURNING version"
        );
        let current =
            format!("SELECT version FROM {schema}.records WHERE collection = $1 AND key = $2");
        self.within(tenant, OP, async |client: &mut Object| {
            let err = |e| backend(tenant, OP)(e);
            let tx = client.transaction().await.map_err(err)?;
            let mut versions = Vec::with_capacity(writes.len());
            for w in writes {
                let common: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
                    [&w.collection, &w.key, &w.owner, &w.value, &now];
                let row = match w.expect {
                    Expect::Any => {
                        let statement = tx.prepare_cached(&upsert).await.map_err(err)?;
                        tx.query_opt(&statement, &common).await
                    }
                    Expect::Absent => {
                        let statement = tx.prepare_cached(&create).await.map_err(err)?;
                        tx.query_opt(&statement, &common).await
                    }
                    Expect::Version(v) => {
                        let statement = tx.prepare_cached(&replace).await.map_err(err)?;
                        let v = i64::try_from(v).unwrap_or(i64::MAX);
                        let mut params = common.to_vec();
                        params.push(&v);
                        tx.query_opt(&statement, &params).await
                    }
                }
                .map_err(err)?;
                match row {
                    Some(row) => versions.push(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0)),
                    None => {
                        let found = tx
                            .query_opt(&current, &[&w.collection, &w.key])
                            .await
                            .map_err(err)?
                            .map(|row| u64::try_from(row.get::<_, i64>(0)).unwrap_or(0));
                        return Err(records::conflict(tenant, w, found));
                    }
                }
            }
            tx.commit().await.map_err(err)?;
            Ok(versions)
        })
        .await
    }

    async fn record(
        &self,
        tenant: &TenantId,
        collection: &str,
        key: &str,
    ) -> Result<Option<Record>, StoreError> {
        let schema = self.schema(tenant)?;
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM {schema}.records WHERE collection = $1 AND key = $2"
        );
        let rows = self
            .rows(tenant, "reading a record", &sql, &[&collection, &key])
            .await?;
        Ok(rows.first().map(record))
    }

    async fn records_of(
        &self,
        tenant: &TenantId,
        collection: &str,
        owner: &str,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let schema = self.schema(tenant)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM {schema}.records WHERE collection = $1 AND owner = $2
             ORDER BY updated_at_ms DESC, key DESC LIMIT $3"
        );
        let rows = self
            .rows(
                tenant,
                "listing an owner's records",
                &sql,
                &[&collection, &owner, &limit],
            )
            .await?;
        Ok(rows.iter().map(record).collect())
    }

    async fn delete_record(
        &self,
        tenant: &TenantId,
        collection: &str,
        key: &str,
    ) -> Result<bool, StoreError> {
        let schema = self.schema(tenant)?;
        let sql = format!(
            "DELETE FROM {schema}.records WHERE collection = $1 AND key = $2 RETURNING key"
        );
        let rows = self
            .rows(tenant, "deleting a record", &sql, &[&collection, &key])
            .await?;
        Ok(!rows.is_empty())
    }
}

#[async_trait::async_trait]
impl OrderRecords for PgStore {
    async fn put_order(&self, tenant: &TenantId, o: &StoredOrder) -> Result<(), StoreError> {
        let schema = self.schema(tenant)?;
        let sql = format!(
            "INSERT INTO {schema}.orders ({ORDER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (order_id) DO UPDATE SET user_id = $2, merchant_id = $3, status = $4,
               total_minor = $5, currency = $6, created_at_ms = $7, conversation_id = $8"
        );
        self.write_order(tenant, "storing an order", &sql, o)
            .await
            .map(drop)
    }

    async fn put_new_order(&self, tenant: &TenantId, o: &StoredOrder) -> Result<bool, StoreError> {
        let schema = self.schema(tenant)?;
        let sql = format!(
            "INSERT INTO {schema}.orders ({ORDER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (order_id) DO NOTHING"
        );
        self.write_order(tenant, "recording an order", &sql, o)
            .await
            .map(|rows| rows == 1)
    }

    async fn order(
        &self,
        tenant: &TenantId,
        order_id: &str,
    ) -> Result<Option<StoredOrder>, StoreError> {
        let schema = self.schema(tenant)?;
        let sql = format!("SELECT {ORDER_COLUMNS} FROM {schema}.orders WHERE order_id = $1");
        let rows = self
            .rows(tenant, "reading an order", &sql, &[&order_id])
            .await?;
        Ok(rows.first().map(order))
    }

    async fn orders_of(
        &self,
        tenant: &TenantId,
        user_id: &str,
        limit: usize,
    ) -> Result<Vec<StoredOrder>, StoreError> {
        let schema = self.schema(tenant)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT {ORDER_COLUMNS} FROM {schema}.orders WHERE user_id = $1
             ORDER BY created_at_ms DESC LIMIT $2"
        );
        let rows = self
            .rows(tenant, "listing a user's orders", &sql, &[&user_id, &limit])
            .await?;
        Ok(rows.iter().map(order).collect())
    }

    async fn move_order(
        &self,
        tenant: &TenantId,
        order_id: &str,
        from: Option<i32>,
        to: i32,
        final_status: i32,
    ) -> Result<Option<StoredOrder>, StoreError> {
        const OP: &str = "moving an order";
        let schema = self.schema(tenant)?;
        self.within(tenant, OP, async |client: &mut Object| {
            // one statement: a concurrent move of the same order waits on its row, then sees
            // the status the first one left
            let (client, statement) = self
                .prepared(
                    client,
                    tenant,
                    OP,
                    &format!(
                        "UPDATE {schema}.orders SET status = $2
                         WHERE order_id = $1 AND status <> $4
                           AND ($3::integer IS NULL OR status = $3)
                         RETURNING {ORDER_COLUMNS}"
                    ),
                )
                .await?;
            let row = client
                .query_opt(&statement, &[&order_id, &to, &from, &final_status])
                .await
                .map_err(backend(tenant, OP))?;
            Ok(row.as_ref().map(order))
        })
        .await
    }
}

#[async_trait::async_trait]
impl MessageStore for PgStore {
    async fn drop_tenant(&self, tenant: &TenantId) -> Result<(), StoreError> {
        let Some(schema) = self.schemas.read().expect("lock").get(tenant).cloned() else {
            return Ok(());
        };
        self.drop_schema(tenant, &schema).await?;
        self.schemas.write().expect("lock").remove(tenant);
        Ok(())
    }

    async fn open(&self, tenant: &TenantId, namespace: &str) -> Result<(), StoreError> {
        valid_namespace(namespace)?;
        let schema = format!("{}{namespace}", self.prefix);
        valid_namespace(&schema)?;
        // whatever state a refusal left the connection in (an aborted transaction, a session
        // setting) stays with this tenant: the connection is closed, not pooled
        self.leased(
            tenant,
            "opening its schema",
            true,
            async |client: &mut Object| set_up(client, tenant, &schema, namespace).await,
        )
        .await?;
        self.schemas
            .write()
            .expect("lock")
            .insert(tenant.clone(), schema);
        Ok(())
    }

    async fn accept(&self, tenant: &TenantId, m: &NewMessage) -> Result<Accepted, StoreError> {
        self.within(tenant, "accept", async |client: &mut Object| {
            const OP: &str = "accepting a message";
            let schema = self.schema(tenant)?;
            let err = |e| backend(tenant, OP)(e);
            // Row locks order concurrent accepts: the conversation's counter first, then the
            // receiver's timeline counter (always in that order, so two accepts never wait on each
            // other in a cycle). A second accept of the same conversation waits for the first to
            // commit, so it sees its client id, and positions of one timeline commit in order.
            let tx = client.transaction().await.map_err(err)?;
            let bump_seq = tx
                .prepare_cached(&format!(
                    "INSERT INTO {schema}.conversations AS c (conversation_id, last_seq) VALUES ($1, 1)
                     ON CONFLICT (conversation_id) DO UPDATE SET last_seq = c.last_seq + 1
                     RETURNING last_seq"
                ))
                .await
                .map_err(err)?;
            let seq: i64 = tx
                .query_one(&bump_seq, &[&m.conversation_id])
                .await
                .map_err(err)?
                .get(0);
            // the conversation's row is locked by the bump: membership cannot change under us
            if m.members_only && seq > 1 {
                let member = tx
                    .prepare_cached(&format!(
                        "SELECT 1 FROM {schema}.participants WHERE conversation_id = $1 AND user_id = $2"
                    ))
                    .await
                    .map_err(err)?;
                if tx
                    .query_opt(&member, &[&m.conversation_id, &m.from_user])
                    .await
                    .map_err(err)?
                    .is_none()
                {
                    tx.rollback().await.map_err(err)?;
                    return Err(StoreError::NotAParticipant {
                        conversation: m.conversation_id.clone(),
                        user: m.from_user.clone(),
                    });
                }
            }
            if !m.client_msg_id.is_empty() {
                let find = tx
                    .prepare_cached(&format!(
                        "SELECT {MESSAGE_COLUMNS} FROM {schema}.messages
                         WHERE conversation_id = $1 AND from_user = $2 AND client_msg_id = $3"
                    ))
                    .await
                    .map_err(err)?;
                if let Some(row) = tx
                    .query_opt(&find, &[&m.conversation_id, &m.from_user, &m.client_msg_id])
                    .await
                    .map_err(err)?
                {
                    // the counter bump is undone with the transaction
                    tx.rollback().await.map_err(err)?;
                    return Ok(Accepted::Existing(message(&row)));
                }
            }
            let bump_position = tx
                .prepare_cached(&format!(
                    "INSERT INTO {schema}.timelines AS t (user_id, last_position) VALUES ($1, 1)
                     ON CONFLICT (user_id) DO UPDATE SET last_position = t.last_position + 1
                     RETURNING last_position"
                ))
                .await
                .map_err(err)?;
            let position: i64 = tx
                .query_one(&bump_position, &[&m.to_user])
                .await
                .map_err(err)?
                .get(0);
            let insert = tx
                .prepare_cached(&format!(
                    "INSERT INTO {schema}.messages
                     (message_id, conversation_id, seq, from_user, to_user, kind, body, sent_at_ms,
                      position, client_msg_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULLIF($10, ''))"
                ))
                .await
                .map_err(err)?;
            tx.execute(
                &insert,
                &[
                    &m.message_id,
                    &m.conversation_id,
                    &seq,
                    &m.from_user,
                    &m.to_user,
                    &m.kind,
                    &m.body,
                    &m.sent_at_ms,
                    &position,
                    &m.client_msg_id,
                ],
            )
            .await
            .map_err(err)?;
            let participants = tx
                .prepare_cached(&format!(
                    "INSERT INTO {schema}.participants (conversation_id, user_id)
                     VALUES ($1, $2), ($1, $3) ON CONFLICT DO NOTHING"
                ))
                .await
                .map_err(err)?;
            tx.execute(
                &participants,
                &[&m.conversation_id, &m.from_user, &m.to_user],
            )
            .await
            .map_err(err)?;
            tx.commit().await.map_err(err)?;
            Ok(Accepted::New(StoredMessage {
                message_id: m.message_id.clone(),
                conversation_id: m.conversation_id.clone(),
                seq: seq as u64,
                position: position as u64,
                from_user: m.from_user.clone(),
                to_user: m.to_user.clone(),
                kind: m.kind,
                body: m.body.clone(),
                sent_at_ms: m.sent_at_ms,
            }))
        })
        .await
    }

    async fn timeline(
        &self,
        tenant: &TenantId,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.within(tenant, "timeline", async |client: &mut Object| {
            const OP: &str = "reading a timeline";
            let schema = self.schema(tenant)?;
            let (client, statement) = self
                .prepared(
                    client,
                    tenant,
                    OP,
                    &format!(
                        "SELECT {MESSAGE_COLUMNS} FROM {schema}.messages
                         WHERE to_user = $1 AND position > $2 ORDER BY position LIMIT $3"
                    ),
                )
                .await?;
            let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
            let rows = client
                .query(&statement, &[&user, &seq(after), &fetch])
                .await
                .map_err(backend(tenant, OP))?;
            let mut messages: Vec<StoredMessage> = rows.iter().map(message).collect();
            let more = messages.len() > limit;
            messages.truncate(limit);
            Ok(Page { messages, more })
        })
        .await
    }

    async fn cursor(
        &self,
        tenant: &TenantId,
        user: &str,
        terminal: &str,
    ) -> Result<u64, StoreError> {
        self.advance_cursor(tenant, user, terminal, 0, false).await
    }

    async fn advance_cursor(
        &self,
        tenant: &TenantId,
        user: &str,
        terminal: &str,
        position: u64,
        contiguous: bool,
    ) -> Result<u64, StoreError> {
        self.within(tenant, "advance_cursor", async |client: &mut Object| {
            const OP: &str = "moving a terminal's cursor";
            let schema = self.schema(tenant)?;
            let (client, statement) = self
                .prepared(
                    client,
                    tenant,
                    OP,
                    &format!(
                        "WITH t AS (
                           SELECT LEAST($3::bigint, COALESCE(
                             (SELECT last_position FROM {schema}.timelines WHERE user_id = $1), 0)) AS p)
                         INSERT INTO {schema}.cursors AS k (user_id, terminal_id, position)
                         SELECT $1, $2, CASE WHEN $4::boolean AND t.p > 1 THEN 0 ELSE t.p END FROM t
                         ON CONFLICT (user_id, terminal_id) DO UPDATE SET position =
                           CASE WHEN $4::boolean AND k.position <> (SELECT p FROM t) - 1 THEN k.position
                                ELSE GREATEST(k.position, (SELECT p FROM t)) END
                         RETURNING position"
                    ),
                )
                .await?;
            let row = client
                .query_one(&statement, &[&user, &terminal, &seq(position), &contiguous])
                .await
                .map_err(backend(tenant, OP))?;
            Ok(row.get::<_, i64>(0) as u64)
        })
        .await
    }

    async fn heads(&self, tenant: &TenantId, users: &[String]) -> Result<Vec<u64>, StoreError> {
        self.within(tenant, "heads", async |client: &mut Object| {
            const OP: &str = "reading timeline heads";
            let schema = self.schema(tenant)?;
            let (client, statement) = self
                .prepared(
                    client,
                    tenant,
                    OP,
                    &format!(
                        "SELECT user_id, last_position FROM {schema}.timelines
                         WHERE user_id = ANY($1::text[])"
                    ),
                )
                .await?;
            let rows = client
                .query(&statement, &[&users])
                .await
                .map_err(backend(tenant, OP))?;
            let found: std::collections::HashMap<String, i64> =
                rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            Ok(users
                .iter()
                .map(|u| found.get(u).map_or(0, |&p| p as u64))
                .collect())
        })
        .await
    }

    async fn position_of(
        &self,
        tenant: &TenantId,
        user: &str,
        message_id: &str,
    ) -> Result<Option<u64>, StoreError> {
        self.within(tenant, "position_of", async |client: &mut Object| {
            const OP: &str = "finding a message's position";
            let schema = self.schema(tenant)?;
            let (client, statement) = self
                .prepared(
                    client,
                    tenant,
                    OP,
                    &format!(
                        "SELECT position FROM {schema}.messages WHERE message_id = $1 AND to_user = $2"
                    ),
                )
                .await?;
            let row = client
                .query_opt(&statement, &[&message_id, &user])
                .await
                .map_err(backend(tenant, OP))?;
            Ok(row
                .and_then(|row| row.get::<_, Option<i64>>(0))
                .map(|p| p as u64))
        })
        .await
    }

    async fn terminals(&self, tenant: &TenantId, user: &str) -> Result<Vec<String>, StoreError> {
        self.within(tenant, "terminals", async |client: &mut Object| {
            const OP: &str = "listing a user's terminals";
            let schema = self.schema(tenant)?;
            let (client, statement) = self
                .prepared(
                    client,
                    tenant,
                    OP,
                    &format!(
                        "SELECT terminal_id FROM {schema}.cursors WHERE user_id = $1 ORDER BY terminal_id"
                    ),
                )
                .await?;
            let rows = client
                .query(&statement, &[&user])
                .await
                .map_err(backend(tenant, OP))?;
            Ok(rows.iter().map(|row| row.get(0)).collect())
        })
        .await
    }

    async fn conversation(
        &self,
        tenant: &TenantId,
        conversation_id: &str,
    ) -> Result<Option<ConversationInfo>, StoreError> {
        self.within(tenant, "conversation", async |client: &mut Object| {
            const OP: &str = "reading a conversation's participants";
            let schema = self.schema(tenant)?;
            let (client, statement) = self
                .prepared(
                    client,
                    tenant,
                    OP,
                    &format!(
                        "SELECT c.last_seq, p.user_id FROM {schema}.conversations c
                         JOIN {schema}.participants p USING (conversation_id)
                         WHERE c.conversation_id = $1 ORDER BY p.user_id"
                    ),
                )
                .await?;
            let rows = client
                .query(&statement, &[&conversation_id])
                .await
                .map_err(backend(tenant, OP))?;
            let Some(first) = rows.first() else {
                return Ok(None);
            };
            Ok(Some(ConversationInfo {
                last_seq: first.get::<_, i64>(0) as u64,
                participants: rows.iter().map(|row| row.get(1)).collect(),
            }))
        })
        .await
    }

    async fn history(
        &self,
        tenant: &TenantId,
        conversation_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.within(tenant, "history", async |client: &mut Object| {
            const OP: &str = "reading a conversation";
            let schema = self.schema(tenant)?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let (client, statement) = self
                .prepared(
                    client,
                    tenant,
                    OP,
                    &format!(
                        "SELECT {MESSAGE_COLUMNS} FROM {schema}.messages
                         WHERE conversation_id = $1 AND seq > $2
                         ORDER BY seq LIMIT $3"
                    ),
                )
                .await?;
            let rows = client
                .query(&statement, &[&conversation_id, &seq(after_seq), &limit])
                .await
                .map_err(backend(tenant, OP))?;
            Ok(rows.iter().map(message).collect())
        })
        .await
    }

    async fn save_receipt(&self, tenant: &TenantId, r: &StoredReceipt) -> Result<(), StoreError> {
        self.within(tenant, "save_receipt", async |client: &mut Object| {
            const OP: &str = "saving a read receipt";
            let schema = self.schema(tenant)?;
            let (client, statement) = self
                .prepared(
                    client,
                    tenant,
                    OP,
                    &format!(
                        "INSERT INTO {schema}.receipts (conversation_id, reader, up_to_seq, read_at_ms)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (conversation_id, reader) DO UPDATE
                           SET up_to_seq = EXCLUDED.up_to_seq, read_at_ms = EXCLUDED.read_at_ms
                           WHERE {schema}.receipts.up_to_seq < EXCLUDED.up_to_seq"
                    ),
                )
                .await?;
            client
                .execute(
                    &statement,
                    &[
                        &r.conversation_id,
                        &r.reader,
                        &seq(r.up_to_seq),
                        &r.read_at_ms,
                    ],
                )
                .await
                .map_err(backend(tenant, OP))?;
            Ok(())
        })
        .await
    }

    async fn receipt(
        &self,
        tenant: &TenantId,
        conversation_id: &str,
        reader: &str,
    ) -> Result<Option<StoredReceipt>, StoreError> {
        self.within(tenant, "receipt", async |client: &mut Object| {
            const OP: &str = "reading a read receipt";
            let schema = self.schema(tenant)?;
            let (client, statement) = self
                .prepared(
                    client,
                    tenant,
                    OP,
                    &format!(
                        "SELECT conversation_id, reader, up_to_seq, read_at_ms
                         FROM {schema}.receipts WHERE conversation_id = $1 AND reader = $2"
                    ),
                )
                .await?;
            let row = client
                .query_opt(&statement, &[&conversation_id, &reader])
                .await
                .map_err(backend(tenant, OP))?;
            Ok(row.map(|row| StoredReceipt {
                conversation_id: row.get(0),
                reader: row.get(1),
                up_to_seq: row.get::<_, i64>(2) as u64,
                read_at_ms: row.get(3),
            }))
        })
        .await
    }

    async fn purge_before(&self, tenant: &TenantId, cutoff_ms: i64) -> Result<u64, StoreError> {
        const OP: &str = "purging expired messages";
        let schema = self.schema(tenant)?;
        let sql = format!(
            "DELETE FROM {schema}.messages WHERE message_id IN
               (SELECT message_id FROM {schema}.messages WHERE sent_at_ms < $1 LIMIT $2)"
        );
        let mut purged = 0;
        loop {
            let deleted = self
                .within(tenant, OP, async |client: &mut Object| {
                    let (client, statement) = self.prepared(client, tenant, OP, &sql).await?;
                    client
                        .execute(&statement, &[&cutoff_ms, &PURGE_BATCH])
                        .await
                        .map_err(backend(tenant, OP))
                })
                .await?;
            purged += deleted;
            if deleted < PURGE_BATCH as u64 {
                return Ok(purged);
            }
        }
    }
}

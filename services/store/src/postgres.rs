// Long on purpose: the PostgreSQL store's pool, schemas and the states a database can be in
// (refusing, read-only, frozen) handled in one place; messages and records are apart (postgres/).
//! The PostgreSQL store: one schema per tenant. This file connects, pools, leases and sets up
//! schemas; [`stored_messages`] and [`stored_records`] implement the store's traits on it.

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
    Accepted, ConversationInfo, MessageStore, NewMessage, OrderRecords, Page, READ_RECEIPT_KIND,
    StoreError, StoredMessage, StoredOrder, StoredReceipt, TerminalCursor,
    records::{self, Expect, Record, RecordStore, RecordWrite, now_ms},
    valid_namespace,
};

mod stored_messages;
mod stored_receipts;
mod stored_records;
mod stored_terminals;

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
const SCHEMA_VERSION: i32 = 5;

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
         ALTER TABLE {schema}.cursors
           ADD COLUMN IF NOT EXISTS seen_at_ms bigint NOT NULL DEFAULT 0;
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
    tx.batch_execute(&stored_messages::accept_function(schema))
        .await
        .map_err(err("creating its functions"))?;
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

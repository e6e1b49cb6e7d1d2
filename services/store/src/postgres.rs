//! The PostgreSQL store: one schema per tenant.

use std::{collections::HashMap, sync::RwLock};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use mesh_contract::TenantId;
use tokio_postgres::NoTls;

use crate::{
    Accepted, ConversationInfo, MessageStore, NewMessage, Page, StoreError, StoredMessage,
    StoredReceipt, valid_namespace,
};

/// Schema prefix of [`PgStore::connect`]: tenant `mall` with namespace `mall` lives in schema
/// `mesh_mall`.
pub const DEFAULT_PREFIX: &str = "mesh_";

/// Connections the store keeps open at most.
const POOL_SIZE: usize = 8;
/// Longest wait for a pooled connection, a new one, or checking an idle one: past it the
/// operation fails as transient rather than hang (a database that stopped answering).
const POOL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// PostgreSQL backend: each tenant's tables live in schema `<prefix><namespace>`, created on
/// [`MessageStore::open`]. Statements are built from that one schema name, which was
/// validated as a plain identifier, so a statement reaches exactly one tenant's tables.
///
/// A pool of connections (deadpool-postgres) with prepared statements cached per connection:
/// a connection that broke is replaced on the next use, and an operation that failed with it
/// returns [`StoreError::Backend`], which the storage consumer turns into a retry.
pub struct PgStore {
    pool: Pool,
    prefix: String,
    schemas: RwLock<HashMap<TenantId, String>>,
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
        let config: tokio_postgres::Config = url.parse().map_err(|e| error(format!("{e}")))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(|e| error(e.to_string()))?;
        // fail now, with the address, rather than on the first message
        drop(pool.get().await.map_err(|e| error(e.to_string()))?);
        Ok(Self {
            pool,
            prefix: prefix.to_owned(),
            schemas: RwLock::default(),
        })
    }

    /// Drops the schema of every tenant opened through this store, with its data (off-boarding,
    /// and tests cleaning up after themselves).
    pub async fn drop_opened(&self) -> Result<(), StoreError> {
        let schemas: Vec<(TenantId, String)> =
            self.schemas.write().expect("lock").drain().collect();
        for (tenant, schema) in schemas {
            self.client(&tenant)
                .await?
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .await
                .map_err(backend(&tenant, "dropping its schema"))?;
        }
        Ok(())
    }

    /// A pooled connection and `sql` prepared on it (once per connection), for `operation`
    /// on `tenant`'s data.
    async fn prepared(
        &self,
        tenant: &TenantId,
        operation: &'static str,
        sql: &str,
    ) -> Result<(Object, tokio_postgres::Statement), StoreError> {
        let client = self.client(tenant).await?;
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(backend(tenant, operation))?;
        Ok((client, statement))
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

/// Whether the same statement can succeed later. No SQLSTATE: transient when the connection
/// failed (closed, I/O), permanent otherwise (a value that cannot be encoded). SQLSTATE classes
/// 08 (connection exception), 53 (insufficient resources), 57 (operator intervention: shutdown,
/// cancelled), 58 (system error) and serialization failures or deadlocks pass; everything else
/// (data exceptions, constraint violations, program limits such as an index row too large) is
/// about the data and will fail the same way again.
fn transient(err: &tokio_postgres::Error) -> bool {
    match err.code() {
        None => {
            err.is_closed()
                || std::error::Error::source(err).is_some_and(|s| s.is::<std::io::Error>())
        }
        Some(state) => {
            let code = state.code();
            ["08", "53", "57", "58"]
                .iter()
                .any(|class| code.starts_with(class))
                || code == "40001"
                || code == "40P01"
        }
    }
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

#[async_trait::async_trait]
impl MessageStore for PgStore {
    async fn drop_tenant(&self, tenant: &TenantId) -> Result<(), StoreError> {
        let Some(schema) = self.schemas.read().expect("lock").get(tenant).cloned() else {
            return Ok(());
        };
        self.client(tenant)
            .await?
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await
            .map_err(backend(tenant, "dropping its schema"))?;
        self.schemas.write().expect("lock").remove(tenant);
        Ok(())
    }

    async fn open(&self, tenant: &TenantId, namespace: &str) -> Result<(), StoreError> {
        valid_namespace(namespace)?;
        let schema = format!("{}{namespace}", self.prefix);
        valid_namespace(&schema)?;
        // The owner first, alone: a namespace that is another tenant's is refused before
        // anything is created in it. One simple-query message runs as a unit on the server;
        // the advisory lock keeps two processes opening the same schema from racing on CREATE.
        let claim = format!(
            "BEGIN;
             SELECT pg_advisory_xact_lock(hashtext('mesh-store:{schema}'));
             CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.owner (tenant text PRIMARY KEY);
             INSERT INTO {schema}.owner (tenant)
               SELECT '{tenant}' WHERE NOT EXISTS (SELECT 1 FROM {schema}.owner);
             COMMIT;"
        );
        let client = self.client(tenant).await?;
        client
            .batch_execute(&claim)
            .await
            .map_err(backend(tenant, "creating its schema"))?;
        let owner: String = client
            .query_one(&format!("SELECT tenant FROM {schema}.owner"), &[])
            .await
            .map_err(backend(tenant, "reading its schema's owner"))?
            .get(0);
        if owner != tenant.as_str() {
            return Err(StoreError::NamespaceTaken {
                namespace: namespace.to_owned(),
                owner: TenantId::new(&owner).map_err(|_| StoreError::InvalidNamespace(owner))?,
            });
        }
        let ddl = format!(
            "BEGIN;
             SELECT pg_advisory_xact_lock(hashtext('mesh-store:{schema}'));
             CREATE TABLE IF NOT EXISTS {schema}.messages (
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
             COMMIT;"
        );
        client
            .batch_execute(&ddl)
            .await
            .map_err(backend(tenant, "creating its tables"))?;
        self.schemas
            .write()
            .expect("lock")
            .insert(tenant.clone(), schema);
        Ok(())
    }

    async fn accept(&self, tenant: &TenantId, m: &NewMessage) -> Result<Accepted, StoreError> {
        const OP: &str = "accepting a message";
        let schema = self.schema(tenant)?;
        let err = |e| backend(tenant, OP)(e);
        let mut client = self.client(tenant).await?;
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
    }

    async fn timeline(
        &self,
        tenant: &TenantId,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        const OP: &str = "reading a timeline";
        let schema = self.schema(tenant)?;
        let (client, statement) = self
            .prepared(
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
        const OP: &str = "moving a terminal's cursor";
        let schema = self.schema(tenant)?;
        let (client, statement) = self
            .prepared(
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
    }

    async fn heads(&self, tenant: &TenantId, users: &[String]) -> Result<Vec<u64>, StoreError> {
        const OP: &str = "reading timeline heads";
        let schema = self.schema(tenant)?;
        let (client, statement) = self
            .prepared(
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
    }

    async fn position_of(
        &self,
        tenant: &TenantId,
        user: &str,
        message_id: &str,
    ) -> Result<Option<u64>, StoreError> {
        const OP: &str = "finding a message's position";
        let schema = self.schema(tenant)?;
        let (client, statement) = self
            .prepared(
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
    }

    async fn terminals(&self, tenant: &TenantId, user: &str) -> Result<Vec<String>, StoreError> {
        const OP: &str = "listing a user's terminals";
        let schema = self.schema(tenant)?;
        let (client, statement) = self
            .prepared(
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
    }

    async fn conversation(
        &self,
        tenant: &TenantId,
        conversation_id: &str,
    ) -> Result<Option<ConversationInfo>, StoreError> {
        const OP: &str = "reading a conversation's participants";
        let schema = self.schema(tenant)?;
        let (client, statement) = self
            .prepared(
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
    }

    async fn history(
        &self,
        tenant: &TenantId,
        conversation_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        const OP: &str = "reading a conversation";
        let schema = self.schema(tenant)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (client, statement) = self
            .prepared(
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
    }

    async fn save_receipt(&self, tenant: &TenantId, r: &StoredReceipt) -> Result<(), StoreError> {
        const OP: &str = "saving a read receipt";
        let schema = self.schema(tenant)?;
        let (client, statement) = self
            .prepared(
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
    }

    async fn receipt(
        &self,
        tenant: &TenantId,
        conversation_id: &str,
        reader: &str,
    ) -> Result<Option<StoredReceipt>, StoreError> {
        const OP: &str = "reading a read receipt";
        let schema = self.schema(tenant)?;
        let (client, statement) = self
            .prepared(
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
    }

    async fn purge_before(&self, tenant: &TenantId, cutoff_ms: i64) -> Result<u64, StoreError> {
        const OP: &str = "purging expired messages";
        let schema = self.schema(tenant)?;
        let (client, statement) = self
            .prepared(
                tenant,
                OP,
                &format!("DELETE FROM {schema}.messages WHERE sent_at_ms < $1"),
            )
            .await?;
        client
            .execute(&statement, &[&cutoff_ms])
            .await
            .map_err(backend(tenant, OP))
    }
}

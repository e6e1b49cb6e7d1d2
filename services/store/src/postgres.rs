//! The PostgreSQL store: one schema per tenant.

use std::{collections::HashMap, sync::RwLock};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use mesh_contract::TenantId;
use tokio_postgres::NoTls;

use crate::{MessageStore, Saved, StoreError, StoredMessage, StoredReceipt, valid_namespace};

/// Schema prefix of [`PgStore::connect`]: tenant `mall` with namespace `mall` lives in schema
/// `mesh_mall`.
pub const DEFAULT_PREFIX: &str = "mesh_";

/// Connections the store keeps open at most.
const POOL_SIZE: usize = 8;

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
        reason: err
            .as_db_error()
            .map_or_else(|| err.to_string(), |db| db.message().to_owned()),
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
    }
}

/// Sequence numbers are `bigint` in PostgreSQL.
fn seq(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[async_trait::async_trait]
impl MessageStore for PgStore {
    async fn open(&self, tenant: &TenantId, namespace: &str) -> Result<(), StoreError> {
        valid_namespace(namespace)?;
        let schema = format!("{}{namespace}", self.prefix);
        valid_namespace(&schema)?;
        // One simple-query message runs as a unit on the server; the advisory lock keeps two
        // processes opening the same schema from racing on CREATE.
        let ddl = format!(
            "BEGIN;
             SELECT pg_advisory_xact_lock(hashtext('mesh-store:{schema}'));
             CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.owner (tenant text PRIMARY KEY);
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
             CREATE TABLE IF NOT EXISTS {schema}.receipts (
               conversation_id text NOT NULL,
               reader text NOT NULL,
               up_to_seq bigint NOT NULL,
               read_at_ms bigint NOT NULL,
               PRIMARY KEY (conversation_id, reader));
             INSERT INTO {schema}.owner (tenant)
               SELECT '{tenant}' WHERE NOT EXISTS (SELECT 1 FROM {schema}.owner);
             COMMIT;"
        );
        let client = self.client(tenant).await?;
        client
            .batch_execute(&ddl)
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
        self.schemas
            .write()
            .expect("lock")
            .insert(tenant.clone(), schema);
        Ok(())
    }

    async fn save_message(
        &self,
        tenant: &TenantId,
        m: &StoredMessage,
    ) -> Result<Saved, StoreError> {
        const OP: &str = "saving a message";
        let schema = self.schema(tenant)?;
        let (client, statement) = self
            .prepared(
                tenant,
                OP,
                &format!(
                    "INSERT INTO {schema}.messages
                     (message_id, conversation_id, seq, from_user, to_user, kind, body, sent_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (message_id) DO NOTHING"
                ),
            )
            .await?;
        let inserted = client
            .execute(
                &statement,
                &[
                    &m.message_id,
                    &m.conversation_id,
                    &seq(m.seq),
                    &m.from_user,
                    &m.to_user,
                    &m.kind,
                    &m.body,
                    &m.sent_at_ms,
                ],
            )
            .await
            .map_err(backend(tenant, OP))?;
        Ok(if inserted == 1 {
            Saved::New
        } else {
            Saved::Duplicate
        })
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
                    "SELECT message_id, conversation_id, seq, from_user, to_user, kind, body, sent_at_ms
                     FROM {schema}.messages
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

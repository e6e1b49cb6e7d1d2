//! The PostgreSQL store: one schema per tenant.

use std::{collections::HashMap, sync::RwLock};

use mesh_contract::TenantId;
use tokio_postgres::{Client, NoTls};

use crate::{MessageStore, Saved, StoreError, StoredMessage, StoredReceipt, valid_namespace};

/// Schema prefix of [`PgStore::connect`]: tenant `mall` with namespace `mall` lives in schema
/// `mesh_mall`.
pub const DEFAULT_PREFIX: &str = "mesh_";

/// PostgreSQL backend: each tenant's tables live in schema `<prefix><namespace>`, created on
/// [`MessageStore::open`]. Statements are built from that one schema name, which was
/// validated as a plain identifier, so a statement reaches exactly one tenant's tables.
///
/// One connection, pipelined (tokio-postgres runs concurrent statements on it); a lost
/// connection makes operations fail with [`StoreError::Backend`], which the storage consumer
/// turns into a retry.
pub struct PgStore {
    client: Client,
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
#[error("cannot connect to PostgreSQL at {url}: {source}")]
pub struct ConnectError {
    url: String,
    #[source]
    source: tokio_postgres::Error,
}

impl PgStore {
    /// Connects with the schema prefix [`DEFAULT_PREFIX`].
    pub async fn connect(url: &str) -> Result<Self, ConnectError> {
        Self::connect_with_prefix(url, DEFAULT_PREFIX).await
    }

    /// Connects; tenant schemas are named `<prefix><namespace>` (tests use a prefix per run).
    pub async fn connect_with_prefix(url: &str, prefix: &str) -> Result<Self, ConnectError> {
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .map_err(|source| ConnectError {
                url: url.to_owned(),
                source,
            })?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::error!(error = %err, "PostgreSQL connection lost");
            }
        });
        Ok(Self {
            client,
            prefix: prefix.to_owned(),
            schemas: RwLock::default(),
        })
    }

    /// Drops the schema of every tenant opened through this store, with its data (off-boarding,
    /// and tests cleaning up after themselves).
    pub async fn drop_opened(&self) -> Result<(), tokio_postgres::Error> {
        let schemas: Vec<String> = self
            .schemas
            .write()
            .expect("lock")
            .drain()
            .map(|(_, s)| s)
            .collect();
        for schema in schemas {
            self.client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .await?;
        }
        Ok(())
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
        self.client
            .batch_execute(&ddl)
            .await
            .map_err(backend(tenant, "creating its schema"))?;
        let owner: String = self
            .client
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
        let schema = self.schema(tenant)?;
        let inserted = self
            .client
            .execute(
                &format!(
                    "INSERT INTO {schema}.messages
                     (message_id, conversation_id, seq, from_user, to_user, kind, body, sent_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (message_id) DO NOTHING"
                ),
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
            .map_err(backend(tenant, "saving a message"))?;
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
        let schema = self.schema(tenant)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT message_id, conversation_id, seq, from_user, to_user, kind, body, sent_at_ms
                     FROM {schema}.messages
                     WHERE conversation_id = $1 AND seq > $2
                     ORDER BY seq LIMIT $3"
                ),
                &[&conversation_id, &seq(after_seq), &limit],
            )
            .await
            .map_err(backend(tenant, "reading a conversation"))?;
        Ok(rows.iter().map(message).collect())
    }

    async fn save_receipt(&self, tenant: &TenantId, r: &StoredReceipt) -> Result<(), StoreError> {
        let schema = self.schema(tenant)?;
        self.client
            .execute(
                &format!(
                    "INSERT INTO {schema}.receipts (conversation_id, reader, up_to_seq, read_at_ms)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (conversation_id, reader) DO UPDATE
                       SET up_to_seq = EXCLUDED.up_to_seq, read_at_ms = EXCLUDED.read_at_ms
                       WHERE {schema}.receipts.up_to_seq < EXCLUDED.up_to_seq"
                ),
                &[
                    &r.conversation_id,
                    &r.reader,
                    &seq(r.up_to_seq),
                    &r.read_at_ms,
                ],
            )
            .await
            .map_err(backend(tenant, "saving a read receipt"))?;
        Ok(())
    }

    async fn receipt(
        &self,
        tenant: &TenantId,
        conversation_id: &str,
        reader: &str,
    ) -> Result<Option<StoredReceipt>, StoreError> {
        let schema = self.schema(tenant)?;
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT conversation_id, reader, up_to_seq, read_at_ms
                     FROM {schema}.receipts WHERE conversation_id = $1 AND reader = $2"
                ),
                &[&conversation_id, &reader],
            )
            .await
            .map_err(backend(tenant, "reading a read receipt"))?;
        Ok(row.map(|row| StoredReceipt {
            conversation_id: row.get(0),
            reader: row.get(1),
            up_to_seq: row.get::<_, i64>(2) as u64,
            read_at_ms: row.get(3),
        }))
    }

    async fn purge_before(&self, tenant: &TenantId, cutoff_ms: i64) -> Result<u64, StoreError> {
        let schema = self.schema(tenant)?;
        self.client
            .execute(
                &format!("DELETE FROM {schema}.messages WHERE sent_at_ms < $1"),
                &[&cutoff_ms],
            )
            .await
            .map_err(backend(tenant, "purging expired messages"))
    }
}

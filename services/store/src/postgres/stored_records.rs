//! Orders and versioned records in PostgreSQL: written with an expected version (compare and
//! set), read, listed, moved between owners.

use super::*;

/// The columns [`order`] reads, in its order.
pub(super) const ORDER_COLUMNS: &str =
    "order_id, user_id, merchant_id, status, total_minor, currency, created_at_ms, conversation_id";

pub(super) fn order(row: &tokio_postgres::Row) -> StoredOrder {
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
pub(super) const RECORD_COLUMNS: &str = "key, owner, value, version, updated_at_ms";

pub(super) fn record(row: &tokio_postgres::Row) -> Record {
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

//! Messages in PostgreSQL: accepted once (dedup by client id) into their conversation and every
//! receiver's timeline, read back by cursor, page or history, receipts, retention.

use super::*;

pub(super) fn message(row: &tokio_postgres::Row) -> StoredMessage {
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
pub(super) const MESSAGE_COLUMNS: &str =
    "message_id, conversation_id, seq, from_user, to_user, kind, body, sent_at_ms, position";

/// Sequence numbers are `bigint` in PostgreSQL.
pub(super) fn seq(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(super) type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// Whether `user` takes part in `conversation`.
async fn is_participant(
    tx: &Tx<'_>,
    schema: &str,
    conversation: &str,
    user: &str,
) -> Result<bool, tokio_postgres::Error> {
    let member = tx
        .prepare_cached(&format!(
            "SELECT 1 FROM {schema}.participants WHERE conversation_id = $1 AND user_id = $2"
        ))
        .await?;
    Ok(tx
        .query_opt(&member, &[&conversation, &user])
        .await?
        .is_some())
}

/// The message `m`'s sender already sent with its client id, if any (a retried send).
async fn by_client_id(
    tx: &Tx<'_>,
    schema: &str,
    m: &NewMessage,
) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
    if m.client_msg_id.is_empty() {
        return Ok(None);
    }
    let find = tx
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM {schema}.messages
             WHERE conversation_id = $1 AND from_user = $2 AND client_msg_id = $3"
        ))
        .await?;
    tx.query_opt(&find, &[&m.conversation_id, &m.from_user, &m.client_msg_id])
        .await
}

/// The next position of `user`'s timeline (a message's or a receipt's), its counter's row
/// locked until the transaction ends: positions of one timeline commit in order.
pub(super) async fn next_position(
    tx: &Tx<'_>,
    schema: &str,
    user: &str,
) -> Result<i64, tokio_postgres::Error> {
    let bump = tx
        .prepare_cached(&format!(
            "INSERT INTO {schema}.timelines AS t (user_id, last_position) VALUES ($1, 1)
             ON CONFLICT (user_id) DO UPDATE SET last_position = t.last_position + 1
             RETURNING last_position"
        ))
        .await?;
    Ok(tx.query_one(&bump, &[&user]).await?.get(0))
}

/// A new message's rows: the receiver's next timeline position, the message at `seq` in its
/// conversation, both users as participants. Returns the position.
async fn write_new(
    tx: &Tx<'_>,
    schema: &str,
    m: &NewMessage,
    seq: i64,
) -> Result<i64, tokio_postgres::Error> {
    let position = next_position(tx, schema, &m.to_user).await?;
    let insert = tx
        .prepare_cached(&format!(
            "INSERT INTO {schema}.messages
             (message_id, conversation_id, seq, from_user, to_user, kind, body, sent_at_ms,
              position, client_msg_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULLIF($10, ''))"
        ))
        .await?;
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
    .await?;
    let participants = tx
        .prepare_cached(&format!(
            "INSERT INTO {schema}.participants (conversation_id, user_id)
             VALUES ($1, $2), ($1, $3) ON CONFLICT DO NOTHING"
        ))
        .await?;
    tx.execute(
        &participants,
        &[&m.conversation_id, &m.from_user, &m.to_user],
    )
    .await?;
    Ok(position)
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
            if m.members_only
                && seq > 1
                && !is_participant(&tx, &schema, &m.conversation_id, &m.from_user)
                    .await
                    .map_err(err)?
            {
                tx.rollback().await.map_err(err)?;
                return Err(StoreError::NotAParticipant {
                    conversation: m.conversation_id.clone(),
                    user: m.from_user.clone(),
                });
            }
            if let Some(row) = by_client_id(&tx, &schema, m).await.map_err(err)? {
                // the counter bump is undone with the transaction
                tx.rollback().await.map_err(err)?;
                return Ok(Accepted::Existing(message(&row)));
            }
            let position = write_new(&tx, &schema, m, seq).await.map_err(err)?;
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
                         INSERT INTO {schema}.cursors AS k (user_id, terminal_id, position, seen_at_ms)
                         SELECT $1, $2, CASE WHEN $4::boolean AND t.p > 1 THEN 0 ELSE t.p END, $5 FROM t
                         ON CONFLICT (user_id, terminal_id) DO UPDATE SET position =
                           CASE WHEN $4::boolean AND k.position <> (SELECT p FROM t) - 1 THEN k.position
                                ELSE GREATEST(k.position, (SELECT p FROM t)) END,
                           seen_at_ms = EXCLUDED.seen_at_ms
                         RETURNING position"
                    ),
                )
                .await?;
            let row = client
                .query_one(
                    &statement,
                    &[&user, &terminal, &seq(position), &contiguous, &now_ms()],
                )
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

    async fn terminal_cursors(
        &self,
        tenant: &TenantId,
        user: &str,
    ) -> Result<Vec<TerminalCursor>, StoreError> {
        super::stored_terminals::cursors(self, tenant, user).await
    }

    async fn forget_terminal(
        &self,
        tenant: &TenantId,
        user: &str,
        terminal: &str,
    ) -> Result<bool, StoreError> {
        super::stored_terminals::forget(self, tenant, user, terminal).await
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
                         WHERE conversation_id = $1 AND seq > $2 AND kind <> {READ_RECEIPT_KIND}
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

    async fn record_receipt(
        &self,
        tenant: &TenantId,
        r: &StoredReceipt,
        receivers: &[String],
    ) -> Result<Vec<StoredMessage>, StoreError> {
        super::stored_receipts::record(self, tenant, r, receivers).await
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

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

/// The function that accepts a message in one statement (created with the schema, see
/// [`ACCEPT_OUTCOME`]): one round trip to the database instead of eight (begin, the
/// conversation's counter, membership, the client id, the timeline's counter, the message, the
/// participants, commit), each of which cost a wake-up of this process and of the database's.
///
/// Row locks order concurrent accepts: the conversation's counter first, then the receiver's
/// timeline counter (always in that order, so two accepts never wait on each other in a
/// cycle). A second accept of the same conversation waits for the first to commit, so it sees
/// its client id, and positions of one timeline commit in order. A refusal or a retry found
/// gives the counter back (the conversation's row is locked by this statement, so nobody moved
/// it meanwhile): a conversation's sequence has no gaps.
pub(super) fn accept_function(schema: &str) -> String {
    format!(
        "CREATE OR REPLACE FUNCTION {schema}.accept_message(
           p_message_id text, p_conversation text, p_client text, p_from text, p_to text,
           p_kind integer, p_body text, p_sent bigint, p_members_only boolean)
         RETURNS TABLE (message_id text, conversation_id text, seq bigint, from_user text,
           to_user text, kind integer, body text, sent_at_ms bigint, \"position\" bigint,
           outcome integer)
         LANGUAGE plpgsql AS $accept$
         #variable_conflict use_column
         DECLARE
           v_seq bigint;
           v_position bigint;
         BEGIN
           INSERT INTO {schema}.conversations AS c (conversation_id, last_seq)
             VALUES (p_conversation, 1)
             ON CONFLICT (conversation_id) DO UPDATE SET last_seq = c.last_seq + 1
             RETURNING c.last_seq INTO v_seq;
           IF p_members_only AND v_seq > 1 AND NOT EXISTS (
               SELECT 1 FROM {schema}.participants p
               WHERE p.conversation_id = p_conversation AND p.user_id = p_from) THEN
             UPDATE {schema}.conversations c SET last_seq = v_seq - 1
               WHERE c.conversation_id = p_conversation;
             RETURN QUERY SELECT NULL::text, p_conversation, 0::bigint, p_from, p_to, p_kind,
               p_body, p_sent, 0::bigint, {NOT_A_PARTICIPANT};
             RETURN;
           END IF;
           IF p_client <> '' THEN
             RETURN QUERY SELECT m.message_id, m.conversation_id, m.seq, m.from_user,
               m.to_user, m.kind, m.body, m.sent_at_ms, m.position, {EXISTING}
               FROM {schema}.messages m
               WHERE m.conversation_id = p_conversation AND m.from_user = p_from
                 AND m.client_msg_id = p_client;
             IF FOUND THEN
               UPDATE {schema}.conversations c SET last_seq = v_seq - 1
                 WHERE c.conversation_id = p_conversation;
               RETURN;
             END IF;
           END IF;
           INSERT INTO {schema}.timelines AS t (user_id, last_position) VALUES (p_to, 1)
             ON CONFLICT (user_id) DO UPDATE SET last_position = t.last_position + 1
             RETURNING t.last_position INTO v_position;
           INSERT INTO {schema}.messages
             (message_id, conversation_id, seq, from_user, to_user, kind, body, sent_at_ms,
              position, client_msg_id)
             VALUES (p_message_id, p_conversation, v_seq, p_from, p_to, p_kind, p_body, p_sent,
              v_position, NULLIF(p_client, ''));
           INSERT INTO {schema}.participants (conversation_id, user_id)
             VALUES (p_conversation, p_from), (p_conversation, p_to) ON CONFLICT DO NOTHING;
           RETURN QUERY SELECT p_message_id, p_conversation, v_seq, p_from, p_to, p_kind, p_body,
             p_sent, v_position, {NEW};
         END
         $accept$;",
        NEW = ACCEPT_OUTCOME[0],
        EXISTING = ACCEPT_OUTCOME[1],
        NOT_A_PARTICIPANT = ACCEPT_OUTCOME[2],
    )
}

/// What `accept_message` answers in its last column: a new message, the one a retry's client
/// id already sent, or a sender who does not take part in the conversation.
pub(super) const ACCEPT_OUTCOME: [i32; 3] = [0, 1, 2];

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
            let schema = self.schema(tenant)?;
            let err = |e| backend(tenant, "accepting a message")(e);
            let accept = client
                .prepare_cached(&format!(
                    "SELECT * FROM {schema}.accept_message($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                ))
                .await
                .map_err(err)?;
            let row = client
                .query_one(
                    &accept,
                    &[
                        &m.message_id,
                        &m.conversation_id,
                        &m.client_msg_id,
                        &m.from_user,
                        &m.to_user,
                        &m.kind,
                        &m.body,
                        &m.sent_at_ms,
                        &m.members_only,
                    ],
                )
                .await
                .map_err(err)?;
            match row.get::<_, i32>(9) {
                outcome if outcome == ACCEPT_OUTCOME[1] => Ok(Accepted::Existing(message(&row))),
                outcome if outcome == ACCEPT_OUTCOME[2] => Err(StoreError::NotAParticipant {
                    conversation: m.conversation_id.clone(),
                    user: m.from_user.clone(),
                }),
                _ => Ok(Accepted::New(message(&row))),
            }
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

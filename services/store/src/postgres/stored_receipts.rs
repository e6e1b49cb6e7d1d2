//! Read receipts in PostgreSQL as timeline entries: the reader's row moved forward, then one
//! entry in each receiver's timeline, in one transaction.

use super::*;
use stored_messages::{next_position, seq};

/// [`MessageStore::record_receipt`]: the reader's row first (a second receipt of the same
/// reader waits on it, and finds nothing to move if it reads no further), then the receivers'
/// timeline rows, locked in one order (by user) so two receipts never wait on each other in a
/// cycle.
pub(super) async fn record(
    store: &PgStore,
    tenant: &TenantId,
    r: &StoredReceipt,
    receivers: &[String],
) -> Result<Vec<StoredMessage>, StoreError> {
    store.within(tenant, "record_receipt", async |client: &mut Object| {
            const OP: &str = "recording a read receipt";
            let schema = store.schema(tenant)?;
            let err = |e| backend(tenant, OP)(e);
            let tx = client.transaction().await.map_err(err)?;
            // the reader's row first: a second receipt of the same reader waits here, and
            // finds nothing to move if it reads no further
            let moved = tx
                .prepare_cached(&format!(
                    "INSERT INTO {schema}.receipts AS r (conversation_id, reader, up_to_seq, read_at_ms)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (conversation_id, reader) DO UPDATE
                       SET up_to_seq = EXCLUDED.up_to_seq, read_at_ms = EXCLUDED.read_at_ms
                       WHERE r.up_to_seq < EXCLUDED.up_to_seq
                     RETURNING 1"
                ))
                .await
                .map_err(err)?;
            let args: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                [&r.conversation_id, &r.reader, &seq(r.up_to_seq), &r.read_at_ms];
            if tx.query_opt(&moved, &args).await.map_err(err)?.is_none() {
                tx.rollback().await.map_err(err)?;
                return Ok(Vec::new());
            }
            let insert = tx
                .prepare_cached(&format!(
                    "INSERT INTO {schema}.messages
                     (message_id, conversation_id, seq, from_user, to_user, kind, body, sent_at_ms,
                      position)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                ))
                .await
                .map_err(err)?;
            // timeline rows locked in one order (by user), so two receipts never wait on
            // each other in a cycle; the answer keeps the order it was asked in
            let mut order: Vec<usize> = (0..receivers.len()).collect();
            order.sort_by(|a, b| receivers[*a].cmp(&receivers[*b]));
            let mut entries = vec![StoredMessage::default(); receivers.len()];
            for i in order {
                let receiver = &receivers[i];
                let position = next_position(&tx, &schema, receiver)
                    .await
                    .map_err(err)?;
                let entry = StoredMessage::of_receipt(r, receiver, position as u64);
                tx.execute(
                    &insert,
                    &[
                        &entry.message_id,
                        &entry.conversation_id,
                        &seq(entry.seq),
                        &entry.from_user,
                        &entry.to_user,
                        &entry.kind,
                        &entry.body,
                        &entry.sent_at_ms,
                        &position,
                    ],
                )
                .await
                .map_err(err)?;
                entries[i] = entry;
            }
            tx.commit().await.map_err(err)?;
            Ok(entries)
        })
        .await
}

//! A user's terminals in PostgreSQL, as their cursors know them: listed with when each was
//! last seen, and forgotten when signed out for good.

use super::*;

/// [`MessageStore::terminal_cursors`].
pub(super) async fn cursors(
    store: &PgStore,
    tenant: &TenantId,
    user: &str,
) -> Result<Vec<TerminalCursor>, StoreError> {
    store
        .within(tenant, "terminal_cursors", async |client: &mut Object| {
            const OP: &str = "listing a user's terminals";
            let schema = store.schema(tenant)?;
            let (client, statement) = store
                .prepared(
                    client,
                    tenant,
                    OP,
                    &format!(
                        "SELECT terminal_id, position, seen_at_ms FROM {schema}.cursors
                         WHERE user_id = $1 ORDER BY terminal_id"
                    ),
                )
                .await?;
            let rows = client
                .query(&statement, &[&user])
                .await
                .map_err(backend(tenant, OP))?;
            Ok(rows
                .iter()
                .map(|row| TerminalCursor {
                    terminal_id: row.get(0),
                    position: row.get::<_, i64>(1) as u64,
                    seen_at_ms: row.get(2),
                })
                .collect())
        })
        .await
}

/// [`MessageStore::forget_terminal`].
pub(super) async fn forget(
    store: &PgStore,
    tenant: &TenantId,
    user: &str,
    terminal: &str,
) -> Result<bool, StoreError> {
    store
        .within(tenant, "forget_terminal", async |client: &mut Object| {
            const OP: &str = "forgetting a terminal";
            let schema = store.schema(tenant)?;
            let (client, statement) = store
                .prepared(
                    client,
                    tenant,
                    OP,
                    &format!(
                        "DELETE FROM {schema}.cursors WHERE user_id = $1 AND terminal_id = $2"
                    ),
                )
                .await?;
            let deleted = client
                .execute(&statement, &[&user, &terminal])
                .await
                .map_err(backend(tenant, OP))?;
            Ok(deleted > 0)
        })
        .await
}

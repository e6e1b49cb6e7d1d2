//! Where orders are kept: the order book of every tenant, in its data namespace of the
//! node's store.

use super::*;

/// The order book of every tenant, in the tenant's data namespace of the store the node runs
/// on (PostgreSQL, or the embedded store): replicas of one process group share it, and a
/// restarted or moved tenant finds its orders where it is served next.
#[derive(Clone)]
pub struct OrderStore {
    records: Arc<dyn OrderRecords>,
}

impl std::fmt::Debug for OrderStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderStore").finish_non_exhaustive()
    }
}

impl OrderStore {
    /// Orders kept in `records` (a tenant's are reachable once its namespace was opened).
    pub fn new(records: Arc<dyn OrderRecords>) -> Self {
        Self { records }
    }

    /// Stores (or replaces) an order of `tenant`.
    pub async fn put(&self, tenant: &TenantId, order: Order) -> Result<(), StoreError> {
        self.records.put_order(tenant, &order).await
    }

    /// An order of `tenant`.
    pub async fn get(
        &self,
        tenant: &TenantId,
        order_id: &str,
    ) -> Result<Option<Order>, StoreError> {
        self.records.order(tenant, order_id).await
    }

    /// Up to `limit` orders of `user_id` within `tenant`, newest first.
    pub async fn list(
        &self,
        tenant: &TenantId,
        user_id: &str,
        limit: usize,
    ) -> Result<Vec<Order>, StoreError> {
        self.records.orders_of(tenant, user_id, limit).await
    }

    /// Stores `order` unless `tenant` has it already: an announcement arriving after the
    /// order moved on (paid, cancelled) must not take it back to its first state.
    pub async fn put_new(&self, tenant: &TenantId, order: Order) -> Result<bool, StoreError> {
        self.records.put_new_order(tenant, &order).await
    }

    /// Moves a known order from `from` (any, when `None`) to `status`; the order moved, or
    /// `None` when it is not known or not in `from`. A cancelled order stays cancelled: a
    /// late or replayed event cannot bring it back.
    pub async fn move_status(
        &self,
        tenant: &TenantId,
        order_id: &str,
        from: Option<i32>,
        status: i32,
    ) -> Result<Option<Order>, StoreError> {
        self.records
            .move_order(tenant, order_id, from, status, CANCELLED)
            .await
    }
}

/// A store failure as a consumer's handler answers it: retried when it passes.
pub(crate) fn handler_error(err: StoreError) -> mesh_contract::HandlerError {
    if err.is_transient() {
        mesh_contract::HandlerError::Retry(err.to_string())
    } else {
        mesh_contract::HandlerError::Reject(err.to_string())
    }
}

/// A store failure as a call answers it: UNAVAILABLE (call again) when it passes; the
/// database's own words stay in the log, not in the caller's answer.
pub(crate) fn status(err: StoreError) -> Status {
    match &err {
        _ if err.is_transient() => {
            Status::unavailable("the order book is unavailable for a moment; retry")
        }
        StoreError::UnknownTenant(_) => Status::permission_denied(err.to_string()),
        _ => {
            tracing::error!(error = %err, "the order book failed");
            Status::internal("the order book failed")
        }
    }
}

/// The status every major gives a cancelled order.
pub(crate) const CANCELLED: i32 = v2::OrderStatus::Cancelled as i32;

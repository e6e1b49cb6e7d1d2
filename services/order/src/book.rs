//! The order book: order events from checkouts outside the platform, recorded in the store.

use super::*;

/// `OrderStatus` numbers, the same in order v1 and v2.
const ORDER_STATUS_UNSPECIFIED: i32 = 0;
const ORDER_STATUS_PLACED: i32 = 1;

/// The order book: what checkout systems outside the platform announce on the queue
/// (`OrderCreated`, `OrderUpdated`, `OrderCancelled`, in the envelope README.md gives) is
/// recorded in the [`OrderStore`], so the orders a checkout written in any language places
/// are the ones support staff look up beside the conversation. Replays are harmless: a known
/// order is kept as it is, and an update applies only to the state it left.
///
/// The book is the tenant's [`OrderStore`], in its data namespace: every replica of a process
/// group records into and answers from the same one.
#[derive(Clone, Debug)]
pub struct OrderBook {
    store: OrderStore,
}

impl OrderBook {
    /// Records into `store` (the one the [`OrderService`] answers from).
    pub fn new(store: OrderStore) -> Self {
        Self { store }
    }

    async fn created(
        &self,
        ctx: &RequestContext,
        order: Option<Order>,
    ) -> Result<(), mesh_contract::HandlerError> {
        let mut order = order.ok_or_else(|| {
            mesh_contract::HandlerError::Reject("OrderCreated carries no order".into())
        })?;
        // a created order was placed: a checkout that leaves the status out (proto3 reads an
        // unset enum as UNSPECIFIED, 0 in both majors) means that, not "no status"
        if order.status == ORDER_STATUS_UNSPECIFIED {
            order.status = ORDER_STATUS_PLACED;
        }
        for (field, value) in [
            ("order.order_id", &order.order_id),
            ("order.user_id", &order.user_id),
        ] {
            mesh_contract::fields::id(field, value)
                .map_err(|s| mesh_contract::HandlerError::Reject(s.message().to_owned()))?;
        }
        // the platform's own sender buys nothing: its orders would show in its conversations
        if mesh_contract::fields::is_reserved_sender(&order.user_id) {
            return Err(mesh_contract::HandlerError::Reject(format!(
                "order.user_id {:?} is reserved for the platform's own messages",
                order.user_id
            )));
        }
        self.store
            .put_new(&ctx.tenant, order)
            .await
            .map_err(handler_error)?;
        Ok(())
    }

    /// An update applies to the order in the state it left (a replayed or late one, whose
    /// order moved on since, is dropped); one of an order this platform never heard of has
    /// nothing to show it beside.
    async fn moved(
        &self,
        ctx: &RequestContext,
        order_id: &str,
        from: Option<i32>,
        status: i32,
    ) -> Result<(), mesh_contract::HandlerError> {
        self.store
            .move_status(&ctx.tenant, order_id, from, status)
            .await
            .map_err(handler_error)?;
        Ok(())
    }
}

impl v1::OrderHandler for OrderBook {
    async fn on_order_created(
        &self,
        ctx: &RequestContext,
        event: v1::OrderCreated,
    ) -> Result<(), mesh_contract::HandlerError> {
        let conversation_id = event.conversation_id;
        self.created(
            ctx,
            event.order.map(|o| Order {
                order_id: o.order_id,
                user_id: o.user_id,
                merchant_id: o.merchant_id,
                status: o.status,
                total_minor: o.total_cents,
                currency: o.currency,
                created_at_ms: o.created_at_ms,
                conversation_id,
            }),
        )
        .await
    }

    async fn on_order_updated(
        &self,
        ctx: &RequestContext,
        event: v1::OrderUpdated,
    ) -> Result<(), mesh_contract::HandlerError> {
        self.moved(
            ctx,
            &event.order_id,
            Some(event.previous_status),
            event.status,
        )
        .await
    }
}

impl v2::OrderHandler for OrderBook {
    async fn on_order_created(
        &self,
        ctx: &RequestContext,
        event: v2::OrderCreated,
    ) -> Result<(), mesh_contract::HandlerError> {
        let conversation_id = event.conversation_id;
        self.created(
            ctx,
            event.order.map(|o| {
                let total = o.total.unwrap_or_default();
                Order {
                    order_id: o.order_id,
                    user_id: o.user_id,
                    merchant_id: o.merchant_id,
                    status: o.status,
                    total_minor: total.minor_units,
                    currency: total.currency,
                    created_at_ms: o.created_at_ms,
                    conversation_id,
                }
            }),
        )
        .await
    }

    async fn on_order_updated(
        &self,
        ctx: &RequestContext,
        event: v2::OrderUpdated,
    ) -> Result<(), mesh_contract::HandlerError> {
        self.moved(
            ctx,
            &event.order_id,
            Some(event.previous_status),
            event.status,
        )
        .await
    }

    async fn on_order_cancelled(
        &self,
        ctx: &RequestContext,
        event: v2::OrderCancelled,
    ) -> Result<(), mesh_contract::HandlerError> {
        self.moved(ctx, &event.order_id, None, CANCELLED).await
    }
}

//! The order service, written once for every business line: the order lookup support staff
//! see beside a conversation. Serves contract `order` v1 and v2 from the same store; which major
//! a tenant runs is its config's business, not this crate's.
//!
//! Data isolation: every read and write goes through the store of the caller's tenant, taken
//! from the authenticated [`RequestContext`]; no method can name another tenant.
//!
//! Events: with [`OrderService::with_events`], placing an order, changing its status and
//! cancelling it publish `OrderCreated` / `OrderUpdated` / `OrderCancelled` on the contract
//! major the tenant runs, so the message service can write them into the conversation.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use mesh_api::order::{v1, v2};
use mesh_contract::{BusError, EventBus, RequestContext, TenantId};
use tonic::{Request, Response, Status};

/// An order as stored, independent of contract versions.
pub use mesh_store::StoredOrder as Order;
use mesh_store::{OrderRecords, StoreError};

mod book;
mod events;
mod store;

pub use book::OrderBook;
pub use events::GreyUsers;
use events::{EventMajor, Events};
pub use store::OrderStore;
use store::{CANCELLED, handler_error, status};

/// Why [`OrderService::place`] or [`OrderService::set_status`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// The order book could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The order moved on (cancelled, or changed by another caller) since it was read.
    #[error("order {order_id:?} of tenant {tenant} changed meanwhile; read it again")]
    Conflict {
        /// Whose.
        tenant: TenantId,
        /// Which.
        order_id: String,
    },
    /// No such order in the tenant's store.
    #[error("order {order_id:?} of tenant {tenant} does not exist")]
    NotFound {
        /// Whose.
        tenant: TenantId,
        /// Which.
        order_id: String,
    },
    /// The order changed, but its event was not published.
    #[error(
        "order {order_id:?} of tenant {tenant} changed, but its event was not published: {source}"
    )]
    Event {
        /// Whose.
        tenant: TenantId,
        /// Which.
        order_id: String,
        /// What the bus said.
        #[source]
        source: BusError,
    },
}

/// The service, for both majors.
#[derive(Clone)]
pub struct OrderService {
    store: OrderStore,
    events: Option<Events>,
}

impl std::fmt::Debug for OrderService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderService")
            .field("store", &self.store)
            .field("publishes_events", &self.events.is_some())
            .finish()
    }
}

impl OrderService {
    /// The service over `store`, publishing no events.
    pub fn new(store: OrderStore) -> Self {
        Self {
            store,
            events: None,
        }
    }

    /// The store it answers from (an [`OrderBook`] records into the same one).
    pub fn store(&self) -> &OrderStore {
        &self.store
    }

    /// The service over `store`, publishing order events on `bus`.
    pub fn with_events(store: OrderStore, bus: Arc<dyn EventBus>) -> Self {
        Self {
            store,
            events: Some(Events {
                v1: v1::OrderPublisher::new(bus.clone()),
                v2: v2::OrderPublisher::new(bus),
                majors: Arc::default(),
            }),
        }
    }

    /// Publishes `tenant`'s events on contract major `major` (1 unless set; from the tenant's
    /// `services.order.version`).
    pub fn set_major(&self, tenant: TenantId, major: u32) {
        self.set_majors(tenant, major, None);
    }

    /// [`OrderService::set_major`], with a grey release: the events of the orders of users
    /// `grey.1` includes use major `grey.0`.
    pub fn set_majors(&self, tenant: TenantId, major: u32, grey: Option<(u32, GreyUsers)>) {
        if let Some(events) = &self.events {
            events
                .majors
                .write()
                .expect("lock")
                .insert(tenant, EventMajor { major, grey });
        }
    }

    /// Records a new order (placed at checkout, outside this platform) and announces it in
    /// its conversation.
    pub async fn place(&self, ctx: &RequestContext, order: Order) -> Result<(), OrderError> {
        self.store.put(&ctx.tenant, order.clone()).await?;
        let Some(events) = &self.events else {
            return Ok(());
        };
        let published = match events.major(&ctx.tenant, &order.user_id) {
            2 => {
                let event = v2::OrderCreated {
                    conversation_id: order.conversation_id.clone(),
                    order: Some(view_v2(order.clone())),
                };
                events.v2.publish(ctx, event).await
            }
            _ => {
                let event = v1::OrderCreated {
                    conversation_id: order.conversation_id.clone(),
                    order: Some(view_v1(order.clone())),
                };
                events.v1.publish(ctx, event).await
            }
        };
        published.map_err(|source| OrderError::Event {
            tenant: ctx.tenant.clone(),
            order_id: order.order_id,
            source,
        })
    }

    /// Moves an order to `status` (paid, shipped ...) and announces the change.
    pub async fn set_status(
        &self,
        ctx: &RequestContext,
        order_id: &str,
        status: i32,
    ) -> Result<Order, OrderError> {
        let not_found = || OrderError::NotFound {
            tenant: ctx.tenant.clone(),
            order_id: order_id.to_owned(),
        };
        let previous_status = self
            .store
            .get(&ctx.tenant, order_id)
            .await?
            .ok_or_else(not_found)?
            .status;
        // from the status read: a change in between (another replica) is not overwritten
        let order = self
            .store
            .move_status(&ctx.tenant, order_id, Some(previous_status), status)
            .await?
            .ok_or_else(|| OrderError::Conflict {
                tenant: ctx.tenant.clone(),
                order_id: order_id.to_owned(),
            })?;
        if let Some(events) = &self.events {
            let published = match events.major(&ctx.tenant, &order.user_id) {
                2 => {
                    let event = v2::OrderUpdated {
                        order_id: order.order_id.clone(),
                        user_id: order.user_id.clone(),
                        previous_status,
                        status,
                        conversation_id: order.conversation_id.clone(),
                    };
                    events.v2.publish(ctx, event).await
                }
                _ => {
                    let event = v1::OrderUpdated {
                        order_id: order.order_id.clone(),
                        user_id: order.user_id.clone(),
                        previous_status,
                        status,
                        conversation_id: order.conversation_id.clone(),
                    };
                    events.v1.publish(ctx, event).await
                }
            };
            published.map_err(|source| OrderError::Event {
                tenant: ctx.tenant.clone(),
                order_id: order_id.to_owned(),
                source,
            })?;
        }
        Ok(order)
    }

    async fn find(&self, ctx: &RequestContext, order_id: &str) -> Result<Order, Status> {
        // checked at the door: an id that could never be stored is the caller's mistake, and
        // is not echoed back at any length
        mesh_contract::fields::id("order_id", order_id)?;
        let not_found =
            || Status::not_found(format!("order {order_id:?} of tenant {}", ctx.tenant));
        let order = self
            .store
            .get(&ctx.tenant, order_id)
            .await
            .map_err(status)?
            .ok_or_else(not_found)?;
        // an end user sees only its own orders; another user's is answered as missing
        match ctx.act_as("user_id", &order.user_id) {
            Ok(_) => Ok(order),
            Err(_) => Err(not_found()),
        }
    }
}

fn limit(requested: u32) -> usize {
    match requested {
        0 => 20,
        n => n.min(100) as usize,
    }
}

fn view_v1(o: Order) -> v1::OrderView {
    v1::OrderView {
        order_id: o.order_id,
        user_id: o.user_id,
        merchant_id: o.merchant_id,
        status: o.status,
        total_cents: o.total_minor,
        currency: o.currency,
        items: Vec::new(),
        created_at_ms: o.created_at_ms,
    }
}

fn view_v2(o: Order) -> v2::OrderView {
    v2::OrderView {
        order_id: o.order_id,
        user_id: o.user_id,
        merchant_id: o.merchant_id,
        status: o.status,
        items: Vec::new(),
        created_at_ms: o.created_at_ms,
        total: Some(v2::Money {
            currency: o.currency,
            minor_units: o.total_minor,
        }),
    }
}

#[tonic::async_trait]
impl v1::order_server::Order for OrderService {
    async fn get_order(
        &self,
        request: Request<v1::GetOrderRequest>,
    ) -> Result<Response<v1::GetOrderResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let order = self.find(&ctx, &request.get_ref().order_id).await?;
        Ok(Response::new(v1::GetOrderResponse {
            order: Some(view_v1(order)),
        }))
    }

    async fn list_orders(
        &self,
        request: Request<v1::ListOrdersRequest>,
    ) -> Result<Response<v1::ListOrdersResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let r = request.get_ref();
        // an end user lists its own orders only
        let user_id = ctx.act_as("user_id", &r.user_id)?;
        mesh_contract::fields::id("user_id", &user_id)?;
        let orders = self
            .store
            .list(&ctx.tenant, &user_id, limit(r.limit))
            .await
            .map_err(status)?
            .into_iter()
            .map(view_v1)
            .collect();
        Ok(Response::new(v1::ListOrdersResponse { orders }))
    }
}

#[tonic::async_trait]
impl v2::order_server::Order for OrderService {
    async fn get_order(
        &self,
        request: Request<v2::GetOrderRequest>,
    ) -> Result<Response<v2::GetOrderResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let order = self.find(&ctx, &request.get_ref().order_id).await?;
        Ok(Response::new(v2::GetOrderResponse {
            order: Some(view_v2(order)),
        }))
    }

    async fn list_orders(
        &self,
        request: Request<v2::ListOrdersRequest>,
    ) -> Result<Response<v2::ListOrdersResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let r = request.get_ref();
        // an end user lists its own orders only
        let user_id = ctx.act_as("user_id", &r.user_id)?;
        mesh_contract::fields::id("user_id", &user_id)?;
        let orders = self
            .store
            .list(&ctx.tenant, &user_id, limit(r.limit))
            .await
            .map_err(status)?
            .into_iter()
            .map(view_v2)
            .collect();
        Ok(Response::new(v2::ListOrdersResponse { orders }))
    }

    async fn cancel_order(
        &self,
        request: Request<v2::CancelOrderRequest>,
    ) -> Result<Response<v2::CancelOrderResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let found = self.find(&ctx, &request.get_ref().order_id).await?;
        let cancellable = [v2::OrderStatus::Placed as i32, v2::OrderStatus::Paid as i32];
        // from the status it has now, in one step: cancelled once, even by two callers at once
        let moved = if cancellable.contains(&found.status) {
            self.store
                .move_status(&ctx.tenant, &found.order_id, Some(found.status), CANCELLED)
                .await
                .map_err(status)?
        } else {
            None
        };
        let Some(order) = moved else {
            return Err(Status::failed_precondition(format!(
                "order {:?} can no longer be cancelled",
                found.order_id
            )));
        };
        if let Some(events) = &self.events {
            let event = v2::OrderCancelled {
                order_id: order.order_id.clone(),
                user_id: order.user_id.clone(),
                reason: request.get_ref().reason.clone(),
                conversation_id: order.conversation_id.clone(),
            };
            events.v2.publish(&ctx, event).await.map_err(|err| {
                Status::unavailable(format!(
                    "order {:?} was cancelled, but its event was not published: {err}",
                    order.order_id
                ))
            })?;
        }
        Ok(Response::new(v2::CancelOrderResponse {
            order: Some(view_v2(order)),
        }))
    }
}

#[cfg(test)]
mod tests;

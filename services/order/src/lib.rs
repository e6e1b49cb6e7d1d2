//! The order service, written once for every business line: the order lookup support staff
//! see beside a conversation. Serves contract `order` v1 and v2 from the same store; which major
//! a tenant runs is its config's business, not this crate's.
//!
//! Data isolation: every read and write goes through the store of the caller's tenant, taken
//! from the authenticated [`RequestContext`]; no method can name another tenant.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
};

use mesh_api::order::{v1, v2};
use mesh_contract::{RequestContext, TenantId};
use tonic::{Request, Response, Status};

/// An order as stored, independent of contract versions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Order {
    /// Id, unique within the tenant.
    pub order_id: String,
    /// Buyer.
    pub user_id: String,
    /// Seller.
    pub merchant_id: String,
    /// Lifecycle state (the v1/v2 `OrderStatus` number; both majors share the values).
    pub status: i32,
    /// Total in minor units.
    pub total_minor: i64,
    /// ISO 4217 currency.
    pub currency: String,
    /// Creation time.
    pub created_at_ms: i64,
}

/// The in-process order store: one namespace per tenant.
#[derive(Clone, Debug, Default)]
pub struct OrderStore {
    namespaces: Arc<RwLock<HashMap<TenantId, BTreeMap<String, Order>>>>,
}

impl OrderStore {
    /// Stores (or replaces) an order of `tenant`.
    pub fn put(&self, tenant: &TenantId, order: Order) {
        self.namespaces
            .write()
            .expect("lock")
            .entry(tenant.clone())
            .or_default()
            .insert(order.order_id.clone(), order);
    }

    /// An order of `tenant`.
    pub fn get(&self, tenant: &TenantId, order_id: &str) -> Option<Order> {
        self.namespaces
            .read()
            .expect("lock")
            .get(tenant)?
            .get(order_id)
            .cloned()
    }

    /// Up to `limit` orders of `user_id` within `tenant`, newest first.
    pub fn list(&self, tenant: &TenantId, user_id: &str, limit: usize) -> Vec<Order> {
        let namespaces = self.namespaces.read().expect("lock");
        let mut orders: Vec<Order> = namespaces
            .get(tenant)
            .map(|n| {
                n.values()
                    .filter(|o| o.user_id == user_id)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        orders.sort_by_key(|o| std::cmp::Reverse(o.created_at_ms));
        orders.truncate(limit);
        orders
    }
}

/// The service, for both majors.
#[derive(Clone, Debug, Default)]
pub struct OrderService {
    store: OrderStore,
}

impl OrderService {
    /// The service over `store`.
    pub fn new(store: OrderStore) -> Self {
        Self { store }
    }

    fn find(&self, ctx: &RequestContext, order_id: &str) -> Result<Order, Status> {
        self.store.get(&ctx.tenant, order_id).ok_or_else(|| {
            Status::not_found(format!("order {order_id:?} of tenant {}", ctx.tenant))
        })
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
        let order = self.find(&ctx, &request.get_ref().order_id)?;
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
        let orders = self
            .store
            .list(&ctx.tenant, &r.user_id, limit(r.limit))
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
        let order = self.find(&ctx, &request.get_ref().order_id)?;
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
        let orders = self
            .store
            .list(&ctx.tenant, &r.user_id, limit(r.limit))
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
        let mut order = self.find(&ctx, &request.get_ref().order_id)?;
        let cancellable = [v2::OrderStatus::Placed as i32, v2::OrderStatus::Paid as i32];
        if !cancellable.contains(&order.status) {
            return Err(Status::failed_precondition(format!(
                "order {:?} can no longer be cancelled",
                order.order_id
            )));
        }
        order.status = v2::OrderStatus::Cancelled as i32;
        self.store.put(&ctx.tenant, order.clone());
        Ok(Response::new(v2::CancelOrderResponse {
            order: Some(view_v2(order)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use v2::order_server::Order as _;

    fn request<T>(tenant: &str, body: T) -> Request<T> {
        let mut request = Request::new(body);
        request
            .extensions_mut()
            .insert(RequestContext::new(TenantId::new(tenant).unwrap()));
        request
    }

    #[tokio::test]
    async fn tenants_never_see_each_others_orders() {
        let store = OrderStore::default();
        let mall = TenantId::new("mall").unwrap();
        store.put(
            &mall,
            Order {
                order_id: "o-1".into(),
                status: 2,
                ..Default::default()
            },
        );
        let service = OrderService::new(store);
        let found = service
            .get_order(request(
                "mall",
                v2::GetOrderRequest {
                    order_id: "o-1".into(),
                },
            ))
            .await
            .unwrap();
        assert_eq!(found.into_inner().order.unwrap().order_id, "o-1");
        let status = service
            .get_order(request(
                "paipai",
                v2::GetOrderRequest {
                    order_id: "o-1".into(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (tonic::Code::NotFound, "order \"o-1\" of tenant paipai")
        );
    }

    #[tokio::test]
    async fn cancelling_moves_a_paid_order_to_cancelled_once() {
        let store = OrderStore::default();
        let paipai = TenantId::new("paipai").unwrap();
        store.put(
            &paipai,
            Order {
                order_id: "o-9".into(),
                status: v2::OrderStatus::Paid as i32,
                ..Default::default()
            },
        );
        let service = OrderService::new(store.clone());
        let cancel = || {
            request(
                "paipai",
                v2::CancelOrderRequest {
                    order_id: "o-9".into(),
                    reason: "asked".into(),
                },
            )
        };
        let order = service
            .cancel_order(cancel())
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap();
        assert_eq!(order.status(), v2::OrderStatus::Cancelled);
        assert_eq!(
            store.get(&paipai, "o-9").unwrap().status,
            v2::OrderStatus::Cancelled as i32
        );
        assert_eq!(
            service.cancel_order(cancel()).await.unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
    }
}

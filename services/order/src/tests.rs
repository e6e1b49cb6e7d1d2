//! The order service's unit tests: tenants apart, cancellation once, the order book, the
//! event majors a tenant and a grey release run.

use super::*;
use v2::order_server::Order as _;

/// An order store in memory, with the demo's tenants opened.
async fn memory_store() -> OrderStore {
    let store = mesh_store::MemoryStore::default();
    for tenant in ["mall", "paipai", "finance"] {
        mesh_store::MessageStore::open(&store, &TenantId::new(tenant).unwrap(), tenant)
            .await
            .unwrap();
    }
    OrderStore::new(Arc::new(store))
}

fn request<T>(tenant: &str, body: T) -> Request<T> {
    let mut request = Request::new(body);
    request
        .extensions_mut()
        .insert(RequestContext::new(TenantId::new(tenant).unwrap()));
    request
}

#[tokio::test]
async fn tenants_never_see_each_others_orders() {
    let store = memory_store().await;
    let mall = TenantId::new("mall").unwrap();
    store
        .put(
            &mall,
            Order {
                order_id: "o-1".into(),
                status: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
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
    let store = memory_store().await;
    let paipai = TenantId::new("paipai").unwrap();
    store
        .put(
            &paipai,
            Order {
                order_id: "o-9".into(),
                status: v2::OrderStatus::Paid as i32,
                ..Default::default()
            },
        )
        .await
        .unwrap();
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
        store.get(&paipai, "o-9").await.unwrap().unwrap().status,
        v2::OrderStatus::Cancelled as i32
    );
    assert_eq!(
        service.cancel_order(cancel()).await.unwrap_err().code(),
        tonic::Code::FailedPrecondition
    );
}

/// What a checkout outside the platform announces is what ListOrders shows; a replayed
/// announcement does not undo a later change; an announcement without an order is
/// rejected (dead-lettered), not retried.
#[tokio::test]
async fn the_order_book_records_what_checkouts_announce() {
    let store = memory_store().await;
    let book = OrderBook::new(store.clone());
    let mall = RequestContext::new(TenantId::new("mall").unwrap());
    let created = v1::OrderCreated {
        order: Some(v1::OrderView {
            order_id: "o-1".into(),
            user_id: "alice".into(),
            status: 1,
            total_cents: 4999,
            currency: "EUR".into(),
            ..Default::default()
        }),
        conversation_id: "c-1".into(),
    };
    v1::OrderHandler::on_order_created(&book, &mall, created.clone())
        .await
        .unwrap();
    let listed = store.list(&mall.tenant, "alice", 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].total_minor, listed[0].conversation_id.as_str()),
        (4999, "c-1")
    );
    // a checkout that leaves the status out announces a placed order
    let unstated = v1::OrderCreated {
        order: Some(v1::OrderView {
            order_id: "o-2".into(),
            user_id: "alice".into(),
            ..Default::default()
        }),
        conversation_id: "c-1".into(),
    };
    v1::OrderHandler::on_order_created(&book, &mall, unstated)
        .await
        .unwrap();
    let placed = store.list(&mall.tenant, "alice", 10).await.unwrap();
    assert!(
        placed
            .iter()
            .any(|o| o.order_id == "o-2" && o.status == v1::OrderStatus::Placed as i32),
        "{placed:?}"
    );
    // no other tenant sees it
    assert!(
        store
            .list(&TenantId::new("paipai").unwrap(), "alice", 10)
            .await
            .unwrap()
            .is_empty()
    );

    v2::OrderHandler::on_order_cancelled(
        &book,
        &mall,
        v2::OrderCancelled {
            order_id: "o-1".into(),
            user_id: "alice".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // the first announcement again (a redelivery): the order stays cancelled
    v1::OrderHandler::on_order_created(&book, &mall, created)
        .await
        .unwrap();
    assert_eq!(
        store
            .get(&mall.tenant, "o-1")
            .await
            .unwrap()
            .unwrap()
            .status,
        v2::OrderStatus::Cancelled as i32
    );

    let empty = v1::OrderHandler::on_order_created(&book, &mall, v1::OrderCreated::default()).await;
    assert!(
        matches!(empty, Err(mesh_contract::HandlerError::Reject(_))),
        "{empty:?}"
    );
}

/// Records which events arrive, of which major.
struct Seen(tokio::sync::mpsc::UnboundedSender<String>);

impl v1::OrderHandler for Seen {
    async fn on_order_created(
        &self,
        ctx: &RequestContext,
        event: v1::OrderCreated,
    ) -> Result<(), mesh_contract::HandlerError> {
        let id = event.order.unwrap_or_default().order_id;
        let _ = self.0.send(format!(
            "{} v1 created {id} in {}",
            ctx.tenant, event.conversation_id
        ));
        Ok(())
    }
}

impl v2::OrderHandler for Seen {
    async fn on_order_updated(
        &self,
        ctx: &RequestContext,
        event: v2::OrderUpdated,
    ) -> Result<(), mesh_contract::HandlerError> {
        let _ = self.0.send(format!(
            "{} v2 updated {} {:?}->{:?}",
            ctx.tenant,
            event.order_id,
            event.previous_status(),
            event.status()
        ));
        Ok(())
    }
}

#[tokio::test]
async fn order_events_go_out_on_the_major_each_tenant_runs() {
    let bus: Arc<dyn EventBus> = Arc::new(mesh_embedded::EmbeddedBus::default());
    let (mall, paipai) = (
        TenantId::new("mall").unwrap(),
        TenantId::new("paipai").unwrap(),
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _v1 = bus
        .subscribe(v1::OrderConsumer::new(Seen(tx.clone())).subscription(mall.clone(), "t"))
        .await
        .unwrap();
    let _v2 = bus
        .subscribe(v2::OrderConsumer::new(Seen(tx)).subscription(paipai.clone(), "t"))
        .await
        .unwrap();
    let service = OrderService::with_events(memory_store().await, bus);
    service.set_major(paipai.clone(), 2);
    let order = Order {
        order_id: "o-1".into(),
        conversation_id: "c-1".into(),
        status: v2::OrderStatus::Paid as i32,
        ..Default::default()
    };
    service
        .place(&RequestContext::new(mall.clone()), order.clone())
        .await
        .unwrap();
    assert_eq!(rx.recv().await.unwrap(), "mall v1 created o-1 in c-1");

    let ctx = RequestContext::new(paipai.clone());
    // paipai's placement goes out on v2, where this test handles updates only
    service.place(&ctx, order).await.unwrap();
    service
        .set_status(&ctx, "o-1", v2::OrderStatus::Shipped as i32)
        .await
        .unwrap();
    assert_eq!(
        rx.recv().await.unwrap(),
        "paipai v2 updated o-1 Paid->Shipped"
    );
    assert_eq!(
        store_status(&service, &paipai).await,
        v2::OrderStatus::Shipped as i32
    );

    let err = service.set_status(&ctx, "o-404", 3).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "order \"o-404\" of tenant paipai does not exist"
    );
}

#[tokio::test]
async fn in_a_grey_release_the_orders_of_its_users_go_out_on_its_major() {
    let bus: Arc<dyn EventBus> = Arc::new(mesh_embedded::EmbeddedBus::default());
    let mall = TenantId::new("mall").unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _v1 = bus
        .subscribe(v1::OrderConsumer::new(Seen(tx.clone())).subscription(mall.clone(), "t"))
        .await
        .unwrap();
    let _v2 = bus
        .subscribe(v2::OrderConsumer::new(Seen(tx)).subscription(mall.clone(), "t"))
        .await
        .unwrap();
    let service = OrderService::with_events(memory_store().await, bus);
    let grey: GreyUsers = Arc::new(|user| user == "alice");
    service.set_majors(mall.clone(), 1, Some((2, grey)));
    let ctx = RequestContext::new(mall.clone());
    for (id, user) in [("o-1", "bob"), ("o-2", "alice")] {
        let order = Order {
            order_id: id.into(),
            user_id: user.into(),
            conversation_id: "c-1".into(),
            status: v2::OrderStatus::Paid as i32,
            ..Default::default()
        };
        service.place(&ctx, order).await.unwrap();
        service
            .set_status(&ctx, id, v2::OrderStatus::Shipped as i32)
            .await
            .unwrap();
    }
    // bob's placement on v1 (handled there), alice's update on v2 (handled there)
    assert_eq!(rx.recv().await.unwrap(), "mall v1 created o-1 in c-1");
    assert_eq!(
        rx.recv().await.unwrap(),
        "mall v2 updated o-2 Paid->Shipped"
    );
    // rolled back: alice's orders go out on v1 again, and stay hers
    service.set_majors(mall.clone(), 1, None);
    service
        .place(
            &ctx,
            Order {
                order_id: "o-3".into(),
                user_id: "alice".into(),
                conversation_id: "c-2".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(rx.recv().await.unwrap(), "mall v1 created o-3 in c-2");
    assert!(rx.try_recv().is_err(), "nothing else");
}

async fn store_status(service: &OrderService, tenant: &TenantId) -> i32 {
    service
        .store
        .get(tenant, "o-1")
        .await
        .unwrap()
        .unwrap()
        .status
}

//! The walkthrough a newcomer runs first. Every step uses the generated stubs over real
//! transports: a loopback HTTP/2 socket and the embedded event bus.

use std::{collections::HashMap, time::Duration};

use anyhow::Context;
use mesh_api::{message::v1 as message, order::v1 as order};
use mesh_contract::{DegradedAnswer, EventBus, HandlerError, RequestContext, TenantId};
use mesh_embedded::EmbeddedBus;
use tokio::sync::mpsc;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

pub async fn run(tenants: &[String]) -> anyhow::Result<()> {
    let tenants = tenants
        .iter()
        .map(|t| TenantId::new(t).with_context(|| format!("tenant {t:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;

    println!("== 1. The contracts: one description per service and major version ==");
    print_catalogue();

    println!(
        "\n== 2. One order service, one process, {} tenants (HTTP/2 on loopback) ==",
        tenants.len()
    );
    let orders = DemoOrders::seeded(&tenants);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(mesh_telemetry::TraceLayer::server(mesh_api::CONTRACTS))
            .add_service(order::order_server::OrderServer::new(orders))
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true))),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut caller = order::OrderCaller::new(
        tower::ServiceBuilder::new()
            .layer(mesh_telemetry::TraceLayer::client(mesh_api::CONTRACTS))
            .service(channel),
    );
    println!("order.v1 serving on {addr}");
    for tenant in &tenants {
        let ctx = RequestContext::new(tenant.clone());
        let answer = caller
            .get_order(
                &ctx,
                order::GetOrderRequest {
                    order_id: "o-1001".into(),
                },
            )
            .await?;
        let view = answer.order.unwrap_or_default();
        println!(
            "  [{tenant}] GetOrder(o-1001) -> user {}, {} {}.{:02}, {:?}  (the tenant travelled as metadata; data came from {tenant}'s namespace)",
            view.user_id,
            view.currency,
            view.total_cents / 100,
            view.total_cents % 100,
            view.status()
        );
    }

    println!(
        "\n== 3. Events: order -> message, per tenant, on the embedded bus (no broker needed) =="
    );
    let bus = EmbeddedBus::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut subscriptions = Vec::new();
    for tenant in &tenants {
        let consumer = order::OrderConsumer::new(SystemMessages { out: tx.clone() });
        subscriptions.push(
            bus.subscribe(consumer.subscription(tenant.clone(), "message"))
                .await?,
        );
    }
    let publisher = order::OrderPublisher::new(bus.clone());
    for tenant in &tenants {
        let ctx = RequestContext::new(tenant.clone());
        publisher
            .publish(
                &ctx,
                order::OrderCreated {
                    order: Some(order::OrderView {
                        order_id: format!("{tenant}-o-77"),
                        total_cents: 12900,
                        currency: "CNY".into(),
                        ..Default::default()
                    }),
                    conversation_id: format!("{tenant}-conv-1"),
                },
            )
            .await?;
        println!(
            "  [{tenant}] published OrderCreated to exchange {}",
            order::contract::ORDER_CREATED.exchange(tenant)
        );
    }
    for _ in &tenants {
        let (tenant, system_message) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .context("an event was not handled within 5 s")?
            .context("consumer stopped")?;
        println!(
            "  [{tenant}] message service turned it into: {:?}",
            system_message.body
        );
    }
    drop(subscriptions);

    println!("\nDone. Each tenant was served by the same code; only the context differed.");
    Ok(())
}

fn print_catalogue() {
    println!(
        "  {:<22} {:<8} {:<5} {:<6} {:<7} degraded answers",
        "service", "version", "tier", "calls", "events"
    );
    for spec in mesh_api::CONTRACTS {
        let degraded: Vec<String> = spec
            .methods
            .iter()
            .map(|m| {
                let answer = match m.degraded {
                    DegradedAnswer::Empty => "empty".to_owned(),
                    DegradedAnswer::Cached { max_age } => format!("cached<={}s", max_age.as_secs()),
                    DegradedAnswer::Error { code, .. } => format!("{code:?}"),
                };
                format!("{}={answer}", m.name)
            })
            .collect();
        println!(
            "  {:<22} {:<8} {:<5} {:<6} {:<7} {}",
            spec.service,
            spec.version,
            spec.tier.get(),
            spec.methods.len(),
            spec.events.len(),
            degraded.join(", ")
        );
    }
}

/// A stand-in order service for the demo: one in-memory namespace per tenant.
struct DemoOrders {
    by_tenant: HashMap<TenantId, HashMap<String, order::OrderView>>,
}

impl DemoOrders {
    fn seeded(tenants: &[TenantId]) -> Self {
        let by_tenant = tenants
            .iter()
            .enumerate()
            .map(|(i, tenant)| {
                let view = order::OrderView {
                    order_id: "o-1001".into(),
                    user_id: format!("{tenant}-customer-1"),
                    status: order::OrderStatus::Paid as i32,
                    total_cents: 1999 + 1000 * i as i64,
                    currency: "CNY".into(),
                    ..Default::default()
                };
                (
                    tenant.clone(),
                    HashMap::from([(view.order_id.clone(), view)]),
                )
            })
            .collect();
        Self { by_tenant }
    }
}

#[tonic::async_trait]
impl order::order_server::Order for DemoOrders {
    async fn get_order(
        &self,
        request: Request<order::GetOrderRequest>,
    ) -> Result<Response<order::GetOrderResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let namespace = self
            .by_tenant
            .get(&ctx.tenant)
            .ok_or_else(|| Status::permission_denied(format!("unknown tenant {}", ctx.tenant)))?;
        let id = request.into_inner().order_id;
        let order = namespace
            .get(&id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("order {id} of tenant {}", ctx.tenant)))?;
        Ok(Response::new(order::GetOrderResponse {
            order: Some(order),
        }))
    }

    async fn list_orders(
        &self,
        request: Request<order::ListOrdersRequest>,
    ) -> Result<Response<order::ListOrdersResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let orders = self
            .by_tenant
            .get(&ctx.tenant)
            .map(|n| n.values().cloned().collect())
            .unwrap_or_default();
        Ok(Response::new(order::ListOrdersResponse { orders }))
    }
}

/// Turns order events into system messages, as the message service will.
struct SystemMessages {
    out: mpsc::UnboundedSender<(TenantId, message::ChatMessage)>,
}

impl order::OrderHandler for SystemMessages {
    async fn on_order_created(
        &self,
        ctx: &RequestContext,
        event: order::OrderCreated,
    ) -> Result<(), HandlerError> {
        let order = event.order.unwrap_or_default();
        let body = format!(
            "Order {} was placed: {} {}.{:02}",
            order.order_id,
            order.currency,
            order.total_cents / 100,
            order.total_cents % 100
        );
        let system_message = message::ChatMessage {
            conversation_id: event.conversation_id,
            kind: message::MessageKind::System as i32,
            body,
            ..Default::default()
        };
        self.out
            .send((ctx.tenant.clone(), system_message))
            .map_err(|_| HandlerError::Retry("demo output closed".into()))
    }
}

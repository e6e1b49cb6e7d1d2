//! The walkthrough a newcomer runs first: the customer-service platform for three business
//! lines on one node, on embedded defaults (in-process event bus and store, no broker, no
//! database). Every step goes over real loopback sockets through the generated stubs.

use std::{path::Path, str::FromStr, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use mesh_api::{
    gateway::v1::{Push, push::Payload},
    locator::v1::TerminalKind,
    order::v1::OrderStatus,
    recommend::v1 as recommend,
};
use mesh_contract::{DegradedAnswer, RequestContext, TenantId};
use mesh_embedded::EmbeddedBus;
use mesh_gateway::Terminal;
use mesh_order::Order;
use mesh_platform::Platform;
use mesh_runtime::{
    TenantConfig, Tenants,
    identity::UserTokens,
    layers::{Switch, SwitchBoard, SwitchTarget},
};
use mesh_store::{MemoryStore, MessageStore};
use tonic::transport::Channel;

/// How long the demo waits for any push before it calls the run failed.
const WITHIN: Duration = Duration::from_secs(5);

pub async fn run(dir: &Path, ids: &[String]) -> anyhow::Result<()> {
    let ids = ids
        .iter()
        .map(|t| TenantId::new(t).with_context(|| format!("tenant {t:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let all = Tenants::load(dir, mesh_api::CONTRACTS)?;
    let mut tenants = Tenants::default();
    for id in &ids {
        let Some(config) = all.get(id.as_str()) else {
            bail!("tenant {id} is not configured in {}", dir.display());
        };
        tenants.tenants.insert(id.to_string(), config.clone());
    }

    println!("== 1. The contracts: one description per service and major version ==");
    print_catalogue();

    println!(
        "\n== 2. One node, {} business lines, one code base (their differences: {}) ==",
        ids.len(),
        dir.join("*.toml").display()
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let store: Arc<dyn MessageStore> = Arc::new(MemoryStore::default());
    let platform = Arc::new(Platform::new(
        "node-1",
        address,
        Arc::new(EmbeddedBus::default()),
        store.clone(),
    ));
    for id in &ids {
        let config = &tenants.tenants[id.as_str()];
        platform.add_tenant(config).await?;
        println!("  [{id}] {}", describe(config));
    }
    // the board the platform's own consumers consult, with the tenant files' initial switches
    platform.apply_initial_switches(&tenants);
    let switches = platform.switches().clone();
    {
        let (platform, tenants) = (platform.clone(), tenants.clone());
        tokio::spawn(async move {
            if let Err(err) = platform
                .serve(listener, &tenants, std::future::pending())
                .await
            {
                eprintln!("the demo node stopped: {err}");
            }
        });
    }
    let channel = Channel::from_shared(format!("http://{address}"))?.connect_lazy();
    println!(
        "  gateway, locator, message, order (v1 + v2) and recommend serve on {address} (HTTP/2);\n  events go over the embedded bus, data into the embedded store: one namespace per tenant"
    );

    for id in &ids {
        let config = &tenants.tenants[id.as_str()];
        let ctx = RequestContext::new(id.clone()).with_token(config.credentials.resolve());
        let order_version = config
            .services
            .get("order")
            .map_or("(not run)".to_owned(), |s| s.version.to_string());
        // the business line's account system signs its users' tokens (here: its development key)
        let users = config
            .users
            .as_ref()
            .with_context(|| format!("tenant {id} has no [users] table to sign user tokens"))?;
        chat(
            &platform,
            &channel,
            &ctx,
            users,
            &order_version,
            store.as_ref(),
        )
        .await?;
    }
    degrade(&channel, &tenants, &switches).await?;
    println!(
        "\nDone. Three business lines, one code base: only tenants/*.toml differed.\nNext: `cargo run -p mesh-node -- up` runs the same services supervised, one process per tenant group, and `meshctl` switches them at run time (README)."
    );
    Ok(())
}

fn describe(config: &TenantConfig) -> String {
    let services: Vec<String> = config
        .enabled_services()
        .map(|(name, s)| format!("{name} {}", s.version))
        .collect();
    let message = config.services.get("message");
    let setting = |key: &str| {
        message
            .and_then(|m| m.settings.get(key))
            .and_then(|v| v.to_i128())
            .map_or_else(|| "default".to_owned(), |v| v.to_string())
    };
    format!(
        "{}: runs {}; keeps messages {} days; namespace {:?}",
        config.display_name,
        services.join(", "),
        setting("retention_days"),
        config.data_namespace
    )
}

async fn connect(
    channel: &Channel,
    ctx: &RequestContext,
    users: &UserTokens,
    user: &str,
    terminal: &str,
    kind: TerminalKind,
) -> anyhow::Result<Terminal> {
    // a terminal holds its user's token, never the tenant credential
    let token = users
        .issue(user, Some(terminal), 3600)
        .map_err(|(field, message)| anyhow::anyhow!("[{}] {field} {message}", ctx.tenant))?;
    let ctx = &RequestContext::new(ctx.tenant.clone()).with_user_token(&token);
    Terminal::connect(ctx, channel.clone(), channel.clone(), user, terminal, kind)
        .await
        .with_context(|| format!("[{}] {user}/{terminal} connecting", ctx.tenant))
}

/// The next push to `terminal`, shown as one line.
async fn receive(terminal: &mut Terminal) -> anyhow::Result<String> {
    let push = tokio::time::timeout(WITHIN, terminal.next())
        .await
        .with_context(|| format!("{terminal:?}: nothing pushed within {WITHIN:?}"))??
        .with_context(|| format!("{terminal:?}: the gateway closed the stream"))?;
    Ok(show(&push))
}

fn show(push: &Push) -> String {
    match &push.payload {
        Some(Payload::Message(m)) if m.from_user == mesh_message::SYSTEM_SENDER => {
            format!("#{} system message: {:?}", m.seq, m.body)
        }
        Some(Payload::Message(m)) => format!("#{} from {}: {:?}", m.seq, m.from_user, m.body),
        Some(Payload::Receipt(r)) => format!("receipt: {} read up to #{}", r.reader, r.up_to_seq),
        // a Terminal keeps these to itself (it syncs, or attaches again)
        Some(Payload::Heartbeat(h)) => format!("heartbeat: timeline head {}", h.head),
        Some(Payload::Reconnect(r)) => format!("reconnect in {} ms", r.after_ms),
        Some(Payload::SignedOut(s)) => format!("signed out: {}", s.reason),
        None => "an empty push".into(),
    }
}

/// Waits until the gateway holds `n` terminal streams (it notices a closed one a moment
/// after the terminal went away).
async fn wait_connected(platform: &Platform, n: usize) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WITHIN;
    while platform.gateway().connected() != n {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the gateway still holds {} terminals",
                platform.gateway().connected()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// One tenant's story: terminals, chat, offline, an order event, a read receipt, storage.
async fn chat(
    platform: &Platform,
    channel: &Channel,
    ctx: &RequestContext,
    users: &UserTokens,
    order_version: &str,
    store: &dyn MessageStore,
) -> anyhow::Result<()> {
    let t = &ctx.tenant;
    let conversation = format!("{t}-support-1");
    println!("\n== [{t}] a customer asks support about an order ==");
    let mut tablet = connect(channel, ctx, users, "customer", "tablet", TerminalKind::Web).await?;
    drop(tablet);
    wait_connected(platform, 0).await?;
    let mut phone = connect(
        channel,
        ctx,
        users,
        "customer",
        "phone",
        TerminalKind::Phone,
    )
    .await?;
    let mut desktop = connect(
        channel,
        ctx,
        users,
        "customer",
        "desktop",
        TerminalKind::Desktop,
    )
    .await?;
    let mut agent = connect(channel, ctx, users, "agent", "web", TerminalKind::Web).await?;
    println!(
        "  terminals attached to the gateway (long-lived gRPC streams): customer/phone, customer/desktop, agent/web; customer/tablet was used once and is off"
    );

    let asked = phone
        .send(&conversation, "agent", "Hi, where is my parcel?", "q1")
        .await?;
    println!(
        "  customer/phone sends \"Hi, where is my parcel?\" -> delivered to agent/{}",
        asked.delivered_terminals.join(", agent/")
    );
    println!("    agent/web        got {}", receive(&mut agent).await?);
    let answered = agent
        .send(
            &conversation,
            "customer",
            "Let me check that for you.",
            "a1",
        )
        .await?;
    println!(
        "  agent/web sends \"Let me check that for you.\" -> delivered to {:?}, kept offline for {:?}",
        answered.delivered_terminals, answered.offline_terminals
    );
    println!("    customer/phone   got {}", receive(&mut phone).await?);
    println!("    customer/desktop got {}", receive(&mut desktop).await?);

    order_story(
        platform,
        channel,
        ctx,
        order_version,
        &conversation,
        [&mut phone, &mut desktop],
    )
    .await?;

    let read = phone.mark_read(&conversation, 3).await?.unwrap_or_default();
    println!(
        "  customer reads on the phone up to #{}: the receipt is synced to the customer's other terminal and to the agent",
        read.up_to_seq
    );
    println!("    customer/desktop got {}", receive(&mut desktop).await?);
    println!("    agent/web        got {}", receive(&mut agent).await?);

    tablet = connect(channel, ctx, users, "customer", "tablet", TerminalKind::Web).await?;
    // the timeline holds the messages and the phone's receipt: both synced, in order
    let mut synced = Vec::new();
    for _ in 0..tablet.missed() {
        synced.push(receive(&mut tablet).await?);
    }
    let receipts = synced.iter().filter(|s| s.starts_with("receipt")).count();
    println!(
        "  customer/tablet comes back: syncs {} missed messages and {receipts} read receipt(s) from its cursor, in order",
        synced.len() - receipts
    );
    for line in synced {
        println!("    customer/tablet  got {line}");
    }

    // every send above was stored before it was answered: nothing to wait for
    let stored = store.history(t, &conversation, 0, 100).await?;
    println!(
        "  stored before each send was answered, in {t}'s namespace: {} messages (#{})",
        stored.len(),
        stored
            .iter()
            .map(|m| m.seq.to_string())
            .collect::<Vec<_>>()
            .join(", #")
    );
    // the app closes: the gateway unregisters the terminals
    drop((phone, desktop, agent, tablet));
    wait_connected(platform, 0).await
}

/// An order placed and shipped: each event becomes a system message in the conversation,
/// received by the customer's `terminals`; the agent looks the order up.
async fn order_story(
    platform: &Platform,
    channel: &Channel,
    ctx: &RequestContext,
    order_version: &str,
    conversation: &str,
    [phone, desktop]: [&mut Terminal; 2],
) -> anyhow::Result<()> {
    let t = &ctx.tenant;
    let order_id = format!("{t}-o-77");
    let order = Order {
        order_id: order_id.clone(),
        user_id: "customer".into(),
        merchant_id: "shop-1".into(),
        status: OrderStatus::Paid as i32,
        total_minor: 12_900,
        currency: "CNY".into(),
        created_at_ms: 0,
        conversation_id: conversation.to_owned(),
    };
    platform.orders().place(ctx, order).await?;
    println!(
        "  checkout places order {order_id}: the order service publishes OrderCreated on order {order_version} (this tenant's major); the message service turns it into a system message"
    );
    println!("    customer/phone   got {}", receive(phone).await?);
    println!("    customer/desktop got {}", receive(desktop).await?);
    println!(
        "  agent/web looks the order up beside the conversation: {}",
        look_up(channel, ctx, order_version, &order_id).await
    );
    platform
        .orders()
        .set_status(ctx, &order_id, OrderStatus::Shipped as i32)
        .await?;
    println!("  the order ships: OrderUpdated -> another system message");
    println!("    customer/phone   got {}", receive(phone).await?);
    println!("    customer/desktop got {}", receive(desktop).await?);
    Ok(())
}

/// GetOrder on the major the tenant runs, as support staff's console calls it.
async fn look_up(channel: &Channel, ctx: &RequestContext, version: &str, order_id: &str) -> String {
    // (status, total in minor units, currency) from whichever major answers
    let answer = if version == "v2" {
        mesh_api::order::v2::OrderCaller::new(channel.clone())
            .get_order(
                ctx,
                mesh_api::order::v2::GetOrderRequest {
                    order_id: order_id.into(),
                },
            )
            .await
            .map(|a| {
                let o = a.order.unwrap_or_default();
                let total = o.total.clone().unwrap_or_default();
                (
                    format!("{:?}", o.status()),
                    total.minor_units,
                    total.currency,
                )
            })
    } else {
        mesh_api::order::v1::OrderCaller::new(channel.clone())
            .get_order(
                ctx,
                mesh_api::order::v1::GetOrderRequest {
                    order_id: order_id.into(),
                },
            )
            .await
            .map(|a| {
                let o = a.order.unwrap_or_default();
                (format!("{:?}", o.status()), o.total_cents, o.currency)
            })
    };
    match answer {
        Ok((status, minor, currency)) => format!(
            "GetOrder (order {version}) -> {status}, {currency} {}.{:02}",
            minor / 100,
            minor % 100
        ),
        Err(status) => format!("GetOrder (order {version}) refused: {}", status.message()),
    }
}

async fn suggestions(channel: &Channel, ctx: &RequestContext) -> String {
    // the plain tonic client, to show the `x-mesh-degraded` header a degraded answer carries
    let mut request = tonic::Request::new(recommend::SuggestRequest {
        user_id: "customer".into(),
        ..Default::default()
    });
    if let Err(err) = ctx.inject(request.metadata_mut()) {
        return format!("not sent: {err}");
    }
    let answer = recommend::recommend_client::RecommendClient::new(channel.clone())
        .suggest(request)
        .await;
    match answer {
        Ok(answer) => {
            let degraded = answer
                .metadata()
                .get(mesh_runtime::layers::DEGRADED_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(|switch| {
                    format!(
                        " (degraded answer, {}: {switch})",
                        mesh_runtime::layers::DEGRADED_HEADER
                    )
                })
                .unwrap_or_default();
            format!(
                "{} product suggestions{degraded}",
                answer.into_inner().products.len()
            )
        }
        Err(status) => format!("refused: {}", status.message()),
    }
}

/// Ops turn recommend (tier 2) off for one tenant; the others keep it.
async fn degrade(
    channel: &Channel,
    tenants: &Tenants,
    switches: &SwitchBoard,
) -> anyhow::Result<()> {
    let ctxs: Vec<RequestContext> = tenants
        .tenants
        .values()
        .map(|config| {
            RequestContext::new(config.tenant_id()).with_token(config.credentials.resolve())
        })
        .collect();
    let Some(victim) = ctxs.iter().find(|ctx| {
        tenants.tenants[ctx.tenant.as_str()]
            .enabled_services()
            .any(|(name, _)| name == "recommend")
    }) else {
        return Ok(());
    };
    println!("\n== Degradation: recommend (tier 2) is the first thing switched off ==");
    for ctx in &ctxs {
        println!(
            "  [{}] Suggest -> {}",
            ctx.tenant,
            suggestions(channel, ctx).await
        );
    }
    switches.turn_off(Switch {
        tenant: Some(victim.tenant.clone()),
        target: SwitchTarget::from_str("recommend").map_err(anyhow::Error::msg)?,
        reason: "demo: an incident at recommend".into(),
        changed_by: "ops".into(),
        changed_at: std::time::SystemTime::now(),
    });
    println!(
        "  ops: `meshctl switch off recommend --tenant {} --reason ...` (here: on the node's switch board directly)",
        victim.tenant
    );
    for ctx in &ctxs {
        println!(
            "  [{}] Suggest -> {}",
            ctx.tenant,
            suggestions(channel, ctx).await
        );
    }
    println!(
        "  {} gets the contract's degraded answer (empty) at once; the others are served as before",
        victim.tenant
    );
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

//! Figure 7: long connections. `mesh up` (embedded bus and store) with one business line;
//! 20,000 terminals attach through its front door over 40 client connections (500 streams
//! each), one message is sent to each of them and read, then they all leave and close their connections. Measured: attach
//! time, resident memory of the front door and of the worker per attached terminal, memory
//! after they left, and the time from a reconnect to the first message the terminal missed.

use std::time::{Duration, Instant};

use futures::StreamExt;
use mesh_api::{
    gateway::v1::{self as gateway, push::Payload},
    locator::v1::TerminalKind,
    message::v1 as message,
    order::v1 as order,
};
use mesh_contract::{RequestContext, TenantId};
use mesh_runtime::identity::UserTokens;
use tonic::transport::Channel;

use crate::{
    Row,
    memory::{mesh_up, rss_kib},
    micros, percentile,
};

/// Terminals attached at the peak.
const TERMINALS: usize = 20_000;
/// Client connections they share (500 streams each; the front door allows 1,000 per
/// connection by default).
const CONNECTIONS: usize = 40;
/// How long after the terminals left memory is measured again.
const SETTLE_SECS: u64 = 15;
/// Reconnects measured.
const RECONNECTS: usize = 200;
/// Terminals attaching all at once (not paced), as phones do when a node comes back.
const BURST: usize = 20_000;
/// The client connections the burst comes over (100 streams each).
const BURST_CONNECTIONS: usize = 200;
/// How long the burst may take: the issue's target.
const BURST_TARGET: Duration = Duration::from_secs(5);
/// Past this, the burst figure stops waiting (the terminals left are counted as not attached).
const BURST_GIVE_UP: Duration = Duration::from_secs(20);

/// A business line whose rate limit does not throttle a mass attach.
const BULK: &str = "id = \"bulk\"\ndisplay_name = \"Bulk\"\ndata_namespace = \"bulk\"\n\
    [credentials]\ntoken = \"bulk-secret-token\"\n\
    [users]\nissuer = \"bulk-accounts\"\naudience = \"mesh\"\nhs256_secret = \"bulk-development-secret-of-32-bytes\"\n\
    [limits]\nrequests_per_second = 1000000\nburst = 1000000\nmax_concurrent_per_dependency = 100000\n";

pub async fn run() -> anyhow::Result<Vec<Row>> {
    let dir = crate::tenants_folder(&[])?;
    std::fs::write(dir.path().join("bulk.toml"), BULK)?;
    let mut up = mesh_up(dir.path(), &dir.path().join(".state"), &[]).await?;
    let (front, front_pid, worker) = (up.front.clone(), up.pid, up.worker);
    // the backend sends; each terminal attaches with its user's own token
    let ctx = RequestContext::new(TenantId::new("bulk")?).with_token("bulk-secret-token");
    let users = UserTokens::development("bulk-accounts", "bulk-development-secret-of-32-bytes");
    let user_ctx = |user: &str| -> anyhow::Result<RequestContext> {
        let token = users
            .issue(user, None, 3600)
            .map_err(|(field, message)| anyhow::anyhow!("{field}: {message}"))?;
        Ok(RequestContext::new(TenantId::new("bulk")?).with_user_token(&token))
    };
    let mut channels = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("http://{front}"))?
                .connect()
                .await?,
        );
    }
    // warm-up: the route to the worker, its connections, one terminal in and out
    drop(attach(channels[0].clone(), &user_ctx("warm")?, "warm", "phone").await?);
    let rtt = round_trips(&channels[0], &ctx).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline = (rss_kib(front_pid)?, rss_kib(worker)?);

    let started = Instant::now();
    let mut terminals: Vec<_> = futures::stream::iter(0..TERMINALS)
        .map(|i| {
            let (channel, ctx) = (
                channels[i % CONNECTIONS].clone(),
                user_ctx(&format!("user{i}")),
            );
            async move {
                let stream = attach(channel, &ctx?, &format!("user{i}"), "phone").await?;
                anyhow::Ok((i, stream))
            }
        })
        .buffer_unordered(100)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let attach_time = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peak = (rss_kib(front_pid)?, rss_kib(worker)?);

    // every one of them gets a message, from the support agent (a user: sends are users')
    let agent = user_ctx("agent")?;
    let started = Instant::now();
    futures::stream::iter(0..TERMINALS)
        .map(|i| {
            let (channel, ctx) = (channels[i % CONNECTIONS].clone(), agent.clone());
            async move { send(channel, &ctx, &format!("user{i}"), "hello").await }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    for (i, stream) in &mut terminals {
        match mesh_gateway::heartbeat::next_content(stream).await? {
            Some(gateway::Push {
                payload: Some(Payload::Message(m)),
            }) if m.body == "hello" => {}
            other => anyhow::bail!("user{i}: expected its message, got {other:?}"),
        }
    }
    let deliver_time = started.elapsed();
    // they leave, and their apps close their connections
    terminals.clear();
    channels.clear();
    // let them unregister, then let the allocator hand memory back
    tokio::time::sleep(Duration::from_secs(SETTLE_SECS)).await;
    let after = (rss_kib(front_pid)?, rss_kib(worker)?);

    let fresh = tonic::transport::Endpoint::from_shared(format!("http://{front}"))?
        .connect()
        .await?;
    let reconnect = reconnects(&fresh, &agent, &user_ctx("roamer")?).await?;
    let burst = burst(&front, &user_ctx).await?;
    let _ = up.child.kill().await;

    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    let per = |peak: u64, base: u64| {
        format!(
            "{:.1} KiB per terminal",
            peak.saturating_sub(base) as f64 / TERMINALS as f64
        )
    };
    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    Ok(vec![
        Row::new(
            format!(
                "{TERMINALS} terminals attach through the front door ({CONNECTIONS} connections, 100 attaching at a time)"
            ),
            "-".into(),
            secs(attach_time),
            format!(
                "{:.0} attaches/s",
                TERMINALS as f64 / attach_time.as_secs_f64()
            ),
            ">= 20,000 attached",
        ),
        Row::new(
            format!(
                "{BURST} terminals attaching at once, not paced ({BURST_CONNECTIONS} connections; \
                 a refused or timed-out attach retried after 50-400 ms, as a client backs off)"
            ),
            "-".into(),
            format!(
                "{} attached within {} s; all {}",
                burst.within_target,
                BURST_TARGET.as_secs(),
                match burst.all {
                    Some(all) => format!("in {}", secs(all)),
                    None => format!("not within {} s", BURST_GIVE_UP.as_secs()),
                }
            ),
            format!("{} attach calls", burst.calls),
            "all within 5 s",
        ),
        Row::new(
            format!("one message sent to each of the {TERMINALS} and read"),
            "-".into(),
            secs(deliver_time),
            format!(
                "{:.0} deliveries/s",
                TERMINALS as f64 / deliver_time.as_secs_f64()
            ),
            "every one delivered",
        ),
        Row::new(
            format!(
                "RSS of the front door: baseline / {TERMINALS} attached / {SETTLE_SECS}s after they left"
            ),
            mib(baseline.0),
            format!("{} / {}", mib(peak.0), mib(after.0)),
            per(peak.0, baseline.0),
            "a few KiB each; back near baseline",
        ),
        Row::new(
            "RSS of the worker, same moments",
            mib(baseline.1),
            format!("{} / {}", mib(peak.1), mib(after.1)),
            per(peak.1, baseline.1),
            "a few KiB each; back near baseline",
        ),
        Row::new(
            format!(
                "reconnect to first missed message, p50 / p99 of {RECONNECTS} (baseline: one unary call, p50 / p99)"
            ),
            format!("{} / {}", micros(rtt.0), micros(rtt.1)),
            format!("{} / {}", micros(reconnect.0), micros(reconnect.1)),
            format!(
                "{:.1}x a round trip",
                reconnect.0.as_secs_f64() / rtt.0.as_secs_f64()
            ),
            "one round trip",
        ),
    ])
}

async fn attach(
    channel: Channel,
    ctx: &RequestContext,
    user: &str,
    terminal: &str,
) -> Result<tonic::Streaming<gateway::Push>, tonic::Status> {
    gateway::GatewayCaller::new(channel)
        .attach(
            ctx,
            gateway::AttachRequest {
                user_id: user.into(),
                terminal_id: terminal.into(),
                kind: TerminalKind::Phone as i32,
            },
        )
        .await
}

async fn send(
    channel: Channel,
    ctx: &RequestContext,
    user: &str,
    id: &str,
) -> Result<message::SendResponse, tonic::Status> {
    message::MessageCaller::new(channel)
        .send(
            ctx,
            message::SendRequest {
                conversation_id: format!("c-{user}"),
                from_user: "agent".into(),
                to_user: user.into(),
                body: id.into(),
                client_msg_id: format!("{user}-{id}"),
            },
        )
        .await
}

/// p50 / p99 of a unary call through the front door (ListOrders).
async fn round_trips(
    channel: &Channel,
    ctx: &RequestContext,
) -> anyhow::Result<(Duration, Duration)> {
    // a plain unary call through the front door (the locator serves the mesh only)
    let mut caller = order::OrderCaller::new(channel.clone());
    let mut times = Vec::with_capacity(RECONNECTS);
    for _ in 0..RECONNECTS {
        let started = Instant::now();
        caller
            .list_orders(
                ctx,
                order::ListOrdersRequest {
                    user_id: "warm".into(),
                    limit: 1,
                },
            )
            .await?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}

/// p50 / p99 from `Terminal::resume` being called to the missed messages in hand (attached,
/// first sync page read), for a terminal that missed 3 messages while its network switched.
async fn reconnects(
    channel: &Channel,
    ctx: &RequestContext,
    roamer: &RequestContext,
) -> anyhow::Result<(Duration, Duration)> {
    let resume = |cursor| {
        mesh_gateway::Terminal::resume(
            roamer,
            channel.clone(),
            channel.clone(),
            "roamer",
            "phone",
            TerminalKind::Phone,
            cursor,
        )
    };
    let mut terminal = resume(0).await?;
    let mut times = Vec::with_capacity(RECONNECTS);
    for round in 0..RECONNECTS {
        let cursor = terminal.cursor();
        drop(terminal); // the network switched
        for n in 0..3 {
            send(channel.clone(), ctx, "roamer", &format!("r{round}-{n}")).await?;
        }
        let started = Instant::now();
        terminal = resume(cursor).await?;
        // the first page came with the attach: the missed messages are in hand
        times.push(started.elapsed());
        anyhow::ensure!(
            terminal.missed() == 3,
            "round {round}: all 3 missed in hand"
        );
        let first = terminal.next().await?;
        anyhow::ensure!(
            matches!(&first, Some(gateway::Push { payload: Some(Payload::Message(m)) }) if m.body == format!("r{round}-0")),
            "round {round}: the first missed message first, got {first:?}"
        );
        for _ in 1..3 {
            terminal.next().await?;
        }
    }
    times.sort();
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}

/// What the burst of attaches came to.
struct Burst {
    /// Terminals attached within [`BURST_TARGET`].
    within_target: usize,
    /// When the last one attached, if all did within [`BURST_GIVE_UP`].
    all: Option<Duration>,
    /// Attach calls made, retries included.
    calls: usize,
}

/// [`BURST`] terminals, each its own user, attach at the same moment over
/// [`BURST_CONNECTIONS`] fresh connections; one refused (over a stream cap, the node busy) or
/// out of time tries again after a short random back-off, as a phone's client does.
async fn burst(
    front: &str,
    user_ctx: &dyn Fn(&str) -> anyhow::Result<RequestContext>,
) -> anyhow::Result<Burst> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut channels = Vec::with_capacity(BURST_CONNECTIONS);
    for _ in 0..BURST_CONNECTIONS {
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("http://{front}"))?
                .connect()
                .await?,
        );
    }
    let contexts = (0..BURST)
        .map(|i| user_ctx(&format!("burst{i}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let calls = AtomicUsize::new(0);
    let started = Instant::now();
    let attaches = contexts.iter().enumerate().map(|(i, ctx)| {
        let (channel, calls) = (channels[i % BURST_CONNECTIONS].clone(), &calls);
        async move {
            let user = format!("burst{i}");
            while started.elapsed() < BURST_GIVE_UP {
                calls.fetch_add(1, Ordering::Relaxed);
                match attach(channel.clone(), ctx, &user, "phone").await {
                    Ok(stream) => return Some((started.elapsed(), stream)),
                    Err(_refused_or_late) => {
                        let back_off = 50 + (i * 7919 + calls.load(Ordering::Relaxed)) % 350;
                        tokio::time::sleep(Duration::from_millis(back_off as u64)).await;
                    }
                }
            }
            None
        }
    });
    let attached = futures::future::join_all(attaches).await;
    let times: Vec<Duration> = attached.iter().flatten().map(|(at, _)| *at).collect();
    Ok(Burst {
        within_target: times.iter().filter(|at| **at <= BURST_TARGET).count(),
        all: (times.len() == BURST).then(|| times.iter().copied().max().unwrap_or_default()),
        calls: calls.load(Ordering::Relaxed),
    })
}

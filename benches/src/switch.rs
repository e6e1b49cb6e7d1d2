//! Figure 4: degradation switch propagation. A real `mesh up` serves the shipped tenants in two
//! worker processes (mall and paipai shared, finance alone); each round turns `tier>=1` off for
//! every tenant through the admin API and measures, from the moment the request is sent, how
//! long until every tenant's calls, in every process, answer degraded. There is no baseline:
//! the figure is absolute (target < 100 ms).

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context;
use mesh_api::{admin::v1 as admin, order::v1 as order, recommend::v1 as recommend};
use mesh_contract::{RequestContext, TenantId};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::mpsc,
};
use tonic::{Request, metadata::MetadataMap, transport::Channel};

use crate::{Row, percentile};

const TOKEN: &str = "bench-ops-credential-01";
/// A probe gives up after this long without seeing the change.
const GIVE_UP: Duration = Duration::from_secs(2);

/// One tenant's view of the switch: a call of a tier-1 or tier-2 method it runs.
#[derive(Clone)]
struct Probe {
    tenant: &'static str,
    ctx: RequestContext,
    channel: Channel,
}

impl Probe {
    fn new(tenant: &'static str, token: &str, channel: &Channel) -> anyhow::Result<Self> {
        Ok(Self {
            tenant,
            ctx: RequestContext::new(TenantId::new(tenant)?).with_token(token),
            channel: channel.clone(),
        })
    }

    /// Whether one call answers degraded. Finance runs no recommend: it is probed with order.
    async fn degraded(&self) -> bool {
        let headers = if self.tenant == "finance" {
            let mut request = Request::new(order::ListOrdersRequest {
                user_id: "u-1".into(),
                limit: 1,
            });
            self.call(&mut request);
            order::order_client::OrderClient::new(self.channel.clone())
                .list_orders(request)
                .await
                .map(|r| r.metadata().clone())
        } else {
            let mut request = Request::new(recommend::SuggestRequest::default());
            self.call(&mut request);
            recommend::recommend_client::RecommendClient::new(self.channel.clone())
                .suggest(request)
                .await
                .map(|r| r.metadata().clone())
        };
        headers.is_ok_and(|h: MetadataMap| h.get("x-mesh-degraded").is_some())
    }

    fn call<T>(&self, request: &mut Request<T>) {
        self.ctx
            .inject(request.metadata_mut())
            .expect("a valid context");
    }

    /// Time from `since` until a call answers `degraded` (polling under the tenant's rate
    /// limit); `None` if it never does within [`GIVE_UP`].
    async fn until(self, degraded: bool, since: Instant) -> Option<Duration> {
        while since.elapsed() < GIVE_UP {
            if self.degraded().await == degraded {
                return Some(since.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        None
    }
}

/// Figure 4 over `rounds` off/on rounds.
pub async fn run(rounds: usize) -> anyhow::Result<Vec<Row>> {
    let tenants = crate::tenants_dir();
    let state = tempfile::tempdir()?;
    let mut up = tokio::process::Command::new(crate::memory::mesh_binary()?)
        .args(["up", "--listen", "127.0.0.1:0", "--tenants"])
        .arg(&tenants)
        .arg("--config")
        .arg(state.path().join("none.toml"))
        .env("MESH_ADMIN_LISTEN", "127.0.0.1:0")
        .env("MESH_WEB_LISTEN", "127.0.0.1:0")
        .env("MESH_ADMIN_TOKEN", TOKEN)
        .env("MESH_STATE_DIR", state.path())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let (tx, mut lines) = mpsc::unbounded_channel();
    let mut out = BufReader::new(up.stdout.take().expect("piped")).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = out.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut front, mut admin_at, mut serving) = (None, None, 0);
    while front.is_none() || admin_at.is_none() || serving < 2 {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.recv())
            .await
            .context("mesh up did not start within 60 s")?
            .context("mesh up ended")?;
        if let Some(a) = line.strip_prefix("front door listening on ") {
            front = Some(a.to_owned());
        } else if let Some(a) = line.strip_prefix("admin listening on ") {
            admin_at = Some(a.to_owned());
        } else if line.starts_with("serving group=") {
            serving += 1;
        }
    }
    let channel = Channel::from_shared(format!("http://{}", front.expect("read")))?.connect_lazy();
    let admin_channel =
        Channel::from_shared(format!("http://{}", admin_at.expect("read")))?.connect_lazy();
    let bearer: tonic::metadata::AsciiMetadataValue = format!("Bearer {TOKEN}").parse()?;
    let mut ops = admin::admin_client::AdminClient::with_interceptor(
        admin_channel,
        move |mut r: Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        },
    );
    let probes = [
        Probe::new("mall", "dev-mall-token", &channel)?,
        Probe::new("paipai", "dev-paipai-token", &channel)?,
        Probe::new("finance", "dev-finance-token", &channel)?,
    ];
    let switch = |on: bool| admin::SetSwitchRequest {
        target: Some(admin::SwitchTarget {
            tier: Some(1),
            ..Default::default()
        }),
        tenant: String::new(),
        on,
        reason: "mesh-bench".into(),
    };

    let (mut everywhere, mut acknowledged) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for on in [false, true] {
            let sent = Instant::now();
            let watching: Vec<_> = probes
                .iter()
                .map(|p| tokio::spawn(p.clone().until(!on, sent)))
                .collect();
            ops.set_switch(switch(on)).await?;
            let ack = sent.elapsed();
            let mut slowest = Duration::ZERO;
            for (probe, watch) in probes.iter().zip(watching) {
                let seen = watch.await?.with_context(|| {
                    format!(
                        "{} never saw the switch turn {}",
                        probe.tenant,
                        if on { "on" } else { "off" }
                    )
                })?;
                slowest = slowest.max(seen);
            }
            if !on {
                everywhere.push(slowest);
                acknowledged.push(ack);
            }
        }
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &up.id().unwrap_or_default().to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(20), up.wait()).await;

    everywhere.sort_unstable();
    acknowledged.sort_unstable();
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    Ok(vec![
        Row::new(
            format!(
                "degradation switch propagation: `tier>=1` off for all, request sent -> every tenant in both processes answers degraded (p50 / max of {rounds})"
            ),
            "-".into(),
            format!(
                "{} / {}",
                ms(percentile(&everywhere, 0.5)),
                ms(*everywhere.last().expect("rounds > 0"))
            ),
            "-".into(),
            "< 100 ms",
        ),
        Row::new(
            "switch off acknowledged by the admin API (all processes applied), p50",
            "-".into(),
            ms(percentile(&acknowledged, 0.5)),
            "-".into(),
            "-",
        ),
    ])
}

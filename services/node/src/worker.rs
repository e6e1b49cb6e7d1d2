//! One tenant process: the services, behind the runtime's full inbound stack, for the tenants
//! it is given. Under a supervisor (`--supervised`) it takes its state (switches, tenants) from
//! stdin before it serves and after every change, and confirms each (see
//! `mesh_runtime::control::protocol`).

use std::{collections::BTreeSet, io::Write, path::Path, time::Duration};

use anyhow::{Context, bail};
use mesh_api::{order, recommend};
use mesh_contract::TenantId;
use mesh_order::{OrderService, OrderStore};
use mesh_recommend::RecommendService;
use mesh_runtime::{
    TenantAuthLayer, TenantConfig, TenantDirectory, Tenants,
    control::protocol::{APPLIED_PREFIX, BulkheadUse, STATS_PREFIX, WorkerState, WorkerStats},
    layers::{
        AdmitLayer, AnswerCache, Bulkheads, CachedAnswersLayer, Catalogue, DeadlineLayer,
        RateLimiter, ServicePlan, SwitchBoard, TenantExecutorLayer, TenantRuntimes,
    },
};
use tokio::io::{AsyncBufReadExt, BufReader};

const CATALOGUE: Catalogue = Catalogue(mesh_api::CONTRACTS);
/// How long a supervised worker waits for its first state.
const FIRST_STATE_WITHIN: Duration = Duration::from_secs(30);
/// How often a supervised worker reports its statistics.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// Everything that knows which tenants this process serves; grows when one is onboarded.
#[derive(Clone)]
struct Served {
    ids: std::sync::Arc<std::sync::Mutex<BTreeSet<TenantId>>>,
    configs: std::sync::Arc<std::sync::Mutex<Vec<TenantConfig>>>,
    directory: TenantDirectory,
    limiter: RateLimiter,
    plan: ServicePlan,
    runtimes: TenantRuntimes,
    recommend: RecommendService,
    bulkheads: Bulkheads,
}

impl Served {
    fn new() -> Self {
        let empty = Tenants::default();
        Self {
            ids: Default::default(),
            configs: Default::default(),
            directory: TenantDirectory::default(),
            limiter: RateLimiter::from_tenants(&empty),
            plan: ServicePlan::from_tenants(&empty, CATALOGUE),
            runtimes: TenantRuntimes::default(),
            recommend: RecommendService::new(
                Default::default(),
                RecommendService::sample_catalogue(),
            ),
            bulkheads: Bulkheads::from_tenants(&empty),
        }
    }

    fn add(&self, config: &TenantConfig) -> anyhow::Result<()> {
        let tenant = config.tenant_id();
        self.runtimes
            .add(config)
            .with_context(|| format!("starting the runtime of tenant {tenant}"))?;
        self.limiter.set(
            tenant.clone(),
            config.limits.requests_per_second,
            config.limits.burst,
        );
        self.plan.add(config);
        self.bulkheads
            .set_limit(tenant.clone(), config.limits.max_concurrent_per_dependency);
        let max = config
            .services
            .get("recommend")
            .and_then(|s| s.settings.get("max_suggestions"))
            .and_then(|v| v.to_i128())
            .and_then(|v| u32::try_from(v).ok());
        if let Some(max) = max {
            self.recommend.set_max_suggestions(tenant.clone(), max);
        }
        // authentication last: the tenant's calls are admitted once everything else knows it
        self.directory.add(config);
        self.configs.lock().expect("lock").push(config.clone());
        self.ids.lock().expect("lock").insert(tenant);
        Ok(())
    }

    fn serves(&self, tenant: &TenantId) -> bool {
        self.ids.lock().expect("lock").contains(tenant)
    }

    fn stats(&self) -> WorkerStats {
        let configs = self.configs.lock().expect("lock");
        let bulkheads = configs
            .iter()
            .flat_map(|config| {
                // one bulkhead per tenant and dependency, however many services call it
                let dependencies: BTreeSet<&String> = config
                    .enabled_services()
                    .flat_map(|(_, service)| service.depends_on.iter())
                    .collect();
                dependencies.into_iter().map(move |dependency| {
                    let (in_use, capacity) = self.bulkheads.in_use(&config.tenant_id(), dependency);
                    BulkheadUse {
                        tenant: config.tenant_id(),
                        dependency: dependency.clone(),
                        in_use,
                        capacity,
                    }
                })
            })
            .collect();
        WorkerStats {
            bulkheads,
            calls: mesh_telemetry::metrics::tally(),
        }
    }
}

/// Applies a state from the supervisor: its switches, and any tenant not served yet (read
/// from the tenants folder, where the supervisor wrote it).
fn apply(
    state: &WorkerState,
    dir: &Path,
    served: &Served,
    switches: &SwitchBoard,
) -> anyhow::Result<()> {
    let new: Vec<&TenantId> = state.tenants.iter().filter(|t| !served.serves(t)).collect();
    if !new.is_empty() {
        let tenants = Tenants::load(dir, mesh_api::CONTRACTS)?;
        for tenant in new {
            let Some(config) = tenants.get(tenant.as_str()) else {
                bail!("tenant {tenant} is not configured in {}", dir.display());
            };
            served.add(config)?;
        }
    }
    switches.replace_all(state.switches.clone());
    Ok(())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub async fn run(dir: &Path, ids: &[String], listen: &str, supervised: bool) -> anyhow::Result<()> {
    let all = Tenants::load(dir, mesh_api::CONTRACTS)?;
    let served = Served::new();
    let mut mine = Tenants::default();
    for id in ids {
        let Some(config) = all.get(id) else {
            bail!("tenant {id:?} is not configured in {}", dir.display());
        };
        served.add(config)?;
        mine.tenants.insert(id.clone(), config.clone());
    }
    let switches = SwitchBoard::from_tenants(&mine, CATALOGUE);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    if supervised {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let first = tokio::time::timeout(FIRST_STATE_WITHIN, lines.next_line())
            .await
            .context("no state from the supervisor on stdin")?
            .context("reading stdin")?
            .context("stdin closed before the supervisor sent a state")?;
        let state = WorkerState::from_line(&first).context("the supervisor's first state")?;
        apply(&state, dir, &served, &switches)?;
        say(&format!("{APPLIED_PREFIX}{}", state.version));
        let (state_dir, state_served, state_switches) =
            (dir.to_path_buf(), served.clone(), switches.clone());
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                match WorkerState::from_line(&line)
                    .map_err(anyhow::Error::from)
                    .and_then(|state| {
                        apply(&state, &state_dir, &state_served, &state_switches).map(|()| state)
                    }) {
                    Ok(state) => say(&format!("{APPLIED_PREFIX}{}", state.version)),
                    Err(err) => {
                        tracing::error!(error = %err, "state from the supervisor not applied")
                    }
                }
            }
            // stdin closed: the supervisor asks us to stop (or is gone)
            let _ = stop.send(());
        });
        let reporting = served.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(STATS_EVERY);
            loop {
                tick.tick().await;
                let stats = serde_json::to_string(&reporting.stats()).expect("stats serialize");
                say(&format!("{STATS_PREFIX}{stats}"));
            }
        });
    } else {
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            let _ = stop.send(());
        });
    }

    let orders = OrderService::new(OrderStore::default());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    say(&format!("READY {}", listener.local_addr()?));

    // bulkhead use, exported with the other metrics while this process serves
    let _bulkheads = mesh_telemetry::metrics::observe_bulkheads({
        let served = served.clone();
        move || {
            served
                .stats()
                .bulkheads
                .into_iter()
                .map(|b| (b.tenant.to_string(), b.dependency, u64::from(b.in_use)))
                .collect()
        }
    });
    tonic::transport::Server::builder()
        // outermost: one span per call, whatever answers it (auth, limits, switches, service),
        // child of the caller's span
        .layer(mesh_telemetry::TraceLayer::server(mesh_api::CONTRACTS))
        .layer(TenantAuthLayer::new(served.directory.clone()))
        .layer(AdmitLayer::new(served.limiter.clone()))
        .layer(CachedAnswersLayer::new(
            AnswerCache::new(10_000),
            switches.clone(),
            CATALOGUE,
        ))
        .layer(AdmitLayer::new(switches))
        .layer(AdmitLayer::new(served.plan.clone()))
        .layer(TenantExecutorLayer::new(served.runtimes.clone()))
        .layer(DeadlineLayer::new(CATALOGUE))
        .add_service(order::v1::order_server::OrderServer::new(orders.clone()))
        .add_service(order::v2::order_server::OrderServer::new(orders))
        .add_service(recommend::v1::recommend_server::RecommendServer::new(
            served.recommend.clone(),
        ))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = stopped.await;
            },
        )
        .await?;
    Ok(())
}

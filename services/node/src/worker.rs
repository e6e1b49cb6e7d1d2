// Long on purpose: one tenant process from start to drain in the order it runs (environment,
// telemetry, bus, store, platform, supervisor line, web, metrics, serve, drain), each step a
// function.
//! One tenant process: the services, behind the runtime's full inbound stack, for the tenants
//! it is given. Under a supervisor (`--supervised`) it takes its state (switches, tenants and
//! their files) from stdin before it serves and after every change, and confirms each, naming
//! the tenants it could not serve (see `mesh_runtime::supervisor::protocol`): one tenant's
//! file or schema never takes the process, and so its neighbours, down.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::Path,
    time::Duration,
};

use anyhow::{Context, bail};
use mesh_config::worker::WorkerEnv;
use mesh_contract::{EventBus, TenantId};
use mesh_platform::Platform;
use mesh_runtime::{
    Inbound, TenantConfig, Tenants,
    layers::{Bulkheads, Catalogue, SwitchBoard},
    probes::{Probes, ProbesLayer},
    supervisor::protocol::{BulkheadUse, TenantSource, WorkerLine, WorkerState, WorkerStats},
};
use mesh_store::MessageStore;
use tokio::io::{AsyncBufReadExt, BufReader};

const CATALOGUE: Catalogue = Catalogue(mesh_api::CONTRACTS);
/// How long a supervised worker waits for its first state.
const FIRST_STATE_WITHIN: Duration = Duration::from_secs(30);
/// How often a worker deletes stored messages past their tenant's retention.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// How often a supervised worker reports its statistics.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// How long a node that stopped saying it is alive keeps its terminals in a shared locator.
const NODE_TTL: Duration = Duration::from_secs(3);
/// How long a tenant leaving this process may take to finish the calls it has here.
const DRAIN_WITHIN: Duration = Duration::from_secs(30);
/// How soon a tenant this process could not serve is tried again (a dependency down, say),
/// doubling up to [`RETRY_DOWN_AT_MOST`].
const RETRY_DOWN_FIRST: Duration = Duration::from_secs(1);
const RETRY_DOWN_AT_MOST: Duration = Duration::from_secs(30);

/// Everything that knows which tenants this process serves; changes as tenants are added,
/// updated, moved and removed.
#[derive(Clone)]
struct Served {
    /// Each tenant served, with the text of the file it is served from.
    tenants: std::sync::Arc<std::sync::Mutex<BTreeMap<TenantId, (String, TenantConfig)>>>,
    /// The runtime's inbound stack and what it knows of each tenant.
    inbound: Inbound,
    platform: std::sync::Arc<Platform>,
    bulkheads: Bulkheads,
    /// Each tenant's broker placement (vhost, user), on RabbitMQ.
    placed: Option<mesh_amqp::PlacedBuses>,
}

impl Served {
    fn new(platform: Platform, placed: Option<mesh_amqp::PlacedBuses>) -> Self {
        Self {
            tenants: Default::default(),
            // the switches the platform's consumers consult are the ones calls are answered
            // from, and the node credential its services present to each other is accepted
            inbound: Inbound::new(CATALOGUE, platform.switches().clone())
                .with_node_credential(platform.node_credential()),
            // the bulkheads the platform's outbound calls really go through
            bulkheads: platform.bulkheads().clone(),
            platform: std::sync::Arc::new(platform),
            placed,
        }
    }

    /// Serves a tenant, or applies its changed file (limits, settings, credential, user
    /// keys): the calls admitted meanwhile run on, on the old or the new settings.
    async fn add(&self, config: &TenantConfig, text: &str) -> anyhow::Result<()> {
        let tenant = config.tenant_id();
        self.inbound
            .add_tenant(config)
            .with_context(|| format!("starting the runtime of tenant {tenant}"))?;
        // its vhost and broker user first: its consumers subscribe there
        if let Some(placed) = &self.placed {
            let placement = mesh_amqp::Placement {
                vhost: config.broker.vhost.clone(),
                credentials: config.broker.credentials(),
            };
            placed
                .place(tenant.clone(), &placement)
                .await
                .with_context(|| format!("placing tenant {tenant} on the broker"))?;
        }
        // the services: data namespace, settings, event consumers
        self.platform.add_tenant(config).await?;
        // authentication last: the tenant's calls are admitted once everything else knows it
        self.inbound.admit_tenant(config);
        self.tenants
            .lock()
            .expect("lock")
            .insert(tenant, (text.to_owned(), config.clone()));
        Ok(())
    }

    /// Stops serving a tenant: waits (up to [`DRAIN_WITHIN`]) for the calls it has here,
    /// stops admitting its calls, then stops its consumers and lets its terminals go (their
    /// next attach reaches wherever it is served now); deletes its data with `purge_data`.
    async fn remove(&self, tenant: &TenantId, purge_data: bool) -> anyhow::Result<()> {
        let drained = |within| async move {
            let deadline = tokio::time::Instant::now() + within;
            while self.inbound.in_flight(tenant) > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        // its calls were routed elsewhere (or refused) before this state came: those already
        // here finish, and so do the few still on their way
        drained(DRAIN_WITHIN).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        drained(DRAIN_WITHIN).await;
        self.inbound.remove_tenant(tenant);
        self.tenants.lock().expect("lock").remove(tenant);
        self.platform
            .remove_tenant(tenant, purge_data)
            .await
            .with_context(|| format!("removing tenant {tenant}"))?;
        Ok(())
    }

    /// The text each tenant is served from.
    fn texts(&self) -> BTreeMap<TenantId, String> {
        self.tenants
            .lock()
            .expect("lock")
            .iter()
            .map(|(id, (text, _))| (id.clone(), text.clone()))
            .collect()
    }

    fn stats(&self) -> WorkerStats {
        let tenants = self.tenants.lock().expect("lock");
        let bulkheads = tenants
            .values()
            .map(|(_, config)| config)
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

/// Applies a state from the supervisor: its switches; each tenant file new or changed,
/// validated as start-up validates it and served; each tenant no longer listed drained and
/// removed. Returns the tenants of the state it does not serve, with the reason.
async fn apply(
    state: &WorkerState,
    dir: &Path,
    served: &Served,
    switches: &SwitchBoard,
) -> BTreeMap<TenantId, String> {
    // switches first: a tenant draining below must not hold back an operator's switch
    switches.replace_all(state.switches.clone());
    let mut down = BTreeMap::new();
    let texts = served.texts();
    for source in &state.tenants {
        if texts.get(&source.id) == Some(&source.text) {
            continue;
        }
        if let Err(reason) = serve_source(source, dir, served).await {
            tracing::error!(tenant = %source.id, error = %reason, "tenant not served");
            down.insert(source.id.clone(), reason);
        }
    }
    let listed: BTreeSet<&TenantId> = state.tenants.iter().map(|t| &t.id).collect();
    for gone in texts.keys().filter(|t| !listed.contains(t)) {
        let purge = state.purge.contains(gone);
        match served.remove(gone, purge).await {
            Ok(()) => {
                tracing::info!(tenant = %gone, purged = purge, "tenant no longer served here")
            }
            Err(err) => {
                tracing::error!(tenant = %gone, error = %format!("{err:#}"), "removing a tenant")
            }
        }
    }
    down
}

/// Tries again to serve the tenants of `state` that are `down`; those still down.
async fn retry_down(
    state: &WorkerState,
    mut down: BTreeMap<TenantId, String>,
    dir: &Path,
    served: &Served,
) -> BTreeMap<TenantId, String> {
    let again: Vec<&TenantSource> = state
        .tenants
        .iter()
        .filter(|t| down.contains_key(&t.id))
        .collect();
    for source in again {
        match serve_source(source, dir, served).await {
            Ok(()) => {
                tracing::info!(tenant = %source.id, "tenant served after all");
                down.remove(&source.id);
            }
            Err(reason) => {
                down.insert(source.id.clone(), reason);
            }
        }
    }
    down
}

/// Validates one tenant file and serves it; the reason, if it cannot be.
async fn serve_source(source: &TenantSource, dir: &Path, served: &Served) -> Result<(), String> {
    let config =
        mesh_runtime::config::load_text(dir, &source.file, &source.text, mesh_api::CONTRACTS)
            .map_err(|err| err.to_string())?;
    if config.id != source.id {
        return Err(format!(
            "{}: id: the file serves {:?}, not {}",
            source.file,
            config.id.as_str(),
            source.id
        ));
    }
    served.add(&config, &source.text).await.map_err(|err| {
        // each cause once, without the tenant the supervisor names anyway
        let mut said = String::new();
        for cause in err.chain().map(ToString::to_string) {
            if !said.contains(&cause) {
                if !said.is_empty() {
                    said.push_str(": ");
                }
                said.push_str(&cause);
            }
        }
        said.strip_prefix(&format!("tenant {}: ", source.id))
            .map(str::to_owned)
            .unwrap_or(said)
    })?;
    if let Some(previous) = &source.previous_credential {
        served
            .inbound
            .accept_previous(&source.id, &previous.sha256, previous.remaining());
    }
    Ok(())
}

/// Tells the supervisor (one line on stdout, in the protocol's own words).
fn say(line: WorkerLine) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The event bus of a worker: RabbitMQ when `MESH_AMQP_URI` is set, else the embedded bus
/// (events stay within the process, which serves every service of its tenants). Dead-letter
/// queues are bounded by `MESH_DLQ_MAX_LENGTH` and `MESH_DLQ_TTL_SECS`; a broker cluster's
/// other nodes are `MESH_AMQP_NODES` (`host:port,...`), and `MESH_AMQP_QUEUE_TYPE=quorum`
/// replicates the queues over them.
async fn bus(
    env: &WorkerEnv,
) -> anyhow::Result<(std::sync::Arc<dyn EventBus>, Option<mesh_amqp::PlacedBuses>)> {
    Ok(match &env.amqp_uri {
        Some(uri) => {
            let defaults = mesh_amqp::AmqpConfig::default();
            let queue_type = match &env.amqp_queue_type {
                Some(kind) => kind
                    .parse()
                    .map_err(|e| anyhow::anyhow!("MESH_AMQP_QUEUE_TYPE: {e}"))?,
                None => defaults.queue_type,
            };
            let shared = mesh_amqp::AmqpBus::connect(mesh_amqp::AmqpConfig {
                uri: uri.clone(),
                queue_type,
                other_nodes: env.amqp_nodes(),
                dead_letter_max_length: env
                    .dlq_max_length
                    .unwrap_or(defaults.dead_letter_max_length),
                dead_letter_ttl: env
                    .dlq_ttl_secs
                    .map_or(defaults.dead_letter_ttl, std::time::Duration::from_secs),
                ..defaults
            })
            .await
            .context("MESH_AMQP_URI")?;
            // each tenant on its own vhost and broker user when its file says so
            let placed = mesh_amqp::PlacedBuses::new(shared);
            (std::sync::Arc::new(placed.clone()), Some(placed))
        }
        None => (
            std::sync::Arc::new(mesh_embedded::EmbeddedBus::default()),
            None,
        ),
    })
}

/// The message store of a worker: PostgreSQL (a schema per tenant) when
/// `MESH_STORE_POSTGRES` is set, else the embedded store.
async fn store(env: &WorkerEnv) -> anyhow::Result<std::sync::Arc<dyn MessageStore>> {
    Ok(match &env.store_postgres {
        Some(url) => std::sync::Arc::new(
            mesh_store::PgStore::connect(url)
                .await
                .context("MESH_STORE_POSTGRES")?,
        ),
        None => std::sync::Arc::new(mesh_store::MemoryStore::default()),
    })
}

pub async fn run(dir: &Path, ids: &[String], listen: &str, supervised: bool) -> anyhow::Result<()> {
    // bound first: the gateway registers terminals under this process's address
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    // every setting this process is given, read (and checked) once
    let env = WorkerEnv::from_env()?;
    let address = advertised(&env, listener.local_addr()?);
    // mutual TLS with the front door and the other workers, when `mesh up` says so
    let node_tls =
        mesh_runtime::tls::NodeTls::from_worker_env(&env).context("the node's TLS files")?;
    let served = platform(&env, address, node_tls.as_ref()).await?;
    // one board for the inbound layers and the platform's consumers (push asks it too)
    let switches = served.platform.switches().clone();

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // a worker alone (a pod) reports its tenants and switches itself; under `mesh up` the
    // node does, from its control plane
    let mut _control_metrics = Vec::new();
    if supervised {
        // the supervisor hands over the tenants' files themselves, not the folder
        follow_supervisor(dir, &served, &switches, stop).await?;
    } else {
        // every file checked, but only this process's tenants' secrets: a pod of one group is
        // given that group's secrets alone
        let all = Tenants::load_serving(dir, mesh_api::CONTRACTS, ids)?;
        let mut mine = Tenants::default();
        let mut states = Vec::new();
        for id in ids {
            let (Some(config), Some(file)) = (all.get(id), all.files.get(id)) else {
                bail!("tenant {id:?} is not configured in {}", dir.display());
            };
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            // a tenant that cannot be served (its schema cannot be created, say) is left
            // out, with the reason; the others of this process keep being served
            if let Err(err) = served.add(config, &text).await {
                tracing::error!(tenant = %id, error = %format!("{err:#}"), "tenant not served");
                states.push((id.clone(), "down".to_owned()));
                continue;
            }
            states.push((id.clone(), "serving".to_owned()));
            mine.tenants.insert(id.clone(), config.clone());
        }
        served.platform.apply_initial_switches(&mine);
        // one of several replicas (Kubernetes, behind a proxy): the switches every node shares
        follow_shared_switches(&env, &switches).await?;
        _control_metrics = mesh_telemetry::metrics::observe_control({
            let board = switches.clone();
            move || control_state(&board, &states)
        });
        // a pod is stopped with SIGTERM, a terminal with ctrl-c: both drain and stop
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            let _ = stop.send(());
        });
    }
    purge_expired_hourly(served.platform.clone());
    serve_metrics(supervised).await?;
    if !supervised {
        // under `mesh up` the node serves browsers, in front of every worker
        serve_web(&env, &served).await?;
    }
    say(WorkerLine::Ready(address.to_string()));
    serve(&env, listener, &served, node_tls.as_ref(), async {
        let _ = stopped.await;
    })
    .await
}

/// Environment variable naming where a worker serves the browsers' access itself: a pod's
/// (`0.0.0.0:7480`, `mesh deploy k8s` sets it), where no `mesh up` node serves it in front.
pub const WEB_LISTEN_ENV: &str = "MESH_WORKER_WEB_LISTEN";

/// The browsers' access of a worker serving without a node in front (a pod), when
/// `MESH_WORKER_WEB_LISTEN` names an address: every call of its tenants as HTTP/JSON, server-
/// sent events and gRPC-Web, through this process's own inbound stack; the pages and the
/// platforms' callbacks (`/channels/<tenant>/<channel>`) too. (There
/// is no admin API here: the console needs a `mesh up` node. Plain HTTP: TLS ends at the proxy
/// in front, as for the pod's gRPC port.)
async fn serve_web(env: &WorkerEnv, served: &Served) -> anyhow::Result<()> {
    let Some(listen) = &env.worker_web_listen else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("{WEB_LISTEN_ENV}={listen}"))?;
    tracing::info!(address = %listener.local_addr()?, "web access");
    let routes = mesh_web::Routes::new(mesh_api::CONTRACTS, mesh_api::FILE_DESCRIPTOR_SET)?;
    let max_body = env.web_max_body_bytes.unwrap_or(1 << 20);
    // platforms' callbacks too (a pod's web port is where they arrive): passed to this
    // process's own channel service as the node
    // apps on other origins, as the files of the tenants this pod serves allow them
    let origins = mesh_config::web::AllowedOrigins::default();
    for (id, (_, config)) in served.tenants.lock().expect("lock").iter() {
        origins.set(id.as_str(), &config.web.allowed_origins);
    }
    let access =
        mesh_web::WebAccess::new(routes, served.inbound.in_process(served.platform.routes()))
            .with_max_body(max_body)
            .with_channels(served.platform.node_credential())
            .with_cors(origins);
    tokio::spawn(mesh_runtime::connections::serve_connections(
        listener,
        access,
        mesh_runtime::connections::ConnectionLimits {
            http1: true,
            ..Default::default()
        },
        None,
        std::future::pending(),
    ));
    Ok(())
}

/// The switches a lone worker follows and the states of its tenants, as its gauges say them.
fn control_state(
    board: &SwitchBoard,
    tenants: &[(String, String)],
) -> mesh_telemetry::metrics::ControlState {
    mesh_telemetry::metrics::ControlState {
        switches: board
            .list()
            .iter()
            .map(mesh_telemetry::metrics::SwitchOff::from)
            .collect(),
        tenants: tenants.to_vec(),
    }
}

/// This process's Prometheus scrape endpoint, when `MESH_TELEMETRY_PROMETHEUS_LISTEN` names
/// one: a pod's own (`0.0.0.0:9464`), or a port on loopback that the supervisor is told of
/// and the node's endpoint reads.
async fn serve_metrics(supervised: bool) -> anyhow::Result<()> {
    let Some(listen) = mesh_telemetry::TelemetryConfig::from_env()?.prometheus_listen else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("MESH_TELEMETRY_PROMETHEUS_LISTEN={listen}"))?;
    let address = listener.local_addr()?;
    tokio::spawn(crate::scrape::serve(
        listener,
        crate::scrape::own(),
        std::future::pending(),
    ));
    if supervised {
        say(WorkerLine::Metrics(address.to_string()));
    } else {
        tracing::info!(%address, "metrics at /metrics");
    }
    Ok(())
}

/// The address the other nodes dial to reach this worker: `MESH_WORKER_ADVERTISE_ADDRESS`
/// when set (a pod listening on 0.0.0.0 gives its pod IP and port), else
/// `MESH_WORKER_ADVERTISE_HOST` on the port it listens on (`mesh up`'s `[workers]
/// advertise_host`), else the address it listens on.
fn advertised(env: &WorkerEnv, listening: std::net::SocketAddr) -> std::net::SocketAddr {
    match (env.worker_advertise_address, env.worker_advertise_host) {
        (Some(address), _) => address,
        (None, Some(ip)) => std::net::SocketAddr::new(ip, listening.port()),
        (None, None) => listening,
    }
}

/// The platform of this process (its bus, store, address and node credential), with nothing
/// served yet.
async fn platform(
    env: &WorkerEnv,
    address: std::net::SocketAddr,
    node_tls: Option<&mesh_runtime::tls::NodeTls>,
) -> anyhow::Result<Served> {
    let (bus, placed) = bus(env).await?;
    // unique across the machines of a mesh, not only on this one
    let node_id = format!(
        "worker-{}-{}",
        std::process::id(),
        &mesh_contract::ServiceCredentials::fresh_token()[..8]
    );
    let platform = Platform::with_node_tls(&node_id, address, bus, store(env).await?, node_tls);
    // the workers of one mesh share the node credential `mesh up` gives them
    let platform = match &env.node_credential {
        Some(token) => platform.with_node_credential(token),
        None => platform,
    };
    // several nodes: who is connected where lives in Redis, with this node's heartbeat
    let platform = match &env.state_redis_url {
        Some(url) => {
            let presence = mesh_locator::RedisPresence::connect(url, env.redis_prefix())
                .await
                .with_context(|| format!("{}={url}", mesh_runtime::deploy::worker_env::REDIS_URL))?
                // the registration of this node's address is signed with the credential the
                // nodes share: a write into Redis alone cannot send pushes elsewhere
                .with_node_credential(platform.node_credential());
            // dropped with the process: its terminals are forgotten NODE_TTL after it dies
            std::mem::forget(presence.keep_alive(
                &node_id,
                &mesh_runtime::tls::NodeTls::url(node_tls, &address.to_string()),
                NODE_TTL,
            ));
            // registered again after being taken for dead: pushes were skipped meanwhile,
            // every terminal hears its head now and syncs what it lacks
            let reregistered = presence.reregistered();
            let gateway = platform.gateway().clone();
            tokio::spawn(async move {
                loop {
                    reregistered.notified().await;
                    gateway.beat_now();
                }
            });
            platform.with_locator(mesh_locator::LocatorService::new(std::sync::Arc::new(
                presence,
            )))
        }
        None => platform,
    };
    if let Some(ms @ 1..) = env.terminal_heartbeat_ms {
        platform.set_terminal_heartbeat(std::time::Duration::from_millis(ms));
    }
    if let Some(secs @ 1..) = env.terminal_max_age_secs {
        platform
            .gateway()
            .set_max_stream_age(Some(std::time::Duration::from_secs(secs)));
    }
    Ok(Served::new(platform, placed))
}

/// Takes the supervisor's first state from stdin before serving, then follows its changes
/// (and reports statistics) in the background; `stop` fires when stdin closes.
async fn follow_supervisor(
    dir: &Path,
    served: &Served,
    switches: &SwitchBoard,
    stop: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = tokio::time::timeout(FIRST_STATE_WITHIN, lines.next_line())
        .await
        .context("no state from the supervisor on stdin")?
        .context("reading stdin")?
        .context("stdin closed before the supervisor sent a state")?;
    let mut state = WorkerState::from_line(&first).context("the supervisor's first state")?;
    let mut down = apply(&state, dir, served, switches).await;
    say(WorkerLine::Applied {
        version: state.version,
        down: down.clone(),
    });
    let (state_dir, state_served, state_switches) =
        (dir.to_path_buf(), served.clone(), switches.clone());
    tokio::spawn(async move {
        let mut backoff = mesh_contract::Backoff::new(RETRY_DOWN_FIRST, RETRY_DOWN_AT_MOST);
        let mut retry_in = backoff.next_delay();
        loop {
            tokio::select! {
                line = lines.next_line() => {
                    let Ok(Some(line)) = line else { break };
                    match WorkerState::from_line(&line) {
                        Ok(next) => {
                            state = next;
                            down = apply(&state, &state_dir, &state_served, &state_switches).await;
                            backoff.reset();
                            retry_in = backoff.next_delay();
                            say(WorkerLine::Applied {
                                version: state.version,
                                down: down.clone(),
                            });
                        }
                        Err(err) => {
                            tracing::error!(error = %err, "state from the supervisor not applied")
                        }
                    }
                }
                // a tenant down for a reason that may pass (its database, its broker vhost)
                // is served once it does: the same version, confirmed again with fewer down
                () = tokio::time::sleep(retry_in), if !down.is_empty() => {
                    let before = down.len();
                    down = retry_down(&state, down, &state_dir, &state_served).await;
                    if down.len() < before {
                        say(WorkerLine::Applied {
                            version: state.version,
                            down: down.clone(),
                        });
                    }
                    retry_in = backoff.next_delay();
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
            say(WorkerLine::Stats(reporting.stats()));
        }
    });
    Ok(())
}

/// A worker without a supervisor (a replica under Kubernetes) follows the switch state the
/// nodes of its mesh share in Redis, when there is one.
async fn follow_shared_switches(env: &WorkerEnv, switches: &SwitchBoard) -> anyhow::Result<()> {
    let name = mesh_runtime::deploy::worker_env::REDIS_URL;
    let Some(url) = &env.state_redis_url else {
        return Ok(());
    };
    let shared = mesh_runtime::control::shared::SharedSwitches::connect(url, env.redis_prefix())
        .await
        .with_context(|| format!("{name}={url}"))?;
    // the state as it is now before serving, then every change; this replica reports what it
    // applied, so a change made through any node counts it
    let snapshot = shared.snapshot().await?;
    // an empty store (never filled, restarted empty) says nothing: the tenant files'
    // switches stay until a control plane fills it
    if snapshot.epoch.is_some() {
        switches.replace_all(snapshot.off());
    }
    let board = switches.clone();
    let name = format!(
        "worker-{}-{}",
        std::process::id(),
        &mesh_contract::ServiceCredentials::fresh_token()[..8]
    );
    tokio::spawn(shared.follow(name, move |state| board.replace_all(state)));
    Ok(())
}

/// Retention: each tenant's stored messages are kept as long as its file says.
fn purge_expired_hourly(retention: std::sync::Arc<Platform>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RETENTION_EVERY);
        loop {
            tick.tick().await;
            match retention
                .purge_expired(mesh_contract::fields::now_ms())
                .await
            {
                Ok(purged) => {
                    for (tenant, n) in purged.into_iter().filter(|(_, n)| *n > 0) {
                        tracing::info!(%tenant, messages = n, "expired messages purged");
                    }
                }
                Err(err) => tracing::warn!(error = %err, "purging expired messages failed"),
            }
        }
    });
}

/// Serves the platform behind the probes and the runtime's inbound stack until `stopped`.
async fn serve(
    env: &WorkerEnv,
    listener: tokio::net::TcpListener,
    served: &Served,
    node_tls: Option<&mesh_runtime::tls::NodeTls>,
    stopped: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    // bulkhead use, exported with the other metrics while this process serves
    let _bulkheads = mesh_telemetry::metrics::observe_bulkheads({
        let served = served.clone();
        move || {
            served
                .stats()
                .bulkheads
                .into_iter()
                .map(|b| {
                    (
                        b.tenant.to_string(),
                        b.dependency,
                        u64::from(b.in_use),
                        u64::from(b.capacity),
                    )
                })
                .collect()
        }
    });
    let http2 = mesh_runtime::deploy::WorkerHttp2::from(env);
    let probes = Probes::new(mesh_api::CONTRACTS, Some(mesh_api::FILE_DESCRIPTOR_SET));
    probes.set_serving(true).await;
    // leaving is a protocol: health says NOT_SERVING (the proxy takes this process out of
    // rotation), every attached terminal is told to attach again elsewhere, spread over the
    // drain window, and unregistered; then in-flight calls finish and the server stops
    let stopped = {
        let (probes, gateway) = (probes.clone(), served.platform.gateway().clone());
        let window = std::time::Duration::from_millis(env.drain_window_ms.unwrap_or(5000));
        async move {
            stopped.await;
            probes.set_serving(false).await;
            let told = gateway.drain(window, "the node is restarting");
            tracing::info!(
                terminals = told,
                window_ms = window.as_millis() as u64,
                "draining: terminals told to attach again elsewhere"
            );
            // the hints leave before the streams are cut
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    };
    // the node's calls to itself (locator, gateway) skip the network from now on
    served.platform.serve_in_process(&served.inbound);
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = node_tls {
        server = server
            .tls_config(tls.server_config())
            .context("serving over mutual TLS")?;
    }
    server
        // the front door's connections: pings both ways find a hop gone silent; the front door
        // counts and caps the streams it opens, and cancelling them at once is not a flood
        .http2_keepalive_interval(Some(http2.keepalive_interval))
        .http2_keepalive_timeout(Some(http2.keepalive_timeout))
        .http2_max_pending_accept_reset_streams(Some(http2.max_streams))
        // health and reflection first: they belong to no tenant
        .layer(ProbesLayer::new(probes))
        // then the runtime's inbound stack: a span per call, whatever answers it (auth,
        // limits, switches, service), child of the caller's span
        .layer(served.inbound.layer())
        .add_routes(served.platform.routes())
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stopped,
        )
        .await?;
    Ok(())
}

//! `mesh up`: the supervisor, the front door, and the control plane behind the admin API.

use std::path::Path;

use anyhow::{Context, anyhow};
use mesh_api::admin::v1::admin_server::AdminServer;
use mesh_contract::TenantId;
use mesh_runtime::{
    TenantDirectory, Tenants,
    auth::NODE_CREDENTIAL_ENV,
    connections::ConnectionLimits,
    control::{ControlPlane, plane::initial_switches, store::SwitchStore},
    deploy::DeployConfig,
    front_door::FrontDoor,
    layers::Catalogue,
    probes::Probes,
    supervisor::{Supervisor, SupervisorEvent, WorkerCommand},
    tls::{LoadTls, TlsAcceptor},
    upstream::UpstreamLimits,
};
use tokio::sync::{mpsc, watch};

use crate::admin::{AdminService, OpsCredential};

/// The admin API's routes, behind the operators' credentials.
type AdminRoutes = tonic::service::Routes;

/// What `mesh up` is told and checks before anything starts.
struct Prepared {
    tenants: Tenants,
    operators: Vec<(String, String)>,
    tls: Option<TlsAcceptor>,
    web_tls: Option<TlsAcceptor>,
    node_tls: Option<mesh_runtime::tls::NodeTls>,
    store: SwitchStore,
    saved: mesh_runtime::control::store::SavedSwitches,
    node_credential: String,
    command: WorkerCommand,
    /// What the workers inherit of this process's environment (read by figment, checked).
    workers: mesh_config::worker::WorkerEnv,
}

/// Runs `mesh up` until SIGTERM or ctrl-c: checks everything first, then starts the front door,
/// the supervisor and the control plane, shares state with the other nodes, serves the admin
/// API, the web access and the metrics, and stops it all in order.
pub async fn run(
    dir: &Path,
    listen: &str,
    config: &Path,
    deploy: DeployConfig,
    control_only: bool,
) -> anyhow::Result<()> {
    let Prepared {
        tenants,
        operators,
        tls,
        web_tls,
        node_tls,
        store,
        saved,
        node_credential,
        command,
        workers,
    } = prepare(dir, config, &deploy, control_only)?;
    // a control plane alone answers no tenant's calls: it loads none of their keys
    let served_here = if control_only {
        Tenants::default()
    } else {
        tenants.clone()
    };
    let front = front_door(
        &served_here,
        &node_credential,
        node_tls,
        tls.clone(),
        &deploy,
    );
    say_which_config(config, &deploy);
    // no front door on a control plane whose workers run elsewhere: callers reach them
    // through the proxy in front of them
    let listener = match control_only {
        true => None,
        false => Some(bind(listen, "front door").await?),
    };
    for config in served_here.tenants.values() {
        front.serve_tenant(config);
    }
    // healthy once it listens: a tenant whose worker is down gets UNAVAILABLE on its own calls
    front.probes().set_serving(true).await;
    say_where(listener.as_ref(), tls.is_some(), &store)?;

    let (stop, stopping) = watch::channel(false);
    let (events, mut reports) = mpsc::unbounded_channel();
    let serving = listener
        .map(|listener| tokio::spawn(front.clone().run(listener, stopped(stopping.clone()))));
    let supervisor = mesh_runtime::supervisor::Config {
        command,
        switches: saved.switches.clone(),
    }
    .build(front.clone(), events, stopping.clone());
    let plane = mesh_runtime::control::Config {
        dir: dir.to_path_buf(),
        catalogue: mesh_api::CONTRACTS,
        tenants,
        saved,
        store,
        start_workers: !control_only,
        // the workers inherit MESH_STORE_POSTGRES: their stored data lives outside them
        data_shared: workers.store_postgres.is_some(),
    }
    .build(supervisor.clone(), front.clone())?;
    if let Some(url) = &deploy.state.redis_url {
        let memory_store = workers.store_postgres.is_none() && !control_only;
        share_state(
            &plane,
            url,
            &deploy,
            &node_credential,
            control_only,
            memory_store,
        )
        .await?;
    }
    let admin_service = admin_routes(&plane, &operators, &deploy, workers.amqp_uri.clone());
    let admin = serve_admin(admin_service.clone(), &deploy, config, &tls, &stopping).await?;
    let web = serve_web(
        &front,
        admin_service,
        &deploy,
        (&tls, web_tls),
        &node_credential,
        &stopping,
    )
    .await?;
    // the node's metrics where Prometheus looks: its own, the control plane's switches and
    // tenants, and every worker's
    let _control_metrics = mesh_telemetry::metrics::observe_control({
        let plane = plane.clone();
        move || control_state(&plane)
    });
    let metrics = serve_metrics(&supervisor, &deploy, &stopping).await?;
    let rules = tokio::spawn(plane.run(stopped(stopping.clone())));

    say_events_until_stopped(&mut reports).await?;
    let tasks = [serving, Some(rules), admin, metrics, web];
    shut_down(
        &front,
        stop,
        &supervisor,
        tasks.into_iter().flatten(),
        reports,
    )
    .await;
    Ok(())
}

/// The admin API, once: served to meshctl on its own listener and to the ops console through
/// the browsers' access (none without operators: nobody could call it).
fn admin_routes(
    plane: &ControlPlane,
    operators: &[(String, String)],
    deploy: &DeployConfig,
    broker: Option<String>,
) -> Option<AdminRoutes> {
    let admin_api = AdminService::new(plane.clone()).with_broker(broker);
    // the consumers' backlogs and dead letters, for the alerts (admin API or not), where
    // metrics go somewhere
    if deploy.telemetry.prometheus_listen.is_some() || deploy.telemetry.otlp_endpoint.is_some() {
        admin_api.report_queues(std::time::Duration::from_secs(15));
    }
    (!operators.is_empty()).then(|| {
        tonic::service::Routes::new(AdminServer::with_interceptor(
            admin_api,
            OpsCredential::new(operators),
        ))
    })
}

/// Says the supervisor's events until SIGTERM or ctrl-c.
async fn say_events_until_stopped(
    reports: &mut mpsc::UnboundedReceiver<SupervisorEvent>,
) -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            Some(event) = reports.recv() => report(&event),
            _ = terminate.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// Stops the node in order. Health says NOT_SERVING / 503 from now, and the front door stops
/// accepting and asks its open connections to close (GOAWAY): a proxy in front sends new calls
/// elsewhere at once (a refused connection is retried on another replica). The workers then
/// tell their terminals to attach again elsewhere and finish what is in flight; the servers
/// end; what the supervisor still had to say is said.
async fn shut_down(
    front: &FrontDoor,
    stop: watch::Sender<bool>,
    supervisor: &Supervisor,
    tasks: impl Iterator<Item = tokio::task::JoinHandle<()>>,
    mut reports: mpsc::UnboundedReceiver<SupervisorEvent>,
) {
    println!("stopping");
    front.probes().set_serving(false).await;
    let _ = stop.send(true);
    supervisor.wait().await;
    for task in tasks {
        let _ = task.await;
    }
    while let Ok(event) = reports.try_recv() {
        report(&event);
    }
    println!("stopped");
}

/// Resolves when `stop` turns true: how every server of the node learns it is stopping.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Every file checked, the services' settings too (mesh_config::settings), before any process
/// starts: a bad one would take down the process group it shares with others. A control plane
/// whose workers run elsewhere holds none of their secrets.
fn prepare(
    dir: &Path,
    config: &Path,
    deploy: &DeployConfig,
    control_only: bool,
) -> anyhow::Result<Prepared> {
    let tenants = if control_only {
        Tenants::load_without_secrets(dir, mesh_api::CONTRACTS)?
    } else {
        Tenants::load(dir, mesh_api::CONTRACTS)?
    };
    let operators = deploy
        .operators()
        .map_err(|e| anyhow!("{}: {e}", config.display()))?;
    // a client told a worker's address calls it over plain HTTP/2: never from a TLS front door
    if deploy.front_door.advertise_workers && deploy.tls.enabled() {
        anyhow::bail!(
            "{} (or MESH_FRONT_DOOR_ADVERTISE_WORKERS): front_door.advertise_workers needs a mesh \
             without [tls]: its clients would be sent from a TLS front door to workers serving \
             plain HTTP/2 (or mutual TLS for the mesh's own nodes only)",
            config.display()
        );
    }
    let tls_error = |e: &dyn std::fmt::Display| {
        anyhow!("{} (or its MESH_TLS_* override): {e}", config.display())
    };
    // TLS on the front door and the admin API when ops/mesh.toml names a certificate, the
    // browsers' access with the same certificate (HTTP/1.1 clients too), and mutual TLS
    // between the front door and the workers, and among workers
    let tls = deploy.tls.acceptor().map_err(|e| tls_error(&e))?;
    let web_tls = deploy.tls.web_acceptor().map_err(|e| tls_error(&e))?;
    let node_tls = deploy.tls.node_tls().map_err(|e| tls_error(&e))?;
    let store = SwitchStore::in_dir(&deploy.state.dir);
    let saved = initial_switches(&tenants, &store)?;
    let node_credential = node_credential();
    // where the workers listen, and the address other machines push to them at
    let (worker_listen, worker_advertised) = deploy.workers.worker_listen().map_err(|e| {
        anyhow!(
            "{} (or MESH_WORKERS_*): {}: {}",
            config.display(),
            e.field,
            e.message
        )
    })?;
    let command = WorkerCommand {
        program: std::env::current_exe().context("locating the mesh binary")?,
        args: vec![
            "worker".into(),
            "--tenants".into(),
            dir.display().to_string(),
            "--listen".into(),
            worker_listen,
            "--supervised".into(),
        ],
        // workers export telemetry as the deployment says, and ping the front door as it
        // pings them
        env: [
            deploy.telemetry.to_env(),
            deploy.front_door.worker_env(),
            deploy.state.worker_env(),
            vec![(NODE_CREDENTIAL_ENV.into(), node_credential.clone())],
            worker_advertised,
            node_tls.as_ref().map(|t| t.to_env()).unwrap_or_default(),
        ]
        .concat(),
    };
    Ok(Prepared {
        tenants,
        operators,
        tls,
        web_tls,
        node_tls,
        store,
        saved,
        node_credential,
        command,
        workers: mesh_config::worker::WorkerEnv::from_env()?,
    })
}

/// The front door, authenticating every call as the workers do: unknown tenants and wrong
/// credentials are refused here, alike, before any tenant's route or state shows.
fn front_door(
    served_here: &Tenants,
    node_credential: &str,
    node_tls: Option<mesh_runtime::tls::NodeTls>,
    tls: Option<TlsAcceptor>,
    deploy: &DeployConfig,
) -> FrontDoor {
    let catalogue = Catalogue(mesh_api::CONTRACTS);
    mesh_runtime::front_door::Config {
        directory: Some(
            TenantDirectory::from_tenants(served_here, catalogue)
                .with_node_credential(node_credential),
        ),
        node_tls,
        advertise_workers: deploy.front_door.advertise_workers,
        upstream: UpstreamLimits::from(&deploy.front_door),
        probes: Probes::new(mesh_api::CONTRACTS, Some(mesh_api::FILE_DESCRIPTOR_SET)),
        connections: ConnectionLimits::from(&deploy.front_door),
        tls,
        ..mesh_runtime::front_door::Config::new(catalogue)
    }
    .build()
}

/// A listener on `address`, or an error naming what it was for.
async fn bind(address: &str, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("{what}: listening on {address}"))
}

/// Where the front door listens (or that there is none), TLS, and where state is kept.
fn say_where(
    listener: Option<&tokio::net::TcpListener>,
    tls: bool,
    store: &SwitchStore,
) -> std::io::Result<()> {
    match listener {
        Some(listener) => println!("front door listening on {}", listener.local_addr()?),
        None => println!("control plane only: no front door, no workers (they run elsewhere)"),
    }
    if tls {
        println!("TLS on the front door and the admin API");
    }
    println!("switch state in {}", store.path().display());
    println!(
        "audit log in {}",
        store.path().with_file_name("audit.jsonl").display()
    );
    Ok(())
}

/// Which deployment config this is, first (once it is valid): a mesh started in another
/// folder must not silently run on defaults.
fn say_which_config(config: &Path, deploy: &DeployConfig) {
    match DeployConfig::source(config) {
        Some(file) => println!("config {}", file.display()),
        None => println!(
            "config {} not found here or in a parent folder: defaults and MESH_* variables \
             only (admin API off unless MESH_ADMIN_TOKEN is set; switch state in {})",
            config.display(),
            deploy.state.dir.display()
        ),
    }
}

/// Several nodes: the switch state, the tenant registry (a control plane alone changes no
/// tenant) and the audit log are theirs together, in the Redis at `url`.
async fn share_state(
    plane: &ControlPlane,
    url: &str,
    deploy: &DeployConfig,
    node_credential: &str,
    control_only: bool,
    memory_store: bool,
) -> anyhow::Result<()> {
    use mesh_runtime::control::shared::{SharedSwitches, SharedTenants};
    let prefix = &deploy.state.redis_prefix;
    plane
        .share_switches(SharedSwitches::connect(url, prefix).await?)
        .await?;
    if !control_only {
        plane
            .share_tenants(SharedTenants::connect(url, prefix, node_credential).await?)
            .await?;
    }
    plane
        .audit()
        .share(url, prefix, node_credential)
        .await
        .map_err(|e| anyhow!("audit log: {e}"))?;
    tokio::spawn(
        plane
            .audit()
            .clone()
            .keep_reconciled(std::time::Duration::from_secs(5)),
    );
    println!(
        "shared state in {url}: switches, tenants and the audit log follow every node of the mesh"
    );
    if memory_store {
        println!(
            "messages are kept in this node's memory (no MESH_STORE_POSTGRES): nodes \
             sharing state each keep their own, so a conversation split between nodes is \
             split in storage too; give every node the same PostgreSQL"
        );
    }
    if !control_only
        && deploy.workers.advertise_host.is_none()
        && deploy
            .workers
            .listen_host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
    {
        println!(
            "workers listen on loopback ([workers] listen_host {}): nodes on other machines \
             cannot push to terminals attached here; set listen_host and advertise_host",
            deploy.workers.listen_host
        );
    }
    Ok(())
}

/// The admin API on its own listener (the front door's connection handling and TLS, not its
/// limits), when there is an operator to serve.
async fn serve_admin(
    service: Option<AdminRoutes>,
    deploy: &DeployConfig,
    config: &Path,
    tls: &Option<TlsAcceptor>,
    stopping: &watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(service) = service else {
        println!(
            "admin API off: no ops credential (set admin.token_env or [[admin.operators]] in {}, or MESH_ADMIN_TOKEN)",
            config.display()
        );
        return Ok(None);
    };
    let listener = bind(&deploy.admin.listen, "admin API").await?;
    println!("admin listening on {}", listener.local_addr()?);
    Ok(Some(tokio::spawn(
        mesh_runtime::connections::serve_connections(
            listener,
            service,
            ConnectionLimits::default(),
            tls.clone(),
            stopped(stopping.clone()),
        ),
    )))
}

/// The browsers' access (`[web] listen`): every tenant call as HTTP/JSON through the front
/// door, the pages, and the ops console where the deployment allows it.
async fn serve_web(
    front: &FrontDoor,
    admin: Option<AdminRoutes>,
    deploy: &DeployConfig,
    (tls, web_tls): (&Option<TlsAcceptor>, Option<TlsAcceptor>),
    node_credential: &str,
    stopping: &watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let listen = deploy.web.listen.trim();
    if listen.is_empty() {
        return Ok(None);
    }
    let listener = bind(listen, "web access").await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let address = listener.local_addr()?;
    // the console beyond loopback only when the deployment says so
    let console = admin.is_some()
        && deploy
            .web
            .console
            .unwrap_or_else(|| address.ip().is_loopback());
    println!(
        "web access at {scheme}://{address}/ (chat /chat{})",
        if console {
            ", ops console /console"
        } else {
            ""
        }
    );
    if console && !address.ip().is_loopback() {
        tracing::warn!(%address, "the ops console and the admin API's calls are served beyond loopback ([web] console = true): keep that port on your ops network");
    }
    Ok(Some(tokio::spawn(
        mesh_runtime::connections::serve_connections(
            listener,
            crate::web::access(
                front,
                admin.filter(|_| console),
                deploy.web.max_body_bytes,
                node_credential,
            )?,
            ConnectionLimits {
                http1: true,
                ..ConnectionLimits::from(&deploy.front_door)
            },
            web_tls,
            stopped(stopping.clone()),
        ),
    )))
}

/// The node's Prometheus endpoint, when `[telemetry] prometheus_listen` names one.
async fn serve_metrics(
    supervisor: &Supervisor,
    deploy: &DeployConfig,
    stopping: &watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(listen) = &deploy.telemetry.prometheus_listen else {
        return Ok(None);
    };
    let listener = bind(listen, "metrics").await?;
    println!("metrics at http://{}/metrics", listener.local_addr()?);
    Ok(Some(tokio::spawn(crate::scrape::serve(
        listener,
        crate::scrape::node(supervisor.clone()),
        stopped(stopping.clone()),
    ))))
}

/// The switches and tenants of the control plane, as its gauges report them.
fn control_state(plane: &ControlPlane) -> mesh_telemetry::metrics::ControlState {
    mesh_telemetry::metrics::ControlState {
        switches: plane
            .switches()
            .iter()
            .map(mesh_telemetry::metrics::SwitchOff::from)
            .collect(),
        tenants: plane
            .tenants()
            .into_iter()
            .map(|t| (t.config.id.to_string(), t.state.to_owned()))
            .collect(),
    }
}

fn list(tenants: &[TenantId]) -> String {
    tenants
        .iter()
        .map(TenantId::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

fn report(event: &SupervisorEvent) {
    match event {
        SupervisorEvent::Serving {
            group,
            pid,
            address,
            tenants,
        } => {
            println!(
                "serving group={group} pid={pid} address={address} tenants={}",
                list(tenants)
            );
        }
        SupervisorEvent::Exited {
            group,
            pid,
            status,
            restart_in,
        } => {
            println!(
                "exited group={group} pid={pid} status=\"{status}\" restarting_in={restart_in:?}"
            );
        }
        SupervisorEvent::StartFailed {
            group,
            reason,
            retry_in,
        } => {
            println!("start_failed group={group} reason=\"{reason}\" retrying_in={retry_in:?}");
        }
        SupervisorEvent::Stopped { group, pid } => println!("stopped group={group} pid={pid}"),
    }
}

/// The credential the workers present to each other: the operator's (several machines serving
/// one mesh set the same `MESH_NODE_CREDENTIAL` on each), else a fresh random one per start.
fn node_credential() -> String {
    match std::env::var(NODE_CREDENTIAL_ENV) {
        Ok(token) if !token.is_empty() => token,
        _ => mesh_contract::ServiceCredentials::fresh_token(),
    }
}

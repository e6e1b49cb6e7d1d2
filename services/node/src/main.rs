//! `mesh`: the one binary of the toolkit.
//!
//! - `mesh up`: reads `tenants/`, runs each tenant group in its own worker process (restarted
//!   alone if it dies), serves one front door routing every call to its tenant's process, and
//!   the admin API `meshctl` drives (switches, onboarding, status);
//! - `mesh worker --tenant a,b`: one tenant process (normally started by `mesh up`);
//! - `mesh demo`: the walkthrough on embedded defaults;
//! - `mesh deploy haproxy|k8s`: the configuration of several machines (see `mesh_deploy`).

/// jemalloc, with its background threads, gives memory back to the system some seconds after
/// it is freed: once a spike of connections or calls is over, the front door and the workers
/// return near their baseline (the system allocator kept the peak for good; figures in
/// RELIABILITY.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod admin;
mod demo;
mod scrape;
mod up;
mod web;
mod worker;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use mesh_runtime::deploy::DeployConfig;
use mesh_telemetry::TelemetryConfig;

#[derive(Parser)]
#[command(
    version,
    about = "Contract-driven service mesh for multi-tenant business lines"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the walkthrough on embedded defaults (no broker, no database): the
    /// customer-service platform for several tenants on one node, chatting, an order event,
    /// a read receipt, offline messages, and a degradation switch for one tenant.
    Demo {
        /// Tenants to serve, from the tenants folder.
        #[arg(long, value_delimiter = ',', default_value = "mall,finance,paipai")]
        tenants: Vec<String>,
        /// The tenants folder (default: `tenants`, else the repository's).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print every mesh span (calls, publishes, consumes) on stderr as it closes.
        #[arg(long)]
        trace: bool,
    },
    /// Runs the mesh: a worker process per tenant group, supervised, behind one front door.
    Up {
        /// The tenants folder.
        #[arg(long, default_value = "tenants")]
        tenants: PathBuf,
        /// Where the front door listens.
        #[arg(long, default_value = "127.0.0.1:7400")]
        listen: String,
        /// The deployment config (admin API, ops credential, state folder); overridable by
        /// MESH_ADMIN_LISTEN, MESH_ADMIN_TOKEN, MESH_ADMIN_TOKEN_ENV, MESH_STATE_DIR.
        #[arg(long, default_value = "ops/mesh.toml")]
        config: PathBuf,
        /// The control plane only, for workers that run elsewhere (the process groups'
        /// Deployments on Kubernetes): the admin API, the ops console, switches shared
        /// through Redis (`[state] redis_url`); no front door, no workers, no tenant changes.
        #[arg(long)]
        control_only: bool,
    },
    /// End-user tokens for development.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Renders the configuration of the engines that run a mesh on several machines, from
    /// the tenants folder: HAProxy in front, Kubernetes manifests.
    #[command(subcommand)]
    Deploy(DeployCmd),
    /// Serves some tenants in this process (started by `mesh up`).
    Worker {
        /// The tenants folder.
        #[arg(long, default_value = "tenants")]
        tenants: PathBuf,
        /// Tenants this process serves.
        #[arg(long, value_delimiter = ',', required = true)]
        tenant: Vec<String>,
        /// Where to listen; the bound address is printed as `READY <address>`.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Run under a supervisor: take the mesh's state (switches, tenants) from stdin before
        /// serving and after every change, and stop when stdin closes (how a supervisor stops
        /// its workers, and how a worker notices its supervisor died).
        #[arg(long)]
        supervised: bool,
    },
}

#[derive(Subcommand)]
enum DeployCmd {
    /// HAProxy routing each call by its tenant to the replicas (`mesh worker` processes) of
    /// the tenant's process group, over HTTP/2, with health checks. Prints the file.
    Haproxy {
        /// The tenants folder.
        #[arg(long, default_value = "tenants")]
        tenants: PathBuf,
        /// Where HAProxy listens.
        #[arg(long, default_value = "0.0.0.0:7400")]
        listen: String,
        /// A process group's replicas: `shared=10.0.0.5:7501,10.0.0.6:7501`; once per group.
        #[arg(long = "group", value_name = "GROUP=HOST:PORT,...")]
        groups: Vec<String>,
        /// Where HAProxy serves browsers too (HTTP/JSON, server-sent events, gRPC-Web, the
        /// pages), routed by tenant as the calls are; off unless given.
        #[arg(long)]
        web_listen: Option<String>,
        /// The port each replica serves browsers on (`[web] listen` of a `mesh up` node).
        #[arg(long, default_value_t = 7480)]
        web_port: u16,
        /// Connections HAProxy holds at once (every attached terminal holds one); HAProxy
        /// raises its descriptor limit to about twice this.
        #[arg(long, default_value_t = mesh_deploy::haproxy::DEFAULT_MAXCONN)]
        maxconn: u32,
    },
    /// Kubernetes manifests: a Deployment, Service, PodDisruptionBudget and autoscaler per
    /// process group, the tenant files as a ConfigMap, HAProxy in front. Prints them.
    K8s {
        /// The tenants folder.
        #[arg(long, default_value = "tenants")]
        tenants: PathBuf,
        #[arg(long, default_value = "mesh")]
        namespace: String,
        /// The image holding the `mesh` binary.
        #[arg(long, default_value = concat!("mesh:", env!("CARGO_PKG_VERSION")))]
        image: String,
        /// Replicas of each process group.
        #[arg(long, default_value_t = 2)]
        replicas: u32,
    },
}

/// `mesh deploy ...`: the rendered file.
fn render(cmd: &DeployCmd) -> anyhow::Result<String> {
    Ok(match cmd {
        DeployCmd::Haproxy {
            tenants,
            listen,
            groups,
            web_listen,
            web_port,
            maxconn,
        } => {
            // the secrets the files name are the deployment's, not this machine's
            let loaded = mesh_runtime::Tenants::load_without_secrets(tenants, mesh_api::CONTRACTS)?;
            let mut replicas = std::collections::BTreeMap::new();
            for group in groups {
                // (one address in several groups is fine: a `mesh up` node's front door serves
                // every group; twice in one group is a typo)
                let mut seen = std::collections::BTreeSet::new();
                let (name, addresses) = group.split_once('=').ok_or_else(|| {
                    anyhow::anyhow!("--group {group:?}: write GROUP=HOST:PORT,HOST:PORT")
                })?;
                let addresses: Vec<String> =
                    addresses.split(',').map(|a| a.trim().to_owned()).collect();
                for address in &addresses {
                    if !seen.insert(address.clone()) {
                        anyhow::bail!("--group {group:?}: {address:?} is given twice");
                    }
                }
                if replicas.insert(name.trim().to_owned(), addresses).is_some() {
                    anyhow::bail!(
                        "--group {name}: given twice; list all its replicas in one --group"
                    );
                }
            }
            mesh_deploy::haproxy::render(
                &loaded,
                &mesh_deploy::haproxy::Haproxy {
                    listen: listen.clone(),
                    replicas,
                    dns_slots: None,
                    maxconn: *maxconn,
                    web: web_listen
                        .as_ref()
                        .map(|listen| mesh_deploy::haproxy::HaproxyWeb {
                            listen: listen.clone(),
                            port: *web_port,
                        }),
                },
            )?
        }
        DeployCmd::K8s {
            tenants,
            namespace,
            image,
            replicas,
        } => {
            // the secrets the files name are the deployment's, not this machine's
            let loaded = mesh_runtime::Tenants::load_without_secrets(tenants, mesh_api::CONTRACTS)?;
            mesh_deploy::k8s::render(
                &loaded,
                tenants,
                &mesh_deploy::k8s::Options {
                    namespace: namespace.clone(),
                    image: image.clone(),
                    replicas: *replicas,
                },
            )?
        }
    })
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Prints a user token for `--user` of `--tenant`, signed with the tenant's development
    /// key (`[users] hs256_secret` in its file): what a business line's account system issues
    /// in production. Use it as `authorization: Bearer <token>`.
    Issue {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The user (`sub`).
        #[arg(long)]
        user: String,
        /// Pins the token to one terminal.
        #[arg(long)]
        terminal: Option<String>,
        /// Seconds it stays valid.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// The tenants folder.
        #[arg(long, default_value = "tenants")]
        tenants: PathBuf,
    },
}

/// Signs a development user token (`mesh token issue`).
fn issue_token(
    dir: &std::path::Path,
    tenant: &str,
    user: &str,
    terminal: Option<&str>,
    ttl: u64,
) -> anyhow::Result<String> {
    // every file checked, but only this tenant's secrets: another tenant's variable unset here
    // is no reason to refuse this one's token
    let tenants = mesh_runtime::Tenants::load_serving(dir, mesh_api::CONTRACTS, &[tenant.into()])?;
    let config = tenants.get(tenant).ok_or_else(|| {
        anyhow::anyhow!("tenant {tenant:?} is not configured in {}", dir.display())
    })?;
    let users = config.users.as_ref().ok_or_else(|| {
        anyhow::anyhow!("tenant {tenant:?} has no [users] table: it accepts no user tokens")
    })?;
    mesh_contract::fields::id("user", user).map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    users
        .issue(user, terminal, ttl)
        .map_err(|(field, message)| anyhow::anyhow!("tenant {tenant:?}: {field} {message}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // logs on stderr (`RUST_LOG=mesh_runtime=debug,info` shows more), spans exported as the
    // deployment's telemetry config says
    const LOGS: &str = "warn";
    let command = Cli::parse().command;
    if let Cmd::Token(TokenCmd::Issue {
        tenant,
        user,
        terminal,
        ttl,
        tenants,
    }) = &command
    {
        println!(
            "{}",
            issue_token(tenants, tenant, user, terminal.as_deref(), *ttl)?
        );
        return Ok(());
    }
    if let Cmd::Deploy(deploy) = &command {
        print!("{}", render(deploy)?);
        return Ok(());
    }
    let (telemetry, run) = match command {
        Cmd::Demo {
            tenants,
            dir,
            trace,
        } => {
            let mut config = TelemetryConfig::from_env()?;
            config.console |= trace;
            let telemetry = mesh_telemetry::init("mesh-demo", &config, LOGS)?;
            let dir = dir.unwrap_or_else(|| {
                let here = PathBuf::from("tenants");
                if here.is_dir() {
                    here
                } else {
                    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tenants"))
                }
            });
            (telemetry, demo::run(&dir, &tenants).await)
        }
        Cmd::Up {
            tenants,
            listen,
            config,
            control_only,
        } => {
            let deploy = DeployConfig::load(&config)?;
            let telemetry = mesh_telemetry::init_as(
                &mesh_telemetry::Process::new("mesh-front-door"),
                &deploy.telemetry,
                LOGS,
            )?;
            (
                telemetry,
                up::run(&tenants, &listen, &config, deploy, control_only).await,
            )
        }
        Cmd::Worker {
            tenants,
            tenant,
            listen,
            supervised,
        } => {
            let config = TelemetryConfig::from_env()?;
            // which worker: its group (from the supervisor) and tenants, beside the instance
            // id and pid every process's resource carries
            let group = mesh_config::worker::WorkerEnv::from_env()?
                .group()
                .to_owned();
            let telemetry = mesh_telemetry::init_as(
                &mesh_telemetry::Process::new("mesh-worker")
                    .with("mesh.worker.group", group)
                    .with("mesh.tenants", tenant.join(",")),
                &config,
                LOGS,
            )?;
            (
                telemetry,
                worker::run(&tenants, &tenant, &listen, supervised).await,
            )
        }
        Cmd::Token(_) | Cmd::Deploy(_) => unreachable!("answered above"),
    };
    // what is buffered is sent before the process ends
    telemetry.shutdown().await;
    run
}

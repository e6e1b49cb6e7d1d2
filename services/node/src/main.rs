//! `mesh`: the one binary of the toolkit.
//!
//! - `mesh up`: reads `tenants/`, runs each tenant group in its own worker process (restarted
//!   alone if it dies), serves one front door routing every call to its tenant's process, and
//!   the admin API `meshctl` drives (switches, onboarding, status);
//! - `mesh worker --tenant a,b`: one tenant process (normally started by `mesh up`);
//! - `mesh demo`: the walkthrough on embedded defaults.

mod admin;
mod demo;
mod up;
mod worker;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    /// Runs the walkthrough on embedded defaults (no broker, no database): the contract
    /// catalogue, HTTP/2 calls and events for several tenants.
    Demo {
        /// Tenants to serve.
        #[arg(long, value_delimiter = ',', default_value = "mall,finance,paipai")]
        tenants: Vec<String>,
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
    },
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // logs and spans on stderr; `RUST_LOG=mesh_runtime=debug,info` shows more
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Cmd::Demo { tenants } => demo::run(&tenants).await,
        Cmd::Up {
            tenants,
            listen,
            config,
        } => up::run(&tenants, &listen, &config).await,
        Cmd::Worker {
            tenants,
            tenant,
            listen,
            supervised,
        } => worker::run(&tenants, &tenant, &listen, supervised).await,
    }
}

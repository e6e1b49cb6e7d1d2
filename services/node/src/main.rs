//! `mesh`: the one binary of the toolkit.

mod demo;

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Demo { tenants } => demo::run(&tenants).await,
    }
}

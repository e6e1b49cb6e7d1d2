//! `mesh-bench`: each figure beside its baseline, measured in one run on this machine, over
//! loopback only, bounded to a few minutes. Prints a table and, with `--write FILE`, writes it.
//!
//! Needs RabbitMQ on 127.0.0.1:5672 (`bash .ci/test` starts it) and builds the `mesh` binary
//! for the memory and switch propagation figures.

mod amqp;
mod chat;
mod front_door;
mod layers;
mod memory;
mod noisy;
mod spike;
mod switch;
mod terminals;
mod unary;

use std::{fmt::Write as _, path::PathBuf, time::Duration};

use clap::Parser;

#[derive(Parser)]
#[command(about = "Mesh overhead against raw tonic and raw lapin, in one run")]
struct Args {
    /// Calls (or messages) per sequential measurement.
    #[arg(long, default_value_t = 3000)]
    calls: usize,
    /// Duration of each throughput measurement.
    #[arg(long, default_value = "3")]
    seconds: u64,
    /// Off/on rounds of the switch propagation figure.
    #[arg(long, default_value_t = 20)]
    switch_rounds: usize,
    /// Also write the results (markdown) to this file.
    #[arg(long, conflicts_with = "only")]
    write: Option<PathBuf>,
    /// Internal: be the flooding neighbour of figure 3 against this front door URL.
    #[arg(long, hide = true)]
    flood: Option<String>,
    /// Internal: be the process outside the mesh the control flood of figure 3b hits.
    #[arg(long, hide = true)]
    refuse: bool,
    /// Internal: serve and call one variant of figure 1 `--calls` times, then exit (the
    /// per-layer profile runs this under callgrind).
    #[arg(long, hide = true)]
    probe: Option<String>,
    /// Measure this figure alone (to profile it, e.g. under `valgrind --tool=callgrind`).
    #[arg(long, value_enum)]
    only: Option<Figure>,
}

/// The figures, in the order they run.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Figure {
    Unary,
    Amqp,
    Noisy,
    NoisyFrontDoor,
    Memory,
    Switch,
    Spike,
    Terminals,
    FrontDoor,
    Chat,
    /// Instructions per unary call with each inbound layer on and off (under callgrind, a few
    /// minutes; only with `--only layers`, e.g. `--calls 1000`).
    Layers,
}

/// One row of results.
pub struct Row {
    figure: String,
    baseline: String,
    mesh: String,
    ratio: String,
    target: &'static str,
}

impl Row {
    fn new(
        figure: impl Into<String>,
        baseline: String,
        mesh: String,
        ratio: String,
        target: &'static str,
    ) -> Self {
        Self {
            figure: figure.into(),
            baseline,
            mesh,
            ratio,
            target,
        }
    }
}

/// The repository's tenants folder (the shipped tenants every figure runs).
pub fn tenants_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tenants")
}

/// A tenants folder of a figure's own: the shipped defaults, and each `(tenant, extra)` as the
/// shipped file with `extra` appended (its limits raised or lowered, say).
pub fn tenants_folder(shipped: &[(&str, &str)]) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    std::fs::copy(
        tenants_dir().join("_defaults.toml"),
        dir.path().join("_defaults.toml"),
    )?;
    for (tenant, extra) in shipped {
        let file = format!("{tenant}.toml");
        let text = std::fs::read_to_string(tenants_dir().join(&file))? + "\n" + extra;
        std::fs::write(dir.path().join(file), text)?;
    }
    Ok(dir)
}

/// The shipped tenants, validated.
pub fn shipped_tenants() -> anyhow::Result<mesh_runtime::Tenants> {
    Ok(mesh_runtime::Tenants::load(
        &tenants_dir(),
        mesh_api::CONTRACTS,
    )?)
}

/// A request context for `tenant` with its (development) credential from `tenants`.
pub fn tenant_ctx(
    tenants: &mesh_runtime::Tenants,
    tenant: &str,
) -> anyhow::Result<mesh_contract::RequestContext> {
    let token = tenants
        .get(tenant)
        .and_then(|t| t.credentials.token.clone())
        .unwrap_or_default();
    Ok(mesh_contract::RequestContext::new(mesh_contract::TenantId::new(tenant)?).with_token(token))
}

/// The p-th percentile of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `12.3 µs` style.
pub fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // a probe counts instructions per call: on one thread, so how tokio's workers happen to
    // park and steal does not change the count from one run to the next
    let runtime = match args.probe {
        Some(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        None => tokio::runtime::Runtime::new()?,
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(front) = args.flood {
        return noisy::flood(front).await;
    }
    if args.refuse {
        return noisy::refuse().await;
    }
    // telemetry as a worker runs it by default: installed, nothing exported
    let telemetry = mesh_telemetry::init(
        "mesh-bench",
        &mesh_telemetry::TelemetryConfig::default(),
        "warn",
    )?;
    if let Some(variant) = &args.probe {
        return layers::probe(&layers::Variant::parse(variant)?, args.calls).await;
    }
    if args.only == Some(Figure::Layers) {
        eprintln!("instructions per unary call, each inbound layer on and off (callgrind) ...");
        println!("{}", layers::run(args.calls)?);
        return Ok(());
    }
    let window = Duration::from_secs(args.seconds);
    let mut rows = Vec::new();
    let run = |figure: Figure| args.only.is_none_or(|only| only == figure);
    if run(Figure::Unary) {
        eprintln!("unary HTTP/2 ...");
        rows.extend(unary::run(args.calls, window).await?);
    }
    if run(Figure::Amqp) {
        eprintln!("AMQP publish + consume ...");
        rows.extend(amqp::run(args.calls).await?);
    }
    if run(Figure::Noisy) {
        eprintln!("noisy neighbour ...");
        rows.extend(noisy::run().await?);
    }
    if run(Figure::NoisyFrontDoor) {
        eprintln!("noisy neighbour through the front door ...");
        rows.extend(noisy::run_through_front_door().await?);
    }
    if run(Figure::Memory) {
        eprintln!("memory ...");
        rows.extend(memory::run(window).await?);
    }
    if run(Figure::Switch) {
        eprintln!("switch propagation ...");
        rows.extend(switch::run(args.switch_rounds).await?);
    }
    if run(Figure::Spike) {
        eprintln!("memory after a connection spike ...");
        rows.extend(spike::run().await?);
    }
    if run(Figure::FrontDoor) {
        eprintln!("the front door hop, against HAProxy and the worker directly ...");
        rows.extend(front_door::run(window).await?);
    }
    if run(Figure::Chat) {
        eprintln!(
            "chat messages through RabbitMQ and PostgreSQL, against the same work by hand ..."
        );
        rows.extend(chat::run(window).await?);
    }
    if run(Figure::Terminals) {
        eprintln!("long connections: 20,000 terminals ...");
        rows.extend(terminals::run().await?);
    }

    let mut table = String::new();
    writeln!(
        table,
        "Run on {} core(s), {}; release build; loopback only.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        today()
    )?;
    writeln!(
        table,
        "| figure | baseline | mesh | mesh / baseline | target |"
    )?;
    writeln!(table, "|---|---|---|---|---|")?;
    for row in &rows {
        writeln!(
            table,
            "| {} | {} | {} | {} | {} |",
            row.figure, row.baseline, row.mesh, row.ratio, row.target
        )?;
    }
    println!("{table}");
    telemetry.shutdown().await;
    if let Some(path) = args.write {
        let existing = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(&path, splice(&existing, &table))?;
        eprintln!("wrote the results into {}", path.display());
    }
    Ok(())
}

fn today() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

const BEGIN: &str = "<!-- results: written by mesh-bench -->";
const END: &str = "<!-- /results -->";

/// `existing` with the text between the result markers replaced by `table`, so the analysis
/// written around the results survives a new run; the table alone if there are no markers.
fn splice(existing: &str, table: &str) -> String {
    match (existing.find(BEGIN), existing.find(END)) {
        (Some(begin), Some(end)) if begin < end => {
            format!("{}{BEGIN}\n{table}{}", &existing[..begin], &existing[end..])
        }
        _ => format!("{BEGIN}\n{table}{END}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_run_replaces_only_the_results() {
        let file = format!("# Benchmarks\n{BEGIN}\nold table\n{END}\n## Analysis\nkept\n");
        let written = splice(&file, "new table\n");
        assert_eq!(
            written,
            format!("# Benchmarks\n{BEGIN}\nnew table\n{END}\n## Analysis\nkept\n")
        );
        assert_eq!(splice("", "t\n"), format!("{BEGIN}\nt\n{END}\n"));
    }
}

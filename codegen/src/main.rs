//! `mesh-codegen`: generate stubs from contracts, and check contracts for breaking changes.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Contracts in, code out: stubs for tonic and AMQP, and breaking-change checks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generates Rust stubs for every contract into a folder.
    Generate {
        /// The contracts folder (`<service>/v<major>/*.proto`).
        #[arg(long, default_value = "contracts")]
        contracts: PathBuf,
        /// Where to write the generated files (`contracts.rs` is the root).
        #[arg(long)]
        out: PathBuf,
    },
    /// Validates the contracts and, given a previous version, fails on breaking changes.
    Check {
        /// The contracts folder to check.
        #[arg(long, default_value = "contracts")]
        contracts: PathBuf,
        /// A folder holding the previous version of the contracts.
        #[arg(long, conflicts_with = "against_git")]
        against: Option<PathBuf>,
        /// A git revision holding the previous version (e.g. `HEAD~1`, `origin/main`).
        #[arg(long)]
        against_git: Option<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Generate { contracts, out } => {
            let set = mesh_codegen::load(&contracts)?;
            let generated = mesh_codegen::generate(&set, &out)?;
            for file in &generated.files {
                println!("wrote {}", file.display());
            }
            println!(
                "generated {} contract(s) into {}",
                set.contracts.len(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check {
            contracts,
            against,
            against_git,
        } => {
            let head = mesh_codegen::load(&contracts)?;
            println!(
                "{} contract(s) valid in {}",
                head.contracts.len(),
                contracts.display()
            );
            let scratch;
            let (base_dir, label) = match (against, against_git) {
                (Some(dir), _) => (dir.clone(), dir.display().to_string()),
                (None, Some(rev)) => {
                    scratch = tempfile::tempdir()?;
                    if !export_from_git(&contracts, &rev, scratch.path())? {
                        println!("{rev} has no contracts folder; nothing to compare against");
                        return Ok(ExitCode::SUCCESS);
                    }
                    (scratch.path().to_path_buf(), rev)
                }
                (None, None) => return Ok(ExitCode::SUCCESS),
            };
            let base = mesh_codegen::load(&base_dir)
                .with_context(|| format!("loading the previous contracts from {label}"))?;
            let changes = mesh_codegen::compare(&base, &head);
            if changes.is_empty() {
                println!("no breaking changes against {label}");
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("{} breaking change(s) against {label}:", changes.len());
            for change in &changes {
                eprintln!("  {change}");
            }
            eprintln!(
                "breaking changes go into a new major version folder (e.g. order/v2) beside the old one"
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Writes the contracts folder as it was at `rev` into `into`; false if it did not exist there.
fn export_from_git(contracts: &Path, rev: &str, into: &Path) -> anyhow::Result<bool> {
    let git = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Command::new("git")
            .arg("-C")
            .arg(contracts)
            .args(args)
            .output()
            .context("running git")
    };
    let verify = git(&[
        "rev-parse",
        "--verify",
        "--quiet",
        &format!("{rev}^{{commit}}"),
    ])?;
    if !verify.status.success() {
        bail!("git revision {rev:?} not found");
    }
    let prefix = String::from_utf8(git(&["rev-parse", "--show-prefix"])?.stdout)?;
    let prefix = prefix.trim();
    let listing = git(&["ls-tree", "-r", "--name-only", rev, "--", "."])?;
    let files = String::from_utf8(listing.stdout)?;
    let mut any = false;
    for rel in files.lines() {
        let full = format!("{prefix}{rel}");
        let blob = git(&["show", &format!("{rev}:{full}")])?;
        if !blob.status.success() {
            bail!(
                "git show {rev}:{full}: {}",
                String::from_utf8_lossy(&blob.stderr)
            );
        }
        let target = into.join(rel);
        std::fs::create_dir_all(target.parent().unwrap_or(into))?;
        std::fs::write(&target, blob.stdout)?;
        any = true;
    }
    Ok(any)
}

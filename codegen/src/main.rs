//! `mesh-codegen`: generate stubs from contracts, and check contracts for breaking changes.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use mesh_codegen::Severity;

#[derive(Parser)]
#[command(
    version,
    about = "Contracts in, code out: stubs for tonic and AMQP, and breaking-change checks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// How `check` prints the changes it finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ErrorFormat {
    Text,
    Json,
    GithubActions,
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
    /// Validates the contracts and, given a reference, fails on breaking changes against it.
    ///
    /// The reference to use is the released baseline (`--against-baseline`): comparing with the
    /// previous commit misses a break made in any but the last commit of a change.
    Check {
        /// The contracts folder to check.
        #[arg(long, default_value = "contracts")]
        contracts: PathBuf,
        /// A folder holding the previous version of the contracts.
        #[arg(long, group = "reference")]
        against: Option<PathBuf>,
        /// A git revision holding the previous version (e.g. a release tag `v0.3.0`).
        #[arg(long, group = "reference")]
        against_git: Option<String>,
        /// The released baseline, a descriptor set written by `baseline update`
        /// (default `<contracts>/baseline.binpb`).
        #[arg(long, group = "reference")]
        against_baseline: Option<Option<PathBuf>>,
        /// A tenants folder: every contract major a tenant file runs must exist.
        #[arg(long)]
        tenants: Option<PathBuf>,
        /// How changes are printed: `text` (stderr), `json` (one array on stdout, for tools),
        /// `github-actions` (annotations on the pull request's lines).
        #[arg(long, value_enum, default_value_t = ErrorFormat::Text)]
        error_format: ErrorFormat,
    },
    /// Writes a service's crate from its contract (`<root>/contracts/<name>/v<latest>/`; a
    /// starter contract first if there is none) and wires it into the platform; run again
    /// after a contract change, it rewrites `generated.rs` and appends the stubs of new calls
    /// and events to `lib.rs`, touching nothing written there.
    NewService {
        /// The service's name, lowercase snake_case (`coupon`, `gift_card`).
        name: String,
        /// A tenant that runs it from now on (`tenants/<tenant>.toml`); repeat for several.
        #[arg(long = "tenant")]
        tenants: Vec<String>,
        /// The repository's root (contracts/, services/, tenants/, Cargo.toml).
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
    /// The released baseline of the contracts, against which `check` finds breaking changes.
    Baseline {
        #[command(subcommand)]
        command: BaselineCmd,
    },
}

#[derive(Subcommand)]
enum BaselineCmd {
    /// Rewrites the baseline from the contracts as they are now. Run it when releasing, never to
    /// silence a failing check: it lists every breaking change the new baseline would absorb
    /// and refuses to write it unless `--accept-breaking` says so.
    Update {
        /// The contracts folder.
        #[arg(long, default_value = "contracts")]
        contracts: PathBuf,
        /// Where to write it (default `<contracts>/baseline.binpb`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The release this baseline is (`v0.11.0`): written with the baseline's digest into
        /// its record (`baseline.release`), without which `check` refuses the baseline.
        #[arg(long)]
        release: String,
        /// Writes it even though it absorbs breaking changes (a release that breaks on
        /// purpose; the changes are listed).
        #[arg(long)]
        accept_breaking: bool,
    },
}

/// The baseline's file name inside the contracts folder.
const BASELINE_FILE: &str = "baseline.binpb";

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
        Cmd::NewService {
            name,
            tenants,
            root,
        } => {
            let layout = mesh_codegen::scaffold::Layout::of(&root);
            let done = mesh_codegen::scaffold::new_service(&name, &layout, &tenants)?;
            println!("service {name} from contracts/{}", done.contract);
            for file in &done.written {
                println!("wrote {}", file.display());
            }
            for (file, change) in &done.edited {
                println!("edited {}: {change}", file.display());
            }
            let crate_dir = layout.services.join(&name);
            println!(
                "next: write the calls in {}, then `cargo run -p mesh-node --bin mesh -- up`",
                crate_dir.join("src/lib.rs").display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Baseline {
            command:
                BaselineCmd::Update {
                    contracts,
                    out,
                    release,
                    accept_breaking,
                },
        } => {
            if !mesh_codegen::release::valid_version(&release) {
                bail!(
                    "--release {release:?}: a release is `v` and a semantic version, e.g. v0.11.0"
                );
            }
            let set = mesh_codegen::load(&contracts)?;
            let out = out.unwrap_or_else(|| contracts.join(BASELINE_FILE));
            if out.exists() {
                let previous = mesh_codegen::load_baseline(&out)
                    .with_context(|| format!("loading the baseline {}", out.display()))?;
                let changes = mesh_codegen::compare(&previous, &set);
                let breaking: Vec<_> = changes
                    .iter()
                    .filter(|c| c.kind.severity() == Severity::Breaking)
                    .collect();
                if !breaking.is_empty() {
                    eprintln!(
                        "the new baseline absorbs {} breaking change(s) against {}:",
                        breaking.len(),
                        out.display()
                    );
                    for change in &breaking {
                        eprintln!("  {change}");
                    }
                    if !accept_breaking {
                        eprintln!(
                            "not written: a break goes into a new major; a release that breaks on purpose says so with --accept-breaking"
                        );
                        return Ok(ExitCode::FAILURE);
                    }
                    eprintln!("written anyway (--accept-breaking)");
                }
            }
            let baseline = set.baseline();
            std::fs::write(&out, &baseline)
                .with_context(|| format!("writing {}", out.display()))?;
            let record = mesh_codegen::release::record_path(&out);
            std::fs::write(&record, mesh_codegen::release::record(&release, &baseline))
                .with_context(|| format!("writing {}", record.display()))?;
            println!(
                "wrote the baseline of {} contract(s) to {}, release {release} (record {})",
                set.contracts.len(),
                out.display(),
                record.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check {
            contracts,
            against,
            against_git,
            against_baseline,
            tenants,
            error_format,
        } => check(
            contracts,
            against,
            against_git,
            against_baseline,
            tenants,
            error_format,
        ),
    }
}

/// `mesh-codegen check`: the contracts valid, every major a tenant runs present, and no
/// breaking change against what they are compared with.
fn check(
    contracts: PathBuf,
    against: Option<PathBuf>,
    against_git: Option<String>,
    against_baseline: Option<Option<PathBuf>>,
    tenants: Option<PathBuf>,
    error_format: ErrorFormat,
) -> anyhow::Result<ExitCode> {
    let head = mesh_codegen::load(&contracts)?;
    // with --error-format json, standard output holds the one JSON array and nothing
    // else: what is said besides goes to standard error
    let json = error_format == ErrorFormat::Json;
    let say = |line: String| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    say(format!(
        "{} contract(s) valid in {}",
        head.contracts.len(),
        contracts.display()
    ));
    let mut failed = false;
    if let Some(dir) = tenants {
        failed |= !tenant_majors_exist(&head, &dir, &contracts, &say)?;
    }
    let scratch;
    let scratch_used = against_git.is_some();
    let (base, label) = match (against, against_git, against_baseline) {
        (Some(dir), _, _) => (
            mesh_codegen::load(&dir).with_context(|| {
                format!("loading the previous contracts from {}", dir.display())
            })?,
            dir.display().to_string(),
        ),
        (None, Some(rev), _) => {
            scratch = tempfile::tempdir()?;
            if !export_from_git(&contracts, &rev, scratch.path())? {
                say(format!(
                    "{rev} has no contracts folder; nothing to compare against"
                ));
                if json {
                    println!("[]");
                }
                return Ok(exit(failed));
            }
            (
                mesh_codegen::load(scratch.path())
                    .with_context(|| format!("loading the previous contracts from {rev}"))?,
                rev,
            )
        }
        (None, None, Some(path)) => {
            // the repository's own baseline is only the reference if a release wrote it
            if path.is_none() {
                let path = contracts.join(BASELINE_FILE);
                match mesh_codegen::release::verify(&path) {
                    Ok(version) => say(format!(
                        "{} is the baseline of release {version}",
                        path.display()
                    )),
                    Err(problem) => {
                        eprintln!("{problem}");
                        if json {
                            println!("[]");
                        }
                        return Ok(ExitCode::FAILURE);
                    }
                }
            }
            let path = path.unwrap_or_else(|| contracts.join(BASELINE_FILE));
            (
                mesh_codegen::load_baseline(&path)
                    .with_context(|| format!("loading the baseline {}", path.display()))?,
                path.display().to_string(),
            )
        }
        (None, None, None) => {
            if json {
                println!("[]");
            }
            return Ok(exit(failed));
        }
    };
    let mut changes = mesh_codegen::compare(&base, &head);
    // an element deleted since a git revision is pointed at in that revision
    // (`HEAD~3:order/v1/order.proto:12:3`), not in a scratch folder
    if scratch_used {
        for change in &mut changes {
            if let Ok(relative) = change.location.file.strip_prefix(&base.root) {
                change.location.file = format!("{label}:{}", relative.display()).into();
            }
        }
    }
    let breaking = changes
        .iter()
        .filter(|c| c.kind.severity() == Severity::Breaking)
        .count();
    report(&changes, error_format, &label);
    if breaking > 0 {
        failed = true;
    }
    Ok(exit(failed))
}

/// Whether every contract major the tenant files in `dir` run exists in `head` (each missing
/// one said on standard error).
fn tenant_majors_exist(
    head: &mesh_codegen::ContractSet,
    dir: &Path,
    contracts: &Path,
    say: &impl Fn(String),
) -> anyhow::Result<bool> {
    let uses = mesh_codegen::tenants::tenant_uses(dir)?;
    let missing = mesh_codegen::tenants::missing_majors(head, &uses);
    for m in &missing {
        let from = if m.inherited {
            " (inherited from _defaults.toml)"
        } else {
            ""
        };
        eprintln!(
            "{}: runs contract {}{from}, which is not in {}; keep the major until no tenant runs it",
            m.file.display(),
            m.contract,
            contracts.display()
        );
    }
    if missing.is_empty() {
        say(format!(
            "every contract major the tenants in {} run exists",
            dir.display()
        ));
    }
    Ok(missing.is_empty())
}

/// Prints `changes` (found against `label`) as `format` says.
fn report(changes: &[mesh_codegen::BreakingChange], format: ErrorFormat, label: &str) {
    let breaking = changes
        .iter()
        .filter(|c| c.kind.severity() == Severity::Breaking)
        .count();
    match format {
        ErrorFormat::Json => {
            let items: Vec<serde_json::Value> = changes
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "contract": c.contract,
                        "kind": c.kind.to_string(),
                        "severity": c.kind.severity().to_string(),
                        "file": c.location.file.display().to_string(),
                        "line": c.location.line,
                        "column": c.location.column,
                        "message": c.message,
                    })
                })
                .collect();
            println!("{}", serde_json::Value::Array(items));
        }
        ErrorFormat::GithubActions => {
            for c in changes {
                let level = match c.kind.severity() {
                    Severity::Breaking => "error",
                    Severity::Warning => "warning",
                };
                // workflow commands end at a newline and treat `%` specially
                let message = c.message.replace('%', "%25").replace('\n', "%0A");
                if c.location.file.exists() {
                    let mut at = format!("file={}", c.location.file.display());
                    if let Some(line) = c.location.line {
                        at.push_str(&format!(",line={line}"));
                    }
                    if let Some(column) = c.location.column {
                        at.push_str(&format!(",col={column}"));
                    }
                    println!("::{level} {at},title={}::{message}", c.kind);
                } else {
                    // a deleted element lives only in the baseline or the revision: no line of
                    // the pull request to annotate, so the annotation says where it was
                    println!(
                        "::{level} title={}::{message} (was at {})",
                        c.kind, c.location
                    );
                }
            }
        }
        ErrorFormat::Text if changes.is_empty() => {
            println!("no breaking changes against {label}");
        }
        ErrorFormat::Text => {
            let warnings = changes.len() - breaking;
            eprintln!("{breaking} breaking change(s) and {warnings} warning(s) against {label}:");
            for change in changes {
                eprintln!("  {change}");
            }
            if changes
                .iter()
                .any(|c| c.kind.severity() == Severity::Breaking && c.contract != "common")
            {
                eprintln!(
                    "breaking changes go into a new major version folder (e.g. order/v2) beside the old one"
                );
            }
            if changes
                .iter()
                .any(|c| c.kind.severity() == Severity::Breaking && c.contract == "common")
            {
                eprintln!(
                    "shared types (common/) cannot break: add new fields or messages beside the old ones instead"
                );
            }
        }
    }
}

fn exit(failed: bool) -> ExitCode {
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
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

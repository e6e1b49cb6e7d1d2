//! `meshctl`: the ops CLI of a running mesh. Degradation switches, tenant onboarding and status,
//! over the authenticated admin API (`contracts/admin/v1`) that `mesh up` serves.
//!
//! Exit codes: 0 done; 1 the mesh refused the request (unknown tenant, switch, bad tenant
//! file...); 2 bad usage, unreadable file or no ops credential; 3 the mesh is not reachable;
//! 4 the mesh refused the ops credential.

mod client;
mod render;
mod target;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Args, Parser, Subcommand};
use mesh_api::admin::v1 as api;

use crate::{client::CtlError, render::Output};

#[derive(Parser)]
#[command(
    name = "meshctl",
    version,
    about = "Degradation switches, tenant onboarding and status of a running mesh"
)]
struct Cli {
    /// The admin API of the running mesh (`mesh up` prints `admin listening on ...`).
    #[arg(
        long,
        env = "MESH_ADMIN",
        default_value = "http://127.0.0.1:7401",
        global = true
    )]
    admin: String,
    /// The ops credential (never a tenant's); `mesh up` takes it from ops/mesh.toml.
    #[arg(long, env = "MESH_OPS_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// The CA that signed the mesh's certificate, for an `https://` admin address.
    #[arg(long, env = "MESH_ADMIN_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,
    /// This client's certificate (PEM), when the admin API asks for one (mutual TLS).
    #[arg(
        long,
        env = "MESH_ADMIN_CERT_FILE",
        global = true,
        requires = "key_file"
    )]
    cert_file: Option<PathBuf>,
    /// The key of `--cert-file` (PEM).
    #[arg(
        long,
        env = "MESH_ADMIN_KEY_FILE",
        global = true,
        requires = "cert_file"
    )]
    key_file: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Degradation switches: what is off, for whom, since when; turn them off and on.
    #[command(subcommand)]
    Switch(SwitchCmd),
    /// Business lines: validate and onboard a tenant file, list tenants and their processes.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Grey release of a contract major: to listed users and a share of all users first,
    /// then wider, then promoted to everyone, or rolled back.
    #[command(subcommand)]
    Grey(GreyCmd),
    /// Processes, tenants, bulkhead saturation, load and the latest degraded answers.
    Status,
    /// Injected latency at the front door, for drills and rehearsing automatic degradation.
    #[command(subcommand)]
    Fault(FaultCmd),
    /// Dead letters (RabbitMQ): what each tenant's consumers rejected for good, and why; replay
    /// them once the cause is fixed, or purge them.
    #[command(subcommand)]
    Dlq(DlqCmd),
    /// Who changed what, when: every admin change through any node (and every automatic
    /// degradation), newest first, with the state before and after; refused attempts too.
    Audit {
        /// Only changes of this tenant (and those of every tenant at once).
        #[arg(long)]
        tenant: Option<String>,
        /// Only this operator's (`alice`, `auto:protect-core`).
        #[arg(long)]
        operator: Option<String>,
        /// At most this many (50; at most 1000).
        #[arg(long)]
        limit: Option<u32>,
    },
}

#[derive(Subcommand)]
enum DlqCmd {
    /// Every consumer queue with its count of dead letters.
    List {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// The oldest dead letters of a queue, with the reason of each; they stay where they are.
    Show(DlqArgs),
    /// Sends the oldest dead letters of a queue back to its consumer (a message already handled
    /// is not handled again).
    Replay(DlqArgs),
    /// Deletes every dead letter of a queue.
    Purge {
        /// The queue, as `dlq list` names it.
        queue: String,
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Args)]
struct DlqArgs {
    /// The queue, as `dlq list` names it (`mesh.mall.order.v1.message`).
    queue: String,
    #[arg(long)]
    tenant: String,
    /// At most this many (show: 20; replay: all).
    #[arg(long)]
    limit: Option<u32>,
}

#[derive(Subcommand)]
enum SwitchCmd {
    /// Every switch that is off (everything else is on), with who turned it off and when.
    List,
    /// Degrades: the switch's calls answer their contract's degraded answer at once.
    Off(SwitchArgs),
    /// Restores a switch turned off by `switch off`, a tenant file or an automatic rule.
    On(SwitchArgs),
}

#[derive(Args)]
struct SwitchArgs {
    /// `recommend` (a service), `recommend.Suggest` (a method) or `tier>=2` (a tier and every
    /// less important one), optionally scoped as `switch list` shows it: `recommend@mall`,
    /// `tier>=2@all`. Or use --service/--method/--tier.
    switch: Option<String>,
    /// Only this tenant (default: every tenant).
    #[arg(long)]
    tenant: Option<String>,
    /// Every service of this tier and of every less important one (0 = core, 2 = optional).
    #[arg(long, conflicts_with_all = ["service", "method"])]
    tier: Option<u32>,
    /// A whole service.
    #[arg(long)]
    service: Option<String>,
    /// One method of --service.
    #[arg(long, requires = "service")]
    method: Option<String>,
    /// Why: shown by `switch list`.
    #[arg(long, default_value = "")]
    reason: String,
}

#[derive(Subcommand)]
enum TenantCmd {
    /// Validates a tenant file with the errors the runtime gives, without onboarding it.
    Check {
        /// The tenant file (`newco.toml`).
        file: PathBuf,
        /// Check against this tenants folder, without a running mesh.
        #[arg(long)]
        tenants: Option<PathBuf>,
    },
    /// Onboards a tenant file: the running mesh serves it without restarting anyone.
    Add {
        /// The tenant file (`newco.toml`).
        file: PathBuf,
    },
    /// Applies a changed tenant file (limits, settings, services, credential, switch
    /// defaults) to the running mesh without restarting anyone. A replaced credential stays
    /// valid for the file's `credentials.rotation_overlap_secs` (default 300).
    Update {
        /// The tenant file, under the name it has in the tenants folder (`mall.toml`).
        file: PathBuf,
    },
    /// Removes a tenant: its calls are no longer admitted, those in flight finish, its
    /// consumers stop, its file moves to the state folder's `removed/`. Its data stays.
    Remove {
        /// The tenant id.
        tenant: String,
        /// Deletes its stored messages too.
        #[arg(long)]
        purge_data: bool,
    },
    /// Moves a tenant into a process of its own or into the shared one, without failing
    /// its calls (the new process serves it, calls go there, the old one drains).
    Move {
        /// The tenant id.
        tenant: String,
        /// `own` or `shared`.
        #[arg(long, value_parser = ["own", "shared"])]
        process: String,
    },
    /// Tenants, the process serving each, its state and why it is down.
    List,
}

#[derive(Subcommand)]
enum GreyCmd {
    /// Starts a grey release (`--version`) or widens it: more users, a larger share. Their
    /// calls may use that major, and the events of their orders travel on it.
    Widen {
        /// The service (`order`).
        service: String,
        #[arg(long)]
        tenant: String,
        /// The major released (`v2`); required to start.
        #[arg(long)]
        version: Option<String>,
        /// Users added, by id (`--users u-1,u-2`).
        #[arg(long, value_delimiter = ',')]
        users: Vec<String>,
        /// Share of all users (0-100, by a stable hash of the user id); never narrows.
        #[arg(long)]
        percent: Option<u32>,
    },
    /// Ends it: everyone runs the service's version again (nothing they did is lost: both
    /// majors serve the same data).
    Rollback {
        service: String,
        #[arg(long)]
        tenant: String,
    },
    /// Ends it the other way: its major becomes the service's version for everyone.
    Promote {
        service: String,
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Subcommand)]
enum FaultCmd {
    /// Delays a tenant's calls (of one service, or all) by MS milliseconds.
    Delay {
        /// Added latency in milliseconds.
        ms: u32,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        service: Option<String>,
    },
    /// Removes an injected delay.
    Clear {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        service: Option<String>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), CtlError> {
    let out = Output { json: cli.json };
    // the one command that works without a mesh
    if let Cmd::Tenant(TenantCmd::Check {
        file,
        tenants: Some(dir),
    }) = &cli.command
    {
        let (tenant, group, updates) = client::check_locally(file, dir)?;
        out.checked(&tenant, &group, file, updates);
        return Ok(());
    }
    let tls = client::AdminTls {
        ca_file: cli.ca_file.clone(),
        identity: cli.cert_file.clone().zip(cli.key_file.clone()),
    };
    let mut admin = client::connect(&cli.admin, cli.token.as_deref(), &tls).await?;
    let refused = |status| CtlError::from_status(status, &cli.admin);
    match cli.command {
        Cmd::Audit {
            tenant,
            operator,
            limit,
        } => {
            let list = admin
                .list_audit(api::ListAuditRequest {
                    tenant: tenant.unwrap_or_default(),
                    operator: operator.unwrap_or_default(),
                    limit: limit.unwrap_or_default(),
                })
                .await
                .map_err(refused)?;
            out.audit(&list.into_inner());
        }
        Cmd::Grey(cmd) => {
            let request = match cmd {
                GreyCmd::Widen {
                    service,
                    tenant,
                    version,
                    users,
                    percent,
                } => api::SetGreyRequest {
                    tenant,
                    service,
                    action: "widen".into(),
                    version: version.unwrap_or_default(),
                    users,
                    percent,
                },
                GreyCmd::Rollback { service, tenant } => api::SetGreyRequest {
                    tenant,
                    service,
                    action: "rollback".into(),
                    ..Default::default()
                },
                GreyCmd::Promote { service, tenant } => api::SetGreyRequest {
                    tenant,
                    service,
                    action: "promote".into(),
                    ..Default::default()
                },
            };
            let action = request.action.clone();
            let changed = admin.set_grey(request).await.map_err(refused)?;
            let done = match action.as_str() {
                "widen" => "grey release widened",
                "rollback" => "grey release rolled back",
                _ => "grey release promoted",
            };
            out.changed(done, &changed.into_inner().tenants);
        }
        Cmd::Status => {
            let report = admin.status(api::StatusRequest {}).await.map_err(refused)?;
            out.status(&report.into_inner());
        }
        Cmd::Fault(cmd) => {
            let (tenant, service, delay_ms) = match cmd {
                FaultCmd::Delay {
                    ms,
                    tenant,
                    service,
                } => (tenant, service, ms),
                FaultCmd::Clear { tenant, service } => (tenant, service, 0),
            };
            let faults = admin
                .set_fault(api::SetFaultRequest {
                    tenant,
                    service: service.unwrap_or_default(),
                    delay_ms,
                })
                .await
                .map_err(refused)?;
            out.faults(&faults.into_inner().faults);
        }
        Cmd::Switch(cmd) => switch(&mut admin, cmd, &out, &refused).await?,
        Cmd::Tenant(cmd) => tenant(&mut admin, cmd, &out, &refused).await?,
        Cmd::Dlq(cmd) => dlq(&mut admin, cmd, &out, &refused).await?,
    }
    Ok(())
}

/// `meshctl switch ...` against the admin API.
async fn switch(
    admin: &mut client::Admin,
    cmd: SwitchCmd,
    out: &Output,
    refused: &impl Fn(tonic::Status) -> CtlError,
) -> Result<(), CtlError> {
    match cmd {
        SwitchCmd::List => {
            let list = admin
                .list_switches(api::ListSwitchesRequest {})
                .await
                .map_err(refused)?;
            out.switches(&list.into_inner().switches);
        }
        cmd @ (SwitchCmd::Off(_) | SwitchCmd::On(_)) => {
            let (on, args) = match cmd {
                SwitchCmd::On(args) => (true, args),
                SwitchCmd::Off(args) => (false, args),
                SwitchCmd::List => unreachable!("matched above"),
            };
            let (target, tenant) = target::resolve(&args)?;
            let scope = target::scope(&target, tenant.as_deref());
            let response = admin
                .set_switch(api::SetSwitchRequest {
                    target: Some(target),
                    tenant: tenant.unwrap_or_default(),
                    on,
                    reason: args.reason,
                })
                .await
                .map_err(refused)?;
            out.switched(&scope, on, &response.into_inner());
        }
    }
    Ok(())
}

/// `meshctl tenant ...` against the admin API.
async fn tenant(
    admin: &mut client::Admin,
    cmd: TenantCmd,
    out: &Output,
    refused: &impl Fn(tonic::Status) -> CtlError,
) -> Result<(), CtlError> {
    match cmd {
        TenantCmd::Check { file, tenants: _ } => {
            let response = admin
                .check_tenant(read_tenant_file(&file)?)
                .await
                .map_err(refused)?
                .into_inner();
            out.checked(&response.tenant, &response.group, &file, response.updates);
        }
        TenantCmd::Add { file } => {
            let added = admin
                .add_tenant(read_tenant_file(&file)?)
                .await
                .map_err(refused)?;
            out.added(&added.into_inner().tenants);
        }
        TenantCmd::Update { file } => {
            let updated = admin
                .update_tenant(read_tenant_file(&file)?)
                .await
                .map_err(refused)?;
            out.changed("updated", &updated.into_inner().tenants);
        }
        TenantCmd::Remove { tenant, purge_data } => {
            let removed = admin
                .remove_tenant(api::RemoveTenantRequest { tenant, purge_data })
                .await
                .map_err(refused)?;
            out.changed("removed", &removed.into_inner().tenants);
        }
        TenantCmd::Move { tenant, process } => {
            let moved = admin
                .move_tenant(api::MoveTenantRequest { tenant, process })
                .await
                .map_err(refused)?;
            out.changed("moved", &moved.into_inner().tenants);
        }
        TenantCmd::List => {
            let list = admin
                .list_tenants(api::ListTenantsRequest {})
                .await
                .map_err(refused)?;
            out.tenants(&list.into_inner().tenants);
        }
    }
    Ok(())
}

/// `meshctl dlq ...` against the admin API.
async fn dlq(
    admin: &mut client::Admin,
    cmd: DlqCmd,
    out: &Output,
    refused: &impl Fn(tonic::Status) -> CtlError,
) -> Result<(), CtlError> {
    match cmd {
        DlqCmd::List { tenant } => {
            let list = admin
                .list_dead_letters(api::ListDeadLettersRequest {
                    tenant: tenant.unwrap_or_default(),
                })
                .await
                .map_err(refused)?;
            out.dead_letter_queues(&list.into_inner().queues);
        }
        DlqCmd::Show(args) => {
            let letters = admin
                .show_dead_letters(dlq_request(args))
                .await
                .map_err(refused)?;
            out.dead_letters(&letters.into_inner().letters);
        }
        DlqCmd::Replay(args) => {
            let queue = args.queue.clone();
            let done = admin
                .replay_dead_letters(dlq_request(args))
                .await
                .map_err(refused)?;
            out.dead_letters_handled("replayed", &queue, done.into_inner().count);
        }
        DlqCmd::Purge { queue, tenant } => {
            let done = admin
                .purge_dead_letters(api::DeadLettersRequest {
                    tenant,
                    queue: queue.clone(),
                    limit: 0,
                })
                .await
                .map_err(refused)?;
            out.dead_letters_handled("purged", &queue, done.into_inner().count);
        }
    }
    Ok(())
}

fn dlq_request(args: DlqArgs) -> api::DeadLettersRequest {
    api::DeadLettersRequest {
        tenant: args.tenant,
        queue: args.queue,
        limit: args.limit.unwrap_or(0),
    }
}

/// The file as the admin API takes it: its name (which names the tenant's environment
/// overrides) and its text.
fn read_tenant_file(file: &Path) -> Result<api::TenantFile, CtlError> {
    let content = std::fs::read_to_string(file).map_err(|e| CtlError::File {
        path: file.to_path_buf(),
        source: e,
    })?;
    let file_name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(api::TenantFile { file_name, content })
}

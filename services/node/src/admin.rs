//! The admin API `meshctl` talks to: the `admin.v1.Admin` contract served over the
//! [`ControlPlane`], behind the ops credential (`authorization: Bearer <token>`), which is
//! distinct from every tenant's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_api::admin::v1::{self as api, admin_server::Admin};
use mesh_runtime::{
    config::ConfigError,
    control::{ControlError, ControlPlane, TenantRow},
    layers::{Switch, SwitchTarget},
};
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status, service::Interceptor};

/// Who changed a switch, when the caller does not say (the credential is shared by ops).
const OPERATOR: &str = "ops";

/// The admin service.
#[derive(Clone, Debug)]
pub struct AdminService {
    plane: ControlPlane,
    broker: Option<Broker>,
}

/// The broker the workers' events go through, reached on the first dead-letter call (so the
/// mesh starts whether or not the broker is up).
#[derive(Clone)]
struct Broker {
    uri: String,
    bus: std::sync::Arc<tokio::sync::OnceCell<mesh_amqp::AmqpBus>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the URI may carry a password
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl AdminService {
    /// Serves `plane`.
    pub fn new(plane: ControlPlane) -> Self {
        Self {
            plane,
            broker: None,
        }
    }

    /// Dead letters are read from the RabbitMQ at `uri` (the workers' `MESH_AMQP_URI`).
    pub fn with_broker(mut self, uri: Option<String>) -> Self {
        self.broker = uri.map(|uri| Broker {
            uri,
            bus: Default::default(),
        });
        self
    }

    async fn bus(&self) -> Result<&mesh_amqp::AmqpBus, Status> {
        let broker = self.broker.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "dead letters are kept by RabbitMQ; this mesh runs the embedded bus (start it with MESH_AMQP_URI)",
            )
        })?;
        broker
            .bus
            .get_or_try_init(|| {
                mesh_amqp::AmqpBus::connect(mesh_amqp::AmqpConfig {
                    uri: broker.uri.clone(),
                    ..Default::default()
                })
            })
            .await
            .map_err(bus_status)
    }

    /// The queues of `tenant` (every tenant when empty) whose dead letters ops may handle.
    fn queues(&self, tenant: &str) -> Result<Vec<(String, String)>, Status> {
        let rows = self.plane.tenants();
        if !tenant.is_empty() && !rows.iter().any(|r| r.config.id.as_str() == tenant) {
            return Err(Status::not_found(format!("unknown tenant {tenant:?}")));
        }
        let mut queues = Vec::new();
        for row in rows
            .iter()
            .filter(|r| tenant.is_empty() || r.config.id.as_str() == tenant)
        {
            let names =
                mesh_platform::queues(&row.config).map_err(|e| Status::internal(e.to_string()))?;
            queues.extend(names.into_iter().map(|q| (row.config.id.to_string(), q)));
        }
        queues.sort();
        Ok(queues)
    }

    /// Checks `queue` is one of `tenant`'s.
    fn queue_of(&self, tenant: &str, queue: &str) -> Result<(), Status> {
        if tenant.is_empty() {
            return Err(Status::invalid_argument("a tenant is required"));
        }
        let queues = self.queues(tenant)?;
        if queues.iter().any(|(_, q)| q == queue) {
            Ok(())
        } else {
            let names: Vec<&str> = queues.iter().map(|(_, q)| q.as_str()).collect();
            Err(Status::invalid_argument(format!(
                "queue {queue:?} is not a queue of tenant {tenant}; its queues: {}",
                names.join(", ")
            )))
        }
    }
}

fn bus_status(err: mesh_contract::BusError) -> Status {
    match err {
        mesh_contract::BusError::Unavailable(m) => Status::unavailable(m),
        other => Status::internal(other.to_string()),
    }
}

/// Refuses every call without the ops credential.
#[derive(Clone)]
pub struct OpsCredential {
    token: Vec<u8>,
}

impl OpsCredential {
    /// Accepts `Bearer <token>`.
    pub fn new(token: &str) -> Self {
        Self {
            token: token.as_bytes().to_vec(),
        }
    }
}

/// Says in the log that a wrong ops credential was presented: how many since it last said so,
/// at most every 10 s (someone guessing is seen; a flood of guesses does not flood the log).
fn refused_ops_credential() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static REFUSED: AtomicU64 = AtomicU64::new(0);
    static LAST_SAID_MS: AtomicU64 = AtomicU64::new(0);
    let refused = REFUSED.fetch_add(1, Ordering::Relaxed) + 1;
    let now = mesh_contract::fields::now_ms().max(0) as u64;
    let last = LAST_SAID_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 10_000
        && LAST_SAID_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        REFUSED.fetch_sub(refused, Ordering::Relaxed);
        tracing::warn!(refused, "wrong ops credentials presented to the admin API");
    }
}

impl Interceptor for OpsCredential {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| {
                Status::unauthenticated("missing ops credential (`authorization: Bearer <token>`)")
            })?
            .to_str()
            .ok()
            // the scheme's name is case-insensitive (RFC 9110)
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| {
                Status::unauthenticated("the ops credential must be `Bearer <token>`")
            })?;
        if bool::from(presented.as_bytes().ct_eq(&self.token)) {
            Ok(request)
        } else {
            refused_ops_credential();
            Err(Status::unauthenticated("wrong ops credential"))
        }
    }
}

fn status(err: ControlError) -> Status {
    let message = err.to_string();
    match err {
        ControlError::UnknownTenant(..) => Status::not_found(message),
        ControlError::UnknownSwitch(_) => Status::invalid_argument(message),
        ControlError::NotRun { .. } => Status::failed_precondition(message),
        ControlError::InvalidTenant(ConfigError::Invalid(_)) => Status::invalid_argument(message),
        ControlError::NotApplied(_) => Status::deadline_exceeded(message),
        ControlError::NotServed { .. } | ControlError::Refused(_) => {
            Status::failed_precondition(message)
        }
        ControlError::Shared(_) => Status::unavailable(message),
        ControlError::InvalidTenant(_) | ControlError::Store(_) | ControlError::Io { .. } => {
            Status::internal(message)
        }
    }
}

fn millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn target_to_api(target: &SwitchTarget) -> api::SwitchTarget {
    match target {
        SwitchTarget::Method { service, method } => api::SwitchTarget {
            service: service.clone(),
            method: method.clone(),
            tier: None,
        },
        SwitchTarget::Service(service) => api::SwitchTarget {
            service: service.clone(),
            ..Default::default()
        },
        SwitchTarget::TiersFrom(tier) => api::SwitchTarget {
            tier: Some((*tier).into()),
            ..Default::default()
        },
    }
}

fn target_from_api(target: Option<api::SwitchTarget>) -> Result<SwitchTarget, Status> {
    let target = target.unwrap_or_default();
    match (target.service.as_str(), target.method.as_str(), target.tier) {
        ("", "", Some(tier)) => Ok(SwitchTarget::TiersFrom(u8::try_from(tier).map_err(
            |_| {
                Status::invalid_argument(format!(
                    "unknown switch: {tier} is not a tier (0, 1 or 2)"
                ))
            },
        )?)),
        ("", "", None) => Err(Status::invalid_argument(
            "a switch names a service (and maybe a method) or a tier",
        )),
        (service, "", None) if !service.is_empty() => Ok(SwitchTarget::Service(service.into())),
        (service, method, None) if !service.is_empty() => Ok(SwitchTarget::Method {
            service: service.into(),
            method: method.into(),
        }),
        ("", _, _) => Err(Status::invalid_argument(
            "a method switch names its service too",
        )),
        _ => Err(Status::invalid_argument(
            "a switch names a service or a tier, not both",
        )),
    }
}

fn switch_to_api(switch: &Switch) -> api::Switch {
    api::Switch {
        target: Some(target_to_api(&switch.target)),
        tenant: switch
            .tenant
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        reason: switch.reason.clone(),
        changed_by: switch.changed_by.clone(),
        changed_at_ms: millis(switch.changed_at),
        scope: switch.scope(),
    }
}

fn tenant_to_api(row: &TenantRow) -> api::Tenant {
    api::Tenant {
        id: row.config.id.to_string(),
        display_name: row.config.display_name.clone(),
        group: row.group.clone(),
        pid: row.pid.unwrap_or_default(),
        address: row.address.clone().unwrap_or_default(),
        health: row.state.into(),
        services: row
            .config
            .enabled_services()
            .map(|(name, s)| match &s.grey {
                Some(grey) => format!(
                    "{name}@{}+{}(grey:{}users,{}%)",
                    s.version,
                    grey.version,
                    grey.users.len(),
                    grey.percent
                ),
                None => format!("{name}@{}", s.version),
            })
            .collect(),
        reason: row.reason.clone().unwrap_or_default(),
    }
}

impl AdminService {
    /// The row of `tenant`, as a list of one.
    fn row_of(&self, tenant: &mesh_contract::TenantId) -> api::TenantList {
        api::TenantList {
            tenants: self
                .plane
                .tenants()
                .iter()
                .filter(|row| row.config.id == *tenant)
                .map(tenant_to_api)
                .collect(),
        }
    }
}

fn none_if_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_switches(
        &self,
        _: Request<api::ListSwitchesRequest>,
    ) -> Result<Response<api::SwitchList>, Status> {
        Ok(Response::new(api::SwitchList {
            switches: self.plane.switches().iter().map(switch_to_api).collect(),
        }))
    }

    async fn set_switch(
        &self,
        request: Request<api::SetSwitchRequest>,
    ) -> Result<Response<api::SetSwitchResponse>, Status> {
        let request = request.into_inner();
        let target = target_from_api(request.target)?;
        let change = self
            .plane
            .set_switch(
                none_if_empty(&request.tenant),
                target,
                request.on,
                &request.reason,
                OPERATOR,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(api::SetSwitchResponse {
            switches: change.switches.iter().map(switch_to_api).collect(),
            processes_applied: u32::try_from(change.processes_applied).unwrap_or(u32::MAX),
            changed: change.changed,
            fleet: change.fleet.map(|f| api::FleetApplied {
                shared: f.shared,
                revision: f.revision,
                nodes_applied: u32::try_from(f.nodes_applied).unwrap_or(u32::MAX),
                nodes_total: u32::try_from(f.nodes_total).unwrap_or(u32::MAX),
                processes_applied: f.processes_applied,
                nodes_missing: f.nodes_missing,
            }),
        }))
    }

    async fn check_tenant(
        &self,
        request: Request<api::TenantFile>,
    ) -> Result<Response<api::CheckTenantResponse>, Status> {
        let file = request.into_inner();
        let (config, group, updates) = self
            .plane
            .check_tenant(&file.file_name, &file.content)
            .map_err(status)?;
        Ok(Response::new(api::CheckTenantResponse {
            tenant: config.id.to_string(),
            group,
            updates,
        }))
    }

    async fn add_tenant(
        &self,
        request: Request<api::TenantFile>,
    ) -> Result<Response<api::TenantList>, Status> {
        let file = request.into_inner();
        // checked (the services' settings too) before anything is written or started
        let config = self
            .plane
            .add_tenant(&file.file_name, &file.content)
            .await
            .map_err(status)?;
        Ok(Response::new(self.row_of(&config.id)))
    }

    async fn update_tenant(
        &self,
        request: Request<api::TenantFile>,
    ) -> Result<Response<api::TenantList>, Status> {
        let file = request.into_inner();
        let config = self
            .plane
            .update_tenant(&file.file_name, &file.content)
            .await
            .map_err(status)?;
        Ok(Response::new(self.row_of(&config.id)))
    }

    async fn remove_tenant(
        &self,
        request: Request<api::RemoveTenantRequest>,
    ) -> Result<Response<api::TenantList>, Status> {
        let request = request.into_inner();
        let config = self
            .plane
            .remove_tenant(&request.tenant, request.purge_data)
            .await
            .map_err(status)?;
        // its last row, now that no process serves it
        Ok(Response::new(api::TenantList {
            tenants: vec![api::Tenant {
                id: config.id.to_string(),
                display_name: config.display_name.clone(),
                group: mesh_runtime::config::group_of(&config),
                health: "removed".into(),
                ..Default::default()
            }],
        }))
    }

    async fn set_grey(
        &self,
        request: Request<api::SetGreyRequest>,
    ) -> Result<Response<api::TenantList>, Status> {
        use mesh_runtime::config::GreyChange;
        let request = request.into_inner();
        let change = match request.action.as_str() {
            "widen" => GreyChange::Widen {
                version: match request.version.as_str() {
                    "" => None,
                    v => Some(
                        v.parse()
                            .map_err(|e| Status::invalid_argument(format!("version {v:?}: {e}")))?,
                    ),
                },
                users: request.users,
                percent: request.percent.map(|p| u8::try_from(p).unwrap_or(u8::MAX)),
            },
            "rollback" => GreyChange::Rollback,
            "promote" => GreyChange::Promote,
            other => {
                return Err(Status::invalid_argument(format!(
                    "action {other:?}: `widen`, `rollback` or `promote`"
                )));
            }
        };
        let config = self
            .plane
            .grey(&request.tenant, &request.service, &change)
            .await
            .map_err(status)?;
        Ok(Response::new(self.row_of(&config.id)))
    }

    async fn move_tenant(
        &self,
        request: Request<api::MoveTenantRequest>,
    ) -> Result<Response<api::TenantList>, Status> {
        let request = request.into_inner();
        let process = match request.process.as_str() {
            "own" => mesh_runtime::config::ProcessIsolation::Own,
            "shared" => mesh_runtime::config::ProcessIsolation::Shared,
            other => {
                return Err(Status::invalid_argument(format!(
                    "process {other:?}: `own` or `shared`"
                )));
            }
        };
        let config = self
            .plane
            .move_tenant(&request.tenant, process)
            .await
            .map_err(status)?;
        Ok(Response::new(self.row_of(&config.id)))
    }

    async fn list_tenants(
        &self,
        _: Request<api::ListTenantsRequest>,
    ) -> Result<Response<api::TenantList>, Status> {
        Ok(Response::new(api::TenantList {
            tenants: self.plane.tenants().iter().map(tenant_to_api).collect(),
        }))
    }

    async fn status(
        &self,
        _: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusReport>, Status> {
        let report = self.plane.status();
        Ok(Response::new(api::StatusReport {
            processes: report
                .processes
                .iter()
                .map(|p| api::Process {
                    group: p.group.clone(),
                    pid: p.pid.unwrap_or_default(),
                    address: p.address.clone().unwrap_or_default(),
                    tenants: p.tenants.iter().map(ToString::to_string).collect(),
                    restarts: p.restarts,
                    up_for_ms: p.serving_since.map_or(0, |t| {
                        u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
                    }),
                })
                .collect(),
            tenants: report.tenants.iter().map(tenant_to_api).collect(),
            bulkheads: report
                .processes
                .iter()
                .flat_map(|p| p.stats.bulkheads.iter())
                .map(|b| api::Bulkhead {
                    tenant: b.tenant.to_string(),
                    dependency: b.dependency.clone(),
                    in_use: b.in_use,
                    capacity: b.capacity,
                })
                .collect(),
            recent_degraded: report
                .recent_degraded
                .iter()
                .map(|d| api::DegradedAnswer {
                    tenant: d.tenant.to_string(),
                    method: d.method.clone(),
                    switch: d.switch.clone(),
                    at_ms: millis(d.at),
                })
                .collect(),
            calls: report
                .processes
                .iter()
                .flat_map(|p| p.stats.calls.iter())
                .map(|c| api::MethodCalls {
                    tenant: c.tenant.clone(),
                    service: c.service.clone(),
                    major: c.major.clone(),
                    method: c.method.clone(),
                    calls: c.calls,
                    degraded: c.degraded,
                    shed: c.shed,
                    timed_out: c.timed_out,
                    errors: c.errors,
                    mean_ms: if c.calls == 0 {
                        0.0
                    } else {
                        c.total_ms / c.calls as f64
                    },
                })
                .collect(),
            load: report
                .load
                .iter()
                .map(|(tenant, load)| api::TenantLoad {
                    tenant: tenant.to_string(),
                    in_flight: load.in_flight,
                    calls: load.calls,
                    degraded: load.degraded,
                })
                .collect(),
        }))
    }

    async fn set_fault(
        &self,
        request: Request<api::SetFaultRequest>,
    ) -> Result<Response<api::FaultList>, Status> {
        let request = request.into_inner();
        let faults = self
            .plane
            .set_fault(
                &request.tenant,
                none_if_empty(&request.service),
                Duration::from_millis(request.delay_ms.into()),
            )
            .map_err(status)?;
        Ok(Response::new(api::FaultList {
            faults: faults
                .iter()
                .map(|f| api::Fault {
                    tenant: f.tenant.to_string(),
                    service: f.service.clone().unwrap_or_default(),
                    delay_ms: u32::try_from(f.delay.as_millis()).unwrap_or(u32::MAX),
                })
                .collect(),
        }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<api::ListDeadLettersRequest>,
    ) -> Result<Response<api::DeadLetterQueues>, Status> {
        let request = request.into_inner();
        let queues = self.queues(&request.tenant)?;
        let bus = self.bus().await?;
        let mut out = Vec::with_capacity(queues.len());
        // a queue not declared yet (its worker has not subscribed) holds nothing
        let count = |counted: Result<u32, mesh_contract::BusError>| match counted {
            Ok(n) => Ok(n),
            Err(mesh_contract::BusError::Topology(m)) if m.contains("NOT_FOUND") => Ok(0),
            Err(e) => Err(bus_status(e)),
        };
        for (tenant, queue) in queues {
            let dead_letters = count(bus.dead_letter_count(&queue).await)?;
            let waiting = count(bus.waiting(&queue).await)?;
            out.push(api::DeadLetterQueue {
                tenant,
                queue,
                dead_letters,
                waiting,
            });
        }
        Ok(Response::new(api::DeadLetterQueues { queues: out }))
    }

    async fn show_dead_letters(
        &self,
        request: Request<api::DeadLettersRequest>,
    ) -> Result<Response<api::DeadLetterList>, Status> {
        let request = request.into_inner();
        self.queue_of(&request.tenant, &request.queue)?;
        let limit = match request.limit {
            0 => 20,
            n => n as usize,
        };
        let letters = self
            .bus()
            .await?
            .peek_dead_letters(&request.queue, limit)
            .await
            .map_err(bus_status)?;
        Ok(Response::new(api::DeadLetterList {
            letters: letters
                .into_iter()
                .map(|l| api::DeadLetter {
                    message_id: l.message_id,
                    event: l.event,
                    reason: l.reason,
                    attempts: l.attempts,
                    bytes: u32::try_from(l.bytes).unwrap_or(u32::MAX),
                })
                .collect(),
        }))
    }

    async fn replay_dead_letters(
        &self,
        request: Request<api::DeadLettersRequest>,
    ) -> Result<Response<api::DeadLettersHandled>, Status> {
        let request = request.into_inner();
        self.queue_of(&request.tenant, &request.queue)?;
        let limit = match request.limit {
            0 => usize::MAX,
            n => n as usize,
        };
        let count = self
            .bus()
            .await?
            .replay_dead_letters(&request.queue, limit)
            .await
            .map_err(bus_status)?;
        Ok(Response::new(api::DeadLettersHandled { count }))
    }

    async fn purge_dead_letters(
        &self,
        request: Request<api::DeadLettersRequest>,
    ) -> Result<Response<api::DeadLettersHandled>, Status> {
        let request = request.into_inner();
        self.queue_of(&request.tenant, &request.queue)?;
        let count = self
            .bus()
            .await?
            .purge_dead_letters(&request.queue)
            .await
            .map_err(bus_status)?;
        Ok(Response::new(api::DeadLettersHandled { count }))
    }
}

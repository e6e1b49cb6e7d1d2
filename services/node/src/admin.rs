// Long on purpose: the admin.v1 contract's calls, each a short method of one server impl in the
// contract's order; credentials and conversions are apart (admin/).
//! The admin API `meshctl` talks to: the `admin.v1.Admin` contract served over the
//! [`ControlPlane`], behind the operators' credentials (`authorization: Bearer <token>`),
//! which are distinct from every tenant's. Each credential names an operator; every change is
//! written to the audit log under that name (`meshctl audit`), refused attempts too. Wrong
//! credentials are logged at once and throttled per source address.

use std::time::Duration;

use mesh_api::admin::v1::{self as api, admin_server::Admin};
use mesh_runtime::control::ControlPlane;
use tonic::{Request, Response, Status};

use mesh_runtime::control::audit::{AuditEntry, AuditFilter};

mod convert;
mod credential;

use convert::*;
pub use credential::OpsCredential;

/// The operator a call was made by: the name of the credential it presented.
#[derive(Clone, Debug)]
pub struct Operator(pub String);

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

impl AdminService {
    /// Each consumer queue of `tenant` (every tenant when empty) with its dead letters and
    /// the messages waiting for its consumer.
    async fn depths(&self, tenant: &str) -> Result<Vec<api::DeadLetterQueue>, Status> {
        let queues = self.queues(tenant)?;
        let bus = self.bus().await?;
        let mut out = Vec::with_capacity(queues.len());
        // a queue not declared yet (its worker has not subscribed) holds nothing
        let count = |counted: Result<Option<u32>, mesh_contract::BusError>| {
            counted.map(Option::unwrap_or_default).map_err(bus_status)
        };
        for (tenant, queue) in queues {
            let dead_letters = count(bus.dead_letter_count_if_declared(&queue).await)?;
            let waiting = count(bus.waiting_if_declared(&queue).await)?;
            out.push(api::DeadLetterQueue {
                tenant,
                queue,
                dead_letters,
                waiting,
            });
        }
        Ok(out)
    }

    /// Reads every tenant's queues from the broker every `every` and reports them as the
    /// `mesh.queue.messages` gauge (`state="waiting"`: a consumer's backlog;
    /// `state="dead_letters"`), what the alerts on backlogs and dead letters read. Nothing on
    /// the embedded bus. A read that fails keeps the last one (and says so at debug level).
    pub fn report_queues(&self, every: Duration) {
        if self.broker.is_none() {
            return;
        }
        type Rows = Vec<(String, String, u64, u64)>;
        let last: std::sync::Arc<std::sync::RwLock<Rows>> = Default::default();
        let gauge = mesh_telemetry::metrics::observe_queues({
            let last = last.clone();
            move || last.read().expect("lock").clone()
        });
        let admin = self.clone();
        tokio::spawn(async move {
            let _gauge = gauge;
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match admin.depths("").await {
                    Ok(queues) => {
                        *last.write().expect("lock") = queues
                            .into_iter()
                            .map(|q| (q.tenant, q.queue, q.waiting.into(), q.dead_letters.into()))
                            .collect();
                    }
                    Err(err) => {
                        tracing::debug!(error = %err.message(), "queue depths not read from the broker")
                    }
                }
            }
        });
    }
}

/// Who made `request`, and from where (for the audit log).
fn caller<T>(request: &Request<T>) -> (String, String) {
    let operator = request.extensions().get::<Operator>().map_or_else(
        || mesh_runtime::deploy::SHARED_OPERATOR.to_owned(),
        |o| o.0.clone(),
    );
    let peer = request
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    (operator, peer)
}

impl AdminService {
    /// How `tenant` stands, as the audit log writes it before and after a change: its process
    /// group, services, limits and a digest of its configuration (never the file, which may
    /// hold secrets); `absent` when not served.
    fn tenant_state(&self, tenant: &str) -> String {
        self.plane
            .tenants()
            .iter()
            .find(|row| row.config.id.as_str() == tenant)
            .map_or_else(
                || "absent".to_owned(),
                |row| {
                    let api = tenant_to_api(row);
                    let limits = &row.config.limits;
                    // the file's digest: any change to it shows, its secrets do not
                    let digest =
                        mesh_runtime::auth::digest_hex(format!("{:?}", row.config).as_bytes());
                    format!(
                        "group={} services={} rate={}/s burst={} terminals={} config={}",
                        api.group,
                        api.services.join(","),
                        limits.requests_per_second,
                        limits.burst,
                        limits.max_terminals,
                        &digest[..12]
                    )
                },
            )
    }

    /// The delay a fault drill adds to `service` of `tenant` (all its services: `None`).
    fn fault_state(&self, tenant: &str, service: Option<&str>) -> String {
        self.plane
            .faults()
            .iter()
            .find(|f| f.tenant.as_str() == tenant && f.service.as_deref() == service)
            .map_or_else(
                || "no delay".to_owned(),
                |f| format!("{} ms added", f.delay.as_millis()),
            )
    }

    /// Writes `entry` to the audit log with how `result` ended (`after` of what it answered,
    /// or the refusal), and hands `result` on. An entry that cannot be written is an error in
    /// the node's log; the change itself stands.
    async fn audited<R>(
        &self,
        entry: AuditEntry,
        result: Result<R, Status>,
        after: impl FnOnce(&R) -> String,
    ) -> Result<R, Status> {
        let entry = match &result {
            Ok(answer) => entry.after(after(answer)),
            Err(refused) => entry.refused(format!("{:?}: {}", refused.code(), refused.message())),
        };
        if let Err(err) = self.plane.audit().record(entry).await {
            tracing::error!(error = %err, "an admin change could not be written to the audit log");
        }
        result
    }

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
        let (operator, peer) = caller(&request);
        let request = request.into_inner();
        let target = target_from_api(request.target)?;
        let tenant = none_if_empty(&request.tenant);
        let scope = format!("{target}@{}", tenant.unwrap_or("all"));
        let before = self
            .plane
            .switches()
            .into_iter()
            .find(|s| s.tenant.as_ref().map(|t| t.as_str()) == tenant && s.target == target)
            .map_or_else(
                || "on".to_owned(),
                |s| format!("off (by {}: {})", s.changed_by, s.reason),
            );
        let entry = AuditEntry::new(
            &operator,
            if request.on {
                "switch.on"
            } else {
                "switch.off"
            },
            scope,
        )
        .tenant(tenant.unwrap_or("*"))
        .before(before)
        .reason(&request.reason)
        .peer(peer);
        let result = self
            .plane
            .set_switch(tenant, target, request.on, &request.reason, &operator)
            .await
            .map_err(status);
        let change = self
            .audited(entry, result, |change| match (request.on, change.changed) {
                (true, true) => "on".to_owned(),
                (true, false) => "on (it was not off)".to_owned(),
                (false, _) => "off".to_owned(),
            })
            .await?;
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
        let (operator, peer) = caller(&request);
        let file = request.into_inner();
        let entry = AuditEntry::new(&operator, "tenant.add", &file.file_name)
            .before("absent")
            .peer(peer);
        // checked (the services' settings too) before anything is written or started
        let result = self
            .plane
            .add_tenant(&file.file_name, &file.content)
            .await
            .map_err(status);
        let entry = match &result {
            Ok(config) => entry.tenant(config.id.to_string()),
            Err(_) => entry,
        };
        let config = self
            .audited(entry, result, |config| {
                self.tenant_state(config.id.as_str())
            })
            .await?;
        Ok(Response::new(self.row_of(&config.id)))
    }

    async fn update_tenant(
        &self,
        request: Request<api::TenantFile>,
    ) -> Result<Response<api::TenantList>, Status> {
        let (operator, peer) = caller(&request);
        let file = request.into_inner();
        // the tenant the file names, as far as it reads: the entry's subject either way
        let named = self
            .plane
            .check_tenant(&file.file_name, &file.content)
            .map(|(config, _, _)| config.id.to_string())
            .unwrap_or_default();
        let entry = AuditEntry::new(&operator, "tenant.update", &file.file_name)
            .tenant(&named)
            .before(self.tenant_state(&named))
            .peer(peer);
        let result = self
            .plane
            .update_tenant(&file.file_name, &file.content)
            .await
            .map_err(status);
        let config = self
            .audited(entry, result, |config| {
                self.tenant_state(config.id.as_str())
            })
            .await?;
        Ok(Response::new(self.row_of(&config.id)))
    }

    async fn remove_tenant(
        &self,
        request: Request<api::RemoveTenantRequest>,
    ) -> Result<Response<api::TenantList>, Status> {
        let (operator, peer) = caller(&request);
        let request = request.into_inner();
        let entry = AuditEntry::new(&operator, "tenant.remove", &request.tenant)
            .tenant(&request.tenant)
            .before(self.tenant_state(&request.tenant))
            .reason(if request.purge_data {
                "data purged"
            } else {
                "data kept"
            })
            .peer(peer);
        let result = self
            .plane
            .remove_tenant(&request.tenant, request.purge_data)
            .await
            .map_err(status);
        let config = self.audited(entry, result, |_| "absent".to_owned()).await?;
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
        let (operator, peer) = caller(&request);
        let request = request.into_inner();
        let entry = AuditEntry::new(
            &operator,
            "tenant.grey",
            format!("{}@{} {}", request.service, request.tenant, request.action),
        )
        .tenant(&request.tenant)
        .before(self.tenant_state(&request.tenant))
        .peer(peer);
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
        let result = self
            .plane
            .grey(&request.tenant, &request.service, &change)
            .await
            .map_err(status);
        let config = self
            .audited(entry, result, |config| {
                self.tenant_state(config.id.as_str())
            })
            .await?;
        Ok(Response::new(self.row_of(&config.id)))
    }

    async fn move_tenant(
        &self,
        request: Request<api::MoveTenantRequest>,
    ) -> Result<Response<api::TenantList>, Status> {
        let (operator, peer) = caller(&request);
        let request = request.into_inner();
        let entry = AuditEntry::new(
            &operator,
            "tenant.move",
            format!("{} to {}", request.tenant, request.process),
        )
        .tenant(&request.tenant)
        .before(self.tenant_state(&request.tenant))
        .peer(peer);
        let process = match request.process.as_str() {
            "own" => mesh_runtime::config::ProcessIsolation::Own,
            "shared" => mesh_runtime::config::ProcessIsolation::Shared,
            other => {
                return Err(Status::invalid_argument(format!(
                    "process {other:?}: `own` or `shared`"
                )));
            }
        };
        let result = self
            .plane
            .move_tenant(&request.tenant, process)
            .await
            .map_err(status);
        let config = self
            .audited(entry, result, |config| {
                self.tenant_state(config.id.as_str())
            })
            .await?;
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
                    over_quota: c.over_quota,
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
        let (operator, peer) = caller(&request);
        let request = request.into_inner();
        let entry = AuditEntry::new(
            &operator,
            "fault.set",
            format!(
                "{}@{}",
                none_if_empty(&request.service).unwrap_or("*"),
                request.tenant
            ),
        )
        .tenant(&request.tenant)
        .peer(peer)
        .before(self.fault_state(&request.tenant, none_if_empty(&request.service)));
        let result = self
            .plane
            .set_fault(
                &request.tenant,
                none_if_empty(&request.service),
                Duration::from_millis(request.delay_ms.into()),
            )
            .map_err(status);
        let faults = self
            .audited(entry, result, |_| match request.delay_ms {
                0 => "no delay".to_owned(),
                ms => format!("{ms} ms added"),
            })
            .await?;
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
        Ok(Response::new(api::DeadLetterQueues {
            queues: self.depths(&request.tenant).await?,
        }))
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
        let (operator, peer) = caller(&request);
        let request = request.into_inner();
        let entry = AuditEntry::new(&operator, "dead_letters.replay", &request.queue)
            .tenant(&request.tenant)
            .peer(peer);
        let limit = match request.limit {
            0 => usize::MAX,
            n => n as usize,
        };
        let result = async {
            self.queue_of(&request.tenant, &request.queue)?;
            self.bus()
                .await?
                .replay_dead_letters(&request.queue, limit)
                .await
                .map_err(bus_status)
        }
        .await;
        let count = self
            .audited(entry, result, |count| format!("{count} replayed"))
            .await?;
        Ok(Response::new(api::DeadLettersHandled { count }))
    }

    async fn purge_dead_letters(
        &self,
        request: Request<api::DeadLettersRequest>,
    ) -> Result<Response<api::DeadLettersHandled>, Status> {
        let (operator, peer) = caller(&request);
        let request = request.into_inner();
        let entry = AuditEntry::new(&operator, "dead_letters.purge", &request.queue)
            .tenant(&request.tenant)
            .peer(peer);
        let result = async {
            self.queue_of(&request.tenant, &request.queue)?;
            self.bus()
                .await?
                .purge_dead_letters(&request.queue)
                .await
                .map_err(bus_status)
        }
        .await;
        let count = self
            .audited(entry, result, |count| format!("{count} purged"))
            .await?;
        Ok(Response::new(api::DeadLettersHandled { count }))
    }

    async fn list_audit(
        &self,
        request: Request<api::ListAuditRequest>,
    ) -> Result<Response<api::AuditList>, Status> {
        let request = request.into_inner();
        let filter = AuditFilter {
            tenant: none_if_empty(&request.tenant).map(str::to_owned),
            operator: none_if_empty(&request.operator).map(str::to_owned),
            limit: request.limit as usize,
        };
        let (entries, partial) = self.plane.audit().list(&filter).await;
        Ok(Response::new(api::AuditList {
            entries: entries
                .into_iter()
                .map(|e| api::AuditEntry {
                    id: e.id,
                    at_ms: e.at_ms,
                    operator: e.operator,
                    action: e.action,
                    tenant: e.tenant,
                    subject: e.subject,
                    before: e.before,
                    after: e.after,
                    outcome: e.outcome,
                    node: e.node,
                    peer: e.peer,
                    reason: e.reason,
                })
                .collect(),
            partial,
        }))
    }
}

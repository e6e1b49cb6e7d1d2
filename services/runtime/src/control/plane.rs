//! The control plane `mesh up` runs: it owns the switch state (persisted), the tenant set, the
//! supervisor and the front door, and does what ops ask through the admin API.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, SystemTime},
};

use mesh_contract::{ContractSpec, TenantId};

use super::{
    rules::{self, RuleAction, RuleState},
    store::{SavedSwitches, StoreError, SwitchStore},
};
use crate::{
    config::{self, ConfigError, TenantConfig, Tenants, group_of},
    front_door::{DegradedSeen, Fault, FrontDoor, TenantLoad},
    layers::{Catalogue, Switch, SwitchBoard, SwitchTarget},
    supervisor::{self, ProcessInfo, Supervisor},
};

/// How long a change may take to reach every worker before the call says which did not.
const APPLY_WITHIN: Duration = Duration::from_secs(3);
/// How long an onboarded tenant's process may take to serve it.
const ONBOARD_WITHIN: Duration = Duration::from_secs(60);
/// How often automatic rules look at the calls.
const RULE_TICK: Duration = Duration::from_millis(200);

/// What the control plane refuses, and why.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No tenant with this id runs here.
    #[error("unknown tenant {0:?}; tenants: {1}")]
    UnknownTenant(String, String),
    /// The switch names no service, method or tier of the catalogue.
    #[error("unknown switch: {0}")]
    UnknownSwitch(String),
    /// The tenant does not run the service the switch names.
    #[error("tenant {tenant} does not run {service}; it runs: {runs}")]
    NotRun {
        /// The tenant.
        tenant: String,
        /// The service named.
        service: String,
        /// What it runs.
        runs: String,
    },
    /// A tenant file is invalid.
    #[error(transparent)]
    InvalidTenant(#[from] ConfigError),
    /// The change is saved but some processes did not confirm it in time.
    #[error(
        "saved, but process group(s) {} did not confirm within {APPLY_WITHIN:?}; they apply it before serving again",
        .0.join(", ")
    )]
    NotApplied(Vec<String>),
    /// An onboarded tenant is not served in time.
    #[error(
        "tenant {0} was added but no process serves it after {ONBOARD_WITHIN:?}; see `meshctl status`"
    )]
    NotServed(String),
    /// The switch state could not be saved or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing the tenant file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// A change of one switch.
#[derive(Clone, Debug)]
pub struct SwitchChange {
    /// Every switch off after the change.
    pub switches: Vec<Switch>,
    /// Processes that applied it: for a switch of one tenant, those serving that tenant.
    pub processes_applied: usize,
    /// False when the switch was already in the asked state.
    pub changed: bool,
}

/// A tenant and where it runs.
#[derive(Clone, Debug)]
pub struct TenantRow {
    /// Its config.
    pub config: TenantConfig,
    /// Its process group.
    pub group: String,
    /// The process serving it, if one does.
    pub pid: Option<u32>,
    /// Where.
    pub address: Option<String>,
    /// Routed by the front door now.
    pub serving: bool,
}

/// What `meshctl status` shows.
#[derive(Clone, Debug)]
pub struct StatusReport {
    /// Every process.
    pub processes: Vec<ProcessInfo>,
    /// Every tenant.
    pub tenants: Vec<TenantRow>,
    /// Traffic by tenant.
    pub load: Vec<(TenantId, TenantLoad)>,
    /// Newest first.
    pub recent_degraded: Vec<DegradedSeen>,
}

/// The switches a mesh starts with: the saved state, plus the initial switches of the config
/// of every tenant the saved state does not know (a tenant new since the last run).
pub fn initial_switches(
    tenants: &Tenants,
    store: &SwitchStore,
) -> Result<SavedSwitches, StoreError> {
    let mut saved = store.load()?.unwrap_or_default();
    let board = SwitchBoard::new(Catalogue(&[]));
    board.replace_all(std::mem::take(&mut saved.switches));
    for config in tenants.tenants.values() {
        let tenant = config.tenant_id();
        if saved.tenants.insert(tenant) {
            let mut one = Tenants::default();
            one.tenants.insert(config.id.to_string(), config.clone());
            for switch in SwitchBoard::from_tenants(&one, Catalogue(&[])).list() {
                board.turn_off(switch);
            }
        }
    }
    saved.switches = board.list();
    Ok(saved)
}

struct Plane {
    dir: PathBuf,
    catalogue: &'static [&'static ContractSpec],
    tenants: RwLock<Tenants>,
    known: Mutex<SavedSwitches>,
    board: SwitchBoard,
    store: SwitchStore,
    supervisor: Supervisor,
    front: FrontDoor,
    /// Serializes changes: each is saved and handed to the workers in the order it was made.
    edit: tokio::sync::Mutex<()>,
    rules: Mutex<HashMap<(TenantId, String), RuleState>>,
}

/// The control plane. Cheap to clone.
#[derive(Clone)]
pub struct ControlPlane {
    plane: Arc<Plane>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("dir", &self.plane.dir)
            .finish()
    }
}

impl ControlPlane {
    /// Takes over a running supervisor (built with [`initial_switches`]) and starts every
    /// tenant group of `tenants`.
    pub fn start(
        dir: PathBuf,
        catalogue: &'static [&'static ContractSpec],
        tenants: Tenants,
        saved: SavedSwitches,
        store: SwitchStore,
        supervisor: Supervisor,
        front: FrontDoor,
    ) -> Result<Self, ControlError> {
        store.save(&saved)?;
        let board = SwitchBoard::new(Catalogue(catalogue));
        board.replace_all(saved.switches.clone());
        let mut rules = HashMap::new();
        // a rule whose switch is still off (the mesh restarted during an incident) owns it
        for switch in &saved.switches {
            if let (Some(tenant), Some(rule)) =
                (&switch.tenant, switch.changed_by.strip_prefix("auto:"))
            {
                rules.insert(
                    (tenant.clone(), rule.to_owned()),
                    RuleState {
                        active: true,
                        calm_since: None,
                    },
                );
            }
        }
        for group in supervisor::groups(&tenants) {
            supervisor.start_group(group);
        }
        Ok(Self {
            plane: Arc::new(Plane {
                dir,
                catalogue,
                tenants: RwLock::new(tenants),
                known: Mutex::new(saved),
                board,
                store,
                supervisor,
                front,
                edit: tokio::sync::Mutex::default(),
                rules: Mutex::new(rules),
            }),
        })
    }

    /// Every switch that is off.
    pub fn switches(&self) -> Vec<Switch> {
        self.plane.board.list()
    }

    fn tenant(&self, id: &str) -> Result<TenantId, ControlError> {
        let tenants = self.plane.tenants.read().expect("lock");
        match tenants.get(id) {
            Some(config) => Ok(config.tenant_id()),
            None => Err(ControlError::UnknownTenant(
                id.to_owned(),
                tenants
                    .tenants
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }

    /// Turns a switch off (`on` false) or back on, for `tenant` or every tenant, and waits
    /// until every process applied it.
    pub async fn set_switch(
        &self,
        tenant: Option<&str>,
        target: SwitchTarget,
        on: bool,
        reason: &str,
        changed_by: &str,
    ) -> Result<SwitchChange, ControlError> {
        let tenant = tenant.map(|t| self.tenant(t)).transpose()?;
        target
            .validate(self.plane.catalogue)
            .map_err(ControlError::UnknownSwitch)?;
        // a switch for one tenant names something that tenant runs
        if let (
            Some(tenant),
            SwitchTarget::Service(service) | SwitchTarget::Method { service, .. },
        ) = (&tenant, &target)
        {
            let tenants = self.plane.tenants.read().expect("lock");
            if let Some(config) = tenants.get(tenant.as_str()) {
                let runs: Vec<&str> = config.enabled_services().map(|(name, _)| name).collect();
                if !runs.contains(&service.as_str()) {
                    return Err(ControlError::NotRun {
                        tenant: tenant.to_string(),
                        service: service.clone(),
                        runs: runs.join(", "),
                    });
                }
            }
        }
        let switch = Switch {
            tenant,
            target,
            reason: reason.to_owned(),
            changed_by: changed_by.to_owned(),
            changed_at: SystemTime::now(),
        };
        let scope = switch.tenant.clone();
        let (changed, version) = self.change(switch, on).await?;
        let all_applied = self.await_version(version).await?;
        // for one tenant: the processes that serve it (every process applied the change)
        let processes_applied = match &scope {
            Some(tenant) => self
                .plane
                .supervisor
                .processes()
                .iter()
                .filter(|p| p.pid.is_some() && p.tenants.contains(tenant))
                .count(),
            None => all_applied,
        };
        Ok(SwitchChange {
            switches: self.switches(),
            processes_applied,
            changed,
        })
    }

    /// Applies one switch change: board, saved state, workers. Returns whether it changed
    /// anything and the version to await.
    async fn change(&self, switch: Switch, on: bool) -> Result<(bool, u64), ControlError> {
        let _edit = self.plane.edit.lock().await;
        let changed = if on {
            self.plane
                .board
                .turn_on(switch.tenant.as_ref(), &switch.target)
        } else {
            self.plane.board.turn_off(switch);
            true
        };
        self.save()?;
        Ok((changed, self.plane.supervisor.set_switches(self.switches())))
    }

    fn save(&self) -> Result<(), ControlError> {
        let mut known = self.plane.known.lock().expect("lock");
        known.switches = self.plane.board.list();
        self.plane.store.save(&known)?;
        Ok(())
    }

    async fn await_version(&self, version: u64) -> Result<usize, ControlError> {
        self.plane
            .supervisor
            .wait_applied(version, APPLY_WITHIN)
            .await
            .map_err(ControlError::NotApplied)
    }

    /// Validates a tenant file as onboarding it would; the tenant and its process group.
    pub fn check_tenant(
        &self,
        file_name: &str,
        content: &str,
    ) -> Result<(TenantConfig, String), ControlError> {
        let tenants = self.plane.tenants.read().expect("lock");
        let config = config::check_new(
            &self.plane.dir,
            &tenants,
            file_name,
            content,
            self.plane.catalogue,
        )?;
        let group = group_of(&config);
        Ok((config, group))
    }

    /// Onboards a tenant file: writes it into the tenants folder, applies its initial switches
    /// and has a process serve it (a new one if it is isolated, the shared one otherwise)
    /// without restarting any other. Returns once the front door routes it.
    pub async fn add_tenant(
        &self,
        file_name: &str,
        content: &str,
    ) -> Result<TenantConfig, ControlError> {
        let (version, config) = {
            let _edit = self.plane.edit.lock().await;
            let (config, _) = self.check_tenant(file_name, content)?;
            let path = self.plane.dir.join(file_name);
            std::fs::write(&path, content).map_err(|source| ControlError::Io {
                path: path.clone(),
                source,
            })?;
            let tenant = config.tenant_id();
            {
                let mut tenants = self.plane.tenants.write().expect("lock");
                tenants
                    .tenants
                    .insert(config.id.to_string(), config.clone());
                tenants.files.insert(config.id.to_string(), path);
            }
            let mut one = Tenants::default();
            one.tenants.insert(config.id.to_string(), config.clone());
            for switch in SwitchBoard::from_tenants(&one, Catalogue(&[])).list() {
                self.plane.board.turn_off(switch);
            }
            self.plane
                .known
                .lock()
                .expect("lock")
                .tenants
                .insert(tenant.clone());
            // the front door authenticates its callers from now on
            self.plane.front.serve_tenant(&config);
            self.save()?;
            self.plane.supervisor.set_switches(self.switches());
            let version = self
                .plane
                .supervisor
                .add_tenant(tenant, config.isolation.process);
            (version, config)
        };
        let deadline = Instant::now() + ONBOARD_WITHIN;
        while self.plane.front.address(&config.tenant_id()).is_none() {
            if Instant::now() > deadline {
                return Err(ControlError::NotServed(config.id.to_string()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.await_version(version).await?;
        Ok(config)
    }

    /// Every tenant and where it runs.
    pub fn tenants(&self) -> Vec<TenantRow> {
        let processes = self.plane.supervisor.processes();
        let tenants = self.plane.tenants.read().expect("lock");
        tenants
            .tenants
            .values()
            .map(|config| {
                let tenant = config.tenant_id();
                let process = processes.iter().find(|p| p.tenants.contains(&tenant));
                let address = self.plane.front.address(&tenant);
                TenantRow {
                    config: config.clone(),
                    group: process.map_or_else(|| group_of(config), |p| p.group.clone()),
                    pid: process.and_then(|p| p.pid),
                    serving: address.is_some(),
                    address,
                }
            })
            .collect()
    }

    /// Processes, tenants, traffic and recent degraded answers.
    pub fn status(&self) -> StatusReport {
        StatusReport {
            processes: self.plane.supervisor.processes(),
            tenants: self.tenants(),
            load: self.plane.front.load(),
            recent_degraded: self.plane.front.recent_degraded(),
        }
    }

    /// Injects latency into a tenant's calls (zero clears it); the faults in force.
    pub fn set_fault(
        &self,
        tenant: &str,
        service: Option<&str>,
        delay: Duration,
    ) -> Result<Vec<Fault>, ControlError> {
        let tenant = self.tenant(tenant)?;
        if let Some(service) = service {
            SwitchTarget::Service(service.to_owned())
                .validate(self.plane.catalogue)
                .map_err(ControlError::UnknownSwitch)?;
        }
        self.plane
            .front
            .set_fault(tenant, service.map(str::to_owned), delay);
        Ok(self.plane.front.faults())
    }

    /// Runs the tenants' automatic degradation rules until `stop` resolves.
    pub async fn run_rules(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(RULE_TICK);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => self.check_rules().await,
            }
        }
    }

    async fn check_rules(&self) {
        let rules: Vec<(TenantId, config::AutoRule)> = {
            let tenants = self.plane.tenants.read().expect("lock");
            tenants
                .tenants
                .values()
                .flat_map(|c| c.auto_degrade.iter().map(|r| (c.tenant_id(), r.clone())))
                .collect()
        };
        for (tenant, rule) in rules {
            let stats = self.plane.front.window(
                &tenant,
                rule.watch_tier,
                Duration::from_secs(rule.window_secs.into()),
            );
            let target = SwitchTarget::TiersFrom(rule.switch_off_tiers_from);
            let by = format!("auto:{}", rule.name);
            let action = {
                let mut states = self.plane.rules.lock().expect("lock");
                let state = states
                    .entry((tenant.clone(), rule.name.clone()))
                    .or_default();
                let action = rules::step(&rule, &stats, state, Instant::now());
                let current = self
                    .switches()
                    .into_iter()
                    .find(|s| s.tenant.as_ref() == Some(&tenant) && s.target == target);
                match (&action, current) {
                    // an operator holds the same switch: theirs to restore, not the rule's
                    (RuleAction::TurnOff(_), Some(_)) => {
                        *state = RuleState::default();
                        RuleAction::Nothing
                    }
                    (RuleAction::TurnOn, Some(s)) if s.changed_by != by => RuleAction::Nothing,
                    _ => action,
                }
            };
            let switch = Switch {
                tenant: Some(tenant.clone()),
                target: target.clone(),
                reason: String::new(),
                changed_by: by.clone(),
                changed_at: SystemTime::now(),
            };
            let result = match action {
                RuleAction::Nothing => continue,
                RuleAction::TurnOff(reason) => {
                    tracing::warn!(%tenant, rule = rule.name, %target, %reason, "automatic degradation: switched off");
                    self.change(Switch { reason, ..switch }, false).await
                }
                RuleAction::TurnOn => {
                    tracing::warn!(%tenant, rule = rule.name, %target, "automatic degradation: calm again, switched back on");
                    self.change(switch, true).await
                }
            };
            if let Err(err) = result {
                tracing::error!(%tenant, rule = rule.name, error = %err, "automatic degradation failed");
            }
        }
    }
}

// Long on purpose: the tenant lifecycle's operations (check, add, update, grey release, remove,
// move) side by side, each with its fleet sharing, so their steps can be compared.
//! The tenant lifecycle while running: check, add, update, grey releases, remove, move; shared
//! by the fleet's nodes through the tenant registry.

use super::*;

impl ControlPlane {
    /// Shares the tenant registry with the other nodes of a mesh through `shared`: a node
    /// joining takes the registry (adding, updating, moving and removing its own tenants to
    /// match; the first node of a mesh, or the first after the store restarted empty, fills it
    /// with its own), and every tenant added, updated, moved or removed through another node
    /// is so here too, checked and served as through this node: on each announcement and every
    /// [`RECONCILE_EVERY`].
    pub async fn share_tenants(&self, shared: SharedTenants) -> Result<(), ControlError> {
        let _ = self.plane.shared_tenants.set(shared.clone());
        {
            let _edit = self.plane.edit.lock().await;
            self.reconcile_tenants_locked().await?;
        }
        let wake = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(shared.clone().on_announcement({
            let wake = wake.clone();
            move || wake.notify_one()
        }));
        let plane = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(RECONCILE_EVERY) => {}
                }
                let behind = match shared.head().await {
                    Ok(head) => {
                        let sync = plane.plane.tenant_sync.lock().expect("lock");
                        sync.dirty || head != (sync.epoch.clone(), sync.revision)
                    }
                    Err(_) => {
                        plane.plane.tenant_sync.lock().expect("lock").dirty = true;
                        false
                    }
                };
                if behind {
                    let _edit = plane.plane.edit.lock().await;
                    if let Err(err) = plane.reconcile_tenants_locked().await {
                        tracing::warn!(error = %err, "reconciling the shared tenant registry");
                    }
                }
            }
        });
        Ok(())
    }

    /// Makes this node and the shared tenant registry agree (the edit lock held): fills a
    /// registry that restarted empty, writes the tenant changes made here since the last
    /// reconciliation (one entry per tenant, never the whole registry), then serves here what
    /// the registry holds.
    pub(super) async fn reconcile_tenants_locked(&self) -> Result<(), SharedError> {
        let Some(shared) = self.plane.shared_tenants.get() else {
            return Ok(());
        };
        let result = self.reconcile_tenants_with(shared).await;
        self.plane.tenant_sync.lock().expect("lock").dirty = result.is_err();
        result
    }

    pub(super) async fn reconcile_tenants_with(
        &self,
        shared: &SharedTenants,
    ) -> Result<(), SharedError> {
        let (known_epoch, view, base) = {
            let sync = self.plane.tenant_sync.lock().expect("lock");
            (sync.epoch.clone(), sync.view.clone(), sync.base.clone())
        };
        let (epoch, _) = shared.head().await?;
        let first_contact = known_epoch.is_none();
        // the changes made here since the last reconciliation: what this node serves that it
        // did not then (added, updated, moved), and what it served then and does not now
        // (removed). Never the tenants a shared change failed to be served here: those stay
        // the registry's, not removed by this node's failure
        let now = self.sources();
        let mut changes: Vec<TenantEntry> = now
            .iter()
            .filter(|(id, source)| base.get(*id) != Some(*source))
            .map(|(_, source)| TenantEntry {
                removed: false,
                source: source.clone(),
            })
            .collect();
        changes.extend(
            base.iter()
                .filter(|(id, _)| !now.contains_key(*id))
                .map(|(_, source)| TenantEntry {
                    removed: true,
                    source: source.clone(),
                }),
        );
        let known = || -> Vec<TenantEntry> {
            let mut known: BTreeMap<String, TenantEntry> = view
                .iter()
                .map(|(k, (_, e))| (k.clone(), e.clone()))
                .collect();
            for change in &changes {
                known.insert(change.source.id.to_string(), change.clone());
            }
            if first_contact {
                for source in now.values() {
                    known.insert(
                        source.id.to_string(),
                        TenantEntry {
                            removed: false,
                            source: source.clone(),
                        },
                    );
                }
            }
            known.into_values().collect()
        };
        if epoch.is_none() || (!first_contact && epoch != known_epoch) {
            // an empty registry (Redis restarted empty, or this mesh's first node), or one
            // another node refilled: it gets what this node knew, where it lacks it
            shared.seed(&known()).await?;
        }
        if !first_contact {
            for change in &changes {
                if shared.write(change).await?.is_none() {
                    shared.seed(&known()).await?;
                    shared.write(change).await?;
                }
            }
        }
        let snapshot = shared.snapshot().await?;
        let wanted = snapshot.live();
        if wanted != self.sources() {
            self.apply_shared_tenants_locked(wanted).await;
        }
        let mut sync = self.plane.tenant_sync.lock().expect("lock");
        sync.epoch = snapshot.epoch;
        sync.revision = snapshot.revision;
        sync.view = snapshot.entries;
        sync.base = self.sources();
        Ok(())
    }

    /// Every tenant's file, as served.
    pub(super) fn sources(&self) -> BTreeMap<TenantId, TenantSource> {
        self.plane
            .sources
            .lock()
            .expect("lock")
            .iter()
            .map(|(id, source)| (id.clone(), source.clone()))
            .collect()
    }

    /// After the tenant set or a tenant's file changed (the edit lock held): tells the other
    /// nodes, when they share the registry; while the store is away, the change is written
    /// when it is back.
    pub(super) async fn tenants_changed(&self) {
        if self.plane.shared_tenants.get().is_some()
            && let Err(err) = self.reconcile_tenants_locked().await
        {
            tracing::warn!(error = %err, "tenant change applied on this node only until the shared store is back");
        }
    }

    /// Makes this node's tenants those the registry holds (the edit lock held); what one of
    /// them cannot be here is said in the log and left as it was.
    pub(super) async fn apply_shared_tenants_locked(
        &self,
        wanted: BTreeMap<TenantId, TenantSource>,
    ) {
        let have = self.sources();
        for (id, source) in &wanted {
            let done = match have.get(id) {
                None => self.add_locked(&source.file, &source.text).await.map(drop),
                Some(old) if old.text != source.text => {
                    let process = config::load_text(
                        &self.plane.dir,
                        &source.file,
                        &source.text,
                        self.plane.catalogue,
                    )
                    .map(|c| c.isolation.process);
                    match process {
                        Ok(process)
                            if self
                                .config_of(id)
                                .is_ok_and(|c| c.isolation.process != process) =>
                        {
                            self.move_locked(id.as_str(), process).await.map(drop)
                        }
                        _ => self
                            .apply_update(&source.file, &source.text)
                            .await
                            .map(drop),
                    }
                }
                Some(_) => Ok(()),
            };
            if let Err(err) = done {
                tracing::error!(tenant = %id, error = %err, "a tenant shared by another node is not served here");
            }
        }
        for id in have.keys().filter(|id| !wanted.contains_key(*id)) {
            if let Err(err) = self.remove_locked(id.as_str(), false).await {
                tracing::error!(tenant = %id, error = %err, "a tenant another node removed is still here");
            }
        }
    }

    pub(super) fn save(&self) -> Result<(), ControlError> {
        let mut known = self.plane.known.lock().expect("lock");
        known.switches = self.plane.board.list();
        self.plane.store.save(&known)?;
        Ok(())
    }

    pub(super) async fn await_version(&self, version: u64) -> Result<usize, ControlError> {
        self.plane
            .supervisor
            .wait_applied(version, APPLY_WITHIN)
            .await
            .map_err(ControlError::NotApplied)
    }

    /// Validates a tenant file as `tenant add` would, or as `tenant update` would when it is
    /// the file of a tenant served already (a dry run of either): the tenant, its process
    /// group, and whether the file would update a tenant.
    pub fn check_tenant(
        &self,
        file_name: &str,
        content: &str,
    ) -> Result<(TenantConfig, String, bool), ControlError> {
        let updates = self
            .plane
            .tenants
            .read()
            .expect("lock")
            .files
            .values()
            .any(|path| path.file_name().is_some_and(|n| n == file_name));
        if updates {
            let config = self.check_change(file_name, content)?;
            let group = group_of(&config);
            return Ok((config, group, true));
        }
        let (config, group) = self.check_addition(file_name, content)?;
        Ok((config, group, false))
    }

    /// Validates a new tenant's file; the tenant and its process group.
    pub(super) fn check_addition(
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
        drop(tenants);
        self.check_retired_credentials(file_name, &config)?;
        let group = group_of(&config);
        Ok((config, group))
    }

    /// Refuses a credential another tenant retired and still accepts (its rotation overlap):
    /// whoever still holds it would reach this tenant.
    pub(super) fn check_retired_credentials(
        &self,
        file_name: &str,
        config: &TenantConfig,
    ) -> Result<(), ControlError> {
        let digest = crate::auth::digest_hex(config.credentials.resolve().as_bytes());
        let known = self.plane.known.lock().expect("lock");
        let taken = known.rotations.iter().find(|(other, retired)| {
            **other != config.id && retired.sha256 == digest && !retired.remaining().is_zero()
        });
        match taken {
            Some((other, retired)) => Err(ControlError::InvalidTenant(ConfigError::Invalid(vec![
                config::FieldError {
                    source: file_name.to_owned(),
                    field: "credentials".into(),
                    message: format!(
                        "the credential tenant {other} retired, still accepted for {}s (its \
                         rotation overlap): each business line's backend holds its own",
                        retired.remaining().as_secs()
                    ),
                },
            ]))),
            None => Ok(()),
        }
    }

    /// Onboards a tenant file: the process that would serve it (a new one if it is isolated,
    /// the shared one otherwise, without restarting any other) validates and serves it first;
    /// only then is the file written into the tenants folder. If that process cannot serve it
    /// within [`SERVE_WITHIN`], nothing is kept and the reason is returned.
    pub async fn add_tenant(
        &self,
        file_name: &str,
        content: &str,
    ) -> Result<TenantConfig, ControlError> {
        self.lifecycle_here()?;
        let _edit = self.plane.edit.lock().await;
        let added = self.add_locked(file_name, content).await;
        if added.is_ok() {
            self.tenants_changed().await;
        }
        added
    }

    /// [`ControlPlane::add_tenant`], its edit lock held.
    pub(super) async fn add_locked(
        &self,
        file_name: &str,
        content: &str,
    ) -> Result<TenantConfig, ControlError> {
        let (config, group) = self.check_addition(file_name, content)?;
        let tenant = config.tenant_id();
        let source = TenantSource {
            id: tenant.clone(),
            file: file_name.to_owned(),
            text: content.to_owned(),
            previous_credential: None,
        };
        // the tenant's initial switches hold before its first call
        let initial = initial_switches_of(&config);
        for switch in &initial {
            self.plane.board.turn_off(switch.clone());
        }
        self.plane.supervisor.set_switches(self.switches());
        let version = self.plane.supervisor.set_tenant(&group, source.clone());
        let served = self.served(&group, &tenant, version).await;
        if let Err(reason) = served {
            // undone: the process forgets it, and so does everything here
            let undo = self.plane.supervisor.remove_tenant(&group, &tenant, false);
            self.plane.front.forget_tenant(&tenant);
            for switch in &initial {
                self.plane.board.turn_on(Some(&tenant), &switch.target);
            }
            self.plane.supervisor.set_switches(self.switches());
            let _ = self.plane.supervisor.wait_applied(undo, APPLY_WITHIN).await;
            return Err(ControlError::NotServed {
                tenant: tenant.to_string(),
                reason,
            });
        }
        // served and routed: the front door admits its callers from now on
        self.plane.front.serve_tenant(&config);
        self.keep(&config, source)?;
        self.plane
            .known
            .lock()
            .expect("lock")
            .tenants
            .insert(tenant);
        self.switches_changed().await?;
        Ok(config)
    }

    /// Applies a changed tenant file (limits, settings, services, credential, user keys,
    /// switch defaults) to the process serving the tenant, without a restart: validated as
    /// `tenant add` validates, served by its process first, written last. A changed
    /// credential leaves the previous one valid for `credentials.rotation_overlap_secs`. If
    /// the process cannot serve the new file, it goes back to the old one and nothing is kept.
    pub async fn update_tenant(
        &self,
        file_name: &str,
        content: &str,
    ) -> Result<TenantConfig, ControlError> {
        self.lifecycle_here()?;
        let _edit = self.plane.edit.lock().await;
        let updated = self.apply_update(file_name, content).await;
        if updated.is_ok() {
            self.tenants_changed().await;
        }
        updated
    }

    /// Starts, widens, promotes or rolls back the grey release of a tenant's service: its
    /// file changed as `meshctl grey` asks, applied as [`ControlPlane::update_tenant`] applies
    /// a file (calls and events of the users it includes use its major from then on).
    pub async fn grey(
        &self,
        id: &str,
        service: &str,
        change: &config::GreyChange,
    ) -> Result<TenantConfig, ControlError> {
        self.lifecycle_here()?;
        let _edit = self.plane.edit.lock().await;
        let tenant = self.tenant(id)?;
        let runs: Vec<String> = self
            .config_of(&tenant)?
            .enabled_services()
            .map(|(name, _)| name.to_owned())
            .collect();
        if !runs.iter().any(|name| name == service) {
            return Err(ControlError::NotRun {
                tenant: tenant.to_string(),
                service: service.to_owned(),
                runs: runs.join(", "),
            });
        }
        let source = self.plane.sources.lock().expect("lock")[&tenant].clone();
        let text = config::with_grey(&source.text, service, change).map_err(|e| {
            ControlError::Refused(format!("{}: services.{service}: {e}", source.file))
        })?;
        let updated = self.apply_update(&source.file, &text).await;
        if updated.is_ok() {
            self.tenants_changed().await;
        }
        updated
    }

    /// Validates a changed file of a tenant served already ([`config::check_update`]), and
    /// that its credential is no other tenant's retired one.
    pub(super) fn check_change(
        &self,
        file_name: &str,
        content: &str,
    ) -> Result<TenantConfig, ControlError> {
        let config = {
            let tenants = self.plane.tenants.read().expect("lock");
            config::check_update(
                &self.plane.dir,
                &tenants,
                file_name,
                content,
                self.plane.catalogue,
            )?
        };
        self.check_retired_credentials(file_name, &config)?;
        Ok(config)
    }

    /// [`ControlPlane::update_tenant`], its edit lock held.
    pub(super) async fn apply_update(
        &self,
        file_name: &str,
        content: &str,
    ) -> Result<TenantConfig, ControlError> {
        let config = self.check_change(file_name, content)?;
        let tenant = config.tenant_id();
        let old = self.config_of(&tenant)?;
        let group = group_of(&config);
        let old_source = self.plane.sources.lock().expect("lock")[&tenant].clone();
        let (old_token, token) = (old.credentials.resolve(), config.credentials.resolve());
        let previous_credential = if old_token == token {
            old_source.previous_credential.clone()
        } else {
            Some(PreviousCredential::replaced(
                &old_token,
                Duration::from_secs(config.credentials.rotation_overlap_secs),
            ))
        };
        let source = TenantSource {
            text: content.to_owned(),
            previous_credential,
            ..old_source.clone()
        };
        let version = self.plane.supervisor.set_tenant(&group, source.clone());
        if let Err(reason) = self.served(&group, &tenant, version).await {
            let undo = self.plane.supervisor.set_tenant(&group, old_source);
            let _ = self.served(&group, &tenant, undo).await;
            return Err(ControlError::NotServed {
                tenant: tenant.to_string(),
                reason,
            });
        }
        // the front door takes the new credential (the old one overlapping, across a restart
        // of the mesh too) and the new switch defaults hold; a default the file no longer
        // declares is switched back on
        self.plane.front.serve_tenant(&config);
        {
            let mut known = self.plane.known.lock().expect("lock");
            match &source.previous_credential {
                Some(previous) => known.rotations.insert(tenant.clone(), previous.clone()),
                None => known.rotations.remove(&tenant),
            };
        }
        for switch in initial_switches_of(&old) {
            if let Some(current) = self
                .switches()
                .into_iter()
                .find(|s| s.tenant.as_ref() == Some(&tenant) && s.target == switch.target)
                && current.changed_by == switch.changed_by
            {
                self.plane.board.turn_on(Some(&tenant), &switch.target);
            }
        }
        for switch in initial_switches_of(&config) {
            self.plane.board.turn_off(switch);
        }
        let applied = self.switches_changed().await?;
        self.keep(&config, source)?;
        self.await_version(applied).await?;
        Ok(config)
    }

    /// Removes a tenant: the front door stops admitting its calls (refused as an unknown
    /// tenant's), its process drains the calls it has, stops its consumers and lets its
    /// terminals go, and its file leaves the tenants folder (kept under the state folder's
    /// `removed/`). Its stored data stays unless `purge_data`. Returns its last config.
    pub async fn remove_tenant(
        &self,
        id: &str,
        purge_data: bool,
    ) -> Result<TenantConfig, ControlError> {
        self.lifecycle_here()?;
        let _edit = self.plane.edit.lock().await;
        let removed = self.remove_locked(id, purge_data).await;
        if removed.is_ok() {
            self.tenants_changed().await;
        }
        removed
    }

    /// [`ControlPlane::remove_tenant`], its edit lock held.
    pub(super) async fn remove_locked(
        &self,
        id: &str,
        purge_data: bool,
    ) -> Result<TenantConfig, ControlError> {
        let tenant = self.tenant(id)?;
        let config = self.config_of(&tenant)?;
        let group = group_of(&config);
        self.plane.front.forget_tenant(&tenant);
        let version = self
            .plane
            .supervisor
            .remove_tenant(&group, &tenant, purge_data);
        // its own process stops once drained; a shared one confirms the removal
        let _ = self
            .plane
            .supervisor
            .wait_applied(version, DRAIN_WITHIN)
            .await;
        let file = {
            let mut tenants = self.plane.tenants.write().expect("lock");
            tenants.tenants.remove(id);
            tenants.files.remove(id)
        };
        self.plane.sources.lock().expect("lock").remove(&tenant);
        if let Some(file) = file {
            let kept = self.plane.store.path().with_file_name("removed");
            std::fs::create_dir_all(&kept).map_err(|source| ControlError::Io {
                path: kept.clone(),
                source,
            })?;
            let to = kept.join(file.file_name().unwrap_or_default());
            std::fs::rename(&file, &to)
                .map_err(|source| ControlError::Io { path: file, source })?;
        }
        // its switches go with it
        for switch in self.switches() {
            if switch.tenant.as_ref() == Some(&tenant) {
                self.plane.board.turn_on(Some(&tenant), &switch.target);
            }
        }
        {
            let mut known = self.plane.known.lock().expect("lock");
            known.tenants.remove(&tenant);
            known.rotations.remove(&tenant);
        }
        let applied = self.switches_changed().await?;
        self.await_version(applied).await?;
        Ok(config)
    }

    /// Moves a tenant to a process of its own or into the shared one, without failing its
    /// calls: the new process serves it, the front door routes it there, then the old one
    /// drains it and lets it go; its file then says where it runs. Needs stored data outside
    /// the workers (PostgreSQL), or the tenant's messages would stay behind.
    pub async fn move_tenant(
        &self,
        id: &str,
        process: config::ProcessIsolation,
    ) -> Result<TenantConfig, ControlError> {
        self.lifecycle_here()?;
        let _edit = self.plane.edit.lock().await;
        let moved = self.move_locked(id, process).await;
        if moved.is_ok() {
            self.tenants_changed().await;
        }
        moved
    }

    /// [`ControlPlane::move_tenant`], its edit lock held.
    pub(super) async fn move_locked(
        &self,
        id: &str,
        process: config::ProcessIsolation,
    ) -> Result<TenantConfig, ControlError> {
        let tenant = self.tenant(id)?;
        let old = self.config_of(&tenant)?;
        let from = group_of(&old);
        if old.isolation.process == process {
            return Err(ControlError::Refused(format!(
                "tenant {tenant} runs in process group {from} already"
            )));
        }
        if old.enabled_services().any(|(name, _)| name == "message")
            && !self
                .plane
                .data_shared
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(ControlError::Refused(format!(
                "tenant {tenant} keeps its messages in the embedded store of its process; moving \
                 it would leave them behind: run the mesh on PostgreSQL (MESH_STORE_POSTGRES) to \
                 move tenants"
            )));
        }
        let old_source = self.plane.sources.lock().expect("lock")[&tenant].clone();
        let text = config::with_process(&old_source.text, process)
            .map_err(|e| ControlError::Refused(format!("{}: {e}", old_source.file)))?;
        let config = {
            // validated as the file of a tenant that runs there already: the move is the one
            // change of process an update may carry
            let mut tenants = self.plane.tenants.read().expect("lock").clone();
            if let Some(moved) = tenants.tenants.get_mut(tenant.as_str()) {
                moved.isolation.process = process;
            }
            config::check_update(
                &self.plane.dir,
                &tenants,
                &old_source.file,
                &text,
                self.plane.catalogue,
            )?
        };
        let to = group_of(&config);
        let source = TenantSource {
            text: text.clone(),
            ..old_source.clone()
        };
        // 1. the new process serves it (routed still to the old)
        let version = self.plane.supervisor.set_tenant(&to, source.clone());
        if let Err(reason) = self.served(&to, &tenant, version).await {
            let undo = self.plane.supervisor.remove_tenant(&to, &tenant, false);
            let _ = self.plane.supervisor.wait_applied(undo, APPLY_WITHIN).await;
            return Err(ControlError::NotServed {
                tenant: tenant.to_string(),
                reason,
            });
        }
        // 2. its calls go there
        let routed = self.plane.supervisor.route(&tenant, &to);
        self.await_version(routed).await?;
        let address = self
            .plane
            .supervisor
            .processes()
            .into_iter()
            .find(|p| p.group == to)
            .and_then(|p| p.address);
        let deadline = Instant::now() + APPLY_WITHIN;
        while address.is_some() && self.plane.front.address(&tenant) != address {
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // 3. the old process drains it and lets it go (an own process then stops)
        let version = self.plane.supervisor.remove_tenant(&from, &tenant, false);
        let _ = self
            .plane
            .supervisor
            .wait_applied(version, DRAIN_WITHIN)
            .await;
        self.keep(&config, source)?;
        Ok(config)
    }

    /// Waits until `group` applied `version`, then whether it serves `tenant` (and the front
    /// door routes it, when it is routed there).
    pub(super) async fn served(
        &self,
        group: &str,
        tenant: &TenantId,
        version: u64,
    ) -> Result<(), String> {
        self.plane
            .supervisor
            .wait_tenant(group, tenant, version, SERVE_WITHIN)
            .await
    }

    pub(super) fn config_of(&self, tenant: &TenantId) -> Result<TenantConfig, ControlError> {
        let tenants = self.plane.tenants.read().expect("lock");
        tenants
            .get(tenant.as_str())
            .cloned()
            .ok_or_else(|| ControlError::UnknownTenant(tenant.to_string(), String::new()))
    }

    /// Keeps a tenant's file once its process serves it: written into the tenants folder
    /// whole or not at all (a crash mid-write leaves the old one), and known from now on.
    pub(super) fn keep(
        &self,
        config: &TenantConfig,
        source: TenantSource,
    ) -> Result<(), ControlError> {
        let path = self.plane.dir.join(&source.file);
        let io = |source| ControlError::Io {
            path: path.clone(),
            source,
        };
        let scratch = path.with_extension("toml.partial");
        std::fs::write(&scratch, &source.text).map_err(io)?;
        std::fs::rename(&scratch, &path).map_err(io)?;
        {
            let mut tenants = self.plane.tenants.write().expect("lock");
            tenants
                .tenants
                .insert(config.id.to_string(), config.clone());
            tenants.files.insert(config.id.to_string(), path);
        }
        self.plane
            .sources
            .lock()
            .expect("lock")
            .insert(config.tenant_id(), source);
        Ok(())
    }
}

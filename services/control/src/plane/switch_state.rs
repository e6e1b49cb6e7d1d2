//! Switches: set by ops or rules, applied by every process, shared by the fleet (versioned
//! entries in Redis, reconciled on each announcement and periodically).

use super::*;

impl ControlPlane {
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
        let fleet = self.await_fleet(all_applied as u64).await;
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
            fleet,
        })
    }

    /// Applies one switch change: board, saved state, shared store, workers. Returns whether
    /// it changed anything and the version to await.
    pub(super) async fn change(
        &self,
        switch: Switch,
        on: bool,
    ) -> Result<(bool, u64), ControlError> {
        let _edit = self.plane.edit.lock().await;
        // the store's state first: a switch another node turned off that this node has not
        // applied yet is off here too, so turning it on writes that it is on
        if self.plane.shared.get().is_some()
            && let Err(err) = self.reconcile_locked().await
        {
            tracing::debug!(error = %err, "the shared switch state before a change");
        }
        let changed = if on {
            let key = shared_switches::key(&switch);
            let changed = self
                .plane
                .board
                .turn_on(switch.tenant.as_ref(), &switch.target);
            if changed {
                // the store's tombstone says who turned it on, and when
                self.plane
                    .turned_on
                    .lock()
                    .expect("lock")
                    .insert(key, switch);
            }
            changed
        } else {
            self.plane.board.turn_off(switch);
            true
        };
        Ok((changed, self.switches_changed().await?))
    }

    /// After the board changed: saves it, shares it with the other nodes (when they share
    /// the state: the store's state after the change, merged with every other node's, is what
    /// this node applies), and hands it to the workers; the version to await.
    pub(super) async fn switches_changed(&self) -> Result<u64, ControlError> {
        self.save()?;
        if self.plane.shared.get().is_some() {
            let shared = self.reconcile_locked().await;
            if let Err(err) = &shared {
                // applied here; shared (and merged) by the reconciliation once the store is
                // back
                tracing::warn!(error = %err, "switch change applied on this node only until the shared store is back");
            }
            let mut sync = self.plane.sync.lock().expect("lock");
            sync.last_change = Some((shared.is_ok(), sync.revision));
        }
        Ok(self.plane.supervisor.set_switches(self.switches()))
    }

    /// Makes this node and the shared store agree (the edit lock held): fills a store that
    /// restarted empty, writes what this node changed since it last read the store (one entry
    /// per switch, each with a revision of its own), then applies the store's state. Whether
    /// the board changed.
    pub(super) async fn reconcile_locked(&self) -> Result<bool, SharedError> {
        let Some(shared) = self.plane.shared.get() else {
            return Ok(false);
        };
        let result = self.reconcile_with(shared).await;
        self.plane.sync.lock().expect("lock").dirty = result.is_err();
        result
    }

    pub(super) async fn reconcile_with(
        &self,
        shared: &SharedSwitches,
    ) -> Result<bool, SharedError> {
        let (known_epoch, view) = {
            let sync = self.plane.sync.lock().expect("lock");
            (sync.epoch.clone(), sync.view.clone())
        };
        let (epoch, _) = shared.head().await?;
        let first_contact = known_epoch.is_none();
        if epoch.is_none() || (!first_contact && epoch != known_epoch) {
            // an empty store (Redis restarted empty, or this mesh's first node), or one that
            // another node refilled: it gets what this node knew of it (switches turned back
            // on included, so a node behind cannot bring one back), with this node's own
            // changes since on top, where it lacks them
            let known = self.known_entries(&view);
            shared.seed(&known).await?;
            tracing::info!(
                entries = known.len(),
                "shared switch state filled from this node"
            );
        }
        if !first_contact {
            // what changed here since this node last read the store, one entry at a time:
            // never the whole list, so another node's change to another switch survives
            let board = self.board_by_key();
            let view_off: BTreeMap<&String, &Switch> = view
                .iter()
                .filter(|(_, (_, e))| !e.on)
                .map(|(k, (_, e))| (k, &e.switch))
                .collect();
            let mut writes = Vec::new();
            for (key, switch) in &board {
                if view_off.get(key) != Some(&switch) {
                    writes.push(Entry {
                        on: false,
                        switch: switch.clone(),
                    });
                }
            }
            for (key, switch) in view_off {
                if !board.contains_key(key) {
                    let by = self.plane.turned_on.lock().expect("lock").get(key).cloned();
                    writes.push(Entry {
                        on: true,
                        switch: by.unwrap_or_else(|| Switch {
                            changed_at: SystemTime::now(),
                            ..switch.clone()
                        }),
                    });
                }
            }
            for entry in writes {
                if shared.write(&entry).await?.is_none() {
                    // the store lost everything since the check: refill it, then write
                    shared.seed(&self.known_entries(&view)).await?;
                    shared.write(&entry).await?;
                }
            }
        }
        let snapshot = shared.snapshot().await?;
        let off = snapshot.off();
        let mut mine = self.plane.board.list();
        mine.sort_by_key(shared_switches::key);
        let changed = mine != off;
        if changed {
            self.plane.board.replace_all(off);
            if let Err(err) = self.save() {
                tracing::error!(error = %err, "saving the shared switch state here");
            }
        }
        self.plane
            .turned_on
            .lock()
            .expect("lock")
            .retain(|key, _| !snapshot.entries.get(key).is_some_and(|(_, e)| e.on));
        let mut sync = self.plane.sync.lock().expect("lock");
        sync.epoch = snapshot.epoch;
        sync.revision = snapshot.revision;
        sync.view = snapshot.entries;
        Ok(changed)
    }

    /// The switches off on this node, by their key in the shared store.
    pub(super) fn board_by_key(&self) -> BTreeMap<String, Switch> {
        self.plane
            .board
            .list()
            .into_iter()
            .map(|s| (shared_switches::key(&s), s))
            .collect()
    }

    /// What this node knows of the shared state, for a store to be filled again with: the
    /// entries it last read, then this node's switches off that differ from them, and the
    /// ones it turned back on since.
    pub(super) fn known_entries(&self, view: &BTreeMap<String, (u64, Entry)>) -> Vec<Entry> {
        let mut known: BTreeMap<String, Entry> = view
            .iter()
            .map(|(k, (_, e))| (k.clone(), e.clone()))
            .collect();
        let board = self.board_by_key();
        for (key, entry) in known.iter_mut() {
            if !entry.on && !board.contains_key(key) {
                // turned on here since
                entry.on = true;
            }
        }
        for (key, switch) in board {
            known.insert(key, Entry { on: false, switch });
        }
        known.into_values().collect()
    }

    /// After a change this node made: says what it applied, then waits (up to
    /// [`APPLY_WITHIN`]) until every live node reports the revision it was shared at.
    pub(super) async fn await_fleet(&self, processes: u64) -> Option<FleetApplied> {
        let shared = self.plane.shared.get()?;
        let (shared_now, revision) = {
            let mut sync = self.plane.sync.lock().expect("lock");
            sync.processes = processes;
            sync.last_change.unwrap_or((!sync.dirty, sync.revision))
        };
        if !shared_now {
            return Some(FleetApplied {
                shared: false,
                nodes_applied: 1,
                nodes_total: 1,
                processes_applied: processes,
                ..FleetApplied::default()
            });
        }
        let _ = shared
            .report_applied(&self.plane.node_id, revision, processes)
            .await;
        let deadline = tokio::time::Instant::now() + APPLY_WITHIN;
        loop {
            let nodes = match shared.applied().await {
                Ok(nodes) => nodes,
                Err(err) => {
                    return Some(FleetApplied {
                        shared: true,
                        revision,
                        processes_applied: processes,
                        nodes_missing: vec![format!("unknown (the shared store: {err})")],
                        ..FleetApplied::default()
                    });
                }
            };
            let missing: Vec<String> = nodes
                .iter()
                .filter(|n| n.revision < revision)
                .map(|n| n.node.clone())
                .collect();
            if missing.is_empty() || tokio::time::Instant::now() >= deadline {
                return Some(FleetApplied {
                    shared: true,
                    revision,
                    nodes_applied: nodes.len() - missing.len(),
                    nodes_total: nodes.len(),
                    processes_applied: nodes
                        .iter()
                        .filter(|n| n.revision >= revision)
                        .map(|n| n.processes)
                        .sum(),
                    nodes_missing: missing,
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Shares the switch state with the other nodes of a mesh through `shared`: a node joining
    /// takes the store's state (the first node of a mesh, or the first after the store
    /// restarted empty, fills it with its own), then reconciles on every announcement and every
    /// [`RECONCILE_EVERY`], reporting what it applied.
    pub async fn share_switches(&self, shared: SharedSwitches) -> Result<(), ControlError> {
        let _ = self.plane.shared.set(shared.clone());
        {
            let _edit = self.plane.edit.lock().await;
            self.reconcile_locked().await?;
            self.plane.supervisor.set_switches(self.switches());
        }
        tokio::spawn(shared.clone().on_announcement({
            let plane = self.clone();
            move || plane.plane.reconcile.notify_one()
        }));
        let plane = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = plane.plane.reconcile.notified() => {}
                    () = tokio::time::sleep(RECONCILE_EVERY) => {}
                }
                plane.reconcile_tick(&shared).await;
            }
        });
        Ok(())
    }

    /// One turn of the reconciliation loop: if the store moved on (another node's change, a
    /// restart) or this node holds changes the store lacks, reconcile and hand the result to
    /// the workers; then say what this node applied.
    pub(super) async fn reconcile_tick(&self, shared: &SharedSwitches) {
        let head = shared.head().await;
        let behind = {
            let sync = self.plane.sync.lock().expect("lock");
            match &head {
                Ok((epoch, revision)) => {
                    sync.dirty || *epoch != sync.epoch || *revision != sync.revision
                }
                Err(_) => false,
            }
        };
        if let Err(err) = &head {
            let mut sync = self.plane.sync.lock().expect("lock");
            if !sync.dirty {
                tracing::warn!(error = %err, "shared switch state unreachable; changes made here are shared when it is back");
            }
            sync.dirty = true;
            return;
        }
        if behind {
            let version = {
                let _edit = self.plane.edit.lock().await;
                match self.reconcile_locked().await {
                    Ok(true) => Some(self.plane.supervisor.set_switches(self.switches())),
                    Ok(false) => None,
                    Err(err) => {
                        tracing::warn!(error = %err, "reconciling the shared switch state");
                        return;
                    }
                }
            };
            if let Some(version) = version {
                match self
                    .plane
                    .supervisor
                    .wait_applied(version, APPLY_WITHIN)
                    .await
                {
                    Ok(n) => self.plane.sync.lock().expect("lock").processes = n as u64,
                    Err(groups) => {
                        tracing::warn!(groups = %groups.join(", "), "shared switch change not confirmed by every process group in time")
                    }
                }
            }
        }
        let (revision, processes) = {
            let sync = self.plane.sync.lock().expect("lock");
            (sync.revision, sync.processes)
        };
        let _ = shared
            .report_applied(&self.plane.node_id, revision, processes)
            .await;
    }
}

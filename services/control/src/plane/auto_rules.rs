//! Automatic degradation: each tenant's rules read the front door's window of calls and turn
//! their switch off or back on, under the operator `auto:<rule>`.

use super::*;

impl ControlPlane {
    /// Runs the plane until `stop` resolves: its automatic rules (the rest of its work answers
    /// the admin API's calls as they come).
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        self.run_rules(stop).await
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

    pub(super) async fn check_rules(&self) {
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
            let scope = switch.scope();
            let (turn_off, reason, result) = match action {
                RuleAction::Nothing => continue,
                RuleAction::TurnOff(reason) => {
                    tracing::warn!(%tenant, rule = rule.name, %target, %reason, "automatic degradation: switched off");
                    let result = self
                        .change(
                            Switch {
                                reason: reason.clone(),
                                ..switch
                            },
                            false,
                        )
                        .await;
                    (true, reason, result)
                }
                RuleAction::TurnOn => {
                    tracing::warn!(%tenant, rule = rule.name, %target, "automatic degradation: calm again, switched back on");
                    (false, String::new(), self.change(switch, true).await)
                }
            };
            let entry = crate::audit::AuditEntry::new(
                by.clone(),
                if turn_off { "switch.off" } else { "switch.on" },
                scope,
            )
            .tenant(tenant.to_string())
            .before(if turn_off { "on" } else { "off" })
            .after(if turn_off { "off" } else { "on" })
            .reason(reason);
            let entry = match &result {
                Ok(_) => entry,
                Err(err) => entry.refused(err),
            };
            if let Err(err) = self.plane.audit.record(entry).await {
                tracing::error!(error = %err, "automatic degradation not written to the audit log");
            }
            if let Err(err) = result {
                tracing::error!(%tenant, rule = rule.name, error = %err, "automatic degradation failed");
            }
        }
    }
}

//! What `meshctl` prints: a table for people, `--json` for scripts. The JSON keeps the admin
//! API's field names.

use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use comfy_table::{Table, presets::NOTHING};
use mesh_api::admin::v1 as api;
use serde_json::{Value, json};

/// Prints one line on stdout. A reader that went away (`meshctl ... | head -1`) ends meshctl
/// quietly: what it did is done, only the rest of its report has nowhere to go.
macro_rules! say {
    ($($arg:tt)*) => {
        write_line(format_args!($($arg)*))
    };
}

fn write_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(err) = writeln!(out, "{line}")
        && err.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// Where and how to print.
pub struct Output {
    /// JSON instead of tables.
    pub json: bool,
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header(header.to_vec());
    table
}

fn at(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// `2026-11-24T18:05:00Z (3m 12s ago)`.
fn when(ms: i64) -> String {
    let at = at(ms);
    let ago = SystemTime::now()
        .duration_since(at)
        .map(|d| Duration::from_secs(d.as_secs()))
        .unwrap_or_default();
    format!(
        "{} ({} ago)",
        humantime::format_rfc3339_seconds(at),
        humantime::format_duration(ago)
    )
}

/// A pid, or `-` while no process runs.
fn pid(pid: u32) -> String {
    if pid == 0 {
        "-".into()
    } else {
        pid.to_string()
    }
}

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_millis(at(ms)).to_string()
}

fn or_all(tenant: &str) -> &str {
    if tenant.is_empty() { "all" } else { tenant }
}

fn switch_json(s: &api::Switch) -> Value {
    let target = s.target.clone().unwrap_or_default();
    json!({
        "scope": s.scope,
        "state": "off",
        "service": target.service,
        "method": target.method,
        "tier": target.tier,
        "tenant": (!s.tenant.is_empty()).then_some(&s.tenant),
        "changed_by": s.changed_by,
        "changed_at": rfc3339(s.changed_at_ms),
        "reason": s.reason,
    })
}

fn tenant_json(t: &api::Tenant) -> Value {
    json!({
        "id": t.id,
        "display_name": t.display_name,
        "group": t.group,
        "pid": t.pid,
        "address": t.address,
        "health": t.health,
        "reason": t.reason,
        "services": t.services,
    })
}

fn tenants_table(tenants: &[api::Tenant]) -> Table {
    let mut rows = table(&[
        "TENANT", "NAME", "GROUP", "PID", "HEALTH", "SERVICES", "REASON",
    ]);
    for t in tenants {
        rows.add_row(vec![
            t.id.clone(),
            t.display_name.clone(),
            t.group.clone(),
            pid(t.pid),
            t.health.clone(),
            t.services.join(" "),
            t.reason.clone(),
        ]);
    }
    rows
}

impl Output {
    fn print(&self, value: &Value) {
        say!(
            "{}",
            serde_json::to_string_pretty(value).expect("JSON of plain values")
        );
    }

    /// `switch list`.
    pub fn switches(&self, switches: &[api::Switch]) {
        if self.json {
            return self.print(&json!({
                "switches": switches.iter().map(switch_json).collect::<Vec<_>>(),
            }));
        }
        if switches.is_empty() {
            say!("every switch is on: no call is degraded");
            return;
        }
        let mut rows = table(&["SWITCH", "STATE", "TENANT", "CHANGED BY", "WHEN", "REASON"]);
        for s in switches {
            rows.add_row(vec![
                s.scope.clone(),
                "off".into(),
                or_all(&s.tenant).into(),
                s.changed_by.clone(),
                when(s.changed_at_ms),
                s.reason.clone(),
            ]);
        }
        say!("{rows}");
        say!("every other switch is on");
    }

    /// `switch off|on`.
    pub fn switched(&self, scope: &str, on: bool, response: &api::SetSwitchResponse) {
        if self.json {
            return self.print(&json!({
                "switch": scope,
                "state": if on { "on" } else { "off" },
                "changed": response.changed,
                "processes_applied": response.processes_applied,
                "fleet": response.fleet.as_ref().map(|f| json!({
                    "shared": f.shared,
                    "revision": f.revision,
                    "nodes_applied": f.nodes_applied,
                    "nodes_total": f.nodes_total,
                    "processes_applied": f.processes_applied,
                    "nodes_missing": f.nodes_missing,
                })),
                "switches": response.switches.iter().map(switch_json).collect::<Vec<_>>(),
            }));
        }
        // a fleet: what every node applied; a node alone: its processes
        let applied = match &response.fleet {
            Some(f) if !f.shared => format!(
                "applied by this node's {} process(es) only: the shared store is unreachable, \
                 the other nodes get it when it is back",
                response.processes_applied
            ),
            Some(f) if f.nodes_missing.is_empty() => format!(
                "applied by {} of {} node(s), {} process(es) in all (store revision {})",
                f.nodes_applied, f.nodes_total, f.processes_applied, f.revision
            ),
            Some(f) => format!(
                "applied by {} of {} node(s), {} process(es) in all (store revision {}); not \
                 yet: {} (each applies it when it next reconciles)",
                f.nodes_applied,
                f.nodes_total,
                f.processes_applied,
                f.revision,
                f.nodes_missing.join(", ")
            ),
            None => format!("applied by {} process(es)", response.processes_applied),
        };
        match (on, response.changed) {
            (false, _) => say!("{scope} is off: {applied}"),
            (true, true) => say!("{scope} is on again: {applied}"),
            (true, false) => say!("{scope} was not off: nothing changed"),
        }
    }

    /// `tenant check`.
    pub fn checked(&self, tenant: &str, group: &str, file: &Path, updates: bool) {
        if self.json {
            return self.print(&json!({
                "file": file, "tenant": tenant, "group": group, "valid": true, "updates": updates,
            }));
        }
        if updates {
            say!(
                "{}: valid; `tenant update` would apply it to tenant {tenant} (process group {group})",
                file.display()
            );
        } else {
            say!(
                "{}: valid; tenant {tenant} would run in process group {group}",
                file.display()
            );
        }
    }

    /// `tenant add`.
    pub fn added(&self, tenants: &[api::Tenant]) {
        if self.json {
            return self.print(&json!({
                "added": tenants.iter().map(tenant_json).collect::<Vec<_>>(),
            }));
        }
        for t in tenants {
            say!(
                "tenant {} is served by pid {} (group {})",
                t.id,
                t.pid,
                t.group
            );
        }
        say!("{}", tenants_table(tenants));
    }

    /// `tenant update`, `remove` and `move`: what was done, and the tenant's row after.
    pub fn changed(&self, done: &str, tenants: &[api::Tenant]) {
        if self.json {
            return self.print(&json!({
                done: tenants.iter().map(tenant_json).collect::<Vec<_>>(),
            }));
        }
        for t in tenants {
            say!("tenant {} {done} (group {})", t.id, t.group);
        }
        say!("{}", tenants_table(tenants));
    }

    /// `tenant list`.
    pub fn tenants(&self, tenants: &[api::Tenant]) {
        if self.json {
            return self.print(&json!({
                "tenants": tenants.iter().map(tenant_json).collect::<Vec<_>>(),
            }));
        }
        say!("{}", tenants_table(tenants));
    }

    /// `status`.
    pub fn status(&self, report: &api::StatusReport) {
        if self.json {
            return self.print(&json!({
                "processes": report.processes.iter().map(|p| json!({
                    "group": p.group, "pid": p.pid, "address": p.address,
                    "tenants": p.tenants, "restarts": p.restarts, "up_for_ms": p.up_for_ms,
                })).collect::<Vec<_>>(),
                "tenants": report.tenants.iter().map(tenant_json).collect::<Vec<_>>(),
                "bulkheads": report.bulkheads.iter().map(|b| json!({
                    "tenant": b.tenant, "dependency": b.dependency,
                    "in_use": b.in_use, "capacity": b.capacity,
                })).collect::<Vec<_>>(),
                "load": report.load.iter().map(|l| json!({
                    "tenant": l.tenant, "in_flight": l.in_flight,
                    "calls": l.calls, "degraded": l.degraded,
                })).collect::<Vec<_>>(),
                "calls": report.calls.iter().map(|c| json!({
                    "tenant": c.tenant, "service": c.service, "major": c.major, "method": c.method,
                    "calls": c.calls, "degraded": c.degraded, "shed": c.shed, "over_quota": c.over_quota,
                    "timed_out": c.timed_out, "errors": c.errors, "mean_ms": c.mean_ms,
                })).collect::<Vec<_>>(),
                "recent_degraded": report.recent_degraded.iter().map(|d| json!({
                    "tenant": d.tenant, "method": d.method, "switch": d.switch,
                    "at": rfc3339(d.at_ms),
                })).collect::<Vec<_>>(),
            }));
        }
        let mut processes = table(&["GROUP", "PID", "ADDRESS", "TENANTS", "RESTARTS", "UP FOR"]);
        for p in &report.processes {
            processes.add_row(vec![
                p.group.clone(),
                pid(p.pid),
                p.address.clone(),
                p.tenants.join(","),
                p.restarts.to_string(),
                humantime::format_duration(Duration::from_secs(p.up_for_ms / 1000)).to_string(),
            ]);
        }
        say!("PROCESSES\n{processes}\n");
        say!("TENANTS\n{}\n", tenants_table(&report.tenants));

        let mut load = table(&["TENANT", "IN FLIGHT", "CALLS", "DEGRADED"]);
        for l in &report.load {
            load.add_row(vec![
                l.tenant.clone(),
                l.in_flight.to_string(),
                l.calls.to_string(),
                l.degraded.to_string(),
            ]);
        }
        say!("LOAD (through the front door)\n{load}\n");

        let mut calls = table(&[
            "TENANT",
            "SERVICE",
            "MAJOR",
            "METHOD",
            "CALLS",
            "DEGRADED",
            "SHED",
            "OVER QUOTA",
            "TIMED OUT",
            "ERRORS",
            "MEAN",
        ]);
        for c in &report.calls {
            calls.add_row(vec![
                c.tenant.clone(),
                c.service.clone(),
                c.major.clone(),
                c.method.clone(),
                c.calls.to_string(),
                c.degraded.to_string(),
                c.shed.to_string(),
                c.over_quota.to_string(),
                c.timed_out.to_string(),
                c.errors.to_string(),
                format!("{:.2} ms", c.mean_ms),
            ]);
        }
        say!("CALLS (served, per tenant and method)\n{calls}\n");

        let mut bulkheads = table(&["TENANT", "DEPENDENCY", "IN USE", "SATURATION"]);
        for b in &report.bulkheads {
            let saturation = f64::from(b.in_use) * 100.0 / f64::from(b.capacity.max(1));
            bulkheads.add_row(vec![
                b.tenant.clone(),
                b.dependency.clone(),
                format!("{}/{}", b.in_use, b.capacity),
                format!("{saturation:.0}%"),
            ]);
        }
        say!("BULKHEADS\n{bulkheads}\n");

        if report.recent_degraded.is_empty() {
            say!("RECENT DEGRADED ANSWERS\nnone");
        } else {
            let mut degraded = table(&["WHEN", "TENANT", "METHOD", "SWITCH"]);
            for d in &report.recent_degraded {
                degraded.add_row(vec![
                    when(d.at_ms),
                    d.tenant.clone(),
                    d.method.clone(),
                    d.switch.clone(),
                ]);
            }
            say!("RECENT DEGRADED ANSWERS (newest first)\n{degraded}");
        }
    }

    /// `fault delay|clear`.
    pub fn faults(&self, faults: &[api::Fault]) {
        if self.json {
            return self.print(&json!({
                "faults": faults.iter().map(|f| json!({
                    "tenant": f.tenant, "service": f.service, "delay_ms": f.delay_ms,
                })).collect::<Vec<_>>(),
            }));
        }
        if faults.is_empty() {
            say!("no fault injected");
            return;
        }
        let mut rows = table(&["TENANT", "SERVICE", "DELAY"]);
        for f in faults {
            rows.add_row(vec![
                f.tenant.clone(),
                if f.service.is_empty() {
                    "all".into()
                } else {
                    f.service.clone()
                },
                format!("{} ms", f.delay_ms),
            ]);
        }
        say!("{rows}");
    }

    /// `dlq list`.
    pub fn dead_letter_queues(&self, queues: &[api::DeadLetterQueue]) {
        if self.json {
            return self.print(&json!({
                "queues": queues.iter().map(|q| json!({
                    "tenant": q.tenant, "queue": q.queue, "waiting": q.waiting,
                    "dead_letters": q.dead_letters,
                })).collect::<Vec<_>>(),
            }));
        }
        let mut rows = table(&["TENANT", "QUEUE", "WAITING", "DEAD LETTERS"]);
        for q in queues {
            rows.add_row(vec![
                q.tenant.clone(),
                q.queue.clone(),
                q.waiting.to_string(),
                q.dead_letters.to_string(),
            ]);
        }
        say!("{rows}");
    }

    /// `audit`.
    pub fn audit(&self, list: &api::AuditList) {
        if self.json {
            return self.print(&json!({
                "partial": list.partial,
                "entries": list.entries.iter().map(|e| json!({
                    "id": e.id, "at": rfc3339(e.at_ms), "at_ms": e.at_ms,
                    "operator": e.operator, "action": e.action, "tenant": e.tenant,
                    "subject": e.subject, "before": e.before, "after": e.after,
                    "reason": e.reason, "outcome": e.outcome, "node": e.node, "peer": e.peer,
                })).collect::<Vec<_>>(),
            }));
        }
        let mut rows = table(&[
            "WHEN", "OPERATOR", "ACTION", "SUBJECT", "BEFORE", "AFTER", "OUTCOME", "NODE",
        ]);
        for e in &list.entries {
            rows.add_row(vec![
                when(e.at_ms),
                e.operator.clone(),
                e.action.clone(),
                e.subject.clone(),
                e.before.clone(),
                e.after.clone(),
                e.outcome.clone(),
                e.node.clone(),
            ]);
        }
        say!("{rows}");
        if list.partial {
            say!("(this node's changes only: the fleet's log could not be read)");
        }
    }

    /// `dlq show`.
    pub fn dead_letters(&self, letters: &[api::DeadLetter]) {
        if self.json {
            return self.print(&json!({
                "letters": letters.iter().map(|l| json!({
                    "message_id": l.message_id, "event": l.event, "reason": l.reason,
                    "attempts": l.attempts, "bytes": l.bytes,
                })).collect::<Vec<_>>(),
            }));
        }
        if letters.is_empty() {
            say!("no dead letter");
            return;
        }
        let mut rows = table(&["MESSAGE ID", "EVENT", "RUNS", "BYTES", "REASON"]);
        for l in letters {
            rows.add_row(vec![
                l.message_id.clone(),
                l.event.clone(),
                l.attempts.to_string(),
                l.bytes.to_string(),
                l.reason.clone(),
            ]);
        }
        say!("{rows}");
    }

    /// `dlq replay|purge`.
    pub fn dead_letters_handled(&self, what: &str, queue: &str, count: u32) {
        if self.json {
            return self.print(&json!({ what: count, "queue": queue }));
        }
        say!("{what} {count} dead letter(s) of {queue}");
    }
}

// The ops console: what `meshctl` does, in a browser. Every action is a call of the admin API
// (contracts/admin/v1) over the mesh's HTTP/JSON access, with the ops credential.
import { call, el } from "./mesh.js";

const $ = (id) => document.getElementById(id);
let token = null;
// What the last status said, for a switch's blast radius: the tenants served, and calls per
// second per `tenant/service` between the last two refreshes
let tenantIds = [];
let lastCalls = null; // { at, calls: Map(tenant/service -> calls so far) }
let rates = new Map();
let pendingSwitch = null; // a wide switch-off shown for confirmation, exactly as it will go
// Calls per second and mean latency of each tenant's method over the last minutes, one point
// per refresh: `tenant service.method` -> { total: [calls so far, sum of ms so far], points }
const traffic = new Map();
const TRAFFIC_POINTS = 100; // 5 minutes at a refresh every 3 s

function admin(method, body) {
  return call(`/admin/v1/${method}`, body, { authorization: `Bearer ${token}` });
}

/** The controls of a row a refresh re-renders. */
function controls(row) {
  return row ? [...row.querySelectorAll("button, input, a")] : [];
}

function rows(id, items, cells) {
  const body = $(id).querySelector("tbody");
  // the refresh re-renders the rows every few seconds: the control the operator had focused
  // (a keyboard user about to press it) keeps the focus, in the same row and place
  const active = body.contains(document.activeElement) ? document.activeElement : null;
  const row = active?.closest("tr");
  const at = active ? [[...body.children].indexOf(row), controls(row).indexOf(active)] : null;
  body.replaceChildren(
    ...(items.length === 0
      ? [el("tr", "muted", el("td", "", "none"))]
      : items.map((item) => el("tr", "", ...cells(item).map((c) => el("td", "", c))))),
  );
  if (at) controls(body.children[at[0]])[at[1]]?.focus();
}

function when(ms) {
  const n = Number(ms);
  return n ? new Date(n).toLocaleTimeString() : "";
}

function duration(ms) {
  const s = Math.round(Number(ms) / 1000);
  return s < 120 ? `${s} s` : `${Math.round(s / 60)} min`;
}

function targetOf(s) {
  if (s.tier !== undefined && s.tier !== null) return { tier: s.tier };
  return { service: s.service, method: s.method };
}

async function refreshSwitches() {
  const { json } = await admin("ListSwitches", {});
  rows("switches", json.switches, (s) => {
    const on = el("button", "small", "Switch on");
    on.dataset.scope = s.scope;
    on.addEventListener("click", () =>
      setSwitch({ target: targetOf(s.target), tenant: s.tenant, on: true, reason: "" }),
    );
    return [s.scope, s.reason, s.changedBy, when(s.changedAtMs), on];
  });
}

async function refreshAudit() {
  const { json } = await admin("ListAudit", { limit: 100 });
  // every switch change stays listed after the switch is back on: who, what, why, when
  rows(
    "switch-history",
    json.entries.filter((e) => e.action.startsWith("switch.")).slice(0, 20),
    (e) => [when(e.atMs), e.operator, e.action === "switch.off" ? "off" : "on", e.subject, e.reason, e.outcome],
  );
  rows("audit", json.entries.slice(0, 20), (e) => [
    when(e.atMs),
    e.operator,
    e.action,
    e.subject,
    e.before,
    e.after,
    e.outcome,
  ]);
  $("audit-note").textContent = json.partial
    ? "this node's changes only: the fleet's log could not be read"
    : "";
}

/** Calls per second of each `tenant/service` since the last status. */
function measureRates(json) {
  const now = Date.now();
  const calls = new Map();
  for (const c of json.calls ?? []) {
    const key = `${c.tenant}/${c.service}`;
    calls.set(key, (calls.get(key) ?? 0) + Number(c.calls));
  }
  if (lastCalls && now > lastCalls.at) {
    const seconds = (now - lastCalls.at) / 1000;
    rates = new Map(
      [...calls].map(([key, n]) => [key, Math.max(0, n - (lastCalls.calls.get(key) ?? 0)) / seconds]),
    );
  }
  lastCalls = { at: now, calls };
  tenantIds = json.tenants.map((t) => t.id);
  for (const c of json.calls ?? []) {
    const key = `${c.tenant} ${c.service}.${c.method}${c.major ? ` (${c.major})` : ""}`;
    const n = Number(c.calls);
    const total = [n, n * Number(c.meanMs ?? 0)];
    const seen = traffic.get(key);
    if (!seen) {
      traffic.set(key, { total, points: [], at: now });
      continue;
    }
    const seconds = Math.max((now - seen.at) / 1000, 0.001);
    const calls = Math.max(0, total[0] - seen.total[0]);
    // the mean over this interval alone, from the running means' sums
    const ms = calls > 0 ? Math.max(0, total[1] - seen.total[1]) / calls : null;
    seen.points.push({ rate: calls / seconds, ms });
    if (seen.points.length > TRAFFIC_POINTS) seen.points.shift();
    seen.total = total;
    seen.at = now;
  }
}

/** A small line chart of `values` (null: no point), as SVG, with its latest value. */
function sparkline(values, unit) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 100 24");
  svg.setAttribute("class", "spark");
  svg.setAttribute("role", "img");
  const known = values.filter((v) => v !== null);
  const top = Math.max(...known, 0) || 1;
  const step = 100 / Math.max(TRAFFIC_POINTS - 1, 1);
  const offset = (TRAFFIC_POINTS - values.length) * step;
  const points = values
    .map((v, i) => (v === null ? null : `${(offset + i * step).toFixed(1)},${(23 - (v / top) * 22).toFixed(1)}`))
    .filter(Boolean)
    .join(" ");
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points);
  svg.append(line);
  const latest = known.length > 0 ? known[known.length - 1] : 0;
  svg.setAttribute("aria-label", `latest ${latest.toFixed(1)} ${unit}, highest ${top.toFixed(1)}`);
  return el("span", "chart", svg, ` ${latest.toFixed(1)} ${unit}`);
}

/** The busiest methods of the last minutes, calls per second and mean latency over time. */
function renderTraffic() {
  const busiest = [...traffic]
    .filter(([, t]) => t.points.length > 0)
    .map(([key, t]) => [key, t, t.points.reduce((sum, p) => sum + p.rate, 0)])
    .filter(([, , sum]) => sum > 0)
    .sort((a, b) => b[2] - a[2])
    .slice(0, 12);
  rows("traffic", busiest, ([key, t]) => [
    key,
    sparkline(t.points.map((p) => p.rate), "calls/s"),
    sparkline(t.points.map((p) => p.ms), "ms"),
  ]);
}

async function refreshStatus() {
  const { json } = await admin("Status", {});
  measureRates(json);
  renderTraffic();
  rows("processes", json.processes, (p) => [
    p.group,
    String(p.pid),
    p.address,
    p.tenants.join(", "),
    String(p.restarts),
    duration(p.upForMs),
  ]);
  rows("load", json.load, (l) => [l.tenant, String(l.inFlight), String(l.calls), String(l.degraded)]);
  rows("bulkheads", json.bulkheads, (b) => [b.tenant, b.dependency, String(b.inUse), String(b.capacity)]);
  rows("degraded", json.recentDegraded.slice(0, 10), (d) => [when(d.atMs), d.tenant, d.method, d.switch]);
  rows("tenants", json.tenants, (t) => [
    t.id,
    t.displayName,
    t.group,
    t.health,
    t.reason,
    el(
      "span",
      "",
      button(t.group === "shared" ? "Own process" : "Shared process", () =>
        tenantAction("MoveTenant", { tenant: t.id, process: t.group === "shared" ? "own" : "shared" }),
      ),
      " ",
      button("Remove", () => {
        if (!confirm(`Remove tenant ${t.id}? Its calls are refused from now on; its data stays.`)) return;
        tenantAction("RemoveTenant", { tenant: t.id, purgeData: false });
      }),
    ),
  ]);
}

let deadLettersKept = true; // false once the mesh said it keeps none (no broker)

async function refreshDeadLetters() {
  if (!deadLettersKept) return;
  try {
    const { json } = await admin("ListDeadLetters", { tenant: "" });
    rows("dead-letters", json.queues, (q) => {
      const letters = { tenant: q.tenant, queue: q.queue };
      return [
        q.tenant,
        q.queue,
        String(q.deadLetters),
        String(q.waiting),
        el(
          "span",
          "",
          button("Show", () => showLetters(letters)),
          " ",
          button("Replay", () => handleLetters("ReplayDeadLetters", letters)),
          " ",
          button("Purge", () => {
            if (confirm(`Delete every dead letter of ${q.queue}?`)) handleLetters("PurgeDeadLetters", letters);
          }),
        ),
      ];
    });
    $("dead-letters-note").textContent = "";
  } catch (err) {
    rows("dead-letters", [], () => []);
    // on the embedded transport there is no broker to ask: said once, not asked again
    $("dead-letters-note").textContent = err.message;
    if (err.status === "FAILED_PRECONDITION") deadLettersKept = false;
  }
}

function button(label, action) {
  const node = el("button", "small", label);
  node.type = "button";
  node.addEventListener("click", action);
  return node;
}

async function tenantAction(method, request) {
  try {
    await admin(method, request);
    $("tenant-result").textContent = `${method === "MoveTenant" ? "moved" : "removed"}: ${request.tenant}`;
  } catch (err) {
    $("tenant-result").textContent = err.message;
  }
  await refresh();
}

async function showLetters(request) {
  try {
    const { json } = await admin("ShowDeadLetters", { ...request, limit: 20 });
    $("letters").hidden = false;
    rows("letters", json.letters, (l) => [l.messageId, l.event, l.reason, String(l.attempts), String(l.bytes)]);
  } catch (err) {
    $("dead-letters-note").textContent = err.message;
  }
}

async function handleLetters(method, request) {
  try {
    const { json } = await admin(method, { ...request, limit: 0 });
    // kept until the next action on dead letters (the refresh rewrites only the list)
    $("dead-letters-result").textContent = `${method === "PurgeDeadLetters" ? "purged" : "replayed"} ${json.count} of ${request.queue}`;
  } catch (err) {
    $("dead-letters-result").textContent = err.message;
  }
  await refresh();
}

async function greyFromForm(event) {
  event.preventDefault();
  const request = {
    tenant: $("grey-tenant").value.trim(),
    service: $("grey-service").value.trim(),
    action: event.submitter?.value ?? "widen",
    version: $("grey-version").value.trim(),
    users: $("grey-users").value.split(",").map((u) => u.trim()).filter(Boolean),
  };
  if ($("grey-percent").value !== "") request.percent = Number($("grey-percent").value);
  try {
    await admin("SetGrey", request);
    $("grey-result").textContent = `${request.action}: done`;
  } catch (err) {
    $("grey-result").textContent = err.message;
  }
  await refresh();
}

async function faultFromForm(event) {
  event.preventDefault();
  try {
    const { json } = await admin("SetFault", {
      tenant: $("fault-tenant").value.trim(),
      service: $("fault-service").value.trim(),
      delayMs: Number($("fault-delay").value || 0),
    });
    $("fault-result").textContent =
      json.faults.length === 0
        ? "no latency injected"
        : json.faults.map((f) => `${f.tenant}/${f.service || "*"}: +${f.delayMs} ms`).join(", ");
  } catch (err) {
    $("fault-result").textContent = err.message;
  }
}

async function refresh() {
  try {
    await Promise.all([refreshSwitches(), refreshStatus(), refreshDeadLetters(), refreshAudit()]);
    $("connection").textContent = "connected";
    $("connection").dataset.state = "online";
  } catch (err) {
    $("connection").textContent = err.message;
    $("connection").dataset.state = "refused";
  }
}

/** What the fleet applied of a switch change, as meshctl says it. */
function applied(json) {
  const fleet = json.fleet;
  if (!fleet) return `applied by ${json.processesApplied} processes`;
  if (!fleet.shared) {
    return "applied on this node only: the shared store is unreachable, the other nodes get it when it is back";
  }
  const missing = fleet.nodesMissing ?? [];
  const base = `applied by ${fleet.nodesApplied} of ${fleet.nodesTotal} nodes, ${fleet.processesApplied} processes`;
  return missing.length ? `${base}; not yet: ${missing.join(", ")}` : base;
}

async function setSwitch(request) {
  try {
    const { json } = await admin("SetSwitch", request);
    $("switch-result").textContent = `${json.changed ? "changed" : "unchanged"}; ${
      json.switches.length
    } switches off (${applied(json)})`;
  } catch (err) {
    $("switch-result").textContent = err.message;
  }
  await refresh();
}

/**
 * The switch the form says, or why it says none. A tier and a service at once is refused,
 * never one of them silently preferred: the form carries nothing the operator cannot see.
 */
function switchOfForm(on) {
  const tier = $("switch-tier").value.trim();
  const service = $("switch-service").value.trim();
  const method = $("switch-method").value.trim();
  if (tier !== "" && (service || method)) {
    return { refused: "A switch targets a tier or a service, not both: clear the tier or the service." };
  }
  if (tier === "" && !service) return { refused: "Name a service (and a method) or a tier." };
  const target = tier !== "" ? { tier: Number(tier) } : { service, method };
  return { request: { target, tenant: $("switch-tenant").value.trim(), on, reason: $("switch-reason").value } };
}

/** What switching `request` off would reach: tenants, services and calls per second now. */
function blastRadius(request) {
  const tenants = request.tenant ? [request.tenant] : tenantIds;
  const { tier, service, method } = request.target;
  const what =
    tier !== undefined
      ? tier === 0
        ? "every service, the core (tier 0) included"
        : `every service of tier ${tier} and above`
      : method
        ? `${service}.${method}`
        : `the ${service} service`;
  let perSecond = 0;
  for (const [key, rate] of rates) {
    const [tenant, called] = key.split("/");
    if (tenants.includes(tenant) && (tier !== undefined || called === service)) perSecond += rate;
  }
  const whom = request.tenant ? `tenant ${request.tenant}` : `every tenant (${tenants.join(", ") || "none listed yet"})`;
  const calls = tier !== undefined ? `up to ${Math.round(perSecond)}` : `about ${Math.round(perSecond)}`;
  return `Switch off ${what} for ${whom}? ${calls} calls/s they serve now would be answered degraded.`;
}

function switchFromForm(event) {
  event.preventDefault();
  const on = event.submitter?.value === "true";
  const { request, refused } = switchOfForm(on);
  pendingSwitch = null;
  $("switch-confirm").hidden = true;
  if (refused) {
    $("switch-result").textContent = refused;
    return;
  }
  // a whole tier, or every tenant at once, is confirmed first, naming what it reaches
  if (!on && (request.target.tier !== undefined || !request.tenant)) {
    pendingSwitch = request;
    $("switch-confirm-text").textContent = blastRadius(request);
    $("switch-confirm").hidden = false;
    $("switch-result").textContent = "not switched yet: confirm or cancel";
    $("switch-confirm-no").focus();
    return;
  }
  applySwitchFromForm(request);
}

/** Applies a switch the form made; the form is emptied so nothing carries into the next one. */
async function applySwitchFromForm(request) {
  pendingSwitch = null;
  $("switch-confirm").hidden = true;
  $("set-switch").reset();
  await setSwitch(request);
}

async function tenantFromForm(event) {
  event.preventDefault();
  const file = { fileName: $("tenant-file-name").value.trim(), content: $("tenant-file-content").value };
  try {
    const action = event.submitter?.value;
    if (action === "add" || action === "update") {
      const { json } = await admin(action === "add" ? "AddTenant" : "UpdateTenant", file);
      const ids = json.tenants.map((t) => t.id).join(", ");
      $("tenant-result").textContent = `${action === "add" ? "added" : "updated"}: ${ids}`;
    } else {
      const { json } = await admin("CheckTenant", file);
      $("tenant-result").textContent = `valid: tenant ${json.tenant}, process group ${json.group}${
        json.updates ? " (updates the running tenant)" : ""
      }`;
    }
  } catch (err) {
    $("tenant-result").textContent = err.message;
  }
  await refresh();
}

async function open(credential) {
  token = credential;
  try {
    await admin("ListSwitches", {});
  } catch (err) {
    sessionStorage.removeItem("mesh.ops");
    $("sign-in-error").textContent = err.message;
    return;
  }
  sessionStorage.setItem("mesh.ops", credential);
  $("sign-in").hidden = true;
  $("console").hidden = false;
  $("set-switch").addEventListener("submit", switchFromForm);
  // a confirmation is for the switch it names: editing the form withdraws it
  $("set-switch").addEventListener("input", () => {
    if (!pendingSwitch) return;
    pendingSwitch = null;
    $("switch-confirm").hidden = true;
    $("switch-result").textContent = "the form changed: switch off again to confirm the new one";
  });
  $("switch-confirm-yes").addEventListener("click", () => pendingSwitch && applySwitchFromForm(pendingSwitch));
  $("switch-confirm-no").addEventListener("click", () => {
    pendingSwitch = null;
    $("switch-confirm").hidden = true;
    $("switch-result").textContent = "cancelled: nothing switched";
  });
  $("tenant-file").addEventListener("submit", tenantFromForm);
  $("grey").addEventListener("submit", greyFromForm);
  $("fault").addEventListener("submit", faultFromForm);
  await refresh();
  setInterval(refresh, 3000);
}

$("sign-in").addEventListener("submit", (event) => {
  event.preventDefault();
  open($("ops-token").value);
});
// the credential stays for this tab only (sessionStorage), never in the address
const kept = sessionStorage.getItem("mesh.ops");
if (kept) open(kept);

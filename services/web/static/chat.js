// The web chat: a terminal of one user of one business line. It attaches (the gateway's
// stream, as server-sent events), syncs what it missed from its cursor, acknowledges what it
// shows, sends, marks read, and shows the user's orders and suggestions beside the
// conversation. Every request is a contract call over the mesh's HTTP/JSON access, with the
// user's token: the mesh lets it act as that user only.
import { MeshError, call, el, stream } from "./mesh.js";

const $ = (id) => document.getElementById(id);
/** Where this tab keeps its sign-in, so a reload keeps it (gone with the tab or a sign-out). */
const SESSION_KEY = "mesh.chat.session";

let session = null; // { tenant, user, token, peer, terminal, conversation }
let timers = [];
let online = true;
let attached = null; // the AbortController of the open stream
const shown = new Map(); // message id -> its list item
let sentSeqs = []; // [seq, list item] of what this user sent here, for read receipts
let lastRead = 0; // the other side's read position in the open conversation
let attachGeneration = 0; // the attach loop that runs now; an older one stops
let orderMajor = null; // the order contract major the tenant runs (found on first call)
// A push is a hint, the timeline is the truth: every message of this user's timeline up to
// `cursor` is shown and acknowledged; the stream's heartbeats say where the timeline ends
// (`head`), and a head above the cursor, or a push above a gap, syncs what is missing
let cursor = 0;
let head = 0;
let syncing = null; // the sync under way
let syncSession = 0; // which sign-in a sync belongs to: an older one's result is dropped
let syncBackoff = 0; // ms before syncing again after a sync that did not reach the head
let reconnectIn = null; // the node said it is leaving: attach again after this many ms
// What this user wrote and the mesh has not yet confirmed stored, in the order written. Each
// keeps the one client id it got when written: a retry after any failure (a timeout, a node
// gone, a double click) is answered with the one stored message, never a second
const outbox = [];
let sending = false; // the outbox is being sent
// Read receipts are sent only for what the user could see: the open conversation in a shown,
// focused tab; what arrives otherwise is read once the tab is looked at again
let unreadSeq = 0;

function headers() {
  return { "x-mesh-tenant": session.tenant, authorization: `Bearer ${session.token}` };
}

function mesh(path, body) {
  return call(path, body, headers());
}

function setConnection(state) {
  const pill = $("connection");
  pill.textContent = state;
  pill.dataset.state = state;
}

/**
 * The conversation of two users when none is given, named alike on both sides (the first
 * user's length keeps `a.b`+`c` apart from `a`+`b.c`). A business line's desk names its
 * conversations itself (`#conversation=...`): one named from two user ids can be opened first
 * by a third user, and the message service keeps whoever opened it.
 */
function conversationOf(a, b) {
  const [first, second] = [a, b].sort();
  return `chat:${first.length}:${first}.${second}`;
}

/**
 * The terminal id of this tab for this user: kept across reloads of the tab (its cursor
 * resumes), and another tab is another terminal (two tabs never take one stream from each
 * other).
 */
function terminalOf(tenant, user) {
  const key = `mesh.terminal.${tenant}.${user}`;
  let id = sessionStorage.getItem(key);
  if (!id) {
    id = `web-${crypto.randomUUID().slice(0, 8)}`;
    sessionStorage.setItem(key, id);
  }
  return id;
}

/** Back to the sign-in form with `why` (a token refused, expired). */
function signOut(why) {
  takeBackUnsent(); // nothing typed is lost: it waits in the box for the next sign-in
  online = false;
  attachGeneration += 1;
  attached?.abort();
  timers.forEach(clearInterval);
  timers = [];
  setConnection("signed out");
  sessionStorage.removeItem(SESSION_KEY);
  $("chat").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = why;
}

/** When `message` was sent, as a `<time>` (the hour and minute; the full date on hover). */
function sentAt(message) {
  const ms = Number(message.sentAtMs ?? 0);
  if (!ms) return el("span", "");
  const at = new Date(ms);
  const time = el("time", "", at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
  time.dateTime = at.toISOString();
  time.title = at.toLocaleString();
  return time;
}

/** Whether the message list is scrolled to its end (the user is not reading above). */
function atEnd(list) {
  return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
}

/**
 * Appends `item` to the conversation: followed to the end when the user was there (or wrote
 * it), else a "new messages below" button, so reading above is never interrupted.
 */
function append(item, follow) {
  const list = $("messages");
  const wasAtEnd = atEnd(list);
  list.append(item);
  if (wasAtEnd || follow) list.scrollTop = list.scrollHeight;
  else $("new-below").hidden = false;
}

function show(message) {
  if (shown.has(message.messageId)) return;
  const mine = message.fromUser === session.user;
  const kind = message.kind === "MESSAGE_KIND_SYSTEM" ? "system" : mine ? "mine" : "theirs";
  const state = el("span", "state", mine ? "sent" : "");
  // a message of another conversation of this user is shown with its conversation named
  const elsewhere =
    message.conversationId && message.conversationId !== session.conversation
      ? ` · in ${message.conversationId}`
      : "";
  // a customer writing from another platform (a third-party channel: `ch:<channel>:<id>`)
  const channel = /^ch:([a-z][a-z0-9-]*):/.exec(message.fromUser ?? "");
  const via = channel ? ` · via ${channel[1]}` : "";
  const body = el("span", "body", message.body);
  body.dir = "auto"; // Hebrew or Arabic laid out right to left, each message on its own
  const item = el(
    "li",
    `message ${kind}`,
    el("span", "from", (kind === "system" ? "system" : message.fromUser) + via + elsewhere),
    body,
    sentAt(message),
    state,
  );
  item.dataset.seq = message.seq;
  item.dataset.messageId = message.messageId;
  shown.set(message.messageId, item);
  // a message of the open conversation takes its place by seq (history arrives after live
  // pushes, older pages above); any other goes at the end
  const here = message.conversationId === session.conversation;
  item.dataset.here = here ? "1" : "";
  const seq = Number(message.seq);
  const later = here
    ? [...$("messages").querySelectorAll("li[data-here='1']")].find((li) => Number(li.dataset.seq) > seq)
    : null;
  if (later) later.before(item);
  else append(item, mine);
  if (mine) {
    sentSeqs.push([Number(message.seq), state]);
    markReceipts();
  }
}

function markReceipts() {
  for (const [seq, state] of sentSeqs) {
    if (seq <= lastRead) state.textContent = "read";
  }
}

/**
 * Shows a page of the open conversation's history: its latest messages, or (`older`) the page
 * before the earliest shown; "Show earlier messages" while more remain.
 */
async function loadHistory(older = false) {
  const mine = syncSession;
  const shownSeqs = [...$("messages").querySelectorAll("li[data-here='1']")].map((li) =>
    Number(li.dataset.seq),
  );
  const before = older && shownSeqs.length > 0 ? Math.min(...shownSeqs) : 0;
  try {
    const { json } = await mesh("/message/v1/History", {
      conversationId: session.conversation,
      userId: session.user,
      beforeSeq: before,
      limit: 50,
    });
    if (mine !== syncSession) return;
    const list = $("messages");
    const keep = list.scrollHeight - list.scrollTop; // an older page keeps what is read in view
    json.messages.forEach(show);
    if (older) list.scrollTop = list.scrollHeight - keep;
    $("earlier").hidden = !json.more;
  } catch (err) {
    // a conversation nobody wrote in yet has no history (NOT_FOUND): nothing to show
    if (!(err instanceof MeshError && err.status === "NOT_FOUND")) console.warn("history", err);
  }
}

/** Shows what came while this terminal was away, from its cursor, then moves the cursor. */
async function sync() {
  const mine = syncSession;
  for (;;) {
    const { json } = await mesh("/message/v1/FetchOffline", {
      userId: session.user,
      terminalId: session.terminal,
      limit: 50,
    });
    if (mine !== syncSession) return; // signed out (or in as someone else) meanwhile
    json.messages.forEach((m) =>
      m.kind === "MESSAGE_KIND_READ_RECEIPT" ? receipt(m.receipt) : receive(m, false),
    );
    // one receipt for the page: up to the last message of the open conversation in it
    const here = json.messages.filter(
      (m) =>
        m.conversationId === session.conversation &&
        m.kind !== "MESSAGE_KIND_SYSTEM" &&
        m.kind !== "MESSAGE_KIND_READ_RECEIPT",
    );
    if (here.length > 0) readWhenSeen(here[here.length - 1].seq);
    if (json.messages.length > 0) {
      await mesh("/message/v1/AckDelivery", {
        userId: session.user,
        terminalId: session.terminal,
        upToPosition: json.nextPosition,
      });
    }
    cursor = Math.max(cursor, Number(json.nextPosition ?? 0));
    if (!json.more) break;
  }
}

/** Syncs from the cursor unless a sync is under way; again after it if still behind. */
function resync() {
  if (syncing) return syncing;
  const before = cursor;
  syncing = sync()
    .catch((err) => console.warn("sync", err))
    .finally(() => {
      syncing = null;
      if (!(head > cursor && online)) {
        syncBackoff = 0;
        return;
      }
      // still behind: at once if this sync moved, else after a growing pause (a node
      // draining, a degraded answer): never a tight loop of syncs
      syncBackoff = cursor > before ? 0 : Math.min(Math.max(syncBackoff * 2, 250), 5000);
      setTimeout(() => online && resync(), syncBackoff);
    });
  return syncing;
}

/** Whether the user can see the open conversation now: the tab shown and focused. */
function seen() {
  return document.visibilityState === "visible" && document.hasFocus();
}

/** Marks the open conversation read up to `seq` now if the user sees it, else once they do. */
function readWhenSeen(seq) {
  unreadSeq = Math.max(unreadSeq, Number(seq));
  if (seen()) {
    markRead(unreadSeq);
    unreadSeq = 0;
  }
}

/** Tells the other side this user read the open conversation up to `seq`. */
function markRead(seq) {
  mesh("/message/v1/MarkRead", {
    conversationId: session.conversation,
    userId: session.user,
    terminalId: session.terminal,
    upToSeq: seq,
  }).catch(() => {}); // a receipt is best effort; a degraded MarkRead answers empty
}

/**
 * A message for this user: shown, and (`readNow`, a live push) read at once when it is of the
 * open conversation.
 */
function receive(message, readNow = true) {
  show(message);
  const here =
    message.conversationId === session.conversation && message.kind !== "MESSAGE_KIND_SYSTEM";
  if (readNow && here) readWhenSeen(message.seq);
  if (message.kind === "MESSAGE_KIND_SYSTEM") refreshOrders();
}

/**
 * A read receipt, pushed or synced as an entry of this user's timeline: the other side read
 * the open conversation this far (this user's own, from another terminal, changes nothing
 * shown here).
 */
function receipt(r) {
  // seqs count within a conversation: a receipt of another says nothing about this one
  if (r.reader !== session.user && r.conversationId === session.conversation) {
    lastRead = Math.max(lastRead, Number(r.upToSeq));
    markReceipts();
  }
}

function push(p) {
  if (p.message) receive(p.message);
  if (p.receipt) receipt(p.receipt);
  // messages and receipts have a place in the timeline, acknowledged in order
  const position = Number((p.message ?? p.receipt)?.position ?? 0);
  if (position > 0) {
    head = Math.max(head, position);
    if (position === cursor + 1 && !syncing) {
      cursor = position;
      mesh("/message/v1/AckDelivery", {
        userId: session.user,
        terminalId: session.terminal,
        upToPosition: position,
      }).catch(() => {}); // unacked, it comes again at the next sync
    } else if (position > cursor) {
      // a gap below it (a push this tab never got): the sync shows what is missing
      resync();
    }
  } else if (p.heartbeat) {
    head = Math.max(head, Number(p.heartbeat.head ?? 0));
    if (head > cursor) resync();
  } else if (p.reconnect) {
    // the node is leaving: the stream ends now, and this tab attaches again (elsewhere)
    reconnectIn = Number(p.reconnect.afterMs ?? 0);
  } else if (p.signedOut) {
    // signed out from another device, or to make room at the device cap: not again by itself
    signOut(`This device was signed out: ${p.signedOut.reason}`);
  }
}

/** Keeps the terminal attached while online: attach, sync, then pushes until cut; again. */
async function attach() {
  const generation = ++attachGeneration;
  while (online && generation === attachGeneration) {
    reconnectIn = null; // a hint counts for the stream it came on only
    const controller = new AbortController();
    attached = controller;
    setConnection("connecting");
    try {
      await stream(
        "/gateway/v1/Attach",
        { userId: session.user, terminalId: session.terminal, kind: "TERMINAL_KIND_WEB" },
        headers(),
        {
          signal: controller.signal,
          onOpen: () => {
            setConnection("online");
            resync();
          },
          onMessage: push,
        },
      );
      // the node said it is leaving: attach again after the moment it named
      if (reconnectIn !== null && generation === attachGeneration) {
        const wait = reconnectIn;
        reconnectIn = null;
        setConnection("reconnecting");
        await new Promise((resolve) => setTimeout(resolve, wait));
        continue;
      }
      // ended without an error: this terminal attached elsewhere (another tab with a copy of
      // this one's session); taking it back would start a tug of war
      if (generation === attachGeneration) {
        online = false;
        $("toggle-online").textContent = "Go online";
        setConnection("opened elsewhere");
        return;
      }
    } catch (err) {
      if (controller.signal.aborted) break;
      if (err instanceof MeshError && (err.http === 401 || err.http === 403)) {
        signOut(`The mesh refused this sign-in: ${err.message}`);
        return;
      }
      console.warn("attach", err);
    }
    if (!online || generation !== attachGeneration) break;
    setConnection("reconnecting");
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  if (generation === attachGeneration) setConnection("offline");
}

/** Where this tab keeps its user's unsent messages, so a reload sends them (once each). */
function outboxKey() {
  return `mesh.chat.outbox.${session.tenant}.${session.user}`;
}

function saveOutbox() {
  if (!session) return;
  const kept = outbox.map(({ body, clientMsgId }) => ({ body, clientMsgId }));
  if (kept.length > 0) sessionStorage.setItem(outboxKey(), JSON.stringify(kept));
  else sessionStorage.removeItem(outboxKey());
}

/** Puts `body` in the outbox under `clientMsgId`, shown as on its way. */
function queue(body, clientMsgId) {
  const text = el("span", "body", body);
  text.dir = "auto";
  const state = el("span", "state", "sending");
  const item = el("li", "message mine pending", el("span", "from", session.user), text, state);
  append(item, true);
  outbox.push({ body, clientMsgId, item, state, session: syncSession, attempts: 0 });
  saveOutbox();
}

/**
 * Send: what was typed goes to the outbox and the box is empty at once for the next message,
 * whatever the mesh answers and however long it takes; an empty box sends nothing (so a
 * double click sends once).
 */
function send(event) {
  event.preventDefault();
  const box = $("body");
  const body = box.value.trim();
  if (!body || !session) return;
  box.value = "";
  $("send-error").textContent = "";
  queue(body, crypto.randomUUID());
  sendOutbox();
}

/** Tries before a message waits for the user's "Retry" (each after a longer pause). */
const MAX_ATTEMPTS = 8;

/**
 * A failure worth another try with the same client id (the message may be stored already):
 * the network, a timeout, a rate, the mesh or a proxy in front of it failing. A refusal of
 * the message itself (400, 403, 404, 409, 413) is not.
 */
function retryable(err) {
  if (!(err instanceof MeshError)) return true; // the request may not have left
  const http = err.http;
  return http === 0 || http === 408 || http === 429 || (http >= 500 && http !== 501);
}

/** What was not sent goes back to the box, before what is typed there (a sign-out). */
function takeBackUnsent() {
  const unsent = outbox.splice(0);
  unsent.forEach((o) => o.item.remove());
  $("body").value = [...unsent.map((o) => o.body), $("body").value].filter(Boolean).join("\n");
  if (session) sessionStorage.removeItem(outboxKey());
}

/** Sends the outbox in order, one at a time, each retried until stored or refused. */
async function sendOutbox() {
  if (sending) return;
  sending = true;
  try {
    while (outbox.length > 0) {
      const next = outbox[0];
      if (next.session !== syncSession) {
        outbox.shift(); // another sign-in's (it was taken back into the box)
        continue;
      }
      try {
        next.attempts += 1;
        const { json } = await mesh("/message/v1/Send", {
          conversationId: session.conversation,
          fromUser: session.user,
          toUser: session.peer,
          body: next.body,
          clientMsgId: next.clientMsgId,
        });
        next.item.remove();
        if (outbox[0] !== next) continue; // signed out meanwhile: the outbox is another's
        outbox.shift();
        saveOutbox();
        show(json.message);
      } catch (err) {
        if (next.session !== syncSession || outbox[0] !== next) continue;
        if (err instanceof MeshError && err.http === 401) {
          signOut("Your sign-in has expired or was withdrawn: sign in again.");
          return;
        }
        if (retryable(err) && next.attempts < MAX_ATTEMPTS) {
          next.state.textContent = "retrying";
          const wait = Math.min(500 * 2 ** (next.attempts - 1), 5000);
          await new Promise((resolve) => setTimeout(resolve, wait));
          continue;
        }
        // refused for what it is (too long, not allowed), or still failing: said on the
        // message; a "Retry" sends it again under the same client id (never twice stored)
        outbox.shift();
        saveOutbox();
        next.item.classList.replace("pending", "failed");
        next.state.textContent = `not sent: ${err.message} `;
        const again = el("button", "small", "Retry");
        again.type = "button";
        again.addEventListener("click", () => {
          next.item.remove();
          queue(next.body, next.clientMsgId);
          sendOutbox();
        });
        next.state.append(again);
        $("send-error").textContent = err.message;
      }
    }
  } finally {
    sending = false;
  }
}

/**
 * The user's orders from the order major the tenant runs: v2 first (paipai), v1 when the
 * tenant's plan refuses v2 (mall); remembered once found.
 */
async function listOrders() {
  const request = { userId: session.user, limit: 5 };
  for (const major of orderMajor ? [orderMajor] : [2, 1]) {
    try {
      const answer = await mesh(`/order/v${major}/ListOrders`, request);
      orderMajor = major;
      return answer;
    } catch (err) {
      // the tenant does not run this major (FAILED_PRECONDITION; UNIMPLEMENTED from a node
      // of an earlier version): try the next
      const notRun = err.status === "FAILED_PRECONDITION" || err.status === "UNIMPLEMENTED";
      if (orderMajor || !notRun) throw err;
    }
  }
  throw new Error("the tenant runs no order major this page knows");
}

/** An order's total: `currency cents` in v1, `total { currency, minorUnits }` in v2. */
function money(order) {
  const [currency, minor] = order.total
    ? [order.total.currency, order.total.minorUnits]
    : [order.currency, order.totalCents];
  return `${currency} ${(Number(minor) / 100).toFixed(2)}`;
}

async function refreshOrders() {
  const list = $("orders");
  try {
    const { json, degraded } = await listOrders();
    // a degraded lookup answers no orders: said as such, never as "no orders"
    const orders = json.orders ?? [];
    list.replaceChildren(
      ...(degraded
        ? [el("li", "degraded", `Orders are not shown for now (${degraded} is switched off).`)]
        : orders.length === 0
        ? [el("li", "muted", "no orders")]
        : orders.map((o) =>
            el(
              "li",
              "order",
              el("span", "order-id", o.orderId),
              ` ${o.status.replace("ORDER_STATUS_", "").toLowerCase()} `,
              money(o),
            ),
          )),
    );
  } catch (err) {
    list.replaceChildren(el("li", "error", err.message));
  }
}

async function refreshSuggestions() {
  const state = $("recommend-state");
  const banner = $("recommend-degraded");
  try {
    const { json, degraded } = await mesh("/recommend/v1/Suggest", {
      userId: session.user,
      conversationId: session.conversation,
      limit: 3,
    });
    state.textContent = degraded ? "degraded" : "live";
    state.dataset.state = degraded ? "degraded" : "live";
    banner.hidden = !degraded;
    banner.textContent = degraded
      ? `Suggestions are switched off for now (${degraded}); the chat works as usual.`
      : "";
    $("suggestions").replaceChildren(
      ...json.products.map((p) =>
        el("li", "product", p.title, ` ${p.currency} ${(Number(p.priceCents) / 100).toFixed(2)}`),
      ),
    );
  } catch (err) {
    state.textContent = "unavailable";
    state.dataset.state = "unavailable";
    banner.hidden = false;
    banner.textContent = err.message;
  }
}

function toggleOnline() {
  online = !online;
  $("toggle-online").textContent = online ? "Go offline" : "Go online";
  if (online) attach();
  else {
    attachGeneration += 1;
    attached?.abort();
    setConnection("offline");
  }
}

function start(values) {
  const { tenant, user, token, peer, conversation } = values;
  sessionStorage.setItem(SESSION_KEY, JSON.stringify({ tenant, user, token, peer, conversation }));
  session = {
    tenant,
    user,
    token,
    peer,
    terminal: terminalOf(tenant, user),
    conversation: conversation || conversationOf(user, peer),
  };
  online = true;
  shown.clear();
  sentSeqs = [];
  cursor = 0;
  head = 0;
  reconnectIn = null;
  syncing = null;
  syncSession += 1;
  syncBackoff = 0;
  lastRead = 0;
  unreadSeq = 0;
  orderMajor = null;
  $("messages").replaceChildren();
  $("earlier").hidden = true;
  $("sign-in").hidden = true;
  $("sign-in-error").textContent = "";
  $("chat").hidden = false;
  $("who").textContent = `${user} @ ${tenant}`;
  $("conversation-title").textContent = `with ${peer}`;
  loadHistory();
  attach();
  // what this user wrote here and a reload interrupted goes out now, under its own client id
  try {
    for (const { body, clientMsgId } of JSON.parse(sessionStorage.getItem(outboxKey()) ?? "[]")) {
      if (body && clientMsgId) queue(body, clientMsgId);
    }
  } catch (_) {
    sessionStorage.removeItem(outboxKey());
  }
  sendOutbox();
  refreshOrders();
  refreshSuggestions();
  // the panels follow the business: an order event may be stored a moment after the system
  // message about it arrives, and ops may switch suggestions off or on at any time
  // (every 5 s, and only while the tab is shown: a tab's polls spend its tenant's rate)
  timers.push(
    setInterval(() => {
      if (document.visibilityState !== "visible") return;
      refreshOrders();
      refreshSuggestions();
    }, 5000),
  );
}

$("composer").addEventListener("submit", send);
// Enter sends, Shift+Enter starts a new line (not while an input method composes a word)
$("body").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("earlier").addEventListener("click", () => loadHistory(true));
$("new-below").addEventListener("click", () => {
  const list = $("messages");
  list.scrollTop = list.scrollHeight;
  $("new-below").hidden = true;
});
$("messages").addEventListener("scroll", () => {
  if (atEnd($("messages"))) $("new-below").hidden = true;
});
// what arrived while the tab was hidden or unfocused is read once the user looks at it
const looked = () => {
  if (session && unreadSeq > 0) readWhenSeen(unreadSeq);
};
document.addEventListener("visibilitychange", looked);
window.addEventListener("focus", looked);
$("toggle-online").addEventListener("click", toggleOnline);

// sign in from the form, or at once from the address
// (#tenant=mall&user=alice&token=...&peer=bob[&conversation=...]); the token is taken out of
// the address (and the history) at once
const given = new URLSearchParams(location.hash.slice(1));
if (location.hash) history.replaceState(null, "", location.pathname);
$("sign-in").addEventListener("submit", (event) => {
  event.preventDefault();
  start({
    tenant: $("tenant").value.trim(),
    user: $("user").value.trim(),
    token: $("token").value.trim(),
    peer: $("peer").value.trim(),
    conversation: given.get("conversation") ?? "",
  });
});
let kept = null;
try {
  kept = JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? "null");
} catch (_) {
  sessionStorage.removeItem(SESSION_KEY); // unreadable: signed out
}
if (["tenant", "user", "token", "peer"].every((k) => given.get(k))) {
  start(Object.fromEntries(given));
} else if (kept) {
  start(kept); // a reload: the same sign-in, the same terminal (its cursor resumes)
} else {
  for (const k of ["tenant", "user", "peer"]) if (given.get(k)) $(k).value = given.get(k);
}

// Long on purpose: a terminal stream's whole life (attach, sync, heartbeats, delivery, drain,
// replacement) in one place, where its invariants are read together.
//! The access node's side of the terminal streams.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use mesh_api::{
    gateway::v1::{self, gateway_server::Gateway},
    locator::v1 as locator,
};
use mesh_contract::{RequestContext, ServiceCredentials, TenantId, fields::now_ms};
use mesh_runtime::{OutboundChannel, Peers};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use crate::heartbeat::{Heads, heartbeat, read_heads};

mod devices;

pub use devices::{AtDeviceCap, DEFAULT_MAX_DEVICES, DevicePolicy};

/// Pushes a terminal may have outstanding. A terminal that falls this far behind is
/// disconnected (its stream ends): it reconnects and fetches what it missed as offline
/// messages, instead of making the gateway hold an unbounded backlog.
pub const PUSH_BUFFER: usize = 256;

type Key = (TenantId, String, String);

/// Unregistrations in flight at once: when thousands of terminals leave together (a client
/// or a front door gone), their unregistrations queue here instead of opening thousands of
/// streams to the locator at once (which HTTP/2 flood protection answers with GOAWAY).
const UNREGISTERING: usize = 64;

/// Tries to unregister a departed terminal before giving up (about 3 s of pauses).
const UNREGISTER_ATTEMPTS: u32 = 5;

/// Whether a failed call may pass if tried again.
fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::ResourceExhausted
            | tonic::Code::Aborted
    )
}

struct Connection {
    id: u64,
    // boxed: the channel allocates its slots in blocks of 32, and a block of boxes is 256
    // bytes where a block of pushes is 32 whole messages, for every attached terminal
    pushes: mpsc::Sender<Box<v1::Push>>,
    /// When it attached: a stream older than the node's maximum age is asked to attach again.
    since: std::time::Instant,
    /// The status its stream ends with when this node ends it.
    farewell: Farewell,
}

/// Why this node ended a terminal's stream: its last status, UNAVAILABLE ("attach again"),
/// as gRPC says a server that cannot serve the call here. Unset, the stream ends OK: the same
/// terminal attached again and its new stream replaced this one (the web chat reads that as
/// "opened elsewhere" and stops, as it should only then), or a `Reconnect` hint on the stream
/// said when to attach again (a drain spreads the terminals over its window that way).
type Farewell = Arc<std::sync::OnceLock<Status>>;

impl Connection {
    /// Ends the stream (once the connection is dropped) with UNAVAILABLE and `reason`.
    fn end(&self, reason: impl Into<String>) {
        let _ = self.farewell.set(Status::unavailable(reason));
    }
}

/// The attached terminals, and how many each user holds: what the per-user quota reads at
/// every attach without walking the table. Read through `Deref`; every change goes through
/// [`Terminals::insert`], [`Terminals::remove`], [`Terminals::retain`] or
/// [`Terminals::take_all`], which keep the counts.
#[derive(Default)]
struct Terminals {
    by_key: HashMap<Key, Connection>,
    per_user: HashMap<(TenantId, String), u32>,
    per_tenant: HashMap<TenantId, u32>,
}

impl std::ops::Deref for Terminals {
    type Target = HashMap<Key, Connection>;

    fn deref(&self) -> &Self::Target {
        &self.by_key
    }
}

impl Terminals {
    /// Terminals `user` of `tenant` holds here.
    fn of_user(&self, tenant: &TenantId, user: &str) -> u32 {
        self.per_user
            .get(&(tenant.clone(), user.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Terminals of `tenant` here, all its users together.
    fn of_tenant(&self, tenant: &TenantId) -> u32 {
        self.per_tenant.get(tenant).copied().unwrap_or(0)
    }

    /// Attaches `connection` as `key`'s (replacing the terminal's previous stream, which then
    /// ends).
    fn insert(&mut self, key: Key, connection: Connection) {
        let user = (key.0.clone(), key.1.clone());
        if self.by_key.insert(key, connection).is_none() {
            *self.per_tenant.entry(user.0.clone()).or_default() += 1;
            *self.per_user.entry(user).or_default() += 1;
        }
    }

    fn forget(&mut self, key: &Key) {
        let user = (key.0.clone(), key.1.clone());
        if let Some(count) = self.per_user.get_mut(&user) {
            *count -= 1;
            if *count == 0 {
                self.per_user.remove(&user);
            }
        }
        if let Some(count) = self.per_tenant.get_mut(&key.0) {
            *count -= 1;
            if *count == 0 {
                self.per_tenant.remove(&key.0);
            }
        }
    }

    fn remove(&mut self, key: &Key) -> Option<Connection> {
        let removed = self.by_key.remove(key);
        if removed.is_some() {
            self.forget(key);
        }
        removed
    }

    fn retain(&mut self, mut keep: impl FnMut(&Key, &Connection) -> bool) {
        let mut gone = Vec::new();
        self.by_key.retain(|key, c| {
            let kept = keep(key, c);
            if !kept {
                gone.push(key.clone());
            }
            kept
        });
        for key in &gone {
            self.forget(key);
        }
    }

    fn take_all(&mut self) -> Vec<(Key, Connection)> {
        self.per_user.clear();
        self.per_tenant.clear();
        self.by_key.drain().collect()
    }

    fn shrink_to(&mut self, capacity: usize) {
        self.by_key.shrink_to(capacity);
        self.per_user.shrink_to(capacity);
    }
}

/// Terminals one user may hold on a node unless the tenant says otherwise
/// (`limits.max_terminals_per_user`).
pub const DEFAULT_TERMINALS_PER_USER: u32 = 16;

/// Terminals all users of a tenant together may hold on a node unless the tenant says
/// otherwise (`limits.max_terminals`).
pub const DEFAULT_TERMINALS_PER_TENANT: u32 = 50_000;

/// How many terminals a tenant's users may hold on one node (its file's `limits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TerminalQuota {
    /// One user's (`limits.max_terminals_per_user`).
    pub per_user: u32,
    /// All its users' together (`limits.max_terminals`).
    pub per_tenant: u32,
}

impl Default for TerminalQuota {
    fn default() -> Self {
        Self {
            per_user: DEFAULT_TERMINALS_PER_USER,
            per_tenant: DEFAULT_TERMINALS_PER_TENANT,
        }
    }
}

struct Inner {
    node_id: String,
    node_address: String,
    locator: locator::LocatorCaller<OutboundChannel>,
    credentials: ServiceCredentials,
    connections: Mutex<Terminals>,
    /// Per tenant: terminals its users may hold here ([`GatewayService::set_terminal_quota`]).
    quotas: std::sync::RwLock<HashMap<TenantId, TerminalQuota>>,
    /// Per tenant: terminals a user may hold over every node, and what happens at the cap
    /// ([`GatewayService::set_device_policy`]).
    devices: std::sync::RwLock<HashMap<TenantId, DevicePolicy>>,
    /// The other access nodes, to sign a terminal out where it is attached. Their `Deliver`
    /// is a leaf (it calls nothing), so calling it from here can close no cycle of calls.
    peers: Peers,
    next_id: AtomicU64,
    unregistering: Arc<tokio::sync::Semaphore>,
    /// Wakes the heartbeat task before its next tick (this node may have missed pushes).
    beat: tokio::sync::Notify,
    /// Set by [`GatewayService::drain`]: attaches are refused (UNAVAILABLE) from then on.
    draining: std::sync::atomic::AtomicBool,
    /// A stream's maximum age in milliseconds (0: none): see
    /// [`GatewayService::set_max_stream_age`].
    max_age_ms: AtomicU64,
}

/// The service; clones share the connected terminals.
#[derive(Clone)]
pub struct GatewayService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GatewayService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayService")
            .field("node_id", &self.inner.node_id)
            .field("node_address", &self.inner.node_address)
            .finish_non_exhaustive()
    }
}

impl GatewayService {
    /// An access node named `node_id`, reachable at `node_address` (what the locator hands
    /// to the message service), registering terminals with the locator behind `locator` (a
    /// channel through the process's outbound stack) with the tenant's `credentials`.
    pub fn new(
        node_id: impl Into<String>,
        node_address: impl Into<String>,
        locator: OutboundChannel,
        peers: Peers,
        credentials: ServiceCredentials,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                node_id: node_id.into(),
                node_address: node_address.into(),
                locator: locator::LocatorCaller::new(locator),
                credentials,
                connections: Mutex::default(),
                quotas: std::sync::RwLock::default(),
                devices: std::sync::RwLock::default(),
                peers,
                next_id: AtomicU64::new(1),
                unregistering: Arc::new(tokio::sync::Semaphore::new(UNREGISTERING)),
                beat: tokio::sync::Notify::new(),
                draining: std::sync::atomic::AtomicBool::new(false),
                max_age_ms: AtomicU64::new(0),
            }),
        }
    }

    /// Lets each user of `tenant` hold at most `quota.per_user` terminals on this node, and
    /// all of them together `quota.per_tenant` (each at least 1; [`TerminalQuota::default`]
    /// until set). Terminals attached already stay; the next attach past a quota is refused.
    pub fn set_terminal_quota(&self, tenant: TenantId, quota: TerminalQuota) {
        self.inner.quotas.write().expect("lock").insert(
            tenant,
            TerminalQuota {
                per_user: quota.per_user.max(1),
                per_tenant: quota.per_tenant.max(1),
            },
        );
    }

    fn terminal_quota(&self, tenant: &TenantId) -> TerminalQuota {
        self.inner
            .quotas
            .read()
            .expect("lock")
            .get(tenant)
            .copied()
            .unwrap_or_default()
    }

    /// Terminals connected here, all tenants together.
    pub fn connected(&self) -> usize {
        self.inner.connections.lock().expect("lock").len()
    }

    /// Ends the streams of `tenant`'s terminals (the tenant is removed from this process, or
    /// moved to another): each terminal sees its stream end, attaches again through the front
    /// door and syncs from its cursor there. How many were attached.
    pub fn detach_tenant(&self, tenant: &TenantId) -> usize {
        let mut connections = self.inner.connections.lock().expect("lock");
        let before = connections.len();
        connections.retain(|(t, _, _), c| {
            if t == tenant {
                c.end(format!(
                    "tenant {tenant} is no longer served by this process (moved or removed): attach again to reach where it is served now"
                ));
            }
            t != tenant
        });
        before - connections.len()
    }
}

impl GatewayService {
    /// Sends every attached terminal its timeline's head (read from `heads`) every `interval`
    /// and whenever [`GatewayService::beat_now`] is called, until the gateway is dropped or
    /// the returned task aborted. See [`crate::heartbeat`] for why.
    pub fn start_heartbeats(
        &self,
        heads: Arc<dyn Heads>,
        interval: std::time::Duration,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        let interval = interval.max(std::time::Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is now: a terminal just attached synced already
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let woken = tokio::select! {
                    _ = tick.tick() => false,
                    _ = inner.beat.notified() => true,
                };
                if woken {
                    tick.reset();
                }
                inner.heartbeat(&*heads, interval).await;
            }
        })
    }

    /// Asks each terminal attached longer than `age` (each a little longer, up to a tenth
    /// more, so those that attached together do not leave together) to attach again, at the
    /// next heartbeat: after a scale-out the terminals spread onto the new nodes within `age`,
    /// as servers with a maximum connection age make their clients do. `None`: no maximum.
    pub fn set_max_stream_age(&self, age: Option<std::time::Duration>) {
        let ms = age.map_or(0, |a| {
            u64::try_from(a.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        self.inner.max_age_ms.store(ms, Ordering::Relaxed);
    }

    /// Sends every attached terminal its head now, not at the next tick: this node may have
    /// missed pushes (`mesh worker` calls it when its registry entries were written again
    /// after it was taken for dead). Without [`GatewayService::start_heartbeats`] it does
    /// nothing.
    pub fn beat_now(&self) {
        self.inner.beat.notify_one();
    }

    /// The node is leaving: tells every attached terminal to attach again elsewhere, terminal
    /// `i` of `n` after `window * i / n` (so they do not all arrive at the others at once),
    /// ends their streams and unregisters them from the locator (what is sent meanwhile waits
    /// in their timelines, synced when they attach again). How many were told.
    pub fn drain(&self, window: std::time::Duration, reason: &str) -> usize {
        self.inner.draining.store(true, Ordering::SeqCst);
        let drained: Vec<(Key, Connection)> =
            self.inner.connections.lock().expect("lock").take_all();
        let n = drained.len().max(1) as u128;
        for (i, (key, connection)) in drained.iter().enumerate() {
            let after = window.as_millis() * i as u128 / n;
            let hint = v1::Push {
                payload: Some(v1::push::Payload::Reconnect(v1::Reconnect {
                    after_ms: u32::try_from(after).unwrap_or(u32::MAX),
                    reason: reason.to_owned(),
                })),
            };
            // a terminal 256 pushes behind misses the hint; its stream still ends and it
            // attaches again as after any lost connection
            // the hint says it; a stream the hint cannot reach is told by its last status
            if connection.pushes.try_send(Box::new(hint)).is_err() {
                connection.end(format!("this node is leaving ({reason}): attach again"));
            }
            let ctx = RequestContext::new(key.0.clone());
            unregister(self.inner.clone(), &ctx, key.clone());
        }
        drained.len()
    }
}

impl Inner {
    /// One heartbeat on every attached stream; a stream past its maximum age is asked to
    /// attach again instead.
    async fn heartbeat(self: &Arc<Self>, heads: &dyn Heads, interval: std::time::Duration) {
        let max_age = self.max_age_ms.load(Ordering::Relaxed);
        let mut expired = Vec::new();
        let streams: Vec<(Key, mpsc::Sender<Box<v1::Push>>)> = {
            let mut connections = self.connections.lock().expect("lock");
            if max_age > 0 {
                connections.retain(|_, c| {
                    // each its own limit, up to a tenth above the maximum
                    let limit = max_age + max_age / 10 * (c.id % 101) / 100;
                    let old = c.since.elapsed().as_millis() as u64 >= limit;
                    if old {
                        expired.push((c.pushes.clone(), c.farewell.clone()));
                    }
                    !old
                });
            }
            connections
                .iter()
                .map(|(key, c)| (key.clone(), c.pushes.clone()))
                .collect()
        };
        for (pushes, farewell) in expired {
            let hint = v1::Push {
                payload: Some(v1::push::Payload::Reconnect(v1::Reconnect {
                    after_ms: 0,
                    reason: "the stream reached its maximum age".into(),
                })),
            };
            // its registration stays: the terminal attaches again at once and its new
            // registration replaces this one (an unregister now could land after it)
            if pushes.try_send(Box::new(hint)).is_err() {
                let _ = farewell.set(Status::unavailable(
                    "the stream reached its maximum age: attach again",
                ));
            }
        }
        if streams.is_empty() {
            return;
        }
        let mut users: HashMap<TenantId, Vec<String>> = HashMap::new();
        for ((tenant, user, _), _) in &streams {
            users.entry(tenant.clone()).or_default().push(user.clone());
        }
        // a slow store delays no heartbeat past its interval: a terminal would take its
        // stream for dead; the beats then say only that the stream is alive
        let found = tokio::time::timeout(interval / 2, read_heads(heads, users))
            .await
            .unwrap_or_else(|_| {
                tracing::warn!(
                    ?interval,
                    "reading timeline heads took too long; heartbeats without heads"
                );
                HashMap::new()
            });
        for ((tenant, user, _), pushes) in streams {
            let head = found.get(&(tenant, user)).copied().unwrap_or(0);
            // a full buffer means the terminal is far behind already: Deliver drops it
            let _ = pushes.try_send(Box::new(heartbeat(head, interval)));
        }
    }

    /// Hands `key`'s terminal its last push and ends its stream after it (the stream ends OK:
    /// the push says why). Whether it was attached here.
    fn end_with(&self, key: &Key, last: v1::Push) -> bool {
        let mut connections = self.connections.lock().expect("lock");
        let Some(connection) = connections.remove(key) else {
            return false;
        };
        // a full buffer: the terminal is far behind, and ends without the reason
        let _ = connection.pushes.try_send(Box::new(last));
        true
    }

    /// Forgets a connection if it is still the current one of its terminal.
    fn detach(&self, key: &Key, id: u64) -> bool {
        let mut connections = self.connections.lock().expect("lock");
        if connections.get(key).is_some_and(|c| c.id == id) {
            connections.remove(key);
            // after a crowd of terminals left, the table gives their room back
            let (len, capacity) = (connections.len(), connections.capacity());
            if capacity > 1024 && len < capacity / 4 {
                connections.shrink_to(len * 2);
            }
            true
        } else {
            false
        }
    }
}

/// The stream a terminal reads; dropping it (the terminal went away) detaches the terminal
/// and unregisters it from the locator.
struct PushStream {
    pushes: ReceiverStream<Box<v1::Push>>,
    /// The status the stream ends with, if the node ended it ([`Farewell`]).
    farewell: Farewell,
    said_farewell: bool,
    detach: Option<(Arc<Inner>, Key, u64, RequestContext)>,
    /// Whether the attach answered with it; one dropped before (the caller's deadline ran out
    /// while it registered) is usually attached again at once.
    answered: bool,
}

impl Stream for PushStream {
    type Item = Result<v1::Push, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.pushes).poll_next(cx) {
            Poll::Ready(None) if !self.said_farewell => {
                self.said_farewell = true;
                Poll::Ready(self.farewell.get().cloned().map(Err))
            }
            polled => polled.map(|p| p.map(|push| Ok(*push))),
        }
    }
}

impl Drop for PushStream {
    fn drop(&mut self) {
        let Some((inner, key, id, ctx)) = self.detach.take() else {
            return;
        };
        if !inner.detach(&key, id) {
            return; // replaced by a newer connection of the same terminal: it stays registered
        }
        // an attach cut off while it registered: its registration may still be on the wire,
        // and the app retries; the unregister waits a moment, then stands down if it did
        let wait = if self.answered {
            std::time::Duration::ZERO
        } else {
            std::time::Duration::from_secs(1)
        };
        unregister_after(inner, &ctx, key, wait);
    }
}

/// Tells the locator, in the background and with the node's credential for the tenant, that
/// a terminal left this node.
fn unregister(inner: Arc<Inner>, ctx: &RequestContext, key: Key) {
    unregister_after(inner, ctx, key, std::time::Duration::ZERO);
}

/// [`unregister`], `wait` from now.
fn unregister_after(inner: Arc<Inner>, ctx: &RequestContext, key: Key, wait: std::time::Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let ctx = inner.credentials.outbound(ctx);
    runtime.spawn(async move {
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let Ok(_permit) = inner.unregistering.clone().acquire_owned().await else {
            return;
        };
        // the terminal attached here again meanwhile (an app retrying an attach that ran out
        // of time): its new registration is the locator's to keep, not this one's to remove
        let attached_again = || inner.connections.lock().expect("lock").contains_key(&key);
        if attached_again() {
            return;
        }
        let key_again = key.clone();
        let (_, user_id, terminal_id) = key;
        let request = locator::UnregisterRequest {
            user_id,
            terminal_id,
            node_id: inner.node_id.clone(),
        };
        // a terminal left registered would look online for ever (no offline push for its
        // user): a failure that may pass is retried a few times, with growing pauses
        let mut backoff = mesh_contract::Backoff::new(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(2),
        );
        for attempt in 1..=UNREGISTER_ATTEMPTS {
            if attempt > 1 && inner.connections.lock().expect("lock").contains_key(&key_again) {
                return;
            }
            match inner.locator.clone().unregister(&ctx, request.clone()).await {
                Ok(_) => return,
                Err(status) if attempt < UNREGISTER_ATTEMPTS && retryable(&status) => {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(status) => {
                    tracing::warn!(tenant = %ctx.tenant, user = %request.user_id, terminal = %request.terminal_id, attempts = attempt, error = %status, "unregistering a terminal failed");
                    return;
                }
            }
        }
    });
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    type AttachStream = Pin<Box<dyn Stream<Item = Result<v1::Push, Status>> + Send>>;

    async fn attach(
        &self,
        request: Request<v1::AttachRequest>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        if self.inner.draining.load(Ordering::SeqCst) {
            return Err(Status::unavailable(
                "this node is leaving (draining): attach again to reach another",
            ));
        }
        let mut r = request.into_inner();
        // an end user attaches only its own terminals
        r.user_id = ctx.act_as("user_id", &r.user_id)?;
        r.terminal_id = ctx.act_for_terminal("terminal_id", &r.terminal_id)?;
        mesh_contract::fields::id("user_id", &r.user_id)?;
        mesh_contract::fields::id("terminal_id", &r.terminal_id)?;
        let key: Key = (ctx.tenant.clone(), r.user_id.clone(), r.terminal_id.clone());
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(PUSH_BUFFER);
        let farewell = Farewell::default();
        // reachable here before the locator sends anyone here; a reconnecting terminal's old
        // stream ends as its sender is replaced. Draining is checked again under the lock: a
        // drain that began since the check above would not tell this terminal
        {
            let mut connections = self.inner.connections.lock().expect("lock");
            if self.inner.draining.load(Ordering::SeqCst) {
                return Err(Status::unavailable(
                    "this node is leaving (draining): attach again to reach another",
                ));
            }
            // one user holds a bounded number of terminals: a new one past the quota is
            // refused at once (a terminal attaching again replaces its own stream, and counts
            // once); the refusal is the caller's, marked so no automatic rule samples it
            let quota = self.terminal_quota(&ctx.tenant);
            if !connections.contains_key(&key) {
                let over = if connections.of_user(&ctx.tenant, &r.user_id) >= quota.per_user {
                    Some(format!(
                        "user {:?} holds {} terminal(s) on this node, the most tenant {} allows \
                         (limits.max_terminals_per_user): close one, or attach one again under \
                         its own terminal_id",
                        r.user_id, quota.per_user, ctx.tenant
                    ))
                } else if connections.of_tenant(&ctx.tenant) >= quota.per_tenant {
                    Some(format!(
                        "tenant {} holds {} terminal(s) on this node, the most it allows \
                         (limits.max_terminals): attach again later, or through another node",
                        ctx.tenant, quota.per_tenant
                    ))
                } else {
                    None
                };
                if let Some(message) = over {
                    let mut refused = Status::resource_exhausted(message);
                    refused.metadata_mut().insert(
                        mesh_contract::headers::OVER_QUOTA,
                        tonic::metadata::MetadataValue::from_static("terminals"),
                    );
                    return Err(refused);
                }
            }
            connections.insert(
                key.clone(),
                Connection {
                    id,
                    pushes: tx,
                    since: std::time::Instant::now(),
                    farewell: farewell.clone(),
                },
            );
        }
        let mut stream = PushStream {
            farewell,
            said_farewell: false,
            pushes: ReceiverStream::new(rx),
            detach: Some((self.inner.clone(), key, id, ctx.clone())),
            answered: false,
        };
        let location = locator::TerminalLocation {
            user_id: r.user_id,
            terminal_id: r.terminal_id,
            kind: r.kind,
            node_id: self.inner.node_id.clone(),
            node_address: self.inner.node_address.clone(),
            connected_at_ms: now_ms(),
        };
        let (user, terminal) = (location.user_id.clone(), location.terminal_id.clone());
        // on failure the stream is dropped, which detaches the terminal again
        let registered = self
            .inner
            .locator
            .clone()
            .register(
                &self.inner.credentials.outbound(&ctx),
                locator::RegisterRequest {
                    location: Some(location),
                    // the others are read only when the device cap may be reached
                    others_over: self.device_policy(&ctx.tenant).max_devices,
                },
            )
            .await?;
        // registered: a refusal from here on unregisters at once (the stream is dropped)
        stream.answered = true;
        self.apply_device_cap(&ctx, &user, &terminal, registered.others)
            .await?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn deliver(
        &self,
        request: Request<v1::DeliverRequest>,
    ) -> Result<Response<v1::DeliverResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let r = request.into_inner();
        let push = r
            .push
            .ok_or_else(|| Status::invalid_argument("push is required"))?;
        let key: Key = (ctx.tenant.clone(), r.user_id, r.terminal_id);
        if matches!(push.payload, Some(v1::push::Payload::SignedOut(_))) {
            // the terminal's last push: its stream ends after it, and it leaves the registry
            let ended = self.inner.end_with(&key, push);
            if ended {
                unregister(self.inner.clone(), &ctx, key);
            }
            return Ok(Response::new(v1::DeliverResponse { delivered: ended }));
        }
        let sent = {
            let connections = self.inner.connections.lock().expect("lock");
            connections.get(&key).map(|c| {
                let sent = c.pushes.try_send(Box::new(push));
                if sent.is_err() {
                    c.end("this terminal fell too far behind its pushes: attach again and sync");
                }
                (c.id, sent)
            })
        };
        let delivered = match sent {
            Some((_, Ok(()))) => true,
            Some((id, Err(err))) => {
                // gone or too far behind: drop the connection so the terminal reconnects
                // and fetches what it missed
                tracing::info!(tenant = %key.0, user = %key.1, terminal = %key.2, reason = %err, "terminal disconnected");
                if self.inner.detach(&key, id) {
                    unregister(self.inner.clone(), &ctx, key);
                }
                false
            }
            None => false,
        };
        Ok(Response::new(v1::DeliverResponse { delivered }))
    }
}

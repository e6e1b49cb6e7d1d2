//! The front door of a mesh whose tenants run in separate processes: one HTTP/2 address for
//! callers, routing each call to the process serving its tenant (`x-mesh-tenant`). A tenant whose
//! process is restarting gets `UNAVAILABLE` at once; the others are not affected.
//!
//! Every call passes here, so the front door is also where the mesh watches its tenants (calls
//! in flight, latency and failures by tier for the automatic degradation rules, degraded
//! answers for `meshctl status`) and where ops inject latency for a drill, as a service mesh's
//! proxy does.

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    sync::{Arc, Mutex, RwLock},
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use mesh_contract::{TenantId, bus::BoxFuture, headers};
use tower::ServiceExt;

use crate::{
    connections::HoldUntilEnd,
    layers::{Catalogue, DEGRADED_HEADER},
    probes::Probes,
    upstream::{Upstream, UpstreamLimits},
};

/// How long call samples are kept for the rules' windows.
const KEEP_SAMPLES: Duration = Duration::from_secs(120);
/// At most this many samples per tenant (memory stays bounded under any flood).
const MAX_SAMPLES: usize = 50_000;
/// Degraded answers remembered for `status`.
const RECENT_DEGRADED: usize = 50;

/// Latency injected into a tenant's calls (a fault drill).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The tenant whose calls are delayed.
    pub tenant: TenantId,
    /// Only calls to this service; `None` for all.
    pub service: Option<String>,
    /// Added before the call is forwarded.
    pub delay: Duration,
}

/// A degraded answer the front door passed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DegradedSeen {
    /// Whose call.
    pub tenant: TenantId,
    /// gRPC path.
    pub method: String,
    /// The switch that answered (its scope).
    pub switch: String,
    /// When.
    pub at: SystemTime,
}

/// A tenant's traffic through the front door.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantLoad {
    /// Calls in flight now.
    pub in_flight: u32,
    /// Calls forwarded since start.
    pub calls: u64,
    /// Degraded answers since start.
    pub degraded: u64,
}

/// Latency and failures of some calls over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WindowStats {
    /// Calls answered in the window.
    pub calls: u32,
    /// Their 99th percentile latency.
    pub p99: Duration,
    /// Share of them that failed (0 to 1).
    pub error_rate: f64,
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    tier: u8,
    latency: Duration,
    failed: bool,
}

#[derive(Debug, Default)]
struct Watched {
    load: TenantLoad,
    samples: VecDeque<Sample>,
}

#[derive(Debug, Default)]
struct Watch {
    faults: RwLock<Vec<Fault>>,
    tenants: Mutex<HashMap<TenantId, Watched>>,
    degraded: Mutex<VecDeque<DegradedSeen>>,
}

/// Where each tenant's calls go.
#[derive(Clone, Debug)]
pub struct FrontDoor {
    routes: Arc<RwLock<HashMap<TenantId, Upstream>>>,
    /// Every tenant this mesh serves, routed now or not (a tenant whose process restarts is
    /// known but unrouted: UNAVAILABLE, worth a retry; an unknown one is UNAUTHENTICATED).
    known: Arc<RwLock<std::collections::HashSet<TenantId>>>,
    upstream: UpstreamLimits,
    catalogue: Catalogue,
    watch: Arc<Watch>,
    probes: Probes,
    /// When set, every call is authenticated here before it is routed (as its worker does
    /// again): an unknown tenant and a wrong credential are answered alike, at the same place.
    directory: Option<crate::TenantDirectory>,
    /// Mutual TLS towards the workers.
    node_tls: Option<crate::tls::NodeTls>,
}

impl Default for FrontDoor {
    fn default() -> Self {
        Self::new(Catalogue(&[]))
    }
}

/// Counts a call in flight until dropped.
struct InFlight {
    watch: Arc<Watch>,
    tenant: TenantId,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(w) = self
            .watch
            .tenants
            .lock()
            .expect("lock")
            .get_mut(&self.tenant)
        {
            w.load.in_flight = w.load.in_flight.saturating_sub(1);
        }
    }
}

impl FrontDoor {
    /// A front door that knows the methods of `catalogue` (their tiers, for the rules).
    pub fn new(catalogue: Catalogue) -> Self {
        Self {
            routes: Arc::default(),
            known: Arc::default(),
            upstream: UpstreamLimits::default(),
            catalogue,
            watch: Arc::default(),
            probes: Probes::new(catalogue.0, None),
            directory: None,
            node_tls: None,
        }
    }

    /// Dials the workers over mutual TLS (they serve with the same nodes' CA).
    pub fn with_node_tls(mut self, tls: Option<crate::tls::NodeTls>) -> Self {
        self.node_tls = tls;
        self
    }

    /// Authenticates every call with `directory` (and admits it by its contract audience)
    /// before routing it. Tenants onboarded later are added with [`FrontDoor::serve_tenant`].
    pub fn with_directory(mut self, directory: crate::TenantDirectory) -> Self {
        self.directory = Some(directory);
        self
    }

    /// Knows `config`'s tenant from now on, and its credentials when this front door
    /// authenticates.
    pub fn serve_tenant(&self, config: &crate::TenantConfig) {
        if let Some(directory) = &self.directory {
            directory.add(config);
        }
        self.know(config.tenant_id());
    }

    /// Answers health and reflection with `probes` (they need no tenant and are never
    /// forwarded); by default health only, for the catalogue's services.
    pub fn with_probes(mut self, probes: Probes) -> Self {
        self.probes = probes;
        self
    }

    /// Its health and reflection.
    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    /// Connects to each worker as `limits` say (connections, stream cap, keepalive); applies
    /// to tenants routed from now on.
    pub fn with_upstream(mut self, limits: UpstreamLimits) -> Self {
        self.upstream = limits;
        self
    }

    /// Streams open now to the worker serving `tenant`.
    pub fn open_streams(&self, tenant: &TenantId) -> Option<usize> {
        self.routes
            .read()
            .expect("lock")
            .get(tenant)
            .map(Upstream::open_streams)
    }

    /// Delays `tenant`'s calls (to `service`, or all) by `delay`; a zero delay clears the fault.
    pub fn set_fault(&self, tenant: TenantId, service: Option<String>, delay: Duration) {
        let mut faults = self.watch.faults.write().expect("lock");
        faults.retain(|f| !(f.tenant == tenant && f.service == service));
        if !delay.is_zero() {
            faults.push(Fault {
                tenant,
                service,
                delay,
            });
        }
    }

    /// The faults injected now.
    pub fn faults(&self) -> Vec<Fault> {
        self.watch.faults.read().expect("lock").clone()
    }

    /// Latency and failures of `tenant`'s calls of tier `max_tier` and more important ones,
    /// answered within the last `window`.
    pub fn window(&self, tenant: &TenantId, max_tier: u8, window: Duration) -> WindowStats {
        let since = Instant::now().checked_sub(window);
        let tenants = self.watch.tenants.lock().expect("lock");
        let Some(watched) = tenants.get(tenant) else {
            return WindowStats::default();
        };
        let mut latencies: Vec<Duration> = Vec::new();
        let mut failed = 0u32;
        for sample in watched.samples.iter().rev() {
            if since.is_some_and(|since| sample.at < since) {
                break;
            }
            if sample.tier <= max_tier {
                latencies.push(sample.latency);
                failed += u32::from(sample.failed);
            }
        }
        drop(tenants);
        if latencies.is_empty() {
            return WindowStats::default();
        }
        latencies.sort_unstable();
        let rank = (latencies.len() * 99).div_ceil(100).max(1) - 1;
        let calls = u32::try_from(latencies.len()).unwrap_or(u32::MAX);
        WindowStats {
            calls,
            p99: latencies[rank],
            error_rate: f64::from(failed) / f64::from(calls),
        }
    }

    /// Every tenant's traffic so far.
    pub fn load(&self) -> Vec<(TenantId, TenantLoad)> {
        let tenants = self.watch.tenants.lock().expect("lock");
        let mut load: Vec<_> = tenants
            .iter()
            .map(|(t, w)| (t.clone(), w.load.clone()))
            .collect();
        load.sort_by(|a, b| a.0.cmp(&b.0));
        load
    }

    /// The most recent degraded answers, newest first.
    pub fn recent_degraded(&self) -> Vec<DegradedSeen> {
        self.watch
            .degraded
            .lock()
            .expect("lock")
            .iter()
            .rev()
            .cloned()
            .collect()
    }

    fn enter(&self, tenant: &TenantId) -> InFlight {
        let mut tenants = self.watch.tenants.lock().expect("lock");
        let watched = tenants.entry(tenant.clone()).or_default();
        watched.load.in_flight += 1;
        watched.load.calls += 1;
        InFlight {
            watch: self.watch.clone(),
            tenant: tenant.clone(),
        }
    }

    fn record(
        &self,
        tenant: &TenantId,
        tier: Option<u8>,
        started: Instant,
        response: &http::Response<tonic::body::Body>,
        path: &str,
    ) {
        let status = grpc_code(response);
        // a caller's own mistake (no credential, a bad argument, a missing order) says nothing
        // about the service's health: it must not trip, nor calm, an automatic rule, or
        // anyone could switch a tenant off by sending garbage
        let sample = !status.is_some_and(caller_error);
        let failed = status.is_some_and(|code| code != tonic::Code::Ok);
        let degraded = response.headers().get(DEGRADED_HEADER);
        let now = Instant::now();
        let mut tenants = self.watch.tenants.lock().expect("lock");
        let watched = tenants.entry(tenant.clone()).or_default();
        if degraded.is_some() {
            watched.load.degraded += 1;
        }
        if let Some(tier) = tier.filter(|_| sample) {
            watched.samples.push_back(Sample {
                at: now,
                tier,
                latency: now - started,
                failed,
            });
            while watched.samples.len() > MAX_SAMPLES
                || watched
                    .samples
                    .front()
                    .is_some_and(|s| now.duration_since(s.at) > KEEP_SAMPLES)
            {
                watched.samples.pop_front();
            }
        }
        drop(tenants);
        if let Some(switch) = degraded {
            let mut recent = self.watch.degraded.lock().expect("lock");
            if recent.len() == RECENT_DEGRADED {
                recent.pop_front();
            }
            recent.push_back(DegradedSeen {
                tenant: tenant.clone(),
                method: path.to_owned(),
                switch: String::from_utf8_lossy(switch.as_bytes()).into_owned(),
                at: SystemTime::now(),
            });
        }
    }

    fn delay_for(&self, tenant: &TenantId, service: Option<&str>) -> Option<Duration> {
        self.watch
            .faults
            .read()
            .expect("lock")
            .iter()
            .filter(|f| {
                &f.tenant == tenant && f.service.as_deref().is_none_or(|s| Some(s) == service)
            })
            .map(|f| f.delay)
            .max()
    }

    /// Routes `tenant` to the process listening at `address` (`127.0.0.1:4567`).
    /// Records that this mesh serves `tenant` (before its process is up).
    pub fn know(&self, tenant: TenantId) {
        self.known.write().expect("lock").insert(tenant);
    }

    /// Tenants sharing a process share its connections (and its stream cap).
    pub fn route(&self, tenant: TenantId, address: &str) -> Result<(), tonic::transport::Error> {
        self.know(tenant.clone());
        let mut routes = self.routes.write().expect("lock");
        let upstream = match routes.values().find(|u| u.address() == address) {
            Some(shared) => shared.clone(),
            None => Upstream::with_tls(address, self.upstream, self.node_tls.as_ref())?,
        };
        routes.insert(tenant, upstream);
        Ok(())
    }

    /// Stops routing `tenant` (its process is gone).
    pub fn unroute(&self, tenant: &TenantId) {
        self.routes.write().expect("lock").remove(tenant);
    }

    /// Where `tenant` is routed.
    pub fn address(&self, tenant: &TenantId) -> Option<String> {
        self.routes
            .read()
            .expect("lock")
            .get(tenant)
            .map(|u| u.address().to_owned())
    }

    /// Serves callers on `listener` until `shutdown` resolves, with the default
    /// [`ConnectionLimits`](crate::connections::ConnectionLimits).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        self.serve_with(listener, Default::default(), None, shutdown)
            .await
    }

    /// Serves callers on `listener` under `limits` (connection cap, keepalive, idle timeout),
    /// over TLS when `tls` is given ([`crate::tls`]), until `shutdown` resolves.
    pub async fn serve_with(
        self,
        listener: tokio::net::TcpListener,
        limits: crate::connections::ConnectionLimits,
        tls: Option<tokio_rustls::TlsAcceptor>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        // a span for every call it answers or forwards (refused, delayed, routed): the
        // worker's span is its child, as the forwarded request carries this span's context
        let traced =
            tower::Layer::layer(&mesh_telemetry::TraceLayer::server(self.catalogue.0), self);
        crate::connections::serve_connections(listener, traced, limits, tls, shutdown).await
    }
}

/// A `grpc-timeout` header value (`100m`, `5S`): digits and a unit.
fn grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Whether forwarding failed because the request's deadline passed.
fn timed_out(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if e.to_string().contains("Timeout expired") || e.to_string().contains("timed out") {
            return true;
        }
        cause = e.source();
    }
    false
}

/// An answer saying the time ran out (the deadline, a cancellation, a cut-off forward).
fn ran_out(response: &http::Response<tonic::body::Body>) -> bool {
    grpc_code(response).is_some_and(|code| {
        matches!(
            code,
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unavailable
        )
    })
}

/// The gRPC status of a trailers-only answer (an early one, an error), read from its headers.
fn grpc_code(response: &http::Response<tonic::body::Body>) -> Option<tonic::Code> {
    response
        .headers()
        .get("grpc-status")
        .and_then(|s| s.to_str().ok())
        .and_then(|s| s.parse::<i32>().ok())
        .map(tonic::Code::from)
}

/// An answer that is about the call, not about the service's health.
fn caller_error(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Cancelled
            | InvalidArgument
            | NotFound
            | AlreadyExists
            | PermissionDenied
            | FailedPrecondition
            | OutOfRange
            | Unimplemented
            | Unauthenticated
    )
}

impl<B> tower_service::Service<http::Request<B>> for FrontDoor
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if Probes::is_probe(request.uri().path()) {
            let answer = self.probes.call(request);
            return Box::pin(async move { Ok(answer.await) });
        }
        // the mesh's own calls (locator, gateway delivery) never come from outside
        if let Some((_, method)) = self.catalogue.method(request.uri().path())
            && method.audience.is_internal()
        {
            let status = tonic::Status::permission_denied(format!(
                "{} is internal to the mesh; it is not served to callers outside it",
                request.uri().path()
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        // who is calling, before anything about the tenant is revealed (its route, its
        // process being down)
        if let Some(directory) = &self.directory {
            let checked = directory
                .authenticate_headers(request.headers())
                .map_err(tonic::Status::from)
                .and_then(|ctx| directory.admits(request.uri().path(), &ctx.caller));
            if let Err(status) = checked {
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        let tenant = request
            .headers()
            .get(headers::TENANT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let tenant_id = tenant.as_deref().and_then(|t| TenantId::new(t).ok());
        let route = tenant_id
            .as_ref()
            .and_then(|t| self.routes.read().expect("lock").get(t).cloned());
        let front = self.clone();
        let known = tenant_id
            .as_ref()
            .is_some_and(|t| self.known.read().expect("lock").contains(t));
        Box::pin(async move {
            let (Some(upstream), Some(tenant_id)) = (route, tenant_id) else {
                let status = match tenant {
                    None => tonic::Status::unauthenticated(format!(
                        "request carries no tenant (header `{}`)",
                        headers::TENANT
                    )),
                    // as a wrong credential is answered: nobody learns which tenants exist
                    Some(t) if !known => tonic::Status::unauthenticated(
                        crate::auth::AuthError::WrongCredential(t).to_string(),
                    ),
                    Some(t) => tonic::Status::unavailable(format!(
                        "no process is serving tenant {t:?} right now"
                    )),
                };
                return Ok(status.into_http());
            };
            let path = request.uri().path().to_owned();
            let deadline = request
                .headers()
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .and_then(grpc_timeout);
            let method = front.catalogue.method(&path);
            // a server stream (a terminal) may stay for hours: those are what the cap bounds
            let long_lived = method.is_none_or(|(_, m)| m.server_streaming);
            let slot = match upstream.acquire(long_lived) {
                Ok(slot) => slot,
                Err(status) => return Ok(status.into_http()),
            };
            let started = Instant::now();
            let in_flight = front.enter(&tenant_id);
            if let Some(delay) = front.delay_for(&tenant_id, method.map(|(spec, _)| spec.name)) {
                tokio::time::sleep(delay).await;
            }
            let request = request.map(tonic::body::Body::new);
            let response = match slot.channel().oneshot(request).await {
                Ok(response) => response,
                // the caller's own grpc-timeout ran out first: its deadline, not an outage
                Err(err) if timed_out(&err) => tonic::Status::deadline_exceeded(
                    "the caller's deadline passed before the tenant's process answered",
                )
                .into_http(),
                Err(err) => tonic::Status::unavailable(format!(
                    "the tenant's process did not answer: {err}"
                ))
                .into_http(),
            };
            // a caller that gave the call less time than its contract does says nothing about
            // the service when it runs out of it (or anyone could trip a rule with tiny
            // deadlines)
            let cut_short = method.is_some_and(|(_, m)| deadline.is_some_and(|d| d < m.timeout));
            let tier = method
                .filter(|_| !(cut_short && ran_out(&response)))
                .map(|(spec, _)| spec.tier.get());
            front.record(&tenant_id, tier, started, &response, &path);
            // a stream (a terminal) stays open, and counted, until its body ends
            Ok(HoldUntilEnd::wrap(response, (slot, in_flight)))
        })
    }
}

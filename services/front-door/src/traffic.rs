//! What the front door watches of each tenant's traffic: calls in flight, calls routed,
//! degraded answers (for `meshctl status`), and the latency and failures of each call by tier
//! (for the automatic degradation rules). A tower layer in front of the router, recording each
//! call when it really ends: at the status in its trailers, so a stream (an attached terminal)
//! is in flight for as long as it is open, and a stream failing after its headers counts as
//! failed.
//!
//! Only tenants the mesh serves are watched (a flood of made-up tenants takes no memory), and
//! only calls the router forwarded are counted and sampled: a refusal at the door says nothing
//! about the tenant's service.
//!
//! Nor does a flood one user makes: their calls queue behind each other and run out of time
//! (DEADLINE_EXCEEDED from the worker) long before the service is unwell. A user a quota
//! refused ([`OVER_QUOTA`](mesh_contract::headers::OVER_QUOTA)) is known by their bearer token
//! (a keyed hash of it, nothing kept in the clear), and their calls before that refusal and up
//! to [`FLOOD_MEMORY`] after their latest one are left out of the rules' windows: what is
//! judged is the service as the callers within their quotas see it. The tenant's backend
//! credential (`x-mesh-token`) is never set aside so: every backend call shares it, and one
//! refusal would blind the rules to all of them.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    convert::Infallible,
    pin::Pin,
    sync::{Arc, Mutex, RwLock},
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use mesh_contract::{TenantId, bus::BoxFuture, headers};

use crate::layers::{Catalogue, DEGRADED_HEADER};

/// How long call samples are kept for the rules' windows.
const KEEP_SAMPLES: Duration = Duration::from_secs(120);
/// At most this many samples per tenant (memory stays bounded under any flood).
const MAX_SAMPLES: usize = 50_000;
/// Degraded answers remembered for `status`.
const RECENT_DEGRADED: usize = 50;
/// A caller refused over a quota has its calls before the refusal, and until this long after
/// its latest one, left out of the rules' windows.
pub const FLOOD_MEMORY: Duration = Duration::from_secs(30);
/// At most this many callers over quota remembered per tenant (bounded under any flood of
/// credentials; past it, a new one's calls are sampled as anyone's).
const MAX_FLOODERS: usize = 10_000;

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
    caller: Caller,
}

/// Who made a call: a keyed hash of its bearer token; [`Caller::UNKNOWN`] without one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Caller(u64);

impl Caller {
    /// No bearer token (the backend, or no credential): never remembered as flooding (it
    /// stands for many callers).
    const UNKNOWN: Caller = Caller(0);
}

#[derive(Debug, Default)]
struct Watched {
    load: TenantLoad,
    samples: VecDeque<Sample>,
    /// Callers refused over a quota, at their latest refusal.
    over_quota: HashMap<Caller, Instant>,
    /// When `over_quota` was last pruned (full, it is pruned at most once a second).
    pruned: Option<Instant>,
}

impl Watched {
    /// Whether `sample` was part of a flood its own caller made.
    fn flooding(&self, sample: &Sample) -> bool {
        self.over_quota
            .get(&sample.caller)
            .is_some_and(|refused| *refused + FLOOD_MEMORY >= sample.at)
    }

    /// Remembers that `caller` was refused over a quota at `now`.
    fn refused_over_quota(&mut self, caller: Caller, now: Instant) {
        if caller == Caller::UNKNOWN {
            return;
        }
        if self.over_quota.len() >= MAX_FLOODERS && !self.over_quota.contains_key(&caller) {
            if self
                .pruned
                .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
            {
                self.pruned = Some(now);
                self.over_quota
                    .retain(|_, at| now.duration_since(*at) <= FLOOD_MEMORY + KEEP_SAMPLES);
            }
            if self.over_quota.len() >= MAX_FLOODERS {
                return;
            }
        }
        self.over_quota.insert(caller, now);
    }
}

/// The tenants the mesh serves (the router's list).
pub(crate) type Known = Arc<RwLock<HashSet<TenantId>>>;

/// Marks a response the router forwarded to a worker (not one it answered itself).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Forwarded;

/// Every tenant's traffic so far.
#[derive(Debug, Default)]
pub struct Traffic {
    tenants: Mutex<HashMap<TenantId, Watched>>,
    degraded: Mutex<VecDeque<DegradedSeen>>,
    /// This process's key for callers' credentials (random: no one can aim two at one hash).
    callers: std::hash::RandomState,
}

impl Traffic {
    /// Latency and failures of `tenant`'s calls of tier `max_tier` and more important ones,
    /// answered within the last `window`.
    pub fn window(&self, tenant: &TenantId, max_tier: u8, window: Duration) -> WindowStats {
        let since = Instant::now().checked_sub(window);
        let tenants = self.tenants.lock().expect("lock");
        let Some(watched) = tenants.get(tenant) else {
            return WindowStats::default();
        };
        let mut latencies: Vec<Duration> = Vec::new();
        let mut failed = 0u32;
        for sample in watched.samples.iter().rev() {
            if since.is_some_and(|since| sample.at < since) {
                break;
            }
            if sample.tier <= max_tier && !watched.flooding(sample) {
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

    /// Every tenant's load so far.
    pub fn load(&self) -> Vec<(TenantId, TenantLoad)> {
        let tenants = self.tenants.lock().expect("lock");
        let mut load: Vec<_> = tenants
            .iter()
            .map(|(t, w)| (t.clone(), w.load.clone()))
            .collect();
        load.sort_by(|a, b| a.0.cmp(&b.0));
        load
    }

    /// The most recent degraded answers, newest first.
    pub fn recent_degraded(&self) -> Vec<DegradedSeen> {
        self.degraded
            .lock()
            .expect("lock")
            .iter()
            .rev()
            .cloned()
            .collect()
    }

    /// Who `sent` these headers: a user's bearer token, hashed.
    fn caller(&self, sent: &http::HeaderMap) -> Caller {
        use std::hash::BuildHasher;
        match sent.get(headers::AUTHORIZATION) {
            Some(value) => Caller(self.callers.hash_one(value.as_bytes()).max(1)),
            None => Caller::UNKNOWN,
        }
    }

    fn enter(self: &Arc<Self>, tenant: &TenantId) -> InFlight {
        let mut tenants = self.tenants.lock().expect("lock");
        tenants.entry(tenant.clone()).or_default().load.in_flight += 1;
        InFlight {
            traffic: self.clone(),
            tenant: tenant.clone(),
        }
    }
}

/// Counts a call in flight until dropped.
struct InFlight {
    traffic: Arc<Traffic>,
    tenant: TenantId,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(w) = self
            .traffic
            .tenants
            .lock()
            .expect("lock")
            .get_mut(&self.tenant)
        {
            w.load.in_flight = w.load.in_flight.saturating_sub(1);
        }
    }
}

/// One forwarded call, sampled once when it ends.
struct Call {
    in_flight: InFlight,
    /// The tier of its method, when its latency may be sampled.
    tier: Option<u8>,
    /// The caller gave it less time than its contract does.
    cut_short: bool,
    caller: Caller,
    started: Instant,
}

impl Call {
    /// Records the call with the status it ended with (`None`: the body ended without one).
    fn finish(self, code: Option<tonic::Code>) {
        self.finish_as(code, false)
    }

    /// [`Call::finish`] with the answer's headers (or trailers): an answer saying the callers
    /// went over their quota ([`OVER_QUOTA`](mesh_contract::headers::OVER_QUOTA)) is theirs.
    fn finish_with(self, code: Option<tonic::Code>, headers: &http::HeaderMap) {
        let over_quota = headers.contains_key(mesh_contract::headers::OVER_QUOTA);
        self.finish_as(code, over_quota)
    }

    fn finish_as(self, code: Option<tonic::Code>, over_quota: bool) {
        let traffic = &self.in_flight.traffic;
        let tenant = &self.in_flight.tenant;
        let code = code.unwrap_or(tonic::Code::Unknown);
        // a caller's own mistake (no credential, a bad argument, a missing order) says nothing
        // about the service's health: it must not trip, nor calm, an automatic rule, or anyone
        // could switch a tenant off by sending garbage; nor does a caller that gave the call
        // less time than its contract when that time runs out
        let ran_out = matches!(
            code,
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unavailable
        );
        let callers_own = over_quota && code == tonic::Code::ResourceExhausted;
        let sampled = !(caller_error(code) || callers_own || (self.cut_short && ran_out));
        if !over_quota && !sampled {
            return;
        }
        let now = Instant::now();
        let mut tenants = traffic.tenants.lock().expect("lock");
        let watched = tenants.entry(tenant.clone()).or_default();
        if over_quota {
            // this caller's other calls around now are its own flood's, not the service's
            watched.refused_over_quota(self.caller, now);
        }
        if let Some(tier) = self.tier.filter(|_| sampled) {
            watched.samples.push_back(Sample {
                at: now,
                tier,
                latency: now - self.started,
                failed: code != tonic::Code::Ok,
                caller: self.caller,
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
    }
}

impl Traffic {
    /// Counts a call the router forwarded, as its answer's headers arrive (a terminal that
    /// leaves before its stream's status is counted all the same).
    fn forwarded(&self, tenant: &TenantId, path: &str, degraded: Option<&str>) {
        let mut tenants = self.tenants.lock().expect("lock");
        let watched = tenants.entry(tenant.clone()).or_default();
        watched.load.calls += 1;
        if degraded.is_some() {
            watched.load.degraded += 1;
        }
        drop(tenants);
        if let Some(switch) = degraded {
            let mut recent = self.degraded.lock().expect("lock");
            if recent.len() == RECENT_DEGRADED {
                recent.pop_front();
            }
            recent.push_back(DegradedSeen {
                tenant: tenant.clone(),
                method: path.to_owned(),
                switch: switch.to_owned(),
                at: SystemTime::now(),
            });
        }
    }
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

/// The gRPC status in `headers` (a trailers-only answer's headers, or trailers).
fn grpc_code(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|s| s.to_str().ok())
        .and_then(|s| s.parse::<i32>().ok())
        .map(tonic::Code::from)
}

/// Tower layer recording every call of a served tenant in [`Traffic`].
#[derive(Clone, Debug)]
pub(crate) struct TrafficLayer {
    traffic: Arc<Traffic>,
    known: Known,
    catalogue: Catalogue,
}

impl TrafficLayer {
    pub(crate) fn new(traffic: Arc<Traffic>, known: Known, catalogue: Catalogue) -> Self {
        Self {
            traffic,
            known,
            catalogue,
        }
    }
}

impl<S> tower_layer::Layer<S> for TrafficLayer {
    type Service = Watching<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Watching {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`TrafficLayer`] produces.
#[derive(Clone, Debug)]
pub(crate) struct Watching<S> {
    inner: S,
    layer: TrafficLayer,
}

impl<S, B> tower_service::Service<http::Request<B>> for Watching<S>
where
    S: tower_service::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    // Boxed on purpose: recording a call's outcome awaits its answer in an async block (no
    // nameable type); the door's hop (a second HTTP/2 exchange) costs far more than the box.
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // the known id itself (a shared one: nothing allocated per call)
        let tenant = request
            .headers()
            .get(headers::TENANT)
            .and_then(|v| v.to_str().ok())
            .and_then(|t| self.layer.known.read().expect("lock").get(t).cloned());
        let Some(tenant) = tenant else {
            return Box::pin(self.inner.call(request));
        };
        let path = request.uri().path().to_owned();
        let method = self.layer.catalogue.method(&path);
        let deadline = crate::layers::caller_timeout(request.headers());
        let traffic = self.layer.traffic.clone();
        let call = Call {
            in_flight: traffic.enter(&tenant),
            cut_short: method.is_some_and(|(_, m)| deadline.is_some_and(|d| d < m.timeout)),
            caller: traffic.caller(request.headers()),
            tier: method.map(|(spec, _)| spec.tier.get()),
            started: Instant::now(),
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            if response.extensions().get::<Forwarded>().is_none() {
                return Ok(response); // answered at the door: not the service's doing
            }
            let degraded = response
                .headers()
                .get(DEGRADED_HEADER)
                .map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned());
            traffic.forwarded(&tenant, &path, degraded.as_deref());
            // a trailers-only answer (an error, an early answer) is over already
            if let Some(code) = grpc_code(response.headers()) {
                call.finish_with(Some(code), response.headers());
                return Ok(response);
            }
            Ok(response.map(|inner| tonic::body::Body::new(RecordAtEnd::new(inner, call))))
        })
    }
}

/// A response body that records its call when its status arrives (or it ends without one).
/// Dropped before that (the caller left), the call is only no longer in flight.
///
/// A body the worker stops sending mid-way (the worker died, its connection broke) ends with
/// trailers saying UNAVAILABLE, as gRPC says a server that went away, not with a reset stream
/// (INTERNAL to the caller): a terminal's client reads it as "attach again", which it is.
struct RecordAtEnd {
    inner: tonic::body::Body,
    call: Option<Call>,
    /// The worker went away and the trailers saying so were sent: nothing follows.
    ended: bool,
}

impl RecordAtEnd {
    fn new(inner: tonic::body::Body, call: Call) -> Self {
        Self {
            inner,
            call: Some(call),
            ended: false,
        }
    }
}

impl http_body::Body for RecordAtEnd {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(call) = self.call.take()
                {
                    call.finish_with(grpc_code(trailers), trailers);
                }
            }
            Poll::Ready(Some(Err(error))) => {
                tracing::debug!(%error, "a worker stopped answering mid-stream");
                self.ended = true;
                if let Some(call) = self.call.take() {
                    call.finish(Some(tonic::Code::Unavailable));
                }
                let status = tonic::Status::unavailable(
                    "the process serving this call went away; call again (a stream: attach again)",
                );
                let mut trailers = http::HeaderMap::new();
                if status.add_header(&mut trailers).is_ok() {
                    return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = self.call.take() {
                    call.finish(None);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tower::{ServiceBuilder, ServiceExt};

    use super::*;

    /// Traffic of a mesh serving mall, and the layer recording into it.
    fn mall_traffic() -> (TenantId, Arc<Traffic>, TrafficLayer) {
        let mall = TenantId::new("mall").unwrap();
        let traffic = Arc::new(Traffic::default());
        let known: Known = Arc::new(RwLock::new([mall.clone()].into_iter().collect()));
        let layer = TrafficLayer::new(traffic.clone(), known, Catalogue(mesh_api::CONTRACTS));
        (mall, traffic, layer)
    }

    /// A stream that fails after its headers: in flight until its body ends, then sampled as
    /// the failure its trailers say.
    #[tokio::test]
    async fn a_call_is_recorded_when_its_body_ends_with_the_status_of_its_trailers() {
        let (mall, traffic, layer) = mall_traffic();
        let service = ServiceBuilder::new()
            .layer(layer)
            .service_fn(|_: http::Request<()>| async {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", "14".parse().unwrap());
                let body = http_body_util::Full::new(Bytes::from_static(b"partial"))
                    .with_trailers(async move { Some(Ok(trailers)) });
                let mut response = http::Response::new(tonic::body::Body::new(body));
                response.extensions_mut().insert(Forwarded);
                Ok::<_, Infallible>(response)
            });
        let request = http::Request::builder()
            .uri("/order.v1.Order/GetOrder")
            .header("x-mesh-tenant", "mall")
            .body(())
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        let window = || traffic.window(&mall, 2, Duration::from_secs(60));
        assert_eq!(traffic.load()[0].1.in_flight, 1, "open until its body ends");
        assert_eq!(window().calls, 0, "not sampled at its headers");
        response.into_body().collect().await.unwrap();
        assert_eq!(traffic.load()[0].1.in_flight, 0);
        assert_eq!(traffic.load()[0].1.calls, 1);
        let sampled = window();
        assert_eq!(
            (sampled.calls, sampled.error_rate),
            (1, 1.0),
            "UNAVAILABLE in the trailers"
        );
    }

    /// One user flooding its tenant's rate: the worker's RESOURCE_EXHAUSTED saying so is the
    /// callers' own load and never sampled; a bulkhead shedding (no such header) is.
    #[tokio::test]
    async fn an_answer_over_the_callers_quota_is_not_the_services_failure() {
        let (mall, traffic, layer) = mall_traffic();
        let service = ServiceBuilder::new().layer(layer).service_fn(
            |request: http::Request<()>| async move {
                let mut status = tonic::Status::resource_exhausted("no");
                if request.headers().contains_key("x-test-rate") {
                    let limiter = crate::layers::RateLimiter::default();
                    let id = TenantId::new("mall").unwrap();
                    limiter.set(id.clone(), 1, 1);
                    let _ = limiter.check(&id);
                    status = limiter.check(&id).unwrap_err();
                }
                let mut response = status.into_http::<tonic::body::Body>();
                response.extensions_mut().insert(Forwarded);
                Ok::<_, Infallible>(response)
            },
        );
        let call = |rate: bool| {
            let mut request = http::Request::builder()
                .uri("/order.v1.Order/GetOrder")
                .header("x-mesh-tenant", "mall");
            if rate {
                request = request.header("x-test-rate", "1");
            }
            service.clone().oneshot(request.body(()).unwrap())
        };
        for _ in 0..10 {
            call(true).await.unwrap();
        }
        let window = || traffic.window(&mall, 2, Duration::from_secs(60));
        assert_eq!(window().calls, 0, "a rate refusal is the callers' own load");
        call(false).await.unwrap();
        assert_eq!(
            (window().calls, window().error_rate),
            (1, 1.0),
            "a shed call without the header counts"
        );
    }

    /// One user's flood: once a quota refused her, her calls that ran out of time queued
    /// behind her own (before the refusal and after) leave the window; another caller's
    /// failing calls at the same time still count.
    #[tokio::test]
    async fn a_caller_refused_over_quota_has_its_other_calls_left_out_of_the_window() {
        let (mall, traffic, layer) = mall_traffic();
        let service = ServiceBuilder::new().layer(layer).service_fn(
            |request: http::Request<()>| async move {
                let mut status = tonic::Status::deadline_exceeded("queued too long");
                if request.headers().contains_key("x-test-quota") {
                    status = tonic::Status::resource_exhausted("over the terminal quota");
                    status.metadata_mut().insert(
                        mesh_contract::headers::OVER_QUOTA,
                        tonic::metadata::MetadataValue::from_static("terminals"),
                    );
                }
                let mut response = status.into_http::<tonic::body::Body>();
                response.extensions_mut().insert(Forwarded);
                Ok::<_, Infallible>(response)
            },
        );
        let call = |user: &str, refused: bool| {
            let mut request = http::Request::builder()
                .uri("/order.v1.Order/GetOrder")
                .header("x-mesh-tenant", "mall")
                .header("authorization", format!("Bearer token-of-{user}"));
            if refused {
                request = request.header("x-test-quota", "1");
            }
            service.clone().oneshot(request.body(()).unwrap())
        };
        let window = || traffic.window(&mall, 2, Duration::from_secs(60));
        for _ in 0..5 {
            call("alice", false).await.unwrap();
        }
        assert_eq!(
            window().calls,
            5,
            "alice's timeouts count until a quota refuses her"
        );
        call("alice", true).await.unwrap();
        for _ in 0..5 {
            call("alice", false).await.unwrap();
        }
        assert_eq!(
            window().calls,
            0,
            "before the refusal and after: her own flood's"
        );
        call("bob", false).await.unwrap();
        assert_eq!(
            (window().calls, window().error_rate),
            (1, 1.0),
            "bob's timeout at the same time is the service's"
        );

        // the backend's credential speaks for every backend call: one of them refused over
        // the rate never sets the others aside
        let backend = |refused: bool| {
            let mut request = http::Request::builder()
                .uri("/order.v1.Order/GetOrder")
                .header("x-mesh-tenant", "mall")
                .header("x-mesh-token", "mall-backend-credential");
            if refused {
                request = request.header("x-test-quota", "1");
            }
            service.clone().oneshot(request.body(()).unwrap())
        };
        backend(true).await.unwrap();
        backend(false).await.unwrap();
        assert_eq!(window().calls, 2, "the backend's timeout counts");
    }
}

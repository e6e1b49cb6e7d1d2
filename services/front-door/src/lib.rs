//! The front door of a mesh whose tenants run in separate processes: one HTTP/2 address for
//! callers, routing each call to the process serving its tenant (`x-mesh-tenant`). A tenant whose
//! process is restarting gets `UNAVAILABLE` at once; the others are not affected.
//!
//! Every call passes here, so the front door is also where the mesh watches its tenants (calls
//! in flight, latency and failures by tier for the automatic degradation rules, degraded
//! answers for `meshctl status`: [`traffic`](Traffic)) and where ops inject latency for a drill
//! ([`FaultLayer`]), as a service mesh's proxy does. Each of those is a tower layer around a
//! plain router ([`FrontDoor`] as a service), put together in [`FrontDoor::serve_with`].
//!
//! Its listener is [`connections`] (connection caps per address, preface timeout, keepalive,
//! stream limits), its connections to each worker [`upstream`], mutual TLS between the mesh's
//! processes [`tls`]; [`direct`] is the client side that skips this hop; [`deploy`] the
//! deployment configuration with what a worker is told of it.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use mesh_contract::{TenantId, bus::BoxFuture, headers};
use tower::ServiceExt;

// the request path and the configuration, as the modules name them (`crate::layers`)
use mesh_config::TenantConfig;
use mesh_stack::{TenantDirectory, auth, layers, probes};

use crate::{
    connections::HoldUntilEnd,
    layers::Catalogue,
    probes::Probes,
    upstream::{Upstream, UpstreamLimits},
};

mod app;
pub mod connections;
pub mod deploy;
pub mod direct;
mod faults;
pub mod tls;
mod traffic;
pub mod upstream;

pub use app::Config;
pub use faults::{Delayed, Fault, FaultLayer, Faults};
pub use traffic::{DegradedSeen, TenantLoad, Traffic, WindowStats};
use traffic::{Forwarded, Known, TrafficLayer};

/// Where each tenant's calls go.
#[derive(Clone, Debug)]
pub struct FrontDoor {
    routes: Arc<RwLock<HashMap<TenantId, Upstream>>>,
    /// Every tenant this mesh serves, routed now or not (a tenant whose process restarts is
    /// known but unrouted: UNAVAILABLE, worth a retry; an unknown one is UNAUTHENTICATED).
    known: Known,
    upstream: UpstreamLimits,
    catalogue: Catalogue,
    /// What the traffic layer records (load, samples for the rules, degraded answers).
    traffic: Arc<Traffic>,
    /// Latency injected for drills.
    faults: Faults,
    probes: Probes,
    /// When set, every call is authenticated here before it is routed (as its worker does
    /// again): an unknown tenant and a wrong credential are answered alike, at the same place.
    directory: Option<crate::TenantDirectory>,
    /// Mutual TLS towards the workers.
    node_tls: Option<crate::tls::NodeTls>,
    /// Each tenant's rate, applied here before the hop (with a directory): a tenant over its
    /// rate is refused at the door and costs the worker it shares with others nothing.
    limiter: crate::layers::RateLimiter,
    /// Whether each forwarded answer names the worker that gave it (`x-mesh-worker`).
    advertise_workers: bool,
    /// The other origins each tenant lets browsers call from (its `[web]`), for the web access.
    origins: mesh_config::web::AllowedOrigins,
    /// Its listener's limits and TLS, for [`FrontDoor::run`].
    listener: ListenerSettings,
}

/// How [`FrontDoor::run`] serves its listener.
#[derive(Clone, Default)]
struct ListenerSettings {
    limits: connections::ConnectionLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for ListenerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerSettings")
            .field("limits", &self.limits)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Default for FrontDoor {
    fn default() -> Self {
        Self::new(Catalogue(&[]))
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
            traffic: Arc::default(),
            faults: Faults::default(),
            probes: Probes::new(catalogue.0, None),
            directory: None,
            node_tls: None,
            limiter: crate::layers::RateLimiter::default(),
            advertise_workers: false,
            origins: Default::default(),
            listener: ListenerSettings::default(),
        }
    }

    /// Names, on the answers a worker gives a tenant's backend, that worker (header
    /// `x-mesh-worker`, the address this door dials; a loopback one only to callers on this
    /// machine): a client that can reach the worker then calls it directly
    /// ([`crate::direct::DirectChannel`]), without the second hop. End users, browsers and
    /// callers the door refused are never told.
    pub fn with_advertised_workers(mut self, advertise: bool) -> Self {
        self.advertise_workers = advertise;
        self
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

    /// Knows `config`'s tenant from now on, and its credentials and rate limit when this
    /// front door authenticates (again for a tenant known already: they are replaced).
    pub fn serve_tenant(&self, config: &crate::TenantConfig) {
        if let Some(directory) = &self.directory {
            // the limit first: admitted, the tenant is never unlimited for a moment
            self.limiter.set(
                config.tenant_id(),
                config.limits.requests_per_second,
                config.limits.burst,
            );
            directory.add(config);
        }
        self.origins
            .set(config.id.as_str(), &config.web.allowed_origins);
        self.know(config.tenant_id());
    }

    /// The origins each tenant served here lets browsers call from, kept as tenants change.
    pub fn allowed_origins(&self) -> mesh_config::web::AllowedOrigins {
        self.origins.clone()
    }

    /// Accepts the credential whose SHA-256 is `sha256_hex` as `tenant`'s previous one for
    /// `overlap` more (a rotation that began before the mesh restarted).
    pub fn accept_previous(&self, tenant: &TenantId, sha256_hex: &str, overlap: Duration) {
        if let Some(directory) = &self.directory {
            directory.accept_previous(tenant, sha256_hex, overlap);
        }
    }

    /// Forgets `tenant`: its calls are refused from now on as an unknown tenant's are (its
    /// calls forwarded already run to their end).
    pub fn forget_tenant(&self, tenant: &TenantId) {
        if let Some(directory) = &self.directory {
            directory.remove(tenant);
        }
        self.limiter.remove(tenant);
        self.origins.remove(tenant.as_str());
        self.known.write().expect("lock").remove(tenant);
        self.unroute(tenant);
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
        self.faults.set(tenant, service, delay);
    }

    /// The faults injected now.
    pub fn faults(&self) -> Vec<Fault> {
        self.faults.list()
    }

    /// Latency and failures of `tenant`'s calls of tier `max_tier` and more important ones,
    /// answered within the last `window`.
    pub fn window(&self, tenant: &TenantId, max_tier: u8, window: Duration) -> WindowStats {
        self.traffic.window(tenant, max_tier, window)
    }

    /// Every tenant's traffic so far.
    pub fn load(&self) -> Vec<(TenantId, TenantLoad)> {
        self.traffic.load()
    }

    /// The most recent degraded answers, newest first.
    pub fn recent_degraded(&self) -> Vec<DegradedSeen> {
        self.traffic.recent_degraded()
    }

    /// Records that this mesh serves `tenant` (before its process is up).
    pub fn know(&self, tenant: TenantId) {
        self.known.write().expect("lock").insert(tenant);
    }

    /// Routes `tenant` to the process listening at `address` (`127.0.0.1:4567`).
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

    /// Serves callers on `listener` until `shutdown` resolves, with the limits and TLS its
    /// [`Config`] gave.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let ListenerSettings { limits, tls } = self.listener.clone();
        self.serve_with(listener, limits, tls, shutdown).await
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
        let stack = self.stack();
        crate::connections::serve_connections(listener, stack, limits, tls, shutdown).await
    }
}

impl FrontDoor {
    /// The front door as one service, its layers around its router: what it serves on its
    /// listener, and what the browsers' access (`mesh-web`) calls in process, so a call that
    /// came as HTTP/JSON passes exactly the checks a gRPC call does.
    pub fn stack<B>(
        self,
    ) -> impl tower_service::Service<
        http::Request<B>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // outermost first: a span for every call it answers or forwards (refused, delayed,
        // routed; the worker's span is its child, as the forwarded request carries this span's
        // context), health and reflection, who may call what, the traffic it watches, the
        // drills' delays, then the router
        tower::ServiceBuilder::new()
            .layer(mesh_telemetry::TraceLayer::server(self.catalogue.0))
            .layer(crate::probes::ProbesLayer::new(self.probes.clone()))
            .layer(crate::layers::AdmitLayer::new(Door {
                catalogue: self.catalogue,
                directory: self.directory.clone(),
                limiter: self.limiter.clone(),
                advertise_workers: self.advertise_workers,
            }))
            .layer(TrafficLayer::new(
                self.traffic.clone(),
                self.known.clone(),
                self.catalogue,
            ))
            .layer(FaultLayer::new(self.faults.clone(), self.catalogue))
            .service(self)
    }
}

/// The `x-mesh-worker` value for `request` answered by the worker at `address`, if its caller
/// may learn it: a tenant's backend the door authenticated ([`MayLearnWorker`]), and, for a
/// worker on a loopback address, only a caller on this machine (to anyone else the address
/// would name its own machine).
fn advertisement<B>(request: &http::Request<B>, address: &str) -> Option<http::HeaderValue> {
    request.extensions().get::<MayLearnWorker>()?;
    let on_loopback = |host: &str| {
        host.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
            || host == "localhost"
    };
    let worker_host = address.rsplit_once(':').map_or(address, |(host, _)| {
        host.trim_start_matches('[').trim_end_matches(']')
    });
    if on_loopback(worker_host) {
        let peer = request
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|info| info.remote_addr())?;
        if !peer.ip().is_loopback() {
            return None;
        }
    }
    http::HeaderValue::from_str(address).ok()
}

/// Whether forwarding failed because the request's deadline passed: tonic's channel enforces
/// the caller's `grpc-timeout` and fails with [`tonic::TimeoutExpired`]. Decided by the error's
/// type, never its text: a connection to an unreachable worker that "timed out" is the
/// worker's outage (UNAVAILABLE), not the caller's deadline.
fn timed_out(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |e| e.source()).any(|e| e.is::<tonic::TimeoutExpired>())
}

/// Who may call what at the door: the mesh's internal methods are never served to callers
/// outside it, and with a directory every caller is authenticated (and admitted by the
/// method's contract audience) before anything about the tenant is revealed (its route, its
/// process being down), then held to its tenant's rate.
///
/// The worker applies the same rate again (it may be reached without this door, behind
/// another proxy); here it keeps a flood from crossing the hop at all: a tenant far over its
/// rate would otherwise have every refused call forwarded, and answered by a worker that
/// serves other tenants on the same cores.
#[derive(Clone, Debug)]
struct Door {
    catalogue: Catalogue,
    directory: Option<crate::TenantDirectory>,
    limiter: crate::layers::RateLimiter,
    /// Whether a tenant's backend may be told its worker ([`MayLearnWorker`]).
    advertise_workers: bool,
}

/// Set by the door on a call whose caller may learn the worker that answers it: a tenant's
/// backend, authenticated here (not an end user, a browser or an unauthenticated caller).
#[derive(Clone, Copy, Debug)]
struct MayLearnWorker;

impl crate::layers::Admit for Door {
    type Ticket = ();

    fn admit<B>(&self, request: &mut http::Request<B>) -> crate::layers::Decision<()> {
        let path = request.uri().path();
        let in_process = request
            .extensions()
            .get::<mesh_contract::InProcess>()
            .is_some();
        // the mesh's own calls (locator, gateway delivery) never come from outside; this
        // node's own code in process may make them (with the node credential, checked below)
        if let Some((_, method)) = self.catalogue.method(path)
            && method.audience.is_internal()
            && !in_process
        {
            return crate::layers::Decision::from_status(Err(tonic::Status::permission_denied(
                format!("{path} is internal to the mesh; it is not served to callers outside it"),
            )));
        }
        // whether the caller is a tenant's backend (which may learn its worker)
        let admitted = match &self.directory {
            Some(directory) => directory
                .authenticate_headers(request.headers())
                .map_err(tonic::Status::from)
                .and_then(|ctx| {
                    directory.admits(path, &ctx.caller)?;
                    match ctx.caller {
                        // the mesh's own calls for a tenant were admitted as part of the
                        // tenant's call that caused them (as in the worker); one this node
                        // makes for an outside party (a platform's callback) is that party's,
                        // held to the tenant's rate like any caller's
                        mesh_contract::Caller::Node if in_process => {
                            self.limiter.check(&ctx.tenant).map(|_| false)
                        }
                        mesh_contract::Caller::Node => Ok(false),
                        mesh_contract::Caller::Backend => {
                            self.limiter.check(&ctx.tenant).map(|_| true)
                        }
                        _ => self.limiter.check(&ctx.tenant).map(|_| false),
                    }
                }),
            None => Ok(false),
        };
        if matches!(admitted, Ok(true)) && self.advertise_workers {
            request.extensions_mut().insert(MayLearnWorker);
        }
        crate::layers::Decision::from_status(admitted.map(drop))
    }
}

/// The router: each call to the process serving its tenant (see [`FrontDoor::serve_with`] for
/// the layers in front of it).
impl<B> tower_service::Service<http::Request<B>> for FrontDoor
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    // Boxed on purpose: the routing is an async block (find the tenant's route, call its worker,
    // mark the answer) whose type has no name on stable Rust; one allocation per call beside a
    // second HTTP/2 exchange on loopback, which costs far more.
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // the route, found with the header's text as it came: nothing allocated per call
        let tenant = request
            .headers()
            .get(headers::TENANT)
            .and_then(|v| v.to_str().ok());
        let route = tenant.and_then(|t| self.routes.read().expect("lock").get(t).cloned());
        let Some(upstream) = route else {
            let status = match tenant {
                None => tonic::Status::unauthenticated(format!(
                    "request carries no tenant (header `{}`)",
                    headers::TENANT
                )),
                // as a wrong credential is answered: nobody learns which tenants exist
                Some(t) if !self.known.read().expect("lock").contains(t) => {
                    tonic::Status::unauthenticated(
                        crate::auth::AuthError::WrongCredential(t.to_owned()).to_string(),
                    )
                }
                Some(t) => tonic::Status::unavailable(format!(
                    "no process is serving tenant {t:?} right now"
                )),
            };
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        // a server stream (a terminal) may stay for hours: those are what the cap bounds
        let long_lived = self
            .catalogue
            .method(request.uri().path())
            .is_none_or(|(_, m)| m.server_streaming);
        let advertised = self
            .advertise_workers
            .then(|| advertisement(&request, upstream.address()))
            .flatten();
        Box::pin(async move {
            let slot = match upstream.acquire(long_lived) {
                Ok(slot) => slot,
                Err(status) => return Ok(status.into_http()),
            };
            let request = request.map(tonic::body::Body::new);
            let response = match slot.channel().oneshot(request).await {
                // only an answer the worker gave names it: not one made up here because the
                // worker did not answer (a client would learn a dead address)
                Ok(mut response) => {
                    if let Some(address) = advertised {
                        response.headers_mut().insert(headers::WORKER, address);
                    }
                    response
                }
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
            let mut response = response;
            response.extensions_mut().insert(Forwarded);
            // a stream (a terminal) keeps its connection slot until its body ends
            Ok(HoldUntilEnd::wrap(response, slot))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(may_learn: bool, peer: &str) -> http::Request<()> {
        let mut request = http::Request::new(());
        if may_learn {
            request.extensions_mut().insert(MayLearnWorker);
        }
        request
            .extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo {
                local_addr: None,
                remote_addr: Some(peer.parse().unwrap()),
            });
        request
    }

    #[test]
    fn only_the_callers_deadline_reads_as_timed_out() {
        let expired: Box<dyn std::error::Error + Send + Sync> = tonic::TimeoutExpired(()).into();
        assert!(timed_out(expired.as_ref()));
        // wrapped, as tonic's transport error wraps it
        #[derive(Debug)]
        struct Wrapped(Box<dyn std::error::Error + Send + Sync>);
        impl std::fmt::Display for Wrapped {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("transport error")
            }
        }
        impl std::error::Error for Wrapped {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(self.0.as_ref())
            }
        }
        assert!(timed_out(&Wrapped(expired)));
        // an outage that says "timed out" is not the caller's deadline
        let connect = std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out");
        assert!(!timed_out(&connect));
        let text = std::io::Error::other("Timeout expired");
        assert!(!timed_out(&text));
    }

    #[test]
    fn a_worker_is_named_to_backends_and_a_loopback_one_only_to_callers_on_this_machine() {
        let named = |may_learn, peer, worker| {
            advertisement(&request(may_learn, peer), worker).map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            named(true, "127.0.0.1:5000", "127.0.0.1:7501").as_deref(),
            Some("127.0.0.1:7501")
        );
        assert_eq!(named(true, "10.0.0.5:5000", "127.0.0.1:7501"), None);
        assert_eq!(named(true, "10.0.0.5:5000", "[::1]:7501"), None);
        assert_eq!(named(true, "10.0.0.5:5000", "localhost:7501"), None);
        assert_eq!(
            named(true, "10.0.0.5:5000", "10.0.0.7:7501").as_deref(),
            Some("10.0.0.7:7501")
        );
        assert_eq!(named(false, "127.0.0.1:5000", "127.0.0.1:7501"), None);
    }
}

//! The two stacks every mesh process runs, each built in one place: [`Inbound`] around the
//! services a process serves, [`Outbound`] around every call those services make.
//!
//! Nothing else assembles layers by hand: the worker, the single-node platform, the demo and
//! the benchmarks take their stacks from here, so what the benchmarks measure and what the
//! tests cover is what the product runs.
//!
//! Inbound, outermost first (see [`Inbound::layer`]):
//!
//! 1. a SERVER span per call ([`TraceLayer::server`]): whatever answers it below (a refusal, a
//!    degraded answer, the service) is traced, child of the caller's span;
//! 2. tenant authentication ([`TenantDirectory`]): who is calling, and may they call this;
//! 3. the tenant's rate limit ([`RateLimiter`]);
//! 4. cached answers of `cached` methods while their switch is off ([`CachedAnswersLayer`]);
//! 5. degradation switches ([`SwitchBoard`]): the contract's degraded answer, at once;
//! 6. the tenant's service plan ([`ServicePlan`]): does it run this service at this major;
//! 7. the contract's deadline ([`DeadlineLayer`]), timed on the shared runtime: a tenant that
//!    saturates its own runtime does not delay its deadline;
//! 8. the tenant's own runtime, if it has one ([`TenantExecutorLayer`]); a call cut off by its
//!    deadline or its caller stops there too.
//!
//! Outbound, outermost first (see [`Outbound::channel`]): a CLIENT span, the deadline (the
//! callee's contract deadline, or the request's `grpc-timeout` if shorter, as the generated
//! callers set it: a dependency that hangs frees its bulkhead place when the deadline passes,
//! whatever the dependency does), and the bulkhead of the (tenant, dependency) pair.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use mesh_stack::{
//!     layers::{Bulkheads, Catalogue, SwitchBoard},
//!     stack::{Inbound, Outbound},
//! };
//!
//! let catalogue = Catalogue(&[]);
//! let inbound = Inbound::new(catalogue, SwitchBoard::new(catalogue));
//! let server = tonic::transport::Server::builder().layer(inbound.layer());
//! # let _ = server;
//!
//! let outbound = Outbound::new(Bulkheads::new(8), catalogue);
//! let locator = tonic::transport::Endpoint::from_static("http://127.0.0.1:9");
//! let to_locator = outbound.channel("locator", &locator); // hand it to a generated caller
//! # let _ = to_locator;
//! # }
//! ```

use mesh_telemetry::{TraceLayer, Traced};
use tower::{ServiceBuilder, layer::util::Identity, layer::util::Stack, util::Either};

use crate::{
    OwnServer, TenantAuthLayer, TenantConfig, TenantDirectory,
    layers::{
        AdmitLayer, AnswerCache, Bulkheads, CachedAnswersLayer, Catalogue, DeadlineLayer,
        RateLimiter, ServicePlan, SwitchBoard, TenantExecutorLayer, TenantRuntimes,
    },
    own_server::Transport,
};

/// How many degraded-able answers an inbound stack keeps to serve while their method is off.
const CACHED_ANSWERS: usize = 10_000;

/// The per-tenant state behind a process's inbound stack, and the stack itself.
///
/// Cheap to clone: every clone shares the same state, so a tenant added through one is
/// served by the layers another built.
#[derive(Clone, Debug)]
pub struct Inbound {
    catalogue: Catalogue,
    directory: TenantDirectory,
    limiter: RateLimiter,
    cache: AnswerCache,
    switches: SwitchBoard,
    plan: ServicePlan,
    runtimes: TenantRuntimes,
}

/// The tower layer [`Inbound::layer`] builds: the documented order, as one type.
pub type InboundLayer = ServiceBuilder<
    Stack<
        TenantExecutorLayer,
        Stack<
            DeadlineLayer,
            Stack<
                AdmitLayer<ServicePlan>,
                Stack<
                    AdmitLayer<SwitchBoard>,
                    Stack<
                        CachedAnswersLayer,
                        Stack<
                            AdmitLayer<RateLimiter>,
                            Stack<TenantAuthLayer, Stack<TraceLayer, Identity>>,
                        >,
                    >,
                >,
            >,
        >,
    >,
>;

impl Inbound {
    /// An inbound stack serving no tenant yet, for the contracts of `catalogue`, with the
    /// degradation `switches` ops steer.
    pub fn new(catalogue: Catalogue, switches: SwitchBoard) -> Self {
        Self {
            catalogue,
            directory: TenantDirectory::new(catalogue),
            limiter: RateLimiter::default(),
            cache: AnswerCache::new(CACHED_ANSWERS),
            switches,
            plan: ServicePlan::from_tenants(&Default::default(), catalogue),
            runtimes: TenantRuntimes::default(),
        }
    }

    /// Accepts the node credential `token` (what the mesh's processes present to each other).
    pub fn with_node_credential(mut self, token: &str) -> Self {
        self.directory = self.directory.with_node_credential(token);
        self
    }

    /// Prepares everything the stack knows of `config`'s tenant (its runtime, rate limit and
    /// service plan) but does not admit its calls yet: call [`Inbound::admit_tenant`] once the
    /// services behind the stack serve it too. Again for a tenant already added: its limits and
    /// plan are replaced.
    pub fn add_tenant(&self, config: &TenantConfig) -> std::io::Result<()> {
        self.runtimes.add(config)?;
        self.limiter.set(
            config.tenant_id(),
            config.limits.requests_per_second,
            config.limits.burst,
        );
        self.plan.add(config);
        Ok(())
    }

    /// Admits the calls of `config`'s tenant: authentication knows it from now on.
    pub fn admit_tenant(&self, config: &TenantConfig) {
        self.directory.add(config);
    }

    /// [`Inbound::add_tenant`] then [`Inbound::admit_tenant`], for services that need no
    /// preparation of their own in between.
    pub fn serve_tenant(&self, config: &TenantConfig) -> std::io::Result<()> {
        self.add_tenant(config)?;
        self.admit_tenant(config);
        Ok(())
    }

    /// Accepts the credential whose SHA-256 is `sha256_hex` as `tenant`'s previous one for
    /// `overlap` more (see [`TenantDirectory::accept_previous`]).
    pub fn accept_previous(
        &self,
        tenant: &mesh_contract::TenantId,
        sha256_hex: &str,
        overlap: std::time::Duration,
    ) {
        self.directory.accept_previous(tenant, sha256_hex, overlap);
    }

    /// Stops admitting `tenant`'s calls (authentication and its plan forget it); calls
    /// admitted already run to their end ([`Inbound::in_flight`] counts them).
    pub fn remove_tenant(&self, tenant: &mesh_contract::TenantId) {
        self.directory.remove(tenant);
        self.plan.remove(tenant);
    }

    /// `tenant`'s calls admitted and not answered yet.
    pub fn in_flight(&self, tenant: &mesh_contract::TenantId) -> usize {
        self.plan.in_flight(tenant)
    }

    /// The rate limits (benchmarks raise them so admission is measured, not exercised).
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// The degradation switches the stack answers from.
    pub fn switches(&self) -> &SwitchBoard {
        &self.switches
    }

    /// The stack, in the order the module documents.
    pub fn layer(&self) -> InboundLayer {
        ServiceBuilder::new()
            .layer(TraceLayer::server(self.catalogue.0))
            .layer(TenantAuthLayer::new(self.directory.clone()))
            .layer(AdmitLayer::new(self.limiter.clone()))
            .layer(CachedAnswersLayer::new(
                self.cache.clone(),
                self.switches.clone(),
                self.catalogue,
            ))
            .layer(AdmitLayer::new(self.switches.clone()))
            .layer(AdmitLayer::new(self.plan.clone()))
            .layer(DeadlineLayer::new(self.catalogue))
            .layer(TenantExecutorLayer::new(self.runtimes.clone()))
    }
}

/// One layer of the inbound stack, by name: what [`Inbound::layer_without`] can leave out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InboundLayerKind {
    /// The SERVER span and per-tenant call metrics ([`TraceLayer::server`]).
    Trace,
    /// Tenant authentication and the contract audience ([`TenantAuthLayer`]).
    Auth,
    /// The tenant's rate ([`RateLimiter`]).
    RateLimit,
    /// Cached answers while a method is off ([`CachedAnswersLayer`]).
    CachedAnswers,
    /// Degradation switches ([`SwitchBoard`]).
    Switches,
    /// The tenant's service plan ([`ServicePlan`]).
    Plan,
    /// The contract's deadline ([`DeadlineLayer`]).
    Deadline,
    /// The tenant's own runtime ([`TenantExecutorLayer`]).
    Executor,
}

impl InboundLayerKind {
    /// Every layer, outermost first.
    pub const ALL: [Self; 8] = [
        Self::Trace,
        Self::Auth,
        Self::RateLimit,
        Self::CachedAnswers,
        Self::Switches,
        Self::Plan,
        Self::Deadline,
        Self::Executor,
    ];

    /// Its name on a command line and in tables (`rate-limit`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Auth => "auth",
            Self::RateLimit => "rate-limit",
            Self::CachedAnswers => "cached-answers",
            Self::Switches => "switches",
            Self::Plan => "plan",
            Self::Deadline => "deadline",
            Self::Executor => "executor",
        }
    }

    /// The layer named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

/// A layer that may be left out.
type Optional<L> = Either<L, Identity>;

/// The tower layer [`Inbound::layer_without`] builds: [`InboundLayer`]'s order, each layer
/// optional.
pub type PartialInboundLayer = ServiceBuilder<
    Stack<
        Optional<TenantExecutorLayer>,
        Stack<
            Optional<DeadlineLayer>,
            Stack<
                Optional<AdmitLayer<ServicePlan>>,
                Stack<
                    Optional<AdmitLayer<SwitchBoard>>,
                    Stack<
                        Optional<CachedAnswersLayer>,
                        Stack<
                            Optional<AdmitLayer<RateLimiter>>,
                            Stack<Optional<TenantAuthLayer>, Stack<Optional<TraceLayer>, Identity>>,
                        >,
                    >,
                >,
            >,
        >,
    >,
>;

impl Inbound {
    /// `routes` behind this stack as one service, for calls made in this process (the node's
    /// calls to itself, [`OwnServer`]; the web access): what a server built with
    /// [`Inbound::layer`] answers, without the server.
    pub fn in_process(&self, routes: tonic::service::Routes) -> crate::own_server::ServerStack {
        tower::util::BoxCloneSyncService::new(
            ServiceBuilder::new().layer(self.layer()).service(routes),
        )
    }

    /// The stack without the layers in `off`, the others where [`Inbound::layer`] puts them:
    /// to measure what each layer costs (`mesh-bench --only layers`). Not for serving: without
    /// authentication nothing attaches the caller's context, which the layers after it and
    /// the services expect.
    pub fn layer_without(&self, off: &[InboundLayerKind]) -> PartialInboundLayer {
        let on = |kind: InboundLayerKind| !off.contains(&kind);
        ServiceBuilder::new()
            .option_layer(on(InboundLayerKind::Trace).then(|| TraceLayer::server(self.catalogue.0)))
            .option_layer(
                on(InboundLayerKind::Auth).then(|| TenantAuthLayer::new(self.directory.clone())),
            )
            .option_layer(
                on(InboundLayerKind::RateLimit).then(|| AdmitLayer::new(self.limiter.clone())),
            )
            .option_layer(on(InboundLayerKind::CachedAnswers).then(|| {
                CachedAnswersLayer::new(self.cache.clone(), self.switches.clone(), self.catalogue)
            }))
            .option_layer(
                on(InboundLayerKind::Switches).then(|| AdmitLayer::new(self.switches.clone())),
            )
            .option_layer(on(InboundLayerKind::Plan).then(|| AdmitLayer::new(self.plan.clone())))
            .option_layer(
                on(InboundLayerKind::Deadline).then(|| DeadlineLayer::new(self.catalogue)),
            )
            .option_layer(
                on(InboundLayerKind::Executor)
                    .then(|| TenantExecutorLayer::new(self.runtimes.clone())),
            )
    }
}

/// A client for one dependency behind the outbound stack: what generated callers take as their
/// transport (`LocatorCaller<OutboundChannel>`).
pub type OutboundChannel = tower::util::BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    tonic::transport::Error,
>;

/// Channels to the other nodes serving one dependency (the access nodes a message is pushed
/// through, say), one per address, made on first use and kept: what a service holds when the
/// address to call comes with the data (a locator's answer), not from its config. Past
/// [`Peers::MAX`] addresses the cache starts afresh, so nodes that come and go never grow it
/// without end. Clones share the cache.
#[derive(Clone)]
pub struct Peers {
    outbound: Outbound,
    dependency: &'static str,
    credentials: mesh_contract::ServiceCredentials,
    channels: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, OutboundChannel>>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("dependency", &self.dependency)
            .finish_non_exhaustive()
    }
}

impl Peers {
    /// Addresses kept at most.
    pub const MAX: usize = 1024;

    /// The channel to the node at `address` (`http://` or, over mutual TLS when this node has
    /// an identity, `https://`), behind the outbound stack as `dependency`'s.
    pub fn channel(&self, address: &str) -> Result<OutboundChannel, tonic::Status> {
        let mut channels = self.channels.lock().expect("lock");
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = self
            .credentials
            .endpoint(address)
            .map_err(|e| {
                tonic::Status::internal(format!("{} address {address:?}: {e}", self.dependency))
            })?
            .tcp_nodelay(true);
        let channel = self.outbound.channel(self.dependency, &endpoint);
        if channels.len() >= Self::MAX {
            channels.clear();
        }
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// The outbound stack of a process: every call its services make goes through
/// [`Outbound::channel`].
#[derive(Clone, Debug)]
pub struct Outbound {
    bulkheads: Bulkheads,
    catalogue: Catalogue,
    /// This process's own server: channels to its address call it in process.
    own: Option<OwnServer>,
}

impl Outbound {
    /// Calls through `bulkheads` (one per tenant and dependency), to the contracts of
    /// `catalogue` (which names spans and finds deadlines).
    pub fn new(bulkheads: Bulkheads, catalogue: Catalogue) -> Self {
        Self {
            bulkheads,
            catalogue,
            own: None,
        }
    }

    /// Channels to `own`'s address call it in process once it serves ([`OwnServer`]): the
    /// same layers on both sides, without HTTP/2 framing and loopback TCP.
    pub fn with_own_server(mut self, own: OwnServer) -> Self {
        self.own = Some(own);
        self
    }

    /// The bulkheads behind every channel (`meshctl status` shows them filling).
    pub fn bulkheads(&self) -> &Bulkheads {
        &self.bulkheads
    }

    /// Channels to the nodes of `dependency` at addresses known only at run time, calling
    /// with `credentials` (TLS identity included).
    pub fn peers(
        &self,
        dependency: &'static str,
        credentials: mesh_contract::ServiceCredentials,
    ) -> Peers {
        Peers {
            outbound: self.clone(),
            dependency,
            credentials,
            channels: std::sync::Arc::default(),
        }
    }

    /// A channel to `dependency` at `endpoint` (connected on its first call) behind the stack:
    /// each call opens a CLIENT span naming the server (whose context the callee continues),
    /// is cut off at its deadline, and takes a place in its tenant's bulkhead for `dependency`
    /// or is shed at once with `RESOURCE_EXHAUSTED`.
    pub fn channel(
        &self,
        dependency: &str,
        endpoint: &tonic::transport::Endpoint,
    ) -> OutboundChannel {
        let stack: Traced<_> = ServiceBuilder::new()
            .layer(TraceLayer::client(self.catalogue.0).to_server(endpoint.uri()))
            .layer(DeadlineLayer::new(self.catalogue))
            .layer(AdmitLayer::new(self.bulkheads.for_dependency(dependency)))
            .service(match &self.own {
                Some(own) if own.is_at(endpoint.uri()) => own.transport(endpoint.connect_lazy()),
                _ => Transport::network(endpoint.connect_lazy()),
            });
        tower::util::BoxCloneSyncService::new(stack)
    }
}

//! The tower layers every mesh service runs behind, and the one its outbound calls run through.
//!
//! Inbound, outermost first: [`TenantAuthLayer`](crate::TenantAuthLayer) (who is calling),
//! [`RateLimiter`] (is the tenant within its rate), [`CachedAnswersLayer`] (keeps the last good
//! answer of `cached` methods and serves it while they are off), [`SwitchBoard`] (is the method switched off:
//! answer the contract's degraded response), [`ServicePlan`] (does the tenant run this service
//! at this major), [`DeadlineLayer`] (the contract's deadline), then [`TenantExecutorLayer`]
//! runs the call on the tenant's own runtime if it has one.
//! Outbound: [`Bulkheads`], so a slow dependency only exhausts its own permits for that tenant.
//!
//! Most of them decide before the call whether to let it through; they share one tower
//! [`AdmitLayer`] around an [`Admit`] policy ([`RateLimitLayer`], [`SwitchLayer`],
//! [`ServicePlanLayer`], [`BulkheadLayer`], and `TenantAuthLayer` are that layer with their
//! policy). Refusals are answered at once, as a gRPC status or a degraded answer, never by
//! waiting. The runtime puts them together once, in [`crate::stack`].
//!
//! A policy of your own:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use mesh_stack::layers::{Admit, AdmitLayer, Decision};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! /// Refuses calls that name no tenant.
//! #[derive(Clone)]
//! struct NeedsTenant;
//!
//! impl Admit for NeedsTenant {
//!     type Ticket = ();
//!     fn admit<B>(&self, request: &mut http::Request<B>) -> Decision<()> {
//!         Decision::from_status(match request.headers().get("x-mesh-tenant") {
//!             Some(_) => Ok(()),
//!             None => Err(tonic::Status::unauthenticated("no tenant")),
//!         })
//!     }
//! }
//!
//! let service = ServiceBuilder::new()
//!     .layer(AdmitLayer::new(NeedsTenant))
//!     .service_fn(|_: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
//!     });
//! let refused = service.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(refused.headers()["grpc-status"], "16");
//! # }
//! ```

mod bulkhead;
mod cache;
pub(crate) mod deadline;
mod executor;
mod plan;
mod rate_limit;
mod switch;

use std::task::{Context, Poll};

use mesh_contract::{ContractSpec, MethodSpec};

pub use bulkhead::{BulkheadPermit, Bulkheads};

/// Sheds a tenant's calls to a dependency beyond its places ([`Bulkheads::for_dependency`]).
pub type BulkheadLayer = AdmitLayer<Bulkheads>;
/// Refuses a tenant's calls beyond its rate ([`RateLimiter`]).
pub type RateLimitLayer = AdmitLayer<RateLimiter>;
/// Answers switched-off methods with their degraded answer ([`SwitchBoard`]).
pub type SwitchLayer = AdmitLayer<SwitchBoard>;
/// Refuses calls to services or majors the tenant does not run ([`ServicePlan`]).
pub type ServicePlanLayer = AdmitLayer<ServicePlan>;
pub use cache::{AnswerCache, CachedAnswers, CachedAnswersLayer};
pub use deadline::{Deadline, DeadlineLayer, caller_timeout};
pub use executor::{TenantExecutor, TenantExecutorLayer, TenantRuntimes};
pub use plan::ServicePlan;
pub use rate_limit::RateLimiter;
pub use switch::{DEGRADED_HEADER, Switch, SwitchBoard, SwitchTarget};

/// The HTTP response type of tonic services.
pub type GrpcResponse = http::Response<tonic::body::Body>;

/// What an [`Admit`] policy decides about a call.
#[derive(Debug)]
pub enum Decision<T> {
    /// The call goes on to the service; the ticket is held until it answers.
    Admit(T),
    /// The call is answered here and now (a refusal status or a degraded answer).
    Answer(GrpcResponse),
}

impl<T> Decision<T> {
    /// Admits on `Ok`, answers the status on `Err`.
    pub fn from_status(result: Result<T, tonic::Status>) -> Self {
        match result {
            Ok(ticket) => Decision::Admit(ticket),
            Err(status) => Decision::Answer(status.into_http()),
        }
    }
}

/// A policy deciding, before a call runs, whether it may.
pub trait Admit: Clone + Send + Sync + 'static {
    /// Held while the admitted call runs (a bulkhead permit, say); dropped when it answers.
    type Ticket: Send + 'static;

    /// Admits `request` (possibly annotating it), or answers it right away.
    fn admit<B>(&self, request: &mut http::Request<B>) -> Decision<Self::Ticket>;
}

/// Tower layer applying an [`Admit`] policy to every call.
#[derive(Clone, Debug)]
pub struct AdmitLayer<A> {
    policy: A,
}

impl<A> AdmitLayer<A> {
    /// A layer applying `policy`.
    pub fn new(policy: A) -> Self {
        Self { policy }
    }
}

impl<S, A: Clone> tower_layer::Layer<S> for AdmitLayer<A> {
    type Service = Admitted<S, A>;

    fn layer(&self, inner: S) -> Self::Service {
        Admitted {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The service an [`AdmitLayer`] produces.
#[derive(Clone, Debug)]
pub struct Admitted<S, A> {
    inner: S,
    policy: A,
}

pin_project_lite::pin_project! {
    /// The response future of [`Admitted`]: the service's call, holding its ticket until it
    /// answers, or the answer the policy gave at once. Named, not boxed: the admission layers
    /// are on every call's path, and each would otherwise allocate per call.
    #[project = AdmitFutureProjection]
    #[allow(missing_docs)] // the macro takes no docs on fields: the call, its ticket; the answer
    pub enum AdmitFuture<F, T> {
        /// Admitted: the call, and its ticket.
        Called {
            #[pin]
            call: F,
            ticket: Option<T>,
        },
        /// Answered by the policy.
        Answered {
            answer: Option<GrpcResponse>,
        },
    }
}

impl<F, T, E> std::future::Future for AdmitFuture<F, T>
where
    F: std::future::Future<Output = Result<GrpcResponse, E>>,
{
    type Output = Result<GrpcResponse, E>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AdmitFutureProjection::Called { call, ticket } => {
                let response = std::task::ready!(call.poll(cx));
                ticket.take(); // released as the call answers
                Poll::Ready(response)
            }
            AdmitFutureProjection::Answered { answer } => Poll::Ready(Ok(answer
                .take()
                .expect("an AdmitFuture is polled once it is done"))),
        }
    }
}

impl<S, A, B> tower_service::Service<http::Request<B>> for Admitted<S, A>
where
    S: tower_service::Service<http::Request<B>, Response = GrpcResponse>,
    A: Admit,
{
    type Response = GrpcResponse;
    type Error = S::Error;
    type Future = AdmitFuture<S::Future, A::Ticket>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self.policy.admit(&mut request) {
            // the instance polled ready is the one called, right here: no clone needed
            Decision::Admit(ticket) => AdmitFuture::Called {
                call: self.inner.call(request),
                ticket: Some(ticket),
            },
            Decision::Answer(answer) => AdmitFuture::Answered {
                answer: Some(answer),
            },
        }
    }
}

/// The service `poll_ready` prepared, for this call, leaving a fresh clone for the next one
/// (tower's rule: the instance that was polled ready is the one that must be called).
pub fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

/// Finds the contract method of a gRPC path in a catalogue.
#[derive(Clone, Copy, Debug)]
pub struct Catalogue(pub &'static [&'static ContractSpec]);

impl Catalogue {
    /// The contract and method served at `path`.
    pub fn method(&self, path: &str) -> Option<(&'static ContractSpec, &'static MethodSpec)> {
        mesh_contract::spec::method_at(self.0, path)
    }

    /// The event whose gRPC path (`/order.v1.Order/OrderCreated`) is `path`: events are
    /// declared as methods in the contract but travel on the queue.
    pub fn event(&self, path: &str) -> Option<&'static mesh_contract::EventSpec> {
        let (service, name) = path.strip_prefix('/')?.split_once('/')?;
        self.0
            .iter()
            .filter(|spec| spec.service == service)
            .find_map(|spec| spec.events.iter().find(|e| e.name == name))
    }
}

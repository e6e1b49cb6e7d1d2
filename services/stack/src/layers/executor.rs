//! Thread isolation: a tenant with `isolation.threads > 0` gets a tokio runtime of its own, and
//! its calls run there. Its CPU-heavy or blocking work then competes only with itself, never
//! with the tenants on the process's shared runtime.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::path::Path;
//!
//! use mesh_contract::{RequestContext, TenantId};
//! use mesh_config::Tenants;
//! use mesh_stack::{layers::{TenantExecutorLayer, TenantRuntimes}};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! // finance's file asks for `isolation.threads = 2`
//! let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tenants");
//! let tenants = Tenants::load(&folder, mesh_api::CONTRACTS).unwrap();
//! let service = ServiceBuilder::new()
//!     .layer(TenantExecutorLayer::new(TenantRuntimes::from_tenants(&tenants).unwrap()))
//!     .service_fn(|_: http::Request<()>| async {
//!         let thread = std::thread::current().name().unwrap_or_default().to_owned();
//!         let mut response = http::Response::new(tonic::body::Body::empty());
//!         response.headers_mut().insert("thread", thread.parse().unwrap());
//!         Ok::<_, std::convert::Infallible>(response)
//!     });
//! let call = |tenant: &str| {
//!     let mut request = http::Request::new(());
//!     request.extensions_mut().insert(RequestContext::new(TenantId::new(tenant).unwrap()));
//!     request
//! };
//! let finance = service.clone().oneshot(call("finance")).await.unwrap();
//! assert_eq!(finance.headers()["thread"], "tenant-finance");
//! let mall = service.oneshot(call("mall")).await.unwrap();
//! assert_ne!(mall.headers()["thread"], "tenant-finance", "the shared runtime");
//! # }
//! ```

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    task::{Context, Poll},
};

use futures::future::Either;
use mesh_contract::{RequestContext, TenantId, bus::BoxFuture};

use super::GrpcResponse;
use crate::config::{TenantConfig, Tenants};

/// The dedicated runtimes of a process, by tenant; a tenant onboarded while the process runs
/// gets its runtime then.
#[derive(Clone, Default)]
pub struct TenantRuntimes {
    runtimes: Arc<RwLock<HashMap<TenantId, Arc<tokio::runtime::Runtime>>>>,
}

impl std::fmt::Debug for TenantRuntimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantRuntimes")
            .field("tenants", &self.tenants())
            .finish()
    }
}

impl TenantRuntimes {
    /// A runtime for every tenant whose config asks for threads of its own.
    pub fn from_tenants(tenants: &Tenants) -> std::io::Result<Self> {
        let runtimes = Self::default();
        for config in tenants.tenants.values() {
            runtimes.add(config)?;
        }
        Ok(runtimes)
    }

    /// Gives `config`'s tenant a runtime of its own if it asks for threads (and has none yet).
    pub fn add(&self, config: &TenantConfig) -> std::io::Result<()> {
        if config.isolation.threads == 0 || self.get(&config.tenant_id()).is_some() {
            return Ok(());
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.isolation.threads.into())
            .thread_name(format!("tenant-{}", config.id))
            .enable_all()
            .build()?;
        self.runtimes
            .write()
            .expect("lock")
            .insert(config.tenant_id(), Arc::new(runtime));
        Ok(())
    }

    /// The runtime of `tenant`, if it has one.
    pub fn get(&self, tenant: &TenantId) -> Option<tokio::runtime::Handle> {
        self.runtimes
            .read()
            .expect("lock")
            .get(tenant)
            .map(|r| r.handle().clone())
    }

    /// Tenants with a runtime of their own.
    pub fn tenants(&self) -> Vec<TenantId> {
        self.runtimes
            .read()
            .expect("lock")
            .keys()
            .cloned()
            .collect()
    }
}

impl Drop for TenantRuntimes {
    fn drop(&mut self) {
        // The last clone shuts the runtimes down without blocking the (async) caller.
        if let Some(runtimes) = Arc::get_mut(&mut self.runtimes) {
            for (_, runtime) in runtimes.get_mut().expect("lock").drain() {
                if let Ok(runtime) = Arc::try_unwrap(runtime) {
                    runtime.shutdown_background();
                }
            }
        }
    }
}

/// Tower layer running each tenant's calls on that tenant's runtime (placed after
/// authentication, which names the tenant).
#[derive(Clone, Debug)]
pub struct TenantExecutorLayer {
    runtimes: TenantRuntimes,
}

impl TenantExecutorLayer {
    /// Runs calls on `runtimes`.
    pub fn new(runtimes: TenantRuntimes) -> Self {
        Self { runtimes }
    }
}

impl<S> tower_layer::Layer<S> for TenantExecutorLayer {
    type Service = TenantExecutor<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TenantExecutor {
            inner,
            runtimes: self.runtimes.clone(),
        }
    }
}

/// The service [`TenantExecutorLayer`] produces.
#[derive(Clone, Debug)]
pub struct TenantExecutor<S> {
    inner: S,
    runtimes: TenantRuntimes,
}

impl<S, B> tower_service::Service<http::Request<B>> for TenantExecutor<S>
where
    S: tower_service::Service<http::Request<B>, Response = GrpcResponse> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = GrpcResponse;
    type Error = S::Error;
    // The shared runtime's calls (most) pass straight through, unboxed; a tenant with a
    // runtime of its own has its call spawned there and awaited through a JoinHandle, boxed on
    // purpose (an allocation and a cross-thread wake that dwarf the box).
    type Future = Either<S::Future, BoxFuture<'static, Result<GrpcResponse, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let runtime = request
            .extensions()
            .get::<RequestContext>()
            .and_then(|ctx| self.runtimes.get(&ctx.tenant));
        // the instance polled ready is the one called, right here: no clone needed
        let call = self.inner.call(request);
        match runtime {
            None => Either::Left(call),
            Some(runtime) => Either::Right(Box::pin(async move {
                // a caller that gives up (its deadline, a disconnect) stops the handler too
                match AbortOnDrop(runtime.spawn(call)).await {
                    Ok(response) => response,
                    Err(err) => Ok(tonic::Status::internal(format!(
                        "the tenant's runtime dropped the call: {err}"
                    ))
                    .into_http()),
                }
            })),
        }
    }
}

/// A task handle that aborts its task when dropped: the call on the tenant's runtime ends with
/// the caller's interest in it, as it would on the shared runtime.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

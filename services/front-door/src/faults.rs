//! Fault drills: ops delay a tenant's calls (to one service, or all) at the front door, to
//! rehearse what a slow dependency does (the automatic rules tripping, the bulkheads filling)
//! without breaking anything for real. A tower layer in front of the router.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::time::{Duration, Instant};
//!
//! use mesh_contract::TenantId;
//! use mesh_front_door::{FaultLayer, Faults};
//! use mesh_stack::layers::Catalogue;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let faults = Faults::default();
//! faults.set(TenantId::new("mall").unwrap(), None, Duration::from_millis(50));
//! let service = ServiceBuilder::new()
//!     .layer(FaultLayer::new(faults.clone(), Catalogue(&[])))
//!     .service_fn(|_: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
//!     });
//! let call = |tenant: &str| http::Request::builder().header("x-mesh-tenant", tenant).body(()).unwrap();
//! let started = Instant::now();
//! service.clone().oneshot(call("mall")).await.unwrap();
//! assert!(started.elapsed() >= Duration::from_millis(50), "mall's calls are delayed");
//! faults.set(TenantId::new("mall").unwrap(), None, Duration::ZERO); // cleared
//! assert!(faults.list().is_empty());
//! # }
//! ```

use std::{
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use mesh_contract::{TenantId, bus::BoxFuture, headers};

use crate::layers::Catalogue;

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

/// The faults in force, shared by the layer and whoever sets them.
#[derive(Clone, Debug, Default)]
pub struct Faults(Arc<RwLock<Vec<Fault>>>);

impl Faults {
    /// Delays `tenant`'s calls (to `service`, or all) by `delay`; a zero delay clears the fault.
    pub fn set(&self, tenant: TenantId, service: Option<String>, delay: Duration) {
        let mut faults = self.0.write().expect("lock");
        faults.retain(|f| !(f.tenant == tenant && f.service == service));
        if !delay.is_zero() {
            faults.push(Fault {
                tenant,
                service,
                delay,
            });
        }
    }

    /// The faults in force.
    pub fn list(&self) -> Vec<Fault> {
        self.0.read().expect("lock").clone()
    }

    /// The delay for a call of `tenant` to `service`, if any.
    fn delay_for(&self, tenant: &str, service: Option<&str>) -> Option<Duration> {
        self.0
            .read()
            .expect("lock")
            .iter()
            .filter(|f| {
                f.tenant.as_str() == tenant
                    && f.service.as_deref().is_none_or(|s| Some(s) == service)
            })
            .map(|f| f.delay)
            .max()
    }
}

/// Tower layer delaying the calls [`Faults`] name.
#[derive(Clone, Debug)]
pub struct FaultLayer {
    faults: Faults,
    catalogue: Catalogue,
}

impl FaultLayer {
    /// Delays calls as `faults` say, finding each call's service in `catalogue`.
    pub fn new(faults: Faults, catalogue: Catalogue) -> Self {
        Self { faults, catalogue }
    }
}

impl<S> tower_layer::Layer<S> for FaultLayer {
    type Service = Delayed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Delayed {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`FaultLayer`] produces.
#[derive(Clone, Debug)]
pub struct Delayed<S> {
    inner: S,
    layer: FaultLayer,
}

impl<S, B> tower_service::Service<http::Request<B>> for Delayed<S>
where
    S: tower_service::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    // a call without a drill is the inner call itself; only a delayed one (a drill, rare and
    // slow on purpose) is an async block, boxed
    type Future =
        futures::future::Either<S::Future, BoxFuture<'static, Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use futures::future::Either;
        let mut inner = crate::layers::take_ready(&mut self.inner);
        let delay = request
            .headers()
            .get(headers::TENANT)
            .and_then(|v| v.to_str().ok())
            .and_then(|tenant| {
                let service = self
                    .layer
                    .catalogue
                    .method(request.uri().path())
                    .map(|(spec, _)| spec.name);
                self.layer.faults.delay_for(tenant, service)
            });
        match delay {
            None => Either::Left(inner.call(request)),
            Some(delay) => Either::Right(Box::pin(async move {
                tokio::time::sleep(delay).await;
                inner.call(request).await
            })),
        }
    }
}

//! Dependency isolation: each tenant gets a fixed number of calls in flight to each dependency.
//! When a dependency slows down for one tenant, that tenant's calls to it pile up only to its
//! own limit; the next ones are shed at once (`RESOURCE_EXHAUSTED`) instead of queueing, so the
//! caller's capacity stays free for other tenants and other dependencies.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use mesh_stack::layers::{BulkheadLayer, Bulkheads};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! let bulkheads = Bulkheads::new(1); // one call in flight per tenant
//! let (release, released) = tokio::sync::watch::channel(false);
//! let mut locator = ServiceBuilder::new()
//!     .layer(BulkheadLayer::new(bulkheads.for_dependency("locator")))
//!     .service_fn(move |_: http::Request<()>| {
//!         let mut released = released.clone();
//!         async move {
//!             let _ = released.wait_for(|r| *r).await; // a dependency that hangs
//!             Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
//!         }
//!     });
//! let call = |tenant: &str| {
//!     http::Request::builder().header("x-mesh-tenant", tenant).body(()).unwrap()
//! };
//! let hanging = tokio::spawn(locator.ready().await.unwrap().call(call("mall")));
//! let shed = locator.ready().await.unwrap().call(call("mall")).await.unwrap();
//! assert_eq!(shed.headers()["grpc-status"], "8", "RESOURCE_EXHAUSTED at once, not queued");
//! let mall = mesh_contract::TenantId::new("mall").unwrap();
//! assert_eq!(bulkheads.in_use(&mall, "locator"), (1, 1));
//! release.send(true).unwrap();
//! assert!(hanging.await.unwrap().is_ok());
//! assert_eq!(bulkheads.in_use(&mall, "locator"), (0, 1), "the place is free again");
//! # }
//! ```

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use mesh_contract::{TenantId, headers};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Admit, Decision};

/// A call's place in a bulkhead, released when the call answers.
pub type BulkheadPermit = Option<OwnedSemaphorePermit>;

/// The bulkheads of a process: one per (tenant, dependency), sized from tenant config.
#[derive(Clone, Debug)]
pub struct Bulkheads {
    inner: Arc<Mutex<Inner>>,
    dependency: Arc<str>,
}

#[derive(Debug, Default)]
struct Inner {
    limits: HashMap<TenantId, u32>,
    default_limit: u32,
    /// Each place's semaphore, with the limit it was made with.
    semaphores: HashMap<(TenantId, Arc<str>), (Arc<Semaphore>, u32)>,
}

impl Bulkheads {
    /// Bulkheads allowing `default_limit` calls in flight per tenant and dependency.
    pub fn new(default_limit: u32) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                default_limit: default_limit.max(1),
                ..Default::default()
            })),
            dependency: "".into(),
        }
    }

    /// Sets a tenant's limit. A changed limit applies to the next calls at once: the tenant's
    /// places are made anew with it (calls in flight finish in the old ones).
    pub fn set_limit(&self, tenant: TenantId, limit: u32) {
        let limit = limit.max(1);
        let mut inner = self.inner.lock().expect("lock");
        if inner.limits.insert(tenant.clone(), limit) != Some(limit) {
            inner.semaphores.retain(|(t, _), _| *t != tenant);
        }
    }

    /// The policy for calls to `dependency`, to wrap that dependency's client in an
    /// [`AdmitLayer`](super::AdmitLayer) (as the runtime's outbound stack does). All
    /// policies of one `Bulkheads` share its state.
    pub fn for_dependency(&self, dependency: &str) -> Self {
        Self {
            inner: self.inner.clone(),
            dependency: dependency.into(),
        }
    }

    fn semaphore(&self, tenant: &TenantId) -> (Arc<Semaphore>, u32) {
        let mut inner = self.inner.lock().expect("lock");
        let limit = inner
            .limits
            .get(tenant)
            .copied()
            .unwrap_or(inner.default_limit);
        inner
            .semaphores
            .entry((tenant.clone(), self.dependency.clone()))
            .or_insert_with(|| (Arc::new(Semaphore::new(limit as usize)), limit))
            .clone()
    }

    /// Calls of `tenant` in flight to `dependency`, and the limit.
    pub fn in_use(&self, tenant: &TenantId, dependency: &str) -> (u32, u32) {
        let (semaphore, limit) = self.for_dependency(dependency).semaphore(tenant);
        (limit - semaphore.available_permits() as u32, limit)
    }

    /// Takes a place for a call of `tenant`, or says why not.
    pub fn try_enter(&self, tenant: &TenantId) -> Result<OwnedSemaphorePermit, tonic::Status> {
        let (semaphore, limit) = self.semaphore(tenant);
        semaphore.try_acquire_owned().map_err(|_| {
            tonic::Status::resource_exhausted(format!(
                "bulkhead {tenant}/{}: {limit} call(s) already in flight; call shed",
                self.dependency
            ))
        })
    }
}

impl Admit for Bulkheads {
    type Ticket = BulkheadPermit;

    fn admit<B>(&self, request: &mut http::Request<B>) -> Decision<BulkheadPermit> {
        let tenant = request
            .headers()
            .get(headers::TENANT)
            .and_then(|v| v.to_str().ok())
            .and_then(|t| TenantId::new(t).ok());
        match tenant {
            // a call without a tenant is refused by the callee's auth layer; nothing to hold
            None => Decision::Admit(None),
            Some(tenant) => Decision::from_status(self.try_enter(&tenant).map(Some)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_and_dependency_has_its_own_places() {
        let bulkheads = Bulkheads::new(2);
        let (a, b) = (TenantId::new("a").unwrap(), TenantId::new("b").unwrap());
        let locator = bulkheads.for_dependency("locator");
        let held = [
            locator.try_enter(&a).unwrap(),
            locator.try_enter(&a).unwrap(),
        ];
        let shed = locator.try_enter(&a).unwrap_err();
        assert_eq!(shed.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            shed.message(),
            "bulkhead a/locator: 2 call(s) already in flight; call shed"
        );
        assert!(
            locator.try_enter(&b).is_ok(),
            "another tenant is unaffected"
        );
        assert!(
            bulkheads.for_dependency("order").try_enter(&a).is_ok(),
            "another dependency is unaffected"
        );
        assert_eq!(bulkheads.in_use(&a, "locator"), (2, 2));
        drop(held);
        assert_eq!(bulkheads.in_use(&a, "locator"), (0, 2));
    }

    #[test]
    fn a_changed_limit_applies_to_the_next_calls_and_never_underflows() {
        let bulkheads = Bulkheads::new(2);
        let a = TenantId::new("a").unwrap();
        let locator = bulkheads.for_dependency("locator");
        let held = locator.try_enter(&a).unwrap();
        bulkheads.set_limit(a.clone(), 1);
        assert_eq!(
            bulkheads.in_use(&a, "locator"),
            (0, 1),
            "new places, the new limit"
        );
        let _new = locator.try_enter(&a).unwrap();
        assert!(locator.try_enter(&a).is_err(), "held to the new limit");
        drop(held); // finishes in its old place
        assert_eq!(bulkheads.in_use(&a, "locator"), (1, 1));
    }
}

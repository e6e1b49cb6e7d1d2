//! Per-tenant admission rate: a tenant flooding the mesh is turned away at the door
//! (`RESOURCE_EXHAUSTED`) at its own configured rate, before it takes capacity from others.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use mesh_contract::{RequestContext, TenantId};
//! use mesh_stack::layers::{RateLimitLayer, RateLimiter};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let (mall, paipai) = (TenantId::new("mall").unwrap(), TenantId::new("paipai").unwrap());
//! let limiter = RateLimiter::default();
//! limiter.set(mall.clone(), 1, 1); // one call a second, no burst
//! let service = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(limiter))
//!     .service_fn(|_: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
//!     });
//! // the authentication layer before it attaches the caller's context
//! let call = |tenant: &TenantId| {
//!     let mut request = http::Request::new(());
//!     request.extensions_mut().insert(RequestContext::new(tenant.clone()));
//!     request
//! };
//! let first = service.clone().oneshot(call(&mall)).await.unwrap();
//! assert!(first.headers().get("grpc-status").is_none(), "served");
//! let second = service.clone().oneshot(call(&mall)).await.unwrap();
//! assert_eq!(second.headers()["grpc-status"], "8", "RESOURCE_EXHAUSTED");
//! let other = service.oneshot(call(&paipai)).await.unwrap();
//! assert!(other.headers().get("grpc-status").is_none(), "another tenant is not limited by mall's rate");
//! # }
//! ```

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, RwLock},
};

use governor::{DefaultDirectRateLimiter, Quota};
use mesh_contract::{RequestContext, TenantId};

use super::{Admit, Decision};
use crate::config::Tenants;

/// A tenant's token bucket, its sustained rate (for messages) and burst.
type Bucket = (Arc<DefaultDirectRateLimiter>, u32, u32);

/// A token bucket per tenant.
#[derive(Clone, Default)]
pub struct RateLimiter {
    buckets: Arc<RwLock<HashMap<TenantId, Bucket>>>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// Buckets from each tenant's `limits`.
    pub fn from_tenants(tenants: &Tenants) -> Self {
        let limiter = Self::default();
        for config in tenants.tenants.values() {
            limiter.set(
                config.tenant_id(),
                config.limits.requests_per_second,
                config.limits.burst,
            );
        }
        limiter
    }

    /// Admits `per_second` calls of `tenant` on average, `burst` at once. The same limits
    /// again keep the bucket as it is (a tenant file edited elsewhere does not refill it).
    pub fn set(&self, tenant: TenantId, per_second: u32, burst: u32) {
        let mut buckets = self.buckets.write().expect("lock");
        if buckets
            .get(&tenant)
            .is_some_and(|(_, r, b)| (*r, *b) == (per_second, burst))
        {
            return;
        }
        let rate = NonZeroU32::new(per_second.max(1)).expect("at least 1");
        let most = NonZeroU32::new(burst.max(1)).expect("at least 1");
        let bucket = DefaultDirectRateLimiter::direct(Quota::per_second(rate).allow_burst(most));
        buckets.insert(tenant, (Arc::new(bucket), per_second, burst));
    }

    /// Forgets `tenant`'s bucket (a tenant removed from the mesh).
    pub fn remove(&self, tenant: &TenantId) {
        self.buckets.write().expect("lock").remove(tenant);
    }

    /// Takes one call of `tenant` from its bucket; tenants without a bucket are not limited.
    pub fn check(&self, tenant: &TenantId) -> Result<(), tonic::Status> {
        let buckets = self.buckets.read().expect("lock");
        let Some((bucket, rate, _)) = buckets.get(tenant) else {
            return Ok(());
        };
        let Err(not_until) = bucket.check() else {
            return Ok(());
        };
        let mut status = tonic::Status::resource_exhausted(format!(
            "tenant {tenant} is over its rate of {rate} call(s) per second"
        ));
        // of the callers' making: not a fault of the service (automatic rules skip it)
        status.metadata_mut().insert(
            mesh_contract::headers::OVER_QUOTA,
            tonic::metadata::MetadataValue::from_static("rate"),
        );
        // when the next call would pass, in whole seconds as HTTP's Retry-After says it
        // (the bucket's own clock: a new one would be calibrated anew, on every refusal)
        let wait = not_until.wait_time_from(governor::clock::Clock::now(bucket.clock()));
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        status.metadata_mut().insert(
            mesh_contract::headers::RETRY_AFTER,
            tonic::metadata::MetadataValue::from(seconds.max(1)),
        );
        Err(status)
    }
}

impl Admit for RateLimiter {
    type Ticket = ();

    fn admit<B>(&self, request: &mut http::Request<B>) -> Decision<()> {
        // placed after authentication, which attached the context. The mesh's own calls for
        // a tenant (a send locating and delivering to its terminals) are part of calls the
        // tenant's rate already admitted: counting them again would shed pushes of sends
        // that were accepted
        match request.extensions().get::<RequestContext>() {
            Some(ctx) if matches!(ctx.caller, mesh_contract::Caller::Node) => Decision::Admit(()),
            Some(ctx) => Decision::from_status(self.check(&ctx.tenant)),
            None => Decision::Admit(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_over_its_burst_is_refused_and_others_are_not() {
        let limiter = RateLimiter::default();
        let (noisy, calm) = (
            TenantId::new("noisy").unwrap(),
            TenantId::new("calm").unwrap(),
        );
        limiter.set(noisy.clone(), 1, 3);
        limiter.set(calm.clone(), 1, 3);
        for _ in 0..3 {
            limiter.check(&noisy).unwrap();
        }
        let refused = limiter.check(&noisy).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            refused.message(),
            "tenant noisy is over its rate of 1 call(s) per second"
        );
        limiter.check(&calm).unwrap();
        limiter.check(&TenantId::new("unlimited").unwrap()).unwrap();
    }

    #[test]
    fn the_mesh_s_own_calls_for_a_tenant_do_not_spend_its_rate() {
        let limiter = RateLimiter::default();
        let tenant = TenantId::new("mall").unwrap();
        limiter.set(tenant.clone(), 1, 1);
        let call = |caller: mesh_contract::Caller| {
            let mut ctx = RequestContext::new(tenant.clone());
            ctx.caller = caller;
            let mut request = http::Request::new(());
            request.extensions_mut().insert(ctx);
            matches!(limiter.admit(&mut request), Decision::Admit(()))
        };
        for _ in 0..10 {
            assert!(call(mesh_contract::Caller::Node), "a node's push or locate");
        }
        assert!(
            call(mesh_contract::Caller::Backend),
            "the tenant's one call"
        );
        assert!(
            !call(mesh_contract::Caller::Backend),
            "its next one is over its rate"
        );
    }
}

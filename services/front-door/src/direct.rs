//! The path without the second hop: a client of a front door that advertises its workers
//! (`[front_door] advertise_workers`, [`FrontDoor::with_advertised_workers`]) learns from the
//! first answer which worker serves its tenant (header `x-mesh-worker`, given to a tenant's
//! backend only) and sends that tenant's next calls there directly. The worker authenticates
//! and admits each call itself (its inbound stack: credential, rate, switches, plan, deadline).
//! What only the door does is skipped: its traffic watch (the automatic degradation rules
//! sample only calls through the door; switches, whoever set them, still apply in the worker)
//! and drill delays. A client that knows the address can also flood the worker directly; the
//! worker's own rate limit is then all that holds it, as behind any other proxy.
//!
//! When the worker goes away (restarted on another port, the tenant moved to another group),
//! the call in flight fails once, `UNAVAILABLE` (worth a retry), and the tenant's next call goes
//! through the door again, which names the worker serving it now. A worker that cannot be
//! reached from here (its address names another network) is not learned again for
//! [`RELEARN_AFTER`]. Only plain HTTP/2: do not use it with a door reached over TLS.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use mesh_api::recommend::v1::{RecommendCaller, SuggestRequest};
//! use mesh_contract::{RequestContext, TenantId};
//! use mesh_front_door::direct::DirectChannel;
//!
//! let door = tonic::transport::Endpoint::from_static("http://127.0.0.1:7443").connect().await?;
//! let channel = DirectChannel::new(door);
//! let mut recommend = RecommendCaller::new(channel.clone());
//! let ctx = RequestContext::new(TenantId::new("mall")?).with_token("dev-mall-token");
//! recommend.suggest(&ctx, SuggestRequest::default()).await?; // through the door
//! recommend.suggest(&ctx, SuggestRequest::default()).await?; // to mall's worker directly
//! assert!(channel.route("mall").is_some());
//! # Ok(()) }
//! ```
//!
//! [`FrontDoor::with_advertised_workers`]: crate::FrontDoor::with_advertised_workers

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use mesh_contract::{bus::BoxFuture, headers};
use tonic::transport::Channel;
use tower::ServiceExt;

/// How long an address that failed is not learned again.
pub const RELEARN_AFTER: Duration = Duration::from_secs(10);

/// How long connecting to a worker may take before the call fails (and the door is used).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A channel to a front door that sends each tenant's calls to the worker the door named for it,
/// once it did (see the [module](self)). Cheap to clone; clones share what they learned.
#[derive(Clone, Debug)]
pub struct DirectChannel {
    door: Channel,
    routes: Arc<RwLock<HashMap<String, Route>>>,
    /// Addresses that failed, and when.
    failed: Arc<Mutex<HashMap<Arc<str>, Instant>>>,
}

/// A worker a tenant's calls go to, and the channel to it.
#[derive(Clone, Debug)]
struct Route {
    address: Arc<str>,
    channel: Channel,
}

impl DirectChannel {
    /// Calls through `door` until it names a tenant's worker.
    pub fn new(door: Channel) -> Self {
        Self {
            door,
            routes: Arc::default(),
            failed: Arc::default(),
        }
    }

    /// The worker (`host:port`) `tenant`'s calls go to directly now, if the door named one.
    pub fn route(&self, tenant: &str) -> Option<String> {
        self.routes
            .read()
            .expect("lock")
            .get(tenant)
            .map(|r| r.address.to_string())
    }

    /// Sends `tenant`'s calls to `address` from now on (unless they go there already, or it
    /// failed within [`RELEARN_AFTER`]).
    fn learn(&self, tenant: &str, address: &str) {
        if self.route(tenant).as_deref() == Some(address) {
            return;
        }
        {
            let mut failed = self.failed.lock().expect("lock");
            failed.retain(|_, at| at.elapsed() < RELEARN_AFTER);
            if failed.contains_key(address) {
                return;
            }
        }
        let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        else {
            return; // not an address: the door stays the way
        };
        let channel = endpoint
            .tcp_nodelay(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_lazy();
        self.routes.write().expect("lock").insert(
            tenant.to_owned(),
            Route {
                address: address.into(),
                channel,
            },
        );
    }

    /// Sends `tenant`'s calls through the door again, if they went to `address`; with
    /// `unreachable`, `address` is not learned again for a while.
    fn forget(&self, tenant: &str, address: &Arc<str>, unreachable: bool) {
        let mut routes = self.routes.write().expect("lock");
        if routes.get(tenant).is_some_and(|r| &r.address == address) {
            routes.remove(tenant);
        }
        if unreachable {
            self.failed
                .lock()
                .expect("lock")
                .insert(address.clone(), Instant::now());
        }
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for DirectChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    // Boxed on purpose: choosing the worker or the door, and falling back to the door, is an
    // async block (no nameable type); a client's call allocates once.
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // each call waits for its own channel's readiness (`oneshot`): which one is known
        // only once the request's tenant is
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let tenant = request
            .headers()
            .get(headers::TENANT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let route = tenant
            .as_deref()
            .and_then(|t| self.routes.read().expect("lock").get(t).cloned());
        let this = self.clone();
        Box::pin(async move {
            let Some(tenant) = tenant else {
                return this.door.clone().oneshot(request).await;
            };
            match route {
                None => {
                    let response = this.door.clone().oneshot(request).await?;
                    // only from an answer the worker gave without an error
                    let failed = tonic::Status::from_header_map(response.headers())
                        .is_some_and(|s| s.code() != tonic::Code::Ok);
                    if let Some(address) = response
                        .headers()
                        .get(headers::WORKER)
                        .and_then(|v| v.to_str().ok())
                        .filter(|_| !failed)
                    {
                        this.learn(&tenant, address);
                    }
                    Ok(response)
                }
                Some(route) => match route.channel.oneshot(request).await {
                    Err(err) => {
                        this.forget(&tenant, &route.address, true);
                        Err(err)
                    }
                    Ok(response) => Ok(this.checked(&tenant, &route.address, response)),
                },
            }
        })
    }
}

impl DirectChannel {
    /// A worker's answer, unless it says the worker does not serve the tenant (any more): its
    /// calls go through the door again from now on. A worker answers a tenant it does not serve
    /// as it answers a wrong credential (nobody learns which tenants exist from it), so this
    /// one is answered `UNAVAILABLE`, worth a retry: through the door, the retry gets the
    /// definitive answer (served, or refused for its credential).
    fn checked(
        &self,
        tenant: &str,
        address: &Arc<str>,
        response: http::Response<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        let code = tonic::Status::from_header_map(response.headers()).map(|s| s.code());
        match code {
            Some(tonic::Code::Unauthenticated) => {
                self.forget(tenant, address, false);
                tonic::Status::unavailable(format!(
                    "the worker at {address} does not serve tenant {tenant} with this \
                     credential; retry (through the front door)"
                ))
                .into_http()
            }
            // the worker has no process for it any more (a degraded answer, the contract's
            // fallback, says nothing about the route)
            Some(tonic::Code::Unavailable)
                if !response
                    .headers()
                    .contains_key(crate::layers::DEGRADED_HEADER) =>
            {
                self.forget(tenant, address, false);
                response
            }
            _ => response,
        }
    }
}

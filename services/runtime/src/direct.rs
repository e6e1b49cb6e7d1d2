//! The path without the second hop: a client of a front door that advertises its workers
//! (`[front_door] advertise_workers`, [`FrontDoor::with_advertised_workers`]) learns from the
//! first answer which worker serves its tenant (header `x-mesh-worker`) and sends that tenant's
//! next calls there directly. The worker authenticates and admits each call itself (rate,
//! switches, plan, deadline: its inbound stack), so skipping the door skips no check, only the
//! hop.
//!
//! When the worker goes away (restarted on another port, the tenant moved to another group),
//! the call in flight fails once, `UNAVAILABLE` as any lost connection does, and the tenant's
//! next call goes through the door again, which names the worker serving it now. Calls made
//! directly are not seen by the door's traffic watch: the automatic degradation rules sample
//! only what passes the door (switches set by ops and by rules still apply, in the worker).
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use mesh_api::recommend::v1::{RecommendCaller, SuggestRequest};
//! use mesh_contract::{RequestContext, TenantId};
//! use mesh_runtime::direct::DirectChannel;
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
//! [`FrontDoor::with_advertised_workers`]: crate::front_door::FrontDoor::with_advertised_workers

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    task::{Context, Poll},
};

use mesh_contract::{bus::BoxFuture, headers};
use tonic::transport::Channel;
use tower::ServiceExt;

/// A channel to a front door that sends each tenant's calls to the worker the door named for it,
/// once it did (see the [module](self)). Cheap to clone; clones share what they learned.
#[derive(Clone, Debug)]
pub struct DirectChannel {
    door: Channel,
    routes: Arc<RwLock<HashMap<String, Route>>>,
}

/// A worker a tenant's calls go to, and the channel to it.
#[derive(Clone, Debug)]
struct Route {
    address: String,
    channel: Channel,
}

impl DirectChannel {
    /// Calls through `door` until it names a tenant's worker.
    pub fn new(door: Channel) -> Self {
        Self {
            door,
            routes: Arc::default(),
        }
    }

    /// The worker (`host:port`) `tenant`'s calls go to directly now, if the door named one.
    pub fn route(&self, tenant: &str) -> Option<String> {
        self.routes
            .read()
            .expect("lock")
            .get(tenant)
            .map(|r| r.address.clone())
    }

    /// Sends `tenant`'s calls to `address` from now on (unless they go there already).
    fn learn(&self, tenant: &str, address: &str) {
        if self.route(tenant).as_deref() == Some(address) {
            return;
        }
        let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        else {
            return; // not an address: the door stays the way
        };
        let channel = endpoint.tcp_nodelay(true).connect_lazy();
        self.routes.write().expect("lock").insert(
            tenant.to_owned(),
            Route {
                address: address.to_owned(),
                channel,
            },
        );
    }

    /// Sends `tenant`'s calls through the door again, if they went to `address`.
    fn forget(&self, tenant: &str, address: &str) {
        let mut routes = self.routes.write().expect("lock");
        if routes.get(tenant).is_some_and(|r| r.address == address) {
            routes.remove(tenant);
        }
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for DirectChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
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
                    if let Some(address) = response
                        .headers()
                        .get(headers::WORKER)
                        .and_then(|v| v.to_str().ok())
                    {
                        this.learn(&tenant, address);
                    }
                    Ok(response)
                }
                Some(route) => match route.channel.oneshot(request).await {
                    Err(err) => {
                        this.forget(&tenant, &route.address);
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
    /// calls go through the door again from now on, and this one is answered `UNAVAILABLE`
    /// (worth a retry) rather than as a wrong credential.
    fn checked(
        &self,
        tenant: &str,
        address: &str,
        response: http::Response<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        match tonic::Status::from_header_map(response.headers()).map(|s| s.code()) {
            Some(tonic::Code::Unauthenticated) => {
                self.forget(tenant, address);
                tonic::Status::unavailable(format!(
                    "the worker at {address} no longer serves tenant {tenant}; retry (through \
                     the front door)"
                ))
                .into_http()
            }
            Some(tonic::Code::Unavailable) => {
                self.forget(tenant, address);
                response
            }
            _ => response,
        }
    }
}

//! The front door of a mesh whose tenants run in separate processes: one HTTP/2 address for
//! callers, routing each call to the process serving its tenant (`x-mesh-tenant`). A tenant whose
//! process is restarting gets `UNAVAILABLE` at once; the others are not affected.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, RwLock},
    task::{Context, Poll},
};

use mesh_contract::{TenantId, bus::BoxFuture, headers};
use tonic::transport::{Channel, Endpoint};
use tower::ServiceExt;

/// Where each tenant's calls go.
#[derive(Clone, Debug, Default)]
pub struct FrontDoor {
    routes: Arc<RwLock<HashMap<TenantId, (String, Channel)>>>,
}

impl FrontDoor {
    /// Routes `tenant` to the process listening at `address` (`127.0.0.1:4567`).
    pub fn route(&self, tenant: TenantId, address: &str) -> Result<(), tonic::transport::Error> {
        let channel = Endpoint::from_shared(format!("http://{address}"))?.connect_lazy();
        self.routes
            .write()
            .expect("lock")
            .insert(tenant, (address.to_owned(), channel));
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
            .map(|(a, _)| a.clone())
    }

    /// Serves callers on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        use hyper_util::{
            rt::{TokioExecutor, TokioIo},
            server::conn::auto::Builder,
            service::TowerToHyperService,
        };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let service = TowerToHyperService::new(self.clone());
                    tokio::spawn(async move {
                        let builder = Builder::new(TokioExecutor::new()).http2_only();
                        if let Err(err) = builder.serve_connection(TokioIo::new(stream), service).await {
                            tracing::debug!(error = %err, "front door connection ended");
                        }
                    });
                }
            }
        }
    }
}

impl<B> tower_service::Service<http::Request<B>> for FrontDoor
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let tenant = request
            .headers()
            .get(headers::TENANT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let route = tenant
            .as_deref()
            .and_then(|t| TenantId::new(t).ok())
            .and_then(|t| {
                self.routes
                    .read()
                    .expect("lock")
                    .get(&t)
                    .map(|(_, c)| c.clone())
            });
        Box::pin(async move {
            let Some(channel) = route else {
                let status = match tenant {
                    None => tonic::Status::unauthenticated(format!(
                        "request carries no tenant (header `{}`)",
                        headers::TENANT
                    )),
                    Some(t) => tonic::Status::unavailable(format!(
                        "no process is serving tenant {t:?} right now"
                    )),
                };
                return Ok(status.into_http());
            };
            let request = request.map(tonic::body::Body::new);
            match channel.oneshot(request).await {
                Ok(response) => Ok(response),
                Err(err) => Ok(tonic::Status::unavailable(format!(
                    "the tenant's process did not answer: {err}"
                ))
                .into_http()),
            }
        })
    }
}

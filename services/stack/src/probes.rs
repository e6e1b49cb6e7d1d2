//! What load balancers and tools ask every gRPC server, answered without tenant credentials:
//! `grpc.health.v1.Health` (overall, `""`, and per service, `order.v1.Order`) and server
//! reflection (`grpc.reflection.v1` and `v1alpha`, from the descriptor set codegen emits), so
//! `grpcurl -plaintext host:port list` and a Kubernetes gRPC probe work against the front door
//! and every worker.
//!
//! `GET /healthz` answers the same as the overall health check in plain HTTP (200 `serving`,
//! 503 `not serving`), for a proxy's HTTP check: HAProxy's `option httpchk` over HTTP/2 cannot
//! send a gRPC frame (its body starts with NUL bytes), and a TCP check passes against a paused
//! process whose kernel still accepts connections.
//!
//! [`ProbesLayer`] goes outermost on a server: probe paths are answered by [`Probes`] and never
//! reach tenant authentication, rate limits or switches (a probe belongs to no tenant); every
//! other call passes through untouched.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use mesh_stack::probes::Probes;
//!
//! let probes = Probes::new(&[], None);
//! probes.set_serving(true).await; // the process is ready
//! assert!(Probes::is_probe("/grpc.health.v1.Health/Check"));
//! assert!(!Probes::is_probe("/order.v1.Order/GetOrder"));
//! # }
//! ```

use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use mesh_contract::{ContractSpec, bus::BoxFuture};
use tonic::service::Routes;
use tonic_health::{ServingStatus, server::HealthReporter};

/// Health and reflection for one server.
#[derive(Clone)]
pub struct Probes {
    routes: Routes,
    reporter: HealthReporter,
    services: Vec<String>,
    /// What `GET /healthz` answers.
    serving: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

impl Probes {
    /// Health for the services of `contracts` (plus `""`, the server as a whole), reported once
    /// [`Probes::set_serving`] says so; reflection over `descriptors` (an encoded
    /// `FileDescriptorSet`) when given.
    pub fn new(contracts: &[&ContractSpec], descriptors: Option<&'static [u8]>) -> Self {
        let (reporter, health) = tonic_health::server::health_reporter();
        let mut routes = Routes::new(health);
        let mut services: Vec<String> = contracts.iter().map(|c| c.service.to_owned()).collect();
        services.sort();
        services.dedup();
        if let Some(descriptors) = descriptors {
            // only what this server serves (the set also describes, e.g., the admin API)
            let builder = || {
                services.iter().fold(
                    tonic_reflection::server::Builder::configure()
                        .register_encoded_file_descriptor_set(descriptors)
                        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                        .with_service_name("grpc.health.v1.Health"),
                    |builder, service| builder.with_service_name(service.clone()),
                )
            };
            let v1 = builder().build_v1();
            let v1alpha = builder().build_v1alpha();
            match (v1, v1alpha) {
                (Ok(v1), Ok(v1alpha)) => routes = routes.add_service(v1).add_service(v1alpha),
                (Err(err), _) | (_, Err(err)) => {
                    tracing::warn!(error = %err, "server reflection off: the descriptor set does not decode")
                }
            }
        }
        // a fresh reporter answers only what it was told: until `set_serving`, every name is
        // unknown (`NOT_FOUND`), which no load balancer takes for healthy
        Self {
            routes,
            reporter,
            services,
            serving: Default::default(),
        }
    }

    /// Reports the server and each of its services as serving (or not).
    pub async fn set_serving(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.serving
            .store(serving, std::sync::atomic::Ordering::SeqCst);
        self.reporter.set_service_status("", status).await;
        for service in &self.services {
            self.reporter.set_service_status(service, status).await;
        }
    }

    /// Whether `path` is a health or reflection call.
    pub fn is_probe(path: &str) -> bool {
        path == HEALTHZ
            || path.starts_with("/grpc.health.v1.Health/")
            || path.starts_with("/grpc.reflection.v1.ServerReflection/")
            || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
    }

    /// Answers a probe.
    pub fn call<B>(
        &self,
        request: http::Request<B>,
    ) -> BoxFuture<'static, http::Response<tonic::body::Body>>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        use tower::ServiceExt;
        if request.uri().path() == HEALTHZ {
            let serving = self.serving.load(std::sync::atomic::Ordering::SeqCst);
            let (status, text) = if serving {
                (http::StatusCode::OK, "serving\n")
            } else {
                (http::StatusCode::SERVICE_UNAVAILABLE, "not serving\n")
            };
            let mut answer = http::Response::new(tonic::body::Body::new(
                http_body_util::Full::new(bytes::Bytes::from_static(text.as_bytes())),
            ));
            *answer.status_mut() = status;
            answer.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain"),
            );
            return Box::pin(async move { answer });
        }
        let routes = self.routes.clone();
        Box::pin(async move {
            match routes.oneshot(request.map(tonic::body::Body::new)).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        })
    }
}

/// The plain HTTP health path (`GET /healthz`): 200 while serving, 503 otherwise.
pub const HEALTHZ: &str = "/healthz";

/// Answers probes before anything else on the server; see the module docs.
#[derive(Clone, Debug)]
pub struct ProbesLayer {
    probes: Probes,
}

impl ProbesLayer {
    /// Probes answered by `probes`.
    pub fn new(probes: Probes) -> Self {
        Self { probes }
    }
}

impl<S> tower_layer::Layer<S> for ProbesLayer {
    type Service = WithProbes<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithProbes {
            inner,
            probes: self.probes.clone(),
        }
    }
}

/// A server's service with probes answered in front of it.
#[derive(Clone, Debug)]
pub struct WithProbes<S> {
    inner: S,
    probes: Probes,
}

impl<S, B> tower_service::Service<http::Request<B>> for WithProbes<S>
where
    S: tower_service::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        >,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    // a call is the inner call itself; only a probe (health, reflection: rare) is boxed
    type Future =
        futures::future::Either<BoxFuture<'static, Result<Self::Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use futures::future::Either;
        if Probes::is_probe(request.uri().path()) {
            let answer = self.probes.call(request);
            return Either::Left(Box::pin(async move { Ok(answer.await) }));
        }
        Either::Right(self.inner.call(request))
    }
}

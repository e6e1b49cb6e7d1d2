//! The service, assembled in one place: two axum routers, one per protocol a browser speaks
//! (HTTP/JSON with the pages, and gRPC-Web), each sending a path to its handler, with
//! tower-http's body limit in front of the JSON calls.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    Router,
    extract::Request,
    response::IntoResponse,
    routing::{any, get, post},
};
use bytes::Bytes;
use futures::{
    TryFutureExt,
    future::{Either, MapOk},
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use mesh_contract::ContractSpec;
use mesh_contract::bus::BoxFuture;
use tonic::Code;
use tower::util::MapResponseLayer;
use tower_http::{limit::RequestBodyLimitLayer, request_id::PropagateRequestIdLayer};

use crate::{
    Routes, call, cors, grpc_web, pages,
    status::{error, json},
};

/// What a call is forwarded to: the mesh's gRPC stack, as one service (the front door's stack
/// on a `mesh up` node, a lone worker's inbound stack, or the admin API's routes).
pub type Upstream = tower::util::BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    Response<tonic::body::Body>,
    Infallible,
>;

/// The most bytes of headers (names and values) one request may carry.
pub const MAX_HEADERS_TOTAL: usize = 32 * 1024;

/// The response header naming the switch that answered a degraded call (as on gRPC).
pub const DEGRADED_HEADER: &str = "x-mesh-degraded";

/// Request header giving the call's deadline in milliseconds (`grpc-timeout` is taken too);
/// without one, the contract's timeout applies.
pub const TIMEOUT_HEADER: &str = "x-mesh-timeout-ms";

/// The browsers' access as a tower service (see the [crate] documentation).
#[derive(Clone)]
pub struct WebAccess {
    config: Config,
    json: Router,
    grpc_web: Router,
}

/// What the routers are built from.
#[derive(Clone)]
struct Config {
    routes: Arc<Routes>,
    calls: Upstream,
    /// The admin API's service and its contract (`admin.v1.Admin`), when this node serves it.
    admin: Option<(&'static str, Upstream)>,
    /// The node credential platforms' callbacks are passed on with, when this access takes
    /// them.
    channels: Option<mesh_contract::ServiceCredentials>,
    /// The other origins each tenant lets browsers call from; none without it.
    cors: Option<mesh_config::web::AllowedOrigins>,
    max_body: usize,
}

impl std::fmt::Debug for WebAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebAccess")
            .field("routes", &self.config.routes.iter().count())
            .field("admin", &self.config.admin.as_ref().map(|(name, _)| name))
            .field("max_body", &self.config.max_body)
            .finish()
    }
}

impl WebAccess {
    /// Serves `routes`, forwarding every call to `calls`.
    pub fn new(routes: Routes, calls: Upstream) -> Self {
        Self::build(Config {
            routes: Arc::new(routes),
            calls,
            admin: None,
            channels: None,
            cors: None,
            max_body: 1 << 20,
        })
    }

    /// Forwards the calls of `contract` (the admin API, whose routes must be in the table) to
    /// `service` instead.
    pub fn with_admin(self, contract: &'static ContractSpec, service: Upstream) -> Self {
        let mut config = self.config;
        config.admin = Some((contract.service, service));
        Self::build(config)
    }

    /// Takes third-party platforms' callbacks at [`crate::CALLBACK_PATH`], passing each to the
    /// tenant's channel service as the node (`node_credential`).
    pub fn with_channels(self, node_credential: &str) -> Self {
        let mut config = self.config;
        config.channels = Some(mesh_contract::ServiceCredentials::node(node_credential));
        Self::build(config)
    }

    /// Serves calls from the other origins each tenant allows (CORS), as `origins` says at each
    /// call (a tenant's allowance changes with its file, without a restart).
    pub fn with_cors(self, origins: mesh_config::web::AllowedOrigins) -> Self {
        let mut config = self.config;
        config.cors = Some(origins);
        Self::build(config)
    }

    /// Refuses request bodies larger than `bytes` (413).
    pub fn with_max_body(self, bytes: usize) -> Self {
        let mut config = self.config;
        config.max_body = bytes;
        Self::build(config)
    }

    fn build(config: Config) -> Self {
        Self {
            json: json_router(&config),
            grpc_web: grpc_web_router(&config),
            config,
        }
    }
}

impl Config {
    /// Where calls of the service named `service` (`message.v1.Message`) go.
    fn upstream_of(&self, service: &str) -> Upstream {
        match &self.admin {
            Some((admin_service, admin)) if *admin_service == service => admin.clone(),
            _ => self.calls.clone(),
        }
    }
}

/// The JSON calls (`POST /<contract>/v<major>/<Method>`), `GET /routes`, and the pages.
fn json_router(config: &Config) -> Router {
    let mut router = Router::new();
    for route in config.routes.iter() {
        let upstream = config.upstream_of(route.contract.service);
        let max_body = config.max_body;
        let not_post = format!(
            "{} is a call: POST it a JSON {}",
            route.http_path,
            route.input.full_name()
        );
        let route = Arc::new(route.clone());
        let path = route.http_path.clone();
        let handler = move |request: Request| {
            let (upstream, route) = (upstream.clone(), route.clone());
            async move { call::call(upstream, &route, request, max_body).await }
        };
        let wrong_method = move || {
            let message = not_post.clone();
            async move { not_allowed("POST", &message) }
        };
        router = router.route(&path, post(handler).fallback(wrong_method));
    }
    let routes = config.routes.clone();
    let admin_service = config.admin.as_ref().map(|(service, _)| *service);
    let openapi: Bytes =
        serde_json::to_vec(&crate::openapi::document(&config.routes, admin_service))
            .expect("json")
            .into();
    let list = move || {
        let routes = routes.clone();
        async move { route_list(&routes, admin_service) }
    };
    if let Some(credentials) = &config.channels {
        let (calls, credentials, max_body) =
            (config.calls.clone(), credentials.clone(), config.max_body);
        let handler = move |axum::extract::Path(at): axum::extract::Path<(String, String)>,
                            request: Request| {
            let (calls, credentials) = (calls.clone(), credentials.clone());
            async move { crate::channels::callback(calls, credentials, at, request, max_body).await }
        };
        router = router.route(
            crate::CALLBACK_PATH,
            get(handler.clone()).post(handler).fallback(|| async {
                not_allowed(
                    "GET, POST",
                    "a channel's callback is a GET (address check) or a POST",
                )
            }),
        );
    }
    let console = config.admin.is_some();
    let max_body = config.max_body;
    router
        .route(
            "/routes",
            get(list).fallback(|| async { not_allowed("GET", "/routes is read with GET") }),
        )
        // written once: the routes do not change while this access serves
        .route(
            "/openapi.json",
            get(move || {
                let document = openapi.clone();
                async move { json(StatusCode::OK, document) }
            }),
        )
        .fallback(move |method: Method, uri: http::Uri| async move {
            page_or_not_found(&method, uri.path(), console)
        })
        // a declared length over the limit is refused before a byte of it is read, and a
        // body without one is cut where it passes the limit
        .layer(RequestBodyLimitLayer::new(max_body))
        .layer(MapResponseLayer::new(move |response| {
            with_json_error(response, max_body)
        }))
        // the caller's request id back on every answer, this access's own errors included
        .layer(PropagateRequestIdLayer::new(request_id()))
}

/// The header naming a call's request id (`x-mesh-request-id`).
fn request_id() -> http::HeaderName {
    http::HeaderName::from_static(mesh_contract::headers::REQUEST_ID)
}

/// The gRPC paths of the calls the JSON access serves (never an internal one, whatever stands
/// behind this access: a lone worker has no front door to refuse them).
fn grpc_web_router(config: &Config) -> Router {
    let mut router = Router::new();
    for route in config.routes.iter() {
        let upstream = config.upstream_of(route.contract.service);
        let max_body = config.max_body;
        let handler = move |request: Request| grpc_web::call(upstream.clone(), request, max_body);
        router = router.route(route.method.path, any(handler));
    }
    router
        .fallback(|uri: http::Uri| async move {
            error(
                StatusCode::NOT_FOUND,
                Code::Unimplemented,
                &format!("no call at {} is served to browsers", uri.path()),
            )
        })
        .layer(PropagateRequestIdLayer::new(request_id()))
}

impl<B> tower_service::Service<http::Request<B>> for WebAccess
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    // Same-origin calls (the mesh's own pages, every non-browser client) in axum's future;
    // another origin's in a box (an answer given here, or headers added to the router's).
    type Future = Either<
        MapOk<
            axum::routing::future::RouteFuture<Infallible>,
            fn(axum::response::Response) -> Response<tonic::body::Body>,
        >,
        BoxFuture<'static, Result<Response<tonic::body::Body>, Infallible>>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    /// The content type says the protocol, then the router of that protocol the path. (The
    /// future is axum's; axum boxes each handler's future inside its router.)
    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // every header counted, not only the ones passed on: a request is refused whole
        // (431) before any of it is read further
        let total: usize = request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        if total > MAX_HEADERS_TOTAL {
            let answer = error(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                Code::InvalidArgument,
                &format!("the request's headers total {total} bytes; at most {MAX_HEADERS_TOTAL}"),
            );
            return Either::Right(Box::pin(std::future::ready(Ok(answer))));
        }
        let cross = match &self.config.cors {
            Some(origins) => cors::cross(origins, &request),
            None => cors::Cross::Same,
        };
        let origin = match cross {
            cors::Cross::Same => None,
            cors::Cross::Answered(answer) => {
                return Either::Right(Box::pin(std::future::ready(Ok(answer))));
            }
            cors::Cross::Allowed(origin) => Some(origin),
        };
        let router = if is_grpc_web(request.headers()) {
            &mut self.grpc_web
        } else {
            &mut self.json
        };
        // a router is always ready (axum's own contract)
        let body: fn(axum::response::Response) -> Response<tonic::body::Body> =
            |response| response.map(tonic::body::Body::new);
        let answer = tower_service::Service::call(router, request).map_ok(body);
        match origin {
            None => Either::Left(answer),
            Some(origin) => Either::Right(Box::pin(answer.map_ok(|mut response| {
                cors::allow(&mut response, origin);
                response
            }))),
        }
    }
}

/// `GET /routes`: every call, its gRPC path, whether it streams, who may call it (the admin
/// API's calls: `OPS`, the ops credential, whatever their contract's default audience says).
fn route_list(routes: &Routes, admin_service: Option<&str>) -> Response<tonic::body::Body> {
    let routes: Vec<_> = routes
        .iter()
        .map(|r| {
            let audience = if Some(r.contract.service) == admin_service {
                vec!["OPS"]
            } else {
                r.method.audience.names()
            };
            serde_json::json!({
                "path": r.http_path,
                "grpc": r.method.path,
                "request": r.input.full_name(),
                "response": r.output.full_name(),
                "stream": r.streams(),
                "audience": audience,
                "tier": r.contract.tier.get(),
                "timeout_ms": r.method.timeout.as_millis() as u64,
            })
        })
        .collect();
    json(
        StatusCode::OK,
        serde_json::to_vec(&routes).expect("json").into(),
    )
}

/// A path that is no call: a page (the console only where the admin API is served), or 404.
fn page_or_not_found(method: &Method, path: &str, console: bool) -> Response<tonic::body::Body> {
    if method != Method::GET && method != Method::HEAD {
        return error(
            StatusCode::NOT_FOUND,
            Code::NotFound,
            &format!(
                "no call at {path}: calls are POST /<contract>/v<major>/<Method>, listed at /routes"
            ),
        );
    }
    match pages::page(path).filter(|_| console || !pages::is_console(path)) {
        Some(page) => page.response(),
        None => error(
            StatusCode::NOT_FOUND,
            Code::NotFound,
            &format!("no page at {path}; the calls are listed at /routes"),
        ),
    }
}

/// 405, naming the method `allow`ed.
fn not_allowed(allow: &'static str, message: &str) -> Response<tonic::body::Body> {
    let mut response = error(StatusCode::METHOD_NOT_ALLOWED, Code::Unimplemented, message);
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// The limit layer's own 413 (plain text) as this access's JSON error, like every other.
fn with_json_error<B>(response: Response<B>, max_body: usize) -> axum::response::Response
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v == "application/json");
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        return call::too_large(max_body).into_response();
    }
    response.into_response()
}

/// Whether the request is gRPC-Web (`application/grpc-web`, `+proto`, `-text`).
fn is_grpc_web(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc-web"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn grpc_timeouts_read_as_grpc_writes_them() {
        use mesh_contract::headers::grpc_timeout;
        assert_eq!(grpc_timeout("300m"), Some(Duration::from_millis(300)));
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "300", "300x", "123456789m", "-1m", "+5S", "1.5S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
    }
}

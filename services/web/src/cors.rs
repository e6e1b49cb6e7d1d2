//! Calls from another origin (CORS): an app served elsewhere calls the mesh from a browser
//! only as a tenant that names the app's origin (`[web] allowed_origins` in its file). A
//! preflight names no tenant, so it is answered for an origin some tenant allows; the call
//! that follows is refused (403, before it reaches the mesh) unless the tenant it names
//! (`x-mesh-tenant`) allows that origin, so no tenant's allowance opens another's calls. The
//! credential is a header, never a cookie: no `Access-Control-Allow-Credentials`.
//!
//! The mesh's own pages (the chat, the console) are the same origin and pass untouched. The
//! admin API and third-party platforms' callbacks act as no tenant (the ops credential, the
//! node's): no tenant's file opens them to another origin.

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use mesh_config::web::AllowedOrigins;
use tonic::Code;

use crate::status::error;

/// The request headers a page may send: the mesh's and gRPC-Web's.
const ALLOW_HEADERS: &str = "content-type, authorization, x-mesh-tenant, x-mesh-token, \
    x-mesh-timeout-ms, x-mesh-request-id, grpc-timeout, x-grpc-web, x-user-agent, traceparent, \
    tracestate";
/// The answer headers a page may read: a degraded answer's switch, the request id, when to
/// retry, and gRPC-Web's status.
const EXPOSE_HEADERS: &str = "x-mesh-degraded, x-mesh-request-id, retry-after, grpc-status, \
    grpc-message, grpc-status-details-bin";

/// What a request is, seen from its origin.
pub(crate) enum Cross {
    /// No other origin: served as it is.
    Same,
    /// A preflight, answered here.
    Answered(Response<tonic::body::Body>),
    /// A call from an origin its tenant allows: served, its answer marked readable by it.
    Allowed(HeaderValue),
}

/// Sorts `request` out by its `Origin` against `origins`.
pub(crate) fn cross<B>(origins: &AllowedOrigins, request: &http::Request<B>) -> Cross {
    let Some(origin) = request.headers().get(header::ORIGIN) else {
        return Cross::Same;
    };
    let Ok(origin_text) = origin.to_str() else {
        return Cross::Answered(refused("an Origin header that is not text"));
    };
    if same_origin(origin_text, request) {
        return Cross::Same;
    }
    let path = request.uri().path();
    let tenants_own = !(path.starts_with("/admin/")
        || path.starts_with("/admin.")
        || path.starts_with("/channels/"));
    if !tenants_own {
        return Cross::Answered(refused(&format!(
            "{path} is not called from another origin ({origin_text}): the admin API and \
             platforms' callbacks serve no tenant's app"
        )));
    }
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        if !origins.any_allows(origin_text) {
            return Cross::Answered(refused(&format!(
                "no tenant allows calls from {origin_text} (web.allowed_origins in its file)"
            )));
        }
        return Cross::Answered(preflight_answer(origin.clone()));
    }
    let tenant = request
        .headers()
        .get(mesh_contract::headers::TENANT)
        .and_then(|t| t.to_str().ok());
    match tenant {
        Some(tenant) if origins.allows(tenant, origin_text) => Cross::Allowed(origin.clone()),
        Some(tenant) => Cross::Answered(refused(&format!(
            "tenant {tenant:?} does not allow calls from {origin_text}: its file's \
             web.allowed_origins names the origins whose pages may call as it"
        ))),
        None => Cross::Answered(refused(&format!(
            "a call from another origin ({origin_text}) names its tenant (x-mesh-tenant), \
             which must allow that origin"
        ))),
    }
}

/// Marks `response` readable by the page of `origin`.
pub(crate) fn allow(response: &mut Response<tonic::body::Body>, origin: HeaderValue) {
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
    vary_on_origin(headers);
}

/// Whether `origin` is the address the request came to (the mesh's own pages send `Origin`
/// on their POSTs too): its `Host` (the URI's authority on HTTP/2), or the `X-Forwarded-Host`
/// a proxy in front that rewrote `Host` sets; compared without case and default ports.
fn same_origin<B>(origin: &str, request: &http::Request<B>) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let normal = |host: &str| {
        let host = host.trim().to_ascii_lowercase();
        match (scheme, host.rsplit_once(':')) {
            ("http", Some((name, "80"))) | ("https", Some((name, "443"))) => name.to_owned(),
            _ => host,
        }
    };
    let origin_host = normal(authority);
    let headers = request.headers();
    let forwarded = headers
        .get("x-forwarded-host")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split(',').next());
    [
        headers.get(header::HOST).and_then(|h| h.to_str().ok()),
        request.uri().authority().map(|a| a.as_str()),
        forwarded,
    ]
    .into_iter()
    .flatten()
    .any(|host| normal(host) == origin_host)
}

fn preflight_answer(origin: HeaderValue) -> Response<tonic::body::Body> {
    let mut response = Response::new(tonic::body::Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, GET"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOW_HEADERS),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    vary_on_origin(headers);
    response
}

fn refused(message: &str) -> Response<tonic::body::Body> {
    let mut response = error(StatusCode::FORBIDDEN, Code::PermissionDenied, message);
    vary_on_origin(response.headers_mut());
    response
}

fn vary_on_origin(headers: &mut HeaderMap) {
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use tower::ServiceExt;

    use super::*;
    use crate::{Routes, WebAccess};

    const APP: &str = "https://shop.example.com";

    /// mall allows the app's origin, paipai none; the stand-in mesh counts what reaches it.
    fn access() -> (WebAccess, Arc<AtomicUsize>) {
        let reached = Arc::new(AtomicUsize::new(0));
        let counter = reached.clone();
        let mesh = tower::service_fn(move |_: http::Request<tonic::body::Body>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok(tonic::Status::not_found("no such order").into_http()) }
        });
        let routes = Routes::new(mesh_api::CONTRACTS, mesh_api::FILE_DESCRIPTOR_SET).unwrap();
        let origins = AllowedOrigins::default();
        origins.set("mall", &[APP.to_owned()]);
        let access =
            WebAccess::new(routes, tower::util::BoxCloneSyncService::new(mesh)).with_cors(origins);
        (access, reached)
    }

    fn call(tenant: &str, origin: Option<&str>) -> http::Request<tonic::body::Body> {
        let mut request = http::Request::post("/order/v1/GetOrder")
            .header("host", "mesh.example.net")
            .header("x-mesh-tenant", tenant)
            .header("content-type", "application/json");
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request
            .body(tonic::body::Body::new(http_body_util::Full::new(
                bytes::Bytes::from_static(br#"{"orderId": "o-1"}"#),
            )))
            .unwrap()
    }

    fn allowed_origin(response: &Response<tonic::body::Body>) -> Option<&str> {
        response
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .map(|v| v.to_str().unwrap())
    }

    #[tokio::test]
    async fn a_preflight_is_answered_for_an_origin_some_tenant_allows() {
        let (access, reached) = access();
        let preflight = |origin: &str| {
            http::Request::builder()
                .method(Method::OPTIONS)
                .uri("/order/v1/GetOrder")
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "content-type, x-mesh-tenant",
                )
                .body(tonic::body::Body::empty())
                .unwrap()
        };
        let ok = access.clone().oneshot(preflight(APP)).await.unwrap();
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        assert_eq!(allowed_origin(&ok), Some(APP));
        let allowed = ok.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS]
            .to_str()
            .unwrap();
        assert!(allowed.contains("x-mesh-tenant") && allowed.contains("authorization"));
        let other = access
            .oneshot(preflight("https://evil.example"))
            .await
            .unwrap();
        assert_eq!(other.status(), StatusCode::FORBIDDEN);
        assert_eq!(allowed_origin(&other), None);
        assert_eq!(
            reached.load(Ordering::SeqCst),
            0,
            "preflights never reach the mesh"
        );
    }

    #[tokio::test]
    async fn a_call_from_another_origin_passes_only_as_a_tenant_that_allows_it() {
        let (access, reached) = access();
        let mall = access
            .clone()
            .oneshot(call("mall", Some(APP)))
            .await
            .unwrap();
        assert_eq!(mall.status(), StatusCode::NOT_FOUND, "the mesh's answer");
        assert_eq!(allowed_origin(&mall), Some(APP));
        let exposed = mall.headers()[header::ACCESS_CONTROL_EXPOSE_HEADERS]
            .to_str()
            .unwrap();
        assert!(exposed.contains("x-mesh-degraded") && exposed.contains("retry-after"));
        assert_eq!(reached.load(Ordering::SeqCst), 1);

        // paipai allows no other origin: refused here, never sent on
        let paipai = access
            .clone()
            .oneshot(call("paipai", Some(APP)))
            .await
            .unwrap();
        assert_eq!(paipai.status(), StatusCode::FORBIDDEN);
        assert_eq!(allowed_origin(&paipai), None);
        assert_eq!(reached.load(Ordering::SeqCst), 1);

        // the mesh's own pages (the same origin) and clients that are no browser pass as before
        let own = access
            .clone()
            .oneshot(call("paipai", Some("http://mesh.example.net")))
            .await
            .unwrap();
        assert_eq!(own.status(), StatusCode::NOT_FOUND);
        assert_eq!(allowed_origin(&own), None);
        let curl = access.clone().oneshot(call("paipai", None)).await.unwrap();
        assert_eq!(curl.status(), StatusCode::NOT_FOUND);
        assert_eq!(reached.load(Ordering::SeqCst), 3);

        // behind a proxy that rewrote Host, the pages are still the same origin
        let mut proxied = call("paipai", Some("https://chat.example.net"));
        proxied.headers_mut().insert(
            "x-forwarded-host",
            HeaderValue::from_static("Chat.example.net:443"),
        );
        let proxied = access.clone().oneshot(proxied).await.unwrap();
        assert_eq!(proxied.status(), StatusCode::NOT_FOUND);
        assert_eq!(reached.load(Ordering::SeqCst), 4);

        // no tenant's allowance opens the admin API (nor platforms' callbacks) to a page
        let mut admin = call("mall", Some(APP));
        *admin.uri_mut() = "/admin/v1/ListSwitches".parse().unwrap();
        let admin = access.oneshot(admin).await.unwrap();
        assert_eq!(admin.status(), StatusCode::FORBIDDEN);
        assert_eq!(reached.load(Ordering::SeqCst), 4);
    }

    /// Every header counts toward the total, not only the ones passed on to the mesh.
    #[tokio::test]
    async fn headers_past_the_total_are_refused_whole() {
        let (access, reached) = access();
        let mut stuffed = call("mall", None);
        for n in 0..40 {
            let name = http::HeaderName::try_from(format!("x-padding-{n}")).unwrap();
            stuffed
                .headers_mut()
                .insert(name, HeaderValue::from_str(&"p".repeat(1000)).unwrap());
        }
        let stuffed = access.clone().oneshot(stuffed).await.unwrap();
        assert_eq!(
            stuffed.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        assert_eq!(reached.load(Ordering::SeqCst), 0);
        // the same request with headers of a usual size passes
        access.oneshot(call("mall", None)).await.unwrap();
        assert_eq!(reached.load(Ordering::SeqCst), 1);
    }
}

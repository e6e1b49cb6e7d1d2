//! A span per HTTP/2 call, on the server or the client side, carrying the W3C trace context on
//! in the call's metadata.
//!
//! The call is recorded when its status arrives, in the trailers of a streamed answer:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use http_body_util::BodyExt;
//! use mesh_telemetry::{TraceLayer, metrics};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let service = ServiceBuilder::new()
//!     .layer(TraceLayer::server(&[]))
//!     .service_fn(|_: http::Request<()>| async {
//!         // headers first; the failure only in the trailers, after the message
//!         let mut trailers = http::HeaderMap::new();
//!         trailers.insert("grpc-status", "13".parse().unwrap());
//!         let body = http_body_util::Full::new(bytes::Bytes::from_static(b"partial"))
//!             .with_trailers(async move { Some(Ok(trailers)) });
//!         Ok::<_, std::convert::Infallible>(http::Response::new(body))
//!     });
//! let request = http::Request::builder().header("x-mesh-tenant", "docs").body(()).unwrap();
//! let response = service.oneshot(request).await.unwrap();
//! // (a path no contract serves is counted as `_OTHER`, under no tenant: it takes no credential)
//! let counted = |tally: Vec<metrics::MethodTally>| tally.into_iter().find(|t| t.method == "_OTHER");
//! assert!(counted(metrics::tally()).is_none(), "not over at its headers");
//! response.into_body().collect().await.unwrap();
//! let tally = counted(metrics::tally()).unwrap();
//! assert_eq!((tally.calls, tally.errors), (1, 1), "an INTERNAL error, seen in the trailers");
//! # }
//! ```

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use http::{HeaderMap, HeaderValue};
use mesh_contract::{ContractSpec, TraceContext, headers};
use tracing::Instrument;

use crate::{metrics, propagation};

/// Which end of a call a span stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The process answering.
    Server,
    /// The process calling.
    Client,
}

impl Side {
    /// The attribute value: `server` or `client`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Client => "client",
        }
    }
}

/// How a call ended, as spans and metrics record it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered.
    Ok,
    /// Answered by its degradation switch (`x-mesh-degraded`).
    Degraded,
    /// Refused for capacity the server lacked: a bulkhead full, a worker's stream limit
    /// (`RESOURCE_EXHAUSTED`).
    Shed,
    /// Refused because the caller went over its own quota: its tenant's rate, its terminals
    /// (`RESOURCE_EXHAUSTED` with `x-mesh-over-quota`). The caller's doing, as `refused` is:
    /// no alert counts it, so one user's flood pages nobody.
    OverQuota,
    /// Ran out of time (`DEADLINE_EXCEEDED`).
    TimedOut,
    /// Given up by the caller (`CANCELLED`, or the call dropped before its status): a
    /// terminal leaving, a caller's deadline. Not a failure of the service.
    Cancelled,
    /// Refused for the caller's own mistake: a bad argument, an order that does not exist, no
    /// or the wrong credential, a precondition not met, a method the tenant does not run. The
    /// service did its job; the error alerts leave these out, so a tenant's users cannot page
    /// the platform.
    Refused,
    /// Any other failure: the server's.
    Error,
}

impl Outcome {
    /// The attribute value: `ok`, `degraded`, `shed`, `over_quota`, `timed_out`, `cancelled`,
    /// `refused`, `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Degraded => "degraded",
            Outcome::Shed => "shed",
            Outcome::OverQuota => "over_quota",
            Outcome::TimedOut => "timed_out",
            Outcome::Cancelled => "cancelled",
            Outcome::Refused => "refused",
            Outcome::Error => "error",
        }
    }

    /// The outcome of a call that ended with gRPC status `code` (answered degraded or not: a
    /// degraded answer is the contract's fallback, whether that is an empty answer or a status
    /// such as `UNAVAILABLE`).
    pub fn of_code(code: tonic::Code, degraded: bool) -> Self {
        match code {
            _ if degraded => Outcome::Degraded,
            tonic::Code::Ok => Outcome::Ok,
            tonic::Code::ResourceExhausted => Outcome::Shed,
            tonic::Code::DeadlineExceeded => Outcome::TimedOut,
            tonic::Code::Cancelled => Outcome::Cancelled,
            tonic::Code::InvalidArgument
            | tonic::Code::NotFound
            | tonic::Code::AlreadyExists
            | tonic::Code::PermissionDenied
            | tonic::Code::FailedPrecondition
            | tonic::Code::OutOfRange
            | tonic::Code::Unimplemented
            | tonic::Code::Unauthenticated => Outcome::Refused,
            _ => Outcome::Error,
        }
    }

    /// The outcome a response's headers tell, when they carry its status (a trailers-only
    /// answer: an error, or a degraded answer); `None` when the status is still to come in the
    /// trailers.
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        let status = tonic::Status::from_header_map(headers)?;
        Some(Self::of_code(status.code(), headers.contains_key(DEGRADED)).over_quota(headers))
    }

    /// `Shed` becomes `OverQuota` when the answer says the caller went over its own quota.
    fn over_quota(self, headers: &HeaderMap) -> Self {
        match self {
            Outcome::Shed if headers.contains_key(OVER_QUOTA) => Outcome::OverQuota,
            other => other,
        }
    }
}

/// The header a degraded answer carries (the runtime's switch layer sets it).
const DEGRADED: &str = "x-mesh-degraded";
/// The header a refusal for the caller's own quota carries (rate limit, terminal quota).
const OVER_QUOTA: &str = mesh_contract::headers::OVER_QUOTA;

/// Whether a span of `side` ending with `code` is an error, as the OpenTelemetry RPC
/// conventions rule: a client's for any status but OK; a server's only for the codes that
/// say the server failed (the others are the caller's doing and leave the status unset).
pub fn is_error(side: Side, code: tonic::Code) -> bool {
    use tonic::Code::*;
    match side {
        Side::Client => code != Ok,
        Side::Server => matches!(
            code,
            Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
        ),
    }
}

/// At most this many bytes of a status message go on a span.
const MAX_STATUS_MESSAGE: usize = 256;

/// `text` cut to [`MAX_STATUS_MESSAGE`] bytes, on a character boundary.
fn bounded(text: &str) -> &str {
    let mut end = text.len().min(MAX_STATUS_MESSAGE);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The gRPC status in `headers` (a trailers-only answer's headers, or trailers), if any. An OK
/// is read from its code alone: `Status::from_header_map` copies the whole map to read the
/// rest, which only a failure has.
fn status_in(headers: &http::HeaderMap) -> Option<tonic::Status> {
    match headers.get("grpc-status") {
        None => None,
        Some(code) if code.as_bytes() == b"0" => Some(tonic::Status::new(tonic::Code::Ok, "")),
        Some(_) => tonic::Status::from_header_map(headers),
    }
}

/// The status code's name, as `error.type` carries it (`UNAVAILABLE`).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Traces every call through it; see [`Traced`].
#[derive(Clone, Debug)]
pub struct TraceLayer {
    side: Side,
    catalogue: &'static [&'static ContractSpec],
    /// The server a client calls (`server.address`, `server.port`), when known.
    server: Option<(Arc<str>, Option<u16>)>,
}

impl TraceLayer {
    /// For a server: the caller's span (from `traceparent`) is the parent, and the handler
    /// sees this span as its own parent in the request's trace context.
    pub fn server(catalogue: &'static [&'static ContractSpec]) -> Self {
        Self {
            side: Side::Server,
            catalogue,
            server: None,
        }
    }

    /// For a client channel (wrap it before handing it to a generated caller): the trace the
    /// request context carries is the parent, and the server sees this span as its parent.
    pub fn client(catalogue: &'static [&'static ContractSpec]) -> Self {
        Self {
            side: Side::Client,
            catalogue,
            server: None,
        }
    }

    /// Names the server a client layer calls (its `server.address` and `server.port`): the
    /// requests a channel sends carry no authority yet.
    pub fn to_server(mut self, uri: &http::Uri) -> Self {
        self.server = uri.host().map(|host| (Arc::from(host), uri.port_u16()));
        self
    }
}

impl<S> tower::Layer<S> for TraceLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Traced {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service whose calls each open a span (`mesh::rpc`) named `package.Service/Method`, with
/// the OpenTelemetry RPC attributes (`rpc.system`, `rpc.service`, `rpc.method`,
/// `rpc.grpc.status_code`, `error.type`, `server.*`, `network.peer.*`) beside the mesh's own
/// (`tenant`, `service`, `contract.version`, `method`, `outcome`), and count in [`metrics`].
///
/// The call is recorded when it really ends: at the status in the response's trailers (or in
/// its headers, for a trailers-only answer), so a stream is timed to its last message and a
/// stream failing after its headers counts as failed; a call dropped before its status counts
/// as cancelled.
#[derive(Clone, Debug)]
pub struct Traced<S> {
    inner: S,
    layer: TraceLayer,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn set_trace(headers: &mut HeaderMap, trace: &TraceContext) {
    for (name, value) in [
        (headers::TRACEPARENT, &trace.traceparent),
        (headers::TRACESTATE, &trace.tracestate),
    ] {
        match value.as_deref().map(HeaderValue::from_str) {
            Some(Ok(value)) => {
                headers.insert(name, value);
            }
            _ => {
                headers.remove(name);
            }
        }
    }
}

/// One call being traced, recorded once when it ends (or when dropped unfinished).
struct Call {
    span: tracing::Span,
    side: Side,
    tenant: String,
    names: Names,
    started: Instant,
    degraded: bool,
    /// The answer said the caller went over its own quota.
    over_quota: bool,
    done: bool,
}

impl Call {
    /// Records the end of the call with `status` (`None`: it ended without one).
    fn finish(&mut self, status: Option<tonic::Status>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let status = status
            .unwrap_or_else(|| tonic::Status::unknown("the response ended without a gRPC status"));
        let code = status.code();
        let outcome = match Outcome::of_code(code, self.degraded) {
            Outcome::Shed if self.over_quota => Outcome::OverQuota,
            other => other,
        };
        let span = &self.span;
        // the span ends now: its end is the last time it was left, which for a stream is long
        // after the handler returned its headers
        let _now = span.enter();
        span.record("outcome", outcome.as_str());
        span.record("rpc.grpc.status_code", code as i64);
        // a server whose caller left (a terminal detaching) did not fail: no error type
        let failed = code != tonic::Code::Ok
            && !(self.side == Side::Server && code == tonic::Code::Cancelled);
        if failed {
            span.record("error.type", code_name(code));
        }
        // a status message may quote what the caller sent (a tenant id, say): bounded
        let message = bounded(status.message());
        if code != tonic::Code::Ok && !message.is_empty() {
            span.record("status_message", message);
        }
        // a degraded answer is the contract's fallback, not the server failing
        if is_error(self.side, code) && !(self.degraded && self.side == Side::Server) {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", message);
        }
        // a tenant nobody vouched for is not a metric series (anyone could make up tenants by
        // the thousand): not when its credential was refused, nor on a path that takes none
        // (health, reflection, a path no contract serves)
        let tenant = if code == tonic::Code::Unauthenticated || self.names.service == "_OTHER" {
            ""
        } else {
            self.tenant.as_str()
        };
        let names = self.names;
        metrics::call(&metrics::Call {
            side: self.side,
            tenant,
            service: names.service,
            rpc_service: names.rpc_service,
            version: names.version,
            method: names.method,
            streaming: names.streaming,
            code,
            outcome,
            took: self.started.elapsed(),
        });
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.done {
            self.finish(Some(tonic::Status::cancelled(
                "the call was dropped before it ended",
            )));
        }
    }
}

/// What a call is called: by the mesh (`message`, `Send`) and by the conventions
/// (`message.v1.Message`).
#[derive(Clone, Copy, Debug)]
struct Names {
    service: &'static str,
    rpc_service: &'static str,
    version: &'static str,
    method: &'static str,
    streaming: bool,
}

impl Names {
    /// The names of the call at `path`; `unknown` for a path no contract serves.
    fn of(catalogue: &[&'static ContractSpec], path: &str) -> Self {
        mesh_contract::spec::method_at(catalogue, path)
            .map(|(c, m)| Names {
                service: c.name,
                rpc_service: c.service,
                version: c.version,
                method: m.name,
                streaming: m.server_streaming || m.client_streaming,
            })
            // the conventions' name for a method outside the known set, which bounds the series
            .unwrap_or(Names {
                service: "_OTHER",
                rpc_service: "_OTHER",
                version: "",
                method: "_OTHER",
                streaming: false,
            })
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call when the status arrives in its trailers (or the
    /// body ends, fails, or is dropped).
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        call: Option<Box<Call>>,
    }
}

impl<B> http_body::Body for TracedBody<B>
where
    B: http_body::Body,
    B::Error: std::fmt::Display,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(call) = this.call.as_mut() {
            match &frame {
                Some(Ok(frame)) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        call.finish(status_in(trailers));
                    }
                }
                Some(Err(err)) => call.finish(Some(tonic::Status::unknown(format!(
                    "the response body failed: {err}"
                )))),
                None => call.finish(None),
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for Traced<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
    RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    RB::Error: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    // Boxed on purpose: the future records the call's end inside its span (an async block
    // instrumented with it) and wraps the body; the span and its attributes already allocate
    // several times per call, one box more is not where this layer's cost is.
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let names = Names::of(self.layer.catalogue, request.uri().path());
        // only a well-formed tenant id is recorded (bounded in length and alphabet); who vouched
        // for it is known at the end (see `Call::finish`)
        let tenant = header(request.headers(), headers::TENANT)
            .filter(|t| mesh_contract::TenantId::new(t).is_ok())
            .unwrap_or_default()
            .to_owned();
        let side = self.layer.side;
        let span = tracing::info_span!(
            target: "mesh::rpc",
            "rpc",
            otel.name = %format_args!("{}/{}", names.rpc_service, names.method),
            otel.kind = side.as_str(),
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = names.rpc_service,
            rpc.method = names.method,
            rpc.grpc.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            server.address = tracing::field::Empty,
            server.port = tracing::field::Empty,
            network.peer.address = tracing::field::Empty,
            network.peer.port = tracing::field::Empty,
            network.transport = tracing::field::Empty,
            tenant = %tenant,
            service = names.service,
            contract.version = names.version,
            method = names.method,
            outcome = tracing::field::Empty,
            status_message = tracing::field::Empty,
        );
        let (host, port) = match (&self.layer.server, request.uri().authority()) {
            (Some((host, port)), _) => (Some(&**host), *port),
            (None, Some(authority)) => (Some(authority.host()), authority.port_u16()),
            (None, None) => (None, None),
        };
        if let Some(host) = host {
            span.record("server.address", host);
        }
        if let Some(port) = port {
            span.record("server.port", i64::from(port));
        }
        if let Some(peer) = request
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|info| info.remote_addr())
        {
            span.record("network.peer.address", tracing::field::display(peer.ip()));
            span.record("network.peer.port", i64::from(peer.port()));
        }
        // a call this process made to itself (`mesh_stack::OwnServer`): no socket, no peer
        if request
            .extensions()
            .get::<mesh_contract::InProcess>()
            .is_some()
        {
            span.record("network.transport", "inproc");
        }
        let trace = TraceContext {
            traceparent: header(request.headers(), headers::TRACEPARENT).map(str::to_owned),
            tracestate: header(request.headers(), headers::TRACESTATE).map(str::to_owned),
        };
        // the request's own context decides the parent: the caller's span on a server, the
        // business request's on a client; whoever receives the request sees this span
        set_trace(request.headers_mut(), &propagation::carry(&trace, &span));
        let mut call = Box::new(Call {
            span: span.clone(),
            side,
            tenant,
            names,
            started: Instant::now(),
            degraded: false,
            over_quota: false,
            done: false,
        });
        let future = self.inner.call(request);
        Box::pin(async move {
            match future.instrument(span).await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    call.degraded = parts.headers.contains_key(DEGRADED);
                    call.over_quota = parts.headers.contains_key(OVER_QUOTA);
                    // a trailers-only answer: its status is in the headers, its body empty
                    if let Some(status) = status_in(&parts.headers) {
                        call.finish(Some(status));
                    }
                    let body = TracedBody {
                        inner: body,
                        call: (!call.done).then_some(call),
                    };
                    Ok(http::Response::from_parts(
                        parts,
                        tonic::body::Body::new(body),
                    ))
                }
                Err(err) => {
                    call.finish(Some(tonic::Status::unavailable(format!(
                        "the call failed before an answer: {err}"
                    ))));
                    Err(err)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn the_outcome_follows_the_grpc_status_and_the_degraded_mark() {
        for (pairs, outcome) in [
            (&[][..], None),
            (&[("x-mesh-degraded", "recommend@mall")][..], None),
            (&[("grpc-status", "0")][..], Some(Outcome::Ok)),
            (
                &[("grpc-status", "0"), ("x-mesh-degraded", "recommend@mall")][..],
                Some(Outcome::Degraded),
            ),
            (&[("grpc-status", "8")][..], Some(Outcome::Shed)),
            // the caller's own quota: not capacity the server lacked
            (
                &[("grpc-status", "8"), ("x-mesh-over-quota", "rate")][..],
                Some(Outcome::OverQuota),
            ),
            (&[("grpc-status", "4")][..], Some(Outcome::TimedOut)),
            (&[("grpc-status", "1")][..], Some(Outcome::Cancelled)),
            // NOT_FOUND, UNAUTHENTICATED: the caller's mistake, refused
            (&[("grpc-status", "5")][..], Some(Outcome::Refused)),
            (&[("grpc-status", "16")][..], Some(Outcome::Refused)),
            // INTERNAL, UNAVAILABLE: the server's
            (&[("grpc-status", "13")][..], Some(Outcome::Error)),
            (&[("grpc-status", "14")][..], Some(Outcome::Error)),
            // a switched-off method whose degraded answer is a status
            (
                &[("grpc-status", "14"), ("x-mesh-degraded", "message@mall")][..],
                Some(Outcome::Degraded),
            ),
        ] {
            assert_eq!(Outcome::of(&headers(pairs)), outcome, "{pairs:?}");
        }
    }

    #[test]
    fn server_spans_leave_the_callers_mistakes_unset_client_spans_do_not() {
        use tonic::Code::*;
        for code in [
            InvalidArgument,
            Unauthenticated,
            PermissionDenied,
            NotFound,
            Cancelled,
        ] {
            assert!(!is_error(Side::Server, code), "{code:?}");
            assert!(is_error(Side::Client, code), "{code:?}");
        }
        for code in [
            Unknown,
            DeadlineExceeded,
            Unimplemented,
            Internal,
            Unavailable,
            DataLoss,
        ] {
            assert!(is_error(Side::Server, code), "{code:?}");
        }
        assert!(!is_error(Side::Client, Ok));
        assert_eq!(code_name(ResourceExhausted), "RESOURCE_EXHAUSTED");
    }

    #[test]
    fn a_status_message_on_a_span_is_bounded() {
        let long = "é".repeat(1000);
        assert_eq!(bounded(&long).len(), MAX_STATUS_MESSAGE);
        assert_eq!(bounded("short"), "short");
    }

    #[test]
    fn without_telemetry_the_callers_trace_context_passes_through() {
        let trace = TraceContext {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: Some("vendor=1".into()),
        };
        let span = tracing::info_span!("not recorded");
        assert_eq!(propagation::carry(&trace, &span), trace);
    }
}

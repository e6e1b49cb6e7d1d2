//! A span per HTTP/2 call, on the server or the client side, carrying the W3C trace context on
//! in the call's metadata.

use std::{
    future::Future,
    pin::Pin,
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
    /// Refused for capacity: rate limit or bulkhead (`RESOURCE_EXHAUSTED`).
    Shed,
    /// Ran out of time (`DEADLINE_EXCEEDED`).
    TimedOut,
    /// Any other failure.
    Error,
}

impl Outcome {
    /// The attribute value: `ok`, `degraded`, `shed`, `timed_out`, `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Degraded => "degraded",
            Outcome::Shed => "shed",
            Outcome::TimedOut => "timed_out",
            Outcome::Error => "error",
        }
    }

    /// The outcome a unary response's headers tell (an error is a trailers-only response, so
    /// its `grpc-status` is in the headers).
    pub fn of(headers: &HeaderMap) -> Self {
        if headers.contains_key("x-mesh-degraded") {
            return Outcome::Degraded;
        }
        match headers.get("grpc-status").map(HeaderValue::as_bytes) {
            None | Some(b"0") => Outcome::Ok,
            Some(b"8") => Outcome::Shed,
            Some(b"4") => Outcome::TimedOut,
            Some(_) => Outcome::Error,
        }
    }
}

/// Traces every call through it; see [`Traced`].
#[derive(Clone, Copy, Debug)]
pub struct TraceLayer {
    side: Side,
    catalogue: &'static [&'static ContractSpec],
}

impl TraceLayer {
    /// For a server: the caller's span (from `traceparent`) is the parent, and the handler
    /// sees this span as its own parent in the request's trace context.
    pub fn server(catalogue: &'static [&'static ContractSpec]) -> Self {
        Self {
            side: Side::Server,
            catalogue,
        }
    }

    /// For a client channel (wrap it before handing it to a generated caller): the trace the
    /// request context carries is the parent, and the server sees this span as its parent.
    pub fn client(catalogue: &'static [&'static ContractSpec]) -> Self {
        Self {
            side: Side::Client,
            catalogue,
        }
    }
}

impl<S> tower::Layer<S> for TraceLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Traced {
            inner,
            layer: *self,
        }
    }
}

/// A service whose calls each open a span (`mesh::rpc`) with the tenant, service, contract
/// version, method and outcome, and count in [`metrics`].
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

impl<S, B, RB> tower::Service<http::Request<B>> for Traced<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let (service, version, method) = self
            .layer
            .catalogue
            .iter()
            .find_map(|c| c.method_by_path(path).map(|m| (c.name, c.version, m.name)))
            .unwrap_or(("unknown", "", "unknown"));
        let tenant = header(request.headers(), headers::TENANT)
            .unwrap_or_default()
            .to_owned();
        let side = self.layer.side;
        let span = tracing::info_span!(
            target: "mesh::rpc",
            "rpc",
            otel.name = %format!("{service}.{method}"),
            otel.kind = side.as_str(),
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            tenant = %tenant,
            service,
            contract.version = version,
            method,
            outcome = tracing::field::Empty,
        );
        let trace = TraceContext {
            traceparent: header(request.headers(), headers::TRACEPARENT).map(str::to_owned),
            tracestate: header(request.headers(), headers::TRACESTATE).map(str::to_owned),
        };
        // the request's own context decides the parent: the caller's span on a server, the
        // business request's on a client; whoever receives the request sees this span
        set_trace(request.headers_mut(), &propagation::carry(&trace, &span));
        let started = Instant::now();
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = call.instrument(span.clone()).await;
            let outcome = match &result {
                Ok(response) => Outcome::of(response.headers()),
                Err(_) => Outcome::Error,
            };
            span.record("outcome", outcome.as_str());
            if matches!(outcome, Outcome::Error | Outcome::TimedOut) {
                span.record("otel.status_code", "ERROR");
            }
            metrics::call(side, &tenant, service, method, outcome, started.elapsed());
            result
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
            (&[][..], Outcome::Ok),
            (&[("grpc-status", "0")][..], Outcome::Ok),
            (
                &[("x-mesh-degraded", "recommend@mall")][..],
                Outcome::Degraded,
            ),
            (&[("grpc-status", "8")][..], Outcome::Shed),
            (&[("grpc-status", "4")][..], Outcome::TimedOut),
            (&[("grpc-status", "5")][..], Outcome::Error),
            (&[("grpc-status", "16")][..], Outcome::Error),
        ] {
            assert_eq!(Outcome::of(&headers(pairs)), outcome, "{pairs:?}");
        }
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

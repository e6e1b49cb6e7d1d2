//! The contract's deadline, enforced where the call is served.
//! The contract's deadline, enforced where the call is served.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::time::Duration;
//!
//! use mesh_stack::layers::{Catalogue, DeadlineLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let service = ServiceBuilder::new()
//!     .layer(DeadlineLayer::new(Catalogue(&[])))
//!     .service_fn(|_: http::Request<()>| async {
//!         tokio::time::sleep(Duration::from_secs(60)).await; // a stuck handler
//!         Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
//!     });
//! // the caller gives it 20 ms (a contract's own deadline applies the same way)
//! let request = http::Request::builder().header("grpc-timeout", "20m").body(()).unwrap();
//! let answer = service.oneshot(request).await.unwrap();
//! assert_eq!(answer.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED, the server freed");
//! # }
//! ```

use std::{
    task::{Context, Poll},
    time::Duration,
};

use super::{Catalogue, GrpcResponse};

/// Tower layer cutting a call off at its contract deadline (or the caller's, if shorter) with
/// `DEADLINE_EXCEEDED`, freeing the server instead of letting a stuck call hold it.
#[derive(Clone, Copy, Debug)]
pub struct DeadlineLayer {
    catalogue: Catalogue,
}

impl DeadlineLayer {
    /// Deadlines from the contracts of `catalogue`.
    pub fn new(catalogue: Catalogue) -> Self {
        Self { catalogue }
    }
}

impl<S> tower_layer::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            catalogue: self.catalogue,
        }
    }
}

/// The service [`DeadlineLayer`] produces.
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    catalogue: Catalogue,
}

/// The caller's `grpc-timeout`, if it sent a valid one (`300m`, `2S`, `100000u` ...).
pub fn caller_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    mesh_contract::headers::grpc_timeout(headers.get("grpc-timeout")?.to_str().ok()?)
}

pin_project_lite::pin_project! {
    /// The response future of [`Deadline`]: the call, cut off at its deadline (named, not
    /// boxed: it is on every call's path).
    pub struct DeadlineFuture<F> {
        #[pin]
        call: tokio::time::Timeout<F>,
        // the method's name and the limit, for the answer when it runs out
        method: &'static str,
        limit: Duration,
    }
}

impl<F, E> std::future::Future for DeadlineFuture<F>
where
    F: std::future::Future<Output = Result<GrpcResponse, E>>,
{
    type Output = Result<GrpcResponse, E>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(match std::task::ready!(this.call.poll(cx)) {
            Ok(response) => response,
            Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                "{} did not answer within its deadline of {:?}",
                this.method, this.limit
            ))
            .into_http()),
        })
    }
}

/// How much before the caller's own deadline this layer answers (at most a twentieth of it).
const CALLER_DEADLINE_MARGIN: Duration = Duration::from_millis(20);

/// Without a contract deadline or a caller's: an hour, the longest anything here may wait
/// (a timer that never fires costs next to nothing, and keeps the future one type).
const NO_DEADLINE: Duration = Duration::from_secs(3600);

impl<S, B> tower_service::Service<http::Request<B>> for Deadline<S>
where
    S: tower_service::Service<http::Request<B>, Response = GrpcResponse>,
{
    type Response = GrpcResponse;
    type Error = S::Error;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = self.catalogue.method(request.uri().path()).map(|(_, m)| m);
        let caller = caller_timeout(request.headers());
        let limit = match (method.map(|m| m.timeout), caller) {
            (Some(contract), Some(caller)) => Some(contract.min(caller)),
            (contract, caller) => contract.or(caller),
        };
        let limit = limit.unwrap_or(NO_DEADLINE);
        // tonic's server runs a timer of its own on the caller's grpc-timeout, started before
        // this layer, and answers CANCELLED ("Timeout expired") when it wins: answering a
        // little earlier makes a deadline that ran out read DEADLINE_EXCEEDED, as gRPC says
        let timer = if caller.is_some_and(|caller| caller <= limit) {
            limit.saturating_sub(CALLER_DEADLINE_MARGIN.min(limit / 20))
        } else {
            limit
        };
        DeadlineFuture {
            call: tokio::time::timeout(timer, self.inner.call(request)),
            method: method.map_or("the call", |m| m.name),
            limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_is_parsed() {
        let mut headers = http::HeaderMap::new();
        for (value, expected) in [
            ("300m", Duration::from_millis(300)),
            ("2S", Duration::from_secs(2)),
            ("100000u", Duration::from_millis(100)),
        ] {
            headers.insert("grpc-timeout", value.parse().unwrap());
            assert_eq!(caller_timeout(&headers), Some(expected), "{value}");
        }
        headers.insert("grpc-timeout", "soon".parse().unwrap());
        assert_eq!(caller_timeout(&headers), None);
    }
}

//! Cached degraded answers: for methods whose contract says `degraded { cached { max_age_ms } }`,
//! the last good answer per (tenant, caller, method, request) is kept, and served while the
//! method is switched off if it is young enough. The caller is part of the key: an answer a
//! service gave one user (their order) is never served to another, nor to a backend. Placed in front of the [`SwitchBoard`] layer, which
//! answers the empty response when there is no such answer.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::time::SystemTime;
//!
//! use http_body_util::BodyExt;
//! use mesh_contract::{RequestContext, TenantId};
//! use mesh_stack::layers::{
//!     AnswerCache, CachedAnswersLayer, Catalogue, Switch, SwitchBoard, SwitchTarget,
//! };
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let board = SwitchBoard::new(Catalogue(mesh_api::CONTRACTS));
//! let service = ServiceBuilder::new()
//!     .layer(CachedAnswersLayer::new(AnswerCache::new(100), board.clone(), Catalogue(mesh_api::CONTRACTS)))
//!     .service_fn(|_: http::Request<tonic::body::Body>| async {
//!         // the order service's answer: one message frame, then OK in the trailers
//!         let mut trailers = http::HeaderMap::new();
//!         trailers.insert("grpc-status", "0".parse().unwrap());
//!         let body = http_body_util::Full::new(bytes::Bytes::from_static(b"\0\0\0\0\x02hi"))
//!             .with_trailers(async move { Some(Ok(trailers)) });
//!         Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::new(body)))
//!     });
//! let call = || {
//!     let mut request = http::Request::builder()
//!         .uri("/order.v1.Order/GetOrder") // `degraded { cached { max_age_ms: 60000 } }`
//!         .body(tonic::body::Body::empty())
//!         .unwrap();
//!     request.extensions_mut().insert(RequestContext::new(TenantId::new("mall").unwrap()));
//!     request
//! };
//! let fresh = service.clone().oneshot(call()).await.unwrap();
//! let answer = fresh.into_body().collect().await.unwrap().to_bytes();
//!
//! board.turn_off(Switch {
//!     tenant: TenantId::new("mall").ok(),
//!     target: SwitchTarget::Service("order".into()),
//!     reason: "database failover".into(),
//!     changed_by: "ops".into(),
//!     changed_at: SystemTime::now(),
//! });
//! let cached = service.oneshot(call()).await.unwrap();
//! assert_eq!(cached.headers()["x-mesh-degraded"], "cached@mall");
//! assert_eq!(cached.into_body().collect().await.unwrap().to_bytes(), answer);
//! # }
//! ```

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use futures::future::Either;
use http_body::Frame;
use http_body_util::BodyExt;
use mesh_contract::{Caller, DegradedAnswer, RequestContext, TenantId, bus::BoxFuture};

use super::{Catalogue, GrpcResponse, SwitchBoard, switch::DEGRADED_HEADER, take_ready};

type Key = (TenantId, Caller, &'static str, Bytes);

/// The last good answers, bounded in entries: the least recently used is dropped first, in
/// constant time (an LRU list, not a scan of every entry under the lock).
#[derive(Clone, Debug)]
pub struct AnswerCache {
    entries: Arc<Mutex<lru::LruCache<Key, (Instant, Bytes)>>>,
}

impl AnswerCache {
    /// A cache of at most `capacity` answers.
    pub fn new(capacity: usize) -> Self {
        let capacity = std::num::NonZeroUsize::new(capacity).unwrap_or(std::num::NonZeroUsize::MIN);
        Self {
            entries: Arc::new(Mutex::new(lru::LruCache::new(capacity))),
        }
    }

    fn put(&self, key: Key, answer: Bytes) {
        self.entries
            .lock()
            .expect("lock")
            .put(key, (Instant::now(), answer));
    }

    fn get(&self, key: &Key, max_age: std::time::Duration) -> Option<Bytes> {
        let mut entries = self.entries.lock().expect("lock");
        // an answer past its age is dropped, not kept as recently used: stale keys read often
        // never push fresh answers out
        if entries
            .peek(key)
            .is_some_and(|(at, _)| at.elapsed() > max_age)
        {
            entries.pop(key);
            return None;
        }
        entries.get(key).map(|(_, answer)| answer.clone())
    }

    /// Answers kept.
    pub fn len(&self) -> usize {
        self.entries.lock().expect("lock").len()
    }

    /// Whether no answer is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Tower layer keeping and serving cached degraded answers.
#[derive(Clone, Debug)]
pub struct CachedAnswersLayer {
    cache: AnswerCache,
    board: SwitchBoard,
    catalogue: Catalogue,
}

impl CachedAnswersLayer {
    /// Keeps answers in `cache`, serves them while `board` switches their method off.
    pub fn new(cache: AnswerCache, board: SwitchBoard, catalogue: Catalogue) -> Self {
        Self {
            cache,
            board,
            catalogue,
        }
    }
}

impl<S> tower_layer::Layer<S> for CachedAnswersLayer {
    type Service = CachedAnswers<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CachedAnswers {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`CachedAnswersLayer`] produces.
#[derive(Clone, Debug)]
pub struct CachedAnswers<S> {
    inner: S,
    layer: CachedAnswersLayer,
}

/// A gRPC `OK` response carrying `data` (the message frames as the service sent them).
fn response_with(data: Bytes, switch: &str) -> GrpcResponse {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = vec![
        Ok::<_, Infallible>(Frame::data(data)),
        Ok(Frame::trailers(trailers)),
    ];
    let mut response = http::Response::new(tonic::body::Body::new(
        http_body_util::StreamBody::new(futures::stream::iter(frames)),
    ));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    if let Ok(value) = http::HeaderValue::from_str(switch) {
        headers.insert(DEGRADED_HEADER, value);
    }
    response
}

fn grpc_ok(headers: Option<&http::HeaderMap>) -> bool {
    headers
        .and_then(|h| h.get("grpc-status"))
        .is_some_and(|status| status == "0")
}

impl<S, B> tower_service::Service<http::Request<B>> for CachedAnswers<S>
where
    S: tower_service::Service<http::Request<tonic::body::Body>, Response = GrpcResponse>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = GrpcResponse;
    type Error = S::Error;
    // The methods without a cached answer (most) pass straight through, unboxed; one whose
    // degraded answer is its last good one has its answer's body read and copied (an async
    // block over its frames, boxed on purpose: it costs more than the box).
    type Future = Either<S::Future, BoxFuture<'static, Result<GrpcResponse, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // who is asking is copied only for a method with a cached answer
        let cached = match self.layer.catalogue.method(request.uri().path()) {
            Some((spec, method)) if !method.client_streaming && !method.server_streaming => {
                match method.degraded {
                    DegradedAnswer::Cached { max_age } => request
                        .extensions()
                        .get::<RequestContext>()
                        .map(|c| (spec, method, c.tenant.clone(), c.caller.clone(), max_age)),
                    _ => None,
                }
            }
            _ => None,
        };
        let Some((spec, method, tenant, caller, max_age)) = cached else {
            // the instance polled ready is the one called, right here: no clone needed
            return Either::Left(self.inner.call(request.map(tonic::body::Body::new)));
        };
        let mut inner = take_ready(&mut self.inner);
        let layer = self.layer.clone();
        Either::Right(Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(err) => {
                    let err: Box<dyn std::error::Error + Send + Sync> = err.into();
                    return Ok(tonic::Status::invalid_argument(format!(
                        "reading the request: {err}"
                    ))
                    .into_http());
                }
            };
            let key = (tenant.clone(), caller, method.path, bytes.clone());
            if layer.board.switched_off(&tenant, spec, method).is_some()
                && let Some(answer) = layer.cache.get(&key, max_age)
            {
                return Ok(response_with(answer, &format!("cached@{tenant}")));
            }
            let request = http::Request::from_parts(
                parts,
                tonic::body::Body::new(http_body_util::Full::new(bytes)),
            );
            let response = inner.call(request).await?;
            // A trailers-only answer (an error: `grpc-status` in the headers) passes untouched;
            // re-emitted as headers and an empty DATA frame it is refused by grpc-core.
            if response.headers().contains_key("grpc-status") {
                return Ok(response);
            }
            let (parts, body) = response.into_parts();
            let Ok(collected) = body.collect().await else {
                return Ok(
                    tonic::Status::unavailable("the service's answer was cut off").into_http(),
                );
            };
            let trailers = collected.trailers().cloned();
            let data = collected.to_bytes();
            if grpc_ok(trailers.as_ref()) && !parts.headers.contains_key(DEGRADED_HEADER) {
                layer.cache.put(key, data.clone());
            }
            let mut frames = Vec::with_capacity(2);
            if !data.is_empty() {
                frames.push(Ok::<_, Infallible>(Frame::data(data)));
            }
            if let Some(trailers) = trailers {
                frames.push(Ok(Frame::trailers(trailers)));
            }
            let body = tonic::body::Body::new(http_body_util::StreamBody::new(
                futures::stream::iter(frames),
            ));
            Ok(http::Response::from_parts(parts, body))
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn answers_expire_and_the_oldest_go_first() {
        let cache = AnswerCache::new(2);
        let key = |n: u8| {
            (
                TenantId::new("mall").unwrap(),
                Caller::Backend,
                "/order.v2.Order/GetOrder",
                Bytes::from(vec![n]),
            )
        };
        cache.put(key(1), Bytes::from_static(b"one"));
        assert_eq!(
            cache.get(&key(1), Duration::from_secs(60)),
            Some(Bytes::from_static(b"one"))
        );
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            cache.get(&key(1), Duration::from_millis(1)),
            None,
            "too old"
        );
        cache.put(key(2), Bytes::from_static(b"two"));
        cache.put(key(3), Bytes::from_static(b"three"));
        assert_eq!(cache.len(), 2);
        assert_eq!(
            cache.get(&key(1), Duration::from_secs(60)),
            None,
            "least recently used dropped at capacity"
        );
    }
}

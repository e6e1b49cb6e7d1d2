//! The service: HTTP/JSON in, the same call as gRPC through the mesh's own stack, JSON out.

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use mesh_contract::{ContractSpec, bus::BoxFuture, headers};
use prost::Message as _;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};
use tonic::{Code, Status};
use tower::ServiceExt;

use crate::{
    Route, Routes,
    grpc::{Deframer, frame},
    pages,
    status::{error_body, http_status},
};

/// What a call is forwarded to: the mesh's gRPC stack, as one service (the front door's stack
/// on a `mesh up` node, a lone worker's inbound stack, or the admin API's routes).
pub type Upstream = tower::util::BoxCloneSyncService<
    Request<tonic::body::Body>,
    Response<tonic::body::Body>,
    Infallible,
>;

/// The response header naming the switch that answered a degraded call (as on gRPC).
pub const DEGRADED_HEADER: &str = "x-mesh-degraded";

/// Request header giving the call's deadline in milliseconds (`grpc-timeout` is taken too);
/// without one, the contract's timeout applies.
pub const TIMEOUT_HEADER: &str = "x-mesh-timeout-ms";

/// How long a request body may take to arrive in full.
const BODY_WITHIN: Duration = Duration::from_secs(10);

/// The longest header value a call carries on (a request id, a trace context, a token); the
/// mesh's own hop refuses longer header blocks.
const MAX_HEADER_BYTES: usize = 4096;

/// How long past a contract's timeout this access waits for the mesh's own answer (a degraded
/// one, the worker's DEADLINE_EXCEEDED) before it answers DEADLINE_EXCEEDED itself.
const DEADLINE_GRACE: Duration = Duration::from_millis(100);

/// How often an idle server-sent event stream says it is alive (a comment line), so proxies
/// and the browser do not take a quiet terminal for a dead connection.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The request headers a call carries on to the mesh: who calls (tenant, credential or user
/// token), its request id and trace context.
const FORWARDED: [&str; 6] = [
    headers::TENANT,
    headers::TOKEN,
    headers::AUTHORIZATION,
    headers::REQUEST_ID,
    headers::TRACEPARENT,
    headers::TRACESTATE,
];

/// The browsers' access as a tower service (see the [crate] documentation).
#[derive(Clone)]
pub struct WebAccess {
    routes: Arc<Routes>,
    calls: Upstream,
    /// The admin API's service and its contract (`admin.v1.Admin`), when this node serves it.
    admin: Option<(&'static str, Upstream)>,
    max_body: usize,
}

impl std::fmt::Debug for WebAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebAccess")
            .field("routes", &self.routes.iter().count())
            .field("admin", &self.admin.as_ref().map(|(name, _)| name))
            .field("max_body", &self.max_body)
            .finish()
    }
}

impl WebAccess {
    /// Serves `routes`, forwarding every call to `calls`.
    pub fn new(routes: Routes, calls: Upstream) -> Self {
        Self {
            routes: Arc::new(routes),
            calls,
            admin: None,
            max_body: 1 << 20,
        }
    }

    /// Forwards the calls of `contract` (the admin API, whose routes must be in the table) to
    /// `service` instead.
    pub fn with_admin(mut self, contract: &'static ContractSpec, service: Upstream) -> Self {
        self.admin = Some((contract.service, service));
        self
    }

    /// Refuses request bodies larger than `bytes` (413).
    pub fn with_max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    fn upstream(&self, route: &Route) -> Upstream {
        self.upstream_of(route.contract.service)
    }

    /// Where calls of the service named `service` (`message.v1.Message`) go.
    fn upstream_of(&self, service: &str) -> Upstream {
        match &self.admin {
            Some((admin_service, admin)) if *admin_service == service => admin.clone(),
            _ => self.calls.clone(),
        }
    }

    /// A gRPC-Web call (a browser's gRPC client, grpc-web or Connect's gRPC-Web transport):
    /// translated by tonic-web to the gRPC call it carries, at its gRPC path, through the same
    /// stack as every other call.
    async fn grpc_web<B>(self, request: Request<B>) -> Response<tonic::body::Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        use tower::Layer;
        // the calls the JSON access serves, at their gRPC paths: never the mesh's internal
        // ones, whatever stands behind this access (a lone worker has no front door to refuse
        // them)
        let path = request.uri().path();
        if !self.routes.iter().any(|r| r.method.path == path) {
            return error(
                StatusCode::NOT_FOUND,
                Code::Unimplemented,
                &format!("no call at {path} is served to browsers"),
            );
        }
        if let Some(name) = oversized_header(request.headers()) {
            return error(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                Code::InvalidArgument,
                &format!("header {name} is longer than {MAX_HEADER_BYTES} bytes"),
            );
        }
        let service = request
            .uri()
            .path()
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let translated = tonic_web::GrpcWebLayer::new().layer(self.upstream_of(&service));
        let request = request.map(|body| {
            tonic::body::Body::new(Limited::new(body, self.max_body).map_err(|err| {
                Status::resource_exhausted(format!("the body is too large or broken: {err}"))
            }))
        });
        match translated.oneshot(request).await {
            Ok(response) => response.map(tonic::body::Body::new),
            Err(err) => error(
                StatusCode::BAD_REQUEST,
                Code::InvalidArgument,
                &format!("not a gRPC-Web call: {err}"),
            ),
        }
    }
}

impl<B> tower_service::Service<Request<B>> for WebAccess
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let access = self.clone();
        Box::pin(async move { Ok(access.answer(request).await) })
    }
}

impl WebAccess {
    async fn answer<B>(self, request: Request<B>) -> Response<tonic::body::Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = request.uri().path().to_owned();
        if is_grpc_web(request.headers()) {
            return self.grpc_web(request).await;
        }
        let Some(route) = self.routes.get(&path).cloned() else {
            return match (request.method(), path.as_str()) {
                (&Method::GET | &Method::HEAD, "/routes") => self.route_list(),
                (_, "/routes") => {
                    let mut response = error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        Code::Unimplemented,
                        "/routes is read with GET",
                    );
                    response
                        .headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static("GET"));
                    response
                }
                (&Method::GET | &Method::HEAD, _) => match pages::page(&path)
                    // the console only where the admin API is served
                    .filter(|_| self.admin.is_some() || !pages::is_console(&path))
                {
                    Some(page) => page.response(),
                    None => error(
                        StatusCode::NOT_FOUND,
                        Code::NotFound,
                        &format!("no page at {path}; the calls are listed at /routes"),
                    ),
                },
                _ => error(
                    StatusCode::NOT_FOUND,
                    Code::NotFound,
                    &format!(
                        "no call at {path}: calls are POST /<contract>/v<major>/<Method>, listed \
                         at /routes"
                    ),
                ),
            };
        };
        if request.method() != Method::POST {
            let mut response = error(
                StatusCode::METHOD_NOT_ALLOWED,
                Code::Unimplemented,
                &format!(
                    "{path} is a call: POST it a JSON {}",
                    route.input.full_name()
                ),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        let too_large = || {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::ResourceExhausted,
                &format!("the body is larger than {} bytes", self.max_body),
            )
        };
        // a declared length over the limit is refused before a byte of it is read
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return too_large();
        }
        if let Some(name) = oversized_header(request.headers()) {
            return error(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                Code::InvalidArgument,
                &format!("header {name} is longer than {MAX_HEADER_BYTES} bytes"),
            );
        }
        let (parts, body) = request.into_parts();
        // and a body that trickles in does not hold its connection (one of a capped number)
        // for longer than BODY_WITHIN
        let read = tokio::time::timeout(BODY_WITHIN, Limited::new(body, self.max_body).collect());
        let body = match read.await {
            Ok(Ok(body)) => body.to_bytes(),
            Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => return too_large(),
            Ok(Err(err)) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    Code::InvalidArgument,
                    &format!("the body could not be read: {err}"),
                );
            }
            Err(_) => {
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    Code::DeadlineExceeded,
                    &format!("the body did not arrive within {} s", BODY_WITHIN.as_secs()),
                );
            }
        };
        let message = match from_json(&route.input, &body) {
            Ok(message) => message,
            Err(message) => {
                return error(StatusCode::BAD_REQUEST, Code::InvalidArgument, &message);
            }
        };
        let request_id = parts.headers.get(headers::REQUEST_ID).cloned();
        let (mut call, deadline) = match grpc_request(&route, &parts.headers, message) {
            Ok(call) => call,
            Err(message) => {
                return error(StatusCode::BAD_REQUEST, Code::InvalidArgument, &message);
            }
        };
        // who is calling, as gRPC calls carry it: the per-address limits (wrong ops
        // credentials, connections) count a browser's calls against its own address too
        if let Some(peer) = parts
            .extensions
            .get::<tonic::transport::server::TcpConnectInfo>()
        {
            call.extensions_mut().insert(peer.clone());
        }
        // this access is the gRPC client: it keeps the deadline itself, as a gRPC client
        // does, so a call held up before it reaches the deadline layer of its worker (a
        // drill's delay at the front door, a worker that stopped answering) is answered
        // DEADLINE_EXCEEDED in time, not left hanging. Without a deadline from the caller, the
        // contract's timeout (and a moment, for the mesh's own answer to come first).
        // A caller may ask for less time than the contract gives, not more.
        let contract =
            (!route.method.timeout.is_zero()).then(|| route.method.timeout + DEADLINE_GRACE);
        let deadline = match (deadline, contract) {
            (Some(caller), Some(contract)) => Some(caller.min(contract)),
            (caller, contract) => caller.or(contract),
        };
        let upstream = self.upstream(&route);
        let answer = async {
            let Ok(response) = upstream.oneshot(call).await;
            if route.streams() {
                // the deadline bounds opening a stream, not its life
                events(&route, response)
            } else {
                unary(&route, response).await
            }
        };
        let mut answer = match deadline {
            None => answer.await,
            Some(deadline) => match tokio::time::timeout(deadline, answer).await {
                Ok(answer) => answer,
                Err(_) => status_error(&Status::deadline_exceeded(format!(
                    "no answer within the call's deadline ({deadline:?})"
                ))),
            },
        };
        // the caller's request id comes back with the answer, to match them in its logs
        if let Some(id) = request_id {
            answer
                .headers_mut()
                .entry(headers::REQUEST_ID)
                .or_insert(id);
        }
        answer
    }

    /// `GET /routes`: every call, its gRPC path, whether it streams, who may call it.
    fn route_list(&self) -> Response<tonic::body::Body> {
        let routes: Vec<_> = self
            .routes
            .iter()
            .map(|r| {
                serde_json::json!({
                    "path": r.http_path,
                    "grpc": r.method.path,
                    "request": r.input.full_name(),
                    "response": r.output.full_name(),
                    "stream": r.streams(),
                    "audience": r.method.audience.names(),
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
}

/// The JSON body as the call's request message (proto3 JSON mapping: both `fromUser` and
/// `from_user` are read; an unknown field is an error, as a typo would otherwise be dropped).
fn from_json(input: &MessageDescriptor, body: &[u8]) -> Result<Vec<u8>, String> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        body
    };
    let mut json = serde_json::Deserializer::from_slice(body);
    let message = DynamicMessage::deserialize_with_options(
        input.clone(),
        &mut json,
        &DeserializeOptions::new(),
    )
    .and_then(|m| json.end().map(|()| m))
    .map_err(|err| format!("the body is not a JSON {}: {err}", input.full_name()))?;
    Ok(message.encode_to_vec())
}

/// A message the service answered, as JSON (scalar fields written with their defaults too: a
/// browser reads `delivered: false` rather than guessing what a missing field means; unset
/// message and `optional` fields are left out; 64-bit integers as strings, as the mapping
/// says).
fn to_json(output: &MessageDescriptor, message: Bytes) -> Result<Vec<u8>, Status> {
    let message = DynamicMessage::decode(output.clone(), message).map_err(|err| {
        Status::internal(format!(
            "the service's answer does not decode as {}: {err}",
            output.full_name()
        ))
    })?;
    let mut out = Vec::with_capacity(128);
    message
        .serialize_with_options(
            &mut serde_json::Serializer::new(&mut out),
            &SerializeOptions::new().skip_default_fields(false),
        )
        .map_err(|err| Status::internal(format!("the answer could not be written: {err}")))?;
    Ok(out)
}

/// The gRPC request of a call: its message framed, the caller's credentials, request id, trace
/// context and deadline carried over; with the deadline the caller gave, if any.
fn grpc_request(
    route: &Route,
    from: &HeaderMap,
    message: Vec<u8>,
) -> Result<(Request<tonic::body::Body>, Option<Duration>), String> {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(route.method.path)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(tonic::body::Body::new(Full::new(frame(&message))))
        .expect("a valid request");
    let to = request.headers_mut();
    for name in FORWARDED {
        if let Some(value) = from.get(name) {
            to.insert(name, value.clone());
        }
    }
    let mut deadline = None;
    if let Some(value) = from.get("grpc-timeout") {
        deadline = Some(
            value
                .to_str()
                .ok()
                .and_then(headers::grpc_timeout)
                .ok_or("header grpc-timeout must be as gRPC writes it (`300m`: digits and a unit of H M S m u n)")?,
        );
        to.insert("grpc-timeout", value.clone());
    } else if let Some(value) = from.get(TIMEOUT_HEADER) {
        let ms: u64 = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|ms| (1..=99_999_999).contains(ms))
            .ok_or_else(|| {
                format!("header {TIMEOUT_HEADER} must be a number of milliseconds (1 to 99999999)")
            })?;
        to.insert(
            "grpc-timeout",
            HeaderValue::from_str(&format!("{ms}m")).expect("digits"),
        );
        deadline = Some(Duration::from_millis(ms));
    }
    Ok((request, deadline))
}

/// The answer of a call that returns one message.
async fn unary(
    route: &Route,
    response: Response<tonic::body::Body>,
) -> Response<tonic::body::Body> {
    let (parts, body) = response.into_parts();
    let marks = marks(&parts.headers);
    // an answer with no body carries its status in its headers (a refusal, a degraded error)
    let (status, message) = match Status::from_header_map(&parts.headers) {
        Some(status) => (status, None),
        None => match body.collect().await {
            Err(status) => (cut(status), None),
            Ok(collected) => {
                let trailers = collected.trailers().cloned().unwrap_or_default();
                let mut deframer = Deframer::default();
                deframer.push(&collected.to_bytes());
                let message = deframer.next();
                let status = Status::from_header_map(&trailers).unwrap_or_else(|| {
                    Status::internal("the service's answer ended without a status")
                });
                match message {
                    Ok(message) => (status, message),
                    Err(err) => (err, None),
                }
            }
        },
    };
    let mut answer = match (status.code(), message) {
        (Code::Ok, Some(message)) => match to_json(&route.output, message) {
            Ok(body) => json(StatusCode::OK, body.into()),
            Err(status) => status_error(&status),
        },
        (Code::Ok, None) => status_error(&Status::internal(
            "the service answered OK without a message",
        )),
        _ => status_error(&status),
    };
    answer.headers_mut().extend(marks);
    answer
}

/// The answer of a call that streams: server-sent events, one `message` event per message
/// (its JSON as data), then `end` (the stream finished) or `error` (the status, as the JSON
/// error body). A call refused before its stream opened is answered as a unary call's error.
fn events(route: &Route, response: Response<tonic::body::Body>) -> Response<tonic::body::Body> {
    let (parts, body) = response.into_parts();
    if let Some(status) = Status::from_header_map(&parts.headers)
        && status.code() != Code::Ok
    {
        let mut answer = status_error(&status);
        answer.headers_mut().extend(marks(&parts.headers));
        return answer;
    }
    let stream = EventStream {
        body,
        output: route.output.clone(),
        deframer: Deframer::default(),
        pending: VecDeque::new(),
        keepalive: tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE),
        done: false,
    };
    let events = futures::stream::unfold(stream, |mut stream| async move {
        let event = stream.next().await?;
        Some((Ok::<_, Infallible>(http_body::Frame::data(event)), stream))
    });
    let mut answer = Response::new(tonic::body::Body::new(StreamBody::new(events)));
    let headers = answer.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx and the like must pass each event on at once
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    headers.extend(marks(&parts.headers));
    answer
}

/// A gRPC server stream read as server-sent events.
struct EventStream {
    body: tonic::body::Body,
    output: MessageDescriptor,
    deframer: Deframer,
    pending: VecDeque<Bytes>,
    keepalive: tokio::time::Interval,
    done: bool,
}

impl EventStream {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            tokio::select! {
                frame = self.body.frame() => self.read(frame),
                _ = self.keepalive.tick() => return Some(Bytes::from_static(b": keepalive\n\n")),
            }
        }
    }

    fn read(&mut self, frame: Option<Result<http_body::Frame<Bytes>, Status>>) {
        let ended = |this: &mut Self, status: Status| {
            this.done = true;
            this.pending.push_back(if status.code() == Code::Ok {
                Bytes::from_static(b"event: end\ndata: {}\n\n")
            } else {
                let http = http_status(status.code());
                let body = error_body(http, status.code(), status.message());
                event("error", &body)
            });
        };
        match frame {
            None => ended(self, Status::internal("the stream ended without a status")),
            // the connection to the tenant's process broke (it was killed, restarted): a
            // retryable outage, not the service's error; the transport's words go to the log
            Some(Err(status)) if status.code() == Code::Unknown => {
                tracing::debug!(error = %status, "a stream was cut");
                ended(
                    self,
                    Status::unavailable(
                        "the stream was cut: the tenant's process went away; attach again",
                    ),
                )
            }
            Some(Err(status)) => ended(self, status),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    self.deframer.push(&data);
                    loop {
                        match self.deframer.next() {
                            Ok(Some(message)) => match to_json(&self.output, message) {
                                Ok(json) => self.pending.push_back(event("message", &json)),
                                Err(status) => return ended(self, status),
                            },
                            Ok(None) => break,
                            Err(status) => return ended(self, status),
                        }
                    }
                }
                Err(frame) => {
                    let status = frame
                        .trailers_ref()
                        .and_then(Status::from_header_map)
                        .unwrap_or_else(|| Status::internal("the stream ended without a status"));
                    ended(self, status)
                }
            },
        }
    }
}

/// The first forwarded header whose value is longer than [`MAX_HEADER_BYTES`].
fn oversized_header(headers: &HeaderMap) -> Option<&'static str> {
    FORWARDED
        .into_iter()
        .chain(["grpc-timeout", TIMEOUT_HEADER])
        .find(|name| {
            headers
                .get(*name)
                .is_some_and(|v| v.len() > MAX_HEADER_BYTES)
        })
}

/// Whether the request is gRPC-Web (`application/grpc-web`, `+proto`, `-text`).
fn is_grpc_web(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc-web"))
}

/// What a body error says to the caller: a connection to the tenant's process that broke (it
/// was killed, restarted) is a retryable outage, not the service's error, and the transport's
/// words go to the log.
fn cut(status: Status) -> Status {
    if status.code() != Code::Unknown {
        return status;
    }
    tracing::debug!(error = %status, "an answer was cut");
    Status::unavailable("the answer was cut: the tenant's process went away; try again")
}

/// One server-sent event (`data` is one line: JSON has no raw newlines).
fn event(name: &str, data: &[u8]) -> Bytes {
    let mut event = Vec::with_capacity(data.len() + name.len() + 16);
    event.extend_from_slice(b"event: ");
    event.extend_from_slice(name.as_bytes());
    event.extend_from_slice(b"\ndata: ");
    event.extend_from_slice(data);
    event.extend_from_slice(b"\n\n");
    event.into()
}

/// The response headers that say something about the answer to the caller: the degraded
/// mark and the request id.
fn marks(from: &HeaderMap) -> HeaderMap {
    let mut marks = HeaderMap::new();
    for name in [DEGRADED_HEADER, headers::REQUEST_ID] {
        if let Some(value) = from.get(name) {
            marks.insert(name, value.clone());
        }
    }
    marks
}

fn status_error(status: &Status) -> Response<tonic::body::Body> {
    error(http_status(status.code()), status.code(), status.message())
}

fn error(http: StatusCode, code: Code, message: &str) -> Response<tonic::body::Body> {
    json(http, error_body(http, code, message))
}

fn json(status: StatusCode, body: Bytes) -> Response<tonic::body::Body> {
    let mut response = Response::new(tonic::body::Body::new(Full::new(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

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

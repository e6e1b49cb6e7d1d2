//! A call over HTTP/JSON: the checks a request passes before the mesh sees it (its headers,
//! its body within its size and time), the gRPC call it stands for, and its answer within the
//! call's deadline.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError};
use mesh_contract::headers;
use tonic::{Code, Status};
use tower::ServiceExt;

use crate::{
    Route, TIMEOUT_HEADER, Upstream,
    events::events,
    grpc::frame,
    status::{error, status_error},
    transcode::{from_json, unary},
};

/// How long a request body may take to arrive in full. (tower-http's body timeout bounds the
/// wait for each frame, which a body trickling in a byte at a time passes: this bounds the
/// whole, so a slow body does not hold its connection, one of a capped number.)
const BODY_WITHIN: Duration = Duration::from_secs(10);

/// The longest header value a call carries on (a request id, a trace context, a token); the
/// mesh's own hop refuses longer header blocks.
pub(crate) const MAX_HEADER_BYTES: usize = 4096;

/// How long past a contract's timeout this access waits for the mesh's own answer (a degraded
/// one, the worker's DEADLINE_EXCEEDED) before it answers DEADLINE_EXCEEDED itself.
const DEADLINE_GRACE: Duration = Duration::from_millis(100);

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

/// `POST <route.http_path>`: the JSON body as the call's request, the call through
/// `upstream` (the mesh's stack), its answer as JSON or server-sent events. The body's size
/// was limited by the router's layer (a declared length over the limit never gets here).
pub(crate) async fn call(
    upstream: Upstream,
    route: &Route,
    request: axum::extract::Request,
    max_body: usize,
) -> Response<tonic::body::Body> {
    if let Some(name) = oversized_header(request.headers()) {
        return error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Code::InvalidArgument,
            &format!("header {name} is longer than {MAX_HEADER_BYTES} bytes"),
        );
    }
    let (parts, body) = request.into_parts();
    let body = match read_body(body, max_body).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    let message = match from_json(&route.input, &body) {
        Ok(message) => message,
        Err(message) => return error(StatusCode::BAD_REQUEST, Code::InvalidArgument, &message),
    };
    let (mut call, deadline) = match grpc_request(route, &parts.headers, message) {
        Ok(call) => call,
        Err(message) => return error(StatusCode::BAD_REQUEST, Code::InvalidArgument, &message),
    };
    // who is calling, as gRPC calls carry it: the per-address limits (wrong ops
    // credentials, connections) count a browser's calls against its own address too
    if let Some(peer) = parts
        .extensions
        .get::<tonic::transport::server::TcpConnectInfo>()
    {
        call.extensions_mut().insert(peer.clone());
    }
    // (the caller's request id comes back on the answer: the router's layer puts it there)
    forward(upstream, route, call, deadline).await
}

/// The whole body, within [`BODY_WITHIN`] and the size limit; else the answer saying why not.
pub(crate) async fn read_body(
    body: axum::body::Body,
    max_body: usize,
) -> Result<Bytes, Response<tonic::body::Body>> {
    match tokio::time::timeout(BODY_WITHIN, body.collect()).await {
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(err)) if over_limit(&err) => Err(too_large(max_body)),
        Ok(Err(err)) => Err(error(
            StatusCode::BAD_REQUEST,
            Code::InvalidArgument,
            &format!("the body could not be read: {err}"),
        )),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            Code::DeadlineExceeded,
            &format!("the body did not arrive within {} s", BODY_WITHIN.as_secs()),
        )),
    }
}

/// Whether reading failed because the body went past the limit (tower-http's limit layer
/// holds the body to it as it arrives), by the error's type.
fn over_limit(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |e| e.source()).any(|e| e.is::<LengthLimitError>())
}

/// The 413 answer for a body over `max_body` bytes.
pub(crate) fn too_large(max_body: usize) -> Response<tonic::body::Body> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        Code::ResourceExhausted,
        &format!("the body is larger than {max_body} bytes"),
    )
}

/// The call through the mesh within its deadline. This access is the gRPC client: it keeps
/// the deadline itself, as a gRPC client does, so a call held up before it reaches the
/// deadline layer of its worker (a drill's delay at the front door, a worker that stopped
/// answering) is answered DEADLINE_EXCEEDED in time, not left hanging. Without a deadline from
/// the caller, the contract's timeout (and a moment, for the mesh's own answer to come
/// first). A caller may ask for less time than the contract gives, not more.
async fn forward(
    upstream: Upstream,
    route: &Route,
    call: Request<tonic::body::Body>,
    caller: Option<Duration>,
) -> Response<tonic::body::Body> {
    let contract = (!route.method.timeout.is_zero()).then(|| route.method.timeout + DEADLINE_GRACE);
    let deadline = match (caller, contract) {
        (Some(caller), Some(contract)) => Some(caller.min(contract)),
        (caller, contract) => caller.or(contract),
    };
    let answer = async {
        let Ok(response) = upstream.oneshot(call).await;
        if route.streams() {
            // the deadline bounds opening a stream, not its life
            events(route, response)
        } else {
            unary(route, response).await
        }
    };
    match deadline {
        None => answer.await,
        Some(deadline) => match tokio::time::timeout(deadline, answer).await {
            Ok(answer) => answer,
            Err(_) => status_error(&Status::deadline_exceeded(format!(
                "no answer within the call's deadline ({deadline:?})"
            ))),
        },
    }
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

/// The first forwarded header whose value is longer than [`MAX_HEADER_BYTES`].
pub(crate) fn oversized_header(headers: &HeaderMap) -> Option<&'static str> {
    FORWARDED
        .into_iter()
        .chain(["grpc-timeout", TIMEOUT_HEADER])
        .find(|name| {
            headers
                .get(*name)
                .is_some_and(|v| v.len() > MAX_HEADER_BYTES)
        })
}

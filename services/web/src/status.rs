//! gRPC statuses as HTTP answers: the status code a browser or an HTTP client expects, and a
//! JSON body in the shape Google's JSON APIs use (`{"error": {"code", "status", "message"}}`).

use bytes::Bytes;
use tonic::Code;

/// The HTTP status of a gRPC code (the mapping of `google.rpc.Code`, as grpc-gateway and
/// Envoy's transcoder use it).
///
/// ```
/// use mesh_web::http_status;
/// use tonic::Code;
///
/// assert_eq!(http_status(Code::Unauthenticated), 401);
/// assert_eq!(http_status(Code::ResourceExhausted), 429);
/// assert_eq!(http_status(Code::Unavailable), 503);
/// ```
pub fn http_status(code: Code) -> http::StatusCode {
    use http::StatusCode as S;
    match code {
        Code::Ok => S::OK,
        // the client closed the request (nginx's 499)
        Code::Cancelled => S::from_u16(499).expect("a valid status"),
        Code::Unknown | Code::Internal | Code::DataLoss => S::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => S::BAD_REQUEST,
        Code::DeadlineExceeded => S::GATEWAY_TIMEOUT,
        Code::NotFound => S::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => S::CONFLICT,
        Code::PermissionDenied => S::FORBIDDEN,
        Code::ResourceExhausted => S::TOO_MANY_REQUESTS,
        Code::Unimplemented => S::NOT_IMPLEMENTED,
        Code::Unavailable => S::SERVICE_UNAVAILABLE,
        Code::Unauthenticated => S::UNAUTHORIZED,
    }
}

/// The canonical name of a gRPC code (`UNAVAILABLE`), as the JSON error body gives it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The JSON error body of `status`, answered with `http`.
pub(crate) fn error_body(http: http::StatusCode, code: Code, message: &str) -> Bytes {
    serde_json::json!({
        "error": {
            "code": http.as_u16(),
            "status": code_name(code),
            "message": message,
        }
    })
    .to_string()
    .into()
}

/// `status` as an HTTP answer: its HTTP status and the JSON error body; a refusal over a rate
/// says when to call again (`Retry-After`, in seconds, from the limiter).
pub(crate) fn status_error(status: &tonic::Status) -> http::Response<tonic::body::Body> {
    let mut answer = error(http_status(status.code()), status.code(), status.message());
    if let Some(seconds) = status
        .metadata()
        .get(mesh_contract::headers::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| http::HeaderValue::from_str(v).ok())
    {
        answer
            .headers_mut()
            .insert(http::header::RETRY_AFTER, seconds);
    }
    answer
}

/// An error answer: `http`, with the JSON error body naming `code`.
pub(crate) fn error(
    http: http::StatusCode,
    code: Code,
    message: &str,
) -> http::Response<tonic::body::Body> {
    json(http, error_body(http, code, message))
}

/// A JSON answer.
pub(crate) fn json(status: http::StatusCode, body: Bytes) -> http::Response<tonic::body::Body> {
    let mut response = http::Response::new(tonic::body::Body::new(http_body_util::Full::new(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

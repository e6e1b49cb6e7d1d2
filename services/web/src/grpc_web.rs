//! A browser's gRPC client (grpc-web, Connect's gRPC-Web transport): translated by tonic-web
//! to the gRPC call it carries, at its gRPC path, through the same stack as every other call.

use http::{Response, StatusCode};
use http_body_util::{BodyExt, BodyStream, Limited, StreamBody};
use tonic::{Code, Status};
use tower::{Layer, ServiceExt};

use crate::{
    Upstream,
    call::{MAX_HEADER_BYTES, oversized_header},
    status::error,
};

/// A gRPC-Web call to `upstream`, its body held to `max_body` bytes (a larger one fails the
/// call as RESOURCE_EXHAUSTED, as a gRPC server's message limit would).
pub(crate) async fn call(
    upstream: Upstream,
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
    let translated = tonic_web::GrpcWebLayer::new().layer(upstream);
    // text mode's body is base64: the decoded call is shorter than the length the browser
    // declared, which must not reach the hop (HTTP/2 takes a body's exact size for its
    // Content-Length), so neither the header nor the body's size is passed on
    let mut request = request;
    request.headers_mut().remove(http::header::CONTENT_LENGTH);
    let request = request.map(|body| {
        let limited = Limited::new(body, max_body).map_err(|err| {
            Status::resource_exhausted(format!("the body is too large or broken: {err}"))
        });
        tonic::body::Body::new(StreamBody::new(BodyStream::new(limited)))
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

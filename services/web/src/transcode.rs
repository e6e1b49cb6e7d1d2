//! A call's messages between JSON and protobuf (the proto3 JSON mapping, by the descriptors
//! the contracts compile to), and a unary gRPC answer as an HTTP one.

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body_util::BodyExt;
use prost::Message as _;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};
use tonic::{Code, Status};

use crate::{
    DEGRADED_HEADER, Route,
    grpc::Deframer,
    status::{json, status_error},
};
use mesh_contract::headers;

/// The JSON body as the call's request message (proto3 JSON mapping: both `fromUser` and
/// `from_user` are read; an unknown field is an error, as a typo would otherwise be dropped).
pub(crate) fn from_json(input: &MessageDescriptor, body: &[u8]) -> Result<Vec<u8>, String> {
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
pub(crate) fn to_json(output: &MessageDescriptor, message: Bytes) -> Result<Vec<u8>, Status> {
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

/// The answer of a call that returns one message.
pub(crate) async fn unary(
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
            Ok(body) => json(http::StatusCode::OK, body.into()),
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

/// The response headers that say something about the answer to the caller: the degraded
/// mark and the request id.
pub(crate) fn marks(from: &HeaderMap) -> HeaderMap {
    let mut marks = HeaderMap::new();
    for name in [DEGRADED_HEADER, headers::REQUEST_ID] {
        if let Some(value) = from.get(name) {
            marks.insert(name, value.clone());
        }
    }
    marks
}

/// What a body error says to the caller: a connection to the tenant's process that broke (it
/// was killed, restarted) is a retryable outage, not the service's error, and the transport's
/// words go to the log.
pub(crate) fn cut(status: Status) -> Status {
    if status.code() != Code::Unknown {
        return status;
    }
    tracing::debug!(error = %status, "an answer was cut");
    Status::unavailable("the answer was cut: the tenant's process went away; try again")
}

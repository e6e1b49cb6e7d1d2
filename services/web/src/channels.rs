//! Third-party platforms' callbacks, `/channels/<tenant>/<channel>` (GET and POST): the
//! request as it came (method, query, headers, body) handed to the tenant's channel service as
//! `channel.v1.Channel/Callback` through the same stack as every call, with the node
//! credential: a platform holds no credential of the mesh's, its signature is its credential,
//! and the channel service checks it. The service's answer is passed back as the platform
//! expects it (WeChat: `success`); a refusal is the usual JSON error (401 for a forged or
//! replayed callback, 404 for a channel the tenant does not have, 503 when the message could
//! not be recorded and the platform should send it again).

use std::collections::HashMap;

use http::{Response, StatusCode, header};
use http_body_util::Full;
use mesh_api::channel::v1 as channel;
use mesh_contract::{RequestContext, ServiceCredentials, TenantId};
use tonic::Code;

use crate::{
    Upstream,
    call::read_body,
    status::{error, status_error},
};

/// The path a platform is given for a tenant's channel.
pub const CALLBACK_PATH: &str = "/channels/{tenant}/{channel}";

/// One callback, through `calls` as the node (`credentials`).
pub(crate) async fn callback(
    calls: Upstream,
    credentials: ServiceCredentials,
    (tenant, name): (String, String),
    request: axum::extract::Request,
    max_body: usize,
) -> Response<tonic::body::Body> {
    let Ok(tenant) = TenantId::new(&tenant) else {
        return error(
            StatusCode::NOT_FOUND,
            Code::NotFound,
            &format!("{tenant:?} is no tenant id"),
        );
    };
    let (parts, body) = request.into_parts();
    let body = match read_body(body, max_body).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    let headers: HashMap<String, String> = parts
        .headers
        .iter()
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    let request = channel::CallbackRequest {
        channel: name,
        method: parts.method.to_string(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers,
        body: body.to_vec(),
    };
    let ctx = credentials.outbound(&RequestContext::new(tenant));
    // made in this process: the door serves it the internal call it refuses from outside
    let calls =
        tower::ServiceExt::map_request(calls, |mut call: http::Request<tonic::body::Body>| {
            call.extensions_mut().insert(mesh_contract::InProcess);
            call
        });
    match channel::ChannelCaller::new(calls)
        .callback(&ctx, request)
        .await
    {
        Ok(answer) => Response::builder()
            .status(u16::try_from(answer.http_status).unwrap_or(500))
            .header(header::CONTENT_TYPE, answer.content_type)
            .body(tonic::body::Body::new(Full::new(bytes::Bytes::from(
                answer.body,
            ))))
            .unwrap_or_else(|_| {
                status_error(&tonic::Status::internal(
                    "the channel answered an unusable status",
                ))
            }),
        Err(status) => status_error(&status),
    }
}

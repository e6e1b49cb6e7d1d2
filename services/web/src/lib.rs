//! The browsers' access to the mesh, from the same contracts as its gRPC access.
//!
//! - **Every call as HTTP/JSON:** `POST /<contract>/v<major>/<Method>` (`/message/v1/Send`)
//!   with the request message as JSON (the proto3 JSON mapping), answered with the response
//!   message as JSON. The table is read from the contracts and the descriptor set codegen builds
//!   from them ([`Routes`]); `GET /routes` lists it, `GET /openapi.json` describes it as an
//!   OpenAPI 3.1 document (request and answer schemas, who may call, the error body).
//! - **The same layers:** a call is transcoded to the gRPC call it stands for and passed to the
//!   mesh's own stack in process (the front door's, then the tenant's worker): authentication
//!   (`x-mesh-tenant` with `authorization: Bearer <user token>` or `x-mesh-token`), the
//!   contract's audience, rate limits, switches, bulkheads and deadlines apply as they do to
//!   gRPC. A degraded answer carries the `x-mesh-degraded` header; `x-mesh-timeout-ms` (or
//!   `grpc-timeout`) shortens the contract's deadline, never lengthens it.
//! - **Errors:** the gRPC status as its HTTP status ([`http_status`]: `UNAUTHENTICATED` 401,
//!   `RESOURCE_EXHAUSTED` 429, `UNAVAILABLE` 503, ...) and a JSON body
//!   `{"error": {"code": 503, "status": "UNAVAILABLE", "message": "..."}}`. A body that is not
//!   the call's JSON message is a 400 naming the message and the field; a body over the limit
//!   is a 413.
//! - **Streams:** a call that answers a stream (a terminal's `Attach`) is answered as
//!   server-sent events: `message` events (one JSON message each), then `end` or `error`.
//!   A browser reads them with `fetch` (which can send the credential headers), a terminal's
//!   sends are plain calls.
//! - **gRPC-Web:** a browser's gRPC client (grpc-web, Connect's gRPC-Web transport) calls the
//!   gRPC path (`POST /message.v1.Message/Send`, `application/grpc-web+proto` or `-text`) of
//!   a call the JSON access serves (never an internal one), translated by tonic-web and passed
//!   to the same stack; the deadline is the stack's (the worker's deadline layer).
//! - **Third-party platforms' callbacks** ([`WebAccess::with_channels`]):
//!   `/channels/<tenant>/<channel>`, handed to the tenant's channel service with the node
//!   credential, answered as the platform expects.
//! - **Other origins (CORS):** an app served elsewhere calls as a tenant whose file names its
//!   origin (`[web] allowed_origins`, [`WebAccess::with_cors`]); any other cross-origin call
//!   is refused (403) before it reaches the mesh.
//! - **Pages:** the web chat (`/chat`) and the ops console (`/console`), static files compiled
//!   in; the console calls the admin API through the same access with the ops credential.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use http_body_util::BodyExt;
//! use mesh_web::{Routes, WebAccess};
//! use tower::ServiceExt;
//!
//! // a stand-in for the mesh's stack that refuses every call as an unknown tenant's would
//! let mesh = tower::service_fn(|_: http::Request<tonic::body::Body>| async {
//!     Ok(tonic::Status::unauthenticated("the credential presented is not valid").into_http())
//! });
//! let routes = Routes::new(mesh_api::CONTRACTS, mesh_api::FILE_DESCRIPTOR_SET).unwrap();
//! let access = WebAccess::new(routes, tower::util::BoxCloneSyncService::new(mesh));
//!
//! let call = |body: &'static str| {
//!     http::Request::post("/message/v1/Send")
//!         .header("x-mesh-tenant", "nobody")
//!         .body(http_body_util::Full::new(bytes::Bytes::from(body)))
//!         .unwrap()
//! };
//! // the mesh's answer, as HTTP
//! let refused = access.clone().oneshot(call(r#"{"toUser": "bob", "body": "hi"}"#)).await.unwrap();
//! assert_eq!(refused.status(), 401);
//! let body = refused.into_body().collect().await.unwrap().to_bytes();
//! assert!(std::str::from_utf8(&body).unwrap().contains(r#""status":"UNAUTHENTICATED""#));
//!
//! // a body that is not a SendRequest never reaches the mesh
//! let typo = access.oneshot(call(r#"{"to_usr": "bob"}"#)).await.unwrap();
//! assert_eq!(typo.status(), 400);
//! # }
//! ```

mod access;
mod call;
mod channels;
mod cors;
mod events;
mod grpc;
mod grpc_web;
mod openapi;
mod pages;
mod routes;
mod status;
mod transcode;

pub use access::{DEGRADED_HEADER, MAX_HEADERS_TOTAL, TIMEOUT_HEADER, Upstream, WebAccess};
pub use channels::CALLBACK_PATH;
pub use routes::{Route, Routes, RoutesError};
pub use status::{code_name, http_status};

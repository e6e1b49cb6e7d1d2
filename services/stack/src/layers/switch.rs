//! Degradation switches: ops turn a method, a service or whole tiers off, for one tenant or
//! all, at run time. A switched-off call never reaches the service: it gets the contract's
//! degraded answer at once, marked with the `x-mesh-degraded` response header.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::time::SystemTime;
//!
//! use mesh_contract::{RequestContext, TenantId};
//! use mesh_stack::layers::{Catalogue, Switch, SwitchBoard, SwitchLayer, SwitchTarget};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let board = SwitchBoard::new(Catalogue(mesh_api::CONTRACTS));
//! let service = ServiceBuilder::new()
//!     .layer(SwitchLayer::new(board.clone()))
//!     .service_fn(|_: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
//!     });
//! let call = || {
//!     let mut request = http::Request::builder()
//!         .uri("/recommend.v1.Recommend/Suggest")
//!         .body(())
//!         .unwrap();
//!     request.extensions_mut().insert(RequestContext::new(TenantId::new("mall").unwrap()));
//!     request
//! };
//! board.turn_off(Switch {
//!     tenant: TenantId::new("mall").ok(),
//!     target: SwitchTarget::Service("recommend".into()),
//!     reason: "incident 7".into(),
//!     changed_by: "ops".into(),
//!     changed_at: SystemTime::now(),
//! });
//! let degraded = service.clone().oneshot(call()).await.unwrap();
//! assert_eq!(degraded.headers()["x-mesh-degraded"], "recommend@mall");
//! board.turn_on(TenantId::new("mall").ok().as_ref(), &SwitchTarget::Service("recommend".into()));
//! let served = service.oneshot(call()).await.unwrap();
//! assert!(served.headers().get("x-mesh-degraded").is_none());
//! # }
//! ```

use std::{
    convert::Infallible,
    sync::{Arc, RwLock},
    time::SystemTime,
};

use bytes::Bytes;
use http_body::Frame;
use mesh_contract::{ContractSpec, DegradedAnswer, MethodSpec, RequestContext, TenantId};

pub use mesh_config::switch::{Switch, SwitchTarget};

use super::{Admit, Catalogue, Decision, GrpcResponse};
use crate::config::Tenants;

/// Response header on every degraded answer; its value says which switch answered.
pub const DEGRADED_HEADER: &str = "x-mesh-degraded";

/// The switches that are off, shared by every layer of a process and changed at run time.
#[derive(Clone, Debug)]
pub struct SwitchBoard {
    off: Arc<RwLock<Vec<Switch>>>,
    catalogue: Catalogue,
}

impl SwitchBoard {
    /// All switches on.
    pub fn new(catalogue: Catalogue) -> Self {
        Self {
            off: Arc::default(),
            catalogue,
        }
    }

    /// The switches tenant files turn off from start-up.
    pub fn from_tenants(tenants: &Tenants, catalogue: Catalogue) -> Self {
        let board = Self::new(catalogue);
        for config in tenants.tenants.values() {
            let targets = config
                .switches
                .services_off
                .iter()
                .map(|s| SwitchTarget::Service(s.clone()))
                .chain(config.switches.tiers_off_from.map(SwitchTarget::TiersFrom));
            for target in targets {
                board.turn_off(Switch {
                    tenant: Some(config.tenant_id()),
                    target,
                    reason: "initial state in tenant config".into(),
                    changed_by: "config".into(),
                    changed_at: SystemTime::now(),
                });
            }
        }
        board
    }

    /// Turns a switch off (replacing the same switch if it was off already).
    pub fn turn_off(&self, switch: Switch) {
        let mut off = self.off.write().expect("lock");
        off.retain(|s| !(s.tenant == switch.tenant && s.target == switch.target));
        off.push(switch);
    }

    /// Turns a switch back on; false if it was not off.
    pub fn turn_on(&self, tenant: Option<&TenantId>, target: &SwitchTarget) -> bool {
        let mut off = self.off.write().expect("lock");
        let before = off.len();
        off.retain(|s| !(s.tenant.as_ref() == tenant && &s.target == target));
        off.len() != before
    }

    /// Replaces every switch at once: how a worker takes the state its supervisor holds.
    pub fn replace_all(&self, switches: Vec<Switch>) {
        *self.off.write().expect("lock") = switches;
    }

    /// Every switch that is off.
    pub fn list(&self) -> Vec<Switch> {
        self.off.read().expect("lock").clone()
    }

    /// The switch that turns `method` off for `tenant`, if any.
    pub fn switched_off(
        &self,
        tenant: &TenantId,
        spec: &ContractSpec,
        method: &MethodSpec,
    ) -> Option<Switch> {
        self.off
            .read()
            .expect("lock")
            .iter()
            .find(|s| {
                s.tenant.as_ref().is_none_or(|t| t == tenant) && covers(&s.target, spec, method)
            })
            .cloned()
    }
}

/// The degraded answer of `method`, as a gRPC response.
pub fn degraded_response(method: &MethodSpec, switch: &str) -> GrpcResponse {
    let mut response = match method.degraded {
        DegradedAnswer::Error { code, message } => tonic::Status::new(code, message).into_http(),
        // reached only when the CachedAnswersLayer had no young enough answer: the contract's
        // fallback is then the empty answer
        DegradedAnswer::Empty | DegradedAnswer::Cached { .. } => {
            empty_response(method.server_streaming)
        }
    };
    if let Ok(value) = http::HeaderValue::from_str(switch) {
        response.headers_mut().insert(DEGRADED_HEADER, value);
    }
    response
}

/// `OK` with one default-valued message (none for a stream).
fn empty_response(stream: bool) -> GrpcResponse {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let mut frames = Vec::new();
    if !stream {
        // a gRPC message frame: not compressed, length 0 (every field at its default)
        frames.push(Ok::<_, Infallible>(Frame::data(Bytes::from_static(&[
            0, 0, 0, 0, 0,
        ]))));
    }
    frames.push(Ok(Frame::trailers(trailers)));
    let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
    let mut response = http::Response::new(tonic::body::Body::new(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

impl Admit for SwitchBoard {
    type Ticket = ();

    fn admit<B>(&self, request: &mut http::Request<B>) -> Decision<()> {
        let Some(ctx) = request.extensions().get::<RequestContext>() else {
            return Decision::Admit(());
        };
        let Some((spec, method)) = self.catalogue.method(request.uri().path()) else {
            return Decision::Admit(());
        };
        match self.switched_off(&ctx.tenant, spec, method) {
            None => Decision::Admit(()),
            Some(switch) => {
                tracing::debug!(tenant = %ctx.tenant, method = method.path, switch = %switch.scope(), "degraded answer");
                Decision::Answer(degraded_response(method, &switch.scope()))
            }
        }
    }
}

/// Whether `target` turns off `method` of `spec`.
fn covers(target: &SwitchTarget, spec: &ContractSpec, method: &MethodSpec) -> bool {
    match target {
        SwitchTarget::Method { service, method: m } => spec.name == service && method.name == m,
        SwitchTarget::Service(service) => spec.name == service,
        SwitchTarget::TiersFrom(tier) => spec.tier.get() >= *tier,
    }
}

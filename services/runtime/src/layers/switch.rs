//! Degradation switches: ops turn a method, a service or whole tiers off, for one tenant or
//! all, at run time. A switched-off call never reaches the service: it gets the contract's
//! degraded answer at once, marked with the `x-mesh-degraded` response header.

use std::{
    convert::Infallible,
    sync::{Arc, RwLock},
    time::SystemTime,
};

use bytes::Bytes;
use http_body::Frame;
use mesh_contract::{ContractSpec, DegradedAnswer, MethodSpec, RequestContext, TenantId};

use super::{Admit, Catalogue, Decision, GrpcResponse};
use crate::config::Tenants;

/// Response header on every degraded answer; its value says which switch answered.
pub const DEGRADED_HEADER: &str = "x-mesh-degraded";

/// What a switch turns off.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwitchTarget {
    /// One method of a service (any major version).
    Method {
        /// Service name (`recommend`).
        service: String,
        /// Method name (`Suggest`).
        method: String,
    },
    /// Every method of a service.
    Service(String),
    /// Every service of this tier and of every less important one (2 = optional only).
    TiersFrom(u8),
}

impl std::fmt::Display for SwitchTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SwitchTarget::Method { service, method } => write!(f, "{service}.{method}"),
            SwitchTarget::Service(service) => write!(f, "{service}"),
            SwitchTarget::TiersFrom(tier) => write!(f, "tier>={tier}"),
        }
    }
}

/// Reads a target as [`Display`](std::fmt::Display) writes it: `recommend`, `recommend.Suggest`,
/// `tier>=2`. Names are checked against a catalogue by [`SwitchTarget::validate`], not here.
impl std::str::FromStr for SwitchTarget {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let word = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if let Some(tier) = spec.strip_prefix("tier>=") {
            return tier.parse().map(SwitchTarget::TiersFrom).map_err(|_| {
                format!("{spec:?}: `tier>=N` takes a tier number (0 = core, 1, 2 = optional)")
            });
        }
        match spec.split_once('.') {
            None if word(spec) => Ok(SwitchTarget::Service(spec.into())),
            Some((service, method)) if word(service) && word(method) => Ok(SwitchTarget::Method {
                service: service.into(),
                method: method.into(),
            }),
            _ => Err(format!(
                "{spec:?} is not a switch: write a service (`recommend`), a method \
                 (`recommend.Suggest`) or a tier and every less important one (`tier>=2`)"
            )),
        }
    }
}

impl SwitchTarget {
    /// Checks the target names something the catalogue has: an error says what is unknown.
    pub fn validate(&self, catalogue: Catalogue) -> Result<(), String> {
        let services: Vec<&str> = catalogue.0.iter().map(|s| s.name).collect();
        let known_service = |name: &str| {
            if services.contains(&name) {
                Ok(())
            } else {
                let mut known = services.clone();
                known.sort_unstable();
                known.dedup();
                Err(format!(
                    "unknown service {name:?}; known services: {}",
                    known.join(", ")
                ))
            }
        };
        match self {
            SwitchTarget::Service(service) => known_service(service),
            SwitchTarget::Method { service, method } => {
                known_service(service)?;
                let methods: Vec<&str> = catalogue
                    .0
                    .iter()
                    .filter(|s| s.name == service)
                    .flat_map(|s| s.methods.iter().map(|m| m.name))
                    .collect();
                if methods.contains(&method.as_str()) {
                    Ok(())
                } else {
                    Err(format!(
                        "{service} has no method {method:?}; its methods: {}",
                        methods.join(", ")
                    ))
                }
            }
            SwitchTarget::TiersFrom(tier) if *tier > mesh_contract::Tier::MAX => Err(format!(
                "{tier} is not a tier (0 = core, 1, {} = optional)",
                mesh_contract::Tier::MAX
            )),
            SwitchTarget::TiersFrom(_) => Ok(()),
        }
    }

    fn covers(&self, spec: &ContractSpec, method: &MethodSpec) -> bool {
        match self {
            SwitchTarget::Method { service, method: m } => spec.name == service && method.name == m,
            SwitchTarget::Service(service) => spec.name == service,
            SwitchTarget::TiersFrom(tier) => spec.tier.get() >= *tier,
        }
    }
}

/// One switch that is off.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Switch {
    /// The tenant it applies to; `None` for every tenant.
    pub tenant: Option<TenantId>,
    /// What it turns off.
    pub target: SwitchTarget,
    /// Why (shown to ops).
    pub reason: String,
    /// Who turned it off (an operator, `config`, or an automatic rule).
    pub changed_by: String,
    /// When.
    pub changed_at: SystemTime,
}

impl Switch {
    /// How the switch reads for people: `recommend@mall`, `tier>=2@all`.
    pub fn scope(&self) -> String {
        match &self.tenant {
            Some(tenant) => format!("{}@{tenant}", self.target),
            None => format!("{}@all", self.target),
        }
    }
}

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
                s.tenant.as_ref().is_none_or(|t| t == tenant) && s.target.covers(spec, method)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_reads_back_as_it_is_written() {
        for target in [
            SwitchTarget::Service("recommend".into()),
            SwitchTarget::Method {
                service: "recommend".into(),
                method: "Suggest".into(),
            },
            SwitchTarget::TiersFrom(2),
        ] {
            assert_eq!(target.to_string().parse::<SwitchTarget>(), Ok(target));
        }
        for bad in [
            "",
            "tier>=x",
            "recommend.",
            ".Suggest",
            "a.b.c",
            "rec ommend",
            "tier>=-1",
        ] {
            let err = bad.parse::<SwitchTarget>().unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }
}

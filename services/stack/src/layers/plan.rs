//! What each tenant runs: a call reaches a service only if the caller's tenant runs that
//! service, at that contract major (paipai runs order v2, so its order v1 calls are refused).
//! A major in grey release ([`GreyRelease`](crate::config::GreyRelease)) is open to the users
//! it includes (and to the tenant's backend, which acts for any of them); the tenant's other
//! users are told to call the major everyone runs.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::path::Path;
//!
//! use mesh_contract::{RequestContext, TenantId};
//! use mesh_config::Tenants;
//! use mesh_stack::{layers::{Catalogue, ServicePlan, ServicePlanLayer}};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tenants");
//! let tenants = Tenants::load(&folder, mesh_api::CONTRACTS).unwrap();
//! let plan = ServicePlan::from_tenants(&tenants, Catalogue(mesh_api::CONTRACTS));
//! let service = ServiceBuilder::new()
//!     .layer(ServicePlanLayer::new(plan))
//!     .service_fn(|_: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
//!     });
//! let call = |tenant: &str, path: &str| {
//!     let mut request = http::Request::builder().uri(path).body(()).unwrap();
//!     request.extensions_mut().insert(RequestContext::new(TenantId::new(tenant).unwrap()));
//!     request
//! };
//! let v2 = service.clone().oneshot(call("paipai", "/order.v2.Order/GetOrder")).await.unwrap();
//! assert!(v2.headers().get("grpc-status").is_none(), "paipai runs order v2");
//! let v1 = service.oneshot(call("paipai", "/order.v1.Order/GetOrder")).await.unwrap();
//! assert_eq!(v1.headers()["grpc-status"], "9", "FAILED_PRECONDITION: it does not run v1");
//! # }
//! ```

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use mesh_contract::{Caller, RequestContext, TenantId};

use super::{Admit, Catalogue, Decision};
use crate::config::{GreyRelease, TenantConfig, Tenants};

/// The services and majors each tenant runs, from its config.
#[derive(Clone, Debug)]
pub struct ServicePlan {
    runs: Arc<RwLock<HashMap<TenantId, TenantPlan>>>,
    catalogue: Catalogue,
}

#[derive(Debug, Default)]
struct TenantPlan {
    /// Each service's major, and the major in grey release if there is one.
    services: HashMap<String, (u32, Option<GreyRelease>)>,
    /// Its calls admitted and not answered yet: what removing it from a process waits for.
    in_flight: Arc<AtomicUsize>,
}

/// Counts a call of a tenant in flight until it answers.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ServicePlan {
    /// The plan of every tenant of `tenants`.
    pub fn from_tenants(tenants: &Tenants, catalogue: Catalogue) -> Self {
        let plan = Self {
            runs: Arc::default(),
            catalogue,
        };
        for config in tenants.tenants.values() {
            plan.add(config);
        }
        plan
    }

    /// Adds (or replaces) one tenant's plan.
    pub fn add(&self, config: &TenantConfig) {
        let services = config
            .enabled_services()
            .map(|(name, s)| (name.to_owned(), (s.version.get(), s.grey.clone())))
            .collect();
        self.runs
            .write()
            .expect("lock")
            .entry(config.tenant_id())
            .or_default()
            .services = services;
    }

    /// Forgets a tenant: its calls are refused from now on.
    pub fn remove(&self, tenant: &TenantId) {
        self.runs.write().expect("lock").remove(tenant);
    }

    /// `tenant`'s calls admitted and not answered yet (server streams count until their
    /// first answer, not for their whole life).
    pub fn in_flight(&self, tenant: &TenantId) -> usize {
        self.runs
            .read()
            .expect("lock")
            .get(tenant)
            .map_or(0, |plan| plan.in_flight.load(Ordering::Relaxed))
    }

    /// Whether `tenant` runs `service` at `major` for `caller`; the refusal says what it
    /// runs instead.
    pub fn check(
        &self,
        tenant: &TenantId,
        caller: &Caller,
        service: &str,
        major: u32,
    ) -> Result<(), tonic::Status> {
        self.admit_call(tenant, caller, service, major).map(drop)
    }

    /// [`ServicePlan::check`], counting the call in flight while the ticket lives.
    fn admit_call(
        &self,
        tenant: &TenantId,
        caller: &Caller,
        service: &str,
        major: u32,
    ) -> Result<InFlight, tonic::Status> {
        let runs = self.runs.read().expect("lock");
        let plan = runs.get(tenant);
        let admitted = |plan: &TenantPlan| {
            plan.in_flight.fetch_add(1, Ordering::Relaxed);
            Ok(InFlight(plan.in_flight.clone()))
        };
        match plan.and_then(|p| p.services.get(service)) {
            Some((m, _)) if *m == major => admitted(plan.expect("found above")),
            Some((m, Some(grey))) if grey.version.get() == major => match caller {
                Caller::User(who) if !grey.includes(tenant.as_str(), service, &who.user) => {
                    Err(tonic::Status::failed_precondition(format!(
                        "{service} v{major} is released to some of tenant {tenant}'s users \
                         first; user {:?} is not among them yet: call {service} v{m}",
                        who.user
                    )))
                }
                _ => admitted(plan.expect("found above")),
            },
            // the caller asked for what its tenant's file does not run: its mistake (or a
            // service not onboarded yet), never a server fault, so not UNIMPLEMENTED (HTTP 501)
            Some((m, _)) => Err(tonic::Status::failed_precondition(format!(
                "tenant {tenant} runs {service} v{m}, not v{major}"
            ))),
            None => Err(tonic::Status::failed_precondition(format!(
                "tenant {tenant} does not run {service} (its tenant file does not enable it)"
            ))),
        }
    }
}

impl ServicePlan {
    /// What a call to a path no contract declares is told: the service's methods, or the
    /// services there are (the router alone would answer an empty UNIMPLEMENTED).
    fn unknown(&self, path: &str) -> tonic::Status {
        let (service, method) = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .unwrap_or((path, ""));
        let specs: Vec<_> = self
            .catalogue
            .0
            .iter()
            .filter(|spec| spec.service == service)
            .collect();
        if specs.is_empty() {
            let mut services: Vec<&str> = self.catalogue.0.iter().map(|s| s.service).collect();
            services.sort_unstable();
            return tonic::Status::unimplemented(format!(
                "no service {service:?} here; services: {}",
                services.join(", ")
            ));
        }
        let methods: Vec<&str> = specs
            .iter()
            .flat_map(|spec| spec.methods.iter().map(|m| m.name))
            .collect();
        tonic::Status::unimplemented(format!(
            "{service} has no method {method:?}; its methods: {}",
            methods.join(", ")
        ))
    }
}

impl Admit for ServicePlan {
    type Ticket = Option<InFlight>;

    fn admit<B>(&self, request: &mut http::Request<B>) -> Decision<Option<InFlight>> {
        let Some(ctx) = request.extensions().get::<RequestContext>() else {
            return Decision::Admit(None);
        };
        let path = request.uri().path();
        match self.catalogue.method(path) {
            Some((spec, _)) => Decision::from_status(
                self.admit_call(&ctx.tenant, &ctx.caller, spec.name, spec.major)
                    .map(Some),
            ),
            None => match self.catalogue.event(path) {
                // an event is not served over HTTP/2: say where it travels instead of the
                // router's bare UNIMPLEMENTED
                Some(event) => Decision::from_status(Err(tonic::Status::unimplemented(format!(
                    "{} is an event, not a call: publish it to exchange {} with routing key \
                     {} (AMQP; see the envelope in README.md)",
                    event.name,
                    event.exchange(&ctx.tenant),
                    event.routing_key
                )))),
                None => Decision::from_status(Err(self.unknown(path))),
            },
        }
    }
}

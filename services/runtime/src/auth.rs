//! Tenant authentication for every inbound call.
//!
//! A call names its tenant (`x-mesh-tenant`) and presents that tenant's credential
//! (`x-mesh-token`). [`TenantAuthLayer`] checks both against the [`TenantDirectory`] before the
//! service sees the call, then attaches the authenticated
//! [`RequestContext`](mesh_contract::RequestContext) (credential removed) to the request, where
//! `RequestContext::from_request` finds it. Calls with no tenant, an unknown tenant or someone
//! else's credential get `UNAUTHENTICATED` with a message saying which.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use mesh_contract::{ContextError, RequestContext, TenantId};
use subtle::ConstantTimeEq;

use crate::{
    config::{TenantConfig, Tenants},
    layers::{Admit, AdmitLayer, Decision},
};

/// Why a call was not authenticated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No or a malformed tenant header.
    #[error(transparent)]
    Context(#[from] ContextError),
    /// The tenant is not served here.
    #[error("unknown tenant {0:?}")]
    UnknownTenant(String),
    /// No credential presented.
    #[error("no credential for tenant {0} (header `x-mesh-token`)")]
    MissingCredential(TenantId),
    /// A credential that is not the tenant's.
    #[error("the credential presented is not valid for tenant {0}")]
    WrongCredential(TenantId),
}

impl From<AuthError> for tonic::Status {
    fn from(err: AuthError) -> Self {
        tonic::Status::unauthenticated(err.to_string())
    }
}

/// The tenants served here and their credentials; shared and updatable at run time (a tenant
/// onboarded while running is authenticated from then on).
#[derive(Clone, Default)]
pub struct TenantDirectory {
    tokens: Arc<RwLock<HashMap<TenantId, Vec<u8>>>>,
}

impl std::fmt::Debug for TenantDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tenants: Vec<String> = self
            .tokens
            .read()
            .expect("lock")
            .keys()
            .map(|t| t.to_string())
            .collect();
        f.debug_struct("TenantDirectory")
            .field("tenants", &tenants)
            .finish()
    }
}

impl TenantDirectory {
    /// The tenants of a loaded configuration.
    pub fn from_tenants(tenants: &Tenants) -> Self {
        let directory = Self::default();
        for config in tenants.tenants.values() {
            directory.add(config);
        }
        directory
    }

    /// Serves a (validated) tenant from now on, replacing its credential if it was served.
    pub fn add(&self, config: &TenantConfig) {
        self.insert(config.tenant_id(), config.credentials.resolve());
    }

    /// Serves `tenant` with `token`.
    pub fn insert(&self, tenant: TenantId, token: impl Into<String>) {
        let token: String = token.into();
        self.tokens
            .write()
            .expect("lock")
            .insert(tenant, token.into_bytes());
    }

    /// Stops serving `tenant`.
    pub fn remove(&self, tenant: &TenantId) {
        self.tokens.write().expect("lock").remove(tenant);
    }

    /// Checks a context's credential; the context without it on success.
    pub fn authenticate(&self, mut ctx: RequestContext) -> Result<RequestContext, AuthError> {
        let tokens = self.tokens.read().expect("lock");
        let expected = tokens
            .get(&ctx.tenant)
            .ok_or_else(|| AuthError::UnknownTenant(ctx.tenant.to_string()))?;
        let presented = ctx
            .token
            .take()
            .ok_or_else(|| AuthError::MissingCredential(ctx.tenant.clone()))?;
        if expected.is_empty() || !bool::from(presented.as_bytes().ct_eq(expected)) {
            return Err(AuthError::WrongCredential(ctx.tenant.clone()));
        }
        Ok(ctx)
    }

    /// Authenticates an HTTP/2 request from its headers.
    pub fn authenticate_headers(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<RequestContext, AuthError> {
        let mut bad = None;
        let ctx =
            RequestContext::from_headers(|name| match headers.get(name).map(|v| v.to_str()) {
                Some(Ok(v)) => Some(v),
                Some(Err(_)) => {
                    bad.get_or_insert(name);
                    None
                }
                None => None,
            });
        if let Some(name) = bad {
            return Err(ContextError::InvalidHeader(name).into());
        }
        self.authenticate(ctx?)
    }
}

/// Tower layer authenticating the tenant of every call to the services it wraps.
pub type TenantAuthLayer = AdmitLayer<TenantDirectory>;

impl Admit for TenantDirectory {
    type Ticket = ();

    fn admit<B>(&self, request: &mut http::Request<B>) -> Decision<()> {
        match self.authenticate_headers(request.headers()) {
            Ok(ctx) => {
                tracing::trace!(tenant = %ctx.tenant, path = request.uri().path(), "authenticated");
                request.extensions_mut().insert(ctx);
                Decision::Admit(())
            }
            Err(err) => {
                tracing::debug!(path = request.uri().path(), error = %err, "call refused");
                Decision::from_status(Err(err.into()))
            }
        }
    }
}

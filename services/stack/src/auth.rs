//! Who is calling, for every inbound call: authentication, then the contract's audience.
//!
//! A call names its tenant (`x-mesh-tenant`) and presents one credential, which makes it one of
//! three kinds of caller ([`Caller`]):
//!
//! | caller   | credential                                   | acts as                       |
//! |----------|----------------------------------------------|-------------------------------|
//! | end user | `authorization: Bearer <JWT>` (tenant's keys) | only the token's user         |
//! | backend  | `x-mesh-token: <tenant credential>`          | any user of its tenant        |
//! | node     | `x-mesh-token: <node credential>`            | the mesh's own calls          |
//!
//! [`TenantAuthLayer`] checks the credential against the [`TenantDirectory`], then the method's
//! contract audience (`option (mesh.method).audience`): a caller the method does not admit gets
//! `PERMISSION_DENIED`. The authenticated [`RequestContext`] (credentials removed, caller set) is
//! attached to the request, where `RequestContext::from_request` finds it.
//!
//! A call with no credential, an unknown tenant or a credential that is not valid gets
//! `UNAUTHENTICATED`, and the last two the same answer: nobody learns from it which tenants
//! exist.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::path::Path;
//!
//! use mesh_contract::RequestContext;
//! use mesh_config::Tenants;
//! use mesh_stack::{TenantAuthLayer, TenantDirectory, layers::Catalogue};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tenants");
//! let tenants = Tenants::load(&folder, mesh_api::CONTRACTS).unwrap();
//! let directory = TenantDirectory::from_tenants(&tenants, Catalogue(mesh_api::CONTRACTS));
//! let service = ServiceBuilder::new()
//!     .layer(TenantAuthLayer::new(directory))
//!     .service_fn(|request: http::Request<()>| async move {
//!         // the service sees who called, the credential gone
//!         let ctx = request.extensions().get::<RequestContext>().unwrap();
//!         assert_eq!(ctx.tenant.as_str(), "mall");
//!         Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
//!     });
//! let call = |token: &str| {
//!     http::Request::builder()
//!         .uri("/order.v1.Order/GetOrder")
//!         .header("x-mesh-tenant", "mall")
//!         .header("x-mesh-token", token)
//!         .body(())
//!         .unwrap()
//! };
//! let served = service.clone().oneshot(call("dev-mall-token")).await.unwrap();
//! assert!(served.headers().get("grpc-status").is_none());
//! let refused = service.oneshot(call("dev-paipai-token")).await.unwrap();
//! assert_eq!(refused.headers()["grpc-status"], "16", "UNAUTHENTICATED");
//! # }
//! ```

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use mesh_contract::{Caller, ContextError, RequestContext, TenantId};
use subtle::ConstantTimeEq;

use crate::{
    config::{TenantConfig, Tenants},
    identity::UserVerifier,
    layers::{Admit, AdmitLayer, Catalogue, Decision},
};

/// Environment variable carrying the node credential to a process of the mesh (`mesh up` sets
/// it for its workers; several machines serving one mesh set the same value on each).
pub const NODE_CREDENTIAL_ENV: &str = "MESH_NODE_CREDENTIAL";

/// Why a call was not authenticated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No or a malformed tenant header.
    #[error(transparent)]
    Context(#[from] ContextError),
    /// No credential presented.
    #[error(
        "no credential for tenant {0}: a user token (`authorization: Bearer ...`) or a credential (`x-mesh-token`)"
    )]
    MissingCredential(TenantId),
    /// An unknown tenant, or a credential that is not valid for the tenant (said alike).
    #[error("the credential presented is not valid for tenant {0}")]
    WrongCredential(String),
}

impl From<AuthError> for tonic::Status {
    fn from(err: AuthError) -> Self {
        tonic::Status::unauthenticated(err.to_string())
    }
}

#[derive(Clone)]
struct TenantKeys {
    token: Vec<u8>,
    /// The SHA-256 of the credential it replaced, accepted until the instant given (a
    /// rotation's overlap).
    previous: Option<(Vec<u8>, std::time::Instant)>,
    users: Option<UserVerifier>,
}

impl TenantKeys {
    fn backend(&self, token: &[u8]) -> bool {
        if !self.token.is_empty() && bool::from(token.ct_eq(&self.token)) {
            return true;
        }
        self.previous.as_ref().is_some_and(|(old, until)| {
            std::time::Instant::now() < *until && bool::from(digest(token).ct_eq(old))
        })
    }
}

fn digest(token: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token)
        .as_ref()
        .to_vec()
}

/// The SHA-256 of `token`, hex: how a replaced credential is remembered.
pub fn digest_hex(token: &[u8]) -> String {
    digest(token).iter().map(|b| format!("{b:02x}")).collect()
}

/// The tenants served here, their credentials and user keys, and the node credential; shared
/// and updatable at run time (a tenant onboarded while running is authenticated from then on).
#[derive(Clone)]
pub struct TenantDirectory {
    tenants: Arc<RwLock<HashMap<TenantId, TenantKeys>>>,
    /// Keys nobody holds, checked for an unknown tenant so it costs what a known one does.
    decoy: Arc<TenantKeys>,
    node: Arc<RwLock<Option<Vec<u8>>>>,
    catalogue: Catalogue,
}

impl std::fmt::Debug for TenantDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tenants: Vec<String> = self
            .tenants
            .read()
            .expect("lock")
            .keys()
            .map(|t| t.to_string())
            .collect();
        f.debug_struct("TenantDirectory")
            .field("tenants", &tenants)
            .finish_non_exhaustive()
    }
}

impl TenantDirectory {
    /// No tenants yet; methods of `catalogue` are admitted by their contract audience.
    pub fn new(catalogue: Catalogue) -> Self {
        let secret = mesh_contract::ServiceCredentials::fresh_token();
        Self {
            tenants: Arc::default(),
            decoy: Arc::new(TenantKeys {
                token: secret.clone().into_bytes(),
                previous: None,
                users: crate::identity::UserTokens::development("decoy", &secret)
                    .verifier()
                    .ok(),
            }),
            node: Arc::default(),
            catalogue,
        }
    }

    /// The tenants of a loaded configuration.
    pub fn from_tenants(tenants: &Tenants, catalogue: Catalogue) -> Self {
        let directory = Self::new(catalogue);
        for config in tenants.tenants.values() {
            directory.add(config);
        }
        directory
    }

    /// Accepts `token` as the node credential: the mesh's own processes calling each other.
    pub fn with_node_credential(self, token: &str) -> Self {
        *self.node.write().expect("lock") = Some(token.as_bytes().to_vec());
        self
    }

    /// Serves a (validated) tenant from now on, replacing its credential and user keys if it
    /// was served; a replaced credential is still accepted for the file's
    /// `credentials.rotation_overlap_secs`. A tenant whose `[users]` keys do not load accepts
    /// no user token (validation reports it before a tenant is served).
    pub fn add(&self, config: &TenantConfig) {
        let users = config.users.as_ref().and_then(|u| match u.verifier() {
            Ok(v) => Some(v),
            Err((field, message)) => {
                tracing::error!(tenant = %config.id, field, message, "user keys not loaded");
                None
            }
        });
        let token = config.credentials.resolve().into_bytes();
        let overlap = std::time::Duration::from_secs(config.credentials.rotation_overlap_secs);
        let mut tenants = self.tenants.write().expect("lock");
        let previous = match tenants.get(&config.id) {
            Some(old) if old.token != token => std::time::Instant::now()
                .checked_add(overlap)
                .map(|until| (digest(&old.token), until)),
            Some(old) => old.previous.clone(),
            None => None,
        };
        tenants.insert(
            config.tenant_id(),
            TenantKeys {
                token,
                previous,
                users,
            },
        );
    }

    /// Accepts the credential whose SHA-256 is `sha256_hex` as `tenant`'s previous one for
    /// `overlap` more (a rotation that began in another process, or before this one started).
    pub fn accept_previous(
        &self,
        tenant: &TenantId,
        sha256_hex: &str,
        overlap: std::time::Duration,
    ) {
        let bytes: Option<Vec<u8>> = (0..sha256_hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(sha256_hex.get(i..i + 2)?, 16).ok())
            .collect();
        if let Some(keys) = self.tenants.write().expect("lock").get_mut(tenant)
            && let Some(until) = std::time::Instant::now().checked_add(overlap)
            && let Some(bytes) = bytes
        {
            keys.previous = Some((bytes, until));
        }
    }

    /// Serves `tenant` with the backend credential `token` and no user keys.
    pub fn insert(&self, tenant: TenantId, token: impl Into<String>) {
        let token: String = token.into();
        self.tenants.write().expect("lock").insert(
            tenant,
            TenantKeys {
                token: token.into_bytes(),
                previous: None,
                users: None,
            },
        );
    }

    /// Stops serving `tenant`.
    pub fn remove(&self, tenant: &TenantId) {
        self.tenants.write().expect("lock").remove(tenant);
    }

    /// Checks a context's credential; the context without it, and with its caller, on
    /// success.
    pub fn authenticate(&self, mut ctx: RequestContext) -> Result<RequestContext, AuthError> {
        let token = ctx.token.take();
        let bearer = ctx.authorization.take();
        let tenant = ctx.tenant.to_string();
        let wrong = || AuthError::WrongCredential(tenant.clone());
        if token.is_none() && bearer.is_none() {
            return Err(AuthError::MissingCredential(ctx.tenant.clone()));
        }
        let tenants = self.tenants.read().expect("lock");
        // an unknown tenant goes through the same checks, against keys nobody holds: answered
        // alike and after the same work as a wrong credential
        let known = tenants.get(&ctx.tenant);
        let keys = known.unwrap_or(&self.decoy);
        ctx.caller = match (token, bearer) {
            (Some(token), None) => {
                let node = self.node.read().expect("lock");
                if node
                    .as_deref()
                    .is_some_and(|n| bool::from(token.as_bytes().ct_eq(n)))
                {
                    Caller::Node
                } else if keys.backend(token.as_bytes()) {
                    Caller::Backend
                } else {
                    return Err(wrong());
                }
            }
            (None, Some(bearer)) => {
                let jwt = bearer
                    .strip_prefix("Bearer ")
                    .or_else(|| bearer.strip_prefix("bearer "))
                    .ok_or_else(wrong)?;
                let verifier = keys.users.as_ref().ok_or_else(wrong)?;
                match verifier.verify(jwt.trim()) {
                    Ok(user) => Caller::User(user),
                    Err(err) => {
                        tracing::debug!(tenant = %ctx.tenant, error = %err, "user token refused");
                        return Err(wrong());
                    }
                }
            }
            // two credentials: which one speaks is ambiguous, so neither does
            _ => return Err(wrong()),
        };
        if known.is_none() {
            return Err(wrong());
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

    /// Whether the method at `path` admits `caller` (a path outside the catalogue is left to
    /// the router, which answers UNIMPLEMENTED).
    pub fn admits(&self, path: &str, caller: &Caller) -> Result<(), tonic::Status> {
        match self.catalogue.method(path) {
            Some((_, method)) if !method.audience.admits(caller) => {
                Err(tonic::Status::permission_denied(format!(
                    "{path} is for {} callers; this one is {}",
                    method.audience.names().join(" or "),
                    caller_kind(caller)
                )))
            }
            _ => Ok(()),
        }
    }
}

/// A caller's kind, as the contract audience names it.
pub fn caller_kind(caller: &Caller) -> &'static str {
    match caller {
        Caller::User(_) => "USER",
        Caller::Backend => "BACKEND",
        Caller::Node => "NODE",
        Caller::Process => "PROCESS",
        Caller::Anonymous => "ANONYMOUS",
    }
}

/// Tower layer authenticating the caller of every call to the services it wraps, and
/// admitting it by the method's contract audience.
pub type TenantAuthLayer = AdmitLayer<TenantDirectory>;

impl Admit for TenantDirectory {
    type Ticket = ();

    fn admit<B>(&self, request: &mut http::Request<B>) -> Decision<()> {
        let checked = self
            .authenticate_headers(request.headers())
            .map_err(tonic::Status::from)
            .and_then(|ctx| {
                self.admits(request.uri().path(), &ctx.caller)?;
                Ok(ctx)
            });
        match checked {
            Ok(ctx) => {
                tracing::trace!(tenant = %ctx.tenant, caller = caller_kind(&ctx.caller), path = request.uri().path(), "authenticated");
                request.extensions_mut().insert(ctx);
                Decision::Admit(())
            }
            Err(status) => {
                tracing::debug!(path = request.uri().path(), error = %status.message(), "call refused");
                Decision::from_status(Err(status))
            }
        }
    }
}

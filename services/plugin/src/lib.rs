//! The one interface a business service implements to be served by the platform.
//!
//! A service added with `mesh-codegen new-service` is a crate of its own that exports one
//! [`ServiceDescriptor`] (written for it by the generator, from its contract). The platform
//! assembles every service listed in its registry (`services/platform/src/plugins.rs`, which the
//! generator keeps) through it:
//!
//! - its **routes** are served behind the same inbound stack as every other call (tenant,
//!   credential, audience, deadline, degradation: what the contract declares);
//! - for each tenant whose file enables it, its **consumers** are subscribed on the tenant's
//!   queues (`mesh.<tenant>.<contract>.v<major>.<consumer>`), which is also what `meshctl dlq` lists
//!   and what a purge deletes: one declaration, every use derived from it;
//! - it gets [`Handles`] to what the platform shares: the tenant-scoped [record store](
//!   mesh_store::RecordStore) (PostgreSQL when the mesh has one), the event bus, and a
//!   [`Notifier`] that sends a user a system message through `message.v1.SendSystem`.
//!
//! So adding a service never edits the platform by hand, and a service never edits another
//! service's crate to reach a user.

use std::sync::Arc;

use mesh_api::message::v1 as message;
use mesh_contract::{
    EventBus, HandlerError, RequestContext, ServiceCredentials, Subscription, TenantId, spec::names,
};
use mesh_runtime::OutboundChannel;
pub use mesh_runtime::TenantConfig;
use mesh_store::RecordStore;
use tonic::service::Routes;

/// What the platform shares with every service it assembles.
#[derive(Clone)]
pub struct Handles {
    /// Keyed records, each tenant's in its own namespace (opened by the platform for every
    /// tenant that runs the service).
    pub records: Arc<dyn RecordStore>,
    /// Where events are published (a contract's generated `*Publisher` takes it).
    pub bus: Arc<dyn EventBus>,
    /// Tells users things, as system messages.
    pub notifier: Notifier,
}

impl std::fmt::Debug for Handles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handles").finish_non_exhaustive()
    }
}

/// Sends users system messages through the message service (`message.v1.SendSystem`, a call
/// only the mesh's own nodes may make), wherever it runs: services never link the message
/// crate to reach a user.
#[derive(Clone)]
pub struct Notifier {
    messages: message::MessageCaller<OutboundChannel>,
    credentials: ServiceCredentials,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
    }
}

/// One system message, as [`Notifier::notify`] sends it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Notice {
    /// Who is told.
    pub to_user: String,
    /// The conversation it goes into (created with its first message).
    pub conversation_id: String,
    /// What the user reads.
    pub body: String,
    /// Unique per notice (`coupon:c-1:issued`): a retried notice (an event delivered twice)
    /// is stored once.
    pub key: String,
}

impl Notifier {
    /// Calls the message service over `channel` (the node's own address, through the
    /// outbound stack), presenting the node credential of `credentials`.
    pub fn new(channel: OutboundChannel, credentials: ServiceCredentials) -> Self {
        Self {
            messages: message::MessageCaller::new(channel),
            credentials,
        }
    }

    /// Stores `notice` in the user's timeline and pushes it to their online terminals; for
    /// the tenant of `ctx`. UNAVAILABLE when it may pass later (the message service is down,
    /// or the tenant is not served here yet: a worker starting consumes before it admits
    /// calls): retry, the key keeps it single. [`handler_error`] turns the answer into what an
    /// event handler returns.
    pub async fn notify(&self, ctx: &RequestContext, notice: Notice) -> Result<(), tonic::Status> {
        let mut messages = self.messages.clone();
        messages
            .send_system(
                &self.credentials.outbound(ctx),
                message::SendSystemRequest {
                    to_user: notice.to_user,
                    conversation_id: notice.conversation_id,
                    body: notice.body,
                    key: notice.key,
                },
            )
            .await
            .map(drop)
            .map_err(|status| match status.code() {
                // the node credential is this process's own: refused, it means the tenant is
                // not (yet, or any more) served at this node, never that the notice is bad
                tonic::Code::Unauthenticated => tonic::Status::unavailable(format!(
                    "tenant {} is not served here (yet): {}",
                    ctx.tenant,
                    status.message()
                )),
                _ => status,
            })
    }
}

/// What an event handler returns for a call that failed with `status`: retried later when it
/// may pass (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED), dead-lettered
/// otherwise (the event itself is refused).
///
/// ```
/// use mesh_contract::HandlerError;
/// let retry = mesh_plugin::handler_error(tonic::Status::unavailable("down"));
/// assert!(matches!(retry, HandlerError::Retry(_)));
/// let reject = mesh_plugin::handler_error(tonic::Status::invalid_argument("no user"));
/// assert!(matches!(reject, HandlerError::Reject(_)));
/// ```
pub fn handler_error(status: tonic::Status) -> HandlerError {
    match status.code() {
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::ResourceExhausted
        | tonic::Code::Aborted => HandlerError::Retry(status.message().to_owned()),
        _ => HandlerError::Reject(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// What a service does when a tenant that runs it is served at this node, or no longer is:
/// warm a cache, start a per-tenant task. Both default to nothing; a service implements
/// the trait in its own `lib.rs` (the skeleton does, empty), and its generated plug-in calls
/// it.
#[async_trait::async_trait]
pub trait TenantHooks: Send + Sync {
    /// Before `config`'s tenant is served (again, when its file changed). A refusal (naming
    /// what is wrong) keeps the tenant from being served, and names the service.
    async fn tenant_added(&self, config: &TenantConfig) -> Result<(), String> {
        let _ = config;
        Ok(())
    }

    /// When the tenant is no longer served here, or no longer runs the service.
    async fn tenant_removed(&self, tenant: &TenantId) {
        let _ = tenant;
    }
}

/// One of a service's event consumers: the events of contract `contract` v`major` reach it on
/// the queue `mesh.<tenant>.<contract>.v<major>.<consumer>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// The contract whose events it takes (its own, or another service's).
    pub contract: &'static str,
    /// That contract's major.
    pub major: u32,
    /// The consumer's name: one queue per consumer per tenant, shared by its replicas.
    pub consumer: &'static str,
}

impl ConsumerSpec {
    /// The queue it consumes for `tenant` (without a consumer suffix).
    pub fn queue(&self, tenant: &TenantId) -> String {
        names::queue(tenant, self.contract, self.major, self.consumer)
    }
}

/// What the platform knows of a service before building it: enough to list its queues (the
/// control plane does, without serving anything) and to build it.
#[derive(Debug)]
pub struct ServiceDescriptor {
    /// Its contract's name: the key of `[services.<name>]` in tenant files.
    pub name: &'static str,
    /// Its event consumers.
    pub consumers: &'static [ConsumerSpec],
    /// Builds the service on what the platform shares.
    pub build: fn(&Handles) -> Arc<dyn ServicePlugin>,
}

/// A service, as the platform assembles it.
#[async_trait::async_trait]
pub trait ServicePlugin: Send + Sync + 'static {
    /// Adds its tonic servers to `routes`.
    fn routes(&self, routes: Routes) -> Routes;

    /// The subscription of `consumer` (one of its descriptor's) for `tenant`, on queue name
    /// `queue` (the consumer's name, with the node's suffix when it has one).
    fn subscription(
        &self,
        consumer: &ConsumerSpec,
        tenant: TenantId,
        queue: String,
    ) -> Option<Subscription>;

    /// Called before `config`'s tenant is served (again, when its file changed), before
    /// anything of the tenant is changed: a refusal keeps it as it was.
    async fn add_tenant(&self, config: &TenantConfig) -> Result<(), String> {
        let _ = config;
        Ok(())
    }

    /// Called when the tenant is no longer served here, or no longer runs the service.
    async fn remove_tenant(&self, tenant: &TenantId) {
        let _ = tenant;
    }
}

/// What a service's own tests need: its [`Handles`] on the embedded store and bus, and
/// contexts of each kind of caller. The tests `mesh-codegen new-service` writes use these.
pub mod testing {
    use std::sync::Arc;

    use mesh_contract::{Caller, RequestContext, ServiceCredentials, TenantId, UserIdentity};
    use mesh_store::{MemoryStore, MessageStore};

    /// Handles on a fresh embedded store with `tenants` opened and a fresh embedded bus; the
    /// notifier reaches no message service (a notice answers UNAVAILABLE).
    pub async fn handles(tenants: &[&str]) -> super::Handles {
        let store = Arc::new(MemoryStore::default());
        for tenant in tenants {
            store
                .open(&tenant_id(tenant), tenant)
                .await
                .expect("a fresh embedded store opens any valid namespace");
        }
        let nowhere = tonic::transport::Endpoint::from_static("http://127.0.0.1:9");
        let outbound = mesh_runtime::Outbound::new(
            mesh_runtime::layers::Bulkheads::new(1),
            mesh_runtime::layers::Catalogue(mesh_api::CONTRACTS),
        );
        super::Handles {
            records: store,
            bus: Arc::new(mesh_embedded::EmbeddedBus::default()),
            notifier: super::Notifier::new(
                outbound.channel("message", &nowhere),
                ServiceCredentials::node(ServiceCredentials::fresh_token()),
            ),
        }
    }

    /// `tenant` as an id (panics on an invalid one: tests name their tenants).
    pub fn tenant_id(tenant: &str) -> TenantId {
        TenantId::new(tenant).expect("a valid tenant id")
    }

    /// A call of `tenant`'s backend (the tenant credential: acts for any of its users).
    pub fn backend(tenant: &str) -> RequestContext {
        let mut ctx = RequestContext::new(tenant_id(tenant));
        ctx.caller = Caller::Backend;
        ctx
    }

    /// A call of `user` of `tenant`, with a verified user token (acts only as that user).
    pub fn user(tenant: &str, user: &str) -> RequestContext {
        let mut ctx = RequestContext::new(tenant_id(tenant));
        ctx.caller = Caller::User(UserIdentity {
            user: user.to_owned(),
            terminal: None,
        });
        ctx
    }

    /// `message` as a tonic request carrying `ctx`, as the runtime's layers hand it to a
    /// service.
    pub fn request<M>(ctx: &RequestContext, message: M) -> tonic::Request<M> {
        let mut request = tonic::Request::new(message);
        request.extensions_mut().insert(ctx.clone());
        request
    }
}

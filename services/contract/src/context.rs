use std::{fmt, str::FromStr, sync::Arc};

use tonic::metadata::{MetadataMap, MetadataValue};

/// Names of the headers that carry a [`RequestContext`] in tonic metadata and AMQP headers.
pub mod headers {
    /// The tenant a call or message acts for.
    pub const TENANT: &str = "x-mesh-tenant";
    /// The caller's secret credential: the tenant's (a business backend) or the node's (the
    /// mesh's own processes). Checked by the runtime's auth layer.
    pub const TOKEN: &str = "x-mesh-token";
    /// `Bearer <JWT>`: an end user's token, issued by the business line's account system.
    pub const AUTHORIZATION: &str = "authorization";
    /// Id of the business request, kept across every hop.
    pub const REQUEST_ID: &str = "x-mesh-request-id";
    /// On a response from a front door that advertises its workers: the `host:port` of the
    /// worker serving the caller's tenant, for a client that can call it directly.
    pub const WORKER: &str = "x-mesh-worker";
    /// On a `RESOURCE_EXHAUSTED` answer: the caller went over what it was granted (`rate`:
    /// its tenant's calls per second; `streams`: long-lived streams to one process). A load the
    /// callers made says nothing about the service's health, so automatic degradation and the
    /// error alerts leave it out: one user flooding cannot switch its tenant off. A bulkhead
    /// shedding calls to a slow dependency sets no such header: that one counts.
    pub const OVER_QUOTA: &str = "x-mesh-over-quota";
    /// On a refusal over a rate: in how many seconds a call would pass (HTTP's `Retry-After`,
    /// which the web access answers with).
    pub const RETRY_AFTER: &str = "retry-after";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state.
    pub const TRACESTATE: &str = "tracestate";
    /// The caller's deadline, as gRPC writes it.
    pub const GRPC_TIMEOUT: &str = "grpc-timeout";

    /// A `grpc-timeout` value as a duration: at most 8 ASCII digits and a unit of `H M S m u
    /// n` (gRPC over HTTP/2); anything else is `None`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use mesh_contract::headers::grpc_timeout;
    ///
    /// assert_eq!(grpc_timeout("300m"), Some(Duration::from_millis(300)));
    /// assert_eq!(grpc_timeout("99999999H"), Some(Duration::from_secs(99_999_999 * 3600)));
    /// assert_eq!(grpc_timeout("999999999H"), None); // nine digits
    /// assert_eq!(grpc_timeout("+5S"), None);
    /// ```
    pub fn grpc_timeout(value: &str) -> Option<std::time::Duration> {
        use std::time::Duration;
        let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
        if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u64 = digits.parse().ok()?;
        Some(match unit {
            "H" => Duration::from_secs(n * 3600),
            "M" => Duration::from_secs(n * 60),
            "S" => Duration::from_secs(n),
            "m" => Duration::from_millis(n),
            "u" => Duration::from_micros(n),
            "n" => Duration::from_nanos(n),
            _ => return None,
        })
    }
}

/// A validated tenant id: lowercase ASCII letters, digits, `-` and `_`, starting with a letter,
/// at most 32 characters. The id ends up in queue names, schema names and metric labels, so it
/// is restricted to what is safe in all of them.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// Longest accepted id.
    pub const MAX_LEN: usize = 32;

    /// Validates and wraps a tenant id.
    pub fn new(id: &str) -> Result<Self, ContextError> {
        let valid = !id.is_empty()
            && id.len() <= Self::MAX_LEN
            && id.starts_with(|c: char| c.is_ascii_lowercase())
            && id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if valid {
            Ok(Self(id.into()))
        } else {
            Err(ContextError::InvalidTenant(quoted(id)))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A caller's text as an error quotes it: at most 40 characters (an id is at most 32), so a
/// caller cannot make the answer, the log or the span as long as it likes.
fn quoted(text: &str) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(40).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

/// Maps and sets keyed by tenant are searched with a header's text as it came, with no id
/// allocated per call (the hash and order of an id are those of its text).
impl std::borrow::Borrow<str> for TenantId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = ContextError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<TenantId> for String {
    fn from(id: TenantId) -> Self {
        id.0.to_string()
    }
}

impl FromStr for TenantId {
    type Err = ContextError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", self.0)
    }
}

/// W3C trace context as carried on the wire; the telemetry layer fills and reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceContext {
    /// `traceparent` header value.
    pub traceparent: Option<String>,
    /// `tracestate` header value.
    pub tracestate: Option<String>,
}

/// An end user, as a verified user token names them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UserIdentity {
    /// The user (`sub`).
    pub user: String,
    /// The terminal, when the token pins one.
    pub terminal: Option<String>,
}

/// Who is calling, as the runtime's auth layer established it; services decide with it whose
/// data a call may touch ([`RequestContext::act_as`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Caller {
    /// Nobody established who: a context read off the wire without the auth layer. Acts as
    /// no one.
    Anonymous,
    /// An end user of the tenant, with a verified user token: acts only as that user.
    User(UserIdentity),
    /// The tenant's backend, with the tenant credential: acts for any user of its tenant.
    Backend,
    /// One of the mesh's own processes, with the node credential.
    Node,
    /// Code in this process (a queue consumer, the platform itself): trusted.
    Process,
}

/// Who a call or an event acts for and which trace it belongs to.
///
/// Every generated stub takes one: a caller writes it into tonic metadata or AMQP headers, and
/// the receiving side rebuilds it from them, so the tenant and the trace follow a business
/// request through every process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestContext {
    /// The tenant (business line) the request belongs to.
    pub tenant: TenantId,
    /// Id of the business request; generated when absent.
    pub request_id: String,
    /// The tenant credential a caller presents; `None` inside a process that already
    /// authenticated the request.
    pub token: Option<String>,
    /// An end user's token as sent (`Bearer <JWT>`); `None` once checked, like `token`.
    pub authorization: Option<String>,
    /// Who is calling; set by the auth layer.
    pub caller: Caller,
    /// Trace context to continue.
    pub trace: TraceContext,
}

/// Why a [`RequestContext`] could not be built from incoming headers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// No tenant header at all.
    #[error("request carries no tenant (header `{}`)", headers::TENANT)]
    MissingTenant,
    /// A tenant header that is not a valid id.
    #[error(
        "invalid tenant id {0:?}: use 1-32 lowercase letters, digits, '-' or '_', starting with a letter"
    )]
    InvalidTenant(String),
    /// A header whose value is not visible ASCII.
    #[error("header `{0}` is not valid ASCII text")]
    InvalidHeader(&'static str),
}

impl From<ContextError> for tonic::Status {
    fn from(err: ContextError) -> Self {
        tonic::Status::unauthenticated(err.to_string())
    }
}

impl RequestContext {
    /// A fresh context for `tenant` with a new request id and no trace.
    pub fn new(tenant: TenantId) -> Self {
        Self {
            tenant,
            request_id: uuid::Uuid::new_v4().to_string(),
            token: None,
            authorization: None,
            caller: Caller::Process,
            trace: TraceContext::default(),
        }
    }

    /// The same context presenting an end user's token (`authorization: Bearer <jwt>`).
    pub fn with_user_token(mut self, jwt: &str) -> Self {
        self.authorization = Some(format!("Bearer {jwt}"));
        self
    }

    /// The user a call acts as: for an end user, the token's user (`requested` must be empty
    /// or the same); for a backend, a node or this process, `requested`. `field` names the
    /// request field in the refusal.
    ///
    /// ```
    /// use mesh_contract::{Caller, RequestContext, TenantId, UserIdentity};
    ///
    /// let mut ctx = RequestContext::new(TenantId::new("mall").unwrap());
    /// ctx.caller = Caller::User(UserIdentity { user: "alice".into(), terminal: None });
    /// assert_eq!(ctx.act_as("from_user", "").unwrap(), "alice");
    /// assert_eq!(ctx.act_as("from_user", "alice").unwrap(), "alice");
    /// let refused = ctx.act_as("from_user", "bob").unwrap_err();
    /// assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    /// ```
    pub fn act_as(&self, field: &'static str, requested: &str) -> Result<String, tonic::Status> {
        match &self.caller {
            Caller::User(who) if requested.is_empty() || requested == who.user => {
                Ok(who.user.clone())
            }
            Caller::User(who) => Err(tonic::Status::permission_denied(format!(
                "{field} {requested:?}: a user token acts only as its own user ({:?})",
                who.user
            ))),
            Caller::Backend | Caller::Node | Caller::Process => Ok(requested.to_owned()),
            Caller::Anonymous => Err(tonic::Status::unauthenticated(
                "the caller was not authenticated",
            )),
        }
    }

    /// The terminal a call acts for: the token's when it pins one (`requested` must then be
    /// empty or the same), else `requested`.
    pub fn act_for_terminal(
        &self,
        field: &'static str,
        requested: &str,
    ) -> Result<String, tonic::Status> {
        match &self.caller {
            Caller::User(UserIdentity {
                terminal: Some(terminal),
                ..
            }) if requested.is_empty() || requested == terminal => Ok(terminal.clone()),
            Caller::User(UserIdentity {
                terminal: Some(terminal),
                ..
            }) => Err(tonic::Status::permission_denied(format!(
                "{field} {requested:?}: this user token is for terminal {terminal:?}"
            ))),
            Caller::Anonymous => Err(tonic::Status::unauthenticated(
                "the caller was not authenticated",
            )),
            _ => Ok(requested.to_owned()),
        }
    }

    /// The same context carrying `token` as the caller's credential.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// This context as the receiver of an event sees it, whatever the transport: tenant,
    /// request and trace, no credential, and nobody established as the caller (what travels
    /// through a broker is only what its headers say).
    pub fn as_received(&self) -> Self {
        Self {
            token: None,
            authorization: None,
            caller: Caller::Anonymous,
            ..self.clone()
        }
    }

    /// Reads a context from (text) headers, whatever the transport.
    pub fn from_headers<'a>(
        mut get: impl FnMut(&'static str) -> Option<&'a str>,
    ) -> Result<Self, ContextError> {
        let tenant = TenantId::new(get(headers::TENANT).ok_or(ContextError::MissingTenant)?)?;
        let request_id = get(headers::REQUEST_ID)
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        Ok(Self {
            tenant,
            request_id,
            token: get(headers::TOKEN).map(str::to_owned),
            authorization: get(headers::AUTHORIZATION).map(str::to_owned),
            caller: Caller::Anonymous,
            trace: TraceContext {
                traceparent: get(headers::TRACEPARENT).map(str::to_owned),
                tracestate: get(headers::TRACESTATE).map(str::to_owned),
            },
        })
    }

    /// The headers this context travels as, in a stable order.
    pub fn to_headers(&self) -> Vec<(&'static str, &str)> {
        let mut out = vec![
            (headers::TENANT, self.tenant.as_str()),
            (headers::REQUEST_ID, self.request_id.as_str()),
        ];
        let optional = [
            (headers::TOKEN, &self.token),
            (headers::AUTHORIZATION, &self.authorization),
            (headers::TRACEPARENT, &self.trace.traceparent),
            (headers::TRACESTATE, &self.trace.tracestate),
        ];
        out.extend(
            optional
                .into_iter()
                .filter_map(|(name, value)| value.as_deref().map(|v| (name, v))),
        );
        out
    }

    /// Reads a context from tonic metadata.
    pub fn from_metadata(metadata: &MetadataMap) -> Result<Self, ContextError> {
        let mut bad_header = None;
        let ctx = Self::from_headers(|name| match metadata.get(name).map(|v| v.to_str()) {
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => {
                bad_header.get_or_insert(name);
                None
            }
            None => None,
        });
        match bad_header {
            Some(name) => Err(ContextError::InvalidHeader(name)),
            None => ctx,
        }
    }

    /// The context of an incoming tonic request: the one the runtime's layers attached after
    /// authenticating it, else the one its metadata carries.
    pub fn from_request<T>(request: &tonic::Request<T>) -> Result<Self, ContextError> {
        match request.extensions().get::<RequestContext>() {
            Some(ctx) => Ok(ctx.clone()),
            None => Self::from_metadata(request.metadata()),
        }
    }

    /// Writes this context into tonic metadata.
    pub fn inject(&self, metadata: &mut MetadataMap) -> Result<(), ContextError> {
        for (name, value) in self.to_headers() {
            let value =
                MetadataValue::try_from(value).map_err(|_| ContextError::InvalidHeader(name))?;
            metadata.insert(name, value);
        }
        Ok(())
    }
}

/// The node credential: what the mesh's own processes present to each other (message ->
/// locator, message -> gateway ...), and no tenant ever holds.
///
/// The runtime strips the credential a caller presented once it is checked, so it never
/// travels further (not to other services, not into events); a service calling on for a
/// tenant presents the node credential instead, for the same tenant, request and trace.
#[derive(Clone, Default)]
pub struct ServiceCredentials {
    node: Arc<std::sync::RwLock<Option<String>>>,
    /// The node's TLS client identity and the nodes' CA, when the hops between the mesh's
    /// processes use mutual TLS.
    tls: Arc<std::sync::RwLock<Option<tonic::transport::ClientTlsConfig>>>,
}

impl fmt::Debug for ServiceCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceCredentials")
            .field("node", &self.node.read().expect("lock").is_some())
            .finish_non_exhaustive()
    }
}

impl ServiceCredentials {
    /// Presents `token` as the node credential from now on.
    pub fn node(token: impl Into<String>) -> Self {
        let credentials = Self::default();
        credentials.set_node(token);
        credentials
    }

    /// Dials other nodes over mutual TLS with `tls` from now on (`https://` addresses).
    pub fn set_tls(&self, tls: tonic::transport::ClientTlsConfig) {
        *self.tls.write().expect("lock") = Some(tls);
    }

    /// An endpoint for another node at `url` (`http://` or `https://`): over mutual TLS when
    /// the URL says https and this node has a TLS identity.
    pub fn endpoint(
        &self,
        url: &str,
    ) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())?;
        match self.tls.read().expect("lock").clone() {
            Some(tls) if url.starts_with("https://") => endpoint.tls_config(tls),
            _ => Ok(endpoint),
        }
    }

    /// A fresh random node credential (244 random bits), for a mesh whose operator set none.
    pub fn fresh_token() -> String {
        format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        )
    }

    /// Replaces the node credential.
    pub fn set_node(&self, token: impl Into<String>) {
        *self.node.write().expect("lock") = Some(token.into());
    }

    /// `ctx` (same tenant, request and trace) carrying the node credential, for a call made on
    /// its behalf; without one if this process holds none.
    pub fn outbound(&self, ctx: &RequestContext) -> RequestContext {
        let mut out = ctx.clone();
        out.token = self.node.read().expect("lock").clone();
        out.authorization = None;
        out.caller = Caller::Node;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_validated() {
        for good in ["mall", "finance", "paipai", "b2-line_x"] {
            assert_eq!(TenantId::new(good).unwrap().as_str(), good);
        }
        for bad in ["", "Mall", "1mall", "mall.x", "mall x", &"a".repeat(33)] {
            assert_eq!(
                TenantId::new(bad),
                Err(ContextError::InvalidTenant(quoted(bad))),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn context_round_trips_through_metadata() {
        let mut ctx = RequestContext::new(TenantId::new("mall").unwrap()).with_token("s3cret");
        ctx.trace.traceparent =
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        let mut metadata = MetadataMap::new();
        ctx.inject(&mut metadata).unwrap();
        // who called is never read off the wire: the auth layer establishes it
        let sent = RequestContext {
            caller: Caller::Anonymous,
            ..ctx
        };
        assert_eq!(RequestContext::from_metadata(&metadata).unwrap(), sent);
    }

    #[test]
    fn missing_tenant_is_refused_with_the_header_name() {
        let err = RequestContext::from_metadata(&MetadataMap::new()).unwrap_err();
        assert_eq!(err, ContextError::MissingTenant);
        assert!(err.to_string().contains(headers::TENANT));
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn attached_context_wins_over_metadata() {
        let attached = RequestContext::new(TenantId::new("finance").unwrap());
        let mut request = tonic::Request::new(());
        request
            .metadata_mut()
            .insert(headers::TENANT, MetadataValue::from_static("mall"));
        request.extensions_mut().insert(attached.clone());
        assert_eq!(RequestContext::from_request(&request).unwrap(), attached);
    }
}

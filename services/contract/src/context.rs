use std::{fmt, str::FromStr, sync::Arc};

use tonic::metadata::{MetadataMap, MetadataValue};

/// Names of the headers that carry a [`RequestContext`] in tonic metadata and AMQP headers.
pub mod headers {
    /// The tenant a call or message acts for.
    pub const TENANT: &str = "x-mesh-tenant";
    /// The caller's tenant credential (checked by the runtime's auth layer).
    pub const TOKEN: &str = "x-mesh-token";
    /// Id of the business request, kept across every hop.
    pub const REQUEST_ID: &str = "x-mesh-request-id";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state.
    pub const TRACESTATE: &str = "tracestate";
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
            Err(ContextError::InvalidTenant(id.to_owned()))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
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
            trace: TraceContext::default(),
        }
    }

    /// The same context carrying `token` as the caller's credential.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
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

/// The credentials a node holds for the tenants it serves, which its services present on the
/// calls they make for a tenant (message -> locator, gateway -> locator ...).
///
/// The runtime strips the credential a caller presented once it is checked, so it never
/// travels further (not to other services, not into events); a service calling on acts with
/// the node's credential for the same tenant instead.
#[derive(Clone, Default)]
pub struct ServiceCredentials {
    tokens: Arc<std::sync::RwLock<std::collections::HashMap<TenantId, String>>>,
}

impl fmt::Debug for ServiceCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tenants: Vec<TenantId> = self.tokens.read().expect("lock").keys().cloned().collect();
        f.debug_struct("ServiceCredentials")
            .field("tenants", &tenants)
            .finish_non_exhaustive()
    }
}

impl ServiceCredentials {
    /// Holds `token` for `tenant` from now on.
    pub fn insert(&self, tenant: TenantId, token: impl Into<String>) {
        self.tokens
            .write()
            .expect("lock")
            .insert(tenant, token.into());
    }

    /// `ctx` (same tenant, request and trace) carrying the node's credential for its tenant,
    /// for a call made on its behalf; without one if the node holds none.
    pub fn outbound(&self, ctx: &RequestContext) -> RequestContext {
        let mut out = ctx.clone();
        out.token = self.tokens.read().expect("lock").get(&ctx.tenant).cloned();
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
                Err(ContextError::InvalidTenant(bad.to_owned())),
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
        assert_eq!(RequestContext::from_metadata(&metadata).unwrap(), ctx);
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

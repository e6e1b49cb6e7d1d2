//! The locator service: which access node (gateway) each connected terminal of a user is on,
//! so the message service can push to every terminal of a receiver.
//!
//! Where that knowledge lives is a [`Presence`]: this process's memory ([`MemoryPresence`],
//! one node) or Redis ([`RedisPresence`], several nodes sharing it: a terminal attached to any
//! node is found from every other). With Redis each node also says it is alive (a key that
//! expires unless renewed), and the terminals of a node that stopped saying so are forgotten
//! within seconds: a node killed without a goodbye does not leave its users looking online.
//!
//! Data isolation: the registry is keyed by the tenant of the authenticated
//! [`RequestContext`]; a tenant can neither see nor unregister another tenant's terminals.

use std::sync::Arc;

use mesh_api::locator::v1::{self, locator_server::Locator};
use mesh_contract::{RequestContext, fields::required};
use tonic::{Request, Response, Status};

mod presence;

pub use presence::{MemoryPresence, Presence, PresenceError, RedisPresence};

/// The service; clones share one registry.
#[derive(Clone)]
pub struct LocatorService {
    presence: Arc<dyn Presence>,
}

impl std::fmt::Debug for LocatorService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocatorService").finish_non_exhaustive()
    }
}

impl Default for LocatorService {
    /// A locator for one node: the registry in this process's memory.
    fn default() -> Self {
        Self::new(Arc::new(MemoryPresence::default()))
    }
}

impl LocatorService {
    /// A locator keeping its registry in `presence`.
    pub fn new(presence: Arc<dyn Presence>) -> Self {
        Self { presence }
    }
}

fn unavailable(err: PresenceError) -> Status {
    Status::unavailable(err.to_string())
}

#[tonic::async_trait]
impl Locator for LocatorService {
    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let request = request.into_inner();
        let request_cap = request.others_over;
        let location = request
            .location
            .ok_or_else(|| Status::invalid_argument("location is required"))?;
        required("location.user_id", &location.user_id)?;
        required("location.terminal_id", &location.terminal_id)?;
        required("location.node_address", &location.node_address)?;
        let cap = request_cap;
        // a terminal that reconnects (here or on another node) replaces its old location
        let (user, terminal) = (location.user_id.clone(), location.terminal_id.clone());
        let entries = self
            .presence
            .register(&ctx.tenant, location)
            .await
            .map_err(unavailable)?;
        // the others only when the caller's cap may be reached (a lookup checks each
        // entry's node): an attach far from it costs no second read
        let mut others = Vec::new();
        if cap > 0 && entries > cap as usize {
            others = self
                .presence
                .locate(&ctx.tenant, &user)
                .await
                .map_err(unavailable)?;
            others.retain(|t| t.terminal_id != terminal);
        }
        Ok(Response::new(v1::RegisterResponse { others }))
    }

    async fn unregister(
        &self,
        request: Request<v1::UnregisterRequest>,
    ) -> Result<Response<v1::UnregisterResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let r = request.into_inner();
        // only the node the terminal is on may remove it: a late unregister from the node it
        // left must not drop its new connection
        self.presence
            .unregister(&ctx.tenant, &r.user_id, &r.terminal_id, &r.node_id)
            .await
            .map_err(unavailable)?;
        Ok(Response::new(v1::UnregisterResponse {}))
    }

    async fn locate(
        &self,
        request: Request<v1::LocateRequest>,
    ) -> Result<Response<v1::LocateResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let terminals = self
            .presence
            .locate(&ctx.tenant, &request.get_ref().user_id)
            .await
            .map_err(unavailable)?;
        Ok(Response::new(v1::LocateResponse { terminals }))
    }
}

#[cfg(test)]
mod tests {
    use mesh_contract::TenantId;

    use super::*;

    fn request<T>(tenant: &str, body: T) -> Request<T> {
        let mut request = Request::new(body);
        request
            .extensions_mut()
            .insert(RequestContext::new(TenantId::new(tenant).unwrap()));
        request
    }

    fn location(terminal: &str, node: &str) -> v1::RegisterRequest {
        v1::RegisterRequest {
            location: Some(v1::TerminalLocation {
                user_id: "bob".into(),
                terminal_id: terminal.into(),
                node_id: node.into(),
                node_address: format!("http://{node}"),
                ..Default::default()
            }),
            others_over: 0,
        }
    }

    async fn located(service: &LocatorService, tenant: &str) -> Vec<(String, String)> {
        let found = service
            .locate(request(
                tenant,
                v1::LocateRequest {
                    user_id: "bob".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        found
            .terminals
            .into_iter()
            .map(|t| (t.terminal_id, t.node_id))
            .collect()
    }

    #[tokio::test]
    async fn terminals_are_located_per_tenant_and_moves_survive_late_unregisters() {
        let service = LocatorService::default();
        service
            .register(request("mall", location("phone", "a")))
            .await
            .unwrap();
        service
            .register(request("mall", location("desktop", "a")))
            .await
            .unwrap();
        assert_eq!(
            located(&service, "mall").await,
            [("desktop".into(), "a".into()), ("phone".into(), "a".into())]
        );
        assert!(
            located(&service, "paipai").await.is_empty(),
            "another tenant sees nothing"
        );

        // the phone moves to node b; node a's late unregister does not remove it
        service
            .register(request("mall", location("phone", "b")))
            .await
            .unwrap();
        let unregister = |node: &str| v1::UnregisterRequest {
            user_id: "bob".into(),
            terminal_id: "phone".into(),
            node_id: node.into(),
        };
        service
            .unregister(request("mall", unregister("a")))
            .await
            .unwrap();
        service
            .unregister(request("paipai", unregister("b")))
            .await
            .unwrap();
        assert_eq!(
            located(&service, "mall").await,
            [("desktop".into(), "a".into()), ("phone".into(), "b".into())]
        );
        service
            .unregister(request("mall", unregister("b")))
            .await
            .unwrap();
        assert_eq!(
            located(&service, "mall").await,
            [("desktop".into(), "a".into())]
        );
    }

    #[tokio::test]
    async fn a_registration_without_an_address_is_refused() {
        let service = LocatorService::default();
        let mut bad = location("phone", "a");
        bad.location.as_mut().unwrap().node_address.clear();
        let status = service.register(request("mall", bad)).await.unwrap_err();
        assert_eq!(status.message(), "location.node_address is required");
    }
}

//! The browsers' access of `mesh up` (`[web]` in `ops/mesh.toml`): every contract call as
//! HTTP/JSON through the front door's own stack, the admin API for the ops console, the pages.

use mesh_runtime::front_door::FrontDoor;
use mesh_web::{Routes, Upstream, WebAccess};
use tower::util::BoxCloneSyncService;

/// The access: tenant calls go through `front` (authenticated, admitted, watched, routed to
/// the tenant's worker, as gRPC calls are); the admin API's calls to `admin`, when this node
/// serves one (without an ops credential the console has nothing to call); platforms'
/// callbacks to the tenants' channel services, with `node_credential`.
pub fn access<A>(
    front: &FrontDoor,
    admin: Option<A>,
    max_body: usize,
    node_credential: &str,
) -> anyhow::Result<WebAccess>
where
    A: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    A::Future: Send + 'static,
{
    let admin_contract = &mesh_api::admin::v1::contract::SPEC;
    let mut contracts = mesh_api::CONTRACTS.to_vec();
    if admin.is_some() {
        contracts.push(admin_contract);
    }
    let routes = Routes::new(&contracts, mesh_api::FILE_DESCRIPTOR_SET)?;
    let calls: Upstream = BoxCloneSyncService::new(front.clone().stack());
    // third-party platforms' callbacks too, passed on as the node (their signature is theirs)
    let mut access = WebAccess::new(routes, calls)
        .with_max_body(max_body)
        .with_channels(node_credential)
        // apps on other origins, as each tenant's file allows them now
        .with_cors(front.allowed_origins());
    if let Some(admin) = admin {
        access = access.with_admin(admin_contract, BoxCloneSyncService::new(admin));
    }
    Ok(access)
}

//! What the runtime's integration tests share: the shipped tenants and tenant folders made on
//! the fly.

#![allow(dead_code)]

use std::path::PathBuf;

use mesh_contract::{RequestContext, TenantId};
use mesh_runtime::Tenants;

/// The repository's `tenants/` folder.
pub fn shipped() -> PathBuf {
    mesh_testkit::shipped_tenants()
}

/// The shipped tenants, loaded against the repository's contracts.
pub fn tenants() -> Tenants {
    Tenants::load(&shipped(), mesh_api::CONTRACTS).unwrap()
}

/// A context for a shipped tenant, with its (development) credential.
pub fn ctx(tenants: &Tenants, tenant: &str) -> RequestContext {
    let token = tenants
        .get(tenant)
        .unwrap()
        .credentials
        .token
        .clone()
        .unwrap();
    RequestContext::new(TenantId::new(tenant).unwrap()).with_token(token)
}

/// A tenants folder holding the shipped defaults and the given files, as given.
pub fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    files
        .iter()
        .fold(
            mesh_testkit::TenantsFolder::new(),
            |folder, (name, body)| folder.file(name, body),
        )
        .into_dir()
}

/// Serves `front` on a loopback port and connects to it.
pub async fn serve_front_door(
    front: mesh_runtime::front_door::FrontDoor,
) -> tonic::transport::Channel {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(front.serve(listener, std::future::pending()));
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

//! The front door as linkerd's `app/*` crates shape their parts: a [`Config`] of plain values,
//! [`Config::build`] making the [`FrontDoor`], [`FrontDoor::run`] serving it.

use crate::{
    FrontDoor, ListenerSettings, TenantDirectory, connections, layers::Catalogue, probes::Probes,
    upstream::UpstreamLimits,
};

/// What a front door is told, in one value (`mesh up` fills it from the deployment file and
/// its tenants): [`Config::build`] makes the [`FrontDoor`], which the supervisor, the control
/// plane and the browsers' access are handed, and [`FrontDoor::run`] serves it on its
/// listener. (The shape of linkerd's `app/*` crates: config, build, run.)
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use mesh_front_door::Config;
/// use mesh_stack::layers::Catalogue;
///
/// let door = Config::new(Catalogue(&[])).build();
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// // serves until the future given resolves: here at once
/// door.run(listener, std::future::ready(())).await;
/// # }
/// ```
#[derive(Clone)]
pub struct Config {
    /// The methods it knows (their tiers, for the rules; their audiences, when it admits).
    pub catalogue: Catalogue,
    /// Authenticates and admits every call before routing it, when set.
    pub directory: Option<TenantDirectory>,
    /// Mutual TLS towards the workers.
    pub node_tls: Option<crate::tls::NodeTls>,
    /// Whether answers to a tenant's backend name the worker (`x-mesh-worker`).
    pub advertise_workers: bool,
    /// Connections to each worker.
    pub upstream: UpstreamLimits,
    /// Health and reflection.
    pub probes: Probes,
    /// Its listener's limits (connection caps, keepalive, preface timeout).
    pub connections: connections::ConnectionLimits,
    /// TLS towards callers, when set.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Config {
    /// A front door knowing `catalogue`, everything else at its default (no authentication
    /// here, plain HTTP/2, the default limits).
    pub fn new(catalogue: Catalogue) -> Self {
        Self {
            catalogue,
            directory: None,
            node_tls: None,
            advertise_workers: false,
            upstream: UpstreamLimits::default(),
            probes: Probes::new(catalogue.0, None),
            connections: Default::default(),
            tls: None,
        }
    }

    /// The front door this config describes.
    pub fn build(self) -> FrontDoor {
        let mut door = FrontDoor::new(self.catalogue)
            .with_node_tls(self.node_tls)
            .with_advertised_workers(self.advertise_workers)
            .with_upstream(self.upstream)
            .with_probes(self.probes);
        if let Some(directory) = self.directory {
            door = door.with_directory(directory);
        }
        door.listener = ListenerSettings {
            limits: self.connections,
            tls: self.tls,
        };
        door
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("directory", &self.directory.is_some())
            .field("node_tls", &self.node_tls.is_some())
            .field("advertise_workers", &self.advertise_workers)
            .field("upstream", &self.upstream)
            .field("connections", &self.connections)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

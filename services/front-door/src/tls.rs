//! TLS on the mesh's listeners (the front door and the admin API), with rustls.
//!
//! Off unless `ops/mesh.toml` names a certificate and its key; with `client_ca_file` as well,
//! every client must present a certificate that CA signed (mutual TLS: other nodes, proxies,
//! the ops network). ALPN offers `h2` only: every listener speaks gRPC over HTTP/2.
//!
//! ```toml
//! [tls]
//! cert_file = "/etc/mesh/front.pem"      # the chain, leaf first
//! key_file = "/etc/mesh/front.key"       # PKCS#8, PKCS#1 or SEC1
//! # client_ca_file = "/etc/mesh/clients-ca.pem"
//! # node_ca_file = "/etc/mesh/nodes-ca.pem"   # mutual TLS between the mesh's processes
//! ```
//!
//! Environment: `MESH_TLS_CERT_FILE`, `MESH_TLS_KEY_FILE`, `MESH_TLS_CLIENT_CA_FILE`,
//! `MESH_TLS_NODE_CA_FILE`.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
/// What accepts TLS connections on a listener (tokio-rustls's), as [`LoadTls`] builds it.
pub use tokio_rustls::TlsAcceptor;

pub use mesh_config::deploy::TlsConfig;

/// What is wrong with the TLS files, naming the `[tls]` key.
#[derive(Debug, thiserror::Error)]
#[error("tls.{field}: {message}")]
pub struct TlsError {
    /// The key in `[tls]`.
    pub field: &'static str,
    /// Why.
    pub message: String,
}

fn error(field: &'static str, message: impl Into<String>) -> TlsError {
    TlsError {
        field,
        message: message.into(),
    }
}

/// Loads what the `[tls]` table names (the table itself is plain config, in `mesh-config`).
pub trait LoadTls {
    /// Mutual TLS between the mesh's processes, `None` unless `node_ca_file` is set.
    fn node_tls(&self) -> Result<Option<NodeTls>, TlsError>;

    /// The acceptor for the mesh's gRPC listeners (ALPN `h2`), `None` when TLS is off.
    fn acceptor(&self) -> Result<Option<TlsAcceptor>, TlsError>;

    /// The acceptor for the browsers' access: the same certificate, offering `h2` and
    /// `http/1.1` (a client that speaks only HTTP/1.1 is not refused in the handshake).
    fn web_acceptor(&self) -> Result<Option<TlsAcceptor>, TlsError>;
}

impl LoadTls for TlsConfig {
    fn node_tls(&self) -> Result<Option<NodeTls>, TlsError> {
        let Some(ca) = &self.node_ca_file else {
            return Ok(None);
        };
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => NodeTls::load(cert, key, ca).map(Some),
            _ => Err(error(
                "node_ca_file",
                "needs cert_file and key_file: they are each node's certificate too",
            )),
        }
    }

    fn acceptor(&self) -> Result<Option<TlsAcceptor>, TlsError> {
        accepting(self, &[b"h2"])
    }

    fn web_acceptor(&self) -> Result<Option<TlsAcceptor>, TlsError> {
        accepting(self, &[b"h2", b"http/1.1"])
    }
}

/// An acceptor for `tls`'s certificate (and client CA), offering `protocols` by ALPN.
fn accepting(tls: &TlsConfig, protocols: &[&[u8]]) -> Result<Option<TlsAcceptor>, TlsError> {
    {
        let (cert_file, key_file) = match (&tls.cert_file, &tls.key_file) {
            (None, None) if tls.client_ca_file.is_some() => {
                return Err(error(
                    "client_ca_file",
                    "needs cert_file and key_file: client certificates are asked for over TLS",
                ));
            }
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            (None, Some(_)) => return Err(error("cert_file", "is missing (key_file is set)")),
            (Some(_), None) => return Err(error("key_file", "is missing (cert_file is set)")),
        };
        let read = |field, path: &PathBuf| {
            std::fs::read(path).map_err(|e| error(field, format!("{}: {e}", path.display())))
        };
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&read("cert_file", cert_file)?)
                .collect::<Result<_, _>>()
                .map_err(|e| error("cert_file", format!("{}: {e}", cert_file.display())))?;
        if chain.is_empty() {
            return Err(error(
                "cert_file",
                format!("{} holds no certificate", cert_file.display()),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&read("key_file", key_file)?)
            .map_err(|e| error("key_file", format!("{}: {e}", key_file.display())))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| error("cert_file", e.to_string()))?;
        let builder = match &tls.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(ca_file) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(&read("client_ca_file", ca_file)?) {
                    let cert = cert.map_err(|e| {
                        error("client_ca_file", format!("{}: {e}", ca_file.display()))
                    })?;
                    roots.add(cert).map_err(|e| {
                        error("client_ca_file", format!("{}: {e}", ca_file.display()))
                    })?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| error("client_ca_file", format!("{}: {e}", ca_file.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            error(
                "key_file",
                format!(
                    "{} does not fit {}: {e}",
                    key_file.display(),
                    cert_file.display()
                ),
            )
        })?;
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Ok(Some(TlsAcceptor::from(Arc::new(config))))
    }
}

/// Environment variables carrying [`NodeTls`] to a worker (`mesh up` sets them).
pub mod node_env {
    /// The node's certificate chain (PEM file).
    pub const CERT_FILE: &str = "MESH_NODE_TLS_CERT_FILE";
    /// Its key (PEM file).
    pub const KEY_FILE: &str = "MESH_NODE_TLS_KEY_FILE";
    /// The CA every node's certificate is signed by (PEM file).
    pub const CA_FILE: &str = "MESH_NODE_TLS_CA_FILE";
}

/// Mutual TLS on the hops between the mesh's own processes (front door to workers, worker to
/// worker): each serves with its certificate and asks the caller for one signed by the nodes'
/// CA; each dials with its certificate and trusts only that CA. On with `[tls] node_ca_file`
/// (the node certificate is `cert_file`, which must then name the workers' address, e.g.
/// `127.0.0.1`).
#[derive(Clone)]
pub struct NodeTls {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
    files: [PathBuf; 3],
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("cert_file", &self.files[0])
            .field("ca_file", &self.files[2])
            .finish_non_exhaustive()
    }
}

impl NodeTls {
    /// Reads the node's certificate, key and the nodes' CA.
    pub fn load(cert_file: &Path, key_file: &Path, ca_file: &Path) -> Result<Self, TlsError> {
        let read = |field, path: &Path| {
            std::fs::read(path).map_err(|e| error(field, format!("{}: {e}", path.display())))
        };
        Ok(Self {
            cert: read("cert_file", cert_file)?,
            key: read("key_file", key_file)?,
            ca: read("node_ca_file", ca_file)?,
            files: [
                cert_file.to_path_buf(),
                key_file.to_path_buf(),
                ca_file.to_path_buf(),
            ],
        })
    }

    /// What `mesh up` hands its workers ([`node_env`]).
    pub fn to_env(&self) -> Vec<(String, String)> {
        [node_env::CERT_FILE, node_env::KEY_FILE, node_env::CA_FILE]
            .into_iter()
            .zip(&self.files)
            .map(|(name, file)| (name.to_owned(), file.display().to_string()))
            .collect()
    }

    /// From the worker's environment ([`node_env`], read by figment with every other setting
    /// of the worker); `None` when unset (the hops are plain HTTP/2).
    pub fn from_worker_env(env: &mesh_config::worker::WorkerEnv) -> Result<Option<Self>, TlsError> {
        match (
            &env.node_tls_cert_file,
            &env.node_tls_key_file,
            &env.node_tls_ca_file,
        ) {
            (Some(cert), Some(key), Some(ca)) => {
                Self::load(Path::new(cert), Path::new(key), Path::new(ca)).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// How a node serves: its certificate, and a client certificate the nodes' CA signed
    /// required of every caller.
    pub fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca))
    }

    /// How a node dials another: presenting its certificate, trusting the nodes' CA only.
    pub fn client_config(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.cert, &self.key))
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca))
    }

    /// The URL a node at `address` (`127.0.0.1:4567`) is dialled at.
    pub fn url(tls: Option<&Self>, address: &str) -> String {
        match tls {
            Some(_) => format!("https://{address}"),
            None => format!("http://{address}"),
        }
    }

    /// An endpoint for `url` (`http://` or `https://`), over mutual TLS when `tls` is set and
    /// the URL says https.
    pub fn endpoint(
        tls: Option<&Self>,
        url: &str,
    ) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())?;
        match tls {
            Some(tls) if url.starts_with("https://") => endpoint.tls_config(tls.client_config()),
            _ => Ok(endpoint),
        }
    }
}

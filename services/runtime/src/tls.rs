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
//! # client_ca_file = "/etc/mesh/nodes-ca.pem"
//! ```
//!
//! Environment: `MESH_TLS_CERT_FILE`, `MESH_TLS_KEY_FILE`, `MESH_TLS_CLIENT_CA_FILE`.

use std::{path::PathBuf, sync::Arc};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;

/// The `[tls]` table of the deployment config.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the leaf.
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates; when set, clients must present a certificate one of them signed.
    pub client_ca_file: Option<PathBuf>,
}

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

impl TlsConfig {
    /// Whether TLS is configured at all.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }

    /// The acceptor for the listeners, `None` when TLS is off.
    pub fn acceptor(&self) -> Result<Option<TlsAcceptor>, TlsError> {
        let (cert_file, key_file) = match (&self.cert_file, &self.key_file) {
            (None, None) if self.client_ca_file.is_some() => {
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
        let builder = match &self.client_ca_file {
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
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Some(TlsAcceptor::from(Arc::new(config))))
    }
}

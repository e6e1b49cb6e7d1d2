//! Reaching the admin API with the ops credential, and what goes wrong doing so.

use std::{path::PathBuf, time::Duration};

use mesh_api::admin::v1::admin_client::AdminClient;
use mesh_config::tenant::{ConfigError, Tenants, check_new, check_update, group_of};
use tonic::{
    Code, Request, Status,
    metadata::AsciiMetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

/// How long to wait for the mesh to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a command failed; each kind has its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The command line does not say what to do.
    #[error("{0}")]
    Usage(String),
    /// A file named on the command line cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No ops credential was given.
    #[error(
        "no ops credential: pass --token or set MESH_OPS_TOKEN (the admin token `mesh up` was configured with)"
    )]
    NoCredential,
    /// A tenant file is invalid (checked locally).
    #[error("{0}")]
    InvalidTenant(ConfigError),
    /// Nothing answers at the admin address.
    #[error(
        "cannot reach the mesh admin API at {admin}: {reason}\n  is `mesh up` running, with an ops credential configured (ops/mesh.toml)? --admin / MESH_ADMIN say where it listens"
    )]
    Unreachable {
        /// The address tried.
        admin: String,
        /// The transport's reason.
        reason: String,
    },
    /// TLS with the admin API failed (its certificate is not trusted, or this client has no
    /// certificate the mesh accepts).
    #[error(
        "TLS with the mesh admin API at {admin} failed: {reason}\n  --ca-file names the CA that signed the mesh's certificate; --cert-file and --key-file this client's certificate, when the mesh asks for one"
    )]
    Tls {
        /// The address tried.
        admin: String,
        /// What failed.
        reason: String,
    },
    /// The mesh refused the credential.
    #[error("the mesh refused the ops credential: {0}")]
    Credential(String),
    /// The mesh refused the request.
    #[error("{0}")]
    Refused(String),
}

impl CtlError {
    /// The process exit code of this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Refused(_) | CtlError::InvalidTenant(_) => 1,
            CtlError::Usage(_) | CtlError::File { .. } | CtlError::NoCredential => 2,
            CtlError::Unreachable { .. } | CtlError::Tls { .. } => 3,
            CtlError::Credential(_) => 4,
        }
    }

    /// The error for a status the admin API answered.
    pub fn from_status(status: Status, admin: &str) -> Self {
        // a connection the mesh closed under the call (a TLS alert, say) comes back as an
        // unknown status whose source is the transport's error: unreachable, saying why
        // (unknown, or cancelled when the connection went before the call was sent)
        // (an h2 protocol error when a plain client met a TLS server); an answer from the mesh
        // itself has no source
        // (the admin API never answers CANCELLED itself: a cancelled call is one whose
        // connection went before it was sent)
        let transport = match status.code() {
            Code::Cancelled => true,
            Code::Unknown | Code::Internal => std::error::Error::source(&status).is_some(),
            _ => false,
        };
        match status.code() {
            Code::Unavailable => CtlError::Unreachable {
                admin: admin.to_owned(),
                reason: status.message().to_owned(),
            },
            _ if transport && admin.starts_with("https://") => CtlError::Tls {
                admin: admin.to_owned(),
                reason: format!(
                    "the mesh closed the connection under the first call ({}): it asks for a client certificate this client did not present, or one its CA did not sign",
                    std::error::Error::source(&status)
                        .map_or_else(|| status.message().to_owned(), causes)
                ),
            },
            _ if transport => unreachable(
                admin,
                std::error::Error::source(&status)
                    .map_or_else(|| status.message().to_owned(), causes),
            ),
            Code::Unauthenticated => CtlError::Credential(status.message().to_owned()),
            _ => CtlError::Refused(status.message().to_owned()),
        }
    }
}

/// The mesh could not be reached at `admin` for `reason`: a TLS failure said as one, and a
/// plain address that meets a TLS server pointed to https.
fn unreachable(admin: &str, reason: String) -> CtlError {
    let lower = reason.to_lowercase();
    let tls = ["certificate", "unknownissuer", "handshake", "alert", "tls"];
    if tls.iter().any(|word| lower.contains(word)) {
        return CtlError::Tls {
            admin: admin.to_owned(),
            reason,
        };
    }
    let garbled = ["broken pipe", "connection reset", "frame", "h2 protocol"];
    let reason = if !admin.starts_with("https://") && garbled.iter().any(|w| lower.contains(w)) {
        format!("{reason} (if the admin API serves TLS, its address is https://...)")
    } else {
        reason
    };
    CtlError::Unreachable {
        admin: admin.to_owned(),
        reason,
    }
}

/// An error and its causes, outermost first, as one line.
fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(AsciiMetadataValue);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// The admin client `meshctl` uses.
pub type Admin = AdminClient<InterceptedService<Channel, Bearer>>;

/// How to trust the admin API over TLS (`https://` addresses).
#[derive(Clone, Debug, Default)]
pub struct AdminTls {
    /// PEM CA that signed the mesh's certificate (else the system's roots are not used:
    /// nothing is trusted).
    pub ca_file: Option<PathBuf>,
    /// This client's certificate and key, when the mesh asks for one (mutual TLS).
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl AdminTls {
    fn config(&self, host: &str) -> Result<ClientTlsConfig, CtlError> {
        // a file that is not what its flag says is named now, not as a handshake failure later
        let read = |path: &PathBuf, flag: &str, marker: &str, what: &str| {
            let pem = std::fs::read(path).map_err(|source| CtlError::File {
                path: path.clone(),
                source,
            })?;
            if !String::from_utf8_lossy(&pem).contains(marker) {
                return Err(CtlError::Usage(format!(
                    "{flag} {} holds no PEM {what}",
                    path.display()
                )));
            }
            Ok(pem)
        };
        let certificate = ("-----BEGIN CERTIFICATE-----", "certificate");
        let mut config = ClientTlsConfig::new().domain_name(host);
        if let Some(ca) = &self.ca_file {
            let pem = read(ca, "--ca-file", certificate.0, certificate.1)?;
            config = config.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some((cert, key)) = &self.identity {
            let cert = read(cert, "--cert-file", certificate.0, certificate.1)?;
            let key = read(key, "--key-file", "PRIVATE KEY-----", "private key")?;
            config = config.identity(Identity::from_pem(cert, key));
        }
        Ok(config)
    }
}

/// The admin API at `admin` (`host:port`, `http://` or `https://`), with the ops credential.
pub async fn connect(admin: &str, token: Option<&str>, tls: &AdminTls) -> Result<Admin, CtlError> {
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or(CtlError::NoCredential)?;
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| CtlError::Usage("the ops credential must be printable ASCII".into()))?;
    let url = if admin.contains("://") {
        admin.to_owned()
    } else {
        format!("http://{admin}")
    };
    let mut endpoint = Endpoint::from_shared(url)
        .map_err(|e| CtlError::Usage(format!("--admin {admin:?} is not an address: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT);
    if endpoint.uri().scheme_str() == Some("https") {
        let host = endpoint.uri().host().unwrap_or_default().to_owned();
        endpoint = endpoint
            .tls_config(tls.config(&host)?)
            .map_err(|e| CtlError::Usage(format!("TLS for --admin {admin:?}: {e}")))?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        unreachable(
            admin,
            std::error::Error::source(&e).map_or_else(|| e.to_string(), causes),
        )
    })?;
    Ok(AdminClient::with_interceptor(channel, Bearer(bearer)))
}

/// `tenant check FILE --tenants DIR`: the same validation the mesh runs, without a mesh.
/// Answers the tenant id, its process group, and whether the file would update a tenant of
/// the folder (an edited copy of one of its files: a dry run of `tenant update`).
pub fn check_locally(
    file: &std::path::Path,
    dir: &std::path::Path,
) -> Result<(String, String, bool), CtlError> {
    let catalogue = mesh_api::CONTRACTS;
    let inside = |f: &std::path::Path| {
        f.parent()
            .and_then(|p| p.canonicalize().ok())
            .zip(dir.canonicalize().ok())
            .is_some_and(|(a, b)| a == b)
    };
    if inside(file) {
        // already in the folder: the folder must load as a whole, as `mesh up` loads it
        let tenants = Tenants::load(dir, catalogue).map_err(CtlError::InvalidTenant)?;
        let config = tenants
            .files
            .iter()
            .find(|(_, f)| f.file_name() == file.file_name())
            .and_then(|(id, _)| tenants.get(id))
            .ok_or_else(|| CtlError::File {
                path: file.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not a tenant file of that folder",
                ),
            })?;
        return Ok((config.id.to_string(), group_of(config), false));
    }
    let content = std::fs::read_to_string(file).map_err(|source| CtlError::File {
        path: file.to_path_buf(),
        source,
    })?;
    let existing = Tenants::load(dir, catalogue).map_err(CtlError::InvalidTenant)?;
    let file_name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let updates = dir.join(&file_name).exists();
    let config = if updates {
        check_update(dir, &existing, &file_name, &content, catalogue)
    } else {
        check_new(dir, &existing, &file_name, &content, catalogue)
    }
    .map_err(CtlError::InvalidTenant)?;
    Ok((config.id.to_string(), group_of(&config), updates))
}

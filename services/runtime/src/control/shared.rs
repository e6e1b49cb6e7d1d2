//! State shared by the nodes of one mesh, in Redis: the tenant registry
//! (`<prefix>:control:tenants`, each tenant's file; the switch state has versioned entries of
//! its own, [`super::shared_switches`]); the prefix (`[state] redis_prefix`, `mesh` by default) keeps several meshes
//! on one Redis apart. A node saves every change there and announces it (`PUBLISH <key>:changed`); every
//! other node loads it and applies it. `meshctl` pointed at any node changes them all.
//!
//! The node's own files (`switches.json`, the tenants folder) stay its copy for a restart
//! while Redis is away.
//!
//! The tenant registry is **sealed** with a key derived from the node credential
//! (ChaCha20-Poly1305): tenant files may hold secrets (an inline development credential, a
//! user-token signing key), and whoever reads Redis must not read them; nor can whoever writes
//! Redis add a tenant of their own making (a value that does not open with the key is ignored
//! and logged). Only the nodes, which hold the node credential, read and write it.

use std::{collections::BTreeMap, marker::PhantomData, time::Duration};

use futures::StreamExt;
use mesh_contract::TenantId;
use serde::{Serialize, de::DeserializeOwned};

use crate::supervisor::protocol::TenantSource;

pub use super::shared_switches::SharedSwitches;

/// Every tenant of the mesh, with its file.
pub type SharedTenants = Shared<BTreeMap<TenantId, TenantSource>>;

impl SharedTenants {
    /// The tenant registry of the mesh `prefix` at the Redis at `url`, sealed with a key
    /// derived from `node_credential` (the one every node of the mesh holds).
    pub async fn connect(
        url: &str,
        prefix: &str,
        node_credential: &str,
    ) -> Result<Self, SharedError> {
        let mut shared = Self::at(url, format!("{prefix}:control:tenants")).await?;
        shared.seal = Some(std::sync::Arc::new(Seal::new(node_credential)));
        Ok(shared)
    }
}

/// What seals a shared value: ChaCha20-Poly1305 under a key derived from the node credential.
struct Seal(ring::aead::LessSafeKey);

/// What a sealed value starts with.
const SEALED: &[u8] = b"sealed1:";

impl Seal {
    fn new(node_credential: &str) -> Self {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(b"mesh shared tenant registry v1\0");
        context.update(node_credential.as_bytes());
        let key =
            ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, context.finish().as_ref())
                .expect("a SHA-256 digest is a ChaCha20 key");
        Self(ring::aead::LessSafeKey::new(key))
    }

    /// `SEALED`, a random nonce, then the sealed bytes.
    fn seal(&self, plain: &[u8]) -> Vec<u8> {
        use ring::rand::SecureRandom;
        let mut nonce = [0u8; ring::aead::NONCE_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system's random source");
        let mut sealed = plain.to_vec();
        self.0
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::empty(),
                &mut sealed,
            )
            .expect("sealing in memory");
        [SEALED, &nonce, &sealed].concat()
    }

    /// The bytes [`Seal::seal`] sealed, if this key sealed them.
    fn open(&self, value: &[u8]) -> Option<Vec<u8>> {
        let rest = value.strip_prefix(SEALED)?;
        if rest.len() < ring::aead::NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = rest.split_at(ring::aead::NONCE_LEN);
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, ring::aead::Aad::empty(), &mut sealed)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// Why the shared state could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("shared state (Redis {url}): {message}")]
pub struct SharedError {
    url: String,
    message: String,
}

impl SharedError {
    /// What went wrong with the Redis at `url`.
    pub fn new(url: &str, message: impl std::fmt::Display) -> Self {
        Self {
            url: url.to_owned(),
            message: message.to_string(),
        }
    }
}

/// One value the nodes of one mesh share, kept under one Redis key.
pub struct Shared<T> {
    url: String,
    key: String,
    client: redis::Client,
    connection: redis::aio::ConnectionManager,
    /// This node, so it does not apply its own announcements.
    origin: String,
    /// Seals the value in Redis, when it may hold secrets.
    seal: Option<std::sync::Arc<Seal>>,
    value: PhantomData<fn() -> T>,
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self {
            url: self.url.clone(),
            key: self.key.clone(),
            client: self.client.clone(),
            connection: self.connection.clone(),
            origin: self.origin.clone(),
            seal: self.seal.clone(),
            value: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("url", &self.url)
            .field("key", &self.key)
            .field("origin", &self.origin)
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Shared<T> {
    async fn at(url: &str, key: String) -> Result<Self, SharedError> {
        let error = |e: redis::RedisError| SharedError {
            url: url.to_owned(),
            message: e.to_string(),
        };
        let client = redis::Client::open(url).map_err(error)?;
        let connection = client.get_connection_manager().await.map_err(error)?;
        Ok(Self {
            url: url.to_owned(),
            key,
            client,
            connection,
            origin: mesh_contract::ServiceCredentials::fresh_token(),
            seal: None,
            value: PhantomData,
        })
    }

    fn channel(&self) -> String {
        format!("{}:changed", self.key)
    }

    fn error(&self, e: impl std::fmt::Display) -> SharedError {
        SharedError {
            url: self.url.clone(),
            message: e.to_string(),
        }
    }

    /// The value every node follows, if any node saved it yet.
    pub async fn load(&self) -> Result<Option<T>, SharedError> {
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&self.key)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(|e| self.error(e))?;
        let Some(raw) = raw else { return Ok(None) };
        let plain = match &self.seal {
            None => raw,
            Some(seal) => match seal.open(&raw) {
                Some(plain) => plain,
                None => {
                    // written by something without the node credential (or another mesh):
                    // never applied
                    tracing::warn!(key = %self.key, "shared state not sealed with this mesh's node credential: ignored");
                    return Ok(None);
                }
            },
        };
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(|e| self.error(e))
    }

    /// Saves `value` for every node and tells them.
    pub async fn publish(&self, value: &T) -> Result<(), SharedError> {
        let plain = serde_json::to_vec(value).map_err(|e| self.error(e))?;
        let text = match &self.seal {
            Some(seal) => seal.seal(&plain),
            None => plain,
        };
        redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(&self.key)
            .arg(text)
            .ignore()
            .cmd("PUBLISH")
            .arg(self.channel())
            .arg(&self.origin)
            .ignore()
            .query_async::<()>(&mut self.connection.clone())
            .await
            .map_err(|e| self.error(e))
    }

    /// Calls `changed` with the shared value each time another node changes it, for ever: a
    /// lost subscription is made again (and the value loaded, in case a change was missed
    /// meanwhile).
    pub async fn follow(self, changed: impl Fn(T) + Send + 'static) {
        let mut pause = Duration::from_millis(100);
        loop {
            match self.client.get_async_pubsub().await {
                Ok(mut pubsub) => {
                    if let Err(err) = pubsub.subscribe(self.channel()).await {
                        tracing::warn!(error = %err, "subscribing to shared state changes");
                    } else {
                        pause = Duration::from_millis(100);
                        if let Ok(Some(value)) = self.load().await {
                            changed(value);
                        }
                        let mut messages = pubsub.on_message();
                        while let Some(message) = messages.next().await {
                            let from: String = message.get_payload().unwrap_or_default();
                            if from == self.origin {
                                continue;
                            }
                            match self.load().await {
                                Ok(Some(value)) => changed(value),
                                Ok(None) => {}
                                Err(err) => tracing::warn!(error = %err, "loading shared state"),
                            }
                        }
                    }
                }
                Err(err) => tracing::warn!(error = %err, "connecting for shared state changes"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
}

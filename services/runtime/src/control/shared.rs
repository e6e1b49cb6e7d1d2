//! State shared by the nodes of one mesh, in Redis: the tenant registry
//! (`<prefix>:control:tenants`, each tenant's file; the switch state has versioned entries of
//! its own, [`super::shared_switches`]); the prefix (`[state] redis_prefix`, `mesh` by default) keeps several meshes
//! on one Redis apart. A node saves every change there and announces it (`PUBLISH <key>:changed`); every
//! other node loads it and applies it. `meshctl` pointed at any node changes them all.
//!
//! The node's own files (`switches.json`, the tenants folder) stay its copy for a restart
//! while Redis is away.

use std::{collections::BTreeMap, marker::PhantomData, time::Duration};

use futures::StreamExt;
use mesh_contract::TenantId;
use serde::{Serialize, de::DeserializeOwned};

use crate::supervisor::protocol::TenantSource;

pub use super::shared_switches::SharedSwitches;

/// Every tenant of the mesh, with its file.
pub type SharedTenants = Shared<BTreeMap<TenantId, TenantSource>>;

impl SharedTenants {
    /// The tenant registry of the mesh `prefix` at the Redis at `url`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, SharedError> {
        Self::at(url, format!("{prefix}:control:tenants")).await
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
        let text: Option<String> = redis::cmd("GET")
            .arg(&self.key)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(|e| self.error(e))?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| self.error(e)))
            .transpose()
    }

    /// Saves `value` for every node and tells them.
    pub async fn publish(&self, value: &T) -> Result<(), SharedError> {
        let text = serde_json::to_string(value).map_err(|e| self.error(e))?;
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

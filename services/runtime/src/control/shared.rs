//! Switch state shared by the nodes of one mesh, in Redis: a node saves every change there
//! (`mesh:control:switches`) and announces it (`PUBLISH mesh:control:changed`); every other
//! node loads it and hands it to its workers. `meshctl` pointed at any node changes them all.
//!
//! The node's own file (`switches.json`) stays its copy for a restart while Redis is away.

use std::time::Duration;

use futures::StreamExt;

use crate::layers::Switch;

const KEY: &str = "mesh:control:switches";
const CHANNEL: &str = "mesh:control:changed";

/// Why the shared state could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("shared switch state (Redis {url}): {message}")]
pub struct SharedError {
    url: String,
    message: String,
}

/// The switch state the nodes of one mesh share.
#[derive(Clone)]
pub struct SharedSwitches {
    url: String,
    client: redis::Client,
    connection: redis::aio::ConnectionManager,
    /// This node, so it does not apply its own announcements.
    origin: String,
}

impl std::fmt::Debug for SharedSwitches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSwitches")
            .field("url", &self.url)
            .field("origin", &self.origin)
            .finish()
    }
}

impl SharedSwitches {
    /// Connects to the Redis at `url`.
    pub async fn connect(url: &str) -> Result<Self, SharedError> {
        let error = |e: redis::RedisError| SharedError {
            url: url.to_owned(),
            message: e.to_string(),
        };
        let client = redis::Client::open(url).map_err(error)?;
        let connection = client.get_connection_manager().await.map_err(error)?;
        Ok(Self {
            url: url.to_owned(),
            client,
            connection,
            origin: mesh_contract::ServiceCredentials::fresh_token(),
        })
    }

    fn error(&self, e: impl std::fmt::Display) -> SharedError {
        SharedError {
            url: self.url.clone(),
            message: e.to_string(),
        }
    }

    /// The switches every node follows, if any node saved them yet.
    pub async fn load(&self) -> Result<Option<Vec<Switch>>, SharedError> {
        let text: Option<String> = redis::cmd("GET")
            .arg(KEY)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(|e| self.error(e))?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| self.error(e)))
            .transpose()
    }

    /// Saves `switches` for every node and tells them.
    pub async fn publish(&self, switches: &[Switch]) -> Result<(), SharedError> {
        let text = serde_json::to_string(switches).map_err(|e| self.error(e))?;
        redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(KEY)
            .arg(text)
            .ignore()
            .cmd("PUBLISH")
            .arg(CHANNEL)
            .arg(&self.origin)
            .ignore()
            .query_async::<()>(&mut self.connection.clone())
            .await
            .map_err(|e| self.error(e))
    }

    /// Calls `changed` with the shared switches each time another node changes them, for
    /// ever: a lost subscription is made again (and the state loaded, in case a change was
    /// missed meanwhile).
    pub async fn follow(self, changed: impl Fn(Vec<Switch>) + Send + 'static) {
        let mut pause = Duration::from_millis(100);
        loop {
            match self.client.get_async_pubsub().await {
                Ok(mut pubsub) => {
                    if let Err(err) = pubsub.subscribe(CHANNEL).await {
                        tracing::warn!(error = %err, "subscribing to shared switch changes");
                    } else {
                        pause = Duration::from_millis(100);
                        if let Ok(Some(switches)) = self.load().await {
                            changed(switches);
                        }
                        let mut messages = pubsub.on_message();
                        while let Some(message) = messages.next().await {
                            let from: String = message.get_payload().unwrap_or_default();
                            if from == self.origin {
                                continue;
                            }
                            match self.load().await {
                                Ok(Some(switches)) => changed(switches),
                                Ok(None) => {}
                                Err(err) => tracing::warn!(error = %err, "loading shared switches"),
                            }
                        }
                    }
                }
                Err(err) => tracing::warn!(error = %err, "connecting for shared switch changes"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
}

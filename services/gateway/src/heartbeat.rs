//! The stream heartbeat: where the truth is, on every terminal's stream.
//!
//! A push is only a hint; the user's timeline in the store is the truth. A push can be skipped
//! without anyone noticing at the time (this node was paused past its registry heartbeat, the
//! registry restarted empty or was away, a `Deliver` timed out), so every stream also carries,
//! every [`DEFAULT_INTERVAL`] and at once when this node may have missed pushes
//! ([`GatewayService::beat_now`](crate::GatewayService::beat_now)), the head of its user's
//! timeline. A terminal that holds less syncs from its cursor: a missed push costs at most one
//! interval, never the next reconnect. This is the offset recovery established push servers
//! use (Centrifugo's stream position, the sync protocols of large IM platforms).

use std::{collections::HashMap, sync::Arc, time::Duration};

use mesh_api::gateway::v1;
use mesh_contract::TenantId;
use tonic::Status;

/// How often every stream hears the head of its timeline, unless the node is told otherwise
/// (`MESH_TERMINAL_HEARTBEAT_MS` for `mesh worker`): a missed push reaches its terminal
/// within about this long.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// Users asked for in one read of the heads.
pub(crate) const HEADS_PER_READ: usize = 1000;

/// Where the gateway reads the heads of users' timelines (the platform gives it the message
/// store; a test may give it anything).
#[tonic::async_trait]
pub trait Heads: Send + Sync + 'static {
    /// The last position of each user's timeline, in the order of `users` (0: none yet).
    async fn heads(&self, tenant: &TenantId, users: &[String]) -> Result<Vec<u64>, Status>;
}

/// A heartbeat carrying `head`.
pub(crate) fn heartbeat(head: u64, interval: Duration) -> v1::Push {
    v1::Push {
        payload: Some(v1::push::Payload::Heartbeat(v1::Heartbeat {
            head,
            interval_ms: u32::try_from(interval.as_millis()).unwrap_or(u32::MAX),
        })),
    }
}

/// The heads of every user in `users` (each tenant's read in pages of [`HEADS_PER_READ`]);
/// a user whose head could not be read is missing (its heartbeat then says 0: alive, head
/// unknown).
pub(crate) async fn read_heads(
    heads: &dyn Heads,
    users: HashMap<TenantId, Vec<String>>,
) -> HashMap<(TenantId, String), u64> {
    let mut found = HashMap::new();
    for (tenant, mut users) in users {
        users.sort_unstable();
        users.dedup();
        for page in users.chunks(HEADS_PER_READ) {
            match heads.heads(&tenant, page).await {
                Ok(positions) => {
                    for (user, head) in page.iter().zip(positions) {
                        found.insert((tenant.clone(), user.clone()), head);
                    }
                }
                Err(status) => {
                    tracing::warn!(%tenant, users = page.len(), error = %status, "reading timeline heads for the heartbeat failed; it carries no head this time");
                }
            }
        }
    }
    found
}

/// A `Heads` from a closure, for tests and small wirings.
pub struct HeadsFn<F>(pub F);

#[tonic::async_trait]
impl<F, Fut> Heads for HeadsFn<F>
where
    F: Fn(TenantId, Vec<String>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Vec<u64>, Status>> + Send + 'static,
{
    async fn heads(&self, tenant: &TenantId, users: &[String]) -> Result<Vec<u64>, Status> {
        (self.0)(tenant.clone(), users.to_vec()).await
    }
}

/// Kept for `Arc<dyn Heads>` wirings.
#[tonic::async_trait]
impl<H: Heads + ?Sized> Heads for Arc<H> {
    async fn heads(&self, tenant: &TenantId, users: &[String]) -> Result<Vec<u64>, Status> {
        (**self).heads(tenant, users).await
    }
}

/// The next push on a raw `Attach` stream that is not a heartbeat: what a client that reads
/// the stream itself (not through [`Terminal`](crate::Terminal)) and does not track heads
/// waits for.
pub async fn next_content(
    stream: &mut tonic::Streaming<v1::Push>,
) -> Result<Option<v1::Push>, Status> {
    loop {
        match stream.message().await? {
            Some(v1::Push {
                payload: Some(v1::push::Payload::Heartbeat(_)),
            }) => continue,
            other => return Ok(other),
        }
    }
}

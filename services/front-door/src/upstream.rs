//! The front door's connections to one worker process.
//!
//! A terminal is a stream that stays open for hours, so the hop from the front door to a
//! worker carries as many open streams as the worker has attached terminals. Over a single
//! HTTP/2 connection they would all share one flow-control window and one peer's
//! `SETTINGS_MAX_CONCURRENT_STREAMS`, and a stream over that limit waits in the client,
//! silently, for a slot that a terminal frees only when it leaves. So an [`Upstream`] keeps a
//! few connections to its worker, puts each new stream on the least busy one, counts the
//! long-lived streams open on the whole hop, and refuses one over [`UpstreamLimits::max_streams`]
//! at once with `RESOURCE_EXHAUSTED` naming the limit: a limit is an answer, never a hang.
//! Unary calls are never refused by it (a node full of terminals must still take the sends that
//! feed them); they are bounded by the tenants' rate limits instead.
//!
//! Both ends ping: the connections send HTTP/2 PINGs, so a worker that stopped answering
//! (frozen, or its host gone) is found within `keepalive_interval + keepalive_timeout` and its
//! streams end, as they would if it had closed them.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use mesh_front_door::upstream::{Upstream, UpstreamLimits};
//!
//! let limits = UpstreamLimits { connections: 2, max_streams: 1, ..Default::default() };
//! let upstream = Upstream::new("127.0.0.1:4567", limits).unwrap();
//! let first = upstream.acquire(true).unwrap(); // connects lazily, on the first request
//! assert_eq!(upstream.open_streams(), 1);
//! let refused = upstream.acquire(true).unwrap_err();
//! assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
//! assert!(upstream.acquire(false).is_ok(), "a unary call still goes through");
//! drop(first); // the stream ended
//! assert!(upstream.acquire(true).is_ok());
//! # }
//! ```

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tonic::transport::{Channel, Endpoint};

/// How the front door connects to each worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpstreamLimits {
    /// HTTP/2 connections kept to each worker; streams are spread over them.
    pub connections: usize,
    /// Long-lived streams (server-streaming calls: attached terminals) open at once to one
    /// worker, all its connections together; one more is refused with `RESOURCE_EXHAUSTED`.
    pub max_streams: usize,
    /// HTTP/2 PING to the worker after this long without a frame from it.
    pub keepalive_interval: Duration,
    /// A worker that does not answer a PING within this long is gone.
    pub keepalive_timeout: Duration,
}

/// The deployment file's defaults (`[front_door]` in `ops/mesh.toml`).
impl Default for UpstreamLimits {
    fn default() -> Self {
        Self::from(&mesh_config::deploy::FrontDoorConfig::default())
    }
}

/// How the front door connects to each worker: the same keepalive as towards callers.
impl From<&mesh_config::deploy::FrontDoorConfig> for UpstreamLimits {
    fn from(config: &mesh_config::deploy::FrontDoorConfig) -> Self {
        let limits = crate::connections::ConnectionLimits::from(config);
        Self {
            connections: config.worker_connections.max(1),
            max_streams: config.max_streams_per_worker.max(1),
            keepalive_interval: limits.keepalive_interval,
            keepalive_timeout: limits.keepalive_timeout,
        }
    }
}

/// A connection that carried more streams than this at once is replaced by a fresh one when
/// its last stream ends: HTTP/2 stream tables never shrink, so after a crowd of terminals left
/// the memory they took on both ends of the hop is only given back with the connection.
const RECYCLE_AFTER: usize = 1_000;

#[derive(Debug)]
struct Lane {
    endpoint: Endpoint,
    channel: RwLock<Channel>,
    open: AtomicUsize,
    /// Most streams open at once since the connection was made.
    peak: AtomicUsize,
}

impl Lane {
    fn new(endpoint: &Endpoint) -> Self {
        Self {
            endpoint: endpoint.clone(),
            channel: RwLock::new(endpoint.connect_lazy()),
            open: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }
}

/// Connections to one worker, and the streams open over them.
#[derive(Clone, Debug)]
pub struct Upstream {
    address: String,
    lanes: Arc<[Lane]>,
    open: Arc<AtomicUsize>,
    max_streams: usize,
}

/// A stream open to the worker: counted until dropped (when the response body ends).
#[derive(Debug)]
pub struct StreamSlot {
    lanes: Arc<[Lane]>,
    lane: usize,
    /// The hop's long-lived stream count, when this is one of them.
    long_lived: Option<Arc<AtomicUsize>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let lane = &self.lanes[self.lane];
        if lane.open.fetch_sub(1, Ordering::AcqRel) == 1
            && lane.peak.load(Ordering::Relaxed) > RECYCLE_AFTER
        {
            // streams that start meanwhile use the old connection, which lives as long as
            // they do
            lane.peak.store(0, Ordering::Relaxed);
            *lane.channel.write().expect("lock") = lane.endpoint.connect_lazy();
        }
        if let Some(open) = &self.long_lived {
            open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl StreamSlot {
    /// The connection this stream goes over.
    pub fn channel(&self) -> Channel {
        self.lanes[self.lane].channel.read().expect("lock").clone()
    }
}

impl Upstream {
    /// Connections (made lazily, on the first request) to the worker listening at `address`
    /// (`127.0.0.1:4567`).
    pub fn new(address: &str, limits: UpstreamLimits) -> Result<Self, tonic::transport::Error> {
        Self::with_tls(address, limits, None)
    }

    /// [`Upstream::new`] over mutual TLS when the mesh's processes use it.
    pub fn with_tls(
        address: &str,
        limits: UpstreamLimits,
        tls: Option<&crate::tls::NodeTls>,
    ) -> Result<Self, tonic::transport::Error> {
        let url = crate::tls::NodeTls::url(tls, address);
        let endpoint = crate::tls::NodeTls::endpoint(tls, &url)?
            .tcp_nodelay(true)
            .http2_keep_alive_interval(limits.keepalive_interval)
            .keep_alive_timeout(limits.keepalive_timeout)
            .keep_alive_while_idle(true);
        let lanes: Arc<[Lane]> = (0..limits.connections.max(1))
            .map(|_| Lane::new(&endpoint))
            .collect();
        Ok(Self {
            address: address.to_owned(),
            lanes,
            open: Arc::default(),
            max_streams: limits.max_streams.max(1),
        })
    }

    /// Where the worker listens.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Long-lived streams open to the worker now.
    pub fn open_streams(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// A slot for one more stream, on the least busy connection. A `long_lived` one (a
    /// server-streaming call) is refused with `RESOURCE_EXHAUSTED` when
    /// [`UpstreamLimits::max_streams`] are open; a unary call never is.
    #[allow(clippy::result_large_err)] // a Status is what the caller answers with
    pub fn acquire(&self, long_lived: bool) -> Result<StreamSlot, tonic::Status> {
        let max = self.max_streams;
        if long_lived {
            self.open
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .map_err(|_| {
                    let mut status = tonic::Status::resource_exhausted(format!(
                        "the front door has {max} long-lived streams open to the worker at {} \
                         (front_door.max_streams_per_worker); retry later or raise it",
                        self.address
                    ));
                    status.metadata_mut().insert(
                        mesh_contract::headers::OVER_QUOTA,
                        tonic::metadata::MetadataValue::from_static("streams"),
                    );
                    status
                })?;
        }
        let lane = self
            .lanes
            .iter()
            .enumerate()
            .min_by_key(|(_, l)| l.open.load(Ordering::Relaxed))
            .map_or(0, |(i, _)| i);
        let open = self.lanes[lane].open.fetch_add(1, Ordering::AcqRel) + 1;
        self.lanes[lane].peak.fetch_max(open, Ordering::Relaxed);
        Ok(StreamSlot {
            lanes: self.lanes.clone(),
            lane,
            long_lived: long_lived.then(|| self.open.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streams_spread_over_the_connections_and_the_cap_is_exact() {
        let limits = UpstreamLimits {
            connections: 3,
            max_streams: 7,
            ..Default::default()
        };
        let upstream = Upstream::new("127.0.0.1:9", limits).unwrap();
        let slots: Vec<_> = (0..7).map(|_| upstream.acquire(true).unwrap()).collect();
        let per_lane: Vec<usize> = upstream
            .lanes
            .iter()
            .map(|l| l.open.load(Ordering::Relaxed))
            .collect();
        assert_eq!(per_lane.iter().sum::<usize>(), 7);
        assert!(per_lane.iter().all(|&n| n == 2 || n == 3), "{per_lane:?}");
        let refused = upstream.acquire(true).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("max_streams_per_worker"));
        let unary = upstream.acquire(false).expect("unary calls are not capped");
        assert_eq!(upstream.open_streams(), 7, "and not counted as long-lived");
        drop(unary);
        drop(slots);
        assert_eq!(upstream.open_streams(), 0);
        assert!(
            upstream
                .lanes
                .iter()
                .all(|l| l.open.load(Ordering::Relaxed) == 0)
        );
    }
}

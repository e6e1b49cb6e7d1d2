//! What an HTTP/2 server owes its neighbours: a cap on connections, keepalive pings that find
//! peers gone without a word, and an idle timeout that closes connections nobody uses, so a
//! spike of connections leaves no memory behind once it is over.
//!
//! [`serve_connections`] accepts on a listener and serves each connection with a service,
//! counting open streams per connection (a response body open is a stream in use, so a
//! terminal's long-lived stream keeps its connection busy, never idle).

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;

/// Limits of one listener's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// A connection with no stream open for this long is closed (gracefully: GOAWAY).
    pub idle_timeout: Duration,
    /// HTTP/2 PING sent after this long without a frame from the peer.
    pub keepalive_interval: Duration,
    /// A peer that does not answer a PING within this long is gone: the connection is closed.
    pub keepalive_timeout: Duration,
    /// Streams one connection may have open at once (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`).
    /// A terminal is one long-lived stream, so this is how many terminals one client
    /// connection carries; the client's HTTP/2 library knows the limit and opens another
    /// connection or waits. Streams the client resets before they were served count against
    /// the same number, so a client cancelling all its terminals at once is never taken for a
    /// reset flood (`GOAWAY too_many_resets` would drop its other streams).
    pub max_streams_per_connection: u32,
    /// Whether HTTP/1.1 is served beside HTTP/2 (the browsers' access, `mesh-web`); gRPC
    /// needs HTTP/2, so the front door and the workers serve HTTP/2 only.
    pub http1: bool,
    /// A connection whose peer sent nothing this long after it was accepted (no HTTP/2
    /// preface, no TLS hello, no request line) is dropped: silent sockets cannot hold the
    /// connection slots other clients need. A client that spoke and then idles is left to
    /// `idle_timeout`.
    pub preface_within: Duration,
    /// Connections open at once from one source address (an IPv6 client's /64, where one
    /// host holds many addresses); one more is closed as it is accepted. One client flooding
    /// the door with sockets then holds a bounded share of `max_connections`, and everyone
    /// else still connects. Behind a proxy every connection comes from the proxy: raise it
    /// to `max_connections` there (the proxy limits its own clients).
    pub max_per_address: usize,
}

/// The deployment file's defaults (`[front_door]` in `ops/mesh.toml`).
impl Default for ConnectionLimits {
    fn default() -> Self {
        Self::from(&mesh_config::deploy::FrontDoorConfig::default())
    }
}

/// As `[front_door]` in `ops/mesh.toml` sets them.
impl From<&mesh_config::deploy::FrontDoorConfig> for ConnectionLimits {
    fn from(config: &mesh_config::deploy::FrontDoorConfig) -> Self {
        use std::time::Duration;
        Self {
            max_connections: config.max_connections.max(1),
            idle_timeout: Duration::from_secs(config.idle_timeout_secs.max(1)),
            keepalive_interval: Duration::from_secs(config.keepalive_interval_secs.max(1)),
            keepalive_timeout: Duration::from_secs(config.keepalive_timeout_secs.max(1)),
            max_streams_per_connection: config.max_streams_per_connection.max(1),
            http1: false,
            preface_within: Duration::from_secs(config.preface_timeout_secs.max(1)),
            max_per_address: config.max_connections_per_address.max(1),
        }
    }
}

/// Streams open on one connection, and when the last one ended.
#[derive(Debug)]
struct Activity {
    open: AtomicUsize,
    since: Mutex<Instant>,
    /// Whether the peer sent anything at all ([`Heard`]).
    spoke: std::sync::atomic::AtomicBool,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            since: Mutex::new(Instant::now()),
            spoke: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn start(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::SeqCst);
        StreamGuard(self.clone())
    }

    /// How long the connection has had no open stream; zero while one is open.
    fn idle_for(&self) -> Duration {
        if self.open.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        self.since.lock().expect("lock").elapsed()
    }
}

/// A connection's socket, noting in its [`Activity`] that the peer sent something: what tells a
/// client that spoke (the HTTP/2 preface, a TLS hello) from a silent socket.
struct Heard<IO> {
    io: IO,
    activity: Arc<Activity>,
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Heard<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.spoke.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Heard<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// One open stream; its end (the response body finished or dropped) is recorded on drop.
#[derive(Debug)]
struct StreamGuard(Arc<Activity>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        *self.0.since.lock().expect("lock") = Instant::now();
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that holds `guard` until it ends (or is dropped): what counts a stream as
/// open for as long as its body runs, not only until its headers are sent.
pub(crate) struct HoldUntilEnd<G> {
    inner: tonic::body::Body,
    guard: Option<G>,
}

impl<G: Send + Unpin + 'static> HoldUntilEnd<G> {
    /// `response` with its body holding `guard`.
    pub(crate) fn wrap(
        response: http::Response<tonic::body::Body>,
        guard: G,
    ) -> http::Response<tonic::body::Body> {
        response.map(|inner| {
            tonic::body::Body::new(HoldUntilEnd {
                inner,
                guard: Some(guard),
            })
        })
    }
}

impl<G: Unpin> http_body::Body for HoldUntilEnd<G> {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps a service so every response's body counts as an open stream of `activity`.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    /// The connection's two ends.
    peer: tonic::transport::server::TcpConnectInfo,
}

impl<S, B> tower_service::Service<http::Request<B>> for Tracked<S>
where
    S: tower_service::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        >,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    // Boxed on purpose: the answer is awaited in an async block that then ties the connection's
    // slot to its body (no nameable type); one allocation per call at the listener.
    type Future = mesh_contract::bus::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // who is calling, as tonic's own server tells its services (spans name the peer)
        request.extensions_mut().insert(self.peer.clone());
        let guard = self.activity.start();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(HoldUntilEnd::wrap(response, guard))
        })
    }
}

/// File descriptors a mesh process needs besides its callers' connections (listeners, workers'
/// pipes, connections to workers, broker, database, logs).
const FILES_FOR_THE_REST: u64 = 64;

/// The process's soft limit on open files (Linux), if it can be read.
pub fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Serves HTTP/2 connections accepted on `listener` with `service` under `limits`, over TLS
/// when `tls` is given (see [`crate::tls`]), until `shutdown` resolves.
pub async fn serve_connections<S, B>(
    listener: tokio::net::TcpListener,
    service: S,
    limits: ConnectionLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()>,
) where
    S: tower_service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
            Future = B,
        > + Clone
        + Send
        + 'static,
    B: std::future::Future<
            Output = Result<http::Response<tonic::body::Body>, std::convert::Infallible>,
        > + Send
        + 'static,
{
    use hyper_util::service::TowerToHyperService;
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    if let Some(files) = open_file_limit()
        && limits.max_connections as u64 + FILES_FOR_THE_REST > files
    {
        // the kernel would refuse before the cap does: accept fails (EMFILE) and callers wait
        tracing::warn!(
            max_connections = limits.max_connections,
            file_limit = files,
            "the connection cap is above what this process may open; raise the file limit \
             (ulimit -n, LimitNOFILE) or lower front_door.max_connections"
        );
    }
    let per_address = PerAddress::new(limits.max_per_address);
    let mut refused_logged: Option<Instant> = None;
    let mut crowded_logged: Option<Instant> = None;
    let mut failed_accepts: (u64, Option<Instant>) = (0, None);
    // at shutdown every open connection is asked to close (GOAWAY): a proxy in front sends
    // its next calls elsewhere, while the streams under way (a terminal's, told to attach
    // again elsewhere) finish on it
    let (leaving, left) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => {
                let _ = leaving.send(true);
                return;
            }
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // out of file descriptors, mostly: wait a moment rather than spin, and say
                    // so once in a while, not 20 times a second
                    failed_accepts.0 += 1;
                    if failed_accepts.1.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(error = %err, failed = failed_accepts.0, "accepting connections fails; existing ones are served, new ones wait");
                        failed_accepts = (0, Some(Instant::now()));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if refused_logged.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                tracing::warn!(%peer, max_connections = limits.max_connections, "connection limit reached; closing new connections");
                refused_logged = Some(Instant::now());
            }
            drop(stream);
            continue;
        };
        let Some(from_peer) = per_address.take(peer.ip()) else {
            if crowded_logged.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                tracing::warn!(%peer, max_per_address = limits.max_per_address, "one address holds its share of connections; closing its new ones");
                crowded_logged = Some(Instant::now());
            }
            drop(stream);
            continue;
        };
        // small gRPC frames must not wait for the peer's delayed ACK (Nagle)
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let tls = tls.clone();
        let left = left.clone();
        let service = TowerToHyperService::new(Tracked {
            inner: service.clone(),
            activity: activity.clone(),
            peer: tonic::transport::server::TcpConnectInfo {
                local_addr: stream.local_addr().ok(),
                remote_addr: Some(peer),
            },
        });
        let stream = Heard {
            io: stream,
            activity: activity.clone(),
        };
        tokio::spawn(async move {
            let _slot = (slot, from_peer);
            match tls {
                None => serve_connection(stream, service, limits, activity, peer, left).await,
                Some(tls) => {
                    // a client that never finishes its handshake does not keep the slot
                    match tokio::time::timeout(TLS_HANDSHAKE_WITHIN, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, service, limits, activity, peer, left).await
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Connections open per source address, each held by an [`AddressSlot`] that gives it back
/// when the connection ends.
struct PerAddress {
    limit: usize,
    open: Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

impl PerAddress {
    fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            open: Mutex::default(),
        })
    }

    /// A slot for one more connection from `ip`, unless it holds `limit` already.
    fn take(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<AddressSlot> {
        let source = source_of(ip);
        let mut open = self.open.lock().expect("lock");
        let count = open.entry(source).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            table: self.clone(),
            source,
        })
    }
}

/// Whom a connection counts against: an IPv4 address (or an IPv4-mapped IPv6 one), or the /64
/// of an IPv6 address (one host, or one customer's network, holds a whole /64).
fn source_of(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => std::net::IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !u128::from(u64::MAX),
            )),
        },
        v4 => v4,
    }
}

/// One connection of a source address, counted until dropped.
struct AddressSlot {
    table: Arc<PerAddress>,
    source: std::net::IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().expect("lock");
        if let Some(count) = open.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.source);
            }
        }
    }
}

/// How long a client has to finish its TLS handshake.
const TLS_HANDSHAKE_WITHIN: Duration = Duration::from_secs(10);

/// Serves one accepted connection (plain or TLS) until it ends or idles out.
async fn serve_connection<IO, S>(
    io: IO,
    service: S,
    limits: ConnectionLimits,
    activity: Arc<Activity>,
    peer: std::net::SocketAddr,
    mut leaving: tokio::sync::watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<tonic::body::Body>,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use hyper_util::{
        rt::{TokioExecutor, TokioIo, TokioTimer},
        server::conn::auto::Builder,
    };
    let mut builder = Builder::new(TokioExecutor::new());
    if limits.http1 {
        builder.http1().timer(TokioTimer::new());
    } else {
        builder = builder.http2_only();
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout)
        .max_concurrent_streams(limits.max_streams_per_connection)
        .max_pending_accept_reset_streams(limits.max_streams_per_connection as usize);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let accepted = Instant::now();
    let check = (limits.idle_timeout / 4)
        .min(limits.preface_within / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(5));
    let mut ticks = tokio::time::interval(check);
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(err) = ended {
                    tracing::debug!(error = %err, "connection ended");
                }
                return;
            }
            // the server is stopping: no new calls on this connection
            _ = leaving.changed(), if closing.is_none() => {
                connection.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
            _ = ticks.tick() => {
                // a peer that sent nothing (no preface: a silent socket) would hold its slot
                // until the idle timeout; it goes once its time to speak is up
                if !activity.spoke.load(Ordering::Relaxed)
                    && accepted.elapsed() >= limits.preface_within
                {
                    tracing::debug!(%peer, "dropping a connection whose peer sent nothing");
                    return;
                }
                match closing {
                    None if activity.idle_for() >= limits.idle_timeout => {
                        tracing::debug!(%peer, "closing an idle connection");
                        connection.as_mut().graceful_shutdown();
                        closing = Some(Instant::now());
                    }
                    // a peer that never spoke HTTP/2 (no preface, a silent socket) or ignores
                    // GOAWAY would hold its slot for ever: dropped once the grace is over
                    Some(since)
                        if since.elapsed() >= limits.idle_timeout.min(GOAWAY_GRACE)
                            && activity.idle_for() > Duration::ZERO =>
                    {
                        tracing::debug!(%peer, "dropping a connection that did not close");
                        return;
                    }
                    _ => {}
                }
            }
        }
    }
}

/// How long a connection asked to close (idle) may take to do so before it is dropped.
const GOAWAY_GRACE: Duration = Duration::from_secs(10);

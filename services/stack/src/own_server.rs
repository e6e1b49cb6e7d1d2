//! Calls a process makes to itself, without the network.
//!
//! On one node the message service asks the locator where a user's terminals are and hands
//! each push to the gateway, and the gateway registers every attaching terminal with the
//! locator: all three are served by the same process. Over HTTP/2 each such call was framed,
//! HPACK-encoded, written to loopback TCP, read back and decoded twice (two of a chat
//! message's seven HTTP/2 legs; the kernel's loopback TCP was 36 % of the worker's time in
//! BENCHMARKS.md's profile). [`OwnServer`] holds the process's own server stack once it
//! serves, and every [`Outbound::channel`](crate::Outbound::channel) to the process's own
//! address calls that stack directly.
//!
//! One rule, not a path per service: whatever the callee, a call to this process's own address
//! keeps every step that matters on both sides (the caller's CLIENT span, deadline and
//! bulkhead; the callee's SERVER span, authentication with the node credential, rate,
//! switches, plan, deadline and tenant runtime) and loses only the framing and the socket.
//! Until the server is set (the services are built before the server that serves them), the
//! same channel goes over the network, as before.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use mesh_stack::{OwnServer, layers::{Bulkheads, Catalogue}, stack::Outbound};
//!
//! let own = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051");
//! let server = OwnServer::new(own.uri());
//! let outbound = Outbound::new(Bulkheads::new(8), Catalogue(&[])).with_own_server(server.clone());
//! let to_locator = outbound.channel("locator", &own); // in process once `server.serve(..)`
//! # let _ = to_locator;
//! # }
//! ```

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use tonic::body::Body;
use tower::ServiceExt;

/// A process's own server stack (its inbound layers around its routes), as
/// [`OwnServer::serve`] takes it.
pub type ServerStack =
    tower::util::BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

/// Where this process serves, and, once it does, the stack that answers there.
#[derive(Clone)]
pub struct OwnServer {
    scheme: Option<http::uri::Scheme>,
    authority: Option<http::uri::Authority>,
    stack: Arc<OnceLock<ServerStack>>,
}

impl std::fmt::Debug for OwnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnServer")
            .field("authority", &self.authority)
            .field("serving", &self.stack.get().is_some())
            .finish()
    }
}

impl OwnServer {
    /// The server this process will run at `address` (the URI it gives others to call it at).
    pub fn new(address: &http::Uri) -> Self {
        Self {
            scheme: address.scheme().cloned(),
            authority: address.authority().cloned(),
            stack: Arc::default(),
        }
    }

    /// Calls to the address go to `stack` from now on; a second stack is ignored (the first
    /// one serves for the life of the process).
    pub fn serve(&self, stack: ServerStack) {
        if self.stack.set(stack).is_err() {
            tracing::debug!(authority = ?self.authority, "own server already set");
        }
    }

    /// Whether `address` is this server's.
    pub fn is_at(&self, address: &http::Uri) -> bool {
        self.authority.is_some()
            && address.authority() == self.authority.as_ref()
            && address.scheme() == self.scheme.as_ref()
    }

    /// The transport of a channel to this server: in process once it serves, over `network`
    /// until then.
    pub(crate) fn transport(&self, network: tonic::transport::Channel) -> Transport {
        Transport {
            own: Some(self.clone()),
            network,
        }
    }
}

/// The innermost service of an outbound channel: the network, or the process's own server.
#[derive(Clone, Debug)]
pub struct Transport {
    own: Option<OwnServer>,
    network: tonic::transport::Channel,
}

impl Transport {
    /// Always over the network.
    pub(crate) fn network(network: tonic::transport::Channel) -> Self {
        Self { own: None, network }
    }

    fn own(&self) -> Option<(&OwnServer, &ServerStack)> {
        let own = self.own.as_ref()?;
        Some((own, own.stack.get()?))
    }
}

type InProcess =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, tonic::transport::Error>> + Send>>;

impl tower::Service<http::Request<Body>> for Transport {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = futures::future::Either<
        <tonic::transport::Channel as tower::Service<http::Request<Body>>>::Future,
        InProcess,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.own().is_some() {
            // the stack is readied with each call (`oneshot`)
            return Poll::Ready(Ok(()));
        }
        self.network.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        match self.own() {
            Some((own, stack)) => {
                let stack = stack.clone();
                // the address the call was made to, as a connection would have added it
                let mut uri = request.uri().clone().into_parts();
                uri.scheme = own.scheme.clone();
                uri.authority = own.authority.clone();
                if let Ok(uri) = http::Uri::from_parts(uri) {
                    *request.uri_mut() = uri;
                }
                // the callee's span says so (`network.transport = inproc`, no peer address)
                request.extensions_mut().insert(mesh_contract::InProcess);
                futures::future::Either::Right(Box::pin(async move {
                    match stack.oneshot(request).await {
                        Ok(response) => Ok(response),
                        Err(never) => match never {},
                    }
                }))
            }
            None => futures::future::Either::Left(self.network.call(request)),
        }
    }
}

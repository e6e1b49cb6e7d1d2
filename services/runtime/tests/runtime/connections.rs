//! The front door's connections under limits, seen by a plain HTTP/2 client (the `h2` crate,
//! not tonic): a connection over the cap is closed, an idle one is closed with GOAWAY, one with
//! an open stream (a terminal's) is kept however long it lasts.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use mesh_runtime::connections::{ConnectionLimits, serve_connections};

/// Answers `/hold` with a body that never ends (a long-lived stream), anything else at once.
#[derive(Clone)]
struct Test;

struct Endless;

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = tonic::Status;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Poll::Pending
    }
}

impl<B: Send + 'static> tower_service::Service<http::Request<B>> for Test {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let hold = request.uri().path() == "/hold";
        Box::pin(async move {
            let body = if hold {
                tonic::body::Body::new(Endless)
            } else {
                tonic::body::Body::new(http_body_util::Full::new(Bytes::from_static(b"ok")))
            };
            Ok(http::Response::new(body))
        })
    }
}

async fn server(limits: ConnectionLimits) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(serve_connections(
        listener,
        Test,
        limits,
        None,
        std::future::pending(),
    ));
    address
}

/// An HTTP/2 connection: the request sender and the connection's own future, running.
async fn connect(
    address: std::net::SocketAddr,
) -> Result<
    (
        h2::client::SendRequest<Bytes>,
        tokio::task::JoinHandle<Result<(), h2::Error>>,
    ),
    h2::Error,
> {
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await?;
    Ok((send, tokio::spawn(connection)))
}

async fn get(send: &mut h2::client::SendRequest<Bytes>, path: &str) -> h2::RecvStream {
    let request = http::Request::get(format!("http://test{path}"))
        .body(())
        .unwrap();
    let (response, _) = send
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(request, true)
        .unwrap();
    response.await.unwrap().into_body()
}

fn limits() -> ConnectionLimits {
    ConnectionLimits {
        max_connections: 2,
        idle_timeout: Duration::from_millis(300),
        keepalive_interval: Duration::from_secs(30),
        keepalive_timeout: Duration::from_secs(20),
        max_streams_per_connection: 1_000,
        http1: false,
        preface_within: Duration::from_secs(60),
        max_per_address: 10_000,
    }
}

/// A client opening hundreds of streams and resetting them at once (a user closing every
/// tab, a phone dropping its terminals) is not taken for a reset flood: its connection, and
/// the long-lived stream it holds, stay; the stream limit is advertised to the client.
#[tokio::test]
async fn resetting_hundreds_of_streams_at_once_keeps_the_connection_and_its_other_streams() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    let address = server(ConnectionLimits {
        idle_timeout: Duration::from_secs(60),
        ..limits()
    })
    .await;
    let (mut send, connection) = connect(address).await.unwrap();
    let mut kept = get(&mut send, "/hold").await;
    let mut send = send.ready().await.unwrap();
    for _ in 0..900 {
        let request = http::Request::get("http://test/hold").body(()).unwrap();
        let (response, stream) = send.send_request(request, true).unwrap();
        // the client gives up on it before the server served it: RST_STREAM(CANCEL)
        drop((response, stream));
        send = send.ready().await.unwrap();
    }
    let body = get(&mut send, "/").await;
    let mut body = body;
    let data = body
        .data()
        .await
        .expect("a body")
        .expect("the connection is alive");
    assert_eq!(&data[..], b"ok");
    assert!(!connection.is_finished(), "the connection was not closed");
    // the long-lived stream is still open (nothing arrived, nothing failed)
    assert!(
        tokio::time::timeout(Duration::from_millis(200), kept.data())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_connection_over_the_cap_is_closed_and_a_slot_frees_when_one_ends() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    let address = server(ConnectionLimits {
        idle_timeout: Duration::from_secs(60),
        ..limits()
    })
    .await;
    let (mut first, first_conn) = connect(address).await.unwrap();
    let (mut second, _second_conn) = connect(address).await.unwrap();
    let _ = get(&mut first, "/").await;
    let _ = get(&mut second, "/").await;
    // the third is accepted and closed at once: the handshake or its first request fails
    let third = match connect(address).await {
        Ok((send, _conn)) => {
            let request = http::Request::get("http://test/").body(()).unwrap();
            match send.ready().await {
                Ok(mut send) => match send.send_request(request, true) {
                    Ok((response, _)) => response.await.map(drop),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    assert!(third.is_err(), "a third connection must be refused");
    // the first goes away: its slot is free again
    drop(first);
    first_conn.abort();
    let mut fourth = None;
    for _ in 0..50 {
        if let Ok((send, conn)) = connect(address).await
            && let Ok(ready) = send.clone().ready().await
        {
            let request = http::Request::get("http://test/").body(()).unwrap();
            let mut ready = ready;
            if let Ok((response, _)) = ready.send_request(request, true)
                && response.await.is_ok()
            {
                fourth = Some((send, conn));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        fourth.is_some(),
        "a slot freed by a closed connection is taken again"
    );
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_one_holding_a_stream_is_kept() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    let address = server(limits()).await;
    let (mut idle, idle_conn) = connect(address).await.unwrap();
    let _ = get(&mut idle, "/").await;
    let (mut busy, busy_conn) = connect(address).await.unwrap();
    let _stream = get(&mut busy, "/hold").await;

    // the idle one gets GOAWAY and ends, well before 5 s
    tokio::time::timeout(Duration::from_secs(5), idle_conn)
        .await
        .expect("the idle connection is closed by the server")
        .unwrap()
        .unwrap();
    // the one whose stream is open stays, past several idle timeouts
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        !busy_conn.is_finished(),
        "a connection with an open stream is never idle"
    );
    let _ = get(&mut busy, "/").await;
}

/// A peer that connects and never speaks HTTP/2 (no preface: a silent socket, a stalled
/// client) does not hold its slot for ever: it is dropped once idle and its grace is over,
/// and the slot serves the next caller.
#[tokio::test]
async fn a_silent_connection_is_dropped_and_frees_its_slot() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    use tokio::io::AsyncReadExt;
    let address = server(limits()).await;
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tokio::net::TcpStream::connect(address).await.unwrap());
    }
    // both slots are taken by sockets that never speak: the server closes them
    for socket in &mut silent {
        let mut byte = [0u8; 64];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), socket.read(&mut byte)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => continue, // the server's SETTINGS / GOAWAY
                Err(_) => panic!("a silent connection still open after 5 s"),
            }
        }
    }
    let (mut send, _conn) = connect(address).await.expect("a slot is free again");
    let _ = get(&mut send, "/").await;
}

/// Sockets that never send the HTTP/2 preface give their slots back after `preface_within`:
/// filling every slot with silent sockets keeps a real client out only that long, while a
/// client that spoke and then idles keeps its connection (the idle timeout's to close).
#[tokio::test]
async fn silent_sockets_give_their_slots_back() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    let address = server(ConnectionLimits {
        max_connections: 20,
        idle_timeout: Duration::from_secs(60),
        preface_within: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(tokio::net::TcpStream::connect(address).await.unwrap());
    }
    // every slot taken: a client that speaks is closed as it arrives
    tokio::time::sleep(Duration::from_millis(50)).await;
    let call = || async {
        let (send, _conn) = connect(address).await?;
        let mut send = send.ready().await?;
        let request = http::Request::get("http://test/hello").body(()).unwrap();
        let (response, _) = send.send_request(request, true)?;
        Ok::<_, h2::Error>(response.await?.status())
    };
    let refused = tokio::time::timeout(Duration::from_secs(2), call()).await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "every slot was taken: {refused:?}"
    );
    // the silent ones are dropped once their time is up
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout(Duration::from_secs(1), call()).await {
            Ok(Ok(status)) => {
                assert_eq!(status, http::StatusCode::OK);
                break;
            }
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "silent sockets still hold every slot"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // and the silent sockets were closed by the server (after its own SETTINGS, read to EOF)
    use tokio::io::AsyncReadExt as _;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), silent[0].read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "the server closed a silent socket: {read:?}"
    );
    drop(silent);
    // a client that spoke (the preface) and then waits keeps its connection
    let (send, _conn) = connect(address).await.unwrap();
    let send = send.ready().await.unwrap();
    // past the first-request timeout the test sets (500 ms): a client that spoke keeps its connection
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut send = send.ready().await.unwrap();
    let request = http::Request::get("http://test/hello").body(()).unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), http::StatusCode::OK);
}

/// An HTTP/2 connection from the loopback address `from` (any of 127.0.0.0/8 is this machine:
/// a client of its own address, as far as the server can tell).
async fn connect_from(
    from: [u8; 4],
    address: std::net::SocketAddr,
) -> Result<h2::client::SendRequest<Bytes>, Box<dyn std::error::Error + Send + Sync>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((std::net::Ipv4Addr::from(from), 0).into())?;
    let tcp = socket.connect(address).await?;
    let (send, connection) = h2::client::handshake(tcp).await?;
    tokio::spawn(connection);
    Ok(send)
}

async fn hello_from(
    from: [u8; 4],
    address: std::net::SocketAddr,
) -> Result<http::StatusCode, String> {
    let call = async {
        let mut send = connect_from(from, address).await?.ready().await?;
        let request = http::Request::get("http://test/hello").body(()).unwrap();
        let (response, _) = send.send_request(request, true)?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(response.await?.status())
    };
    match tokio::time::timeout(Duration::from_secs(5), call).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("no answer within 5 s".into()),
    }
}

/// 10,000 sockets from one address that never say a word, against the front door's default
/// limits (`[front_door]` as shipped: 10,000 connections, 1,000 per address, 10 s for the
/// preface): the flood holds its address's share, other clients connect and are answered,
/// and the flooding address's next connection is refused while its share is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_silent_sockets_from_one_address_leave_others_connecting() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    const SILENT: usize = 10_000;
    let files = mesh_runtime::connections::open_file_limit().unwrap_or(0);
    assert!(
        files >= SILENT as u64 + 2_000,
        "this test holds {SILENT} sockets and the server its share: raise the open-file limit \
         to {} (ulimit -n; .ci/test does), it is {files}",
        SILENT + 2_000
    );
    let limits = ConnectionLimits::default();
    assert_eq!(
        (limits.max_connections, limits.max_per_address),
        (10_000, 1_000),
        "the shipped defaults this test is about"
    );
    let address = server(limits).await;
    let mut silent = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
        silent.push(socket.connect(address).await.unwrap());
    }
    // clients of other addresses are served while the flood sits there
    for i in 2..22u8 {
        assert_eq!(
            hello_from([127, 0, 0, i], address).await,
            Ok(http::StatusCode::OK),
            "a client of 127.0.0.{i} during the flood"
        );
    }
    // the flooding address holds its 1,000 and no more: its next connection is closed
    assert!(
        hello_from([127, 0, 0, 1], address).await.is_err(),
        "the flooding address's share is taken"
    );
    // the server closed the sockets past the share (read to EOF or reset), not held them
    use tokio::io::AsyncReadExt as _;
    let mut rest = Vec::new();
    let last = silent.last_mut().unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), last.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "a socket past the share was closed by the server"
    );
    // once the flood is gone its address is served again
    drop(silent);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while hello_from([127, 0, 0, 1], address).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the address's slots were given back when its sockets closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

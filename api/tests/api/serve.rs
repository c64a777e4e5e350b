//! The server over real sockets (loopback and Unix only): answering,
//! Unix socket mode and stale-file handling, the header-read timeout, and
//! shutdown.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use polld_api::{Listener, ServeError, ServeLimits};
use polld_config::Listen;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::common::fixture;

const HANG: Duration = Duration::from_secs(20);

/// Sends one HTTP/1.1 request with `Connection: close`, returns the whole
/// answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(HANG, s.read_to_string(&mut out))
        .await
        .expect("no answer")
        .unwrap();
    out
}

/// A listener on a free loopback port, and its address.
async fn loopback() -> (Listener, std::net::SocketAddr) {
    let listener = polld_api::bind(&Listen::Tcp("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let Some(Listen::Tcp(addr)) = listener.local_addr() else {
        panic!("not TCP")
    };
    (listener, addr)
}

/// Serves `router` on `listener` until the sender is used (or dropped).
fn serve(
    listener: Listener,
    router: polld_api::Api,
    limits: ServeLimits,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(listener.serve(router, limits, async {
        let _ = stopped.await;
    }));
    (stop, server)
}

/// A client whose long poll the server holds (it waits until it does);
/// the task ends with the whole answer.
async fn hold_long_poll(
    fx: &crate::common::Fx,
    addr: std::net::SocketAddr,
) -> tokio::task::JoinHandle<String> {
    let poll = tokio::spawn(async move {
        exchange(
            tokio::net::TcpStream::connect(addr).await.unwrap(),
            "/v1/changes?after=0&wait=50s",
        )
        .await
    });
    for _ in 0..1_000_000 {
        if fx.state.waiters() == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(fx.state.waiters(), 1);
    poll
}

#[tokio::test]
async fn serves_on_loopback_and_stops_on_shutdown() {
    let fx = fixture();
    let (listener, addr) = loopback().await;
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    let (stop, server) = serve(listener, fx.router(), ServeLimits::default());

    let answer = exchange(
        tokio::net::TcpStream::connect(addr).await.unwrap(),
        "/healthz",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("{\"status\":\"ok\"}"), "{answer}");

    stop.send(()).unwrap();
    tokio::time::timeout(HANG, server)
        .await
        .expect("server did not stop")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening"
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let fx = fixture();
    let (listener, addr) = loopback().await;
    let mut limits = ServeLimits::default();
    limits.header_read_timeout = Duration::from_millis(300);
    let (stop, server) = serve(listener, fx.router(), limits);
    // One that sends nothing at all is cut off too: idle connections cannot
    // hold the connection slots.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut nothing = Vec::new();
    tokio::time::timeout(HANG, idle.read_to_end(&mut nothing))
        .await
        .expect("idle client was never cut off")
        .ok();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: local")
        .await
        .unwrap();
    // The server closes the connection (possibly after a 408); the read
    // ends instead of waiting for ever. HANG only guards against a hang.
    let mut rest = Vec::new();
    tokio::time::timeout(HANG, slow.read_to_end(&mut rest))
        .await
        .expect("slow client was never cut off")
        .ok();
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || rest.starts_with("HTTP/1.1 408"),
        "{rest}"
    );
    stop.send(()).unwrap();
    tokio::time::timeout(HANG, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn the_connection_limit_holds_further_clients_back() {
    let fx = fixture();
    let (listener, addr) = loopback().await;
    let mut limits = ServeLimits::default();
    limits.max_connections = 1;
    limits.header_read_timeout = Duration::from_secs(60);
    let (stop, server) = serve(listener, fx.router(), limits);
    // The first client holds the only slot (it never sends a request).
    let first = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    second
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let mut read = Box::pin(second.read_to_string(&mut answer));
    // Not served while the slot is taken: the read is still pending after
    // the server has had every chance to run.
    for _ in 0..1000 {
        tokio::task::yield_now().await;
    }
    assert!(
        futures_poll_once(&mut read).await.is_none(),
        "served past the limit"
    );
    drop(first);
    tokio::time::timeout(HANG, &mut read)
        .await
        .expect("never served")
        .unwrap();
    drop(read);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stop.send(()).unwrap();
    tokio::time::timeout(HANG, server).await.unwrap().unwrap();
}

/// Polls a future once.
async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut *f).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

#[tokio::test]
async fn unix_socket_mode_0660_and_stale_files() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");

    // A socket file left by a crashed run (nobody listens) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let listener = polld_api::bind(&Listen::Unix(path.clone())).await.unwrap();
    assert!(matches!(listener, Listener::Unix(..)));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    // It was given its mode in a private directory, which is gone.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["api.sock"]);

    // A path with no room for the private directory's name is bound in
    // place.
    let deep = dir
        .path()
        .join("d".repeat(100 - dir.path().as_os_str().len()));
    std::fs::create_dir(&deep).unwrap();
    let short = deep.join("s");
    assert!(short.as_os_str().len() < 104);
    let in_place = polld_api::bind(&Listen::Unix(short.clone())).await.unwrap();
    assert_eq!(
        std::fs::metadata(&short).unwrap().permissions().mode() & 0o777,
        0o660
    );
    drop(in_place);

    // One that answers belongs to a running polld: left alone.
    let err = polld_api::bind(&Listen::Unix(path.clone()))
        .await
        .unwrap_err();
    assert!(matches!(err, ServeError::SocketInUse { .. }), "{err}");

    let (stop, server) = serve(listener, fx.router(), ServeLimits::default());
    let answer = exchange(
        tokio::net::UnixStream::connect(&path).await.unwrap(),
        "/v1/watches",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    stop.send(()).unwrap();
    tokio::time::timeout(HANG, server).await.unwrap().unwrap();
    assert!(!path.exists(), "socket file left behind");

    // Not a socket: not ours to delete.
    let file = dir.path().join("file");
    std::fs::write(&file, "keep me").unwrap();
    let err = polld_api::bind(&Listen::Unix(file.clone()))
        .await
        .unwrap_err();
    assert!(matches!(err, ServeError::NotASocket { .. }), "{err}");
    assert_eq!(
        std::fs::read_to_string(Path::new(&file)).unwrap(),
        "keep me"
    );
}

/// A socket whose listener is too busy to take one more connection (its
/// backlog full) is alive: it is left alone, not taken for a stale file.
#[tokio::test]
async fn a_busy_socket_is_not_taken_for_a_stale_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let socket = tokio::net::UnixSocket::new_stream().unwrap();
    socket.bind(&path).unwrap();
    let busy = socket.listen(1).unwrap();
    // Never accepted: connects fill the backlog of 1 until one is refused
    // as would-block.
    let mut held = Vec::new();
    let full = loop {
        assert!(held.len() < 64, "the backlog never filled");
        match tokio::net::UnixStream::connect(&path).await {
            Ok(stream) => held.push(stream),
            Err(err) => break err,
        }
    };
    assert_eq!(full.kind(), std::io::ErrorKind::WouldBlock, "{full}");
    let err = polld_api::bind(&Listen::Unix(path.clone()))
        .await
        .unwrap_err();
    assert!(matches!(err, ServeError::SocketInUse { .. }), "{err}");
    // Still the busy listener's: it takes a connection once one is free.
    drop(held);
    for _ in 0..16 {
        if tokio::time::timeout(Duration::from_millis(50), busy.accept())
            .await
            .is_err()
        {
            break;
        }
    }
    let _client = tokio::net::UnixStream::connect(&path)
        .await
        .expect("the socket file still leads to a listener");
    tokio::time::timeout(Duration::from_secs(5), busy.accept())
        .await
        .expect("the socket file was replaced: a new client does not reach the live listener")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_held_long_polls_and_drains() {
    let fx = fixture();
    let (listener, addr) = loopback().await;
    let (stop, stopped) = oneshot::channel::<()>();
    let state = fx.state.clone();
    let server = tokio::spawn(
        listener.serve(fx.router(), ServeLimits::default(), async move {
            let _ = stopped.await;
            state.close();
        }),
    );
    let poll = hold_long_poll(&fx, addr).await;
    stop.send(()).unwrap();
    let answer = tokio::time::timeout(HANG, poll)
        .await
        .expect("long poll held through shutdown")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.ends_with("{\"changes\":[],\"next\":\"0\"}"),
        "{answer}"
    );
    tokio::time::timeout(HANG, server)
        .await
        .expect("no drain")
        .unwrap();
}

/// Once shutdown begins the server stops listening: a client that connects
/// while in-flight requests drain is refused at once (and retries), rather
/// than left in the listen backlog until the drain ends and then reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_clients_are_refused_while_draining() {
    let fx = fixture();
    let (listener, addr) = loopback().await;
    let mut limits = ServeLimits::default();
    limits.drain_timeout = Duration::from_secs(60);
    // The API is not closed at shutdown here: the held long poll keeps the
    // drain going until the test closes it.
    let (stop, server) = serve(listener, fx.router(), limits);
    let poll = hold_long_poll(&fx, addr).await;
    stop.send(()).unwrap();
    // The server learns of the shutdown at its next turn; bounded.
    let mut refused = false;
    for _ in 0..1000 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(refused, "still accepting connections while draining");
    assert!(!server.is_finished(), "the drain waits for the long poll");
    fx.state.close();
    let answer = tokio::time::timeout(HANG, poll).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    tokio::time::timeout(HANG, server)
        .await
        .expect("no drain")
        .unwrap();
}

/// A socket path longer than a socket address holds (108 bytes) is refused
/// at start. Bound under a shorter temporary name and renamed into place,
/// the socket listened at a path no client can connect to, and a socket
/// file left there by a crash then stopped the next start.
#[tokio::test]
async fn a_socket_path_too_long_to_connect_to_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let name = "polld-api-socket-for-the-review.sock";
    let room = 110 - dir.path().as_os_str().len() - 2 - name.len();
    let deep = dir.path().join("d".repeat(room));
    std::fs::create_dir(&deep).unwrap();
    let path = deep.join(name);
    assert_eq!(path.as_os_str().len(), 110);
    if let Ok(_listener) = polld_api::bind(&Listen::Unix(path.clone())).await {
        let connected = tokio::net::UnixStream::connect(&path).await;
        panic!("bound at a path no client can reach; connecting there: {connected:?}");
    }
}

//! A hostile HTTP server on loopback: one listener, many bad endpoints,
//! written on raw TCP because a well-behaved HTTP library will not send a
//! lying Content-Length, 2,000 headers or a reset.
//!
//! Every connection is bounded in time ([`CONNECTION_LIMIT`]) so that a
//! client that never hangs up cannot keep a test running; the server stops
//! when it is dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The longest a connection lives, whatever the client does.
pub const CONNECTION_LIMIT: Duration = Duration::from_secs(60);

/// Every bad endpoint, by path.
pub const ENDPOINTS: &[&str] = &[
    "/slow-headers",
    "/stall-after-headers",
    "/drip",
    "/endless",
    "/gzip-bomb",
    "/many-headers",
    "/lying-length",
    "/redirect-loop",
    "/redirect-file",
    "/reset",
];

/// A running hostile server.
#[derive(Debug)]
pub struct Hostile {
    /// `http://127.0.0.1:PORT`.
    pub uri: String,
    accept: JoinHandle<()>,
    hits: Arc<AtomicUsize>,
}

impl Hostile {
    /// Binds 127.0.0.1:0 and serves on the current tokio runtime.
    pub async fn start() -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let bomb: Arc<[u8]> = gzip_bomb(1024).into();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let bomb = bomb.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(CONNECTION_LIMIT, serve(stream, bomb)).await;
                });
            }
        });
        Hostile {
            uri: format!("http://{addr}"),
            accept,
            hits,
        }
    }

    /// Connections accepted so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Reads the request head (bounded) and returns its path.
async fn read_path(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > 64 * 1024 {
            return None;
        }
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace().nth(1).map(str::to_owned)
}

async fn serve(mut s: TcpStream, bomb: Arc<[u8]>) {
    let Some(path) = read_path(&mut s).await else {
        return;
    };
    let forever = CONNECTION_LIMIT;
    let _ = match path.as_str() {
        // Nothing at all after the request: the client's timeout must fire.
        "/slow-headers" => {
            tokio::time::sleep(forever).await;
            Ok(())
        }
        "/stall-after-headers" => {
            let r = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
                .await;
            tokio::time::sleep(forever).await;
            r
        }
        "/drip" => {
            let r = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
                .await;
            for _ in 0..1000 {
                if s.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            r
        }
        "/endless" => {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n")
                .await;
            let chunk = vec![b'y'; 64 * 1024];
            // Until the client hangs up (or CONNECTION_LIMIT).
            while s.write_all(&chunk).await.is_ok() {}
            Ok(())
        }
        "/gzip-bomb" => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-encoding: gzip\r\ncontent-length: {}\r\n\r\n",
                bomb.len()
            );
            match s.write_all(head.as_bytes()).await {
                Ok(()) => s.write_all(&bomb).await,
                Err(e) => Err(e),
            }
        }
        "/many-headers" => {
            let mut head = String::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n");
            for i in 0..2000 {
                head.push_str(&format!("x-header-{i}: {}\r\n", "v".repeat(20)));
            }
            head.push_str("\r\nok");
            s.write_all(head.as_bytes()).await
        }
        // Promises 1000 bytes, sends 10, hangs up.
        "/lying-length" => {
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
                .await
        }
        "/redirect-loop" => {
            s.write_all(b"HTTP/1.1 302 Found\r\nlocation: /redirect-loop-2\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await
        }
        "/redirect-loop-2" => {
            s.write_all(b"HTTP/1.1 302 Found\r\nlocation: /redirect-loop\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await
        }
        "/redirect-file" => {
            s.write_all(b"HTTP/1.1 302 Found\r\nlocation: file:///etc/passwd\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await
        }
        // SO_LINGER 0 turns the close into a TCP reset.
        "/reset" => {
            let std = s.into_std().expect("into_std");
            let sock = socket2::SockRef::from(&std);
            let _ = sock.set_linger(Some(Duration::ZERO));
            drop(std);
            return;
        }
        _ => {
            s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await
        }
    };
    let _ = s.shutdown().await;
}

/// A gzip member that inflates to `mib` MiB of zeros from about a
/// thousandth of that: one fully flushed deflate block of 1 MiB of zeros
/// (position-independent, since a full flush resets the dictionary),
/// repeated. The trailer's CRC is wrong on purpose: a client must stop at
/// its decompressed-size bound long before it gets there.
pub fn gzip_bomb(mib: usize) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    let zeros = vec![0u8; 1024 * 1024];
    let mut block = Vec::with_capacity(8 * 1024);
    let mut c = Compress::new(Compression::best(), false);
    c.compress_vec(&zeros, &mut block, FlushCompress::Full)
        .expect("deflate");
    let mut last = Vec::with_capacity(64);
    c.compress_vec(&[], &mut last, FlushCompress::Finish)
        .expect("deflate");
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    for _ in 0..mib {
        out.extend_from_slice(&block);
    }
    out.extend_from_slice(&last);
    let size = u32::try_from((mib * 1024 * 1024) % (1 << 32)).unwrap_or(0);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    out
}

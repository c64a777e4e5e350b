//! The agent's kept-alive connections, per origin (scheme and authority):
//! HTTP/1.1 connections idle between requests, at most `idle_per_host` of
//! an origin, the one used last taken first; and one shared HTTP/2
//! connection per origin whose server negotiated it.
//!
//! Why not hyper-util's pool, which the agent used until 2026-12-02: a poll
//! is one request, and at saturation (`bench/engine`) that pool's checkout
//! (a connect future made and raced for every request, a key of cloned
//! URI parts, the waiters' bookkeeping) cost about a quarter of the HTTP
//! stack's CPU per request (`daemon/benches/http_stack.rs`, BENCHMARKS.md).
//! Here a checkout is one lock and a `pop`, and the connection goes back
//! when the answer's body has ended or is dropped
//! ([`super::transport::ResponseBody`]).
//!
//! A connection leaves the pool when its server closed it, when it has been
//! idle for [`IDLE_TIMEOUT`], or when the origin already holds
//! `idle_per_host` idle ones. A task of the pool's own looks idle
//! connections over every [`SWEEP_EVERY`], so that origins polled rarely (or
//! never again) do not keep sockets open past the timeout.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use hyper::client::conn::{http1, http2};
use rustc_hash::FxHashMap;
// tokio's clock, so that the tests can move it.
use tokio::time::Instant;

use super::transport::RequestBody;

/// Kept-alive connections are closed after this long unused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often idle connections are looked over.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// An origin: connections are shared between requests to the same one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub scheme: Scheme,
    pub authority: Authority,
}

/// A connection taken from the pool (or just made) for one request.
#[derive(Debug)]
pub enum Conn {
    Http1(http1::SendRequest<RequestBody>),
    Http2(http2::SendRequest<RequestBody>),
}

/// The pool. One lock for all origins: it is held for a `pop` or a `push`.
#[derive(Debug)]
pub struct Pool {
    idle_per_host: usize,
    origins: Mutex<FxHashMap<Origin, Idle>>,
}

/// One origin's connections.
#[derive(Debug, Default)]
struct Idle {
    /// Idle HTTP/1 connections, the one used last at the back.
    http1: Vec<(http1::SendRequest<RequestBody>, Instant)>,
    /// The origin's HTTP/2 connection and when a request last took it.
    http2: Option<(http2::SendRequest<RequestBody>, Instant)>,
}

impl Idle {
    fn is_empty(&self) -> bool {
        self.http1.is_empty() && self.http2.is_none()
    }

    /// Drops what the server closed or what has been idle too long.
    fn sweep(&mut self, now: Instant) {
        self.http1
            .retain(|(c, since)| !c.is_closed() && !expired(*since, now));
        if self
            .http2
            .as_ref()
            .is_some_and(|(c, since)| c.is_closed() || expired(*since, now))
        {
            self.http2 = None;
        }
    }
}

/// Whether a connection idle since `since` has been idle too long by `now`.
fn expired(since: Instant, now: Instant) -> bool {
    now.duration_since(since) >= IDLE_TIMEOUT
}

impl Pool {
    /// A pool whose idle connections a task of its own closes once they
    /// have been idle for [`IDLE_TIMEOUT`] (outside a Tokio runtime, no
    /// task: then only a checkout drops them).
    pub fn new(idle_per_host: usize) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            idle_per_host,
            origins: Mutex::new(FxHashMap::default()),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep_every(Arc::downgrade(&pool)));
        }
        pool
    }

    /// A live connection to `origin`, if the pool holds one: the origin's
    /// HTTP/2 connection (shared), or its HTTP/1 connection used last
    /// (taken). Whether it is ready for a request is the caller's to wait
    /// for: an HTTP/1 connection whose last answer just ended may still be
    /// finishing it.
    pub fn checkout(&self, origin: &Origin) -> Option<Conn> {
        let now = Instant::now();
        let mut origins = self.lock();
        let idle = origins.get_mut(origin)?;
        if let Some((conn, since)) = &mut idle.http2 {
            if !conn.is_closed() {
                *since = now;
                return Some(Conn::Http2(conn.clone()));
            }
            idle.http2 = None;
        }
        while let Some((conn, since)) = idle.http1.pop() {
            if expired(since, now) {
                // The rest were idle longer still.
                idle.http1.clear();
                break;
            }
            if !conn.is_closed() {
                return Some(Conn::Http1(conn));
            }
        }
        None
    }

    /// Keeps an HTTP/1 connection whose answer is done with for the next
    /// request to `origin`.
    pub fn checkin(&self, origin: &Origin, conn: http1::SendRequest<RequestBody>) {
        if conn.is_closed() || self.idle_per_host == 0 {
            return;
        }
        let now = Instant::now();
        let mut origins = self.lock();
        // Looked up first: `entry` would clone the origin on every check-in.
        let idle = match origins.get_mut(origin) {
            Some(idle) => idle,
            None => origins.entry(origin.clone()).or_default(),
        };
        if idle.http1.len() >= self.idle_per_host {
            // The one idle longest goes.
            idle.http1.remove(0);
        }
        idle.http1.push((conn, now));
    }

    /// Shares a new HTTP/2 connection to `origin` with later requests (in
    /// place of one the server closed, or of one made by a request that
    /// raced this one to connect).
    pub fn share(&self, origin: &Origin, conn: http2::SendRequest<RequestBody>) {
        let now = Instant::now();
        let mut origins = self.lock();
        let idle = origins.entry(origin.clone()).or_default();
        if idle.http2.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            idle.http2 = Some((conn, now));
        }
    }

    /// Drops every idle connection its server closed or that has been idle
    /// for [`IDLE_TIMEOUT`], and the origins left with none.
    fn sweep(&self) {
        let now = Instant::now();
        self.lock().retain(|_, idle| {
            idle.sweep(now);
            !idle.is_empty()
        });
    }

    /// The origins' connections; a panic elsewhere cannot leave them
    /// half-changed (each change is one `push`, `pop` or `retain`).
    fn lock(&self) -> std::sync::MutexGuard<'_, FxHashMap<Origin, Idle>> {
        self.origins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Idle HTTP/1 connections to `origin` (for tests).
    #[cfg(test)]
    fn idle_http1(&self, origin: &Origin) -> usize {
        self.lock().get(origin).map_or(0, |i| i.http1.len())
    }
}

/// The pool's sweeper: every [`SWEEP_EVERY`], for as long as the pool is
/// in use.
async fn sweep_every(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        pool.sweep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin {
            scheme: Scheme::HTTP,
            authority: Authority::from_static("127.0.0.1:1"),
        }
    }

    /// An HTTP/1 connection over an in-memory pipe, its far end held open.
    async fn conn() -> (http1::SendRequest<RequestBody>, tokio::io::DuplexStream) {
        let (near, far) = tokio::io::duplex(1024);
        let (sender, connection) = http1::handshake(hyper_util::rt::TokioIo::new(near))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        (sender, far)
    }

    #[tokio::test]
    async fn the_connection_used_last_is_taken_first_and_extras_go() {
        let pool = Pool::new(2);
        let (a, _fa) = conn().await;
        let (b, _fb) = conn().await;
        let (c, _fc) = conn().await;
        pool.checkin(&origin(), a);
        pool.checkin(&origin(), b);
        pool.checkin(&origin(), c);
        assert_eq!(pool.idle_http1(&origin()), 2, "idle_per_host holds");
        assert!(matches!(pool.checkout(&origin()), Some(Conn::Http1(_))));
        assert!(matches!(pool.checkout(&origin()), Some(Conn::Http1(_))));
        assert!(pool.checkout(&origin()).is_none());
    }

    #[tokio::test]
    async fn a_connection_its_server_closed_is_not_handed_out() {
        let pool = Pool::new(4);
        let (a, far) = conn().await;
        pool.checkin(&origin(), a);
        drop(far);
        // The connection task sees the end of its stream on its next turn.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(pool.checkout(&origin()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idle_for_the_timeout_is_not_handed_out() {
        let pool = Pool::new(4);
        let (a, _fa) = conn().await;
        let (b, _fb) = conn().await;
        pool.checkin(&origin(), a);
        tokio::time::advance(IDLE_TIMEOUT - Duration::from_secs(1)).await;
        assert!(
            pool.checkout(&origin()).is_some(),
            "idle less than the timeout"
        );
        pool.checkin(&origin(), b);
        tokio::time::advance(IDLE_TIMEOUT).await;
        assert!(pool.checkout(&origin()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_after_the_timeout_without_more_traffic() {
        use tokio::io::AsyncReadExt;
        let pool = Pool::new(4);
        let other = Origin {
            scheme: Scheme::HTTP,
            authority: Authority::from_static("127.0.0.1:2"),
        };
        let (a, mut far) = conn().await;
        let (b, _fb) = conn().await;
        pool.checkin(&origin(), a);
        tokio::time::advance(IDLE_TIMEOUT / 2).await;
        pool.checkin(&other, b);
        // Nothing else happens: the pool's own task closes the first one
        // (its far end reads the end of the stream) and forgets its origin.
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(IDLE_TIMEOUT, far.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0))), "still open: {read:?}");
        let origins = pool.lock();
        assert!(!origins.contains_key(&origin()), "swept");
        assert!(
            origins.contains_key(&other),
            "idle for less than the timeout"
        );
    }
}

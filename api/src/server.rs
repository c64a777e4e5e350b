//! Binding and serving: TCP or a Unix socket (`unix:PATH`, mode 0660), or
//! the socket systemd passes by socket activation (`LISTEN_FDS`); one
//! hyper HTTP/1 connection per client with a header-read timeout, a limit on
//! open connections, and a bounded drain on shutdown.
//!
//! Why not `axum::serve`: it has no header-read timeout, so a client that
//! sends headers slowly would hold a connection for ever; and no connection
//! limit, so such clients could pile up.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use polld_config::Listen;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Api;

/// Why binding or serving failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The TCP address could not be bound.
    #[error("cannot listen on {addr}")]
    BindTcp {
        /// The address.
        addr: std::net::SocketAddr,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The Unix socket could not be created.
    #[error("cannot listen on unix:{}", .path.display())]
    BindUnix {
        /// The socket path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Another process answers on the socket path already.
    #[error("unix:{}: another process is listening there", .path.display())]
    SocketInUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket path exists and is not a socket: it is not ours to remove.
    #[error("unix:{}: exists and is not a socket", .path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The socket systemd passed (`LISTEN_FDS`) cannot serve: it is not a
    /// listening TCP or Unix stream socket, or cannot be made non-blocking.
    #[error(
        "the socket passed by systemd (LISTEN_FDS) is not a listening TCP or Unix stream socket"
    )]
    Activated {
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

/// Limits of the server.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ServeLimits {
    /// Connections open at once; further clients wait in the listen backlog.
    /// Must exceed `ApiOptions::max_waiters`, since each waiter holds one.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (also the idle time of
    /// a kept-alive connection before its next request).
    pub header_read_timeout: Duration,
    /// Time in-flight requests get to finish after shutdown; then the
    /// remaining connections are dropped.
    pub drain_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// A bound listener, before serving.
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A Unix socket listener and the socket file polld created (removed
    /// when serving ends); `None` for a socket systemd passed, whose file
    /// belongs to the socket unit.
    Unix(UnixListener, Option<PathBuf>),
}

impl Listener {
    /// Where it listens, in the config's syntax (`IP:PORT` with the real
    /// port, or `unix:PATH`).
    #[must_use]
    pub fn local_addr(&self) -> Option<Listen> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok().map(Listen::Tcp),
            Listener::Unix(l, path) => path
                .clone()
                .or_else(|| l.local_addr().ok()?.as_pathname().map(Path::to_owned))
                .map(Listen::Unix),
        }
    }
}

/// The listener systemd passed by socket activation (`polld.socket`): the
/// first socket of `LISTEN_FDS`, a TCP or Unix stream socket. `Ok(None)`
/// when nothing was passed, or when `LISTEN_PID` names another process
/// (the variables were inherited, not meant for polld).
pub fn activated() -> Result<Option<Listener>, ServeError> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    if fds.len() > 1 {
        tracing::warn!(
            sockets = fds.len(),
            "socket activation passed several sockets; the API uses the first"
        );
    }
    let err = |source| ServeError::Activated { source };
    // Each take leaves the descriptor in place when its type does not match.
    let listener = match fds.take_tcp_listener(0) {
        Ok(Some(std)) => {
            std.set_nonblocking(true).map_err(err)?;
            Listener::Tcp(TcpListener::from_std(std).map_err(err)?)
        }
        Ok(None) => return Ok(None),
        Err(_) => match fds.take_unix_listener(0).map_err(err)? {
            Some(std) => {
                std.set_nonblocking(true).map_err(err)?;
                Listener::Unix(UnixListener::from_std(std).map_err(err)?, None)
            }
            None => return Ok(None),
        },
    };
    Ok(Some(listener))
}

/// The longest path a Unix socket address holds (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Binds a socket at `path` that nobody could connect to before it had mode
/// 0660: bound inside a fresh directory only this user can enter, given its
/// mode, then linked into place. Bound at `path` itself it had the umask's
/// mode for a moment (0777 under umask 0), and a connection queued then is
/// accepted later. A hard link, unlike a rename, fails when something took
/// `path` since the check for a stale socket (another polld starting).
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tries = 0;
    let private = loop {
        let name = format!(
            ".polld-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let dir = parent.join(name);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => break dir,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
            Err(e) => return Err(e),
        }
    };
    let inner = private.join("s");
    let bound = UnixListener::bind(&inner).and_then(|listener| {
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o660))?;
        std::fs::hard_link(&inner, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_file(&inner);
    let _ = std::fs::remove_dir(&private);
    bound
}

/// Binds `listen`. For a Unix socket, a stale socket file left by a crashed
/// run is removed (one that still answers is not), and the new socket gets
/// mode 0660 so that only the service's user and group can talk to it.
pub async fn bind(listen: &Listen) -> Result<Listener, ServeError> {
    match listen {
        Listen::Tcp(addr) => TcpListener::bind(addr)
            .await
            .map(Listener::Tcp)
            .map_err(|source| ServeError::BindTcp {
                addr: *addr,
                source,
            }),
        Listen::Unix(path) => bind_unix(path).await,
    }
}

async fn bind_unix(path: &Path) -> Result<Listener, ServeError> {
    let err = |source| ServeError::BindUnix {
        path: path.to_owned(),
        source,
    };
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("longer than the {MAX_SOCKET_PATH} bytes a Unix socket address holds"),
        )));
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            let connected = tokio::net::UnixStream::connect(path)
                .await
                .map(drop)
                .or_else(|e| match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(()),
                    _ => Err(e),
                });
            match connected {
                // Alive, and busy (its backlog full) is alive too.
                Ok(_) => {
                    return Err(ServeError::SocketInUse {
                        path: path.to_owned(),
                    });
                }
                // Nobody listens: left by a polld that died.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path).map_err(err)?;
                }
                // Not known to be stale (no permission, ...): not ours
                // to delete.
                Err(e) => return Err(err(e)),
            }
        }
        Ok(_) => {
            return Err(ServeError::NotASocket {
                path: path.to_owned(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = match bind_private(path) {
        Ok(listener) => listener,
        // No room in a socket address for the private directory's name:
        // bound in place, the socket has the umask's mode until the chmod.
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
            let listener = UnixListener::bind(path).map_err(err)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
            listener
        }
        Err(e) => return Err(err(e)),
    };
    Ok(Listener::Unix(listener, Some(path.to_owned())))
}

/// Binds `listen` and serves `router` until `shutdown` resolves; see
/// [`Listener::serve`].
pub async fn serve(
    listen: &Listen,
    router: Api,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    bind(listen).await?.serve(router, limits, shutdown).await;
    Ok(())
}

impl Listener {
    /// Serves `router` until `shutdown` resolves, then stops listening,
    /// lets in-flight requests finish for up to `limits.drain_timeout`
    /// (kept-alive connections close after their current request), drops
    /// what remains, and removes a Unix socket file. Call
    /// [`crate::ApiState::close`] at shutdown too, so that held long polls
    /// answer at once instead of at the end of their wait.
    pub async fn serve(self, router: Api, limits: ServeLimits, shutdown: impl Future<Output = ()>) {
        let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let draining = CancellationToken::new();
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        // Ends on shutdown; each pass accepts one connection.
        loop {
            // Reap finished connections so the set stays as small as the
            // number of open ones.
            while conns.try_join_next().is_some() {}
            let permit = tokio::select! {
                () = &mut shutdown => break,
                p = Arc::clone(&permits).acquire_owned() => p.expect("the semaphore is never closed"),
            };
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                a = self.accept() => a,
            };
            let io = match accepted {
                Ok(io) => io,
                Err(err) => {
                    // EMFILE and friends: pause instead of spinning on a
                    // listener that keeps failing.
                    tracing::warn!(error = %err, "API: accept failed");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            };
            let service = TowerToHyperService::new(router.clone());
            let draining = draining.clone();
            conns.spawn(async move {
                let _permit = permit;
                serve_connection(io, service, limits, draining).await;
            });
        }
        // Stop listening before the drain: a client that connects meanwhile
        // is refused at once and can retry, instead of waiting in the
        // backlog until the drain ends and then being reset. (A socket
        // systemd passed stays open in systemd, which queues new clients
        // for the next start.)
        let socket_file = match self {
            Listener::Unix(listener, path) => {
                drop(listener);
                path
            }
            Listener::Tcp(listener) => {
                drop(listener);
                None
            }
        };
        draining.cancel();
        let drained = tokio::time::timeout(limits.drain_timeout, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                open = conns.len(),
                "API: connections still open after the drain timeout; closing them"
            );
            conns.shutdown().await;
        }
        if let Some(path) = socket_file {
            let _ = std::fs::remove_file(path);
        }
    }

    async fn accept(&self) -> io::Result<Conn> {
        match self {
            Listener::Tcp(l) => l.accept().await.map(|(s, _)| {
                // Small JSON answers should not wait for Nagle.
                let _ = s.set_nodelay(true);
                Conn::Tcp(s)
            }),
            Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
        }
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn serve_connection(
    conn: Conn,
    service: TowerToHyperService<Api>,
    limits: ServeLimits,
    draining: CancellationToken,
) {
    match conn {
        Conn::Tcp(s) => serve_io(s, service, limits, draining).await,
        Conn::Unix(s) => serve_io(s, service, limits, draining).await,
    }
}

async fn serve_io<I>(
    io: I,
    service: TowerToHyperService<Api>,
    limits: ServeLimits,
    draining: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = draining.cancelled() => {
            // Finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(error = %err, "API connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What appears at the path between the check for a stale socket and
    /// the link (another polld starting at the same path) is left alone: a
    /// rename would have replaced it silently. Nothing of the private
    /// directory is left either way.
    #[tokio::test]
    async fn a_socket_is_linked_into_place_never_over_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        std::fs::write(&path, "someone else's").unwrap();
        let err = bind_private(&path).expect_err("replaced what was there");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "someone else's");
        std::fs::remove_file(&path).unwrap();

        let listener = bind_private(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        tokio::net::UnixStream::connect(&path).await.unwrap();
        drop(listener);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["api.sock"]);
    }
}

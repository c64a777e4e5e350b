//! systemd notification (`Type=notify`): READY=1 once the store is open, the
//! API bound and the engine running; STATUS= with a one-line summary;
//! WATCHDOG=1 at half of `$WATCHDOG_USEC`, only while the scheduler loop
//! makes progress; RELOADING=1 + MONOTONIC_USEC= then READY=1 around a
//! reload; STOPPING=1 on shutdown. Without `$NOTIFY_SOCKET` all of it is a
//! no-op.
//!
//! The datagrams are sent here rather than by `sd_notify::notify`, which
//! takes `$NOTIFY_SOCKET` as a file path only: sd_notify(3) says a leading
//! `@` names a socket in Linux's abstract namespace (as container managers
//! and older systemd pass it), and there it failed, so READY=1 never arrived
//! and systemd killed polld at `TimeoutStartSec=`.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

fn send(states: &[NotifyState<'_>]) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let message: String = states.iter().map(|s| format!("{s}\n")).collect();
    if let Err(err) = send_to(&socket, message.as_bytes()) {
        tracing::warn!(error = %err, socket = %socket.to_string_lossy(), "cannot notify systemd");
    }
}

/// Sends one notification datagram to `socket`, a `$NOTIFY_SOCKET` value:
/// an absolute path, or `@name` for an abstract socket.
pub(crate) fn send_to(socket: &OsStr, message: &[u8]) -> io::Result<()> {
    let sender = UnixDatagram::unbound()?;
    let sent = match socket.as_bytes() {
        [b'@', name @ ..] => {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            {
                use std::os::linux::net::SocketAddrExt;
                let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sender.send_to_addr(message, &address)?
            }
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            {
                let _ = name;
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "abstract sockets exist on Linux only",
                ));
            }
        }
        [b'/', ..] => sender.send_to(message, std::path::Path::new(socket))?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither an absolute path nor an @abstract name",
            ));
        }
    };
    if sent != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "notification datagram cut short",
        ));
    }
    Ok(())
}

/// READY=1 (with a status line).
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// STATUS=...
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// RELOADING=1 with MONOTONIC_USEC=, as systemd 253+ requires.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// STOPPING=1.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Sends WATCHDOG=1 every half watchdog period while `progress` keeps
/// moving; a stuck scheduler stops the pings so systemd restarts polld.
/// Returns at once when the watchdog is not enabled.
pub async fn watchdog(progress: impl Fn() -> u64, cancel: CancellationToken) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (period / 2).max(Duration::from_millis(10));
    tracing::info!(?period, "systemd watchdog enabled");
    let mut last = progress();
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = progress();
        if now != last {
            send(&[NotifyState::Watchdog]);
            last = now;
        } else {
            tracing::error!(
                "scheduler made no progress for half a watchdog period; not pinging the watchdog"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn an_abstract_notify_socket_gets_the_datagram() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("polld-notify-test-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&address).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        send_to(OsStr::new(&format!("@{name}")), b"READY=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
    }

    #[test]
    fn a_path_notify_socket_gets_the_datagram_and_junk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        send_to(path.as_os_str(), b"STOPPING=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\n");
        assert!(send_to(OsStr::new("relative/notify"), b"READY=1\n").is_err());
        assert!(send_to(OsStr::new(""), b"READY=1\n").is_err());
    }
}

//! systemd notification (`Type=notify`): READY=1 once the store is open, the
//! API bound and the engine running; STATUS= with a one-line summary;
//! WATCHDOG=1 at half of `$WATCHDOG_USEC`, only while the scheduler loop
//! makes progress; RELOADING=1 + MONOTONIC_USEC= then READY=1 around a
//! reload; STOPPING=1 on shutdown. Without `$NOTIFY_SOCKET` all of it is a
//! no-op.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

fn send(states: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(error = %err, "cannot notify systemd");
    }
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

//! What the engine derives from a watch's configuration: the request
//! fingerprint, the host it is limited under, and its initial state.

use std::sync::Arc;
use std::time::Duration;

use polld_config::{Policy, Watch};
use polld_store::{WatchState, WatchStatus};

/// A stable hash of everything that shapes the request (URL, method,
/// headers, body, cursor settings). When it changes, stored validators and
/// cursor no longer apply.
pub fn fingerprint(watch: &Watch) -> u64 {
    let mut hasher = blake3::Hasher::new();
    let mut field = |bytes: &[u8]| {
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(watch.url.as_str().as_bytes());
    field(watch.method.as_str().as_bytes());
    for (name, value) in &watch.headers {
        field(name.as_str().as_bytes());
        field(value.as_bytes());
    }
    field(watch.body.as_deref().unwrap_or("").as_bytes());
    if let Some(cursor) = &watch.cursor {
        field(cursor.param.as_deref().unwrap_or("").as_bytes());
        field(cursor.from.to_string().as_bytes());
        field(cursor.initial.as_deref().unwrap_or("").as_bytes());
    }
    let hash = hasher.finalize();
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Whether two versions of a watch poll the same way (request and policy).
pub(crate) fn same_settings(a: &Watch, b: &Watch) -> bool {
    fingerprint(a) == fingerprint(b)
        && a.policy == b.policy
        && a.until == b.until
        && a.fail_if == b.fail_if
        && schedule_text(a) == schedule_text(b)
}

pub(crate) fn schedule_text(watch: &Watch) -> Option<&str> {
    match &watch.schedule {
        polld_config::Schedule::Interval => None,
        polld_config::Schedule::Cron { expr, .. } => Some(expr),
    }
}

/// The host a watch's polls count against for `per_host`.
pub(crate) fn host_of(url: &str) -> Arc<str> {
    host_in(url::Url::parse(url).ok().as_ref())
}

/// [`host_of`] a URL already parsed (none when it does not parse).
pub(crate) fn host_in(url: Option<&url::Url>) -> Arc<str> {
    url.and_then(url::Url::host_str).unwrap_or_default().into()
}

/// The state of a watch never polled before.
pub(crate) fn new_state(watch: &Watch, fingerprint: u64) -> WatchState {
    WatchState {
        id: watch.id.to_string(),
        url: watch.url.to_string(),
        fingerprint,
        cursor: watch.cursor.as_ref().and_then(|c| c.initial.clone()),
        interval_ms: watch.policy.interval.as_millis() as u64,
        base_interval_ms: Some(watch.policy.interval.as_millis() as u64),
        status: WatchStatus::Ok,
        ..WatchState::default()
    }
}

/// Takes the policy's configured interval into the state: a new one (an
/// edit, by reload or while polld was stopped) replaces the interval
/// backoff grew from the old one; either way the current interval is kept
/// within the policy's bounds. Returns the interval and whether the
/// configured one changed (a state that never recorded one did not).
pub(crate) fn adopt_interval(state: &mut WatchState, policy: &Policy) -> (Duration, bool) {
    let base_ms = policy.interval.as_millis() as u64;
    let changed = state.base_interval_ms.is_some_and(|b| b != base_ms);
    state.base_interval_ms = Some(base_ms);
    let current = if changed {
        policy.interval
    } else {
        Duration::from_millis(state.interval_ms)
    };
    let interval = current.clamp(policy.min_interval, policy.max_interval);
    state.interval_ms = interval.as_millis() as u64;
    (interval, changed)
}

/// Whether the stored state is of a watch whose `until` held (`done`) or
/// whose `fail_if` held (an error with no poll ahead): it is not polled
/// again until its request changes.
pub(crate) fn is_stopped(state: &WatchState) -> bool {
    match state.status {
        WatchStatus::Done => true,
        WatchStatus::Error => state.next_due_ms.is_none(),
        _ => false,
    }
}

/// The request changed: drop validators, cursor and any learned move; a
/// stopped watch is polled again. What the old request's answers taught
/// the schedule goes too: the interval backoff stretched (the new request
/// has not been seen unchanged), the error count (a fixed URL is not
/// failing) and, on another host, the wait that host asked for; a wait
/// asked for by the same host is kept.
pub(crate) fn reset_request_state(state: &mut WatchState, watch: &Watch, fingerprint: u64) {
    if host_of(&state.url) != host_of(watch.url.as_str()) {
        state.hold_until_ms = None;
    }
    state.interval_ms = watch.policy.interval.as_millis() as u64;
    state.backoff_level = 0;
    state.consecutive_errors = 0;
    state.fingerprint = fingerprint;
    state.url = watch.url.to_string();
    state.etag = None;
    state.last_modified = None;
    state.cursor = watch.cursor.as_ref().and_then(|c| c.initial.clone());
    state.cursor_page_hash = None;
    state.consecutive_moves = 0;
    state.pending_job = None;
    if is_stopped(state) {
        state.status = WatchStatus::Ok;
    }
}

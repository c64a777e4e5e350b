//! Turns one poll outcome into the watch's new state: counters, validators,
//! cursor, status transitions (with their change-log events and log lines),
//! permanent moves, `until` / `fail_if`, and the next due time.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use polld_store::{ChangeKind, NewVersion, WatchState, WatchStatus};
use rand::Rng;

use super::Entry;
use super::policy::{self, Cadence, ServerDelay, Verdict};
use crate::agent::{Finished, OutcomeKind, PollOutcome};
use crate::redact;

/// A 301/308 seen on this many polls in a row re-points the watch.
pub(crate) const MOVES_BEFORE_REPOINT: u32 = 3;

/// What the engine does with a recorded outcome.
pub(crate) struct Recorded {
    /// The `result` label of `polld_polls_total`.
    pub(crate) result: &'static str,
    /// Delay before the next poll.
    pub(crate) delay: Duration,
    /// The watch is done (its `until` or `fail_if` held): no next poll.
    pub(crate) stopped: bool,
    pub(crate) new_version: Option<NewVersion>,
    pub(crate) events: Vec<ChangeKind>,
}

pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// not_modified / (not_modified + unchanged + changed), None before any answer.
pub(crate) fn ratio_304(state: &WatchState) -> Option<f64> {
    let answered = state.not_modified + state.unchanged + state.changed;
    (answered > 0).then(|| state.not_modified as f64 / answered as f64)
}

pub(crate) fn apply(
    entry: &mut Entry,
    outcome: &PollOutcome,
    now: SystemTime,
    rng: &mut impl Rng,
) -> Recorded {
    let watch = entry.watch.clone();
    // A copy only while the previous outcome's commit is pending.
    let state = Arc::make_mut(&mut entry.state);
    // For log lines only: the list's id is the state's, and borrowing it
    // saves a copy per poll.
    let id = &watch.id;
    let previous = state.status;
    let now_ms = unix_ms(now);

    state.polls += 1;
    state.last_checked_ms = Some(now_ms);
    state.last_status = outcome.status;
    state.bytes_received += outcome.bytes_received;
    // The agent returns the validators to store (freshened per RFC 9111
    // §4.3.4); a failed poll leaves the stored ones as they are.
    if matches!(
        outcome.kind,
        OutcomeKind::NotModified | OutcomeKind::Changed { .. } | OutcomeKind::Unchanged { .. }
    ) {
        // Mostly the same as stored (every 304): compared, not copied.
        if state.etag != outcome.etag {
            state.etag.clone_from(&outcome.etag);
        }
        if state.last_modified != outcome.last_modified {
            state.last_modified.clone_from(&outcome.last_modified);
        }
    }
    if outcome.cursor_reset {
        state.cursor = watch.cursor.as_ref().and_then(|c| c.initial.clone());
        state.cursor_page_hash = None;
    } else if let Some(cursor) = &outcome.cursor {
        state.cursor = Some(cursor.clone());
    }
    if matches!(
        outcome.kind,
        OutcomeKind::Changed { .. } | OutcomeKind::Unchanged { .. }
    ) && state.cursor_page_hash.as_deref() != outcome.cursor_page_hash.as_ref()
    {
        state.cursor_page_hash = outcome.cursor_page_hash.map(Box::new);
    }

    let mut events = Vec::new();
    let mut new_version = None;
    let (verdict, result, status) = match &outcome.kind {
        OutcomeKind::NotModified => {
            state.not_modified += 1;
            (Verdict::Unchanged, "not_modified", WatchStatus::Ok)
        }
        OutcomeKind::Unchanged { .. } => {
            state.unchanged += 1;
            (Verdict::Unchanged, "unchanged", WatchStatus::Ok)
        }
        OutcomeKind::Changed {
            body,
            hash,
            content_type,
        } => {
            state.changed += 1;
            state.last_changed_ms = Some(now_ms);
            state.latest_hash = Some(*hash);
            new_version = Some(NewVersion {
                body: body.to_vec(),
                hash: *hash,
                content_type: content_type.clone(),
                headers: crate::agent::kept_headers(&outcome.headers),
                fetched_at_ms: now_ms,
            });
            tracing::info!(watch = %id, bytes = body.len(), status = outcome.status, "changed: new version");
            (Verdict::Changed, "changed", WatchStatus::Ok)
        }
        OutcomeKind::RateLimited => {
            state.rate_limited += 1;
            (
                Verdict::RateLimited,
                "rate_limited",
                WatchStatus::RateLimited,
            )
        }
        OutcomeKind::Failed { error, retryable } => {
            state.errors += 1;
            state.last_error = Some(error.clone());
            if previous != WatchStatus::Error {
                tracing::warn!(watch = %id, error = %error, retryable, "poll failing");
            }
            (Verdict::Failed, "error", WatchStatus::Error)
        }
        OutcomeKind::JobPending { job } => {
            // Nothing new yet: counted as an unchanged answer. The cadence
            // stays; the job's Retry-After is the floor of the next delay.
            state.unchanged += 1;
            if state.pending_job.as_deref() != Some(job.as_str()) {
                tracing::info!(watch = %id, job = %redact::url(job), "async job still running (or a redirect asked for a long wait); the next poll resumes there");
            }
            (Verdict::Pending, "unchanged", WatchStatus::Ok)
        }
        OutcomeKind::Gone => {
            state.errors += 1;
            state.last_error = Some("410 Gone".to_owned());
            if previous != WatchStatus::Error {
                tracing::warn!(watch = %id, "410 Gone: the resource was removed; polling goes on with backoff");
            }
            (Verdict::Failed, "error", WatchStatus::Error)
        }
    };
    if status != WatchStatus::Error {
        state.last_error = None;
    }
    // The state left is recorded before the state entered. A watch that
    // stops here (`until` / `fail_if`) ends `done` or `error`, not rate
    // limited, whatever its answer was.
    let limited = status == WatchStatus::RateLimited && outcome.finished.is_none();
    if previous == WatchStatus::RateLimited && !limited {
        events.push(ChangeKind::RateLimitCleared);
    }
    match (previous, status) {
        (WatchStatus::Error, WatchStatus::Error) => {}
        (_, WatchStatus::Error) => events.push(ChangeKind::ErrorStarted),
        (WatchStatus::Error, _) => {
            // A 429/503 after errors is logged as rate limited below, not
            // as a success.
            if status == WatchStatus::Ok {
                tracing::info!(watch = %id, "recovered: poll succeeded again");
            }
            events.push(ChangeKind::ErrorCleared);
        }
        (WatchStatus::RateLimited, WatchStatus::Ok) => {
            tracing::info!(watch = %id, "rate limit over: the server answers polls again");
        }
        _ => {}
    }
    if limited && previous != WatchStatus::RateLimited {
        events.push(ChangeKind::RateLimited);
    }
    if status == WatchStatus::RateLimited && previous != WatchStatus::RateLimited {
        tracing::warn!(
            watch = %id,
            status = outcome.status,
            wait = outcome.hints.not_before.map(|d| tracing::field::display(humantime::format_duration(d))),
            "rate limited by the server"
        );
    }
    state.status = status;

    match &outcome.moved_permanently {
        Some(target) => {
            state.consecutive_moves += 1;
            if state.consecutive_moves >= MOVES_BEFORE_REPOINT {
                tracing::info!(watch = %id, from = %redact::url_text(&state.url), to = %redact::url(target), polls = state.consecutive_moves, "moved permanently: the watch now polls the new URL (the watch list is not rewritten)");
                state.url = target.to_string();
                state.consecutive_moves = 0;
            }
        }
        None => state.consecutive_moves = 0,
    }

    let mut stopped = false;
    match &outcome.finished {
        Some(Finished::Done { condition }) => {
            tracing::info!(watch = %id, %condition, "until conditions hold: polling stops");
            state.status = WatchStatus::Done;
            events.push(ChangeKind::Done);
            stopped = true;
        }
        Some(Finished::Failed { condition }) => {
            tracing::warn!(watch = %id, %condition, "fail_if condition holds: polling stops");
            state.status = WatchStatus::Error;
            state.last_error = Some(format!("fail_if condition {condition} holds"));
            events.push(ChangeKind::Done);
            stopped = true;
        }
        None => {}
    }

    // Where the next poll starts: a job still running is resumed there; a
    // transient failure or a rate limit keeps it; any other answer (the
    // job's result, or a 4xx on its status URL) ends it.
    match &outcome.kind {
        OutcomeKind::JobPending { job } if !stopped => state.pending_job = Some(job.to_string()),
        OutcomeKind::RateLimited
        | OutcomeKind::Failed {
            retryable: true, ..
        } if !stopped => {}
        _ => state.pending_job = None,
    }

    let hints = &outcome.hints;
    let requested = [
        hints.retry_after,
        hints.poll_interval,
        hints.rate_limit_reset,
    ]
    .into_iter()
    .flatten()
    .max();
    let decision = policy::decide(
        &watch.policy,
        &watch.schedule,
        Cadence {
            interval: Duration::from_millis(state.interval_ms),
            backoff_level: state.backoff_level,
            consecutive_errors: state.consecutive_errors,
        },
        verdict,
        ServerDelay {
            requested,
            fresh_for: hints.fresh_for,
        },
        now,
        rng,
    );
    state.interval_ms = decision.cadence.interval.as_millis() as u64;
    state.backoff_level = decision.cadence.backoff_level;
    state.consecutive_errors = decision.cadence.consecutive_errors;
    state.next_due_ms = (!stopped).then(|| unix_ms(now + decision.delay));
    state.hold_until_ms = decision
        .server_floor
        .filter(|_| !stopped)
        .map(|floor| unix_ms(now + floor));
    tracing::debug!(watch = %id, result, delay = ?decision.delay, reason = decision.reason, "next poll");

    Recorded {
        result,
        delay: decision.delay,
        stopped,
        new_version,
        events,
    }
}

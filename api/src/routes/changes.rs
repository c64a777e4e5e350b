//! `GET /v1/changes` (long poll) and `GET /v1/changes/stream` (Server-Sent
//! Events): the global change log, read through `crate::feed`.
//!
//! Cursors: `next` (and each SSE event's `id`) is an opaque string to pass
//! back as `after` (or `Last-Event-ID`). Delivery is at least once: a client
//! that resumes from an older cursor sees some changes again.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use tokio::time::Instant;
use utoipa::IntoParams;

use super::{parse_limit, query};
use crate::error::ApiError;
use crate::feed::{Feed, Hold};
use crate::json::{ChangesPage, ErrorJson, GoneJson};
use crate::state::{ApiState, OwnedWaiterSlot, WaiterSlot};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Seconds a client turned away with 429 is asked to wait.
const RETRY_AFTER_S: u64 = 2;
/// SSE comment interval: below the idle timeouts of proxies.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The feed's parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ChangesQuery {
    /// Opaque cursor: the `next` of the previous answer. Without it the feed
    /// starts at the oldest retained change.
    after: Option<String>,
    /// How long to hold the request when there are no changes yet, e.g.
    /// `30s` or `30` (seconds); capped (55 s by default). Default 0: answer
    /// at once.
    wait: Option<String>,
    /// Changes per answer, 1 to 1000 (default 100).
    limit: Option<String>,
}

fn parse_cursor(raw: Option<&str>) -> Result<Option<u64>, ApiError> {
    raw.map(|raw| {
        raw.trim().parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!(
                "malformed cursor {raw:?}: pass back the `next` of a previous answer"
            ))
        })
    })
    .transpose()
}

fn parse_wait(raw: Option<&str>) -> Result<Duration, ApiError> {
    let Some(raw) = raw else {
        return Ok(Duration::ZERO);
    };
    if let Ok(secs) = raw.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(raw).map_err(|_| {
        ApiError::BadRequest(format!("wait must be a duration such as 30s, got {raw:?}"))
    })
}

/// How long to hold a request: `wait` capped at `max`, less up to a tenth,
/// as a window from which the feed picks the deadline at random, so that
/// clients that started together do not all come back in the same instant.
fn hold_for(wait: Duration, max: Duration) -> (Duration, Duration) {
    let wait = wait.min(max);
    (wait - wait / 10, wait)
}

fn hold_from_now((least, most): (Duration, Duration)) -> Hold {
    let now = Instant::now();
    Hold {
        earliest: now + least,
        latest: now + most,
    }
}

fn waiter_slot(state: &ApiState) -> Result<WaiterSlot<'_>, ApiError> {
    WaiterSlot::take(state).ok_or(ApiError::TooManyWaiters {
        retry_after_s: RETRY_AFTER_S,
    })
}

/// The changes after a cursor; when there are none yet, holds the request
/// until one is committed or `wait` runs out.
#[utoipa::path(get, path = "/v1/changes", tag = "changes", params(ChangesQuery),
    responses(
        (status = 200, description = "Changes after the cursor (possibly none, at the end of `wait`)", body = ChangesPage),
        (status = 400, description = "Malformed cursor, wait or limit", body = ErrorJson),
        (status = 410, description = "The cursor is older than the retained history, or ahead of this feed (the database was replaced): re-read /v1/watches and resume from `resync_after`", body = GoneJson),
        (status = 429, description = "Too many waiters", body = ErrorJson,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ))]
pub(crate) async fn long_poll(
    State(state): State<ApiState>,
    q: Result<Query<ChangesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    // The query's strings are dropped before the wait, not held by it.
    let (after, wait, limit) = {
        let q = query(q)?;
        (
            parse_cursor(q.after.as_deref())?,
            parse_wait(q.wait.as_deref())?,
            parse_limit(q.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?,
        )
    };
    let inner = &state.inner;
    // Answer from what is there first: a client with changes waiting needs
    // no waiter slot.
    let page = inner
        .feed
        .next_page(after, limit, None, &inner.closing, false)
        .await?;
    let hold = hold_for(wait, inner.options.max_wait);
    let page = if page.changes.is_empty() && !hold.1.is_zero() && !inner.closing.is_cancelled() {
        let _slot = waiter_slot(&state)?;
        inner
            .feed
            .next_page(
                Some(page.next),
                limit,
                Some(hold_from_now(hold)),
                &inner.closing,
                true,
            )
            .await?
    } else {
        page
    };
    if let Some(json) = page.json {
        return Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response());
    }
    Ok(Json(ChangesPage {
        changes: page.changes,
        next: page.next.to_string(),
    })
    .into_response())
}

/// The parameters of the stream.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StreamQuery {
    /// Opaque cursor to start after; `Last-Event-ID` wins when both are set.
    after: Option<String>,
}

/// The same feed as Server-Sent Events: one `change` event per change, its
/// `id` the cursor; reconnecting with `Last-Event-ID` resumes after it. A
/// cursor that falls out of retention mid-stream ends it with an `error`
/// event whose data is the 410 body (`error`, `resync_after`).
#[utoipa::path(get, path = "/v1/changes/stream", tag = "changes",
    params(StreamQuery, ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses(
        (status = 200, description = "An event stream of `change` events", content_type = "text/event-stream", body = String),
        (status = 400, description = "Malformed cursor", body = ErrorJson),
        (status = 410, description = "The cursor is older than the retained history, or ahead of this feed (the database was replaced): re-read /v1/watches and resume from `resync_after`", body = GoneJson),
        (status = 429, description = "Too many waiters", body = ErrorJson,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ))]
pub(crate) async fn sse(
    State(state): State<ApiState>,
    q: Result<Query<StreamQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("\u{fffd}").to_owned());
    let after = parse_cursor(last_event_id.as_deref().or(q.after.as_deref()))?;
    let slot = waiter_slot(&state)?;
    // Resolve the start (and answer 410 or 400) before the 200 is sent.
    let first = state
        .inner
        .feed
        .next_page(after, DEFAULT_LIMIT, None, &state.inner.closing, false)
        .await?;
    let slot = slot.into_owned(&state);
    let events = events(state, first, slot);
    let mut res = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    // nginx buffers proxied answers unless told not to: events would reach
    // the client only once a buffer filled.
    res.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

struct StreamState {
    feed: Feed,
    state: ApiState,
    cursor: u64,
    first: Option<Vec<crate::json::ChangeJson>>,
    done: bool,
    /// Held until the stream ends or its client goes away.
    _slot: OwnedWaiterSlot,
}

fn events(
    state: ApiState,
    first: crate::feed::Page,
    slot: OwnedWaiterSlot,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let st = StreamState {
        feed: state.inner.feed.clone(),
        cursor: first.next,
        first: Some(first.changes),
        state,
        done: false,
        _slot: slot,
    };
    // Each step yields one batch (possibly empty at the end of a wait); the
    // stream ends on shutdown, when the store closes, on an error, or when
    // the client goes away.
    stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        if let Some(first) = st.first.take() {
            return Some((batch(first), st));
        }
        let inner = &st.state.inner;
        // Shutdown, or the store closed (learnt from the feed's tail, as
        // the wait that just ended learnt it).
        if inner.closing.is_cancelled() || st.feed.is_closed() {
            return None;
        }
        let hold = hold_from_now(hold_for(inner.options.max_wait, inner.options.max_wait));
        match st
            .feed
            .next_page(
                Some(st.cursor),
                DEFAULT_LIMIT,
                Some(hold),
                &inner.closing,
                false,
            )
            .await
        {
            Ok(page) => {
                st.cursor = page.next;
                Some((batch(page.changes), st))
            }
            // The store closed while this stream was between two waits:
            // it ends as at shutdown, not with an error event.
            Err(_) if st.feed.is_closed() => None,
            Err(err) => {
                st.done = true;
                // Boxed: rare, and a held stream keeps its future allocated.
                let data = Box::pin(error_data(err)).await;
                let event = Event::default().event("error").data(data);
                Some((vec![Ok(event)], st))
            }
        }
    })
    .flat_map(stream::iter)
}

/// The data of an `error` event: the JSON body the same error gets as an
/// HTTP answer (410's `resync_after` included, internal details left out),
/// logged as that answer would be.
async fn error_data(err: ApiError) -> String {
    let body = err.into_response().into_body();
    let json = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    String::from_utf8_lossy(&json).into_owned()
}

fn batch(changes: Vec<crate::json::ChangeJson>) -> Vec<Result<Event, Infallible>> {
    changes
        .into_iter()
        .map(|c| {
            let data = serde_json::to_string(&c).unwrap_or_default();
            Ok(Event::default()
                .event("change")
                .id(c.seq.to_string())
                .data(data))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits() {
        assert_eq!(parse_wait(None).unwrap(), Duration::ZERO);
        assert_eq!(parse_wait(Some("30")).unwrap(), Duration::from_secs(30));
        assert_eq!(parse_wait(Some("1m")).unwrap(), Duration::from_secs(60));
        assert!(parse_wait(Some("soon")).is_err());
        let max = Duration::from_secs(55);
        assert_eq!(
            hold_for(Duration::from_secs(600), max),
            (Duration::from_millis(49_500), max)
        );
        assert_eq!(
            hold_for(Duration::from_secs(10), max),
            (Duration::from_secs(9), Duration::from_secs(10))
        );
        assert_eq!(
            hold_for(Duration::ZERO, max),
            (Duration::ZERO, Duration::ZERO)
        );
    }

    #[test]
    fn cursors() {
        assert_eq!(parse_cursor(None).unwrap(), None);
        assert_eq!(parse_cursor(Some("42")).unwrap(), Some(42));
        assert!(parse_cursor(Some("abc")).is_err());
        assert!(parse_cursor(Some("-1")).is_err());
    }
}

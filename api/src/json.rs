//! The JSON shapes of DESIGN.md ("Local API") and their conversion from the
//! store's records. Field names here are the contract: more fields may be
//! added, none renamed. A field that may be unknown is sent as `null`, never
//! left out, so the schema marks it required (and nullable).

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use polld_store::{Change, Version, WatchState};
use serde::Serialize;
use utoipa::ToSchema;

/// not_modified / (not_modified + unchanged + changed): the share of
/// successful polls that a conditional request saved. `None` before any
/// successful poll (errors and rate limits say nothing about caching).
#[must_use]
pub fn ratio_304(not_modified: u64, unchanged: u64, changed: u64) -> Option<f64> {
    let total = not_modified
        .saturating_add(unchanged)
        .saturating_add(changed);
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    (total > 0).then(|| not_modified as f64 / total as f64)
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds, e.g.
/// `2026-01-02T03:04:05.678Z`.
pub(crate) fn rfc3339(ms: u64) -> String {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Lower-case hex of a content hash.
pub(crate) fn hex(hash: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(hash.len() * 2);
    for b in hash {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// One watch with its state.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct WatchJson {
    /// Watch id.
    pub(crate) id: String,
    /// The URL polled (follows permanent redirects).
    pub(crate) url: String,
    /// `ok`, `error`, `rate_limited`, `done` or `removed`.
    pub(crate) state: &'static str,
    /// HTTP status of the last answer.
    #[schema(required = true)]
    pub(crate) last_status: Option<u16>,
    /// Text of the last error.
    #[schema(required = true)]
    pub(crate) last_error: Option<String>,
    /// Last poll (RFC 3339).
    #[schema(required = true)]
    pub(crate) last_checked: Option<String>,
    /// Last new version (RFC 3339).
    #[schema(required = true)]
    pub(crate) last_changed: Option<String>,
    /// Next scheduled poll (RFC 3339); null when not scheduled.
    #[schema(required = true)]
    pub(crate) next_poll: Option<String>,
    /// Current interval in seconds: the cadence that unchanged polls
    /// stretch by `backoff` and a change resets. Error backoff and server
    /// requests (`Retry-After`) wait on top of it; `next_poll` is when the
    /// next poll really is.
    pub(crate) interval_s: f64,
    /// Versions retained.
    pub(crate) versions: u64,
    /// Number of the newest version.
    #[schema(required = true)]
    pub(crate) latest_version: Option<u64>,
    /// Polls made.
    pub(crate) polls: u64,
    /// 304 answers.
    pub(crate) not_modified: u64,
    /// 200 answers whose body equalled the latest version.
    pub(crate) unchanged: u64,
    /// Answers that made a new version.
    pub(crate) changed: u64,
    /// Failed polls.
    pub(crate) errors: u64,
    /// 429/503 answers.
    pub(crate) rate_limited: u64,
    /// Failed or rate-limited (429/503) polls in a row: the exponent of the
    /// error backoff, which both grow. Back to 0 at the next answered poll.
    pub(crate) consecutive_errors: u32,
    /// Body bytes received.
    pub(crate) bytes_received: u64,
    /// not_modified / (not_modified + unchanged + changed); null before any
    /// successful poll.
    #[schema(required = true)]
    pub(crate) ratio_304: Option<f64>,
}

impl From<&WatchState> for WatchJson {
    fn from(w: &WatchState) -> Self {
        #[allow(clippy::cast_precision_loss)] // intervals are far below 2^52 ms
        let interval_s = w.interval_ms as f64 / 1000.0;
        WatchJson {
            id: w.id.clone(),
            // Credentials in the URL stay in the watch list (and the store).
            url: polld_config::redact::url_text(&w.url),
            state: w.status.as_str(),
            last_status: w.last_status,
            last_error: w.last_error.clone(),
            last_checked: w.last_checked_ms.map(rfc3339),
            last_changed: w.last_changed_ms.map(rfc3339),
            next_poll: w.next_due_ms.map(rfc3339),
            interval_s,
            versions: w.versions,
            latest_version: w.latest_version,
            polls: w.polls,
            not_modified: w.not_modified,
            unchanged: w.unchanged,
            changed: w.changed,
            errors: w.errors,
            rate_limited: w.rate_limited,
            consecutive_errors: w.consecutive_errors,
            bytes_received: w.bytes_received,
            ratio_304: ratio_304(w.not_modified, w.unchanged, w.changed),
        }
    }
}

/// A page of watches.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WatchList {
    /// Watches, ordered by id.
    pub(crate) watches: Vec<WatchJson>,
    /// Pass as `after` for the next page; null on the last page.
    #[schema(required = true)]
    pub(crate) next: Option<String>,
}

/// One stored version (without its body).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct VersionJson {
    /// 1, 2, … per watch; never reused.
    pub(crate) number: u64,
    /// When the body was fetched (RFC 3339).
    pub(crate) fetched_at: String,
    /// Body size in bytes.
    pub(crate) size: u64,
    /// `Content-Type` of the response that carried it.
    #[schema(required = true)]
    pub(crate) content_type: Option<String>,
    /// BLAKE3 of the body, hex; also the body's `ETag`.
    pub(crate) hash: String,
    /// The headers polld kept from the response that carried the body
    /// (such as `etag`, `last-modified`, `cache-control`,
    /// `content-language`, `link`), by
    /// lower-case name; the values of a name sent more than once are joined
    /// with `, ` (RFC 9110 §5.3). Empty when none was kept.
    #[schema(example = json!({"etag": "\"33a64df5\"", "last-modified": "Tue, 14 Nov 2023 22:13:20 GMT"}))]
    pub(crate) headers: BTreeMap<String, String>,
}

impl From<&Version> for VersionJson {
    fn from(v: &Version) -> Self {
        VersionJson {
            number: v.number,
            fetched_at: rfc3339(v.fetched_at_ms),
            size: v.size,
            content_type: v.content_type.clone(),
            hash: hex(&v.hash),
            headers: header_map(&v.headers),
        }
    }
}

/// Stored headers by lower-case name, the values of a repeated name joined
/// with `, ` in the order they were stored.
pub(crate) fn header_map(headers: &[(String, String)]) -> BTreeMap<String, String> {
    let mut map = BTreeMap::<String, String>::new();
    for (name, value) in headers {
        map.entry(name.to_ascii_lowercase())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(value);
            })
            .or_insert_with(|| value.clone());
    }
    map
}

/// The stored value of header `name` (lower case), repeated values joined
/// as in [`header_map`]; `None` when it was not kept.
pub(crate) fn stored_header(headers: &[(String, String)], name: &str) -> Option<String> {
    header_map(headers).remove(name)
}

/// The versions of a watch.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct VersionList {
    /// Oldest first.
    pub(crate) versions: Vec<VersionJson>,
}

/// One entry of the change log.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ChangeJson {
    /// Position in the global change log.
    pub(crate) seq: u64,
    /// Watch id.
    pub(crate) watch: String,
    /// The version made; null for changes that made none.
    #[schema(required = true)]
    pub(crate) version: Option<u64>,
    /// `new_version`, `watch_added`, `watch_removed`, `error_started`,
    /// `error_cleared`, `rate_limited`, `rate_limit_cleared` or `done`.
    pub(crate) kind: &'static str,
    /// When (RFC 3339).
    pub(crate) at: String,
}

impl From<&Change> for ChangeJson {
    fn from(c: &Change) -> Self {
        ChangeJson {
            seq: c.seq,
            watch: c.watch.clone(),
            version: c.version,
            kind: c.kind.as_str(),
            at: rfc3339(c.at_ms),
        }
    }
}

/// A page of the changes feed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChangesPage {
    /// Changes after the cursor, oldest first (at most `limit`).
    pub(crate) changes: Vec<ChangeJson>,
    /// Opaque cursor: pass it back as `after`. Delivery is at least once.
    pub(crate) next: String,
}

/// A stored body, as bytes (only for the OpenAPI document).
#[derive(Debug, ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // never built: it names the schema of raw bodies
pub(crate) struct BinaryBody(Vec<u8>);

/// An error body: every 4xx and 5xx answer has this shape.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorJson {
    /// What went wrong.
    pub(crate) error: String,
}

/// The body of `410 Gone` on the changes feed: an error body that also says
/// where to resume.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GoneJson {
    /// What happened and how to resync.
    pub(crate) error: String,
    /// Cursor to pass as `after` once the state was re-read.
    pub(crate) resync_after: String,
}

/// The body of `202` on `POST /v1/watches/{id}/poll`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PollQueued {
    /// Watch id.
    pub(crate) watch: String,
    /// Always true: the poll was queued.
    pub(crate) queued: bool,
}

/// The body of a successful `/healthz` or `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HealthJson {
    /// `ok`.
    pub(crate) status: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_is_null_without_successful_polls() {
        assert_eq!(ratio_304(0, 0, 0), None);
        assert_eq!(ratio_304(3, 1, 0), Some(0.75));
        assert_eq!(ratio_304(0, 2, 2), Some(0.0));
        assert_eq!(ratio_304(u64::MAX, u64::MAX, 0), Some(1.0));
    }

    #[test]
    fn stored_headers_by_lower_case_name_repeats_joined() {
        let stored = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect()
        };
        let h = stored(&[
            ("Link", "<a>; rel=next"),
            ("etag", "\"x\""),
            ("link", "<b>; rel=prev"),
        ]);
        let map = header_map(&h);
        assert_eq!(map.len(), 2);
        assert_eq!(map["link"], "<a>; rel=next, <b>; rel=prev");
        assert_eq!(map["etag"], "\"x\"");
        assert_eq!(
            stored_header(&h, "link").as_deref(),
            Some("<a>; rel=next, <b>; rel=prev")
        );
        assert_eq!(stored_header(&h, "content-language"), None);
        assert!(header_map(&[]).is_empty());
    }

    #[test]
    fn times_are_rfc3339_utc_with_millis() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}

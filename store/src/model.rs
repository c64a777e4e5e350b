//! The records the store keeps and the units of work it accepts.
//!
//! Owns the plain data types shared with the engine and the API:
//! [`WatchState`], [`Version`], [`Change`] (read side) and [`Outcome`] /
//! [`NewVersion`] / [`Committed`] (write side). They carry no behaviour
//! beyond naming their enums the way the HTTP API spells them.

use std::sync::Arc;

use crate::Hash;

/// What a watch is doing, as the API reports it in `state`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum WatchStatus {
    /// The last poll succeeded.
    #[default]
    Ok,
    /// The last poll failed.
    Error,
    /// The last answer was 429 or 503.
    RateLimited,
    /// The watch's `until` (or `fail_if`) conditions held: polling stopped.
    Done,
    /// The watch left the watch list; its history is kept.
    Removed,
}

impl WatchStatus {
    /// The API's spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            WatchStatus::Ok => "ok",
            WatchStatus::Error => "error",
            WatchStatus::RateLimited => "rate_limited",
            WatchStatus::Done => "done",
            WatchStatus::Removed => "removed",
        }
    }
}

/// Everything the store keeps about one watch besides its versions.
///
/// The engine owns every field except `versions`, `latest_version` and
/// `latest_hash`: those describe what is stored, so the store computes them
/// on commit and ignores the values it is handed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchState {
    /// Watch id (`[a-z0-9_-]+`), the key.
    pub id: String,
    /// The URL polled (may differ from the config after permanent moves).
    pub url: String,
    /// Hash of the request config, computed by the engine.
    pub fingerprint: u64,
    /// Stored `ETag`, verbatim.
    pub etag: Option<String>,
    /// Stored `Last-Modified`, verbatim.
    pub last_modified: Option<String>,
    /// Stored cursor for incremental fetches.
    pub cursor: Option<String>,
    /// Next poll, unix ms.
    pub next_due_ms: Option<u64>,
    /// Current interval, ms.
    pub interval_ms: u64,
    /// Adaptive backoff level.
    pub backoff_level: u32,
    /// Failed polls in a row.
    pub consecutive_errors: u32,
    /// 301/308 answers in a row.
    pub consecutive_moves: u32,
    /// HTTP status of the last answer.
    pub last_status: Option<u16>,
    /// Text of the last error.
    pub last_error: Option<String>,
    /// What the watch is doing.
    pub status: WatchStatus,
    /// Last poll, unix ms.
    pub last_checked_ms: Option<u64>,
    /// Last new version, unix ms.
    pub last_changed_ms: Option<u64>,
    /// Polls made.
    pub polls: u64,
    /// 304 answers.
    pub not_modified: u64,
    /// 200 answers whose body equalled the latest version.
    pub unchanged: u64,
    /// Answers that made a new version.
    pub changed: u64,
    /// Failed polls.
    pub errors: u64,
    /// 429/503 answers.
    pub rate_limited: u64,
    /// Body bytes received.
    pub bytes_received: u64,
    /// Versions currently retained (set by the store).
    pub versions: u64,
    /// Number of the newest version (set by the store).
    pub latest_version: Option<u64>,
    /// Body hash of the newest version (set by the store).
    pub latest_hash: Option<Hash>,
    /// The status URL of an async job (202 + `Location`) that was still
    /// running when the last poll had to end: the next poll resumes there
    /// instead of starting (and POSTing) a new job.
    pub pending_job: Option<String>,
    /// The watch's configured `interval`, ms, when this state was written:
    /// a restart under another one starts from the new interval (as a
    /// reload does) instead of resuming what backoff grew from the old.
    /// `None` in records written before polld kept it.
    pub base_interval_ms: Option<u64>,
    /// The server asked not to be polled again before this time, unix ms
    /// (`Retry-After`, `X-Poll-Interval`, a rate-limit reset or the
    /// freshness of its last answer): an edited interval may bring the next
    /// poll forward, never before this. `None` when the last answer asked
    /// for nothing (and in records from before schema 5).
    pub hold_until_ms: Option<u64>,
    /// For a `link:next` watch whose last version joined several pages:
    /// the hash of the last page, where the stored cursor points and the
    /// next poll starts. That page alone, unchanged, is nothing new (its
    /// hash is not the version's). Boxed: 8 bytes in every other state.
    pub cursor_page_hash: Option<Box<Hash>>,
}

/// One stored version of a watch's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// 1, 2, … per watch; never reused, even after pruning.
    pub number: u64,
    /// When the body was fetched, unix ms.
    pub fetched_at_ms: u64,
    /// BLAKE3 of the (decoded) body.
    pub hash: Hash,
    /// Body length in bytes (uncompressed).
    pub size: u64,
    /// `Content-Type` of the response.
    pub content_type: Option<String>,
    /// The response headers worth keeping, as the engine chose them.
    pub headers: Vec<(String, String)>,
}

/// What a change-log entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A new version was stored.
    NewVersion,
    /// The watch appeared in the watch list.
    WatchAdded,
    /// The watch left the watch list.
    WatchRemoved,
    /// Polls started failing.
    ErrorStarted,
    /// Polls succeed again.
    ErrorCleared,
    /// `until` / `fail_if` held: polling stopped.
    Done,
    /// The server started answering 429/503: polls wait as it asks.
    RateLimited,
    /// A poll after a 429/503 got another answer (a success or a
    /// failure).
    RateLimitCleared,
}

impl ChangeKind {
    /// The API's spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::NewVersion => "new_version",
            ChangeKind::WatchAdded => "watch_added",
            ChangeKind::WatchRemoved => "watch_removed",
            ChangeKind::ErrorStarted => "error_started",
            ChangeKind::ErrorCleared => "error_cleared",
            ChangeKind::Done => "done",
            ChangeKind::RateLimited => "rate_limited",
            ChangeKind::RateLimitCleared => "rate_limit_cleared",
        }
    }
}

/// One entry of the global change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Monotonic sequence number, global across watches, never reused.
    pub seq: u64,
    /// The watch id.
    pub watch: String,
    /// The version this change made, `None` for changes that made none.
    pub version: Option<u64>,
    /// What happened.
    pub kind: ChangeKind,
    /// When, unix ms.
    pub at_ms: u64,
}

/// A body to store as the next version of a watch.
#[derive(Debug, Clone)]
pub struct NewVersion {
    /// The decoded body.
    pub body: Vec<u8>,
    /// `hash_body(&body)`; checked on commit, since a wrong content address
    /// would silently hand another watch's body out.
    pub hash: Hash,
    /// `Content-Type` of the response.
    pub content_type: Option<String>,
    /// The response headers worth keeping.
    pub headers: Vec<(String, String)>,
    /// When it was fetched, unix ms.
    pub fetched_at_ms: u64,
}

/// The result of one poll, as the engine hands it to the store.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The watch's new state (upserted). Shared: the engine keeps the
    /// same state as its own copy of the watch until it changes again.
    pub state: Arc<WatchState>,
    /// A new version to store, if the body changed.
    pub new_version: Option<NewVersion>,
    /// Change-log events besides `NewVersion` (which the store appends itself
    /// when `new_version` is set), in order.
    pub events: Vec<ChangeKind>,
    /// Retention for this watch: versions beyond this many are pruned. At
    /// least one version is always kept, because the newest one is what the
    /// next body is compared against and what `versions/latest` serves.
    pub keep_versions: u32,
}

/// What one committed outcome became.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// The change-log seqs it appended, in order.
    pub seqs: Vec<u64>,
    /// The version number it stored, if any.
    pub version: Option<u64>,
}

//! The changes feed: an in-memory tail of the change log, kept current by
//! one task that follows the store's commits, from which long polls and SSE
//! streams are answered.
//!
//! Why a tail: when a commit wakes 10,000 long polls, each reading the store
//! in `spawn_blocking` would queue 10,000 read transactions on the blocking
//! pool. Instead one task reads the new changes once per commit and publishes
//! an immutable snapshot through a `watch` channel, then wakes the parked
//! waiters, which slice the snapshot. Cursors older than the tail fall back
//! to a store read. No read transaction is ever held while waiting: each
//! store read is one short `spawn_blocking` call.
//!
//! Why deadline buckets ([`Deadlines`]): a parked waiter waits on one
//! [`Notify`] shared by every waiter whose deadline falls on the same mark
//! (100 ms apart for waits of a second or more), woken by the feed task on
//! a commit and by one timer when the mark passes. A tokio timer per waiter would cost each waiter a timer
//! entry and, when a commit wakes them all, a turn on the timer driver's one
//! lock to remove it: 10,000 waiters contended on that lock.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use polld_store::{Store, StoreError};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use axum::body::Bytes;

use crate::json::{ChangeJson, ChangesPage};

/// Changes kept in memory: enough for every waiter that is at most this many
/// changes behind to be answered without touching the store.
pub(crate) const TAIL_CAP: usize = 1024;

/// An immutable view of the newest changes: every change with
/// `first_after < seq <= last_seq`, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    /// Set once at shutdown: waiters answer at once. Carried here rather
    /// than by each waiter also waiting on the cancellation token, which
    /// would cost every waiter one more registration and a contended
    /// deregistration when it wakes.
    pub(crate) closed: bool,
    pub(crate) first_after: u64,
    pub(crate) last_seq: u64,
    pub(crate) changes: VecDeque<ChangeJson>,
    /// The answer, serialized once, for the waiters that were parked at the
    /// previous end of the tail: after a commit they all want the same page,
    /// and handing each a clone of these bytes saves serializing it (and a
    /// handful of allocations) thousands of times.
    pub(crate) fresh: Option<Fresh>,
}

/// A ready `{"changes": [...], "next": "N"}` body.
#[derive(Debug)]
pub(crate) struct Fresh {
    /// The cursor it answers.
    pub(crate) after: u64,
    /// Changes in it.
    pub(crate) count: usize,
    /// The JSON.
    pub(crate) json: Bytes,
}

/// Largest page served from [`Fresh`] (the API's largest `limit`).
const FRESH_MAX: usize = 1000;

impl Tail {
    /// The changes after `after`, at most `limit`, when the tail covers
    /// `after`; `None` when it does not (older, or newer than the tail knows).
    pub(crate) fn page(&self, after: u64, limit: usize) -> Option<Vec<ChangeJson>> {
        if after < self.first_after || after > self.last_seq {
            return None;
        }
        let start = self.changes.partition_point(|c| c.seq <= after);
        Some(self.changes.range(start..).take(limit).cloned().collect())
    }
}

/// A page of the feed: the changes and the cursor to pass back.
#[derive(Debug)]
pub(crate) struct Page {
    pub(crate) changes: Vec<ChangeJson>,
    pub(crate) next: u64,
    /// When set, the whole answer already serialized (`changes` is then
    /// empty and `next` is that of the JSON).
    pub(crate) json: Option<Bytes>,
}

/// How long a waiter may be held: until some instant from `earliest` to
/// `latest`. The feed picks one (at random, so that clients that started
/// together come back spread out), preferring the marks waiters share.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hold {
    pub(crate) earliest: Instant,
    pub(crate) latest: Instant,
}

/// Spacings of the deadlines waiters share, coarsest first: a hold window
/// gets the coarsest that has a mark in it (100 ms for waits of a second
/// or more), so that short waits share buckets too.
const MARKS: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(10),
    Duration::from_millis(1),
];

/// The parked waiters, grouped by deadline: one [`Bucket`] per deadline
/// (a multiple of one of [`MARKS`] since `base`, or an exact instant when a
/// hold window contains no mark), each with one timer task.
#[derive(Debug)]
pub(crate) struct Deadlines {
    base: Instant,
    /// By deadline, in nanoseconds since `base`. A bucket leaves the map
    /// when its deadline passes.
    buckets: Mutex<HashMap<u64, Arc<Bucket>>>,
}

/// Waiters with one deadline.
#[derive(Debug, Default)]
pub(crate) struct Bucket {
    /// Woken on every published tail, and once at the deadline.
    wake: Notify,
    /// Set (before the last wake) when the deadline has passed.
    expired: AtomicBool,
}

impl Deadlines {
    fn new() -> Arc<Deadlines> {
        Arc::new(Deadlines {
            base: Instant::now(),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// The bucket of a deadline within `hold`; starts its timer when it is
    /// the first waiter for that deadline.
    fn join(self: &Arc<Self>, hold: Hold) -> Arc<Bucket> {
        let key = self.pick(hold);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(bucket) = buckets.get(&key) {
            return Arc::clone(bucket);
        }
        let bucket = Arc::new(Bucket::default());
        buckets.insert(key, Arc::clone(&bucket));
        drop(buckets);
        let at = self.base + Duration::from_nanos(key);
        tokio::spawn(expire(Arc::clone(self), key, at));
        bucket
    }

    /// A deadline within `hold`, in nanoseconds since `base`.
    fn pick(&self, hold: Hold) -> u64 {
        let since = |t: Instant| {
            u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
        };
        let (lo, hi) = (since(hold.earliest), since(hold.latest));
        let hi = hi.max(lo);
        MARKS
            .iter()
            .find_map(|mark| {
                let mark = u64::try_from(mark.as_nanos()).unwrap_or(u64::MAX);
                let (first, last) = (lo.div_ceil(mark), hi / mark);
                (first <= last).then(|| rand::random_range(first..=last).saturating_mul(mark))
            })
            .unwrap_or_else(|| rand::random_range(lo..=hi))
    }

    /// Wakes every parked waiter (a new tail, or shutdown).
    fn wake_all(&self) {
        let buckets: Vec<Arc<Bucket>> = self
            .buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for bucket in buckets {
            bucket.wake.notify_waiters();
        }
    }
}

/// Ends the wait of the bucket at `key` once `at` has passed. The bucket
/// leaves the map first, so that no waiter joins it after its last wake.
async fn expire(deadlines: Arc<Deadlines>, key: u64, at: Instant) {
    tokio::time::sleep_until(at).await;
    let bucket = deadlines
        .buckets
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&key);
    if let Some(bucket) = bucket {
        bucket.expired.store(true, Ordering::SeqCst);
        bucket.wake.notify_waiters();
    }
}

/// What a parked waiter does after looking at the tail.
enum Step {
    Answer(Page),
    Wait,
    ReadStore,
    Stop,
}

/// The shared end of the feed: the store, the current tail and the parked
/// waiters.
#[derive(Clone)]
pub(crate) struct Feed {
    store: Store,
    tail: watch::Receiver<Arc<Tail>>,
    deadlines: Arc<Deadlines>,
}

impl Feed {
    /// Starts the task that follows the store's commits. It ends when every
    /// `Feed` (and every waiter's receiver) is dropped, when the store is
    /// closed, or on `closing`.
    pub(crate) fn start(store: Store, closing: CancellationToken) -> Feed {
        let mut commits = store.subscribe();
        let committed = *commits.borrow_and_update();
        // The tail starts empty at the last committed seq: older cursors are
        // answered from the store, newer changes arrive through the task.
        let (tx, rx) = watch::channel(Arc::new(Tail {
            closed: closing.is_cancelled() || store.is_closed(),
            first_after: committed,
            last_seq: committed,
            changes: VecDeque::new(),
            fresh: None,
        }));
        let deadlines = Deadlines::new();
        tokio::spawn(follow_commits(
            store.clone(),
            commits,
            tx,
            Arc::clone(&deadlines),
            closing,
        ));
        Feed {
            store,
            tail: rx,
            deadlines,
        }
    }

    /// The changes after `after` (or from the oldest retained one when
    /// `None`), waiting up to `hold` for one to be committed when there
    /// are none yet. Returns an empty page at the deadline or once the
    /// state or the store is closed (`closing` is checked first; the wait
    /// itself learns of either through the tail). A request that comes
    /// after the store closed is refused as every other store read is
    /// ([`StoreError::Closed`], 503): the feed could only answer it empty
    /// at once, again and again.
    /// With `want_json`, a page may come back already serialized (see
    /// [`Page::json`]).
    pub(crate) async fn next_page(
        &self,
        after: Option<u64>,
        limit: usize,
        hold: Option<Hold>,
        closing: &CancellationToken,
        want_json: bool,
    ) -> Result<Page, ApiError> {
        match after {
            Some(after) => {
                self.next_page_after(after, Gaps::Refused, limit, hold, closing, want_json)
                    .await
            }
            // No cursor: from the oldest retained change. A change log at
            // its retention cap prunes on every commit, and may prune past
            // that start while it is read; the client never sent a cursor,
            // so there is nothing it could miss, and no 410 to give.
            None => {
                let start = self.start_cursor();
                self.next_page_after(start, Gaps::Allowed, limit, hold, closing, want_json)
                    .await
            }
        }
    }

    async fn next_page_after(
        &self,
        after: u64,
        gaps: Gaps,
        limit: usize,
        hold: Option<Hold>,
        closing: &CancellationToken,
        want_json: bool,
    ) -> Result<Page, ApiError> {
        if self.store.is_closed() {
            return Err(StoreError::Closed.into());
        }
        let tail = self.tail.borrow().clone();
        // Retention decides, not the tail: a cursor below it is 410 even if
        // the tail still holds some of what came after it, so that clients
        // see one rule.
        let oldest = self.store.oldest_seq();
        if gaps == Gaps::Refused && is_gone(after, oldest) {
            return Err(gone(after, oldest));
        }
        let last = self.store.last_seq();
        if after > last {
            return Err(ApiError::Gone {
                message: format!(
                    "cursor {after} is ahead of this feed (last seq {last}): the database was \
                     replaced; re-read /v1/watches and follow /v1/changes without `after`"
                ),
                resync: self.start_cursor().to_string(),
            });
        }
        let mut next = after;
        match tail.page(after, limit) {
            Some(changes) if !changes.is_empty() => return Ok(page(changes, after)),
            // Nothing after `after` up to the tail's end, and the tail is
            // current: waiting from its end is safe, and a client resuming
            // from `next` loses nothing.
            Some(_) if tail.last_seq >= last => next = tail.last_seq,
            // The cursor is older than the tail, or the tail lags a commit
            // by a moment: the store has the answer.
            _ => {
                // Boxed, here and below: a held request keeps its future's
                // full size allocated, and this rare path is its largest.
                let changes = Box::pin(self.read_store(after, gaps, limit)).await?;
                if !changes.is_empty() || hold.is_none() {
                    return Ok(page(changes, after));
                }
            }
        }
        drop(tail);
        if let Some(hold) = hold
            && !closing.is_cancelled()
        {
            let bucket = self.deadlines.join(hold);
            // Bounded by the bucket's deadline: every pass either returns or
            // waits for the next wake of the bucket. Shutdown is learnt from
            // the tail (`look`), not from `closing`, whose check takes a
            // mutex that every woken waiter would contend on.
            loop {
                // Created before looking: `notify_waiters` wakes a `Notified`
                // from its creation on, so a tail published, or a deadline
                // passed, after this point wakes this waiter. It joins the
                // bucket's list (a lock) only when it waits: a woken waiter
                // that answers never takes that lock.
                let woken = bucket.wake.notified();
                if bucket.expired.load(Ordering::SeqCst) {
                    break;
                }
                match self.look(after, limit, want_json, &mut next) {
                    Step::Answer(page) => return Ok(page),
                    Step::Stop => break,
                    // The tail moved past `after` in one jump (a burst of
                    // more than TAIL_CAP changes).
                    Step::ReadStore => {
                        let changes = Box::pin(self.read_store(after, gaps, limit)).await?;
                        return Ok(page(changes, after));
                    }
                    Step::Wait => woken.await,
                }
            }
        }
        Ok(Page {
            changes: Vec::new(),
            next,
            json: None,
        })
    }

    /// Whether the feed has ended: shutdown began or the store closed. A
    /// stream ends then; [`Feed::next_page`] would only answer it empty.
    pub(crate) fn is_closed(&self) -> bool {
        // The store's own flag too: it is set a moment before the feed task
        // publishes the closed tail.
        self.store.is_closed() || self.tail.borrow().closed
    }

    /// What a parked waiter at `after` does with the current tail; `next`
    /// follows the tail's end while there is nothing to answer.
    fn look(&self, after: u64, limit: usize, want_json: bool, next: &mut u64) -> Step {
        // Decided under the channel's read lock, without cloning the `Arc`:
        // thousands of waiters woken at once would contend on its count.
        let tail = self.tail.borrow();
        if tail.closed {
            return Step::Stop;
        }
        if want_json
            && let Some(fresh) = &tail.fresh
            && fresh.after == after
            && fresh.count <= limit
        {
            return Step::Answer(Page {
                changes: Vec::new(),
                next: tail.last_seq,
                // A copy, not a clone: a clone and its drop would update
                // the one reference count of the shared bytes, a cache line
                // that 10,000 answers on two cores pass back and forth. The
                // copy only reads them (p99 lower in 7 of 8 paired runs).
                json: Some(Bytes::copy_from_slice(&fresh.json)),
            });
        }
        match tail.page(after, limit) {
            Some(changes) if !changes.is_empty() => Step::Answer(page(changes, after)),
            Some(_) => {
                *next = tail.last_seq;
                Step::Wait
            }
            None if after < tail.first_after => Step::ReadStore,
            None => Step::Wait,
        }
    }

    /// The cursor just before the oldest retained change.
    fn start_cursor(&self) -> u64 {
        self.store.oldest_seq().saturating_sub(1)
    }

    /// Changes after `after` from the store, or (with [`Gaps::Refused`])
    /// 410 when some of them were pruned already.
    async fn read_store(
        &self,
        after: u64,
        gaps: Gaps,
        limit: usize,
    ) -> Result<Vec<ChangeJson>, ApiError> {
        let store = self.store.clone();
        let read = blocking(move || {
            // Only changes `last_seq` already counts: a commit is readable a
            // moment before the store publishes its seq, and a cursor past
            // the published seq would come back as "ahead of this feed"
            // (410). What is cut off arrives with the commit's wake.
            let last = store.last_seq();
            let mut changes = store.changes_after(after, limit)?;
            changes.truncate(changes.partition_point(|c| c.seq <= last));
            // Checked after the read: `oldest_seq` only grows, so if nothing
            // after `after` was pruned now, the read saw no gap either.
            let oldest = store.oldest_seq();
            if gaps == Gaps::Refused && is_gone(after, oldest) {
                return Ok(Err(oldest));
            }
            Ok(Ok(changes))
        })
        .await?;
        match read {
            Ok(changes) => Ok(changes.iter().map(ChangeJson::from).collect()),
            Err(oldest) => Err(gone(after, oldest)),
        }
    }
}

/// Whether a page may start later than its cursor because changes after
/// it were pruned: never for a client's cursor (it would miss them: 410),
/// always for the start the feed chose itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gaps {
    Refused,
    Allowed,
}

fn gone(after: u64, oldest: u64) -> ApiError {
    let resync = oldest.saturating_sub(1);
    ApiError::Gone {
        message: format!(
            "cursor {after} is older than the retained history (oldest seq {oldest}): changes \
             were pruned; re-read /v1/watches, then resume with after={resync}"
        ),
        resync: resync.to_string(),
    }
}

/// Whether changes after `after` have been pruned: the oldest retained change
/// is not the one right after it.
pub(crate) fn is_gone(after: u64, oldest: u64) -> bool {
    after.saturating_add(1) < oldest
}

fn page(changes: Vec<ChangeJson>, after: u64) -> Page {
    let next = changes.last().map_or(after, |c| c.seq);
    Page {
        changes,
        next,
        json: None,
    }
}

/// Runs a blocking store call off the runtime.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|err| ApiError::Internal(format!("store task failed: {err}")))?
        .map_err(ApiError::from)
}

/// Follows the store's commits and publishes a new tail after each, then
/// wakes the parked waiters. At shutdown, or when the store closes (nothing
/// more will be committed), publishes a closed tail so that waiters answer.
///
/// The store's close is learnt here, once, from [`Store::closed`]: the
/// commit channel does not close with the store (every clone of the store,
/// this task's and the `Feed`'s included, keeps its sender), and the
/// waiters learn of it from the tail as they do of shutdown.
async fn follow_commits(
    store: Store,
    mut commits: watch::Receiver<u64>,
    tx: watch::Sender<Arc<Tail>>,
    deadlines: Arc<Deadlines>,
    closing: CancellationToken,
) {
    let close = || {
        let current = tx.borrow().clone();
        tx.send_replace(Arc::new(Tail {
            closed: true,
            first_after: current.first_after,
            last_seq: current.last_seq,
            changes: current.changes.clone(),
            fresh: None,
        }));
        deadlines.wake_all();
    };
    let store_closed = store.closed();
    tokio::pin!(store_closed);
    loop {
        tokio::select! {
            () = tx.closed() => return,
            () = closing.cancelled() => return close(),
            () = &mut store_closed => return close(),
            changed = commits.changed() => if changed.is_err() { return close() },
        }
        let committed = *commits.borrow_and_update();
        let current = tx.borrow().clone();
        if committed <= current.last_seq {
            continue;
        }
        let reader = store.clone();
        let extended =
            tokio::task::spawn_blocking(move || extend(&reader, &current, committed)).await;
        match extended {
            Ok(Ok(tail)) => {
                tx.send_replace(Arc::new(tail));
                deadlines.wake_all();
            }
            // Closed while reading: the next turn publishes the closed tail.
            // (`Closed` also comes while a reopen after a full disk failed;
            // that is worth the warning below.)
            Ok(Err(StoreError::Closed)) if store.is_closed() => {}
            // Waiters keep waiting for the next commit (or their deadline);
            // the next commit retries from the same point.
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "changes feed: reading the change log failed")
            }
            Err(err) => tracing::warn!(error = %err, "changes feed: read task failed"),
        }
    }
}

/// The tail after reading the changes up to `committed`.
fn extend(store: &Store, current: &Tail, committed: u64) -> Result<Tail, StoreError> {
    let mut first_after = current.first_after;
    let mut after = current.last_seq;
    let mut changes = current.changes.clone();
    let cap = TAIL_CAP as u64;
    if committed - after > cap {
        // Too far behind to keep continuity: start a fresh tail; older
        // cursors go to the store.
        after = committed - cap;
        first_after = after;
        changes.clear();
    }
    // At most TAIL_CAP changes are missing, so two pages suffice even if a
    // commit lands between them; the bound keeps a misbehaving store from
    // spinning us.
    let mut last_seq = committed;
    for _ in 0..2 {
        // Asks for what is missing, not TAIL_CAP: the store sizes its
        // answer by the limit, and a 1,024-change buffer per commit (fresh
        // pages to fault in) made this read take milliseconds, not
        // microseconds, while every waiter waited for it.
        let missing = usize::try_from(committed.saturating_sub(after)).unwrap_or(TAIL_CAP);
        let batch = store.changes_after(after, missing.clamp(1, TAIL_CAP))?;
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            break;
        };
        if first.seq > after + 1 {
            // A gap: the log was pruned past our end while we were behind.
            // The tail must cover a contiguous range, so start it afresh.
            changes.clear();
            first_after = first.seq - 1;
        }
        after = last.seq;
        changes.extend(batch.iter().map(ChangeJson::from));
        last_seq = last_seq.max(after);
        if after >= committed {
            break;
        }
    }
    while changes.len() > TAIL_CAP {
        if let Some(dropped) = changes.pop_front() {
            first_after = dropped.seq;
        }
    }
    let fresh = fresh_page(&changes, current.last_seq);
    Ok(Tail {
        closed: false,
        first_after,
        last_seq,
        changes,
        fresh,
    })
}

/// The serialized page of the changes after `after`, the previous end.
fn fresh_page(changes: &VecDeque<ChangeJson>, after: u64) -> Option<Fresh> {
    let start = changes.partition_point(|c| c.seq <= after);
    let count = changes.len() - start;
    if count == 0 || count > FRESH_MAX || start == 0 && changes.front()?.seq != after + 1 {
        // Nothing new, too much, or the tail was restarted past `after`.
        return None;
    }
    let new: Vec<ChangeJson> = changes.range(start..).cloned().collect();
    let next = new.last()?.seq.to_string();
    let json = serde_json::to_vec(&ChangesPage { changes: new, next }).ok()?;
    Some(Fresh {
        after,
        count,
        json: Bytes::from(json),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: u64) -> ChangeJson {
        ChangeJson {
            seq,
            watch: "w".into(),
            version: None,
            kind: "watch_added",
            at: String::new(),
        }
    }

    #[test]
    fn tail_pages_only_what_it_covers() {
        let tail = Tail {
            closed: false,
            first_after: 10,
            last_seq: 14,
            changes: (11..=14).map(change).collect(),
            fresh: None,
        };
        assert!(tail.page(9, 10).is_none(), "older than the tail");
        assert!(tail.page(15, 10).is_none(), "newer than the tail");
        let seqs = |p: Vec<ChangeJson>| p.iter().map(|c| c.seq).collect::<Vec<_>>();
        assert_eq!(seqs(tail.page(10, 10).unwrap()), [11, 12, 13, 14]);
        assert_eq!(seqs(tail.page(12, 1).unwrap()), [13]);
        assert!(tail.page(14, 10).unwrap().is_empty());
    }

    #[test]
    fn fresh_page_is_the_answer_for_the_previous_end() {
        let changes: VecDeque<ChangeJson> = (11..=14).map(change).collect();
        let fresh = fresh_page(&changes, 12).unwrap();
        assert_eq!((fresh.after, fresh.count), (12, 2));
        let json: serde_json::Value = serde_json::from_slice(&fresh.json).unwrap();
        assert_eq!(json["next"], "14");
        assert_eq!(json["changes"][0]["seq"], 13);
        assert!(fresh_page(&changes, 14).is_none(), "nothing new");
        assert!(
            fresh_page(&changes, 5).is_none(),
            "the tail does not reach back to 5"
        );
        assert_eq!(fresh_page(&changes, 10).unwrap().count, 4);
    }

    #[test]
    fn deadlines_fall_on_shared_marks_within_the_hold() {
        let deadlines = Deadlines::new();
        let base = deadlines.base;
        let ms = |n: u64| Duration::from_millis(n);
        let hold = |from: u64, to: u64| Hold {
            earliest: base + ms(from),
            latest: base + ms(to),
        };
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap();
        for _ in 0..100 {
            // A 55 s wait: a 100 ms mark between 49.5 and 55 s.
            let key = deadlines.pick(hold(1_000 + 49_500, 1_000 + 55_000));
            assert_eq!(key % nanos(ms(100)), 0);
            assert!((nanos(ms(50_500))..=nanos(ms(56_000))).contains(&key));
            // A 50 ms wait has no 100 ms mark in [45, 50] ms, a 10 ms one.
            let key = deadlines.pick(hold(1_045, 1_050));
            assert_eq!(key, nanos(ms(1_050)));
            let key = deadlines.pick(hold(1_032, 1_037));
            assert_eq!(key % nanos(ms(1)), 0);
            assert!((nanos(ms(1_032))..=nanos(ms(1_037))).contains(&key));
        }
        // No mark at all: an instant of the window.
        let at = base + Duration::from_micros(1_000_100);
        let key = deadlines.pick(Hold {
            earliest: at,
            latest: at + Duration::from_micros(500),
        });
        assert!((1_000_100_000..=1_000_600_000).contains(&key), "{key}");
    }

    #[test]
    fn gone_only_when_changes_after_the_cursor_were_pruned() {
        assert!(!is_gone(0, 0));
        assert!(!is_gone(0, 1));
        assert!(is_gone(0, 2));
        assert!(!is_gone(9, 10));
        assert!(is_gone(8, 10));
        assert!(!is_gone(u64::MAX, 3));
    }
}

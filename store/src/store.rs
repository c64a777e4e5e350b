//! The [`Store`] handle: opening, committing outcomes, reads, retention and
//! closing.
//!
//! Owns the redb `Database`, the in-memory copy of the change-log bounds,
//! the index of the state log (where each watch's newest state is until the
//! log is folded into `watches`) and the `tokio::sync::watch` channel that
//! tells waiters about the last committed seq, and whether the store was
//! closed. Every function here except [`Store::closed`] is blocking; async
//! callers run them under `spawn_blocking` (the batch writer in
//! [`crate::writer`] does so for commits). No read transaction outlives the
//! call that opened it, so a waiter on [`Store::subscribe`] never pins old
//! pages.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Bound;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use compact_str::CompactString;
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    Table, WriteTransaction,
};
use tokio::sync::{Notify, watch};

use crate::codec::{
    BODY_RAW, BODY_ZSTD, VersionFields, decode_change, decode_state, decode_version,
    decode_version_fields, encode_change, encode_version, logged_state_at, push_logged_state,
};
use crate::error::StoreError;
use crate::model::{Change, ChangeKind, Committed, Outcome, Version, WatchState};
use crate::schema::{
    self, BODIES, BODY_REFS, CHANGES, KEY_LAST_SEQ, KEY_OLDEST_SEQ, META, STATE_LOG, VERSIONS,
    WATCHES,
};
use crate::{Hash, hash_body};

/// Default redb page cache: redb's own default is 1 GiB, too much for a
/// daemon that mostly appends. Pages it misses come from the kernel's page
/// cache; with 100,000 watches 64 MiB cost ~80 MiB of RSS for no measured
/// gain in CPU per poll (BENCHMARKS.md, engine). Since the state log
/// (schema 6) the reads a commit makes are of states written an interval
/// ago, which no small cache holds, so 8 MiB costs nothing measurable
/// against 16 MiB and keeps the start-up peak under 256 MiB.
pub const DEFAULT_CACHE_BYTES: usize = 8 << 20;
/// Default number of change-log entries kept.
pub const DEFAULT_MAX_CHANGES: u64 = 1_000_000;
/// Default zstd level for bodies: level 3 is zstd's own default and keeps a
/// 1 KiB body well under 10 µs.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// A chunk of the state log closes once it holds this many bytes. redb
/// rebuilds a leaf on every insert, so one insert per chunk instead of one
/// per state is most of what the log saves in CPU; a read of one state
/// copies at most a chunk. Below 8 KiB by a state or two, so that a chunk
/// and its leaf header fit a two-page allocation instead of taking four.
const CHUNK_BYTES: usize = 7 << 10;

/// States a commit appends per watch the rolling fold walks. A cycle lasts
/// about this many states per watch, and a watch polled again within its
/// cycle is not folded at all, so a longer cycle trades disk for CPU: a
/// watch polled at a steady pace is folded once in 2 polls with 1, once in
/// 18 with 3 (each fold a random chunk read). The engine bench, saturated:
/// 0.036 against 0.038 CPU-s per 1000 polls (means of 7 and 9 runs; 0.039
/// against 0.042 in 4 alternating pairs), and 240-246 against 403-934
/// bytes written per poll (BENCHMARKS.md); 4 did no better beyond the
/// spread. The log holds up to two cycles, six states a watch. With 1/2
/// (two watches walked per state) every poll cost a folded row (0.052
/// against 0.039-0.043).
#[doc(hidden)]
pub const FOLD_EVERY: usize = 3;

/// Where a state sits in the log: the chunk's key and the entry's offset.
/// An entry starts below `CHUNK_BYTES` (a chunk closes once it is that
/// long), so 16 bits hold the offset and 48 the key: at 10,000 chunks a
/// second, 890 years before a key would not fit.
fn slot(chunk: u64, offset: usize) -> u64 {
    const { assert!(CHUNK_BYTES <= 1 << 16) };
    debug_assert!(offset < CHUNK_BYTES && chunk < 1 << 48);
    (chunk << 16) | offset as u64
}

fn slot_parts(slot: u64) -> (u64, usize) {
    (slot >> 16, (slot & 0xffff) as usize)
}

/// How a [`Store`] is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// redb page cache in bytes.
    pub cache_bytes: usize,
    /// Change-log entries kept; older ones are pruned on commit (at least 1).
    pub max_changes: u64,
    /// Verify every page checksum on open. A plain redb open trusts a
    /// cleanly closed file and may panic on one damaged later; with this set
    /// such a file is reported as [`StoreError::Corrupted`]. It reads the
    /// whole file, so it costs start-up time on a large store.
    pub verify_on_open: bool,
    /// zstd level for new bodies.
    pub zstd_level: i32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: DEFAULT_CACHE_BYTES,
            max_changes: DEFAULT_MAX_CHANGES,
            verify_on_open: true,
            zstd_level: DEFAULT_ZSTD_LEVEL,
        }
    }
}

impl StoreOptions {
    /// Opens (or creates) the database file at `path` with these options.
    pub fn open(&self, path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, self.clone())
    }
}

/// The health the store reports: commit failures are remembered here so
/// that `/readyz` and the status line can show them.
#[derive(Debug, Default)]
struct Health {
    /// The last commit failed with this (cleared by a later good commit).
    last_commit_error: Option<String>,
    /// The writer stopped with this; sticky.
    writer_stopped: Option<String>,
}

/// Where each watch's newest state is while the state log holds it (a
/// [`slot`]), and how far the rolling fold has come.
///
/// The fold runs in cycles. A cycle starts at a chunk key; each commit
/// then walks on through the index in id order, a watch per
/// [`FOLD_EVERY`] states it appended, and copies into `watches` the state
/// of each whose newest is older than the cycle. Once the walk has passed
/// the last id, every chunk older than the cycle is folded; the first
/// commit after that which brings the cycle to half as many states as
/// there are watches ends it: it deletes those chunks and drops their
/// watches from the index, and the next cycle starts. Without that floor a
/// walk that keeps up with the appends could end a cycle per commit and
/// fold the last commit's watches one random row each, as before the log.
/// The log so holds up to `2 × FOLD_EVERY` states per watch; a watch
/// polled at least once a cycle is seldom folded, a row write in id order
/// (~20 rows to a leaf) when it is; and no commit does more than its share.
///
/// A commit updates the index right after it lands, before the next write
/// transaction may begin (`Inner::committing`). A reader looks a watch up
/// and begins its read transaction under the same read lock; a commit that
/// deletes chunks or gives new watches their row runs under the write
/// lock. So every slot a reader finds is in its snapshot, and the counts
/// match it.
#[derive(Debug, Default)]
struct LogIndex {
    /// Watch id → slot of its newest committed state in `state_log`.
    newest: BTreeMap<CompactString, u64>,
    /// States in `state_log`.
    entries: u64,
    /// The key the next chunk gets; keys are never reused while the store
    /// is open.
    next: u64,
    /// Rows in `watches`.
    base_len: u64,
    /// Watches in `newest` without a row in `watches`.
    new_watches: u64,
    /// Chunks below this key are folded by the end of the current cycle.
    cycle_start: u64,
    /// States in the chunks below `cycle_start`.
    entries_before_cycle: u64,
    /// The last id this cycle's walk reached; `None` at its start.
    cursor: Option<CompactString>,
}

/// What one commit's walk of the rolling fold did.
struct FoldStep {
    /// The last id it reached.
    cursor: Option<CompactString>,
    /// Rows it created (watches that had none).
    new_rows: u64,
    /// It passed the last id: the chunks below the cycle are deleted.
    cycle_done: bool,
}

/// What one transaction appended to the state log, and its fold step.
struct LogBatch {
    newest: HashMap<CompactString, u64>,
    appended: u64,
    next: u64,
    new_watches: u64,
    step: FoldStep,
}

impl LogBatch {
    /// Whether readers must not pair the index before this commit with the
    /// file after it: it deletes chunks, or gives watches a row.
    fn needs_exclusive_commit(&self) -> bool {
        self.step.cycle_done || self.step.new_rows > 0
    }
}

impl LogIndex {
    fn record(&mut self, batch: LogBatch) {
        let LogBatch {
            newest,
            appended,
            next,
            new_watches,
            step,
        } = batch;
        self.new_watches = self.new_watches + new_watches - step.new_rows;
        self.base_len += step.new_rows;
        self.cursor = step.cursor;
        if step.cycle_done {
            let start = self.cycle_start;
            self.newest.retain(|_, at| slot_parts(*at).0 >= start);
            self.entries -= self.entries_before_cycle;
            // Everything up to this commit is the next cycle's to fold.
            self.entries_before_cycle = self.entries + appended;
            self.cycle_start = next;
            self.cursor = None;
        }
        self.newest.extend(newest);
        self.entries += appended;
        self.next = next;
    }

    /// After a fold of the whole log.
    fn folded_all(&mut self, rows: u64) {
        self.newest.clear();
        self.entries = 0;
        self.new_watches = 0;
        self.base_len = rows;
        self.cycle_start = self.next;
        self.entries_before_cycle = 0;
        self.cursor = None;
    }
}

/// Folds the state log into `watches` and empties it: each watch's newest
/// state is written once, in id order. Without the index (at open) the log
/// is scanned for it first: most of what the log holds is older states of
/// the same watches (up to `2 × FOLD_EVERY` a watch), and writing every one
/// in log order, each on a random leaf, made an open after a crash twice
/// as slow. Returns the rows of `watches` afterwards.
fn fold_state_log(txn: &WriteTransaction, index: Option<&LogIndex>) -> Result<u64, StoreError> {
    let rows = {
        let log = txn.open_table(STATE_LOG)?;
        let mut watches = txn.open_table(WATCHES)?;
        let scanned;
        let newest = match index {
            Some(index) => &index.newest,
            None => {
                scanned = newest_in_log(&log)?;
                &scanned
            }
        };
        // Record bytes are copied as they are, never decoded.
        for (id, &at) in newest {
            with_logged_record(&log, at, id, |record| {
                watches.insert(&**id, record)?;
                Ok(())
            })?;
        }
        watches.len()?
    };
    txn.delete_table(STATE_LOG)?;
    txn.open_table(STATE_LOG)?;
    Ok(rows)
}

/// Each watch's newest entry in the log: the last one in log order. Only
/// slots are kept, and the fold reads those records again: keeping the
/// records would hold the whole log in memory at start-up.
fn newest_in_log(
    log: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<BTreeMap<CompactString, u64>, StoreError> {
    let mut newest = BTreeMap::<CompactString, u64>::new();
    for_each_logged(log, |chunk, offset, id, _| {
        let at = slot(chunk, offset);
        match newest.get_mut(id) {
            Some(newer) => *newer = at,
            None => {
                newest.insert(id.into(), at);
            }
        }
        Ok(())
    })?;
    Ok(newest)
}

/// Opens (or creates) the database file as redb's `Builder::create` does,
/// then turns the kernel's readahead off for it and drops what it cached.
///
/// Readahead fills the page cache with large folios (up to 2 MiB with
/// ext4 on Linux 6.16 and later, as far as `read_ahead_kb` allows), and a
/// page written inside one dirties, and writes back, the whole folio. In
/// the store-only reproduction of the engine bench
/// (`store/examples/diskwrites.rs`) a run with such folios in the file's
/// page cache wrote 1-13 KB per outcome instead of ~500 bytes, with the
/// very same commits, and 20-30 KB once the whole file had been read
/// ahead: the bench's outliers (6.6-7.3 KB per poll) look like this. The
/// store's reads are of pages and chunks at random places, which readahead
/// does not help; with `POSIX_FADV_RANDOM` a read that misses the page
/// cache brings in only the pages it asked for, each in a folio of its
/// own. Best effort: an error costs write amplification only.
///
/// The advice does not split folios already in the page cache: those that
/// the integrity check's reads made, or another reader before this open
/// (a `cp` of the file for a backup, with polld stopped, as
/// docs/operations.md suggests), would amplify every commit until the
/// kernel evicted them, hours later on a machine with memory to spare.
/// So the open reads with readahead (a cold verified open of a 136 MiB
/// file took 0.6 s with it, 1.5 s without), and once it is done the advice
/// is set and the file's clean pages are dropped: what polld reads again
/// comes in page by page. A warm restart pays with reads from the disk for
/// the pages it needs.
fn create_db(builder: &redb::Builder, path: &Path) -> Result<Database, redb::DatabaseError> {
    let file = open_file(path)?;
    // The same open file, to advise the kernel once redb owns `file`.
    let advice = file.try_clone()?;
    let db = builder.create_with_backend(redb::backends::FileBackend::new(file)?)?;
    read_page_by_page(&advice);
    Ok(db)
}

/// The database file, opened read-write (created if missing).
fn open_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// From here on the file is read page by page: readahead off, and its
/// clean pages (with the folios they sit in) dropped from the page cache.
/// Best effort.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
fn read_page_by_page(file: &std::fs::File) {
    use rustix::fs::{Advice, fadvise};
    for (advice, what) in [
        (Advice::Random, "turn readahead off for"),
        (Advice::DontNeed, "drop from the page cache"),
    ] {
        if let Err(e) = fadvise(file, 0, None, advice) {
            tracing::debug!(error = %e, "could not {what} the store's file");
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
fn read_page_by_page(_file: &std::fs::File) {}

fn missing_chunk(chunk: u64, id: &str) -> StoreError {
    StoreError::Inconsistent(format!("the state log has no chunk {chunk} for watch {id}"))
}

fn check_logged_id(logged_id: &str, id: &str, at: u64) -> Result<(), StoreError> {
    if logged_id == id {
        Ok(())
    } else {
        Err(StoreError::Inconsistent(format!(
            "state log slot {at:#x} is watch {logged_id}, not {id}"
        )))
    }
}

/// Folds a state log the last run left (a crash, or an unclean stop), so
/// that the index starts empty; writes nothing when there is none.
fn fold_at_open(db: &Database) -> Result<LogIndex, StoreError> {
    let (pending, rows) = {
        let txn = db.begin_read()?;
        (
            !txn.open_table(STATE_LOG)?.is_empty()?,
            txn.open_table(WATCHES)?.len()?,
        )
    };
    let base_len = if !pending {
        rows
    } else {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let rows = fold_state_log(&txn, None)?;
        txn.commit()?;
        tracing::debug!("folded the state log the last run left");
        rows
    };
    Ok(LogIndex {
        base_len,
        ..LogIndex::default()
    })
}

/// Hands `use_record` the state record of `id` at `at`, a slot the index
/// named, checking that the entry there is that watch's.
fn with_logged_record<T>(
    log: &impl ReadableTable<u64, &'static [u8]>,
    at: u64,
    id: &str,
    use_record: impl FnOnce(&[u8]) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let (chunk, offset) = slot_parts(at);
    let g = log.get(chunk)?.ok_or_else(|| missing_chunk(chunk, id))?;
    record_in_chunk(g.value(), offset, id, at, use_record)
}

fn record_in_chunk<T>(
    chunk: &[u8],
    offset: usize,
    id: &str,
    at: u64,
    use_record: impl FnOnce(&[u8]) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let (logged_id, record, _) = logged_state_at(chunk, offset)?;
    check_logged_id(logged_id, id, at)?;
    use_record(record)
}

/// The state of `id` in its row of `watches`, if it has one.
fn row_state(
    watches: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<WatchState>, StoreError> {
    let row = watches.get(id)?;
    Ok(row.map(|g| decode_state(id, g.value())).transpose()?)
}

/// The state of `id` in `state_log` at `at`, a slot the index named.
fn logged_state(
    log: &impl ReadableTable<u64, &'static [u8]>,
    at: u64,
    id: &str,
) -> Result<WatchState, StoreError> {
    with_logged_record(log, at, id, |record| Ok(decode_state(id, record)?))
}

/// Calls `each` with the offset, watch id and state record of every entry
/// of every chunk, in log order.
fn for_each_logged(
    log: &impl ReadableTable<u64, &'static [u8]>,
    mut each: impl FnMut(u64, usize, &str, &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for item in log.iter()? {
        let (k, v) = item?;
        let chunk = v.value();
        let mut offset = 0;
        while offset < chunk.len() {
            let (id, record, next) = logged_state_at(chunk, offset)?;
            each(k.value(), offset, id, record)?;
            offset = next;
        }
    }
    Ok(())
}

struct Inner {
    /// `None` once [`Store::close`] ran. Operations hold the read side for
    /// their whole transaction, so close waits for them to finish.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    opts: StoreOptions,
    last_seq: AtomicU64,
    oldest_seq: AtomicU64,
    /// Last committed seq, sent only after a commit returned Ok. It lives
    /// as long as the handle, so its receivers never see it close: closing
    /// is told by `closed` instead.
    seq_tx: watch::Sender<u64>,
    /// Set by [`Store::close`] (under the `db` write lock), for good: a
    /// closed store is never reopened.
    closed: AtomicBool,
    /// Woken once `closed` is set.
    closed_wake: Notify,
    health: Mutex<Health>,
    /// Write transactions committed since open (one per batch).
    commits: AtomicU64,
    log: RwLock<LogIndex>,
    /// Held from a write transaction's start until the index records it:
    /// redb lets the next write transaction begin once one commits, and it
    /// must not read the index before the last commit is in it.
    committing: Mutex<()>,
}

/// Sizes of the store, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Watch states stored (removed watches included).
    pub watches: u64,
    /// Versions retained, all watches.
    pub versions: u64,
    /// Distinct bodies stored.
    pub bodies: u64,
    /// Change-log entries retained.
    pub changes: u64,
    /// Watch states in the state log, not yet folded into `watches`.
    pub state_log: u64,
    /// Write transactions committed since this handle was opened.
    pub commits: u64,
}

/// Handle on the open database. Cheap to clone; all clones share one file.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("last_seq", &self.last_seq())
            .field("oldest_seq", &self.oldest_seq())
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Store {
    /// Opens (or creates) the database file at `path` with default options.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, StoreOptions::default())
    }

    /// Opens (or creates) the database file at `path`.
    ///
    /// Errors: [`StoreError::Locked`] if another process has it open,
    /// [`StoreError::Corrupted`] if it is damaged (nothing is written to it
    /// then), [`StoreError::NewerSchema`] if a newer polld wrote it. A file
    /// left by a crash is repaired by redb; an older schema is migrated.
    pub fn open_with(path: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        if let Some(found) = schema::peek_version(path)?
            && found > schema::SCHEMA_VERSION
        {
            return Err(StoreError::NewerSchema {
                path: path.to_owned(),
                found,
                supported: schema::SCHEMA_VERSION,
            });
        }
        let mut builder = Database::builder();
        builder
            .set_cache_size(opts.cache_bytes)
            .set_check_integrity_on_open(opts.verify_on_open);
        // redb documents that opening a file damaged outside redb may panic
        // without the integrity check; a panic there is a corrupted file, not
        // a bug of ours, and must not take the daemon down with a backtrace.
        let opened = catch_unwind(AssertUnwindSafe(|| create_db(&builder, path)));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(StoreError::from_open(path.to_owned(), e)),
            Err(_) => {
                return Err(StoreError::Corrupted {
                    path: path.to_owned(),
                    detail: "redb failed while reading it".into(),
                });
            }
        };
        let (last, oldest) = match schema::prepare(&db, path) {
            Ok(bounds) => bounds,
            Err(StoreError::Storage(redb::StorageError::Corrupted(detail))) => {
                return Err(StoreError::Corrupted {
                    path: path.to_owned(),
                    detail,
                });
            }
            Err(e) => return Err(e),
        };
        let log = fold_at_open(&db)?;
        let (seq_tx, _) = watch::channel(last);
        tracing::debug!(path = %path.display(), last_seq = last, oldest_seq = oldest, "store open");
        Ok(Store {
            inner: Arc::new(Inner {
                db: RwLock::new(Some(db)),
                path: path.to_owned(),
                opts,
                last_seq: AtomicU64::new(last),
                oldest_seq: AtomicU64::new(oldest),
                seq_tx,
                closed: AtomicBool::new(false),
                closed_wake: Notify::new(),
                health: Mutex::new(Health::default()),
                commits: AtomicU64::new(0),
                log: RwLock::new(log),
                committing: Mutex::new(()),
            }),
        })
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Closes the database cleanly, so the next open needs no repair.
    /// Waits for transactions in progress on other clones; afterwards every
    /// clone's operations fail with [`StoreError::Closed`], and
    /// [`Store::closed`] resolves on every clone.
    pub fn close(self) -> Result<(), StoreError> {
        // A clean stop leaves no log for the next open to fold. Best effort:
        // that open folds whatever is left.
        if let Err(e) = self.fold_now() {
            tracing::warn!(error = %error_chain(&e), "folding the state log at close failed; the next open does it");
        }
        let db = {
            let mut db = self
                .inner
                .db
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            // Under the lock, so that a reopen (the writer's, after a full
            // disk) cannot bring the database back after this.
            self.inner.closed.store(true, Ordering::Release);
            db.take()
        };
        // Nothing can be committed any more: waiters need not wait for the
        // file to be flushed and closed.
        self.inner.closed_wake.notify_waiters();
        match db {
            Some(db) => db.close().map_err(|source| StoreError::Open {
                path: self.inner.path.clone(),
                source,
            }),
            None => Ok(()),
        }
    }

    /// Closes and opens the database file again (redb refuses writes after
    /// a failed one until then). On failure the store stays closed until the
    /// next successful reopen; reads meanwhile fail with [`StoreError::Closed`].
    /// After [`Store::close`] it fails with [`StoreError::Closed`].
    pub(crate) fn reopen(&self) -> Result<(), StoreError> {
        let mut guard = self
            .inner
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if self.is_closed() {
            return Err(StoreError::Closed);
        }
        drop(guard.take());
        let mut builder = Database::builder();
        builder
            .set_cache_size(self.inner.opts.cache_bytes)
            .set_check_integrity_on_open(self.inner.opts.verify_on_open);
        let path = &self.inner.path;
        let db = create_db(&builder, path).map_err(|e| StoreError::from_open(path.clone(), e))?;
        *guard = Some(db);
        Ok(())
    }

    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let guard = self.inner.db.read().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(db) => f(db),
            None => Err(StoreError::Closed),
        }
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with_db(|db| f(&db.begin_read()?))
    }

    fn log_index(&self) -> std::sync::RwLockReadGuard<'_, LogIndex> {
        self.inner
            .log
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn log_index_mut(&self) -> std::sync::RwLockWriteGuard<'_, LogIndex> {
        self.inner
            .log
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A durable write transaction, with the `committing` lock that the
    /// caller holds until the index has recorded the commit.
    fn begin_commit<'s>(
        &'s self,
        db: &Database,
    ) -> Result<(std::sync::MutexGuard<'s, ()>, WriteTransaction), StoreError> {
        let committing = self
            .inner
            .committing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        Ok((committing, txn))
    }

    /// A read transaction together with what `look` takes from the state
    /// log's index: as of the same commit, or the snapshot one
    /// non-exclusive commit newer (which deletes no chunk and adds no row);
    /// with `quiet`, no commit is in flight and both are the same commit.
    fn read_with_index<T, L>(
        &self,
        quiet: bool,
        look: impl FnOnce(&LogIndex) -> L,
        f: impl FnOnce(&ReadTransaction, L) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with_db(|db| {
            // After the database lock, as the writers take it.
            let committing = quiet.then(|| {
                self.inner
                    .committing
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
            });
            let (found, txn) = {
                let index = self.log_index();
                (look(&index), db.begin_read()?)
            };
            drop(committing);
            f(&txn, found)
        })
    }

    /// Folds the state log into `watches` now, in a transaction of its own.
    fn fold_now(&self) -> Result<(), StoreError> {
        self.with_db(|db| {
            let (_committing, txn) = self.begin_commit(db)?;
            let mut index = self.log_index_mut();
            if index.entries == 0 {
                return Ok(());
            }
            let rows = fold_state_log(&txn, Some(&index))?;
            txn.commit()?;
            index.folded_all(rows);
            Ok(())
        })
    }

    /// Oldest retained seq; entries below it were pruned (the API answers
    /// 410 for `after` below `oldest_seq() - 1`). `last_seq() + 1` when the
    /// log is empty.
    #[must_use]
    pub fn oldest_seq(&self) -> u64 {
        self.inner.oldest_seq.load(Ordering::Acquire)
    }

    /// Newest committed seq (0 before the first change).
    #[must_use]
    pub fn last_seq(&self) -> u64 {
        self.inner.last_seq.load(Ordering::Acquire)
    }

    /// The last committed seq, updated only after a commit returned Ok.
    /// Waiters `changed().await` on it without holding any transaction.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.seq_tx.subscribe()
    }

    /// Whether [`Store::close`] ran (on any clone): nothing more will be
    /// committed.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Resolves once [`Store::close`] has run on any clone; at once if it
    /// has. The [`Store::subscribe`] channel never closes (it lives as long
    /// as the handle), so a waiter on it that must also end when the store
    /// does waits on this too.
    pub async fn closed(&self) {
        // Created before the check: `notify_waiters` wakes every
        // `Notified` created before it, so a close after the check is seen.
        let woken = self.inner.closed_wake.notified();
        if self.is_closed() {
            return;
        }
        woken.await;
    }

    /// `Ok` while commits succeed; otherwise the last commit error, or why
    /// the writer stopped.
    pub fn health(&self) -> Result<(), String> {
        let h = self
            .inner
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match (&h.writer_stopped, &h.last_commit_error) {
            (Some(e), _) => Err(format!("store writer stopped: {e}")),
            (None, Some(e)) => Err(format!("last commit failed: {e}")),
            (None, None) => Ok(()),
        }
    }

    pub(crate) fn note_writer_stopped(&self, why: String) {
        self.inner
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .writer_stopped = Some(why);
    }

    fn note_commit(&self, result: Result<(), &StoreError>) {
        let mut h = self
            .inner
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        h.last_commit_error = result.err().map(error_chain);
    }

    /// Commits `outcomes` in one write transaction with
    /// `Durability::Immediate`: all of them or none. Returns what each became,
    /// in order. Waiters on [`Store::subscribe`] are woken after the commit.
    pub fn apply_blocking(&self, outcomes: Vec<Outcome>) -> Result<Vec<Committed>, StoreError> {
        for o in &outcomes {
            validate(o)?;
        }
        self.apply_validated(&outcomes)
    }

    /// [`Store::apply_blocking`] for outcomes already passed through
    /// [`validate`] (the writer validates on submit, so a body is hashed once).
    pub(crate) fn apply_validated(
        &self,
        outcomes: &[Outcome],
    ) -> Result<Vec<Committed>, StoreError> {
        if outcomes.is_empty() {
            return Ok(Vec::new());
        }
        let result = self.with_db(|db| {
            let (_committing, txn) = self.begin_commit(db)?;
            let (applied, batch) = {
                // Only a holder of `committing` changes the index, so it
                // stays as read.
                let index = self.log_index();
                let mut t = WriteTables::open(&txn, index.next)?;
                let applied = t.apply(outcomes, &self.inner.opts, &index)?;
                let step = t.fold_step(&index, outcomes.len().div_ceil(FOLD_EVERY))?;
                (applied, t.finish_log(step)?)
            };
            if batch.needs_exclusive_commit() {
                let mut index = self.log_index_mut();
                txn.commit()?;
                index.record(batch);
            } else {
                txn.commit()?;
                self.log_index_mut().record(batch);
            }
            Ok(applied)
        });
        match result {
            Ok((committed, last, oldest)) => {
                self.note_commit(Ok(()));
                self.inner.commits.fetch_add(1, Ordering::Relaxed);
                self.inner.oldest_seq.store(oldest, Ordering::Release);
                self.inner.last_seq.store(last, Ordering::Release);
                self.inner.seq_tx.send_if_modified(|seq| {
                    let moved = *seq != last;
                    *seq = last;
                    moved
                });
                Ok(committed)
            }
            Err(e) => {
                if !matches!(e, StoreError::Closed) {
                    self.note_commit(Err(&e));
                }
                Err(e)
            }
        }
    }

    /// The rolling fold's position, for investigating its pace:
    /// `(cycle_start, next chunk, states logged, watches in the index,
    /// cursor)`.
    #[doc(hidden)]
    pub fn fold_progress(&self) -> (u64, u64, u64, usize, Option<String>) {
        let i = self.log_index();
        (
            i.cycle_start,
            i.next,
            i.entries,
            i.newest.len(),
            i.cursor.as_deref().map(str::to_owned),
        )
    }

    /// Row counts of the tables and the commits made since open.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        self.read_with_index(
            false,
            |index| (index.new_watches, index.entries),
            |txn, (new_watches, state_log)| {
                Ok(StoreStats {
                    watches: txn.open_table(WATCHES)?.len()? + new_watches,
                    state_log,
                    versions: txn.open_table(VERSIONS)?.len()?,
                    bodies: txn.open_table(BODIES)?.len()?,
                    changes: txn.open_table(CHANGES)?.len()?,
                    commits: self.inner.commits.load(Ordering::Relaxed),
                })
            },
        )
    }

    /// One watch's state.
    pub fn watch(&self, id: &str) -> Result<Option<WatchState>, StoreError> {
        self.read_with_index(
            false,
            |index| index.newest.get(id).copied(),
            |txn, pos| match pos {
                Some(at) => logged_state(&txn.open_table(STATE_LOG)?, at, id).map(Some),
                None => row_state(&txn.open_table(WATCHES)?, id),
            },
        )
    }

    /// Up to `limit` watches with ids after `after`, ordered by id: pass the
    /// last id of one page as `after` to get the next.
    pub fn watches(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<WatchState>, StoreError> {
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.read_with_index(
            false,
            // The first `limit` ids of each side hold the first `limit` of both.
            |index| {
                index
                    .newest
                    .range::<str, _>((lower, Bound::Unbounded))
                    .take(limit)
                    .map(|(id, pos)| (id.clone(), *pos))
                    .collect::<Vec<_>>()
            },
            |txn, logged| {
                let log = txn.open_table(STATE_LOG)?;
                let mut logged = logged.into_iter().peekable();
                let t = txn.open_table(WATCHES)?;
                let mut out = Vec::with_capacity(limit.min(1024));
                let mut rows = t.range::<&str>((lower, Bound::Unbounded))?;
                let mut row = rows.next().transpose()?;
                while out.len() < limit {
                    let row_id = row.as_ref().map(|(k, _)| k.value());
                    match (logged.peek(), row_id) {
                        (None, None) => break,
                        (Some((id, pos)), row_id) if row_id.is_none_or(|r| **id <= *r) => {
                            out.push(logged_state(&log, *pos, id)?);
                            if row_id == Some(&**id) {
                                row = rows.next().transpose()?;
                            }
                            logged.next();
                        }
                        (_, Some(row_id)) => {
                            let (_, v) = row.as_ref().expect("row_id came from it");
                            out.push(decode_state(row_id, v.value())?);
                            row = rows.next().transpose()?;
                        }
                        (Some(_), None) => {
                            unreachable!("the guard takes a log entry when no row is left")
                        }
                    }
                }
                Ok(out)
            },
        )
    }

    /// Every watch, ordered by id.
    pub fn all_watches(&self) -> Result<Vec<WatchState>, StoreError> {
        self.watches(None, usize::MAX)
    }

    /// Reads a watch's versions through one read transaction: however many
    /// reads `f` makes, they all see the same commit, so a version listed
    /// (or found as the latest) is still there when its body is read, even
    /// if a commit has pruned it since.
    pub fn read_versions<T>(
        &self,
        id: &str,
        f: impl FnOnce(&VersionsView<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.read(|txn| {
            f(&VersionsView {
                id,
                versions: txn.open_table(VERSIONS)?,
                bodies: txn.open_table(BODIES)?,
            })
        })
    }

    /// The retained versions of a watch, oldest first.
    pub fn versions(&self, id: &str) -> Result<Vec<Version>, StoreError> {
        self.read_versions(id, |view| view.list())
    }

    /// One version's metadata.
    pub fn version(&self, id: &str, number: u64) -> Result<Option<Version>, StoreError> {
        self.read_versions(id, |view| view.get(number))
    }

    /// One version with its body (decompressed).
    pub fn body(&self, id: &str, number: u64) -> Result<Option<(Version, Vec<u8>)>, StoreError> {
        self.read_versions(id, |view| match view.get(number)? {
            Some(version) => {
                let body = view.body(&version)?;
                Ok(Some((version, body)))
            }
            None => Ok(None),
        })
    }

    /// Up to `limit` change-log entries with seq greater than `seq`, oldest
    /// first. Entries below [`Store::oldest_seq`] are gone: the caller
    /// compares `seq + 1` with it to tell a gap from an empty answer.
    pub fn changes_after(&self, seq: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        self.read(|txn| {
            let t = txn.open_table(CHANGES)?;
            let mut out = Vec::with_capacity(limit.min(1024));
            for item in t
                .range::<u64>((Bound::Excluded(seq), Bound::Unbounded))?
                .take(limit)
            {
                let (k, v) = item?;
                out.push(decode_change(k.value(), v.value())?);
            }
            Ok(out)
        })
    }

    /// Checks that the tables agree with each other: every version's body is
    /// stored, every reference count equals the versions naming that body,
    /// no body is unreferenced, each watch's `versions` / `latest_*` match
    /// its versions, the state log's index names each watch's newest entry
    /// and counts what the log and `watches` hold, and the change log is
    /// dense between its bounds. Reads everything; meant for tests and a
    /// manual `fsck`, not the hot path.
    pub fn check(&self) -> Result<(), StoreError> {
        let bad = |s: String| Err(StoreError::Inconsistent(s));
        let index = |index: &LogIndex| (index.newest.clone(), index.entries, index.new_watches);
        // Other reads may lag the index by a commit; a check must not.
        self.read_with_index(true, index, |txn, (index, entries, new_watches)| {
            // Each watch's newest state: its row, overwritten by its log
            // entries in position order.
            let mut newest: HashMap<String, WatchState> = HashMap::new();
            let watches = txn.open_table(WATCHES)?;
            for item in watches.iter()? {
                let (k, v) = item?;
                newest.insert(k.value().to_owned(), decode_state(k.value(), v.value())?);
            }
            let rows = newest.len() as u64;
            let log = txn.open_table(STATE_LOG)?;
            let mut last_pos: HashMap<String, u64> = HashMap::new();
            let mut logged = 0;
            for_each_logged(&log, |chunk, offset, id, record| {
                newest.insert(id.to_owned(), decode_state(id, record)?);
                last_pos.insert(id.to_owned(), slot(chunk, offset));
                logged += 1;
                Ok(())
            })?;
            // The index must name exactly each watch's newest entry.
            if logged != entries || last_pos.len() != index.len() {
                return bad(format!(
                    "the state log holds {logged} states of {} watches; its index says {entries} of {}",
                    last_pos.len(),
                    index.len()
                ));
            }
            for (id, pos) in &index {
                if last_pos.get(&**id) != Some(pos) {
                    return bad(format!("the state log index puts watch {id} at {pos}, the log at {:?}", last_pos.get(&**id)));
                }
            }
            if newest.len() as u64 != rows + new_watches {
                return bad(format!(
                    "{} watches are stored but the index counts {rows} rows and {new_watches} new",
                    newest.len()
                ));
            }
            let versions = txn.open_table(VERSIONS)?;
            let mut per_watch: HashMap<String, (u64, u64, Hash)> = HashMap::new();
            let mut counts: HashMap<Hash, u64> = HashMap::new();
            for item in versions.iter()? {
                let (k, v) = item?;
                let (id, n) = k.value();
                let version = decode_version(n, v.value())?;
                *counts.entry(version.hash).or_default() += 1;
                let e = per_watch.entry(id.to_owned()).or_insert((0, 0, [0; 32]));
                e.0 += 1;
                // Keys come in order, so the last one seen is the newest.
                e.1 = n;
                e.2 = version.hash;
            }
            let refs = txn.open_table(BODY_REFS)?;
            let bodies = txn.open_table(BODIES)?;
            for item in refs.iter()? {
                let (k, v) = item?;
                let hash = *k.value();
                let want = counts.get(&hash).copied().unwrap_or(0);
                if v.value() != want {
                    return bad(format!(
                        "body {} has refcount {} but {want} versions name it",
                        crate::hex(&hash),
                        v.value()
                    ));
                }
            }
            for item in bodies.iter()? {
                let (k, _) = item?;
                if !counts.contains_key(k.value()) {
                    return bad(format!("body {} is not referenced", crate::hex(k.value())));
                }
            }
            for hash in counts.keys() {
                if bodies.get(hash)?.is_none() || refs.get(hash)?.is_none() {
                    return bad(format!("body {} is missing", crate::hex(hash)));
                }
            }
            for s in newest.values() {
                let (count, latest, hash) = per_watch.remove(&s.id).unwrap_or((0, 0, [0; 32]));
                let expect = (count, (count > 0).then_some(latest), (count > 0).then_some(hash));
                if (s.versions, s.latest_version, s.latest_hash) != expect {
                    return bad(format!(
                        "watch {}: state says {} versions, latest {:?}, but {count} are stored, latest {latest}",
                        s.id, s.versions, s.latest_version
                    ));
                }
            }
            if let Some(id) = per_watch.keys().next() {
                return bad(format!("versions of {id} have no watch state"));
            }
            let meta = txn.open_table(META)?;
            let last = meta.get(KEY_LAST_SEQ)?.map_or(0, |g| g.value());
            let oldest = meta.get(KEY_OLDEST_SEQ)?.map_or(last + 1, |g| g.value());
            let changes = txn.open_table(CHANGES)?;
            let mut expect = oldest;
            for item in changes.iter()? {
                let (k, v) = item?;
                if k.value() != expect {
                    return bad(format!("change log has seq {} where {expect} was due", k.value()));
                }
                decode_change(k.value(), v.value())?;
                expect += 1;
            }
            if expect != last + 1 {
                return bad(format!("change log ends at {} but last_seq is {last}", expect - 1));
            }
            Ok(())
        })
    }
}

/// The error and its sources on one line (for the health text, and for
/// messages that must name the OS error behind an open or commit).
pub fn error_chain(e: &StoreError) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    // Bounded: error chains are short, but a cycle must not hang health().
    for _ in 0..8 {
        let Some(err) = source else { break };
        s.push_str(": ");
        s.push_str(&err.to_string());
        source = err.source();
    }
    s
}

/// Rejects an outcome that would corrupt the store before any transaction:
/// one bad outcome must not fail the batch it would have joined.
pub(crate) fn validate(o: &Outcome) -> Result<(), StoreError> {
    let invalid = |why| {
        Err(StoreError::InvalidOutcome {
            watch: o.state.id.clone(),
            why,
        })
    };
    if o.state.id.is_empty() {
        return invalid("empty watch id");
    }
    if o.events.contains(&ChangeKind::NewVersion) {
        return invalid(
            "NewVersion is appended by the store for new_version, not passed as an event",
        );
    }
    if let Some(nv) = &o.new_version
        && hash_body(&nv.body) != nv.hash
    {
        return invalid("the body does not match its hash");
    }
    Ok(())
}

fn unpack_body(blob: &[u8], size: u64) -> Result<Vec<u8>, std::io::Error> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    let size = usize::try_from(size).map_err(|_| bad("body size out of range"))?;
    let body = match blob.split_first() {
        Some((&BODY_RAW, raw)) => raw.to_vec(),
        // The version's size bounds the output, so a damaged blob cannot
        // inflate into more memory than the body ever took.
        Some((&BODY_ZSTD, z)) => zstd::bulk::decompress(z, size)?,
        _ => return Err(bad("unknown body encoding")),
    };
    if body.len() != size {
        return Err(bad("decompressed size differs from the version's size"));
    }
    Ok(body)
}

/// The tables of one write transaction, opened once per batch.
struct WriteTables<'t> {
    meta: Table<'t, &'static str, u64>,
    watches: Table<'t, &'static str, &'static [u8]>,
    versions: Table<'t, (&'static str, u64), &'static [u8]>,
    bodies: Table<'t, &'static [u8; 32], &'static [u8]>,
    refs: Table<'t, &'static [u8; 32], u64>,
    changes: Table<'t, u64, &'static [u8]>,
    state_log: Table<'t, u64, &'static [u8]>,
    /// Created on the first body of a batch and reused for the rest.
    compressor: Option<zstd::bulk::Compressor<'static>>,
    /// Slots this transaction appended, the newest per watch.
    logged: HashMap<CompactString, u64>,
    appended: u64,
    /// The chunk being filled, and its key.
    chunk: Vec<u8>,
    chunk_key: u64,
    new_watches: u64,
}

impl<'t> WriteTables<'t> {
    fn open(txn: &'t redb::WriteTransaction, chunk_key: u64) -> Result<Self, StoreError> {
        Ok(WriteTables {
            meta: txn.open_table(META)?,
            watches: txn.open_table(WATCHES)?,
            versions: txn.open_table(VERSIONS)?,
            bodies: txn.open_table(BODIES)?,
            refs: txn.open_table(BODY_REFS)?,
            changes: txn.open_table(CHANGES)?,
            state_log: txn.open_table(STATE_LOG)?,
            compressor: None,
            logged: HashMap::new(),
            appended: 0,
            chunk: Vec::with_capacity(CHUNK_BYTES + 512),
            chunk_key,
            new_watches: 0,
        })
    }

    /// Appends `state` (of watch `id`) to the chunk being filled; a full
    /// chunk is inserted.
    fn log_state(
        &mut self,
        id: &str,
        state: &WatchState,
        versions: VersionFields,
    ) -> Result<(), StoreError> {
        let offset = push_logged_state(&mut self.chunk, state, versions);
        self.logged
            .insert(CompactString::from(id), slot(self.chunk_key, offset));
        self.appended += 1;
        if self.chunk.len() >= CHUNK_BYTES {
            self.close_chunk()?;
        }
        Ok(())
    }

    fn close_chunk(&mut self) -> Result<(), StoreError> {
        if !self.chunk.is_empty() {
            self.state_log
                .insert(self.chunk_key, self.chunk.as_slice())?;
            self.chunk.clear();
            self.chunk_key += 1;
        }
        Ok(())
    }

    /// This commit's walk of the rolling fold (see [`LogIndex`]): the next
    /// `budget` watches of the committed index after its cursor.
    fn fold_step(&mut self, index: &LogIndex, budget: usize) -> Result<FoldStep, StoreError> {
        let lower = index
            .cursor
            .as_deref()
            .map_or(Bound::Unbounded, Bound::Excluded);
        let budget = budget.max(1);
        let mut new_rows = 0;
        let mut walked = 0;
        let mut last = None;
        for (id, &at) in index
            .newest
            .range::<str, _>((lower, Bound::Unbounded))
            .take(budget)
        {
            walked += 1;
            last = Some(id);
            let (chunk, _) = slot_parts(at);
            if chunk >= index.cycle_start {
                // Newer than the cycle: the next one folds it.
                continue;
            }
            let watches = &mut self.watches;
            let created = with_logged_record(&self.state_log, at, id, |record| {
                Ok(watches.insert(&**id, record)?.is_none())
            })?;
            new_rows += u64::from(created);
        }
        // States in this cycle so far, and the watches stored.
        let in_cycle = index.entries - index.entries_before_cycle + self.appended;
        let watches = index.base_len + index.new_watches + self.new_watches;
        // Past the last id, every chunk below the cycle is folded.
        let cycle_done = walked < budget && in_cycle >= watches / 2;
        if cycle_done && index.cycle_start > 0 {
            self.state_log
                .retain_in::<u64, _>(0..index.cycle_start, |_, _| false)?;
        }
        Ok(FoldStep {
            cursor: last.or(index.cursor.as_ref()).cloned(),
            new_rows,
            cycle_done,
        })
    }

    /// Inserts the last chunk; what the transaction appended, for the index.
    fn finish_log(mut self, step: FoldStep) -> Result<LogBatch, StoreError> {
        self.close_chunk()?;
        Ok(LogBatch {
            newest: self.logged,
            appended: self.appended,
            next: self.chunk_key,
            new_watches: self.new_watches,
            step,
        })
    }

    /// What the store holds of `id`'s versions in its newest stored state
    /// (appended by this transaction, in the committed log, or its row in
    /// `watches`); None for a watch never stored.
    fn newest_versions(
        &self,
        id: &str,
        committed: &LogIndex,
    ) -> Result<Option<VersionFields>, StoreError> {
        let pos = self.logged.get(id).or_else(|| committed.newest.get(id));
        let decode = |record: &[u8]| Ok(Some(decode_version_fields(record)?));
        if let Some(&at) = pos {
            let (chunk, offset) = slot_parts(at);
            if chunk == self.chunk_key {
                // In the chunk still being filled.
                return record_in_chunk(&self.chunk, offset, id, at, decode);
            }
            return with_logged_record(&self.state_log, at, id, decode);
        }
        match self.watches.get(id)? {
            Some(row) => decode(row.value()),
            None => Ok(None),
        }
    }

    /// Applies a batch; returns what each outcome became and the new
    /// `(last_seq, oldest_seq)`.
    fn apply(
        &mut self,
        outcomes: &[Outcome],
        opts: &StoreOptions,
        committed: &LogIndex,
    ) -> Result<(Vec<Committed>, u64, u64), StoreError> {
        // Read inside the transaction rather than from the in-memory copy:
        // the file is the authority, and write transactions are serialized.
        let mut seq = self.meta.get(KEY_LAST_SEQ)?.map_or(0, |g| g.value());
        let mut oldest = self
            .meta
            .get(KEY_OLDEST_SEQ)?
            .map_or(seq + 1, |g| g.value());
        let now = now_ms();
        let mut out = Vec::with_capacity(outcomes.len());
        for o in outcomes {
            out.push(self.apply_one(o, &mut seq, now, opts.zstd_level, committed)?);
        }
        let keep = opts.max_changes.max(1);
        if seq + 1 - oldest > keep {
            let new_oldest = seq + 1 - keep;
            self.changes
                .retain_in::<u64, _>(oldest..new_oldest, |_, _| false)?;
            oldest = new_oldest;
        }
        self.meta.insert(KEY_LAST_SEQ, seq)?;
        self.meta.insert(KEY_OLDEST_SEQ, oldest)?;
        Ok((out, seq, oldest))
    }

    fn apply_one(
        &mut self,
        o: &Outcome,
        seq: &mut u64,
        now: u64,
        level: i32,
        committed: &LogIndex,
    ) -> Result<Committed, StoreError> {
        // Borrowed, so that a batch can be retried after a failed commit;
        // what the store owns of the state is kept apart and written over
        // the engine's copy when the state is logged.
        let state = &o.state;
        let (new_version, events, keep_versions) = (&o.new_version, &o.events, o.keep_versions);
        let id = state.id.as_str();
        let prev = self.newest_versions(id, committed)?;
        if prev.is_none() {
            self.new_watches += 1;
        }
        // What is stored is the store's business: the engine's copy of these
        // may lag behind pruning or a batch it has not seen committed.
        let mut stored = prev.unwrap_or_default();

        let mut committed = Committed::default();
        if let Some(nv) = new_version {
            let number = stored.latest_version.map_or(1, |n| n + 1);
            self.add_body(&nv.hash, &nv.body, level)?;
            let version = Version {
                number,
                fetched_at_ms: nv.fetched_at_ms,
                hash: nv.hash,
                size: nv.body.len() as u64,
                content_type: nv.content_type.clone(),
                headers: nv.headers.clone(),
            };
            self.versions
                .insert((id, number), encode_version(&version).as_slice())?;
            stored.versions += 1;
            stored.latest_version = Some(number);
            stored.latest_hash = Some(nv.hash);
            *seq += 1;
            self.changes.insert(
                *seq,
                encode_change(id, Some(number), ChangeKind::NewVersion, nv.fetched_at_ms)
                    .as_slice(),
            )?;
            committed.seqs.push(*seq);
            committed.version = Some(number);
        }
        for &kind in events {
            *seq += 1;
            self.changes
                .insert(*seq, encode_change(id, None, kind, now).as_slice())?;
            committed.seqs.push(*seq);
        }
        self.prune_versions(id, &mut stored.versions, keep_versions)?;
        self.log_state(id, state, stored)?;
        Ok(committed)
    }

    /// Stores a body once per hash; later versions only count a reference.
    fn add_body(&mut self, hash: &Hash, body: &[u8], level: i32) -> Result<(), StoreError> {
        let refs = self.refs.get(hash)?.map(|g| g.value());
        if let Some(n) = refs {
            self.refs.insert(hash, n + 1)?;
            return Ok(());
        }
        let compressor = match &mut self.compressor {
            Some(c) => c,
            None => self
                .compressor
                .insert(
                    zstd::bulk::Compressor::new(level).map_err(|source| StoreError::Io {
                        path: PathBuf::from("<zstd>"),
                        source,
                    })?,
                ),
        };
        let z = compressor.compress(body).map_err(|source| StoreError::Io {
            path: PathBuf::from("<zstd>"),
            source,
        })?;
        let mut blob = Vec::with_capacity(1 + z.len().min(body.len()));
        if z.len() < body.len() {
            blob.push(BODY_ZSTD);
            blob.extend_from_slice(&z);
        } else {
            blob.push(BODY_RAW);
            blob.extend_from_slice(body);
        }
        self.bodies.insert(hash, blob.as_slice())?;
        self.refs.insert(hash, 1)?;
        Ok(())
    }

    /// Drops one reference; the body goes with its last one.
    fn release_body(&mut self, hash: &Hash) -> Result<(), StoreError> {
        let refs = self.refs.get(hash)?.map(|g| g.value());
        match refs {
            Some(n) if n > 1 => {
                self.refs.insert(hash, n - 1)?;
            }
            Some(_) => {
                self.refs.remove(hash)?;
                self.bodies.remove(hash)?;
            }
            None => {
                // Failing here would fail this watch's every commit from now
                // on; deleting the unaccounted body keeps the store usable.
                tracing::warn!(hash = %crate::hex(hash), "pruned a version whose body had no reference count");
                self.bodies.remove(hash)?;
            }
        }
        Ok(())
    }

    /// Keeps the newest `keep` (at least 1) versions of the watch.
    fn prune_versions(
        &mut self,
        id: &str,
        versions: &mut u64,
        keep: u32,
    ) -> Result<(), StoreError> {
        let keep = u64::from(keep.max(1));
        if *versions <= keep {
            return Ok(());
        }
        let excess = usize::try_from(*versions - keep).unwrap_or(usize::MAX);
        let mut doomed = Vec::with_capacity(excess.min(1024));
        for item in self
            .versions
            .range((id, 0u64)..=(id, u64::MAX))?
            .take(excess)
        {
            let (k, v) = item?;
            let n = k.value().1;
            doomed.push((n, decode_version(n, v.value())?.hash));
        }
        for (n, hash) in &doomed {
            self.versions.remove((id, *n))?;
            self.release_body(hash)?;
        }
        *versions -= doomed.len() as u64;
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod readahead_tests {
    use std::os::unix::fs::FileExt;
    use std::path::Path;
    use std::process::Command;

    /// Bytes of the file in the page cache, from util-linux's `fincore`.
    fn resident(path: &Path) -> Option<u64> {
        let out = Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(path)
            .output()
            .ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    }

    #[test]
    fn the_store_file_is_read_without_readahead() {
        const PAGE: usize = 4096;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("polld.redb");
        let file = super::open_file(&path).unwrap();
        super::read_page_by_page(&file);
        file.write_all_at(&vec![7u8; 1024 * PAGE], 0).unwrap();
        file.sync_all().unwrap();
        // Out of the page cache, as after memory pressure or a reboot.
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        match resident(&path) {
            Some(0) => {}
            other => {
                eprintln!("cannot measure the page cache here (fincore: {other:?}); skipped");
                return;
            }
        }
        // Reads in file order: what readahead is made for. With it, the
        // kernel reads on ahead (and into large folios).
        let mut buf = vec![0u8; PAGE];
        for page in 0..64 {
            file.read_exact_at(&mut buf, (page * PAGE) as u64).unwrap();
        }
        let cached = resident(&path).unwrap();
        assert_eq!(
            cached,
            (64 * PAGE) as u64,
            "64 pages read, {} in the page cache: the kernel read ahead",
            cached / PAGE as u64
        );
    }

    #[test]
    fn an_open_drops_what_others_cached_then_reads_without_readahead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("polld.redb");
        let store = crate::Store::open(&path).unwrap();
        // A few MiB of watch rows, so that readahead has room to show.
        let outcomes = (0..20_000)
            .map(|i| crate::Outcome {
                state: crate::WatchState {
                    id: format!("w{i:05}"),
                    url: format!("https://example.org/{i}/{}", "x".repeat(100)),
                    ..crate::WatchState::default()
                }
                .into(),
                new_version: None,
                events: Vec::new(),
                keep_versions: 1,
            })
            .collect();
        store.apply_blocking(outcomes).unwrap();
        store.close().unwrap();
        // Another process reads the whole file, as `cp` does for a backup:
        // with readahead, into large folios.
        let len = std::fs::read(&path).unwrap().len() as u64;
        match resident(&path) {
            Some(cached) if cached == len => {}
            other => {
                eprintln!(
                    "cannot measure the page cache here (fincore: {other:?} of {len}); skipped"
                );
                return;
            }
        }
        let store = crate::Store::open(&path).unwrap();
        let cached = resident(&path).unwrap();
        assert!(
            cached * 2 < len,
            "{cached} of {len} bytes still in the page cache after the open"
        );
        // And the store's own reads from then on bring in the pages they
        // ask for, not a readahead window: reading every row takes the
        // table's pages, about 40 % of this file (3.6 of 8.9 MB); with
        // readahead after the open it took 60 %.
        let before = resident(&path).unwrap();
        assert_eq!(store.all_watches().unwrap().len(), 20_000);
        let read = resident(&path).unwrap().saturating_sub(before);
        assert!(
            read * 2 < len,
            "reading every watch brought {read} of {len} bytes into the page cache"
        );
        store.close().unwrap();
    }
}

/// One watch's retained versions as of one commit ([`Store::read_versions`]).
#[derive(Debug)]
pub struct VersionsView<'a> {
    id: &'a str,
    versions: redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>,
    bodies: redb::ReadOnlyTable<&'static [u8; 32], &'static [u8]>,
}

impl VersionsView<'_> {
    /// Every retained version, oldest first.
    pub fn list(&self) -> Result<Vec<Version>, StoreError> {
        let mut out = Vec::new();
        for item in self.versions.range((self.id, 0u64)..=(self.id, u64::MAX))? {
            let (k, v) = item?;
            out.push(decode_version(k.value().1, v.value())?);
        }
        Ok(out)
    }

    /// Version `number`, if it is retained.
    pub fn get(&self, number: u64) -> Result<Option<Version>, StoreError> {
        let g = self.versions.get((self.id, number))?;
        Ok(g.map(|g| decode_version(number, g.value())).transpose()?)
    }

    /// The newest version, if the watch has one.
    pub fn latest(&self) -> Result<Option<Version>, StoreError> {
        let last = self
            .versions
            .range((self.id, 0u64)..=(self.id, u64::MAX))?
            .next_back()
            .transpose()?;
        Ok(last
            .map(|(k, v)| decode_version(k.value().1, v.value()))
            .transpose()?)
    }

    /// The body of `version` (one of this view's), decompressed.
    pub fn body(&self, version: &Version) -> Result<Vec<u8>, StoreError> {
        let (id, number) = (self.id, version.number);
        let blob = self.bodies.get(&version.hash)?.ok_or_else(|| {
            StoreError::Inconsistent(format!("the body of {id} version {number} is missing"))
        })?;
        unpack_body(blob.value(), version.size).map_err(|source| StoreError::Decompress {
            watch: id.to_owned(),
            version: number,
            source,
        })
    }
}

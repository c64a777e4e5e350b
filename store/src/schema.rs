//! The redb tables, the schema version and the migrations between versions.
//!
//! Owns the table definitions (one `const` per table, as redb intends), the
//! `meta` table that records the schema version and the change-log bounds,
//! and the upgrade path from every older schema to [`SCHEMA_VERSION`]. A file
//! from a newer schema is refused before anything is written to it.
//!
//! # Schema history
//! - **1**: `meta`, `watches`, `versions`, `bodies`, `changes`. A body was
//!   kept while any version named its hash, found by scanning `versions`.
//! - **2**: adds `body_refs` (hash → number of versions naming it), so that
//!   pruning a version can delete its body without a scan. The migration
//!   counts the references once and drops bodies that nothing names.
//! - **3**: watch states may end with a pending job's URL.
//! - **4**: ... and with the configured interval.
//! - **5**: watch states with a server hold (`hold_until_ms`) use record
//!   format 2. Older records decode as they are.
//! - **6**: adds `state_log`. A commit appends its watches' new states there,
//!   packed in chunks, instead of rewriting a row of `watches` per poll;
//!   each commit folds a share of the log back into `watches` (the rolling
//!   fold of `store.rs`), and an open folds what a crash left. The
//!   migration only creates the table; an older polld must refuse the file,
//!   since it would not read the log.
//! - **7**: change-log entries may be of kind 6 (`rate_limited`) and 7
//!   (`rate_limit_cleared`), and watch states with a cursor page's hash use
//!   record format 3. Nothing is rewritten; an older polld must refuse the
//!   file, since it could not decode them.

use std::collections::HashMap;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::Hash;
use crate::codec::decode_version;
use crate::error::StoreError;

/// The schema this build writes.
pub const SCHEMA_VERSION: u64 = 7;

/// `schema_version`, `last_seq` (newest seq ever appended, 0 before the
/// first) and `oldest_seq` (oldest retained; `last_seq + 1` when the log is
/// empty).
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Watch id → encoded [`crate::WatchState`], as of the last fold of
/// `state_log`.
pub(crate) const WATCHES: TableDefinition<&str, &[u8]> = TableDefinition::new("watches");
/// Chunk key → a chunk of (watch id, encoded [`crate::WatchState`])
/// entries, a few KiB each: the states committed and not yet folded into
/// `watches`, oldest first. A watch's newest entry wins over its row in
/// `watches`. Keys only grow, so a commit appends a chunk or two instead of
/// rewriting a random leaf of `watches` per poll (a 304 cost ~7 KiB of disk
/// writes that way, see BENCHMARKS.md).
pub(crate) const STATE_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("state_log");
/// (watch id, version number) → encoded [`crate::Version`]. The tuple key
/// keeps a watch's versions adjacent and in order, so listing and pruning
/// are range scans.
pub(crate) const VERSIONS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("versions");
/// BLAKE3 of a body → tag byte + body (zstd or raw).
pub(crate) const BODIES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("bodies");
/// BLAKE3 of a body → number of versions (of any watch) naming it. Kept
/// apart from `bodies` so that adding a reference does not rewrite the body.
pub(crate) const BODY_REFS: TableDefinition<&[u8; 32], u64> = TableDefinition::new("body_refs");
/// seq → encoded change-log entry.
pub(crate) const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");

pub(crate) const KEY_SCHEMA: &str = "schema_version";
pub(crate) const KEY_LAST_SEQ: &str = "last_seq";
pub(crate) const KEY_OLDEST_SEQ: &str = "oldest_seq";

/// One upgrade step: `MIGRATIONS[i]` turns schema `i + 1` into `i + 2`.
type Migration = fn(&WriteTransaction) -> Result<(), StoreError>;
const MIGRATIONS: [Migration; (SCHEMA_VERSION - 1) as usize] = [
    v1_to_v2,
    version_only,
    version_only,
    version_only,
    version_only,
    version_only,
];

/// Reads the schema version of an existing file without writing to it, so
/// that a file from a newer polld is refused before redb's open-time check
/// commits to it. `Ok(None)` when the read-only open is not possible (no
/// file, an empty one, or one a crash left needing repair): the read-write
/// open then decides, and repairs a crashed file as it must.
pub(crate) fn peek_version(path: &std::path::Path) -> Result<Option<u64>, StoreError> {
    if std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
        return Ok(None);
    }
    let mut builder = redb::Builder::new();
    // Only the meta table is read.
    builder.set_cache_size(1 << 20);
    // A damaged file may make redb panic on an unverified open; the
    // read-write open with its integrity check reports it properly.
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        builder.open_read_only(path)
    }));
    let db = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
            return Err(StoreError::Locked {
                path: path.to_owned(),
            });
        }
        Ok(Err(_)) | Err(_) => return Ok(None),
    };
    let read = || -> Result<Option<u64>, StoreError> {
        let txn = db.begin_read()?;
        match txn.open_table(META) {
            Ok(meta) => Ok(meta.get(KEY_SCHEMA)?.map(|g| g.value())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    };
    // Anything unreadable here is left to the verified open to report.
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read))
        .ok()
        .and_then(Result::ok)
        .flatten();
    drop(db);
    Ok(found)
}

/// Creates the tables of a new file, or checks and upgrades an existing one.
/// Returns `(last_seq, oldest_seq)`.
///
/// The version is read in a read transaction first: a current file is not
/// written to at all, and a newer one is refused without a write.
pub(crate) fn prepare(
    db: &redb::Database,
    path: &std::path::Path,
) -> Result<(u64, u64), StoreError> {
    let found = {
        let txn = db.begin_read()?;
        match txn.open_table(META) {
            Ok(meta) => meta.get(KEY_SCHEMA)?.map(|g| g.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        }
    };
    match found {
        Some(v) if v > SCHEMA_VERSION => {
            return Err(StoreError::NewerSchema {
                path: path.to_owned(),
                found: v,
                supported: SCHEMA_VERSION,
            });
        }
        Some(0) => {
            return Err(StoreError::Inconsistent("schema version 0 in meta".into()));
        }
        Some(SCHEMA_VERSION) => {}
        Some(v) => {
            tracing::info!(path = %path.display(), from = v, to = SCHEMA_VERSION, "migrating the store schema");
            let mut txn = db.begin_write()?;
            txn.set_durability(redb::Durability::Immediate)?;
            for step in &MIGRATIONS[(v - 1) as usize..] {
                step(&txn)?;
            }
            txn.open_table(META)?.insert(KEY_SCHEMA, SCHEMA_VERSION)?;
            create_tables(&txn)?;
            txn.commit()?;
        }
        None => {
            let txn = db.begin_read()?;
            let existing = txn.list_tables()?.count();
            drop(txn);
            if existing > 0 {
                return Err(StoreError::Inconsistent(
                    "the file holds redb tables but no polld schema version".into(),
                ));
            }
            let mut txn = db.begin_write()?;
            txn.set_durability(redb::Durability::Immediate)?;
            create_tables(&txn)?;
            {
                let mut meta = txn.open_table(META)?;
                meta.insert(KEY_SCHEMA, SCHEMA_VERSION)?;
                meta.insert(KEY_LAST_SEQ, 0)?;
                meta.insert(KEY_OLDEST_SEQ, 1)?;
            }
            txn.commit()?;
        }
    }
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let last = meta.get(KEY_LAST_SEQ)?.map_or(0, |g| g.value());
    let oldest = meta.get(KEY_OLDEST_SEQ)?.map_or(last + 1, |g| g.value());
    Ok((last, oldest))
}

/// Opening a table in a write transaction creates it; reads can then assume
/// every table exists.
fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(META)?;
    txn.open_table(WATCHES)?;
    txn.open_table(VERSIONS)?;
    txn.open_table(BODIES)?;
    txn.open_table(BODY_REFS)?;
    txn.open_table(CHANGES)?;
    txn.open_table(STATE_LOG)?;
    Ok(())
}

/// Schemas 3 to 6 only add: an optional field appended to watch-state
/// records (3, 4), a record format for states with a server hold (5), the
/// state log, which `create_tables` creates after the migrations (6).
/// Older records decode as they are; the version moves so that an older
/// polld refuses a file that may hold what it cannot read.
#[allow(clippy::unnecessary_wraps)] // the shape of every migration
fn version_only(_txn: &WriteTransaction) -> Result<(), StoreError> {
    Ok(())
}

/// Counts the versions naming each body and records the counts; bodies that
/// no version names (left by schema 1's lazy deletion) are dropped.
fn v1_to_v2(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut counts: HashMap<Hash, u64> = HashMap::new();
    {
        let versions = txn.open_table(VERSIONS)?;
        for item in versions.iter()? {
            let (k, v) = item?;
            let version = decode_version(k.value().1, v.value())?;
            *counts.entry(version.hash).or_default() += 1;
        }
    }
    let mut refs = txn.open_table(BODY_REFS)?;
    for (hash, n) in &counts {
        refs.insert(hash, *n)?;
    }
    let mut bodies = txn.open_table(BODIES)?;
    bodies.retain(|hash, _| counts.contains_key(hash))?;
    Ok(())
}

//! `polld-store` owns all persistence of polld, on redb: per-watch state,
//! content-addressed compressed bodies, the versions of each watch, the
//! global change log with its monotonic sequence, retention, and the batch
//! writer that commits poll outcomes in groups.
//!
//! # Layout
//! - [`schema`]: the tables, the schema version and its migrations.
//! - `codec`: the compact byte layout of each record.
//! - `store`: [`Store`] — open/close, commits, reads, retention, and the
//!   state log: each commit appends its watch states to a log and folds a
//!   share of it back into the `watches` table, so that a poll that changed
//!   nothing costs a few hundred bytes of disk writes, not a B-tree leaf.
//! - `writer`: [`Writer`] — group commit from async code.
//! - `model`: the data types shared with the engine and the API.
//! - `error`: [`StoreError`].
//!
//! # Guarantees
//! - An outcome counts as stored only once the commit holding it returned
//!   Ok; only then do [`Store::subscribe`] waiters see its seq.
//! - A version, the state update it came with (including its cursor) and
//!   its change-log entry are one transaction.
//! - Once [`Store::close`] ran on any clone, [`Store::closed`] resolves on
//!   every clone (the seq channel itself never closes) and nothing more is
//!   committed.
//! - Identical bodies are stored once (BLAKE3 addressed, zstd compressed)
//!   and deleted with the last version naming them.

mod codec;
mod error;
mod model;
pub mod schema;
mod store;
mod writer;

pub use error::{DecodeError, StoreError};
pub use model::{
    Change, ChangeKind, Committed, NewVersion, Outcome, Version, WatchState, WatchStatus,
};
pub use schema::SCHEMA_VERSION;
pub use store::{
    DEFAULT_CACHE_BYTES, DEFAULT_MAX_CHANGES, DEFAULT_ZSTD_LEVEL, FOLD_EVERY, Store, StoreOptions,
    VersionsView, error_chain,
};
pub use writer::{CommitReport, Writer, WriterConfig};

/// A body's content address: its BLAKE3 hash.
pub type Hash = [u8; 32];

/// The content address of `body`.
#[must_use]
pub fn hash_body(body: &[u8]) -> Hash {
    *blake3::hash(body).as_bytes()
}

/// Lower-case hex of a hash (64 characters), as the API shows it.
#[must_use]
pub fn hex(hash: &Hash) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(64);
    for b in hash {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses the 64-character hex form of a hash (either case).
#[must_use]
pub fn parse_hex(s: &str) -> Option<Hash> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

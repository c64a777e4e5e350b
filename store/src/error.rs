//! The store's typed errors.
//!
//! Owns [`StoreError`] and the mapping of redb's errors onto it, so that the
//! daemon can tell a locked file, a corrupted file and a file from a newer
//! polld apart from ordinary I/O trouble and print a message a user can act
//! on.

use std::path::PathBuf;
use std::sync::Arc;

/// A stored record that could not be decoded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("malformed {record} record: {why}")]
pub struct DecodeError {
    pub(crate) record: &'static str,
    pub(crate) why: &'static str,
}

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (or another `Store` in this one) holds the file.
    #[error("{}: already in use by another polld", .path.display())]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// The file is truncated, damaged or not a redb database. The open wrote
    /// nothing to it, so it can be inspected or restored from a backup.
    #[error("{}: database is corrupted ({detail}); the file was left untouched", .path.display())]
    Corrupted {
        /// The database file.
        path: PathBuf,
        /// What redb or the store found wrong.
        detail: String,
    },
    /// The file was written by a polld with a newer schema: this build must
    /// not guess at its layout.
    #[error("{}: written by a newer polld (schema version {found}; this build supports up to {supported})", .path.display())]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Schema version found in the file.
        found: u64,
        /// Newest schema version this build knows.
        supported: u64,
    },
    /// The file could not be opened or created for another reason.
    #[error("{}: cannot open the database", .path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What redb reported.
        #[source]
        source: redb::DatabaseError,
    },
    /// An I/O error outside redb (e.g. creating the state directory).
    #[error("{}: I/O error", .path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Beginning a transaction failed.
    #[error("cannot begin a transaction")]
    Transaction(#[from] redb::TransactionError),
    /// Opening a table failed.
    #[error("cannot open a table")]
    Table(#[from] redb::TableError),
    /// Reading or writing pages failed.
    #[error("storage error")]
    Storage(#[from] redb::StorageError),
    /// The commit failed: nothing of the transaction is stored.
    #[error("commit failed")]
    Commit(#[from] redb::CommitError),
    /// Setting the durability of a transaction failed.
    #[error("cannot set durability")]
    Durability(#[from] redb::SetDurabilityError),
    /// A record in the file could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The file's tables disagree (e.g. a version whose body is missing).
    #[error("inconsistent database: {0}")]
    Inconsistent(String),
    /// A stored body could not be decompressed.
    #[error("cannot decompress the body of {watch} version {version}")]
    Decompress {
        /// The watch.
        watch: String,
        /// The version number.
        version: u64,
        /// What zstd reported.
        #[source]
        source: std::io::Error,
    },
    /// An outcome was rejected before its transaction began.
    #[error("invalid outcome for watch {watch:?}: {why}")]
    InvalidOutcome {
        /// The watch id of the outcome.
        watch: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The batch this outcome was committed in failed; every outcome of that
    /// batch gets this error, none is silently dropped.
    #[error("the batch commit failed")]
    BatchFailed(#[source] Arc<StoreError>),
    /// The writer task has stopped (after a failed commit, or because it was
    /// shut down); nothing more can be submitted.
    #[error("the store writer has stopped")]
    WriterStopped,
    /// [`crate::Store::close`] was called; the handle can no longer be used.
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    /// Maps the error of an open onto the variants a user can act on.
    pub(crate) fn from_open(path: PathBuf, err: redb::DatabaseError) -> StoreError {
        use redb::{DatabaseError as D, StorageError as S};
        match err {
            D::DatabaseAlreadyOpen | D::LockProtocolMismatch => StoreError::Locked { path },
            D::Storage(S::Corrupted(detail)) => StoreError::Corrupted { path, detail },
            // redb reports a file without its magic number, or one whose
            // header points past its end, as invalid data or an early EOF.
            D::Storage(S::Io(io))
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                StoreError::Corrupted {
                    path,
                    detail: io.to_string(),
                }
            }
            D::Storage(S::Io(io)) if io.kind() == std::io::ErrorKind::WouldBlock => {
                StoreError::Locked { path }
            }
            other => StoreError::Open {
                path,
                source: other,
            },
        }
    }
}

//! The batch writer: group commit of poll outcomes.
//!
//! Owns the task that collects outcomes from any number of [`Writer`]
//! handles and commits them together, one write transaction per batch with
//! `Durability::Immediate`, on a blocking thread. A batch closes when it
//! holds `max_batch` outcomes or `max_delay` after its first one arrived;
//! outcomes queued while a commit runs form the next batch, so under load
//! the batches grow by themselves.
//!
//! # Failure policy
//! A full disk (ENOSPC, EDQUOT) is waited out: nothing of the batch was
//! written, so the writer waits (doubling up to 30 s), reopens the database
//! and retries the same batch; [`Store::health`] reports the error meanwhile
//! and nothing of the batch is acknowledged until it commits.
//!
//! Any other failed commit stops the writer: every outcome of that batch
//! resolves to [`StoreError::BatchFailed`], [`Store::health`] reports the
//! error, the outcomes still queued resolve to [`StoreError::WriterStopped`],
//! and the task ends with the error. After a failed fsync the kernel may have
//! dropped the dirty pages, so the reopen (with its crash repair) belongs to
//! a fresh process: the daemon exits and systemd restarts it. Nothing is
//! dropped silently: the engine sees every failure on its own submit.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::StoreError;
use crate::model::{Committed, Outcome};
use crate::store::{Store, validate};

/// How the writer groups outcomes.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Most outcomes in one transaction.
    pub max_batch: usize,
    /// Longest an outcome waits for others before its batch commits. Zero
    /// commits whatever is queued at once.
    pub max_delay: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        // 5 ms is short against a poll's round trip and long enough to
        // gather the outcomes of a burst of due watches into one fsync.
        WriterConfig {
            max_batch: 1024,
            max_delay: Duration::from_millis(5),
        }
    }
}

/// First wait before retrying a batch on a full disk; doubles up to the max.
const FULL_DISK_FIRST_WAIT: Duration = Duration::from_millis(500);
const FULL_DISK_MAX_WAIT: Duration = Duration::from_secs(30);

/// Whether a commit failed because the disk (or quota) is full.
fn is_storage_full(error: &StoreError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && (io.kind() == std::io::ErrorKind::StorageFull
                || matches!(io.raw_os_error(), Some(28 | 122)))
        {
            return true;
        }
        source = e.source();
    }
    // Some wrappers keep the OS error only in their message.
    let chain = crate::store::error_chain(error);
    chain.contains("(os error 28)") || chain.contains("(os error 122)")
}

/// What one commit of the writer took: for whoever watches the store's
/// pace (the daemon's `polld_store_commit_*` metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitReport {
    /// Outcomes in the transaction.
    pub outcomes: usize,
    /// The write transaction on its blocking thread, fsync included.
    pub duration: Duration,
    /// Whether it committed. A failed commit on a full disk is reported
    /// each time it is tried.
    pub succeeded: bool,
}

/// Called after every commit (or failed try), on the writer's task: it
/// must return quickly.
type OnCommit = Box<dyn Fn(CommitReport) + Send + Sync>;

struct Request {
    outcome: Outcome,
    reply: oneshot::Sender<Result<Committed, StoreError>>,
}

/// Submits outcomes to the writer task. Clone it freely; the task flushes
/// what is queued and ends once every clone is dropped.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("closed", &self.tx.is_closed())
            .finish()
    }
}

impl Writer {
    /// Queues `outcome` and resolves once the batch holding it has been
    /// committed (then the outcome is durable and its changes are visible),
    /// or with the error that kept it from being stored. An invalid outcome
    /// is refused here, before it can join (and fail) a batch.
    pub async fn submit(&self, outcome: Outcome) -> Result<Committed, StoreError> {
        let committed = self.enqueue(outcome).await?;
        committed.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Queues `outcome` and returns once it is in the writer's queue, with
    /// a receiver for its commit result. Calls made one after another keep
    /// their order, which [`Writer::submit`] from concurrent tasks cannot
    /// promise; the engine relies on it for successive states of a watch.
    pub async fn enqueue(
        &self,
        outcome: Outcome,
    ) -> Result<oneshot::Receiver<Result<Committed, StoreError>>, StoreError> {
        validate(&outcome)?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { outcome, reply })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        Ok(rx)
    }
}

impl Store {
    /// Starts the writer task on the current tokio runtime (panics outside
    /// one). The handle ends with `Ok` once all [`Writer`]s are dropped and
    /// the queue is flushed, or with the error of a failed commit.
    pub fn spawn_writer(
        &self,
        config: WriterConfig,
    ) -> (Writer, JoinHandle<Result<(), StoreError>>) {
        self.spawn_writer_with(config, |_| {})
    }

    /// [`Store::spawn_writer`], calling `on_commit` after every commit (and
    /// every failed try) with its size, duration and result.
    pub fn spawn_writer_with(
        &self,
        config: WriterConfig,
        on_commit: impl Fn(CommitReport) + Send + Sync + 'static,
    ) -> (Writer, JoinHandle<Result<(), StoreError>>) {
        let max_batch = config.max_batch.max(1);
        // Room for two batches: one committing, one gathering. A fuller
        // queue makes submitters wait, which is the backpressure the engine
        // needs when the disk is slower than the network.
        let (tx, rx) = mpsc::channel(max_batch.saturating_mul(2));
        let task = tokio::spawn(run(
            self.clone(),
            rx,
            max_batch,
            config.max_delay,
            Box::new(on_commit),
        ));
        (Writer { tx }, task)
    }
}

/// Sleeps `wait` (doubling it up to the max for next time), then reopens
/// the store; repeats while the reopen fails for a full disk. Any other
/// failure to reopen is returned: the writer stops on it.
async fn reopen_when_room(store: &Store, wait: &mut Duration) -> Result<(), StoreError> {
    loop {
        tokio::time::sleep(*wait).await;
        *wait = (*wait * 2).min(FULL_DISK_MAX_WAIT);
        let reopener = store.clone();
        let reopened = tokio::task::spawn_blocking(move || reopener.reopen())
            .await
            .unwrap_or_else(|panic| {
                Err(StoreError::Inconsistent(format!(
                    "the reopen panicked: {panic}"
                )))
            });
        match reopened {
            Ok(()) => return Ok(()),
            Err(e) if is_storage_full(&e) => {
                tracing::warn!(error = %crate::store::error_chain(&e), retry_in = ?wait, "reopening the store failed on the full disk; retrying later");
            }
            Err(e) => return Err(e),
        }
    }
}

async fn run(
    store: Store,
    mut rx: mpsc::Receiver<Request>,
    max_batch: usize,
    max_delay: Duration,
    on_commit: OnCommit,
) -> Result<(), StoreError> {
    let mut batch: Vec<Request> = Vec::with_capacity(max_batch);
    loop {
        if rx.recv_many(&mut batch, max_batch).await == 0 {
            // Every Writer is gone and the queue is empty.
            return Ok(());
        }
        let deadline = Instant::now() + max_delay;
        while batch.len() < max_batch && !max_delay.is_zero() {
            let room = max_batch - batch.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let (mut outcomes, replies): (Vec<Outcome>, Vec<_>) =
            batch.drain(..).map(|r| (r.outcome, r.reply)).unzip();
        let mut retry_wait = FULL_DISK_FIRST_WAIT;
        let result = loop {
            let committer = store.clone();
            let (result, back, took) = tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let result = committer.apply_validated(&outcomes);
                (result, outcomes, started.elapsed())
            })
            .await
            .unwrap_or_else(|panic| {
                (
                    Err(StoreError::Inconsistent(format!(
                        "the commit panicked: {panic}"
                    ))),
                    Vec::new(),
                    Duration::ZERO,
                )
            });
            outcomes = back;
            // A commit refused because the store was closed on purpose is
            // no failure worth an alert.
            if !matches!(result, Err(StoreError::Closed)) || !store.is_closed() {
                on_commit(CommitReport {
                    outcomes: outcomes.len(),
                    duration: took,
                    succeeded: result.is_ok(),
                });
            }
            match result {
                // A full disk is waited out: nothing of the batch was written
                // (redb commits all or nothing), so the same batch is retried
                // after a reopen, and until then nothing is acknowledged.
                // Store::health reports the error meanwhile (`/readyz`).
                Err(e) if is_storage_full(&e) && !outcomes.is_empty() => {
                    tracing::error!(error = %crate::store::error_chain(&e), outcomes = outcomes.len(), retry_in = ?retry_wait, "the disk is full; the batch waits and is retried");
                    // The reopen itself may fail on a full disk (its repair
                    // writes): then the store is closed, and a commit would
                    // fail as `Closed` and stop the writer. Wait and reopen
                    // again until it opens or fails for another reason.
                    if let Err(e) = reopen_when_room(&store, &mut retry_wait).await {
                        break Err(e);
                    }
                }
                other => break other,
            }
        };
        match result {
            Ok(committed) => {
                for (reply, c) in replies.into_iter().zip(committed) {
                    // A submitter that stopped waiting is fine: its outcome
                    // is stored all the same.
                    let _ = reply.send(Ok(c));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                tracing::error!(error = %crate::store::error_chain(&e), outcomes = replies.len(), "store commit failed; the writer stops");
                store.note_writer_stopped(crate::store::error_chain(&e));
                for reply in replies {
                    let _ = reply.send(Err(StoreError::BatchFailed(e.clone())));
                }
                rx.close();
                // Closed: no new request can arrive, so this ends.
                while let Ok(r) = rx.try_recv() {
                    let _ = r.reply.send(Err(StoreError::WriterStopped));
                }
                return Err(StoreError::BatchFailed(e));
            }
        }
    }
}

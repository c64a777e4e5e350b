//! The poll engine: schedules every watch, runs polls through the agent
//! within the concurrency limits, applies the interval policy and hands every
//! outcome to the store's batch writer.
//!
//! One task owns all watch entries and one timing structure (a
//! `DelayQueue`); polls run as tracked tasks holding owned permits of a
//! global and a per-host semaphore, and report back on a channel. Nothing
//! sleeps per watch, so 100,000 watches cost one queue entry each.

mod entries;
mod limits;
pub mod policy;
mod record;
#[cfg(test)]
mod tests;
mod watch;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::{FutureExt, StreamExt};
use polld_config::{Config, Watch};
use polld_store::{
    ChangeKind, Committed, Outcome, Store, StoreError, WatchState, WatchStatus, Writer,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::time::DelayQueue;
use tokio_util::time::delay_queue::Key;

use crate::agent::{Agent, PollOutcome, PollRequest};
use crate::metrics::Metrics;
use entries::{Entries, Slot, Ticket};
use limits::Limits;
pub use watch::fingerprint;

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Polls in flight, all hosts.
    pub concurrency: usize,
    /// Polls in flight per host.
    pub per_host: usize,
    /// How long in-flight polls may finish after shutdown begins.
    pub grace: Duration,
    /// Late watches after a restart are spread over at most this long.
    pub resume_window: Duration,
    /// Where poll spans go when OpenTelemetry export is on.
    pub spans: Option<crate::telemetry::SpanSink>,
    /// The wall clock that cron schedules and stored due times are read on.
    pub clock: WallClock,
}

/// The wall clock of the engine. Delays run on tokio's clock; cron fires
/// and stored due times are wall-clock times.
#[derive(Debug, Clone, Copy, Default)]
pub enum WallClock {
    /// The system's clock (NTP steps and all): what the daemon uses.
    #[default]
    System,
    /// `wall` at tokio's `at`, moving with tokio's clock: with tokio's
    /// paused clock in tests, wall time advances exactly as timers do.
    FollowsTokio {
        /// Wall time at `at`.
        wall: SystemTime,
        /// The tokio instant it corresponds to.
        at: Instant,
    },
}

impl WallClock {
    /// Now, on this clock.
    pub fn now(&self) -> SystemTime {
        match *self {
            WallClock::System => SystemTime::now(),
            WallClock::FollowsTokio { wall, at } => wall + at.elapsed(),
        }
    }
}

/// What performs one poll: the agent in the daemon, a scripted stand-in in
/// the scheduler's tests.
pub trait Poller: Send + Sync + 'static {
    /// Performs one poll (never fails: failures are outcomes).
    fn poll<'a>(
        &'a self,
        request: PollRequest<'a>,
    ) -> impl Future<Output = PollOutcome> + Send + 'a;
}

impl Poller for Agent {
    fn poll<'a>(
        &'a self,
        request: PollRequest<'a>,
    ) -> impl Future<Output = PollOutcome> + Send + 'a {
        Agent::poll(self, request)
    }
}

/// Outcomes handed to the writer and not yet committed, above which no new
/// poll starts: when the disk is slower than the polls, polls wait instead
/// of their outcomes piling up in memory. One writer batch (`max_batch` in
/// run.rs): in `bench/engine` two batches' worth bought no rate (40.4k vs
/// 41.3k polls/s saturated) and cost about 13 MiB of peak RSS.
const MAX_BACKLOG: usize = 16_384;

/// The count of outcomes between the engine and a finished commit, shared
/// with the forwarder that sees the commits.
#[derive(Debug, Default)]
struct Backlog {
    pending: AtomicUsize,
    /// Signalled when `pending` drops below [`MAX_BACKLOG`].
    below: Notify,
}

impl Backlog {
    fn full(&self) -> bool {
        self.pending.load(Ordering::Relaxed) >= MAX_BACKLOG
    }

    fn committed(&self) {
        if self.pending.fetch_sub(1, Ordering::Relaxed) == MAX_BACKLOG {
            self.below.notify_one();
        }
    }

    /// Waits until there is room again (at once if there is).
    async fn room(&self) {
        while self.full() {
            let below = self.below.notified();
            if !self.full() {
                break;
            }
            below.await;
        }
    }
}

/// Completions, or expired timers, the engine loop takes in one turn: a
/// turn per event cost a `select!` over every branch per poll. Bounded, so
/// that a burst of one kind does not hold the others (commands, shutdown)
/// for long.
const TURN: usize = 256;

/// Per-watch info lines a start or a reload logs before the rest go to
/// debug: a `[defaults]` edit changes every watch, and 100,000 lines of it
/// would bury the journal.
const PER_WATCH_LINES: usize = 100;

/// Logs one line per watch at info, up to [`PER_WATCH_LINES`] per start or
/// reload, then at debug.
macro_rules! per_watch {
    ($budget:expr, $($arg:tt)+) => {
        if $budget.take() {
            tracing::info!($($arg)+)
        } else {
            tracing::debug!($($arg)+)
        }
    };
}

/// What is left of [`PER_WATCH_LINES`], and the lines past it.
#[derive(Debug)]
struct LogBudget {
    left: usize,
    past: usize,
}

impl LogBudget {
    fn new() -> LogBudget {
        LogBudget {
            left: PER_WATCH_LINES,
            past: 0,
        }
    }

    fn take(&mut self) -> bool {
        if self.left == 0 {
            self.past += 1;
            return false;
        }
        self.left -= 1;
        true
    }

    /// Says how many lines went to debug, and starts a new budget.
    fn close(&mut self) {
        if self.past > 0 {
            tracing::info!(
                more = self.past,
                "more watches were added, removed or changed than are logged one by one; RUST_LOG=polld=debug lists each"
            );
        }
        *self = LogBudget::new();
    }
}

/// A request to the running engine.
#[derive(Debug)]
enum Command {
    Reload(Box<Config>, oneshot::Sender<ReloadSummary>),
    PollNow(String, oneshot::Sender<bool>),
}

/// A reload with the stored states of the watches it adds, read off the
/// engine loop.
struct PreparedReload {
    config: Box<Config>,
    stored: HashMap<String, Result<Option<WatchState>, StoreError>>,
    reply: oneshot::Sender<ReloadSummary>,
}

/// The pending reload read, or never when there is none (a disabled
/// `select!` branch).
async fn reload_read(
    read: &mut Option<tokio::task::JoinHandle<PreparedReload>>,
) -> Option<Result<PreparedReload, tokio::task::JoinError>> {
    match read {
        Some(handle) => Some(handle.await),
        None => std::future::pending().await,
    }
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Watches started.
    pub added: usize,
    /// Watches stopped (their history kept).
    pub removed: usize,
    /// Watches whose settings changed.
    pub changed: usize,
}

/// A cheap handle to the running engine, for the API and the signal handlers.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    progress: Arc<AtomicU64>,
    running: Arc<AtomicBool>,
}

impl EngineHandle {
    /// Asks the engine to poll a watch now; false when there is no such watch.
    pub async fn poll_now(&self, id: &str) -> bool {
        let (tx, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::PollNow(id.to_owned(), tx))
            .await
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Hands a new, valid watch list to the engine and waits until it is applied.
    pub async fn reload(&self, config: Config) -> Option<ReloadSummary> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Reload(Box::new(config), tx))
            .await
            .ok()?;
        rx.await.ok()
    }

    /// A counter that moves while the scheduler loop is making progress (for
    /// the systemd watchdog).
    pub fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// Whether the engine loop is running.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }
}

/// The engine, built by [`Engine::start`] and driven by [`Engine::run`].
pub struct Engine<P: Poller = Agent> {
    options: EngineOptions,
    /// Shared with every poll task: one reference count per poll, not a
    /// copy of the client's handles.
    agent: Arc<P>,
    store: Store,
    outbox: mpsc::UnboundedSender<Outcome>,
    backlog: Arc<Backlog>,
    forwarder: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
    entries: Entries,
    queue: DelayQueue<Slot>,
    limits: Limits,
    completions_tx: mpsc::UnboundedSender<Completion>,
    completions: mpsc::UnboundedReceiver<Completion>,
    commit_failures: mpsc::UnboundedReceiver<String>,
    resynced_tx: mpsc::UnboundedSender<(String, Option<WatchState>)>,
    resynced: mpsc::UnboundedReceiver<(String, Option<WatchState>)>,
    commands: mpsc::Receiver<Command>,
    /// A reload whose added watches' stored states are being read off the
    /// runtime; further commands wait until it is applied.
    reload_read: Option<tokio::task::JoinHandle<PreparedReload>>,
    tracker: TaskTracker,
    poll_cancel: CancellationToken,
    progress: Arc<AtomicU64>,
    running: Arc<AtomicBool>,
    rng: StdRng,
    /// Per-watch lines of the start or reload under way.
    log_budget: LogBudget,
    /// Numbers the polls started, so that an answer is matched to the very
    /// poll its entry is waiting for (not to a watch of the same id removed
    /// and added again meanwhile).
    polls_started: u64,
}

impl<P: Poller> std::fmt::Debug for Engine<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("watches", &self.entries.len())
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

/// One watch as the engine holds it.
struct Entry {
    watch: Arc<Watch>,
    /// Shared with the outcome last handed to the store, so that handing
    /// it over copies no strings; changed through `Arc::make_mut`, which
    /// copies it only while that outcome is not yet committed.
    state: Arc<WatchState>,
    /// The host its polls count against ([`Entry::locate`]).
    host: Arc<str>,
    /// The URL a permanent move re-pointed it to, when that differs from
    /// the configured one: parsed once, not compared and parsed per poll.
    moved: Option<Arc<url::Url>>,
    key: Option<Key>,
    due: Instant,
    /// The number of the poll in flight, if one is.
    in_flight: Option<u64>,
    /// Due and in the ready queue (or waiting there for its host): at most
    /// once, so that "poll now" cannot make a second poll of it.
    queued: bool,
    /// Bumped when the watch's request changes, so a poll started before
    /// the change is not recorded over the new state.
    generation: u64,
}

impl Entry {
    /// A watch not yet armed or polled, due at `due`.
    fn new(watch: Arc<Watch>, state: WatchState, due: Instant) -> Entry {
        let mut entry = Entry {
            host: Arc::from(""),
            moved: None,
            watch,
            state: Arc::new(state),
            key: None,
            due,
            in_flight: None,
            queued: false,
            generation: 0,
        };
        entry.locate();
        entry
    }

    /// Where its polls go, after its stored URL may have changed (a
    /// permanent move, an edited request, a stored state resumed).
    fn locate(&mut self) {
        let parsed = url::Url::parse(&self.state.url).ok();
        self.host = watch::host_in(parsed.as_ref());
        self.moved = parsed
            .filter(|_| self.state.url != self.watch.url.as_str())
            .map(Arc::new);
    }
}

/// A finished (or cancelled) poll, reported back to the engine loop.
struct Completion {
    slot: Slot,
    /// Which poll of the watch this was: the slot's watch is the one polled
    /// only if this is the poll it waits for (the slot may have been given
    /// to a watch added since).
    poll: u64,
    generation: u64,
    /// The host whose permit the poll held (the watch's host may have
    /// changed since).
    host: Arc<str>,
    outcome: Option<PollOutcome>,
}

/// Reports a poll back to the engine loop when dropped: also when the
/// poll panics, so that the watch is not left in flight for ever and its
/// host's waiting watches are released. The permits go first, so that the
/// loop can reuse the slots at once.
struct Report {
    permits: Option<limits::Permits>,
    completion: Option<Completion>,
    done: mpsc::UnboundedSender<Completion>,
}

impl Drop for Report {
    fn drop(&mut self) {
        drop(self.permits.take());
        if let Some(completion) = self.completion.take() {
            let _ = self.done.send(completion);
        }
    }
}

impl<P: Poller> Engine<P> {
    /// Loads the stored state of every watch, reconciles it with `watches`
    /// (new watches are spread over their first interval, known ones resume
    /// from their stored due time) and returns the engine and its handle.
    /// The watches are taken by value: 100,000 of them are worth not copying.
    pub async fn start(
        watches: Vec<Arc<Watch>>,
        store: &Store,
        writer: Writer,
        agent: P,
        metrics: Arc<Metrics>,
        options: EngineOptions,
    ) -> Result<(Engine<P>, EngineHandle), StoreError> {
        let stored = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.all_watches())
                .await
                .expect("store read panicked")?
        };
        let (commands_tx, commands) = mpsc::channel(64);
        let (completions_tx, completions) = mpsc::unbounded_channel();
        let (commit_failures_tx, commit_failures) = mpsc::unbounded_channel();
        let (resynced_tx, resynced) = mpsc::unbounded_channel();
        let (outbox, outbox_rx) = mpsc::unbounded_channel();
        let backlog = Arc::new(Backlog::default());
        let forwarder = tokio::spawn(forward(
            writer,
            outbox_rx,
            backlog.clone(),
            commit_failures_tx,
            metrics.clone(),
        ));
        let progress = Arc::new(AtomicU64::new(0));
        let running = Arc::new(AtomicBool::new(true));
        let mut engine = Engine {
            limits: Limits::new(options.concurrency, options.per_host),
            options,
            agent: Arc::new(agent),
            store: store.clone(),
            outbox,
            backlog,
            forwarder,
            metrics,
            entries: Entries::default(),
            queue: DelayQueue::new(),
            completions_tx,
            completions,
            commit_failures,
            resynced_tx,
            resynced,
            commands,
            reload_read: None,
            tracker: TaskTracker::new(),
            poll_cancel: CancellationToken::new(),
            progress: progress.clone(),
            running: running.clone(),
            rng: StdRng::from_os_rng(),
            log_budget: LogBudget::new(),
            polls_started: 0,
        };
        // Sorted and searched in place rather than indexed in a map: no
        // second copy of 100,000 states at start-up.
        let mut stored: Vec<(String, Option<WatchState>)> = {
            let mut stored = stored;
            stored.sort_unstable_by(|a, b| a.id.cmp(&b.id));
            stored
                .into_iter()
                .map(|s| (s.id.clone(), Some(s)))
                .collect()
        };
        let now = engine.options.clock.now();
        engine.entries.reserve(watches.len());
        for watch in watches {
            let previous = stored
                .binary_search_by(|(id, _)| id.as_str().cmp(watch.id.as_str()))
                .ok()
                .and_then(|i| stored[i].1.take());
            engine.add(watch, previous, now);
            // A first start records every watch: keep only a backlog's worth
            // of those records in memory at a time.
            engine.backlog.room().await;
        }
        for state in stored.into_iter().filter_map(|(_, state)| state) {
            if state.status != WatchStatus::Removed {
                engine.record_removed(Arc::new(state));
            }
        }
        engine.log_budget.close();
        engine.metrics.set_watches(engine.entries.len());
        let handle = EngineHandle {
            commands: commands_tx,
            progress,
            running,
        };
        Ok((engine, handle))
    }

    /// Runs until `shutdown` is cancelled, then stops starting polls, lets
    /// in-flight polls finish within the grace period (then cancels them)
    /// and returns once every outcome was handed to the writer.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // Made once, not per turn of the loop: a new one registered with
        // the token and unregistered again on every completion.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let mut finished = Vec::with_capacity(TURN);
        loop {
            self.progress.fetch_add(1, Ordering::Relaxed);
            self.dispatch();
            tokio::select! {
                biased;
                _ = &mut cancelled => break,
                // What finished meanwhile, together: one turn of the loop
                // (and one dispatch) per batch, not per poll.
                n = self.completions.recv_many(&mut finished, TURN) => {
                    // 0 only once the channel closed, which it cannot: the
                    // engine holds a sender of its own.
                    debug_assert!(n > 0, "the completions channel closed");
                    for completion in finished.drain(..) {
                        self.complete(completion);
                    }
                }
                Some(id) = self.commit_failures.recv() => self.commit_failed(id),
                Some((id, stored)) = self.resynced.recv() => self.resync(&id, stored),
                Some(command) = self.commands.recv(), if self.reload_read.is_none() => self.command(command),
                Some(read) = reload_read(&mut self.reload_read) => {
                    self.reload_read = None;
                    match read {
                        Ok(prepared) => self.apply_reload(prepared),
                        // The reply is dropped: the caller learns that the
                        // reload was not applied.
                        Err(err) => tracing::error!(error = %err, "reading the stored states for a reload failed; the running watch list stays"),
                    }
                }
                () = self.backlog.below.notified() => {}
                Some(expired) = self.queue.next() => {
                    self.expired(expired.into_inner());
                    // And every other watch due by now, up to a turn's worth.
                    for _ in 1..TURN {
                        match self.queue.next().now_or_never() {
                            Some(Some(expired)) => self.expired(expired.into_inner()),
                            _ => break,
                        }
                    }
                }
                _ = tick.tick() => {}
            }
        }
        self.drain().await;
    }

    /// A watch's timer fired: it joins the ready queue, unless the wait was
    /// longer than the timer holds (then its next step is armed).
    fn expired(&mut self, slot: Slot) {
        // A removed watch's timer is removed with it: the slot's watch is
        // the one the timer was armed for.
        let Some(entry) = self.entries.get_mut(slot) else {
            return;
        };
        entry.key = None;
        let left = entry.due.saturating_duration_since(Instant::now());
        if left > Duration::from_millis(1) {
            entry.key = Some(arm(&mut self.queue, slot, left));
            return;
        }
        if !entry.queued && entry.in_flight.is_none() {
            entry.queued = true;
            self.limits.ready.push_back(self.entries.ticket(slot));
        }
    }

    async fn drain(mut self) {
        self.running.store(false, Ordering::Relaxed);
        self.tracker.close();
        let in_flight = self.tracker.len();
        tracing::info!(in_flight, grace = ?self.options.grace, "stopping: no new polls, waiting for polls in flight");
        let deadline = tokio::time::sleep(self.options.grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                Some(completion) = self.completions.recv() => self.complete(completion),
                _ = self.tracker.wait() => break,
                _ = &mut deadline, if !self.poll_cancel.is_cancelled() => {
                    tracing::warn!(in_flight = self.tracker.len(), "grace period over: cancelling polls in flight");
                    self.poll_cancel.cancel();
                }
            }
        }
        while let Ok(completion) = self.completions.try_recv() {
            self.complete(completion);
        }
        // Closing the outbox lets the forwarder hand over the rest and end;
        // its end drops the last Writer, which flushes and stops the writer.
        let Engine {
            outbox, forwarder, ..
        } = self;
        drop(outbox);
        if let Err(err) = forwarder.await {
            tracing::error!(error = %err, "store forwarder panicked");
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::PollNow(id, reply) => {
                let now = self.options.clock.now();
                let found = match self.entries.find_mut(&id) {
                    // A poll under way (or one already due and queued)
                    // answers the request: a second one would be impolite.
                    Some((_, entry)) if entry.in_flight.is_some() || entry.queued => true,
                    // Rate limited (its last answer a 429/503): polled as
                    // soon as the server's wait ends, not against it.
                    Some((_, entry))
                        if entry.state.status == WatchStatus::RateLimited
                            && !server_hold(&entry.state, now).is_zero() =>
                    {
                        let hold = server_hold(&entry.state, now);
                        let remaining = entry.due.saturating_duration_since(Instant::now());
                        if let Some(key) = &entry.key
                            && remaining > hold
                        {
                            self.queue.reset(key, hold.min(MAX_TIMER));
                            entry.due = Instant::now() + hold;
                        }
                        true
                    }
                    // Waiting for its next poll: that poll moves to now.
                    Some((slot, entry)) if entry.key.is_some() => {
                        if let Some(key) = entry.key.take() {
                            self.queue.remove(&key);
                        }
                        entry.queued = true;
                        self.limits.ready.push_front(self.entries.ticket(slot));
                        true
                    }
                    // Done (its `until` or `fail_if` held): not polled any more.
                    Some(_) | None => false,
                };
                let _ = reply.send(found);
            }
            Command::Reload(config, reply) => self.prepare_reload(config, reply),
        }
    }

    /// Starts a reload: the stored states of the watches it adds (a watch
    /// removed earlier and now back resumes them) are read on the blocking
    /// pool, not on the engine loop, which meanwhile keeps polling; the
    /// reload is applied when they are in ([`Engine::apply_reload`]).
    fn prepare_reload(&mut self, config: Box<Config>, reply: oneshot::Sender<ReloadSummary>) {
        let added: Vec<String> = config
            .watches
            .iter()
            .filter(|w| !self.entries.contains(w.id.as_str()))
            .map(|w| w.id.as_str().to_owned())
            .collect();
        let store = self.store.clone();
        self.reload_read = Some(tokio::task::spawn_blocking(move || {
            let stored = added
                .into_iter()
                .map(|id| {
                    let state = store.watch(&id);
                    (id, state)
                })
                .collect();
            PreparedReload {
                config,
                stored,
                reply,
            }
        }));
    }

    fn apply_reload(&mut self, prepared: PreparedReload) {
        let PreparedReload {
            config,
            mut stored,
            reply,
        } = prepared;
        let summary = self.reload(&config, &mut stored);
        let _ = reply.send(summary);
    }

    /// Reconciles the running watches with a new, valid watch list;
    /// `stored` holds what the store had for each watch not running before.
    fn reload(
        &mut self,
        config: &Config,
        stored: &mut HashMap<String, Result<Option<WatchState>, StoreError>>,
    ) -> ReloadSummary {
        let mut summary = ReloadSummary::default();
        let now = self.options.clock.now();
        let wanted: HashSet<&str> = config.watches.iter().map(|w| w.id.as_str()).collect();
        let gone: Vec<String> = self
            .entries
            .ids()
            .filter(|id| !wanted.contains(id))
            .map(str::to_owned)
            .collect();
        for id in gone {
            if let Some(entry) = self.entries.remove(&id) {
                if let Some(key) = entry.key {
                    self.queue.remove(&key);
                }
                self.metrics.forget(&id);
                self.record_removed(entry.state);
                summary.removed += 1;
            }
        }
        for watch in &config.watches {
            let id = watch.id.as_str();
            match self.entries.find_mut(id) {
                None => {
                    // A watch removed by an earlier reload and now back
                    // resumes its stored state (counters, validators, last
                    // hash), as it would after a restart.
                    let previous = match stored.remove(id).unwrap_or(Ok(None)) {
                        Ok(previous) => previous,
                        Err(err) => {
                            tracing::warn!(watch = %id, error = %err, "cannot read the stored state of an added watch; it starts afresh");
                            None
                        }
                    };
                    per_watch!(self.log_budget, watch = %id, resumed = previous.is_some(), "watch added to the list");
                    self.add(watch.clone(), previous, now);
                    summary.added += 1;
                }
                Some((slot, entry)) => {
                    if watch::same_settings(&entry.watch, watch) {
                        continue;
                    }
                    summary.changed += 1;
                    // Stopped by its `until` or `fail_if`: no poll ahead.
                    let stopped = entry.key.is_none() && entry.in_flight.is_none() && !entry.queued;
                    let new_fingerprint = fingerprint(watch);
                    let request_changed = entry.state.fingerprint != new_fingerprint;
                    let schedule_changed =
                        watch::schedule_text(&entry.watch) != watch::schedule_text(watch);
                    let conditions_changed =
                        entry.watch.until != watch.until || entry.watch.fail_if != watch.fail_if;
                    per_watch!(
                        self.log_budget,
                        watch = %id,
                        request_changed,
                        "watch settings changed{}",
                        if request_changed { "; its request changed, so stored validators and cursor are dropped" } else { "" }
                    );
                    if request_changed {
                        // The request changed: what the server validated no longer applies.
                        watch::reset_request_state(
                            Arc::make_mut(&mut entry.state),
                            watch,
                            new_fingerprint,
                        );
                        entry.generation += 1;
                    }
                    let policy = &watch.policy;
                    let (interval, _) =
                        watch::adopt_interval(Arc::make_mut(&mut entry.state), policy);
                    entry.watch = watch.clone();
                    entry.locate();
                    // The wait under way, if it must change; never before
                    // what the server last asked for.
                    let remaining = entry.due.saturating_duration_since(Instant::now());
                    let hold = server_hold(&entry.state, now);
                    let by_policy = waits_by_policy(&entry.state);
                    let wait = match &watch.schedule {
                        // A new cron schedule: its own next fire, sooner
                        // or later than the old one's.
                        polld_config::Schedule::Cron { .. }
                            if schedule_changed && (by_policy || request_changed) =>
                        {
                            Some(
                                policy::first_delay(policy, &watch.schedule, now, &mut self.rng)
                                    .max(hold),
                            )
                        }
                        // A new request: polled like a new watch (the wait
                        // was for the old one's answers), never later.
                        _ if request_changed => Some(
                            remaining.min(
                                policy::first_delay(policy, &watch.schedule, now, &mut self.rng)
                                    .max(hold),
                            ),
                        ),
                        // A shorter interval takes effect now rather than
                        // after the old wait. (A cron watch waits for its
                        // fire, not for its interval.)
                        polld_config::Schedule::Interval if by_policy && remaining > interval => {
                            Some(
                                policy::jittered(interval, policy.jitter, &mut self.rng)
                                    .min(interval)
                                    .max(policy.min_interval)
                                    .max(hold),
                            )
                        }
                        _ => None,
                    };
                    if let Some(delay) = wait
                        && entry.key.is_some()
                    {
                        // Stored too: a restart before that poll keeps it.
                        set_due(&mut self.queue, entry, slot, delay, now);
                    }
                    // A watch stopped by its `until` or `fail_if` is polled
                    // again once its request or those conditions changed:
                    // what held was about another request or question.
                    if stopped && (request_changed || conditions_changed) {
                        Arc::make_mut(&mut entry.state).status = WatchStatus::Ok;
                        let delay =
                            policy::first_delay(policy, &watch.schedule, now, &mut self.rng);
                        set_due(&mut self.queue, entry, slot, delay, now);
                    }
                    let state = entry.state.clone();
                    self.submit(Outcome {
                        state,
                        new_version: None,
                        events: Vec::new(),
                        keep_versions: watch.policy.keep_versions,
                    });
                }
            }
        }
        self.metrics.set_watches(self.entries.len());
        self.log_budget.close();
        tracing::info!(
            added = summary.added,
            removed = summary.removed,
            changed = summary.changed,
            watches = self.entries.len(),
            "watch list reloaded"
        );
        summary
    }

    /// Starts tracking a watch: resumes a stored one, or starts a new one
    /// spread over its first interval.
    fn add(&mut self, watch: Arc<Watch>, previous: Option<WatchState>, now: SystemTime) {
        let fp = fingerprint(&watch);
        let (state, delay, events, write) = match previous {
            Some(mut state) => {
                let mut events = Vec::new();
                let request_changed = state.fingerprint != fp;
                if request_changed {
                    watch::reset_request_state(&mut state, &watch, fp);
                }
                if state.status == WatchStatus::Removed {
                    state.status = WatchStatus::Ok;
                    events.push(ChangeKind::WatchAdded);
                }
                let policy = &watch.policy;
                // The list may have been edited while polld was down: as on
                // a reload, and the next poll comes within the new interval.
                // The interval is written back below even without an event:
                // a watch that is not polled (stopped) or a record from
                // before schema 4 must learn it, or the next edit goes
                // unnoticed.
                let unrecorded = state.base_interval_ms.is_none();
                let (_, base_changed) = watch::adopt_interval(&mut state, policy);
                let delay = match state.next_due_ms {
                    Some(due) => policy::resume_delay(
                        policy,
                        &watch.schedule,
                        SystemTime::UNIX_EPOCH + Duration::from_millis(due),
                        now,
                        self.options.resume_window,
                        &mut self.rng,
                    ),
                    None => policy::first_delay(policy, &watch.schedule, now, &mut self.rng),
                };
                // Only a wait the policy chose is shortened: one a server
                // asked for (Retry-After, X-Poll-Interval, freshness) or
                // error backoff is kept. Spread like a new list's first
                // polls: many watches edited at once must not come back as
                // a herd.
                let delay = if request_changed {
                    // Edited while polld was stopped: polled like a new
                    // watch (its stored wait was for the old request), yet
                    // never later than it was due.
                    delay.min(
                        policy::first_delay(policy, &watch.schedule, now, &mut self.rng)
                            .max(server_hold(&state, now)),
                    )
                } else if base_changed && waits_by_policy(&state) {
                    delay.min(
                        policy::first_delay(policy, &watch.schedule, now, &mut self.rng)
                            .max(server_hold(&state, now)),
                    )
                } else {
                    delay
                };
                (state, delay, events, unrecorded || base_changed)
            }
            None => {
                let state = watch::new_state(&watch, fp);
                let delay = policy::first_delay(&watch.policy, &watch.schedule, now, &mut self.rng);
                (state, delay, vec![ChangeKind::WatchAdded], true)
            }
        };
        // `until` or `fail_if` held before: still stopped after a restart.
        let done = watch::is_stopped(&state);
        let mut entry = Entry::new(watch.clone(), state, Instant::now() + delay);
        // A stopped watch has no poll ahead, also once its state is written
        // again (`is_stopped` reads a fail_if stop from that).
        Arc::make_mut(&mut entry.state).next_due_ms = (!done).then(|| record::unix_ms(now + delay));
        if write || !events.is_empty() {
            self.submit(Outcome {
                state: entry.state.clone(),
                new_version: None,
                events,
                keep_versions: watch.policy.keep_versions,
            });
        }
        // The series comes back with the stored counters, not only at the
        // watch's next poll (hours away, or never for a stopped watch).
        self.metrics
            .ratio(&entry.state.id, record::ratio_304(&entry.state));
        let slot = self.entries.insert(entry.state.id.clone(), Box::new(entry));
        if !done && let Some(entry) = self.entries.get_mut(slot) {
            entry.key = Some(arm(&mut self.queue, slot, delay));
        }
    }

    fn record_removed(&mut self, mut state: Arc<WatchState>) {
        let removed = Arc::make_mut(&mut state);
        removed.status = WatchStatus::Removed;
        removed.next_due_ms = None;
        per_watch!(self.log_budget, watch = %state.id, "watch removed from the list; its history is kept");
        self.submit(Outcome {
            state,
            new_version: None,
            events: vec![ChangeKind::WatchRemoved],
            keep_versions: u32::MAX,
        });
    }

    /// Starts as many ready polls as the global and per-host limits allow.
    fn dispatch(&mut self) {
        while !self.backlog.full()
            && let Some((ticket, permits)) = self
                .limits
                .next_ready(|ticket| pollable(&self.entries, ticket))
        {
            let slot = ticket.slot;
            let Some(entry) = self.entries.by_ticket_mut(ticket) else {
                continue;
            };
            self.polls_started += 1;
            let poll = self.polls_started;
            entry.queued = false;
            entry.in_flight = Some(poll);
            let host = entry.host.clone();
            let lag = Instant::now().saturating_duration_since(entry.due);
            self.metrics.lag(lag);
            let watch = entry.watch.clone();
            let moved_url = entry.moved.clone();
            // Only what the request needs, not the whole state record.
            let state = &entry.state;
            let etag = state.etag.clone();
            let last_modified = state.last_modified.clone();
            let cursor = state.cursor.clone();
            let last_hash = state.latest_hash;
            let cursor_page_hash = state.cursor_page_hash.as_deref().copied();
            let job = state.pending_job.clone();
            let generation = entry.generation;
            let agent = self.agent.clone();
            let mut report = Report {
                permits: Some(permits),
                completion: Some(Completion {
                    slot,
                    poll,
                    generation,
                    host,
                    outcome: None,
                }),
                done: self.completions_tx.clone(),
            };
            let cancel = self.poll_cancel.clone();
            self.tracker.spawn(async move {
                // The stored URL differs from the configured one only after a move.
                let request = PollRequest {
                    watch: &watch,
                    url: moved_url.as_deref().unwrap_or(&watch.url),
                    etag: etag.as_deref(),
                    last_modified: last_modified.as_deref(),
                    cursor: cursor.as_deref(),
                    last_hash,
                    cursor_page_hash,
                    job: job.as_deref(),
                };
                // Boxed: the poll's state machine (the agent's, the
                // client's) runs to kilobytes, and a task's future is moved
                // whole when it is spawned and when it finishes.
                let poll = Box::pin(agent.poll(request));
                let outcome = tokio::select! {
                    outcome = poll => Some(outcome),
                    _ = cancel.cancelled() => None,
                };
                if let Some(completion) = &mut report.completion {
                    completion.outcome = outcome;
                }
                drop(report);
            });
        }
    }

    /// Records a finished poll: state, counters, version, next due time.
    fn complete(&mut self, completion: Completion) {
        // The slot is free whatever became of the watch.
        let entries = &self.entries;
        self.limits
            .release(&completion.host, |ticket| pollable(entries, ticket));
        let Some(entry) = self
            .entries
            .get_mut(completion.slot)
            .filter(|e| e.in_flight == Some(completion.poll))
        else {
            // Removed while polling (and maybe added again since, with a
            // state this answer knows nothing of): not recorded.
            return;
        };
        entry.in_flight = None;
        let stale = completion.generation != entry.generation;
        let Some(outcome) = completion.outcome.filter(|_| !stale) else {
            // Cancelled at shutdown, or the request changed meanwhile: nothing
            // is recorded, and the watch is polled again soon.
            if !self.poll_cancel.is_cancelled() && entry.key.is_none() {
                let delay = entry.watch.policy.min_interval;
                entry.key = Some(arm(&mut self.queue, completion.slot, delay));
                entry.due = Instant::now() + delay;
            }
            return;
        };
        let now = self.options.clock.now();
        let recorded = record::apply(entry, &outcome, now, &mut self.rng);
        // A permanent move may have re-pointed the watch to another host:
        // its next polls count against that host's limit.
        if outcome.moved_permanently.is_some() {
            entry.locate();
        }
        self.metrics.poll(
            &entry.state.id,
            recorded.result,
            outcome.elapsed,
            outcome.bytes_received,
        );
        self.metrics
            .ratio(&entry.state.id, record::ratio_304(&entry.state));
        if let Some(spans) = &self.options.spans {
            spans.record(crate::telemetry::PollSpan {
                watch: entry.state.id.clone(),
                url: entry.state.url.clone(),
                method: entry.watch.method.clone(),
                result: recorded.result,
                status: outcome.status,
                error: match &outcome.kind {
                    crate::agent::OutcomeKind::Failed { error, .. } => Some(error.clone()),
                    _ => None,
                },
                start: now.checked_sub(outcome.elapsed).unwrap_or(now),
                end: now,
            });
        }
        if !recorded.stopped && entry.key.is_none() {
            entry.key = Some(arm(&mut self.queue, completion.slot, recorded.delay));
            entry.due = Instant::now() + recorded.delay;
        }
        let outcome = Outcome {
            state: entry.state.clone(),
            new_version: recorded.new_version,
            events: recorded.events,
            keep_versions: entry.watch.policy.keep_versions,
        };
        self.submit(outcome);
    }

    /// Queues an outcome for the writer, in order; a failed commit comes
    /// back to the loop as a commit failure.
    fn submit(&self, outcome: Outcome) {
        self.backlog.pending.fetch_add(1, Ordering::Relaxed);
        if self.outbox.send(outcome).is_err() {
            tracing::error!("the store forwarder is gone; outcome not stored");
        }
    }

    /// A commit failed: read back what the store really holds for the
    /// watch, so that validators and the last hash in memory match it and
    /// the next poll fetches again whatever could not be stored.
    fn commit_failed(&mut self, id: String) {
        let store = self.store.clone();
        let done = self.resynced_tx.clone();
        tokio::spawn(async move {
            let key = id.clone();
            let stored = tokio::task::spawn_blocking(move || store.watch(&key))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten();
            let _ = done.send((id, stored));
        });
    }

    fn resync(&mut self, id: &str, stored: Option<WatchState>) {
        if let Some((_, entry)) = self.entries.find_mut(id) {
            // A poll under way was sent with validators the store may not
            // hold: its answer (a 304 to an ETag whose body was never
            // stored) must not be recorded over the state read back here.
            entry.generation += 1;
            let state = Arc::make_mut(&mut entry.state);
            match stored {
                Some(stored) => {
                    state.etag = stored.etag;
                    state.last_modified = stored.last_modified;
                    state.latest_hash = stored.latest_hash;
                    state.latest_version = stored.latest_version;
                    state.versions = stored.versions;
                    state.cursor = stored.cursor;
                    state.cursor_page_hash = stored.cursor_page_hash;
                }
                None => {
                    state.etag = None;
                    state.last_modified = None;
                    state.latest_hash = None;
                    state.cursor = entry.watch.cursor.as_ref().and_then(|c| c.initial.clone());
                    state.cursor_page_hash = None;
                }
            }
        }
    }
}

/// The longest wait armed on the timer at once: tokio-util's timer wheel
/// holds about 2.2 years (2^36 ms) and panics beyond, and a cron schedule
/// can fire decades ahead, as can an interval. Longer waits are armed in
/// steps of this (the watch's `due` is the real time). Short under test, so
/// that the steps are exercised on the paused clock.
#[cfg(not(test))]
const MAX_TIMER: Duration = Duration::from_secs(365 * 24 * 3600);
#[cfg(test)]
const MAX_TIMER: Duration = Duration::from_secs(3600);

/// Moves a watch's next poll to `delay` from now: on its timer (re-armed,
/// or armed when it had none) and in the state that is stored.
fn set_due(
    queue: &mut DelayQueue<Slot>,
    entry: &mut Entry,
    slot: Slot,
    delay: Duration,
    now: SystemTime,
) {
    match &entry.key {
        Some(key) => queue.reset(key, delay.min(MAX_TIMER)),
        None => entry.key = Some(arm(queue, slot, delay)),
    }
    entry.due = Instant::now() + delay;
    Arc::make_mut(&mut entry.state).next_due_ms = Some(record::unix_ms(now + delay));
}

/// Arms a watch's timer for `delay` from now, or for the first step of it.
fn arm(queue: &mut DelayQueue<Slot>, slot: Slot, delay: Duration) -> Key {
    queue.insert(slot, delay.min(MAX_TIMER))
}

/// Whether a watch's pending wait is its policy's (after a successful
/// poll), not one a server asked for or error backoff: only such a wait is
/// cut short when its interval is edited.
fn waits_by_policy(state: &WatchState) -> bool {
    state.status == WatchStatus::Ok && state.consecutive_errors == 0 && state.pending_job.is_none()
}

/// What is left of the wait the server last asked for (zero when it asked
/// for none): the floor under a wait cut short by an edited interval.
fn server_hold(state: &WatchState, now: SystemTime) -> Duration {
    state.hold_until_ms.map_or(Duration::ZERO, |until| {
        (SystemTime::UNIX_EPOCH + Duration::from_millis(until))
            .duration_since(now)
            .unwrap_or_default()
    })
}

/// The host a due watch is limited under, or None when it is not to be
/// polled (removed from the list, which voids its ticket, or already
/// polling).
fn pollable(entries: &Entries, ticket: Ticket) -> Option<Arc<str>> {
    entries
        .by_ticket(ticket)
        .filter(|e| e.queued && e.in_flight.is_none())
        .map(|e| e.host.clone())
}

/// Hands outcomes to the writer in the order the engine produced them and
/// reports the ids whose commit failed.
async fn forward(
    writer: Writer,
    mut outbox: mpsc::UnboundedReceiver<Outcome>,
    backlog: Arc<Backlog>,
    failures: mpsc::UnboundedSender<String>,
    metrics: Arc<Metrics>,
) {
    let mut pending = futures_util::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            next = outbox.recv() => {
                let Some(outcome) = next else { break };
                // The state, not a copy of its id: a reference count, not
                // an allocation per outcome.
                let state = outcome.state.clone();
                let id = &state.id;
                match writer.enqueue(outcome).await {
                    Ok(commit) => pending.push(async move { (state, commit.await) }),
                    Err(err) => {
                        backlog.committed();
                        // A refused outcome; not one per outcome after the
                        // writer stopped (its failed commit was counted).
                        if !matches!(err, StoreError::WriterStopped) {
                            metrics.store_error();
                        }
                        tracing::error!(watch = %id, error = %err, "outcome refused by the store");
                        let _ = failures.send(id.clone());
                    }
                }
            }
            Some((state, result)) = pending.next(), if !pending.is_empty() => {
                backlog.committed();
                report(&state.id, result, &failures, &metrics);
            }
        }
    }
    // Nothing more to hand over: the writer may commit its last batch now
    // rather than at the end of its linger.
    drop(writer);
    while let Some((state, result)) = pending.next().await {
        backlog.committed();
        report(&state.id, result, &failures, &metrics);
    }
}

fn report(
    id: &str,
    result: Result<Result<Committed, StoreError>, oneshot::error::RecvError>,
    failures: &mpsc::UnboundedSender<String>,
    metrics: &Metrics,
) {
    let err = match result {
        Ok(Ok(committed)) => {
            if committed.version.is_some() {
                metrics.version_stored();
            }
            return;
        }
        Ok(Err(err)) => err.to_string(),
        Err(_) => "the writer stopped before answering".to_owned(),
    };
    // Not counted in `polld_store_errors_total` here: the writer's commit
    // report counts the failed commit once, not once per outcome in it.
    tracing::error!(watch = %id, error = %err, "store commit failed; the outcome is not stored and will be fetched again");
    let _ = failures.send(id.to_owned());
}

//! The scheduler on tokio's paused clock: a real engine, a real store and a
//! scripted poller that answers at once and notes when it was asked. Time
//! only moves when every task waits on a timer, so the gaps between polls
//! are exactly the delays the engine chose (to the timer's millisecond).

use std::path::Path;
use std::sync::Mutex;

use bytes::Bytes;
use polld_store::WriterConfig;
use tokio::task::JoinHandle;

use super::*;
use crate::agent::OutcomeKind;

/// What the scripted server answers.
#[derive(Debug, Clone, Copy)]
enum Reply {
    NotModified,
    Changed,
    Failed,
    /// 429 with `Retry-After`.
    RateLimited(Duration),
    /// 429, and one of the watch's `fail_if` conditions holds.
    RateLimitedFailIf,
    /// 304 with `X-Poll-Interval`.
    NotModifiedPollInterval(Duration),
    /// 304 with `Cache-Control: max-age`.
    NotModifiedFresh(Duration),
    /// 200 after a 301 to this URL.
    Moved(&'static str),
    /// 200, and the watch's `until` conditions hold.
    Done,
    /// 200, and one of the watch's `fail_if` conditions holds.
    FailIf,
    /// 202 from a job that asks for this long, more than a poll may take.
    JobPending(Duration),
    /// The poller panics (after its hold).
    Panic,
}

/// One poll as the scripted server saw it.
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    /// On tokio's clock, from the start of the test.
    at: Duration,
    /// On the engine's wall clock.
    wall: SystemTime,
    /// The job the poll was asked to resume.
    job: Option<String>,
    /// The URL asked.
    url: String,
}

type Script = dyn Fn(&str, usize) -> Reply + Send + Sync;

#[derive(Clone)]
struct Scripted {
    start: Instant,
    clock: WallClock,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// (watch id, how many polls it had before) → the answer.
    script: Arc<Script>,
    /// How long each poll takes (on tokio's clock).
    hold: Duration,
    /// Polls in flight per host, and the most ever seen at once.
    hosts: Arc<Mutex<HashMap<String, (usize, usize)>>>,
}

impl Scripted {
    fn new(
        clock: WallClock,
        script: impl Fn(&str, usize) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Scripted {
            start: Instant::now(),
            clock,
            seen: Arc::default(),
            script: Arc::new(script),
            hold: Duration::ZERO,
            hosts: Arc::default(),
        }
    }

    /// Every poll takes `hold` before it answers.
    fn holding(mut self, hold: Duration) -> Self {
        self.hold = hold;
        self
    }

    /// The most polls that were in flight at once to `host`.
    fn most_at_once(&self, host: &str) -> usize {
        self.hosts.lock().unwrap().get(host).map_or(0, |h| h.1)
    }

    /// Poll times of one watch, on tokio's clock.
    fn times(&self, id: &str) -> Vec<Duration> {
        self.polls(id).iter().map(|s| s.at).collect()
    }

    fn polls(&self, id: &str) -> Vec<Seen> {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|s| s.id == id).cloned().collect()
    }

    /// The first poll of every watch.
    fn firsts(&self) -> HashMap<String, Seen> {
        let mut firsts = HashMap::new();
        for seen in self.seen.lock().unwrap().iter() {
            firsts
                .entry(seen.id.clone())
                .or_insert_with(|| seen.clone());
        }
        firsts
    }
}

impl Poller for Scripted {
    fn poll<'a>(
        &'a self,
        request: PollRequest<'a>,
    ) -> impl Future<Output = PollOutcome> + Send + 'a {
        let id = request.watch.id.as_str();
        let before = {
            let mut seen = self.seen.lock().unwrap();
            let before = seen.iter().filter(|s| s.id == id).count();
            seen.push(Seen {
                id: id.to_owned(),
                at: self.start.elapsed(),
                wall: self.clock.now(),
                job: request.job.map(str::to_owned),
                url: request.url.to_string(),
            });
            before
        };
        let host = request.url.host_str().unwrap_or_default().to_owned();
        {
            let mut hosts = self.hosts.lock().unwrap();
            let (now, most) = hosts.entry(host.clone()).or_default();
            *now += 1;
            *most = (*most).max(*now);
        }
        let reply = (self.script)(id, before);
        let (kind, status) = match reply {
            Reply::NotModified | Reply::NotModifiedPollInterval(_) | Reply::NotModifiedFresh(_) => {
                (OutcomeKind::NotModified, 304)
            }
            Reply::Changed | Reply::Moved(_) | Reply::Done | Reply::FailIf => {
                let body = Bytes::from(format!("{id} version {before}"));
                let hash = *blake3::hash(&body).as_bytes();
                let content_type = Some("text/plain".to_owned());
                (
                    OutcomeKind::Changed {
                        body,
                        hash,
                        content_type,
                    },
                    200,
                )
            }
            Reply::Failed => {
                let error = format!("{}: HTTP 500 Internal Server Error", request.url);
                (
                    OutcomeKind::Failed {
                        error,
                        retryable: true,
                    },
                    500,
                )
            }
            Reply::RateLimited(_) | Reply::RateLimitedFailIf | Reply::Panic => {
                (OutcomeKind::RateLimited, 429)
            }
            Reply::JobPending(_) => (
                OutcomeKind::JobPending {
                    job: "http://127.0.0.1:9/jobs/1".parse().unwrap(),
                },
                202,
            ),
        };
        let mut outcome = PollOutcome::new(kind, &request);
        outcome.status = Some(status);
        match reply {
            Reply::RateLimited(wait) | Reply::JobPending(wait) => {
                outcome.hints.retry_after = Some(wait);
                outcome.hints.not_before = Some(wait);
                outcome.hints.reason = Some("Retry-After");
            }
            Reply::NotModifiedPollInterval(wait) => {
                outcome.hints.poll_interval = Some(wait);
                outcome.hints.not_before = Some(wait);
                outcome.hints.reason = Some("X-Poll-Interval");
            }
            Reply::NotModifiedFresh(fresh) => outcome.hints.fresh_for = Some(fresh),
            Reply::Moved(to) => outcome.moved_permanently = Some(to.parse().unwrap()),
            Reply::Done => {
                outcome.finished = Some(crate::agent::Finished::Done {
                    condition: "status=200".to_owned(),
                });
            }
            Reply::FailIf => {
                outcome.finished = Some(crate::agent::Finished::Failed {
                    condition: "status=200".to_owned(),
                });
            }
            Reply::RateLimitedFailIf => {
                outcome.finished = Some(crate::agent::Finished::Failed {
                    condition: "status=429".to_owned(),
                });
            }
            _ => {}
        }
        let (hold, hosts) = (self.hold, self.hosts.clone());
        async move {
            if !hold.is_zero() {
                tokio::time::sleep(hold).await;
            }
            hosts.lock().unwrap().get_mut(&host).unwrap().0 -= 1;
            assert!(!matches!(reply, Reply::Panic), "the scripted poller panics");
            outcome
        }
    }
}

/// A running engine over a scripted server.
struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    handle: EngineHandle,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("engine panicked");
    }
}

fn config(text: &str) -> Config {
    Config::from_str_with_env(Path::new("test.toml"), text, |_| None)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `[defaults]` and `n` watches named w0, w1...
fn watch_list(defaults: &str, n: usize) -> Config {
    let mut text = format!("[defaults]\n{defaults}\n");
    for i in 0..n {
        text.push_str(&format!(
            "[[watch]]\nid = \"w{i}\"\nurl = \"http://127.0.0.1:9/{i}\"\n"
        ));
    }
    config(&text)
}

async fn start(config: &Config, store: &Store, poller: Scripted) -> Running {
    start_limited(config, store, poller, 64).await
}

async fn start_limited(
    config: &Config,
    store: &Store,
    poller: Scripted,
    per_host: usize,
) -> Running {
    let (writer, _writer_task) = store.spawn_writer(WriterConfig {
        max_batch: 256,
        max_delay: Duration::from_millis(5),
    });
    let clock = poller.clock;
    let (engine, handle) = Engine::start(
        config.watches.clone(),
        store,
        writer,
        poller,
        Metrics::new(false),
        EngineOptions {
            concurrency: 64,
            per_host,
            grace: Duration::from_secs(1),
            resume_window: Duration::from_secs(30),
            spans: None,
            clock,
        },
    )
    .await
    .expect("engine start");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(engine.run(shutdown.clone()));
    Running {
        shutdown,
        task,
        handle,
    }
}

fn open_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("polld.redb")).unwrap();
    (dir, store)
}

/// Lets virtual time run until `done` holds (checked every 100 ms of it).
async fn run_until(limit: Duration, done: impl FnMut() -> bool) {
    run_until_every(limit, Duration::from_millis(100), done).await;
}

/// Lets virtual time run until `done` holds, checked every `step` of it
/// (a long step for a test that waits days of virtual time).
async fn run_until_every(limit: Duration, step: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "not reached within {limit:?} of virtual time"
        );
        tokio::time::sleep(step).await;
    }
}

fn gaps(times: &[Duration]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// The timer wheel has millisecond slots: a delay lands up to 1 ms late.
fn assert_near(actual: Duration, expected: Duration, what: &str) {
    let diff = actual.abs_diff(expected);
    assert!(
        diff <= Duration::from_millis(2),
        "{what}: {actual:?}, expected {expected:?}"
    );
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A wall clock at an arbitrary, unaligned time that moves with tokio's.
fn wall_clock(unix_secs: u64) -> WallClock {
    WallClock::FollowsTokio {
        wall: SystemTime::UNIX_EPOCH + Duration::from_millis(unix_secs * 1000 + 437),
        at: Instant::now(),
    }
}

#[tokio::test(start_paused = true)]
async fn unchanged_polls_back_off_and_a_change_resets_the_interval() {
    let config = watch_list(
        "interval = \"10s\"\nmin_interval = \"1s\"\nmax_interval = \"80s\"\nbackoff = 2.0\njitter = 0.0",
        1,
    );
    let (_dir, store) = open_store();
    let poller = Scripted::new(wall_clock(1_700_000_000), |_, n| match n {
        0 | 5 => Reply::Changed,
        _ => Reply::NotModified,
    });
    let running = start(&config, &store, poller.clone()).await;
    run_until(secs(600), || poller.times("w0").len() >= 8).await;
    running.stop().await;

    let times = poller.times("w0");
    assert!(
        times[0] < secs(10),
        "first poll within the first interval: {times:?}"
    );
    // changed → 10 s; 304s → 20, 40, 80, 80 (max_interval); changed → 10; 304 → 20.
    let expected = [10, 20, 40, 80, 80, 10, 20];
    for (i, (gap, want)) in gaps(&times).into_iter().zip(expected).enumerate() {
        assert_near(gap, secs(want), &format!("gap after poll {i}"));
    }
    // Every outcome reached the store.
    let state = store.watch("w0").unwrap().expect("stored");
    assert_eq!(
        (state.changed, state.not_modified, state.versions),
        (2, 6, 2),
        "{state:?}"
    );
    // The last poll, a 304, stretched 20 s to 40 s.
    assert_eq!(
        state.interval_ms, 40_000,
        "the stretched interval is stored"
    );
}

#[tokio::test(start_paused = true)]
async fn jitter_stays_within_its_bounds_and_does_move_polls() {
    let config = watch_list(
        "interval = \"10s\"\nmin_interval = \"1s\"\nmax_interval = \"10s\"\nbackoff = 1.0\njitter = 0.2",
        1,
    );
    let (_dir, store) = open_store();
    let poller = Scripted::new(wall_clock(1_700_000_000), |_, _| Reply::NotModified);
    let running = start(&config, &store, poller.clone()).await;
    run_until(secs(1_000), || poller.times("w0").len() >= 41).await;
    running.stop().await;

    let gaps = gaps(&poller.times("w0"));
    for gap in &gaps {
        assert!(
            *gap >= secs(8) && *gap <= secs(12) + Duration::from_millis(2),
            "gap {gap:?} outside 10 s ± 20 %"
        );
    }
    let (min, max) = (gaps.iter().min().unwrap(), gaps.iter().max().unwrap());
    assert!(
        *max - *min > secs(1),
        "jitter applied: gaps from {min:?} to {max:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn errors_back_off_with_full_jitter_and_success_resets() {
    let config = watch_list(
        "interval = \"10s\"\nmin_interval = \"1s\"\nmax_interval = \"10m\"\nbackoff = 1.0\njitter = 0.0",
        1,
    );
    let (_dir, store) = open_store();
    let poller = Scripted::new(wall_clock(1_700_000_000), |_, n| {
        if n < 6 {
            Reply::Failed
        } else {
            Reply::NotModified
        }
    });
    let running = start(&config, &store, poller.clone()).await;
    run_until(secs(3_600), || poller.times("w0").len() >= 8).await;
    running.stop().await;

    let gaps = gaps(&poller.times("w0"));
    // After the k-th error in a row: uniform in [0, min(10 s × 2^k, 10 min)],
    // floored at the interval (10 s): a failing server is never polled more
    // often than a healthy one.
    let mut below_cap = 0;
    for (k, gap) in gaps[..6].iter().enumerate() {
        let cap = secs(10 * (1 << (k + 1))).min(secs(600));
        assert!(
            *gap >= secs(10) && *gap <= cap + Duration::from_millis(2),
            "after error {}: {gap:?} not in [10 s, {cap:?}]",
            k + 1
        );
        if *gap < cap.mul_f64(0.9) {
            below_cap += 1;
        }
    }
    assert!(
        below_cap > 0,
        "full jitter: not every wait is the cap: {gaps:?}"
    );
    // The first success resets to the interval (no error backoff left).
    assert_near(gaps[6], secs(10), "after the first success");
    let state = store.watch("w0").unwrap().expect("stored");
    assert_eq!(
        (state.errors, state.consecutive_errors),
        (6, 0),
        "{state:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_delays_the_next_poll_and_the_watch_is_kept() {
    let config = watch_list(
        "interval = \"10s\"\nmin_interval = \"1s\"\nmax_interval = \"1m\"\nbackoff = 1.0\nmax_retry_after = \"1h\"\njitter = 0.0",
        1,
    );
    let (_dir, store) = open_store();
    let poller = Scripted::new(wall_clock(1_700_000_000), |_, n| match n {
        0 => Reply::RateLimited(secs(300)),
        _ => Reply::NotModified,
    });
    let running = start(&config, &store, poller.clone()).await;
    run_until(secs(900), || poller.times("w0").len() >= 3).await;
    running.stop().await;

    let gaps = gaps(&poller.times("w0"));
    assert_near(gaps[0], secs(300), "Retry-After: 300");
    assert_near(gaps[1], secs(10), "then the interval again");
}

#[tokio::test(start_paused = true)]
async fn cron_watches_poll_on_their_wall_clock_fires() {
    let config = config(
        "[defaults]\njitter = 0.0\n[[watch]]\nid = \"w0\"\nurl = \"http://127.0.0.1:9/\"\nschedule = \"0 * * * * *\"\n",
    );
    let (_dir, store) = open_store();
    let poller = Scripted::new(wall_clock(1_700_000_000), |_, _| Reply::NotModified);
    let running = start(&config, &store, poller.clone()).await;
    run_until(secs(600), || poller.times("w0").len() >= 5).await;
    running.stop().await;

    for seen in poller.polls("w0") {
        let ms = seen
            .wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        assert!(
            ms % 60_000 <= 2,
            "a poll at {ms} ms is not at second 0 of a minute"
        );
    }
    for gap in gaps(&poller.times("w0")) {
        assert_near(gap, secs(60), "between cron fires");
    }
}

#[tokio::test(start_paused = true)]
async fn a_new_list_is_spread_over_the_first_interval() {
    let n = 300;
    let config = watch_list("interval = \"60s\"\njitter = 0.0", n);
    let (_dir, store) = open_store();
    let poller = Scripted::new(wall_clock(1_700_000_000), |_, _| Reply::NotModified);
    let running = start(&config, &store, poller.clone()).await;
    run_until(secs(120), || poller.firsts().len() == n).await;
    running.stop().await;

    let mut buckets = [0usize; 6];
    for seen in poller.firsts().values() {
        // Spread over [0, 60 s); the timer wheel may round up by 1 ms.
        assert!(seen.at <= secs(60), "first poll at {:?}", seen.at);
        buckets[((seen.at.as_secs() / 10) as usize).min(5)] += 1;
    }
    // 50 expected in each 10 s; a herd would put them all in one.
    assert!(
        buckets.iter().all(|&b| (20..=80).contains(&b)),
        "first polls per 10 s: {buckets:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_restart_resumes_due_times_and_spreads_late_watches() {
    let n = 300;
    let config = watch_list("interval = \"60s\"\njitter = 0.0", n);
    let (_dir, store) = open_store();
    let base = 1_700_000_000;

    // First life: every watch polls once, then polld stops.
    let first = Scripted::new(wall_clock(base), |_, _| Reply::NotModified);
    let running = start(&config, &store, first.clone()).await;
    run_until(secs(120), || first.firsts().len() == n).await;
    running.stop().await;
    let due: HashMap<String, u64> = store
        .all_watches()
        .unwrap()
        .into_iter()
        .map(|s| (s.id.clone(), s.next_due_ms.expect("due time stored")))
        .collect();

    // A quick restart: each watch polls at its stored due time, if ahead.
    let restart_wall = first.clock.now() + secs(5);
    let restart_ms = restart_wall
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let second = Scripted::new(
        WallClock::FollowsTokio {
            wall: restart_wall,
            at: Instant::now(),
        },
        |_, _| Reply::NotModified,
    );
    let running = start(&config, &store, second.clone()).await;
    run_until(secs(120), || second.firsts().len() == n).await;
    running.stop().await;
    let mut resumed = 0;
    for (id, seen) in second.firsts() {
        let want = due[&id];
        let at = seen
            .wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        if want > restart_ms {
            resumed += 1;
            assert!(
                at.abs_diff(want) <= 2,
                "{id} polled at {at}, stored due {want}"
            );
        }
    }
    assert!(resumed > n / 2, "most watches were still ahead: {resumed}");

    // A restart an hour later: every watch is late; they are spread over
    // min(interval, resume window = 30 s), not fired at once.
    let third = Scripted::new(
        WallClock::FollowsTokio {
            wall: second.clock.now() + secs(3_600),
            at: Instant::now(),
        },
        |_, _| Reply::NotModified,
    );
    let running = start(&config, &store, third.clone()).await;
    run_until(secs(120), || third.firsts().len() == n).await;
    running.stop().await;
    let mut buckets = [0usize; 6];
    for seen in third.firsts().values() {
        let after = seen.at;
        // Spread over [0, 30 s); the timer wheel may round up by 1 ms.
        assert!(
            after <= secs(30),
            "late watch polled {after:?} after the restart"
        );
        buckets[((after.as_secs() / 5) as usize).min(5)] += 1;
    }
    assert!(
        buckets.iter().all(|&b| (20..=80).contains(&b)),
        "late first polls per 5 s: {buckets:?}"
    );
}

/// An engine on `store` with 8 polls in flight, started but not run, so
/// that a test can reach into it before it runs.
async fn engine_on(
    config: &Config,
    store: &Store,
    poller: &Scripted,
    metrics: Arc<Metrics>,
) -> Engine<Scripted> {
    let (writer, _writer_task) = store.spawn_writer(WriterConfig::default());
    let (engine, _handle) = Engine::start(
        config.watches.clone(),
        store,
        writer,
        poller.clone(),
        metrics,
        EngineOptions {
            concurrency: 8,
            per_host: 8,
            grace: Duration::from_secs(1),
            resume_window: Duration::from_secs(30),
            spans: None,
            clock: poller.clock,
        },
    )
    .await
    .expect("engine start");
    engine
}

#[tokio::test(start_paused = true)]
async fn polls_wait_while_the_commit_backlog_is_full() {
    let config = watch_list("interval = \"10s\"\nmin_interval = \"1s\"\njitter = 0.0", 3);
    let (_dir, store) = open_store();
    let poller = Scripted::new(wall_clock(1_700_000_000), |_, _| Reply::NotModified);
    let engine = engine_on(&config, &store, &poller, Metrics::new(false)).await;
    // As if the disk had stopped taking commits with a full backlog.
    let backlog = engine.backlog.clone();
    backlog.pending.fetch_add(MAX_BACKLOG, Ordering::Relaxed);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(engine.run(shutdown.clone()));

    tokio::time::sleep(secs(60)).await;
    assert!(
        poller.firsts().is_empty(),
        "no poll starts while the backlog is full"
    );

    // One commit makes room: the loop wakes and polls go on.
    backlog.committed();
    run_until(secs(30), || poller.firsts().len() == 3).await;
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn changes_count_versions_stored_not_polls_that_saw_one() {
    let config = watch_list("interval = \"10s\"\nmin_interval = \"1s\"\njitter = 0.0", 1);
    let (_dir, store) = open_store();
    let poller = Scripted::new(wall_clock(1_700_000_000), |_, _| Reply::Changed);
    let metrics = Metrics::new(false);
    let engine = engine_on(&config, &store, &poller, metrics.clone()).await;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(engine.run(shutdown.clone()));
    let stored = |n: u64| {
        let line = format!("polld_changes_total {n}\n");
        metrics.render().contains(&line)
    };
    run_until(secs(30), || stored(1)).await;
    // The store goes away: the next poll sees a change that is not stored.
    store.clone().close().expect("close");
    run_until(secs(30), || metrics.totals().changed == 2).await;
    tokio::time::sleep(secs(5)).await;
    assert!(
        stored(1),
        "a change whose commit failed is not counted:\n{}",
        metrics.render()
    );
    shutdown.cancel();
    task.await.unwrap();
}

/// `[defaults]` and the watches w{i} of [`watch_list`] for each i in `ids`
/// (same URLs, so that a reload sees them unchanged).
fn some_of(defaults: &str, ids: &[usize]) -> Config {
    let mut text = format!("[defaults]\n{defaults}\n");
    for i in ids {
        text.push_str(&format!(
            "[[watch]]\nid = \"w{i}\"\nurl = \"http://127.0.0.1:9/{i}\"\n"
        ));
    }
    config(&text)
}

/// The index of watch `w{i}`.
fn index(id: &str) -> usize {
    id[1..].parse().unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_watch_removed_while_polling_frees_its_host_slot() {
    let defaults = "interval = \"10s\"\nmin_interval = \"1s\"\njitter = 0.0";
    let (_dir, store) = open_store();
    let poller =
        Scripted::new(wall_clock(1_700_000_000), |_, _| Reply::NotModified).holding(secs(100));
    let running = start_limited(&watch_list(defaults, 2), &store, poller.clone(), 1).await;
    run_until(secs(20), || poller.firsts().len() == 1).await;
    let first = poller.firsts().into_keys().next().unwrap();
    let other = 1 - index(&first);
    // The other watch falls due and waits for the host; the one polling is
    // removed from the list before its answer comes.
    tokio::time::sleep(secs(10)).await;
    let summary = running.handle.reload(some_of(defaults, &[other])).await;
    assert_eq!(summary.map(|s| s.removed), Some(1));
    let other = format!("w{other}");
    run_until(secs(300), || poller.times(&other).len() >= 2).await;
    running.stop().await;
}

/// Watches w0, w1 and w2 on one host with `per_host = 1`, each poll taking
/// 100 s: the first to poll holds the host while the two others fall due
/// and wait for it. Returns the first's index and the others' in the
/// order they wait.
struct OnePollingTwoWaiting {
    /// The store's directory, kept until the test ends.
    _dir: tempfile::TempDir,
    poller: Scripted,
    running: Running,
    first: usize,
    waiting: [usize; 2],
}

async fn one_polling_two_waiting(defaults: &str) -> OnePollingTwoWaiting {
    let (dir, store) = open_store();
    let poller =
        Scripted::new(wall_clock(1_700_000_000), |_, _| Reply::NotModified).holding(secs(100));
    let running = start_limited(&watch_list(defaults, 3), &store, poller.clone(), 1).await;
    run_until(secs(20), || poller.firsts().len() == 1).await;
    // They wait in the order of their first due times.
    let first = index(poller.firsts().keys().next().unwrap());
    let mut waiting: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    waiting.sort_by_key(|i| {
        let state = store.watch(&format!("w{i}")).unwrap().unwrap();
        state.next_due_ms.unwrap()
    });
    tokio::time::sleep(secs(10)).await;
    OnePollingTwoWaiting {
        _dir: dir,
        poller,
        running,
        first,
        waiting: [waiting[0], waiting[1]],
    }
}

#[tokio::test(start_paused = true)]
async fn a_waiting_watch_removed_from_the_list_does_not_strand_the_next() {
    let defaults = "interval = \"10s\"\nmin_interval = \"1s\"\njitter = 0.0";
    let setup = one_polling_two_waiting(defaults).await;
    let (poller, first, [gone, kept]) = (&setup.poller, setup.first, setup.waiting);
    // The one that waits first leaves the list.
    setup
        .running
        .handle
        .reload(some_of(defaults, &[first, kept]))
        .await;
    let kept = format!("w{kept}");
    run_until(secs(500), || poller.times(&kept).len() >= 2).await;
    setup.running.stop().await;
    assert!(poller.times(&format!("w{gone}")).is_empty());
    // The kept watch takes the host as soon as the first poll ends, not
    // after the first watch's next poll.
    let ended = poller.times(&format!("w{first}"))[0] + secs(100);
    assert_near(poller.times(&kept)[0], ended, "the waiting watch's poll");
}

#[tokio::test(start_paused = true)]
async fn a_watch_added_into_a_removed_one_s_slot_does_not_take_its_place_in_line() {
    let defaults = "interval = \"10s\"\nmin_interval = \"1s\"\njitter = 0.0";
    let setup = one_polling_two_waiting(defaults).await;
    let [gone, kept] = setup.waiting;
    let poller = &setup.poller;
    // The first in line leaves the list as w3 joins it, in one reload: w3
    // takes its slot, and falls due while the first poll still holds the
    // host, behind the watch that waited longer.
    setup
        .running
        .handle
        .reload(some_of(defaults, &[setup.first, kept, 3]))
        .await;
    let kept = format!("w{kept}");
    run_until(secs(500), || {
        !poller.times(&kept).is_empty() && !poller.times("w3").is_empty()
    })
    .await;
    setup.running.stop().await;
    assert!(poller.times(&format!("w{gone}")).is_empty());
    let ended = poller.times(&format!("w{}", setup.first))[0] + secs(100);
    assert_near(
        poller.times(&kept)[0],
        ended,
        "the watch that waited longer",
    );
    assert!(
        poller.times("w3")[0] > poller.times(&kept)[0],
        "w3 polled before the watch that waited longer"
    );
}

#[tokio::test(start_paused = true)]
async fn a_watch_removed_and_re_added_by_reloads_resumes_its_stored_state() {
    let defaults = "interval = \"10s\"\nmin_interval = \"1s\"\nbackoff = 1.0\njitter = 0.0";
    let (_dir, store) = open_store();
    let poller = Scripted::new(wall_clock(1_700_000_000), |_, _| Reply::NotModified);
    let running = start(&some_of(defaults, &[0, 1]), &store, poller.clone()).await;
    run_until(secs(100), || poller.times("w0").len() >= 3).await;
    let summary = running.handle.reload(some_of(defaults, &[1])).await;
    assert_eq!(summary.map(|s| s.removed), Some(1));
    run_until(secs(10), || {
        store
            .watch("w0")
            .unwrap()
            .is_some_and(|s| s.status == WatchStatus::Removed)
    })
    .await;
    let before = store.watch("w0").unwrap().expect("stored");
    assert!(before.not_modified >= 3, "{before:?}");

    // Back in the list: its stored state is read off the engine loop and
    // resumed, so its counters go on from where they were.
    let summary = running.handle.reload(some_of(defaults, &[0, 1])).await;
    assert_eq!(summary.map(|s| s.added), Some(1));
    let polls = poller.times("w0").len();
    run_until(secs(100), || poller.times("w0").len() > polls).await;
    run_until(secs(10), || {
        store
            .watch("w0")
            .unwrap()
            .is_some_and(|s| s.not_modified > before.not_modified)
    })
    .await;
    running.stop().await;
    let after = store.watch("w0").unwrap().expect("stored");
    assert_eq!(after.status, WatchStatus::Ok);
    assert_eq!(
        after.polls,
        before.polls + (poller.times("w0").len() - polls) as u64,
        "counted on from the stored state: {after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_late_answer_for_a_removed_and_re_added_watch_is_not_recorded() {
    let defaults = "interval = \"10s\"\nmin_interval = \"1s\"\njitter = 0.0";
    let (_dir, store) = open_store();
    // The poll in flight across the removal would make a version.
    let poller = Scripted::new(wall_clock(1_700_000_000), |_, n| match n {
        0 => Reply::Changed,
        _ => Reply::NotModified,
    })
    .holding(secs(100));
    let running = start(&some_of(defaults, &[0, 1]), &store, poller.clone()).await;
    run_until(secs(20), || !poller.times("w0").is_empty()).await;
    tokio::time::sleep(secs(1)).await;
    running.handle.reload(some_of(defaults, &[1])).await;
    tokio::time::sleep(secs(1)).await;
    let summary = running.handle.reload(some_of(defaults, &[0, 1])).await;
    assert_eq!(summary.map(|s| s.added), Some(1));
    // The re-added watch polls on its own; the old answer comes meanwhile.
    run_until(secs(300), || poller.times("w0").len() >= 2).await;
    tokio::time::sleep(secs(101)).await;
    running.stop().await;

    let state = store.watch("w0").unwrap().expect("stored");
    assert_eq!(
        (state.changed, state.versions, state.not_modified),
        (0, 0, 1),
        "only the re-added watch's own poll is recorded: {state:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_watch_moved_to_another_host_counts_against_that_host() {
    let text = "[defaults]\ninterval = \"1s\"\nmin_interval = \"1s\"\nbackoff = 1.0\njitter = 0.0\n\
        [[watch]]\nid = \"w0\"\nurl = \"http://127.0.0.1:9/0\"\n\
        [[watch]]\nid = \"w1\"\nurl = \"http://localhost:9/1\"\n";
    let (_dir, store) = open_store();
    let poller = Scripted::new(wall_clock(1_700_000_000), |id, _| match id {
        "w0" => Reply::Moved("http://localhost:9/moved"),
        _ => Reply::NotModified,
    })
    .holding(secs(10));
    let running = start_limited(&config(text), &store, poller.clone(), 1).await;
    run_until(secs(2_000), || {
        poller.times("w0").len() >= 20 && poller.times("w1").len() >= 20
    })
    .await;
    running.stop().await;

    let state = store.watch("w0").unwrap().expect("stored");
    assert_eq!(state.url, "http://localhost:9/moved", "re-pointed");
    assert_eq!(poller.most_at_once("localhost"), 1, "per_host = 1 holds");
    let polls = poller.polls("w0");
    assert_eq!(polls[0].url, "http://127.0.0.1:9/0");
    assert_eq!(
        polls.last().unwrap().url,
        "http://localhost:9/moved",
        "polls go to the new URL"
    );

    // After a restart, the stored move still holds.
    let poller = Scripted::new(wall_clock(1_700_100_000), |_, _| Reply::NotModified);
    let running = start_limited(&config(text), &store, poller.clone(), 1).await;
    run_until(secs(100), || !poller.times("w0").is_empty()).await;
    running.stop().await;
    assert_eq!(poller.polls("w0")[0].url, "http://localhost:9/moved");
}

/// A watch list of one watch `w0` at `url` with `until = [until]`.
fn done_list(url: &str, until: &str) -> Config {
    config(&format!(
        "[defaults]\ninterval = \"10s\"\nmin_interval = \"1s\"\njitter = 0.0\n[[watch]]\nid = \"w0\"\nurl = \"{url}\"\nuntil = [\"{until}\"]\n"
    ))
}

/// `w0` of `before` reaches `done` on its first poll; after a reload to
/// `after` it is polled again and is `ok`.
async fn a_done_watch_polls_again_after_reloading(before: Config, after: Config) {
    let (_dir, store) = open_store();
    let poller = Scripted::new(wall_clock(1_700_000_000), |_, n| match n {
        0 => Reply::Done,
        _ => Reply::NotModified,
    });
    let running = start(&before, &store, poller.clone()).await;
    run_until(secs(20), || poller.times("w0").len() == 1).await;
    tokio::time::sleep(secs(60)).await;
    assert_eq!(poller.times("w0").len(), 1, "done: polling stopped");
    assert!(
        !running.handle.poll_now("w0").await,
        "a done watch is not polled on demand"
    );
    assert!(!running.handle.poll_now("nope").await);

    let summary = running.handle.reload(after).await;
    assert_eq!(summary.map(|s| s.changed), Some(1));
    run_until(secs(30), || poller.times("w0").len() >= 2).await;
    running.stop().await;
    let state = store.watch("w0").unwrap().expect("stored");
    assert_eq!(state.status, WatchStatus::Ok, "{state:?}");
}

#[tokio::test(start_paused = true)]
async fn a_done_watch_is_polled_again_once_its_url_changes() {
    a_done_watch_polls_again_after_reloading(
        done_list("http://127.0.0.1:9/a", "status=200"),
        done_list("http://127.0.0.1:9/b", "status=200"),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_done_watch_is_polled_again_once_its_until_changes() {
    a_done_watch_polls_again_after_reloading(
        done_list("http://127.0.0.1:9/a", "status=200"),
        done_list("http://127.0.0.1:9/a", "status=204"),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn poll_now_for_a_watch_waiting_for_its_host_polls_it_once() {
    let defaults =
        "interval = \"10s\"\nmin_interval = \"1s\"\nmax_retry_after = \"1h\"\njitter = 0.0";
    let (_dir, store) = open_store();
    let poller = Scripted::new(wall_clock(1_700_000_000), |_, _| {
        Reply::RateLimited(secs(300))
    })
    .holding(secs(50));
    let running = start_limited(&watch_list(defaults, 2), &store, poller.clone(), 1).await;
    run_until(secs(20), || poller.firsts().len() == 1).await;
    let first = index(poller.firsts().keys().next().unwrap());
    let other = format!("w{}", 1 - first);
    // Due, and waiting for the host: asked to poll now as well.
    tokio::time::sleep(secs(10)).await;
    assert!(running.handle.poll_now(&other).await);
    // And the one in flight: its poll under way answers the request.
    assert!(running.handle.poll_now(&format!("w{first}")).await);
    run_until(secs(2_000), || poller.times(&other).len() >= 2).await;
    running.stop().await;

    let gaps = gaps(&poller.times(&other));
    assert!(
        gaps[0] >= secs(350) - Duration::from_millis(2),
        "Retry-After: 300 after a 50 s poll is kept: {gaps:?}"
    );
    let first_gaps = self::gaps(&poller.times(&format!("w{first}")));
    assert!(first_gaps.iter().all(|g| *g >= secs(349)), "{first_gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn an_edited_url_frees_the_old_hosts_slot_when_its_poll_ends() {
    // w{moved} at another host, the other watch where it was.
    let list = |moved: Option<usize>| {
        let mut text =
            "[defaults]\ninterval = \"10s\"\nmin_interval = \"1s\"\njitter = 0.0\n".to_owned();
        for i in 0..2 {
            let host = if moved == Some(i) {
                "localhost"
            } else {
                "127.0.0.1"
            };
            text.push_str(&format!(
                "[[watch]]\nid = \"w{i}\"\nurl = \"http://{host}:9/{i}\"\n"
            ));
        }
        config(&text)
    };
    let (_dir, store) = open_store();
    let poller =
        Scripted::new(wall_clock(1_700_000_000), |_, _| Reply::NotModified).holding(secs(100));
    let running = start_limited(&list(None), &store, poller.clone(), 1).await;
    run_until(secs(20), || poller.firsts().len() == 1).await;
    let first = index(poller.firsts().keys().next().unwrap());
    let other = format!("w{}", 1 - first);
    // The other watch waits for 127.0.0.1 while the first polls it; the
    // first is edited to poll another host.
    tokio::time::sleep(secs(10)).await;
    running.handle.reload(list(Some(first))).await;
    let started = poller.times(&format!("w{first}"))[0];
    run_until(secs(300), || !poller.times(&other).is_empty()).await;
    running.stop().await;
    assert_near(
        poller.times(&other)[0],
        started + secs(100),
        "the waiting watch polls once the first poll of 127.0.0.1 ends",
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_poll_releases_its_slots_and_the_watch_polls_again() {
    let defaults = "interval = \"10s\"\nmin_interval = \"1s\"\njitter = 0.0";
    let (_dir, store) = open_store();
    let poller = Scripted::new(wall_clock(1_700_000_000), |_, n| match n {
        0 => Reply::Panic,
        _ => Reply::NotModified,
    })
    .holding(secs(5));
    let running = start_limited(&watch_list(defaults, 2), &store, poller.clone(), 1).await;
    run_until(secs(300), || {
        poller.times("w0").len() >= 2 && poller.times("w1").len() >= 2
    })
    .await;
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_watch_stopped_by_fail_if_stays_stopped_after_a_restart() {
    let list = |url: &str| {
        config(&format!(
            "[defaults]\ninterval = \"10s\"\nmin_interval = \"1s\"\njitter = 0.0\n[[watch]]\nid = \"w0\"\nurl = \"{url}\"\nfail_if = [\"status=200\"]\n"
        ))
    };
    let (_dir, store) = open_store();
    let first = Scripted::new(wall_clock(1_700_000_000), |_, _| Reply::FailIf);
    let running = start(&list("http://127.0.0.1:9/a"), &store, first.clone()).await;
    run_until(secs(20), || first.times("w0").len() == 1).await;
    tokio::time::sleep(secs(60)).await;
    running.stop().await;
    assert_eq!(first.times("w0").len(), 1, "fail_if held: polling stopped");
    let state = store.watch("w0").unwrap().expect("stored");
    assert_eq!(state.status, WatchStatus::Error, "{state:?}");

    // The same list after a restart: still stopped.
    let second = Scripted::new(wall_clock(1_700_000_100), |_, _| Reply::NotModified);
    let running = start(&list("http://127.0.0.1:9/a"), &store, second.clone()).await;
    tokio::time::sleep(secs(600)).await;
    running.stop().await;
    assert!(
        second.times("w0").is_empty(),
        "a stopped watch was polled after a restart"
    );

    // Its URL edited while polld was down: what held was about another request.
    let third = Scripted::new(wall_clock(1_700_001_000), |_, _| Reply::NotModified);
    let running = start(&list("http://127.0.0.1:9/b"), &store, third.clone()).await;
    run_until(secs(30), || third.times("w0").len() == 1).await;
    running.stop().await;
    let state = store.watch("w0").unwrap().expect("stored");
    assert_eq!(state.status, WatchStatus::Ok, "{state:?}");
}

#[tokio::test(start_paused = true)]
async fn a_watch_stopped_by_fail_if_stays_stopped_after_an_interval_edit() {
    let list = |interval: &str| {
        config(&format!(
            "[defaults]\ninterval = \"{interval}\"\nmin_interval = \"1s\"\njitter = 0.0\n[[watch]]\nid = \"w0\"\nurl = \"http://127.0.0.1:9/a\"\nfail_if = [\"status=200\"]\n"
        ))
    };
    let (_dir, store) = open_store();
    let first = Scripted::new(wall_clock(1_700_000_000), |_, _| Reply::FailIf);
    let running = start(&list("10s"), &store, first.clone()).await;
    run_until(secs(20), || first.times("w0").len() == 1).await;
    running.stop().await;
    // The interval edited while stopped: the new one is written back at
    // start, and the watch must still read as stopped afterwards.
    for interval in ["20s", "20s"] {
        let next = Scripted::new(first.clock, |_, _| Reply::NotModified);
        let running = start(&list(interval), &store, next.clone()).await;
        tokio::time::sleep(secs(120)).await;
        running.stop().await;
        assert!(next.times("w0").is_empty(), "polled after a restart");
        let state = store.watch("w0").unwrap().expect("stored");
        assert_eq!(state.base_interval_ms, Some(20_000));
        assert_eq!(state.next_due_ms, None, "{state:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_shorter_interval_from_a_reload_is_stored_with_its_due_time() {
    let list = one_watch;
    let (_dir, store) = open_store();
    let clock = wall_clock(1_700_000_000);
    let poller = Scripted::new(clock, |_, _| Reply::NotModified);
    let running = start(&list("1h"), &store, poller.clone()).await;
    run_until(secs(3_600), || poller.times("w0").len() == 1).await;

    running.handle.reload(list("10s")).await.expect("reloaded");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let now_ms = clock
        .now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let due = store
        .watch("w0")
        .unwrap()
        .and_then(|s| s.next_due_ms)
        .expect("due time stored");
    assert!(
        due <= now_ms + 10_000,
        "stored due {} s ahead, after a reload to 10 s",
        (due - now_ms) / 1000
    );
    running.stop().await;
}

/// A reload that shortens the interval to `min_interval` never makes the
/// jittered wait shorter than `min_interval`.
#[tokio::test(start_paused = true)]
async fn a_reload_to_min_interval_waits_at_least_min_interval() {
    let list = |interval: &str| {
        let mut text = format!(
            "[defaults]\ninterval = \"{interval}\"\nmin_interval = \"10s\"\nbackoff = 1.0\njitter = 0.5\n"
        );
        for i in 0..20 {
            text.push_str(&format!(
                "[[watch]]\nid = \"w{i}\"\nurl = \"http://127.0.0.1:9/{i}\"\n"
            ));
        }
        config(&text)
    };
    let (_dir, store) = open_store();
    let poller = Scripted::new(wall_clock(1_700_000_000), |_, _| Reply::NotModified);
    let running = start(&list("1h"), &store, poller.clone()).await;
    // Every watch polled now, not at a moment spread over its first hour:
    // each next poll is then 30 to 90 minutes away, so the reload shortens
    // every wait. A wait already shorter than the new interval is kept
    // (rightly: the last poll was long ago), and with the first polls
    // spread, one in about 25 runs had a watch whose hourly poll fell due
    // a few seconds after the reload, which this test took for a wait below
    // `min_interval`.
    for i in 0..20 {
        assert!(running.handle.poll_now(&format!("w{i}")).await);
    }
    run_until(secs(60), || poller.firsts().len() == 20).await;
    // Taken once the reload is applied: the paused clock may move on to a
    // poll due on the old schedule while the reload reads the store.
    running.handle.reload(list("10s")).await.expect("reloaded");
    let reloaded = Instant::now() - poller.start;
    let polled: Vec<usize> = (0..20)
        .map(|i| poller.times(&format!("w{i}")).len())
        .collect();
    run_until(secs(60), || {
        (0..20).all(|i| poller.times(&format!("w{i}")).len() > polled[i])
    })
    .await;
    running.stop().await;
    for (i, before) in polled.iter().enumerate() {
        let next = poller.times(&format!("w{i}"))[*before];
        assert!(
            next >= reloaded + secs(10) - Duration::from_millis(1),
            "w{i} polled {:?} after the reload, below min_interval",
            next - reloaded
        );
    }
}

/// Log lines written while a test runs on this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A reload that touches many watches logs the first hundred one by one
/// and then one line for the rest, not a line per watch.
#[tokio::test(start_paused = true)]
async fn a_reload_of_many_watches_logs_a_bounded_number_of_lines() {
    let captured = Captured::default();
    let writer = captured.clone();
    let _log = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    );
    // With one scoped subscriber alive, tracing-core judges a log line
    // that another test's thread meets first by that thread's subscriber
    // only (none), and caches "nobody listens" for every thread: this test
    // then missed "watch list reloaded" whenever another reload test ran
    // beside it. A second subscriber makes it ask each one.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    tracing::callsite::rebuild_interest_cache();
    let defaults = "interval = \"1h\"\nmin_interval = \"1s\"\njitter = 0.0";
    let (_dir, store) = open_store();
    let poller = Scripted::new(wall_clock(1_700_000_000), |_, _| Reply::NotModified);
    let running = start(&some_of(defaults, &[0]), &store, poller.clone()).await;
    let all: Vec<usize> = (0..250).collect();
    let summary = running.handle.reload(some_of(defaults, &all)).await;
    assert_eq!(summary.map(|s| s.added), Some(249));
    running.stop().await;
    let text = captured.text();
    let added = text.matches("watch added to the list").count();
    assert_eq!(added, 100, "{added} per-watch lines");
    assert!(text.contains("more=149"), "{text}");
    assert!(text.contains("added=249"), "{text}");
}

fn one_watch(interval: &str) -> Config {
    config(&format!(
        "[defaults]\ninterval = \"{interval}\"\nmin_interval = \"1s\"\nmax_interval = \"4h\"\nmax_retry_after = \"6h\"\nbackoff = 2.0\njitter = 0.0\n[[watch]]\nid = \"w0\"\nurl = \"http://127.0.0.1:9/a\"\n"
    ))
}

#[tokio::test(start_paused = true)]
async fn a_new_interval_edited_while_stopped_applies_at_the_restart() {
    let (_dir, store) = open_store();
    let first = Scripted::new(wall_clock(1_700_000_000), |_, _| Reply::NotModified);
    let running = start(&one_watch("1h"), &store, first.clone()).await;
    run_until(secs(3_600), || first.times("w0").len() == 1).await;
    tokio::time::sleep(secs(1)).await;
    running.stop().await;
    let stored = store.watch("w0").unwrap().expect("stored");
    assert_eq!(stored.interval_ms, 7_200_000, "backed off after a 304");
    assert_eq!(stored.base_interval_ms, Some(3_600_000));

    // Restarted under the same list: the backed-off interval is kept.
    let second = Scripted::new(first.clock, |_, _| Reply::NotModified);
    let running = start(&one_watch("1h"), &store, second.clone()).await;
    tokio::time::sleep(secs(60)).await;
    running.stop().await;
    assert!(second.times("w0").is_empty(), "polled again too soon");

    // Restarted after an edit to 10 s: polled within 10 s, and backoff
    // grows from 10 s (a 304 doubles it), not from the two hours.
    let third = Scripted::new(second.clock, |_, _| Reply::NotModified);
    let running = start(&one_watch("10s"), &store, third.clone()).await;
    run_until(secs(40), || third.times("w0").len() == 2).await;
    running.stop().await;
    let times = third.times("w0");
    assert!(
        times[0] <= secs(10),
        "first poll {:?} after the restart",
        times[0]
    );
    assert_near(times[1] - times[0], secs(20), "10 s backed off once");
}

#[tokio::test(start_paused = true)]
async fn an_interval_edit_keeps_a_servers_retry_after_across_a_restart() {
    let (_dir, store) = open_store();
    let first = Scripted::new(wall_clock(1_700_000_000), |_, _| {
        Reply::RateLimited(secs(3 * 3_600))
    });
    let running = start(&one_watch("1h"), &store, first.clone()).await;
    run_until(secs(3_600), || first.times("w0").len() == 1).await;
    tokio::time::sleep(secs(1)).await;
    running.stop().await;

    let second = Scripted::new(first.clock, |_, _| Reply::NotModified);
    let running = start(&one_watch("10s"), &store, second.clone()).await;
    tokio::time::sleep(secs(600)).await;
    assert!(second.times("w0").is_empty(), "the 3 h Retry-After was cut");
    running.stop().await;
    // The new interval is recorded all the same.
    let stored = store.watch("w0").unwrap().expect("stored");
    assert_eq!(stored.base_interval_ms, Some(10_000));
}

/// The first poll answers with `first`, every later one a plain 304.
fn first_then_304(first: Reply) -> impl Fn(&str, usize) -> Reply + Send + Sync + 'static {
    move |_, before| {
        if before == 0 {
            first
        } else {
            Reply::NotModified
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_reload_to_a_shorter_interval_keeps_a_servers_poll_interval() {
    // `one_watch`: backoff 2.0, so after a 304 the policy alone would wait
    // 2 h; X-Poll-Interval asks for 3 h.
    let (_dir, store) = open_store();
    let poller = Scripted::new(
        wall_clock(1_700_000_000),
        first_then_304(Reply::NotModifiedPollInterval(secs(3 * 3_600))),
    );
    let running = start(&one_watch("1h"), &store, poller.clone()).await;
    run_until(secs(3_600), || poller.times("w0").len() == 1).await;
    tokio::time::sleep(secs(60)).await;

    running
        .handle
        .reload(one_watch("10s"))
        .await
        .expect("reloaded");
    run_until(secs(4 * 3_600), || poller.times("w0").len() == 2).await;
    let times = poller.times("w0");
    assert_near(
        times[1] - times[0],
        secs(3 * 3_600),
        "the 3 h X-Poll-Interval, not the new 10 s",
    );
    // From then on the new interval rules (the server asked for nothing).
    run_until(secs(60), || poller.times("w0").len() == 3).await;
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_servers_shorter_wait_still_bounds_a_wait_cut_by_a_reload() {
    // The policy waits 2 h, longer than the server's 5 min: cut to 10 s by
    // the edit, the wait still ends no earlier than those 5 min.
    let (_dir, store) = open_store();
    let poller = Scripted::new(
        wall_clock(1_700_000_000),
        first_then_304(Reply::NotModifiedPollInterval(secs(300))),
    );
    let running = start(&one_watch("1h"), &store, poller.clone()).await;
    run_until(secs(3_600), || poller.times("w0").len() == 1).await;
    tokio::time::sleep(secs(1)).await;

    running
        .handle
        .reload(one_watch("10s"))
        .await
        .expect("reloaded");
    run_until(secs(600), || poller.times("w0").len() == 2).await;
    let times = poller.times("w0");
    assert_near(times[1] - times[0], secs(300), "the server's 5 min");
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_interval_edit_keeps_a_responses_freshness_across_a_restart() {
    let (_dir, store) = open_store();
    let first = Scripted::new(
        wall_clock(1_700_000_000),
        first_then_304(Reply::NotModifiedFresh(secs(3 * 3_600))),
    );
    let running = start(&one_watch("1h"), &store, first.clone()).await;
    run_until(secs(3_600), || first.times("w0").len() == 1).await;
    tokio::time::sleep(secs(1)).await;
    running.stop().await;
    let stored = store.watch("w0").unwrap().expect("stored");
    assert_eq!(
        stored
            .hold_until_ms
            .zip(stored.last_checked_ms)
            .map(|(h, c)| h - c),
        Some(3 * 3_600 * 1000),
        "the hold is stored"
    );

    // Restarted under a 10 s interval: polled when the answer goes stale
    // (3 h after it), not within 10 s.
    let second = Scripted::new(first.clock, |_, _| Reply::NotModified);
    let running = start(&one_watch("10s"), &store, second.clone()).await;
    tokio::time::sleep(secs(600)).await;
    assert!(second.times("w0").is_empty(), "the 3 h max-age was cut");
    run_until(secs(3 * 3_600), || second.times("w0").len() == 1).await;
    let polled_at = second.polls("w0")[0].wall;
    let checked = SystemTime::UNIX_EPOCH + Duration::from_millis(stored.last_checked_ms.unwrap());
    let gap = polled_at.duration_since(checked).unwrap();
    assert!(
        gap >= secs(3 * 3_600) && gap <= secs(3 * 3_600 + 10),
        "polled {gap:?} after the fresh answer"
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn waits_longer_than_the_timer_holds_are_armed_in_steps() {
    // Under test the timer holds an hour (`MAX_TIMER`): a 3 h interval is
    // three steps, and still one poll every 3 h.
    let list = config(
        "[defaults]\ninterval = \"3h\"\nmax_interval = \"3h\"\nbackoff = 1.0\njitter = 0.0\n[[watch]]\nid = \"w0\"\nurl = \"http://127.0.0.1:9/a\"\n",
    );
    let (_dir, store) = open_store();
    let poller = Scripted::new(wall_clock(1_700_000_000), |_, _| Reply::NotModified);
    let running = start(&list, &store, poller.clone()).await;
    tokio::time::sleep(secs(10 * 3_600)).await;
    running.stop().await;
    // The first poll falls anywhere in the first 3 h (spread), then one
    // every 3 h: 3 or 4 in 10 h.
    let times = poller.times("w0");
    assert!((3..=4).contains(&times.len()), "{times:?}");
    for gap in gaps(&times) {
        assert_near(gap, secs(3 * 3_600), "a 3 h interval");
    }
}

#[tokio::test(start_paused = true)]
async fn a_cron_schedule_decades_ahead_is_kept_not_a_panic() {
    // tokio's timer wheel panics beyond ~2.2 years; polld started, then
    // panicked, on such a watch.
    let list = config(
        "[[watch]]\nid = \"w0\"\nurl = \"http://127.0.0.1:9/a\"\nschedule = \"0 0 0 1 1 * 2099\"\n[[watch]]\nid = \"w1\"\nurl = \"http://127.0.0.1:9/b\"\ninterval = \"30years\"\nmax_interval = \"30years\"\n",
    );
    let (_dir, store) = open_store();
    let poller = Scripted::new(wall_clock(1_700_000_000), |_, _| Reply::NotModified);
    let running = start(&list, &store, poller.clone()).await;
    tokio::time::sleep(secs(3 * 3_600)).await;
    running.stop().await;
    assert!(poller.times("w0").is_empty());
    let due = store.watch("w0").unwrap().and_then(|s| s.next_due_ms);
    // 2099-01-01T00:00:00Z
    assert_eq!(due, Some(4_070_908_800_000));
}

#[tokio::test(start_paused = true)]
async fn a_pending_job_is_resumed_by_the_next_poll_after_its_wait_even_after_a_restart() {
    let list = config(
        "[defaults]\ninterval = \"10s\"\nmin_interval = \"1s\"\nmax_retry_after = \"1h\"\njitter = 0.0\n[[watch]]\nid = \"w0\"\nurl = \"http://127.0.0.1:9/report\"\nmethod = \"POST\"\n",
    );
    let (_dir, store) = open_store();
    let first = Scripted::new(wall_clock(1_700_000_000), |_, _| {
        Reply::JobPending(secs(120))
    });
    let running = start(&list, &store, first.clone()).await;
    run_until(secs(20), || first.times("w0").len() == 1).await;
    tokio::time::sleep(secs(1)).await;
    running.stop().await;
    let state = store.watch("w0").unwrap().expect("stored");
    assert_eq!(
        state.pending_job.as_deref(),
        Some("http://127.0.0.1:9/jobs/1")
    );
    assert_eq!(state.status, WatchStatus::Ok, "a running job is no error");

    // After a restart, the next poll comes after the job's wait and resumes it.
    let second = Scripted::new(first.clock, |_, _| Reply::Changed);
    let running = start(&list, &store, second.clone()).await;
    run_until(secs(300), || second.times("w0").len() == 1).await;
    tokio::time::sleep(secs(1)).await;
    running.stop().await;
    let polls = second.polls("w0");
    assert_eq!(polls[0].job.as_deref(), Some("http://127.0.0.1:9/jobs/1"));
    let waited = polls[0]
        .wall
        .duration_since(first.polls("w0")[0].wall)
        .unwrap();
    assert!(waited >= secs(120), "resumed after {waited:?}, not 120 s");
    let state = store.watch("w0").unwrap().expect("stored");
    assert_eq!(state.pending_job, None, "the job's result ends it");
}

#[tokio::test(start_paused = true)]
async fn a_restart_brings_back_each_watchs_304_ratio_before_it_polls() {
    let config = watch_list("interval = \"1h\"\njitter = 0.0", 2);
    let (_dir, store) = open_store();
    // First life: two polls each, the second a 304.
    let first = Scripted::new(wall_clock(1_700_000_000), |_, before| {
        if before == 0 {
            Reply::Changed
        } else {
            Reply::NotModified
        }
    });
    let running = start(&config, &store, first.clone()).await;
    run_until(secs(7200), || {
        first.polls("w0").len() >= 2 && first.polls("w1").len() >= 2
    })
    .await;
    running.stop().await;

    // Second life: nothing is due for an hour, yet the ratio is there.
    let (writer, _writer_task) = store.spawn_writer(WriterConfig::default());
    let metrics = Metrics::new(true);
    let (_engine, _handle) = Engine::start(
        config.watches.clone(),
        &store,
        writer,
        Scripted::new(wall_clock(1_700_010_000), |_, _| Reply::NotModified),
        metrics.clone(),
        EngineOptions {
            concurrency: 4,
            per_host: 4,
            grace: Duration::from_secs(1),
            resume_window: Duration::from_secs(30),
            spans: None,
            clock: wall_clock(1_700_010_000),
        },
    )
    .await
    .expect("engine start");
    let text = metrics.render();
    for id in ["w0", "w1"] {
        let line = format!("polld_not_modified_ratio{{watch=\"{id}\"}} 0.5");
        assert!(text.contains(&line), "{line} missing in:\n{text}");
    }
}

/// Midnight UTC, 2023-11-15.
const MIDNIGHT: u64 = 1_700_006_400;

/// One watch `w0` on a cron `schedule`, with `extra` in `[defaults]`.
fn cron_watch(schedule: &str, extra: &str) -> Config {
    config(&format!(
        "[defaults]\njitter = 0.0\n{extra}\n[[watch]]\nid = \"w0\"\nurl = \"http://127.0.0.1:9/a\"\nschedule = \"{schedule}\"\n"
    ))
}

/// Milliseconds past the last multiple of `period` of a poll's wall time.
fn past(seen: &Seen, period: Duration) -> u128 {
    let ms = seen
        .wall
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    ms % period.as_millis()
}

#[tokio::test(start_paused = true)]
async fn a_restart_keeps_a_daily_cron_watch_on_its_fire() {
    // Ten minutes past midnight: the next fire is 23 h 50 min away, far
    // beyond max_interval (6 h by default).
    let daily = cron_watch("0 0 0 * * *", "");
    let (_dir, store) = open_store();
    let first = Scripted::new(wall_clock(MIDNIGHT + 600), |_, _| Reply::NotModified);
    let running = start(&daily, &store, first.clone()).await;
    tokio::time::sleep(secs(60)).await;
    running.stop().await;
    assert!(first.times("w0").is_empty());

    let second = Scripted::new(first.clock, |_, _| Reply::NotModified);
    let running = start(&daily, &store, second.clone()).await;
    run_until_every(secs(25 * 3_600), secs(60), || second.times("w0").len() == 1).await;
    running.stop().await;
    let polled = &second.polls("w0")[0];
    assert!(
        past(polled, secs(86_400)) <= 2,
        "polled {} s past midnight, not at the fire",
        past(polled, secs(86_400)) / 1000
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_keeps_a_cron_watch_on_its_fires() {
    // Five minutes past the hour; an hourly cron and the default 5 min
    // interval (which a cron watch does not wait by).
    let hourly = |extra: &str| cron_watch("0 0 * * * *", extra);
    let (_dir, store) = open_store();
    let poller = Scripted::new(wall_clock(MIDNIGHT + 300), |_, _| Reply::NotModified);
    let running = start(&hourly(""), &store, poller.clone()).await;
    tokio::time::sleep(secs(60)).await;
    // Another setting of the watch changes: its wait for the fire stays.
    let summary = running.handle.reload(hourly("timeout = \"20s\"")).await;
    assert_eq!(summary.map(|s| s.changed), Some(1));
    run_until_every(secs(3_600), secs(10), || poller.times("w0").len() == 1).await;
    let polled = &poller.polls("w0")[0];
    assert!(
        past(polled, secs(3_600)) <= 2,
        "polled {} s past the hour, not at the fire",
        past(polled, secs(3_600)) / 1000
    );

    // The schedule itself changes: the next poll is at the new one's fire.
    tokio::time::sleep(secs(300)).await;
    let summary = running
        .handle
        .reload(cron_watch("0 30 * * * *", "timeout = \"20s\""))
        .await;
    assert_eq!(summary.map(|s| s.changed), Some(1));
    run_until_every(secs(3_600), secs(10), || poller.times("w0").len() == 2).await;
    running.stop().await;
    let polled = &poller.polls("w0")[1];
    let minutes = past(polled, secs(3_600));
    assert!(
        minutes.abs_diff(1_800_000) <= 2,
        "polled {} s past the hour, not at half past",
        minutes / 1000
    );
}

/// `w0` at `url`, an hourly interval doubled by every 304.
fn at_url(url: &str) -> Config {
    config(&format!(
        "[defaults]\ninterval = \"1h\"\nmin_interval = \"1s\"\nmax_interval = \"1d\"\nmax_retry_after = \"1d\"\nbackoff = 2.0\njitter = 0.0\n[[watch]]\nid = \"w0\"\nurl = \"{url}\"\n"
    ))
}

#[tokio::test(start_paused = true)]
async fn an_edited_url_is_polled_within_its_interval_not_after_the_old_backoff() {
    let (_dir, store) = open_store();
    // Three 304s: the old URL's wait grew to 8 h.
    let poller = Scripted::new(wall_clock(1_700_000_000), |_, _| Reply::NotModified);
    let running = start(&at_url("http://127.0.0.1:9/a"), &store, poller.clone()).await;
    run_until_every(secs(8 * 3_600), secs(10), || poller.times("w0").len() == 3).await;
    tokio::time::sleep(secs(60)).await;
    let edited = poller.start.elapsed();

    running
        .handle
        .reload(at_url("http://127.0.0.1:9/b"))
        .await
        .expect("reloaded");
    run_until_every(secs(2 * 3_600), secs(10), || poller.times("w0").len() == 4).await;
    let waited = poller.times("w0")[3] - edited;
    assert!(
        waited <= secs(3_600) + secs(1),
        "the edited URL waited {waited:?}, more than its 1 h interval"
    );
    // Its backoff starts afresh: a 304 doubles 1 h, not 8 h.
    run_until_every(secs(3 * 3_600), secs(10), || poller.times("w0").len() == 5).await;
    running.stop().await;
    let times = poller.times("w0");
    assert_near(times[4] - times[3], secs(2 * 3_600), "1 h doubled once");
}

#[tokio::test(start_paused = true)]
async fn a_url_moved_off_a_rate_limiting_host_does_not_wait_for_it() {
    let (_dir, store) = open_store();
    // The old host asks for a day; the list then points the watch elsewhere.
    let poller = Scripted::new(
        wall_clock(1_700_000_000),
        first_then_304(Reply::RateLimited(secs(86_400))),
    );
    let running = start(&at_url("http://127.0.0.1:9/a"), &store, poller.clone()).await;
    run_until_every(secs(3_600), secs(10), || poller.times("w0").len() == 1).await;
    tokio::time::sleep(secs(60)).await;
    running.stop().await;

    // Edited while polld was stopped, to another host: polled within its
    // interval after the restart.
    let second = Scripted::new(poller.clock, |_, _| Reply::NotModified);
    let running = start(&at_url("http://localhost:9/a"), &store, second.clone()).await;
    run_until_every(secs(3_610), secs(10), || second.times("w0").len() == 1).await;
    running.stop().await;
    assert!(
        second.times("w0")[0] <= secs(3_600) + Duration::from_millis(2),
        "polled {:?} after the restart",
        second.times("w0")[0]
    );

    // Back to the same host as the 429, by reload: its day is still kept.
    let third = Scripted::new(second.clock, |_, _| Reply::RateLimited(secs(86_400)));
    let running = start(&at_url("http://localhost:9/a"), &store, third.clone()).await;
    run_until_every(secs(2 * 3_600), secs(10), || third.times("w0").len() == 1).await;
    tokio::time::sleep(secs(60)).await;
    running
        .handle
        .reload(at_url("http://localhost:9/b"))
        .await
        .expect("reloaded");
    tokio::time::sleep(secs(12 * 3_600)).await;
    assert_eq!(
        third.times("w0").len(),
        1,
        "the same host's Retry-After was cut by an edit of the path"
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn poll_now_waits_out_a_rate_limit_and_polls_when_it_ends() {
    let defaults = "interval = \"10s\"\nmin_interval = \"1s\"\nmax_interval = \"1h\"\nmax_retry_after = \"1h\"\nbackoff = 1.0\njitter = 0.0";
    let (_dir, store) = open_store();
    // 429 + Retry-After: 300, then 304s; error backoff after the 429 may
    // wait longer than the 300 s (up to 20 s x 2 here, so not here).
    let poller = Scripted::new(
        wall_clock(1_700_000_000),
        first_then_304(Reply::RateLimited(secs(300))),
    );
    let running = start(&watch_list(defaults, 1), &store, poller.clone()).await;
    run_until(secs(20), || poller.times("w0").len() == 1).await;
    tokio::time::sleep(secs(10)).await;
    assert!(running.handle.poll_now("w0").await, "the poll is queued");
    run_until(secs(600), || poller.times("w0").len() == 2).await;
    let times = poller.times("w0");
    assert!(
        times[1] - times[0] >= secs(300),
        "polled {:?} after a 429 that asked for 300 s",
        times[1] - times[0]
    );
    assert!(
        times[1] - times[0] <= secs(330),
        "not polled when the 429's wait ended: {:?}",
        times[1] - times[0]
    );
    // Not rate limited any more: poll now is now.
    tokio::time::sleep(secs(1)).await;
    let asked = poller.start.elapsed();
    assert!(running.handle.poll_now("w0").await);
    run_until(secs(5), || poller.times("w0").len() == 3).await;
    assert_near(poller.times("w0")[2], asked, "poll now");
    running.stop().await;
}

/// The change log records a watch's state changes: errors start and clear,
/// and so does a server's rate limit (429/503), in the order they happened.
#[tokio::test(start_paused = true)]
async fn state_changes_reach_the_change_log_in_order() {
    let config = watch_list(
        "interval = \"10s\"\nmin_interval = \"1s\"\nmax_retry_after = \"1h\"\njitter = 0.0",
        1,
    );
    let (_dir, store) = open_store();
    let poller = Scripted::new(wall_clock(1_700_000_000), |_, n| match n {
        0 => Reply::Changed,
        1 | 2 => Reply::RateLimited(secs(30)),
        3 => Reply::Failed,
        4 => Reply::RateLimited(secs(30)),
        _ => Reply::NotModified,
    });
    let running = start(&config, &store, poller.clone()).await;
    run_until(secs(600), || poller.times("w0").len() >= 6).await;
    running.stop().await;

    let kinds: Vec<&str> = store
        .changes_after(0, 100)
        .unwrap()
        .iter()
        .map(|c| c.kind.as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "watch_added",
            "new_version",
            "rate_limited",
            // The second 429 in a row is no change.
            "rate_limit_cleared",
            "error_started",
            "error_cleared",
            "rate_limited",
            "rate_limit_cleared",
        ]
    );
}

/// A watch that stops on a 429 (`fail_if = ["status=429"]`) ends `done`,
/// not rate limited; one stopped while rate limited has its limit cleared
/// first, so that every `rate_limited` in the feed is followed by a
/// `rate_limit_cleared`.
#[tokio::test(start_paused = true)]
async fn a_watch_stopped_on_a_429_is_not_left_rate_limited_in_the_feed() {
    let config = watch_list(
        "interval = \"10s\"\nmin_interval = \"1s\"\nmax_retry_after = \"1h\"\njitter = 0.0",
        2,
    );
    let (_dir, store) = open_store();
    // w0 stops on its first 429; w1 is rate limited, then stops on a 429.
    let poller = Scripted::new(wall_clock(1_700_000_000), |id, n| match (id, n) {
        ("w0", _) | (_, 1) => Reply::RateLimitedFailIf,
        _ => Reply::RateLimited(secs(30)),
    });
    let running = start(&config, &store, poller.clone()).await;
    run_until(secs(600), || poller.times("w1").len() >= 2).await;
    running.stop().await;

    let kinds = |id: &str| -> Vec<String> {
        store
            .changes_after(0, 100)
            .unwrap()
            .iter()
            .filter(|c| c.watch == id)
            .map(|c| c.kind.as_str().to_owned())
            .collect()
    };
    assert_eq!(kinds("w0"), ["watch_added", "done"]);
    assert_eq!(
        kinds("w1"),
        ["watch_added", "rate_limited", "rate_limit_cleared", "done"]
    );
}

//! Memory of 10,000 concurrent long-poll waiters, and the time from a commit
//! to their responses.
//!
//! `cargo bench -p polld-api --bench waiters [-- N] [--close | --bare | --tcp | --keep-alive]`
//!
//! - default: N requests (10,000) driven through the router with `oneshot`
//!   in this process: what the API itself costs per waiter. Each request's
//!   task stays parked after its answer until all are in, as a kept-alive
//!   connection's task does while its client polls again, so no task
//!   teardown is timed.
//! - `--close`: the same, but each task ends at its answer (as a connection
//!   closed after its answer does), so 10,000 task teardowns are timed too.
//! - `--bare`: the default mode with a bare axum handler in place of the
//!   API: it parks on one of 100 `Notify`s and answers with a fixed JSON
//!   body once they are notified. The floor that tokio, axum and this
//!   harness set on this machine, to read the API's figures against.
//! - `--tcp`: the real server (`polld_api::serve`, hyper over loopback); the
//!   N clients run in a child process (this binary with `--client`), so
//!   the memory figure is the server's alone. Both share the 2 cores.
//!   Each client sends `Connection: close` and its answer is complete at
//!   EOF, so both sides' teardown of 10,000 connections is timed too.
//! - `--keep-alive`: the same, but the clients keep their connections, and
//!   an answer is complete at its last body byte.
//!
//! Memory is the growth of this process's resident set (VmRSS) from before
//! the waiters arrived to when all of them are parked (allocator overhead
//! included; the workspace forbids the unsafe code a counting global
//! allocator would need). Latency runs from the return of the commit (when
//! the store publishes the new seq) to each response being complete at its
//! client (wall clock, shared by both processes in `--tcp`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use polld_api::{ApiOptions, ApiState, BoxFuture, Engine, MetricsSource, ServeLimits};
use polld_config::Listen;
use polld_store::{ChangeKind, Outcome, Store, WatchState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

// The allocator of the shipped binary (daemon/src/main.rs): the per-waiter
// cost is mostly allocation, so glibc malloc would measure another program.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const PATH: &str = "/v1/changes?after=1&wait=100s";
/// The start of every correct answer: the change committed during the run.
const WANT: &[u8] = b"{\"changes\":[{\"seq\":2,";

struct Idle(AtomicBool);
impl Engine for Idle {
    fn poll_now(&self, _: &str) -> BoxFuture<bool> {
        Box::pin(async { false })
    }
    fn is_running(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
impl MetricsSource for Idle {
    fn render(&self) -> String {
        String::new()
    }
}

fn outcome(events: Vec<ChangeKind>) -> Outcome {
    Outcome {
        state: WatchState {
            id: "bench".into(),
            url: "https://example.org/".into(),
            ..WatchState::default()
        }
        .into(),
        new_version: None,
        events,
        keep_versions: 10,
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) a process has used, in ms; `USER_HZ` is 100
/// on Linux.
fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the name.
    (ticks(11) + ticks(12)) * 10
}

/// Wall-clock nanoseconds, comparable between the two processes.
fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let keep_alive = args.iter().any(|a| a == "--keep-alive");
    if let Some(i) = args.iter().position(|a| a == "--client") {
        let addr = args[i + 1].parse().unwrap();
        let n = args[i + 2].parse().unwrap();
        runtime().block_on(client(addr, n, keep_alive));
        return;
    }
    let tcp = keep_alive || args.iter().any(|a| a == "--tcp");
    let close = args.iter().any(|a| a == "--close");
    let bare = args.iter().any(|a| a == "--bare");
    if bare && tcp {
        eprintln!("waiters: --bare runs in process only, not with --tcp or --keep-alive");
        std::process::exit(2);
    }
    // As `polld run` does (daemon/src/allocator.rs).
    if let Err(err) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("waiters: jemalloc has no background threads here ({err}); purging stays inline");
    }
    let n: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(10_000);
    runtime().block_on(run(n, tcp, keep_alive, close, bare));
}

/// Reads one response off a kept-alive connection: up to the end of its
/// head, then `Content-Length` bytes.
async fn read_response(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    loop {
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("a Content-Length");
            if out.len() >= end + 4 + len {
                return out;
            }
        }
        assert!(s.read_buf(&mut out).await.unwrap() > 0, "closed early");
    }
}

/// The `--tcp` clients: N connections, one long poll each; prints `sent`
/// once every request is written, then for each answer its completion time
/// and whether it carried the change. With `keep_alive`, a response is
/// complete at its last body byte and the connections stay open until all
/// are in (as a long-poll client that polls again would keep them), so
/// neither side's connection teardown is timed; else it is complete at
/// the server's close.
async fn client(addr: std::net::SocketAddr, n: usize, keep_alive: bool) {
    let mut tasks = Vec::with_capacity(n);
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::channel::<()>(n.max(1));
    // Connecting is not what is measured: 10,000 SYNs at once overflow the
    // listen backlog, and the dropped ones are retried by the kernel only
    // seconds later (minutes for some), so connects are paced.
    let connecting = Arc::new(tokio::sync::Semaphore::new(256));
    for _ in 0..n {
        let sent = sent_tx.clone();
        let connecting = Arc::clone(&connecting);
        tasks.push(tokio::spawn(async move {
            let pace = connecting.acquire_owned().await.unwrap();
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let close = if keep_alive {
                ""
            } else {
                "Connection: close\r\n"
            };
            let req = format!("GET {PATH} HTTP/1.1\r\nHost: localhost\r\n{close}\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            drop(pace);
            sent.send(()).await.unwrap();
            let out = if keep_alive {
                read_response(&mut s).await
            } else {
                let mut out = Vec::with_capacity(512);
                s.read_to_end(&mut out).await.unwrap();
                out
            };
            let done = now_ns();
            (done, out.windows(WANT.len()).any(|w| w == WANT), s)
        }));
    }
    drop(sent_tx);
    for _ in 0..n {
        sent_rx.recv().await.unwrap();
    }
    println!("sent");
    // Every answer is collected before anything is printed: a line (and a
    // pipe write, and a read in the server process) per answer while the
    // other answers are still arriving would add the harness's own work to
    // the latency it measures.
    let mut done = Vec::with_capacity(n);
    let mut open = Vec::with_capacity(n);
    for t in tasks {
        let (at, ok, s) = t.await.unwrap();
        done.push((at, ok));
        open.push(s);
    }
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    for (done, ok) in done {
        writeln!(stdout, "{done} {}", u8::from(ok)).unwrap();
    }
    stdout.flush().unwrap();
    // The server takes its CPU figures at the last line: the connections
    // are closed only after that, so that no teardown is counted with
    // --keep-alive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(open);
}

/// The `--bare` handler's state.
#[derive(Default)]
struct Bare {
    buckets: Vec<tokio::sync::Notify>,
    next: AtomicUsize,
    parked: AtomicUsize,
    body: std::sync::OnceLock<axum::body::Bytes>,
}

/// Parks until the buckets are notified (except the warm-up request), then
/// answers with the body set before that.
async fn bare_long_poll(
    axum::extract::State(bare): axum::extract::State<Arc<Bare>>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if query.as_deref() != Some("warm") {
        let i = bare.next.fetch_add(1, Ordering::Relaxed) % bare.buckets.len();
        let woken = bare.buckets[i].notified();
        bare.parked.fetch_add(1, Ordering::Relaxed);
        woken.await;
    }
    let body = bare.body.get().cloned().unwrap_or_default();
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn run(n: usize, tcp: bool, keep_alive: bool, close: bool, bare_mode: bool) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("bench.redb")).unwrap();
    store
        .apply_blocking(vec![outcome(vec![ChangeKind::WatchAdded])])
        .unwrap();
    let idle = Arc::new(Idle(AtomicBool::new(true)));
    let mut options = ApiOptions::new();
    options.max_waiters = n;
    options.max_wait = Duration::from_secs(120);
    let state = ApiState::new(store.clone(), idle.clone(), idle, options);
    let bare = Arc::new(Bare {
        buckets: (0..100).map(|_| tokio::sync::Notify::new()).collect(),
        ..Bare::default()
    });
    let api = polld_api::router(state.clone());
    // Driven through the same `Either` in both modes.
    let router = if bare_mode {
        tower::util::Either::Right(
            axum::Router::new()
                .route("/v1/changes", axum::routing::get(bare_long_poll))
                .with_state(Arc::clone(&bare)),
        )
    } else {
        tower::util::Either::Left(api.clone())
    };
    let parked = || {
        if bare_mode {
            bare.parked.load(Ordering::Relaxed)
        } else {
            state.waiters()
        }
    };

    // Warm up the paths once so lazily built statics are not counted.
    let warm = router
        .clone()
        .oneshot(
            Request::get(if bare_mode {
                "/v1/changes?warm"
            } else {
                "/v1/changes?after=0"
            })
            .body(Body::empty())
            .unwrap(),
        )
        .await
        .unwrap();
    let _ = warm.into_body().collect().await.unwrap();

    // Each in-process answer's completion time (wall-clock ns) shifted left
    // by one, its low bit set when it carried the change; 0 until then.
    let results: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let rss_before = rss_kib();
    let mut tasks = Vec::new();
    let mut server = None;
    let mut child = None;
    if tcp {
        let listener = polld_api::bind(&Listen::Tcp("127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        let Some(Listen::Tcp(addr)) = listener.local_addr() else {
            unreachable!()
        };
        let mut limits = ServeLimits::default();
        limits.max_connections = n + 16;
        let closer = state.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        server = Some((
            stop,
            tokio::spawn(listener.serve(api.clone(), limits, async move {
                let _ = stopped.await;
                closer.close();
            })),
        ));
        let mut c = Command::new(std::env::current_exe().unwrap())
            .args(["--client", &addr.to_string(), &n.to_string()])
            .args(keep_alive.then_some("--keep-alive"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
        let first = tokio::task::spawn_blocking(move || {
            let first = lines.next().unwrap().unwrap();
            (first, lines)
        })
        .await
        .unwrap();
        assert_eq!(first.0, "sent");
        child = Some((c, first.1));
    } else {
        for i in 0..n {
            let router = router.clone();
            let results = Arc::clone(&results);
            tasks.push(tokio::spawn(async move {
                let res = router
                    .oneshot(Request::get(PATH).body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                let body = res.into_body().collect().await.unwrap().to_bytes();
                let ok = body.starts_with(WANT);
                // Dropped inside the timed part, as hyper drops a body once
                // written, also on a kept-alive connection.
                drop(body);
                let done = u64::try_from(now_ns()).unwrap();
                results[i].store(done << 1 | u64::from(ok), Ordering::Relaxed);
                if !close {
                    // Parked without a waker, until aborted below.
                    std::future::pending::<()>().await;
                }
            }));
        }
    }
    // Bounded wait until every request is parked.
    let parked_by = std::time::Instant::now() + Duration::from_secs(120);
    while parked() < n {
        assert!(
            std::time::Instant::now() < parked_by,
            "only {} of {n} parked",
            parked()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_held = rss_kib().saturating_sub(rss_before);

    // For profiling the wake-up alone: `perf record -p PID` during the pause.
    if let Some(secs) = std::env::var("POLLD_BENCH_PAUSE")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        eprintln!(
            "pid {}: pausing {secs} s before the commit",
            std::process::id()
        );
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    let client_pid = child.as_ref().map(|(c, _)| c.id());
    let cpu_before = (cpu_ms(std::process::id()), client_pid.map_or(0, cpu_ms));
    let commit_start = std::time::Instant::now();
    let committed = if bare_mode {
        // As the feed does: the body is ready, then one task on a worker
        // wakes every bucket.
        let body = format!(
            "{}\"watch\":\"bench\",\"kind\":\"error_started\"}}],\"next\":\"2\"}}",
            std::str::from_utf8(WANT).unwrap()
        );
        let _ = bare.body.set(body.into());
        let committed = now_ns();
        let bare = Arc::clone(&bare);
        tokio::spawn(async move {
            for bucket in &bare.buckets {
                bucket.notify_waiters();
            }
        });
        committed
    } else {
        store
            .apply_blocking(vec![outcome(vec![ChangeKind::ErrorStarted])])
            .unwrap();
        now_ns()
    };
    let commit_took = commit_start.elapsed();

    let mut done: Vec<(u128, bool)> = Vec::with_capacity(n);
    let cpu_after;
    if let Some((mut c, lines)) = child {
        let client_pid = c.id();
        let (answers, cpu) = tokio::task::spawn_blocking(move || {
            let answers: Vec<(u128, bool)> = lines
                .take(n)
                .map(|l| {
                    let l = l.unwrap();
                    let (t, ok) = l.split_once(' ').unwrap();
                    (t.parse().unwrap(), ok == "1")
                })
                .collect();
            (answers, (cpu_ms(std::process::id()), cpu_ms(client_pid)))
        })
        .await
        .unwrap();
        done = answers;
        cpu_after = cpu;
        assert!(c.wait().unwrap().success());
    } else {
        // Every answer is in when every slot is set. Checked from the
        // block_on thread (a third thread on two cores) once a millisecond,
        // from the first slot not yet seen set: a shared count of answers
        // would be one more contended cache line per answer, the harness's
        // cost in the time it measures.
        let all_by = std::time::Instant::now() + Duration::from_secs(120);
        let mut seen = 0;
        while seen < n {
            if results[seen].load(Ordering::Relaxed) != 0 {
                seen += 1;
                continue;
            }
            if tasks[seen].is_finished() && results[seen].load(Ordering::Relaxed) == 0 {
                // Ended without an answer (read again after it ended: a
                // `--close` task ends right after its answer): its panic
                // says why.
                if let Err(err) = (&mut tasks[seen]).await {
                    std::panic::resume_unwind(err.into_panic());
                }
                panic!("waiter {seen} ended without an answer");
            }
            assert!(
                std::time::Instant::now() < all_by,
                "only {seen} of {n} answered"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        cpu_after = (cpu_ms(std::process::id()), 0);
        done.extend(results.iter().map(|r| {
            let r = r.load(Ordering::Relaxed);
            (u128::from(r >> 1), r & 1 == 1)
        }));
        // The parked tasks end now, after the CPU reading.
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            if let Err(err) = t.await
                && err.is_panic()
            {
                std::panic::resume_unwind(err.into_panic());
            }
        }
    }
    let (cpu_server, cpu_client) = cpu_after;
    let (cpu_server, cpu_client) = (
        cpu_server - cpu_before.0,
        cpu_client.saturating_sub(cpu_before.1),
    );
    let ok = done.iter().filter(|d| d.1).count();
    let mut lat: Vec<f64> = done
        .iter()
        .map(|d| d.0.saturating_sub(committed) as f64 / 1e6)
        .collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];

    println!(
        "waiters: {n} via {}",
        if keep_alive {
            "TCP loopback + hyper server (clients in a child process, kept alive)"
        } else if tcp {
            "TCP loopback + hyper server (clients in a child process)"
        } else if bare_mode && close {
            "a bare axum handler, oneshot (each task ends at its answer)"
        } else if bare_mode {
            "a bare axum handler, oneshot (tasks kept until all are answered)"
        } else if close {
            "router oneshot (each task ends at its answer)"
        } else {
            "router oneshot (tasks kept until all are answered)"
        }
    );
    println!(
        "server memory while parked: RSS +{:.1} MiB ({:.1} KiB per waiter)",
        rss_held as f64 / 1024.0,
        rss_held as f64 / n as f64
    );
    println!(
        "commit (fsync) took {:.2} ms",
        commit_took.as_secs_f64() * 1000.0
    );
    println!(
        "commit -> response: min {:.2} ms, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {ok}/{n} saw the change",
        lat[0],
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    let per = |ms: u64| ms as f64 * 1000.0 / n as f64;
    if tcp {
        println!(
            "CPU from the commit to the last answer: server {cpu_server} ms ({:.1} us per waiter), \
             clients {cpu_client} ms ({:.1} us per waiter)",
            per(cpu_server),
            per(cpu_client)
        );
    } else {
        println!(
            "CPU from the commit to the last answer: {cpu_server} ms ({:.1} us per waiter)",
            per(cpu_server)
        );
    }
    assert_eq!(ok, n, "some waiters did not get the change");
    if let Some((stop, server)) = server {
        let _ = stop.send(());
        let _ = server.await;
    }
}

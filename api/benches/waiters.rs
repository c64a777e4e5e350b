//! Memory of 10,000 concurrent long-poll waiters, and the time from a commit
//! to their responses.
//!
//! `cargo bench -p polld-api --bench waiters` (optionally `-- N` waiters and
//! `--tcp` to go through real loopback sockets and the hyper server instead
//! of `oneshot`; mind `ulimit -n`, each TCP waiter costs two descriptors).
//!
//! Memory is the growth of the process's resident set (VmRSS) from before
//! the waiters were started to when all of them are parked (allocator
//! overhead included; the workspace forbids the unsafe code a counting
//! global allocator would need); latency
//! is measured from the return of the commit (when the store publishes the
//! new seq) to each response's body being complete.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use polld_api::{ApiOptions, ApiState, BoxFuture, Engine, MetricsSource, ServeLimits};
use polld_config::Listen;
use polld_store::{ChangeKind, Outcome, Store, WatchState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

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
        },
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

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tcp = args.iter().any(|a| a == "--tcp");
    let n: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(n, tcp));
}

async fn run(n: usize, tcp: bool) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("bench.redb")).unwrap();
    store
        .apply_blocking(vec![outcome(vec![ChangeKind::WatchAdded])])
        .unwrap();
    let idle = Arc::new(Idle(AtomicBool::new(true)));
    let mut options = ApiOptions::new(Listen::Tcp("127.0.0.1:0".parse().unwrap()));
    options.max_waiters = n;
    options.max_wait = Duration::from_secs(120);
    let state = ApiState::new(store.clone(), idle.clone(), idle, options);
    let router = polld_api::router(state.clone());

    let mut server = None;
    let mut addr = None;
    if tcp {
        let listener = polld_api::bind(&Listen::Tcp("127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        let Some(Listen::Tcp(a)) = listener.local_addr() else {
            unreachable!()
        };
        addr = Some(a);
        let mut limits = ServeLimits::default();
        limits.max_connections = n + 16;
        let closer = state.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        server = Some((
            stop,
            tokio::spawn(listener.serve(router.clone(), limits, async move {
                let _ = stopped.await;
                closer.close();
            })),
        ));
    }

    // Warm up the paths once so lazily built statics are not counted.
    let warm = router
        .clone()
        .oneshot(
            Request::get("/v1/changes?after=0")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let _ = warm.into_body().collect().await.unwrap();

    let rss_before = rss_kib();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let router = router.clone();
        tasks.push(tokio::spawn(async move {
            let ok = match addr {
                None => {
                    let res = router
                        .oneshot(
                            Request::get("/v1/changes?after=1&wait=100s")
                                .body(Body::empty())
                                .unwrap(),
                        )
                        .await
                        .unwrap();
                    let body = res.into_body().collect().await.unwrap().to_bytes();
                    body.starts_with(b"{\"changes\":[{\"seq\":2")
                }
                Some(addr) => {
                    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                    s.write_all(
                        b"GET /v1/changes?after=1&wait=100s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                    )
                    .await
                    .unwrap();
                    let mut out = Vec::with_capacity(512);
                    s.read_to_end(&mut out).await.unwrap();
                    let want = b"{\"changes\":[{\"seq\":2,";
                    out.windows(want.len()).any(|w| w == want)
                }
            };
            (Instant::now(), ok)
        }));
    }
    // Bounded wait until every request is parked.
    let parked_by = Instant::now() + Duration::from_secs(120);
    while state.waiters() < n {
        assert!(
            Instant::now() < parked_by,
            "only {} of {n} parked",
            state.waiters()
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
    let commit_start = Instant::now();
    store
        .apply_blocking(vec![outcome(vec![ChangeKind::ErrorStarted])])
        .unwrap();
    let committed = Instant::now();

    let mut lat = Vec::with_capacity(n);
    let mut ok = 0;
    for t in tasks {
        let (done, good) = t.await.unwrap();
        lat.push(done.saturating_duration_since(committed));
        ok += usize::from(good);
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;

    println!(
        "waiters: {n} via {}",
        if tcp {
            "TCP loopback + hyper server"
        } else {
            "router oneshot"
        }
    );
    println!(
        "memory while parked: RSS +{:.1} MiB ({:.1} KiB per waiter)",
        rss_held as f64 / 1024.0,
        rss_held as f64 / n as f64
    );
    println!("commit (fsync) took {:.2} ms", ms(committed - commit_start));
    println!(
        "commit -> response: min {:.2} ms, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {ok}/{n} saw the change",
        ms(lat[0]),
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(pct(1.0))
    );
    assert_eq!(ok, n, "some waiters did not get the change");
    if let Some((stop, server)) = server {
        let _ = stop.send(());
        let _ = server.await;
    }
}

//! The ceiling of polld's HTTP stack: how many conditional GETs per second
//! the agent's own client, and the agent itself, make against a server when
//! nothing else runs (no scheduler, no store). `bench/engine` runs it next
//! to wrk and polld, so that polld's rate can be read against both.
//!
//! `cargo bench -p polld --bench http_stack -- BASE N [SECONDS] [CONCURRENCY]`
//!
//! BASE serves N files at `BASE/{i % 100}/{i}.json` (bench/engine's layout).
//! One warm-up pass GETs every file once for its ETag; then each mode runs
//! for SECONDS (default 10) with CONCURRENCY requests in flight (default 128,
//! bench/engine's `concurrency`), cycling over the N URLs with
//! `If-None-Match`:
//! - `reqwest`: a `reqwest::Client` set up as the agent's was until
//!   2026-12-01 (no redirects, no proxy, a pool of CONCURRENCY per host),
//!   the response read to its end.
//! - `client`: the agent's own client (`agent::transport`: hyper's
//!   connections in polld's own pool, with hyper-rustls' TLS connector), the
//!   response read to its end.
//! - `agent`: `Agent::poll`, what the engine calls per poll (request
//!   building, 304 handling, hints).
//! - `hyper`: hyper's HTTP/1 connection API with no client around it: each
//!   of the CONCURRENCY tasks owns one kept-alive connection and sends its
//!   requests on it (no pool, no URL parsing): the least a well-kept Rust
//!   HTTP stack costs here.
//!
//! CPU is this process's user + system time (`getrusage`), on a
//! runtime with as many workers as polld's (one per core).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::time::{TimeVal, TimeValLike};
use polld_config::{Config, Watch};
use polld_daemon::agent::{Agent, AgentOptions, OutcomeKind, PollRequest, transport};

// The allocator of the shipped binary (daemon/src/main.rs).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Counts of one run.
#[derive(Default)]
struct Counts {
    /// Answers, whatever their status.
    answers: AtomicU64,
    not_modified: AtomicU64,
    /// Requests that got no answer: not in the rate.
    errors: AtomicU64,
}

/// What one request came to.
enum Answer {
    NotModified,
    Other,
    /// No answer (refused, reset, timed out).
    Lost,
}

struct Target {
    watch: Watch,
    etag: Option<String>,
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let usage = "usage: http_stack BASE N [SECONDS] [CONCURRENCY]";
    let base = args.first().expect(usage).trim_end_matches('/').to_owned();
    let n: usize = args.get(1).expect(usage).parse().expect(usage);
    let seconds: u64 = args.get(2).map_or(10, |s| s.parse().expect(usage));
    let concurrency: usize = args.get(3).map_or(128, |s| s.parse().expect(usage));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(base, n, Duration::from_secs(seconds), concurrency));
}

async fn run(base: String, n: usize, window: Duration, concurrency: usize) {
    let agent = Agent::new(AgentOptions {
        user_agent: "polld-bench/1".into(),
        allow_private_redirects: false,
        idle_per_host: concurrency,
    })
    .expect("agent");
    let targets = Arc::new(warm_up(&base, n, concurrency).await);

    let reqwest = reqwest_client(concurrency);
    for mode in ["reqwest", "client", "agent", "hyper"] {
        let counts = Arc::new(Counts::default());
        let next = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + window;
        let cpu_before = cpu_seconds();
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(concurrency);
        for _ in 0..concurrency {
            let (agent, targets, counts, next, reqwest) = (
                agent.clone(),
                targets.clone(),
                counts.clone(),
                next.clone(),
                reqwest.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut connection = None;
                while Instant::now() < deadline {
                    let target = &targets[next.fetch_add(1, Ordering::Relaxed) % targets.len()];
                    let answer = match mode {
                        "reqwest" => reqwest_get(&reqwest, target).await,
                        "client" => client_get(&agent, target).await,
                        "agent" => agent_poll(&agent, target).await,
                        _ => hyper_get(&mut connection, target).await,
                    };
                    match answer {
                        Answer::NotModified => {
                            counts.answers.fetch_add(1, Ordering::Relaxed);
                            counts.not_modified.fetch_add(1, Ordering::Relaxed);
                        }
                        Answer::Other => {
                            counts.answers.fetch_add(1, Ordering::Relaxed);
                        }
                        Answer::Lost => {
                            counts.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        for task in tasks {
            task.await.expect("request task");
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu_before;
        let answers = counts.answers.load(Ordering::Relaxed) as f64;
        let not_modified = counts.not_modified.load(Ordering::Relaxed) as f64;
        println!(
            "{mode}: {:.0} req/s, {:.3} CPU-s / 1000, 304 ratio {:.3}, {} requests without an answer",
            answers / elapsed,
            cpu / answers * 1000.0,
            not_modified / answers,
            counts.errors.load(Ordering::Relaxed),
        );
    }
}

/// GETs every file once and keeps its ETag, `concurrency` at a time.
async fn warm_up(base: &str, n: usize, concurrency: usize) -> Vec<Target> {
    let client = reqwest_client(concurrency);
    let text: String = (0..n)
        .map(|i| {
            format!(
                "[[watch]]\nid = \"w{i}\"\nurl = \"{base}/{}/{i}.json\"\n",
                i % 100
            )
        })
        .collect();
    let config = Config::from_str_with_env(Path::new("bench.toml"), &text, |_| None)
        .unwrap_or_else(|e| panic!("{e}"));
    let watches: Vec<Watch> = config.watches.iter().map(|w| (**w).clone()).collect();
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(n);
    for watch in watches {
        let (client, gate) = (client.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("gate");
            let response = client
                .get(watch.url.clone())
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {}: {e}", watch.url));
            assert!(response.status().is_success(), "GET {}", watch.url);
            let etag = response
                .headers()
                .get(http::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            response.bytes().await.expect("body");
            Target { watch, etag }
        }));
    }
    let mut targets = Vec::with_capacity(n);
    for task in tasks {
        targets.push(task.await.expect("warm-up task"));
    }
    targets
}

/// reqwest as the agent set it up until 2026-12-01 (`build_client` then).
fn reqwest_client(idle_per_host: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent("polld-bench/1")
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(idle_per_host)
        .http1_max_headers(200)
        .tcp_nodelay(true)
        .build()
        .expect("reqwest client")
}

/// One conditional GET through the agent's client.
async fn client_get(agent: &Agent, target: &Target) -> Answer {
    let mut headers = http::HeaderMap::new();
    if let Some(etag) = target.etag.as_deref().and_then(|e| e.parse().ok()) {
        headers.insert(http::header::IF_NONE_MATCH, etag);
    }
    let user_agent = http::HeaderValue::from_static("polld-bench/1");
    let request = transport::request(
        &http::Method::GET,
        &target.watch.url,
        headers,
        None,
        &user_agent,
        true,
    )
    .expect("a valid request");
    match agent.transport().send(request).await {
        Ok(response) => read_answer(response).await,
        Err(_) => Answer::Lost,
    }
}

/// What a response came to, its body read to the end.
async fn read_answer<B>(response: http::Response<B>) -> Answer
where
    B: hyper::body::Body,
{
    use http_body_util::BodyExt;
    let status = response.status();
    match response.into_body().collect().await {
        Err(_) => Answer::Lost,
        Ok(_) if status == http::StatusCode::NOT_MODIFIED => Answer::NotModified,
        Ok(_) => Answer::Other,
    }
}

/// One conditional GET through reqwest.
async fn reqwest_get(client: &reqwest::Client, target: &Target) -> Answer {
    let mut request = client.get(target.watch.url.clone());
    if let Some(etag) = &target.etag {
        request = request.header(http::header::IF_NONE_MATCH, etag);
    }
    let Ok(response) = request.send().await else {
        return Answer::Lost;
    };
    let status = response.status();
    match response.bytes().await {
        Err(_) => Answer::Lost,
        Ok(_) if status == http::StatusCode::NOT_MODIFIED => Answer::NotModified,
        Ok(_) => Answer::Other,
    }
}

/// One conditional GET on this task's own hyper connection (opened on first
/// use, and again after a failure).
async fn hyper_get(
    connection: &mut Option<
        hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    >,
    target: &Target,
) -> Answer {
    let url = &target.watch.url;
    if connection.as_ref().is_none_or(|c| c.is_closed()) {
        let addr = (
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or(80),
        );
        let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
            return Answer::Lost;
        };
        let _ = stream.set_nodelay(true);
        let io = hyper_util::rt::TokioIo::new(stream);
        let Ok((sender, conn)) = hyper::client::conn::http1::handshake(io).await else {
            return Answer::Lost;
        };
        tokio::spawn(conn);
        *connection = Some(sender);
    }
    let sender = connection.as_mut().expect("opened above");
    if sender.ready().await.is_err() {
        *connection = None;
        return Answer::Lost;
    }
    let mut request = http::Request::get(url.path())
        .header(http::header::HOST, url.authority())
        .header(http::header::USER_AGENT, "polld-bench/1");
    if let Some(etag) = &target.etag {
        request = request.header(http::header::IF_NONE_MATCH, etag);
    }
    let request = request
        .body(http_body_util::Empty::new())
        .expect("a valid request");
    let Ok(response) = sender.send_request(request).await else {
        *connection = None;
        return Answer::Lost;
    };
    read_answer(response).await
}

/// One poll through the agent.
async fn agent_poll(agent: &Agent, target: &Target) -> Answer {
    let outcome = agent
        .poll(PollRequest {
            watch: &target.watch,
            url: &target.watch.url,
            etag: target.etag.as_deref(),
            last_modified: None,
            cursor: None,
            last_hash: None,
            cursor_page_hash: None,
            job: None,
        })
        .await;
    match outcome.kind {
        OutcomeKind::NotModified => Answer::NotModified,
        OutcomeKind::Failed { .. } if outcome.status.is_none() => Answer::Lost,
        _ => Answer::Other,
    }
}

/// User + system CPU seconds of this process.
fn cpu_seconds() -> f64 {
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let seconds = |t: TimeVal| t.num_microseconds() as f64 / 1e6;
    seconds(usage.user_time()) + seconds(usage.system_time())
}

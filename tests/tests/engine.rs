//! End-to-end tests of the engine: a real `polld run` against local servers,
//! checked through what the servers received and, after a clean stop,
//! through the store.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use polld_tests::{Polld, eventually};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Fast polling for tests: the policy allows sub-second intervals.
fn fast(id: &str, url: &str) -> String {
    format!(
        "[[watch]]\nid = \"{id}\"\nurl = \"{url}\"\ninterval = \"200ms\"\nmin_interval = \"100ms\"\nmax_interval = \"300ms\"\nbackoff = 1.0\njitter = 0.0\n\n"
    )
}

/// A server that answers every GET with 200 and the body `x`.
async fn serving_x() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("x"))
        .mount(&server)
        .await;
    server
}

async fn requests_to(server: &MockServer, p: &str) -> Vec<Request> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.url.path() == p)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn second_poll_is_conditional_and_a_304_makes_no_version() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/feed"))
        .and(header("if-none-match", "\"v1\""))
        .respond_with(ResponseTemplate::new(304).insert_header("etag", "\"v1\""))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/feed"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("etag", "\"v1\"")
                .insert_header("content-type", "application/json")
                .set_body_string("{\"v\":1}"),
        )
        .with_priority(2)
        .mount(&server)
        .await;

    let mut polld = Polld::start(&fast("feed", &format!("{}/feed", server.uri())));
    eventually(Duration::from_secs(10), "four polls", || async {
        (requests_to(&server, "/feed").await.len() >= 4).then_some(())
    })
    .await;
    assert!(polld.stop().success(), "log:\n{}", polld.log());

    let requests = requests_to(&server, "/feed").await;
    assert!(
        requests[0].headers.get("if-none-match").is_none(),
        "the first poll has no validator"
    );
    for later in &requests[1..] {
        assert_eq!(
            later.headers.get("if-none-match").unwrap(),
            "\"v1\"",
            "later polls are conditional"
        );
    }
    let store = polld.open_store();
    let state = store.watch("feed").unwrap().expect("state stored");
    assert_eq!(
        store.versions("feed").unwrap().len(),
        1,
        "a 304 makes no version"
    );
    assert_eq!(state.changed, 1);
    assert!(state.not_modified >= 3, "{state:?}");
    assert_eq!(state.etag.as_deref(), Some("\"v1\""));
}

/// Serves body A to the first `n` requests, then body B.
struct Flip {
    n: usize,
    seen: AtomicUsize,
}

impl Respond for Flip {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let i = self.seen.fetch_add(1, Ordering::SeqCst);
        let body = if i < self.n { "alpha\n" } else { "beta\n" };
        ResponseTemplate::new(200).set_body_string(body)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_creates_exactly_one_version() {
    let server = MockServer::start().await;
    Mock::given(path("/page"))
        .respond_with(Flip {
            n: 2,
            seen: AtomicUsize::new(0),
        })
        .mount(&server)
        .await;
    let mut polld = Polld::start(&fast("page", &format!("{}/page", server.uri())));
    eventually(Duration::from_secs(10), "five polls", || async {
        (requests_to(&server, "/page").await.len() >= 5).then_some(())
    })
    .await;
    assert!(polld.stop().success());
    let store = polld.open_store();
    let versions = store.versions("page").unwrap();
    assert_eq!(versions.len(), 2, "alpha then beta: {versions:?}");
    let (_, body) = store.body("page", versions[1].number).unwrap().unwrap();
    assert_eq!(body, b"beta\n");
    let state = store.watch("page").unwrap().unwrap();
    assert!(
        state.unchanged >= 2,
        "same body again counts as unchanged: {state:?}"
    );
}

/// Records when each request arrived; the first gets 429 + Retry-After: 2.
struct RateLimitOnce {
    times: Arc<Mutex<Vec<Instant>>>,
}

impl Respond for RateLimitOnce {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let mut times = self.times.lock().unwrap();
        times.push(Instant::now());
        if times.len() == 1 {
            ResponseTemplate::new(429).insert_header("retry-after", "2")
        } else {
            ResponseTemplate::new(200).set_body_string("ok")
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_on_429_delays_the_next_request() {
    let server = MockServer::start().await;
    let times = Arc::new(Mutex::new(Vec::new()));
    Mock::given(path("/limited"))
        .respond_with(RateLimitOnce {
            times: times.clone(),
        })
        .mount(&server)
        .await;
    let mut polld = Polld::start(&fast("limited", &format!("{}/limited", server.uri())));
    eventually(
        Duration::from_secs(10),
        "a request after the 429",
        || async { (times.lock().unwrap().len() >= 2).then_some(()) },
    )
    .await;
    assert!(polld.stop().success());
    let times = times.lock().unwrap();
    let gap = times[1] - times[0];
    assert!(
        gap >= Duration::from_secs(2),
        "the server asked for 2 s, polld waited {gap:?}"
    );
    let state = polld.open_store().watch("limited").unwrap().unwrap();
    assert_eq!(state.rate_limited, 1);
    assert_eq!(
        state.errors, 0,
        "429 counts as rate_limited, not as an error"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn per_host_limit_holds() {
    use axum::{Router, routing::get};
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let app = {
        let (in_flight, peak, served) = (in_flight.clone(), peak.clone(), served.clone());
        Router::new().route(
            "/{n}",
            get(move || async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(150)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                served.fetch_add(1, Ordering::SeqCst);
                "slow"
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let watches: String = (0..12)
        .map(|i| fast(&format!("w{i}"), &format!("http://{addr}/{i}")))
        .collect();
    let mut polld = Polld::start(&watches);
    eventually(Duration::from_secs(15), "40 polls", || async {
        (served.load(Ordering::SeqCst) >= 40).then_some(())
    })
    .await;
    assert!(polld.stop().success());
    // The test config sets per_host = 4 (and concurrency = 16).
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        peak <= 4,
        "at most 4 polls in flight to one host, saw {peak}"
    );
    assert!(peak >= 2, "polls do overlap up to the limit, saw {peak}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_with_a_broken_file_keeps_the_old_list_and_an_edited_file_reconciles() {
    let server = serving_x().await;
    let a = fast("a", &format!("{}/a", server.uri()));
    let b = fast("b", &format!("{}/b", server.uri()));
    let c = fast("c", &format!("{}/c", server.uri()));
    let mut polld = Polld::start(&format!("{a}{b}"));
    eventually(Duration::from_secs(10), "a and b polled", || async {
        let ok = !requests_to(&server, "/a").await.is_empty()
            && !requests_to(&server, "/b").await.is_empty();
        ok.then_some(())
    })
    .await;

    // A broken file: logged, and the old list keeps polling.
    let config = std::fs::read_to_string(polld.config_path()).unwrap();
    std::fs::write(
        polld.config_path(),
        format!("{config}\n[[watch]]\nid = \"BAD ID\"\n"),
    )
    .unwrap();
    polld.signal(Signal::SIGHUP);
    eventually(
        Duration::from_secs(10),
        "the refusal in the log",
        || async { polld.log().contains("reload refused").then_some(()) },
    )
    .await;
    let before = requests_to(&server, "/a").await.len();
    eventually(Duration::from_secs(10), "a still polled", || async {
        (requests_to(&server, "/a").await.len() >= before + 2).then_some(())
    })
    .await;
    assert!(
        polld.log().contains("watchlist.toml:"),
        "the problem is logged with its place"
    );

    // An edited file: b removed, c added.
    let header_end = config.find("[[watch]]").unwrap();
    std::fs::write(
        polld.config_path(),
        format!("{}{a}{c}", &config[..header_end]),
    )
    .unwrap();
    polld.signal(Signal::SIGHUP);
    eventually(Duration::from_secs(10), "c polled", || async {
        (!requests_to(&server, "/c").await.is_empty()).then_some(())
    })
    .await;
    let b_after_reload = requests_to(&server, "/b").await.len();
    let a_after_reload = requests_to(&server, "/a").await.len();
    eventually(Duration::from_secs(10), "a polled again", || async {
        (requests_to(&server, "/a").await.len() >= a_after_reload + 3).then_some(())
    })
    .await;
    // One poll of b may have been in flight at the reload.
    assert!(
        requests_to(&server, "/b").await.len() <= b_after_reload + 1,
        "b is no longer polled"
    );
    assert!(polld.stop().success());
    // Each watch the reload touched is named in the log.
    let log = polld.log();
    for (id, said) in [
        ("c", "watch added to the list"),
        ("b", "watch removed from the list"),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(said) && l.contains(&format!("watch={id}"))),
            "{said} for {id}; log:\n{log}"
        );
    }

    let store = polld.open_store();
    let b_state = store.watch("b").unwrap().expect("b's history is kept");
    assert_eq!(b_state.status.as_str(), "removed");
    assert_eq!(store.versions("b").unwrap().len(), 1);
    assert_eq!(store.watch("c").unwrap().unwrap().status.as_str(), "ok");
}

/// `polld reload` (the unit's `ExecReload=`) returns once the daemon has
/// reloaded: 0 with what changed, or 1 with the file's problems when the
/// daemon refused it. With no daemon running it says so.
#[tokio::test(flavor = "multi_thread")]
async fn polld_reload_waits_for_the_reload_and_reports_a_refusal() {
    let server = serving_x().await;
    let a = fast("a", &format!("{}/a", server.uri()));
    let b = fast("b", &format!("{}/b", server.uri()));
    let mut polld = Polld::start(&a);
    let status = polld.dir.path().join("state").join("reload-status.json");
    eventually(Duration::from_secs(10), "the daemon started", || async {
        status.exists().then_some(())
    })
    .await;
    let config = std::fs::read_to_string(polld.config_path()).unwrap();
    let reload = |polld: &Polld| {
        let out = std::process::Command::new(polld_tests::polld_bin())
            .args(["reload", "--timeout", "20s", "--config"])
            .arg(polld.config_path())
            .output()
            .expect("polld reload runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    std::fs::write(polld.config_path(), format!("{config}{b}")).unwrap();
    let (code, stdout, stderr) = reload(&polld);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.trim(), "reloaded: 1 added, 0 removed, 0 changed");
    // Returned after the reload: b is in the list by then.
    eventually(Duration::from_secs(10), "b polled", || async {
        (!requests_to(&server, "/b").await.is_empty()).then_some(())
    })
    .await;

    std::fs::write(
        polld.config_path(),
        format!("{config}{b}\n[[watch]]\nid = \"BAD ID\"\n"),
    )
    .unwrap();
    let (code, _, stderr) = reload(&polld);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("reload refused") && stderr.contains("watchlist.toml:"),
        "the refusal names the problem's place: {stderr}"
    );

    assert!(polld.stop().success());
    assert!(!status.exists(), "a stopped daemon leaves no status behind");
    let (code, _, stderr) = reload(&polld);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no running polld"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_zero_within_the_grace_period_and_keeps_every_change() {
    let server = MockServer::start().await;
    Mock::given(path("/slow"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string("slow body")
                .set_delay(Duration::from_millis(800)),
        )
        .mount(&server)
        .await;
    Mock::given(path("/fast"))
        .respond_with(Flip {
            n: 3,
            seen: AtomicUsize::new(0),
        })
        .mount(&server)
        .await;
    let watches = format!(
        "{}{}",
        fast("slow", &format!("{}/slow", server.uri())),
        fast("fast", &format!("{}/fast", server.uri()))
    );
    let mut polld = Polld::start(&watches);
    eventually(
        Duration::from_secs(10),
        "the flip and a slow poll in flight",
        || async {
            let fast_done = requests_to(&server, "/fast").await.len() >= 5;
            let slow_started = !requests_to(&server, "/slow").await.is_empty();
            (fast_done && slow_started).then_some(())
        },
    )
    .await;
    let started = Instant::now();
    let status = polld.stop();
    assert!(status.success(), "exit {status:?}; log:\n{}", polld.log());
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "stopped within the grace period"
    );
    let store = polld.open_store();
    assert_eq!(
        store.versions("fast").unwrap().len(),
        2,
        "both versions were committed"
    );
    assert!(store.watch("slow").unwrap().is_some());
    let log = polld.log();
    assert!(log.contains("stopped"), "clean stop logged:\n{log}");
}

/// "running" twice, then "completed".
struct JobStatus(AtomicUsize);

impl Respond for JobStatus {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.0.fetch_add(1, Ordering::SeqCst);
        let status = if n < 2 { "running" } else { "completed" };
        ResponseTemplate::new(200).set_body_string(format!("{{\"status\":\"{status}\"}}"))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_with_until_stops_once_it_holds_and_records_a_final_change() {
    let server = MockServer::start().await;
    Mock::given(path("/job"))
        .respond_with(JobStatus(AtomicUsize::new(0)))
        .mount(&server)
        .await;
    let watch = format!(
        "{}\nuntil = [\"json:/status=completed\"]\n",
        fast("job", &format!("{}/job", server.uri())).trim_end()
    );
    let mut polld = Polld::start(&watch);
    eventually(Duration::from_secs(10), "the completed answer", || async {
        (requests_to(&server, "/job").await.len() >= 3).then_some(())
    })
    .await;
    // Several intervals later, no further request came.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        requests_to(&server, "/job").await.len(),
        3,
        "polling stopped once `until` held"
    );
    assert!(polld.stop().success());
    let store = polld.open_store();
    let state = store.watch("job").unwrap().unwrap();
    assert_eq!(state.status.as_str(), "done");
    let changes = store.changes_after(0, 100).unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c.watch == "job" && c.kind.as_str() == "done"),
        "{changes:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_301_seen_on_three_polls_in_a_row_re_points_the_watch() {
    let server = MockServer::start().await;
    Mock::given(path("/old"))
        .respond_with(ResponseTemplate::new(301).insert_header("location", "/new"))
        .mount(&server)
        .await;
    Mock::given(path("/new"))
        .respond_with(ResponseTemplate::new(200).set_body_string("moved content"))
        .mount(&server)
        .await;
    let mut polld = Polld::start(&fast("moving", &format!("{}/old", server.uri())));
    eventually(
        Duration::from_secs(10),
        "polls going straight to /new",
        || async {
            let old = requests_to(&server, "/old").await.len();
            let new = requests_to(&server, "/new").await.len();
            (old >= 3 && new >= old + 2).then_some(())
        },
    )
    .await;
    let old_at_stop = requests_to(&server, "/old").await.len();
    assert!(polld.stop().success());
    assert_eq!(
        old_at_stop, 3,
        "after three 301s in a row the old URL is no longer asked"
    );
    let state = polld.open_store().watch("moving").unwrap().unwrap();
    assert_eq!(state.url, format!("{}/new", server.uri()));
    assert!(
        polld.log().contains("moved permanently"),
        "the move is logged"
    );
}

/// 200, then 500, then 429 + `Retry-After: 1`, then 304 for ever.
struct FailThenLimitThenFine(AtomicUsize);

impl Respond for FailThenLimitThenFine {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        match self.0.fetch_add(1, Ordering::SeqCst) {
            0 => ResponseTemplate::new(200)
                .insert_header("etag", "\"v1\"")
                .set_body_string("v1"),
            1 => ResponseTemplate::new(500),
            2 => ResponseTemplate::new(429).insert_header("retry-after", "1"),
            _ => ResponseTemplate::new(304).insert_header("etag", "\"v1\""),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_state_change_is_logged_once_and_named_for_what_it_is() {
    let server = MockServer::start().await;
    Mock::given(path("/flaky"))
        .respond_with(FailThenLimitThenFine(AtomicUsize::new(0)))
        .mount(&server)
        .await;
    let mut polld = Polld::start(&fast("flaky", &format!("{}/flaky", server.uri())));
    eventually(
        Duration::from_secs(15),
        "two 304s after the 429",
        || async { (requests_to(&server, "/flaky").await.len() >= 5).then_some(()) },
    )
    .await;
    assert!(polld.stop().success(), "log:\n{}", polld.log());
    let log = polld.log();
    let at = |line: &str| {
        let found: Vec<usize> = log.match_indices(line).map(|(i, _)| i).collect();
        assert_eq!(found.len(), 1, "{line:?} logged once; log:\n{log}");
        found[0]
    };
    // error started, then rate limited (not "recovered"), then the end of
    // the rate limit.
    let failing = at("poll failing");
    let limited = at("rate limited by the server");
    let over = at("rate limit over");
    assert!(failing < limited && limited < over, "in order; log:\n{log}");
    assert!(
        !log.contains("recovered"),
        "a 429 after an error is no recovery; log:\n{log}"
    );
}

/// Serves page 2 of a `link:next` feed: `two` to the first `n` requests,
/// then `two-b`; no validators, so every poll gets a 200.
struct LastPage {
    n: usize,
    seen: AtomicUsize,
}

impl Respond for LastPage {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let i = self.seen.fetch_add(1, Ordering::SeqCst);
        ResponseTemplate::new(200).set_body_string(if i < self.n { "two" } else { "two-b" })
    }
}

/// A `link:next` watch resumes at the last page it saw. That page alone,
/// unchanged, is nothing new: it used to make a version of its own after
/// every multi-page poll (its hash against the hash of all pages joined).
/// A change on it is still one version.
#[tokio::test(flavor = "multi_thread")]
async fn a_link_next_watch_makes_no_version_for_the_page_it_resumes_at() {
    use wiremock::matchers::query_param;
    let server = MockServer::start().await;
    Mock::given(path("/feed"))
        .and(query_param("page", "1"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("link", "</feed?page=2>; rel=\"next\"")
                .set_body_string("one"),
        )
        .mount(&server)
        .await;
    Mock::given(path("/feed"))
        .and(query_param("page", "2"))
        .respond_with(LastPage {
            n: 4,
            seen: AtomicUsize::new(0),
        })
        .mount(&server)
        .await;
    let watch = fast("feed", &format!("{}/feed?page=1", server.uri()))
        + "[watch.cursor]\nfrom = \"link:next\"\n";
    let mut polld = Polld::start(&watch);
    eventually(
        Duration::from_secs(10),
        "six requests of page 2",
        || async { (requests_to(&server, "/feed").await.len() >= 7).then_some(()) },
    )
    .await;
    assert!(polld.stop().success());
    let store = polld.open_store();
    let bodies: Vec<Vec<u8>> = store
        .versions("feed")
        .unwrap()
        .iter()
        .map(|v| store.body("feed", v.number).unwrap().unwrap().1)
        .collect();
    assert_eq!(bodies, [&b"one\ntwo"[..], &b"two-b"[..]]);
    let state = store.watch("feed").unwrap().unwrap();
    assert!(state.unchanged >= 3, "{state:?}");
}

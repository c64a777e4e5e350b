//! The polite agent against real loopback servers, the cases
//! `tests/polite_agent.rs` leaves out: the 202 job polled several times,
//! 303 after POST with its timing, `link:next` up to the page cap, JSON
//! cursors sent and stored, 304 freshening in one answer, credentials by
//! name, connection resets, slow endless bodies cut by the deadline, huge
//! headers, and `until` / `fail_if` on non-2xx final answers.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::watch;
use polld_config::Watch;
use polld_daemon::agent::{
    Agent, AgentOptions, Finished, MAX_JOB_STEPS, MAX_PAGES, MIN_JOB_CHECK_GAP, OutcomeKind,
    PollOutcome, PollRequest, kept_headers,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const UA: &str = "polld-agent-test/2 (+mailto:ops@example.org)";

fn agent() -> Agent {
    Agent::new(AgentOptions {
        user_agent: UA.into(),
        allow_private_redirects: false,
        idle_per_host: 8,
    })
    .unwrap()
}

async fn poll_with(
    watch: &Watch,
    etag: Option<&str>,
    last_modified: Option<&str>,
    cursor: Option<&str>,
) -> PollOutcome {
    agent()
        .poll(PollRequest {
            watch,
            url: &watch.url,
            etag,
            last_modified,
            cursor,
            last_hash: None,
            cursor_page_hash: None,
            job: None,
        })
        .await
}

async fn poll(watch: &Watch) -> PollOutcome {
    poll_with(watch, None, None, None).await
}

async fn received(server: &MockServer) -> Vec<Request> {
    server.received_requests().await.unwrap_or_default()
}

/// Mounts at `at` a 200 with `body` whose `rel=next` names a port nobody
/// listens on; returns that next page's URL.
async fn page_with_a_dead_next(server: &MockServer, at: &str, body: &str) -> String {
    let next = format!("{}/next", common::nobody_listens());
    Mock::given(path(at))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("link", format!("<{next}>; rel=\"next\"").as_str())
                .set_body_string(body),
        )
        .mount(server)
        .await;
    next
}

/// Records when each request arrived, then answers with `response`.
struct Timed {
    times: Arc<Mutex<Vec<Instant>>>,
    response: ResponseTemplate,
}

impl Respond for Timed {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        self.times.lock().unwrap().push(Instant::now());
        self.response.clone()
    }
}

/// Answers `responses` in order, then the last one for ever; records arrivals.
struct Sequence {
    times: Arc<Mutex<Vec<Instant>>>,
    served: std::sync::atomic::AtomicUsize,
    responses: Vec<ResponseTemplate>,
}

impl Respond for Sequence {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        self.times.lock().unwrap().push(Instant::now());
        let n = self
            .served
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.responses[n.min(self.responses.len() - 1)].clone()
    }
}

/// A raw TCP server on 127.0.0.1 for what wiremock cannot say: each of at
/// most 8 connections gets its request read, then `reply`.
async fn raw_server<F, Fut>(reply: F) -> String
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reply = Arc::new(reply);
    tokio::spawn(async move {
        for _ in 0..8 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 8192];
            let _ = stream.read(&mut buf).await;
            tokio::spawn(reply(stream));
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_304_with_new_cache_control_and_new_etag_freshens_both() {
    let server = MockServer::start().await;
    Mock::given(path("/r"))
        .respond_with(
            ResponseTemplate::new(304)
                .insert_header("etag", "\"x\"")
                .insert_header("last-modified", "Mon, 07 Nov 1994 08:49:37 GMT")
                .insert_header("cache-control", "max-age=90"),
        )
        .mount(&server)
        .await;
    let w = watch(&format!("{}/r", server.uri()), "");
    let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
    let out = poll_with(&w, Some("W/\"x\""), Some(lm), None).await;
    assert!(
        matches!(out.kind, OutcomeKind::NotModified),
        "{:?}",
        out.kind
    );
    let requests = received(&server).await;
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].headers["if-none-match"], "W/\"x\"");
    assert_eq!(requests[0].headers["if-modified-since"], lm);
    assert_eq!(requests[0].headers["user-agent"], UA);
    assert_eq!(out.etag.as_deref(), Some("\"x\""));
    assert_eq!(
        out.last_modified.as_deref(),
        Some("Mon, 07 Nov 1994 08:49:37 GMT")
    );
    assert_eq!(out.hints.fresh_for, Some(Duration::from_secs(90)));
    assert!(
        kept_headers(&out.headers)
            .iter()
            .any(|(k, v)| k == "cache-control" && v == "max-age=90"),
        "{:?}",
        out.headers
    );
}

#[tokio::test]
async fn retry_after_dates_through_poll_are_capped_but_reported_uncapped() {
    let server = MockServer::start().await;
    // RFC 850 form, far in the future.
    Mock::given(path("/far"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "Friday, 31-Dec-99 23:59:59 GMT"),
        )
        .mount(&server)
        .await;
    Mock::given(path("/soon"))
        .respond_with(ResponseTemplate::new(503).insert_header("retry-after", "45"))
        .mount(&server)
        .await;
    let w = watch(
        &format!("{}/far", server.uri()),
        "max_retry_after = \"10m\"",
    );
    let out = poll(&w).await;
    assert!(
        matches!(out.kind, OutcomeKind::RateLimited),
        "{:?}",
        out.kind
    );
    assert_eq!(out.status, Some(429));
    // A two-digit year 99 is read as 1999 or 2099 by different parsers; either
    // way the cap bounds the wait we act on.
    assert!(out.hints.not_before.unwrap() <= Duration::from_secs(600));
    let w = watch(
        &format!("{}/soon", server.uri()),
        "max_retry_after = \"10m\"",
    );
    let out = poll(&w).await;
    assert!(matches!(out.kind, OutcomeKind::RateLimited));
    assert_eq!(out.hints.retry_after, Some(Duration::from_secs(45)));
    assert_eq!(out.hints.not_before, Some(Duration::from_secs(45)));
    assert_eq!(out.hints.reason, Some("Retry-After"));
    assert_eq!(received(&server).await.len(), 2, "no retry inside a poll");
}

#[tokio::test]
async fn a_202_job_is_polled_no_sooner_than_retry_after_until_its_200() {
    let server = MockServer::start().await;
    let times = Arc::new(Mutex::new(Vec::new()));
    Mock::given(path("/report"))
        .respond_with(Timed {
            times: times.clone(),
            response: ResponseTemplate::new(202)
                .insert_header("location", "/status/9")
                .insert_header("retry-after", "1"),
        })
        .mount(&server)
        .await;
    Mock::given(path("/status/9"))
        .respond_with(Sequence {
            times: times.clone(),
            served: Default::default(),
            responses: vec![
                ResponseTemplate::new(202)
                    .insert_header("location", "/status/9")
                    .insert_header("retry-after", "1"),
                ResponseTemplate::new(200).set_body_string("{\"state\":\"done\"}"),
            ],
        })
        .mount(&server)
        .await;
    let w = watch(
        &format!("{}/report", server.uri()),
        "timeout = \"8s\"\nuntil = [\"json:/state=done\"]",
    );
    let out = poll(&w).await;
    match &out.kind {
        OutcomeKind::Changed { body, .. } => assert_eq!(&body[..], b"{\"state\":\"done\"}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(out.status, Some(200));
    assert!(matches!(out.finished, Some(Finished::Done { .. })));
    let times = times.lock().unwrap().clone();
    assert_eq!(times.len(), 3, "start, one 202 status, the final 200");
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(950),
            "a status check came sooner than Retry-After: {:?}",
            pair[1] - pair[0]
        );
    }
    for request in received(&server).await {
        assert_eq!(request.method.as_str(), "GET");
        assert_eq!(request.headers["user-agent"], UA);
    }
}

#[tokio::test]
async fn a_202_job_saying_retry_after_0_is_still_checked_at_most_once_a_second() {
    let server = MockServer::start().await;
    Mock::given(path("/job"))
        .respond_with(
            ResponseTemplate::new(202)
                .insert_header("location", "/job")
                .insert_header("retry-after", "0"),
        )
        .mount(&server)
        .await;
    // 1.5 s leave room for the first request and one status check a
    // second later; the next check would pass the deadline.
    let w = watch(
        &format!("{}/job", server.uri()),
        "timeout = \"1500ms\"\nconnect_timeout = \"1s\"",
    );
    let out = poll(&w).await;
    assert!(
        matches!(out.kind, OutcomeKind::JobPending { .. }),
        "{:?}",
        out.kind
    );
    assert_eq!(out.hints.retry_after, Some(MIN_JOB_CHECK_GAP));
    assert_eq!(
        received(&server).await.len(),
        2,
        "the first request and one status check, not {MAX_JOB_STEPS} back to back"
    );
}

#[tokio::test]
async fn a_303_after_post_is_a_get_after_its_retry_after() {
    let server = MockServer::start().await;
    let times = Arc::new(Mutex::new(Vec::new()));
    Mock::given(method("POST"))
        .and(path("/submit"))
        .respond_with(Timed {
            times: times.clone(),
            response: ResponseTemplate::new(303)
                .insert_header("location", "/result")
                .insert_header("retry-after", "1"),
        })
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/result"))
        .respond_with(Timed {
            times: times.clone(),
            response: ResponseTemplate::new(200).set_body_string("ok"),
        })
        .mount(&server)
        .await;
    let w = watch(
        &format!("{}/submit", server.uri()),
        "method = \"POST\"\nbody = \"q=1\"",
    );
    let out = poll(&w).await;
    assert!(
        matches!(out.kind, OutcomeKind::Changed { .. }),
        "{:?}",
        out.kind
    );
    assert!(out.moved_permanently.is_none(), "a 303 re-points nothing");
    let requests = received(&server).await;
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].method.as_str(), "POST");
    assert_eq!(&requests[0].body[..], b"q=1");
    assert_eq!(requests[1].method.as_str(), "GET");
    assert!(requests[1].body.is_empty(), "the GET carries no body");
    let times = times.lock().unwrap().clone();
    assert!(times[1] - times[0] >= Duration::from_millis(950));
}

#[tokio::test]
async fn a_303_retry_after_beyond_the_deadline_leaves_its_target_to_the_next_poll() {
    let server = MockServer::start().await;
    Mock::given(path("/wait"))
        .respond_with(
            ResponseTemplate::new(303)
                .insert_header("location", "/later")
                .insert_header("retry-after", "30"),
        )
        .mount(&server)
        .await;
    let w = watch(&format!("{}/wait", server.uri()), "");
    let started = Instant::now();
    let out = poll(&w).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "did not sleep 30 s"
    );
    match &out.kind {
        OutcomeKind::JobPending { job } => assert_eq!(job.path(), "/later"),
        other => panic!("{other:?}"),
    }
    assert_eq!(out.hints.not_before, Some(Duration::from_secs(30)));
    assert_eq!(received(&server).await.len(), 1, "/later not requested yet");
}

#[tokio::test]
async fn a_301_chain_then_302_does_not_re_point_and_a_308_chain_does() {
    let server = MockServer::start().await;
    Mock::given(path("/p1"))
        .respond_with(ResponseTemplate::new(301).insert_header("location", "/p2"))
        .mount(&server)
        .await;
    Mock::given(path("/p2"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", "/final"))
        .mount(&server)
        .await;
    Mock::given(path("/q1"))
        .respond_with(ResponseTemplate::new(308).insert_header("location", "/q2"))
        .mount(&server)
        .await;
    Mock::given(path("/q2"))
        .respond_with(ResponseTemplate::new(301).insert_header("location", "/final"))
        .mount(&server)
        .await;
    Mock::given(path("/final"))
        .respond_with(ResponseTemplate::new(200).set_body_string("f"))
        .mount(&server)
        .await;
    let out = poll(&watch(&format!("{}/p1", server.uri()), "")).await;
    assert!(matches!(out.kind, OutcomeKind::Changed { .. }));
    // The 301 says /p2 is the new home; the 302 after it is temporary.
    assert_eq!(
        out.moved_permanently
            .map(|u| u.path().to_owned())
            .as_deref(),
        Some("/p2")
    );
    let out = poll(&watch(&format!("{}/q1", server.uri()), "")).await;
    assert_eq!(
        out.moved_permanently
            .map(|u| u.path().to_owned())
            .as_deref(),
        Some("/final")
    );
}

#[tokio::test]
async fn a_self_redirect_loop_fails_not_retryable_with_bounded_requests() {
    let server = MockServer::start().await;
    Mock::given(path("/self"))
        .respond_with(ResponseTemplate::new(307).insert_header("location", "/self"))
        .mount(&server)
        .await;
    let out = poll(&watch(&format!("{}/self", server.uri()), "")).await;
    assert!(
        matches!(&out.kind, OutcomeKind::Failed { retryable: false, error } if error.contains("loop")),
        "{:?}",
        out.kind
    );
    assert_eq!(received(&server).await.len(), 1);
}

#[tokio::test]
async fn credentials_by_name_stay_home_but_same_origin_hops_keep_them() {
    let home = MockServer::start().await;
    let away = MockServer::start().await;
    Mock::given(path("/a"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", "/b"))
        .mount(&home)
        .await;
    Mock::given(path("/b"))
        .respond_with(
            ResponseTemplate::new(307).insert_header("location", format!("{}/c", away.uri())),
        )
        .mount(&home)
        .await;
    Mock::given(path("/c"))
        .respond_with(ResponseTemplate::new(200).set_body_string("c"))
        .mount(&away)
        .await;
    let w = watch(
        &format!("{}/a", home.uri()),
        "headers = { Authorization = \"Bearer t\", Cookie = \"s=1\", X-Api-Key = \"k\", X-Auth-Key = \"k\", apikey = \"k\", X-Secret = \"k\", X-From-Env = \"${NOT_SET:-e}\", X-Trace = \"keep\" }",
    );
    let out = poll_with(
        &w,
        Some("\"e\""),
        Some("Sun, 06 Nov 1994 08:49:37 GMT"),
        None,
    )
    .await;
    assert!(
        matches!(out.kind, OutcomeKind::Changed { .. }),
        "{:?}",
        out.kind
    );
    let at_home = received(&home).await;
    assert_eq!(at_home.len(), 2);
    for request in &at_home {
        assert_eq!(request.headers["authorization"], "Bearer t");
        assert_eq!(request.headers["x-api-key"], "k");
        assert_eq!(request.headers["if-none-match"], "\"e\"");
    }
    let at_away = received(&away).await;
    assert_eq!(at_away.len(), 1);
    let h = &at_away[0].headers;
    for name in [
        "authorization",
        "cookie",
        "x-api-key",
        "x-auth-key",
        "apikey",
        "x-secret",
        "x-from-env",
        "if-none-match",
        "if-modified-since",
    ] {
        assert!(h.get(name).is_none(), "{name} went to another origin");
    }
    assert_eq!(h["x-trace"], "keep");
    assert_eq!(h["user-agent"], UA);
}

#[tokio::test]
async fn a_json_cursor_is_sent_and_the_new_one_returned() {
    let server = MockServer::start().await;
    Mock::given(path("/events"))
        .and(query_param("since", "41"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{\"items\":[42],\"next\":42}"))
        .mount(&server)
        .await;
    Mock::given(path("/events"))
        .and(query_param("since", "42"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{\"items\":[],\"next\":42}"))
        .mount(&server)
        .await;
    let w = watch(
        &format!("{}/events?kind=all", server.uri()),
        "[watch.cursor]\nparam = \"since\"\nfrom = \"json:/next\"\ninitial = \"0\"",
    );
    let out = poll_with(&w, None, None, Some("41")).await;
    assert_eq!(
        out.cursor.as_deref(),
        Some("42"),
        "a number pointer is a cursor too"
    );
    match &out.kind {
        OutcomeKind::Changed { body, .. } => assert_eq!(
            &body[..],
            b"{\"items\":[42],\"next\":42}",
            "the page that gave nothing new is not joined in"
        ),
        other => panic!("{other:?}"),
    }
    let requests = received(&server).await;
    assert_eq!(requests.len(), 2, "followed until a page gave nothing new");
    let query: Vec<(String, String)> = requests[0]
        .url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    assert!(query.contains(&("kind".into(), "all".into())), "{query:?}");
    assert!(query.contains(&("since".into(), "41".into())), "{query:?}");
    // Polled again from the stored cursor: nothing new, no new cursor to store.
    let before = received(&server).await.len();
    let out = poll_with(&w, None, None, Some("42")).await;
    assert_eq!(out.cursor, None, "keep the stored cursor");
    assert!(
        matches!(out.kind, OutcomeKind::Unchanged { .. }),
        "a page with no new content makes no version: {:?}",
        out.kind
    );
    assert_eq!(received(&server).await.len() - before, 1);
}

/// Every page links to the next one, for ever.
struct EndlessPages {
    base: String,
}

impl Respond for EndlessPages {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let page: u64 = request
            .url
            .query_pairs()
            .find(|(k, _)| k == "page")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(1);
        ResponseTemplate::new(200)
            .insert_header(
                "link",
                format!("<{}/list?page={}>; rel=\"next\"", self.base, page + 1),
            )
            .insert_header("etag", format!("\"e{page}\"").as_str())
            .insert_header("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")
            .set_body_string(format!("page {page}"))
    }
}

#[tokio::test]
async fn link_next_is_followed_up_to_the_cap_and_the_last_next_is_stored() {
    let server = MockServer::start().await;
    Mock::given(path("/list"))
        .respond_with(EndlessPages { base: server.uri() })
        .mount(&server)
        .await;
    let w = watch(
        &format!("{}/list?page=1", server.uri()),
        "[watch.cursor]\nfrom = \"link:next\"",
    );
    let out = poll(&w).await;
    assert_eq!(received(&server).await.len(), MAX_PAGES, "pages capped");
    let expected = format!("{}/list?page={}", server.uri(), MAX_PAGES + 1);
    assert_eq!(out.cursor.as_deref(), Some(expected.as_str()));
    // The next poll starts at the stored cursor.
    let stored = out.cursor.unwrap();
    let before = received(&server).await.len();
    let _ = poll_with(&w, None, None, Some(&stored)).await;
    let requests = received(&server).await;
    // (wiremock rebuilds the URL from the Host header: compare path and query.)
    assert_eq!(
        requests[before].url.query(),
        Some(format!("page={}", MAX_PAGES + 1).as_str())
    );
}

#[tokio::test]
async fn a_410_on_a_cursored_request_resets_but_not_without_a_cursor() {
    let server = MockServer::start().await;
    Mock::given(path("/gone"))
        .respond_with(ResponseTemplate::new(410))
        .mount(&server)
        .await;
    let w = watch(
        &format!("{}/gone", server.uri()),
        "[watch.cursor]\nparam = \"after\"\nfrom = \"header:X-Next\"",
    );
    let out = poll_with(&w, None, None, Some("zz")).await;
    assert!(matches!(out.kind, OutcomeKind::Gone));
    assert!(out.cursor_reset);
    assert_eq!(received(&server).await[0].url.query(), Some("after=zz"));
    let out = poll(&w).await;
    assert!(!out.cursor_reset, "nothing to reset");
}

#[tokio::test]
async fn until_and_fail_if_judge_a_non_2xx_final_answer() {
    let server = MockServer::start().await;
    Mock::given(path("/missing"))
        .respond_with(ResponseTemplate::new(404).set_body_string("{\"error\":\"no such job\"}"))
        .mount(&server)
        .await;
    Mock::given(path("/deleted"))
        .respond_with(ResponseTemplate::new(410))
        .mount(&server)
        .await;
    let w = watch(
        &format!("{}/missing", server.uri()),
        "fail_if = [\"status=404\"]",
    );
    let out = poll(&w).await;
    assert!(matches!(out.kind, OutcomeKind::Failed { .. }));
    assert_eq!(
        out.finished,
        Some(Finished::Failed {
            condition: "status=404".into()
        })
    );
    let w = watch(
        &format!("{}/missing", server.uri()),
        "fail_if = [\"json:/error=no such job\"]",
    );
    assert!(
        matches!(poll(&w).await.finished, Some(Finished::Failed { .. })),
        "the error body is judged too"
    );
    let w = watch(
        &format!("{}/deleted", server.uri()),
        "until = [\"status=410\"]",
    );
    assert!(matches!(
        poll(&w).await.finished,
        Some(Finished::Done { .. })
    ));
}

#[tokio::test]
async fn a_304_is_not_judged_by_until() {
    let server = MockServer::start().await;
    Mock::given(path("/n"))
        .respond_with(ResponseTemplate::new(304).insert_header("x-state", "done"))
        .mount(&server)
        .await;
    let w = watch(
        &format!("{}/n", server.uri()),
        "until = [\"header:X-State=done\"]",
    );
    let out = poll_with(&w, Some("\"a\""), None, None).await;
    assert!(matches!(out.kind, OutcomeKind::NotModified));
    assert_eq!(out.finished, None);
}

#[tokio::test]
async fn a_connection_reset_before_any_answer_fails_retryable() {
    let base = raw_server(|s| async move {
        // SO_LINGER 0 then close: an RST instead of a FIN.
        let _ = s.set_zero_linger();
        drop(s);
    })
    .await;
    let out = poll(&watch(&format!("{base}/"), "")).await;
    assert!(
        matches!(
            &out.kind,
            OutcomeKind::Failed {
                retryable: true,
                ..
            }
        ),
        "{:?}",
        out.kind
    );
    assert_eq!(out.status, None);
}

#[tokio::test]
async fn a_reset_mid_body_fails_retryable() {
    let base = raw_server(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
            .await;
        let _ = s.flush().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = s.set_zero_linger();
        drop(s);
    })
    .await;
    let out = poll(&watch(&format!("{base}/"), "")).await;
    assert!(
        matches!(
            &out.kind,
            OutcomeKind::Failed {
                retryable: true,
                ..
            }
        ),
        "{:?}",
        out.kind
    );
}

#[tokio::test]
async fn a_slow_endless_body_is_cut_by_the_deadline() {
    let base = raw_server(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await;
        // One small chunk every 100 ms: never stalls, never ends, never large.
        for _ in 0..600 {
            if s.write_all(b"4\r\ndrip\r\n").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let w = watch(
        &format!("{base}/"),
        "timeout = \"2s\"\nmax_body = \"10MiB\"",
    );
    let started = Instant::now();
    let out = poll(&w).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(&out.kind, OutcomeKind::Failed { retryable: true, error } if error.contains("timeout")),
        "{:?}",
        out.kind
    );
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    assert!(elapsed >= Duration::from_millis(1900), "{elapsed:?}");
    // What dripped in before the deadline is counted (about 20 × 4 bytes).
    assert!(
        (40..=120).contains(&out.bytes_received),
        "{}",
        out.bytes_received
    );
}

#[tokio::test]
async fn a_stall_before_the_headers_fails_within_the_timeout() {
    let base = raw_server(|s| async move {
        tokio::time::sleep(Duration::from_secs(20)).await;
        drop(s);
    })
    .await;
    let w = watch(&format!("{base}/"), "timeout = \"2s\"");
    let started = Instant::now();
    let out = poll(&w).await;
    assert!(
        matches!(
            &out.kind,
            OutcomeKind::Failed {
                retryable: true,
                ..
            }
        ),
        "{:?}",
        out.kind
    );
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn one_huge_header_fails_without_panic() {
    let base = raw_server(|mut s| async move {
        let mut response = String::from("HTTP/1.1 200 OK\r\nX-Big: ");
        response.push_str(&"a".repeat(2 << 20));
        response.push_str("\r\nContent-Length: 2\r\n\r\nok");
        let _ = s.write_all(response.as_bytes()).await;
    })
    .await;
    let out = poll(&watch(&format!("{base}/"), "")).await;
    assert!(
        matches!(&out.kind, OutcomeKind::Failed { .. }),
        "{:?}",
        out.kind
    );
}

#[tokio::test]
async fn a_content_length_above_max_body_is_refused_before_reading() {
    let server = MockServer::start().await;
    Mock::given(path("/big"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![b'x'; 300_000]))
        .mount(&server)
        .await;
    let w = watch(&format!("{}/big", server.uri()), "max_body = \"100KiB\"");
    let out = poll(&w).await;
    assert!(
        matches!(&out.kind, OutcomeKind::Failed { retryable: false, error } if error.contains("max_body")),
        "{:?}",
        out.kind
    );
}

#[tokio::test]
async fn the_watch_connect_timeout_bounds_a_connect_that_hangs() {
    // A listener with a backlog of 0 that never accepts: once its queue is
    // full, the kernel drops further SYNs and a connect hangs.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        // Each filler either connects (filling the queue) or hangs itself.
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(stream)) => fillers.push(stream),
            _ => break,
        }
    }
    let w = watch(
        &format!("http://{addr}/"),
        "timeout = \"4s\"\nconnect_timeout = \"1s\"",
    );
    let started = Instant::now();
    let out = poll(&w).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(
            &out.kind,
            OutcomeKind::Failed {
                retryable: true,
                ..
            }
        ),
        "{:?}",
        out.kind
    );
    assert!(
        elapsed < Duration::from_millis(2500),
        "connect_timeout = 1s was not applied: {elapsed:?} ({:?})",
        out.kind
    );
    drop(listener);
}

fn hash(body: &[u8]) -> [u8; 32] {
    *blake3::hash(body).as_bytes()
}

async fn poll_hash(watch: &Watch, etag: Option<&str>, last_hash: [u8; 32]) -> PollOutcome {
    agent()
        .poll(PollRequest {
            watch,
            url: &watch.url,
            etag,
            last_modified: None,
            cursor: None,
            last_hash: Some(last_hash),
            cursor_page_hash: None,
            job: None,
        })
        .await
}

#[tokio::test]
async fn change_is_judged_by_hash_not_by_etag() {
    let server = MockServer::start().await;
    for (p, etag, body) in [
        ("/same", "\"v1\"", "same body"),
        ("/new-etag", "\"v2\"", "same body"),
        ("/changed", "\"v1\"", "<p>new</p>"),
    ] {
        Mock::given(path(p))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("etag", etag)
                    .set_body_raw(body, "text/html; charset=utf-8"),
            )
            .mount(&server)
            .await;
    }
    let stored = hash(b"same body");
    let out = poll_hash(
        &watch(&format!("{}/same", server.uri()), ""),
        Some("\"v1\""),
        stored,
    )
    .await;
    assert!(
        matches!(out.kind, OutcomeKind::Unchanged { hash } if hash == stored),
        "{:?}",
        out.kind
    );
    let out = poll_hash(
        &watch(&format!("{}/new-etag", server.uri()), ""),
        Some("\"v1\""),
        stored,
    )
    .await;
    assert!(
        matches!(out.kind, OutcomeKind::Unchanged { .. }),
        "{:?}",
        out.kind
    );
    assert_eq!(
        out.etag.as_deref(),
        Some("\"v2\""),
        "the new ETag is stored"
    );
    let out = poll_hash(
        &watch(&format!("{}/changed", server.uri()), ""),
        Some("\"v1\""),
        stored,
    )
    .await;
    match out.kind {
        OutcomeKind::Changed {
            body,
            hash: h,
            content_type,
        } => {
            assert_eq!(&body[..], b"<p>new</p>");
            assert_eq!(h, hash(b"<p>new</p>"));
            assert_eq!(content_type.as_deref(), Some("text/html; charset=utf-8"));
        }
        other => panic!("{other:?}"),
    }
    for request in received(&server).await {
        assert_eq!(request.headers["if-none-match"], "\"v1\"");
    }
}

#[tokio::test]
async fn a_304_without_an_etag_keeps_the_stored_one() {
    let server = MockServer::start().await;
    Mock::given(path("/r"))
        .respond_with(ResponseTemplate::new(304))
        .expect(1)
        .mount(&server)
        .await;
    let out = poll_with(
        &watch(&format!("{}/r", server.uri()), ""),
        Some("W/\"7\""),
        None,
        None,
    )
    .await;
    assert!(matches!(out.kind, OutcomeKind::NotModified));
    assert_eq!(out.etag.as_deref(), Some("W/\"7\""));
    assert_eq!(
        received(&server).await[0].headers["if-none-match"],
        "W/\"7\""
    );
}

#[tokio::test]
async fn a_far_future_retry_after_is_capped_and_rate_limit_headers_are_read() {
    let server = MockServer::start().await;
    Mock::given(path("/far"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "Fri, 31 Dec 2100 23:59:59 GMT"),
        )
        .mount(&server)
        .await;
    let reset_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    Mock::given(path("/xrl"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-ratelimit-remaining", "0")
                .insert_header("x-ratelimit-reset", reset_at.to_string().as_str())
                .set_body_string("x"),
        )
        .mount(&server)
        .await;
    Mock::given(path("/rl"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("ratelimit", "\"default\";r=0;t=10")
                .set_body_string("x"),
        )
        .mount(&server)
        .await;
    let out = poll(&watch(
        &format!("{}/far", server.uri()),
        "max_retry_after = \"10m\"",
    ))
    .await;
    assert!(matches!(out.kind, OutcomeKind::RateLimited));
    assert_eq!(out.hints.not_before, Some(Duration::from_secs(600)));
    assert!(
        out.hints.retry_after.unwrap() > Duration::from_secs(600),
        "reported uncapped"
    );
    let out = poll(&watch(&format!("{}/xrl", server.uri()), "")).await;
    let reset = out.hints.rate_limit_reset.expect("epoch-seconds reset");
    assert!(
        reset >= Duration::from_secs(50) && reset <= Duration::from_secs(61),
        "{reset:?}"
    );
    assert_eq!(out.hints.reason, Some("RateLimit"));
    let out = poll(&watch(&format!("{}/rl", server.uri()), "")).await;
    assert_eq!(out.hints.rate_limit_reset, Some(Duration::from_secs(10)));
    assert_eq!(out.hints.not_before, Some(Duration::from_secs(10)));
}

#[tokio::test]
async fn eleven_hops_and_a_file_target_fail_not_retryable() {
    let server = MockServer::start().await;
    for i in 0..15 {
        Mock::given(path(format!("/h{i}")))
            .respond_with(
                ResponseTemplate::new(302).insert_header("location", format!("/h{}", i + 1)),
            )
            .mount(&server)
            .await;
    }
    Mock::given(path("/file"))
        .respond_with(ResponseTemplate::new(301).insert_header("location", "file:///etc/passwd"))
        .mount(&server)
        .await;
    let out = poll(&watch(&format!("{}/h0", server.uri()), "")).await;
    assert!(
        matches!(&out.kind, OutcomeKind::Failed { retryable: false, error } if error.contains("redirects")),
        "{:?}",
        out.kind
    );
    assert_eq!(
        received(&server).await.len(),
        11,
        "the first request and 10 hops"
    );
    let out = poll(&watch(&format!("{}/file", server.uri()), "")).await;
    assert!(
        matches!(&out.kind, OutcomeKind::Failed { retryable: false, error } if error.contains("file:")),
        "{:?}",
        out.kind
    );
    assert_eq!(received(&server).await.len(), 12);
}

#[tokio::test]
async fn a_header_cursor_is_read_and_sent() {
    let server = MockServer::start().await;
    Mock::given(path("/h"))
        .and(query_param("after", "c1"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-next", "c1")
                .set_body_string("none"),
        )
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(path("/h"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-next", "c1")
                .set_body_string("first"),
        )
        .mount(&server)
        .await;
    let w = watch(
        &format!("{}/h", server.uri()),
        "[watch.cursor]\nparam = \"after\"\nfrom = \"header:X-Next\"",
    );
    let out = poll(&w).await;
    assert_eq!(out.cursor.as_deref(), Some("c1"));
    let requests = received(&server).await;
    assert_eq!(requests[0].url.query(), None, "no cursor yet");
    assert_eq!(requests[1].url.query(), Some("after=c1"));
    match out.kind {
        OutcomeKind::Changed { body, .. } => assert_eq!(&body[..], b"first"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_gzip_bomb_is_cut_at_max_body() {
    use std::io::Write;
    // 32 MiB of zeros compress to ~32 KiB.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..32 {
        encoder.write_all(&zeros).unwrap();
    }
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < 100_000);
    let server = MockServer::start().await;
    Mock::given(path("/bomb"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-encoding", "gzip")
                .set_body_bytes(bomb),
        )
        .mount(&server)
        .await;
    let out = poll(&watch(
        &format!("{}/bomb", server.uri()),
        "max_body = \"512KiB\"",
    ))
    .await;
    assert!(
        matches!(&out.kind, OutcomeKind::Failed { retryable: false, error } if error.contains("max_body")),
        "{:?}",
        out.kind
    );
    // The decoded bytes up to the cut are counted, not zero.
    assert!(
        out.bytes_received > 512 * 1024 && out.bytes_received <= 512 * 1024 + 16 * 1024,
        "{}",
        out.bytes_received
    );
}

#[tokio::test]
async fn an_endless_chunked_body_is_cut_at_max_body() {
    let base = raw_server(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await;
        let chunk = format!("{:x}\r\n{}\r\n", 4096, "z".repeat(4096));
        for _ in 0..100_000 {
            if s.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let out = poll(&watch(&format!("{base}/"), "max_body = \"128KiB\"")).await;
    assert!(
        matches!(&out.kind, OutcomeKind::Failed { error, .. } if error.contains("max_body")),
        "{:?}",
        out.kind
    );
}

#[tokio::test]
async fn a_stall_after_the_headers_fails_within_the_timeout() {
    let base = raw_server(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhalf")
            .await;
        tokio::time::sleep(Duration::from_secs(20)).await;
    })
    .await;
    let started = Instant::now();
    let out = poll(&watch(&format!("{base}/"), "timeout = \"2s\"")).await;
    assert!(
        matches!(
            &out.kind,
            OutcomeKind::Failed {
                retryable: true,
                ..
            }
        ),
        "{:?}",
        out.kind
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn two_thousand_headers_fail_without_panic() {
    let base = raw_server(|mut s| async move {
        let mut response = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..2000 {
            response.push_str(&format!("X-N{i}: {i}\r\n"));
        }
        response.push_str("Content-Length: 2\r\n\r\nok");
        let _ = s.write_all(response.as_bytes()).await;
    })
    .await;
    let out = poll(&watch(&format!("{base}/"), "")).await;
    assert!(
        matches!(&out.kind, OutcomeKind::Failed { .. }),
        "{:?}",
        out.kind
    );
}

#[tokio::test]
async fn until_and_fail_if_on_a_200() {
    let server = MockServer::start().await;
    Mock::given(path("/ok"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-phase", "done")
                .set_body_string("{\"state\":\"ok\"}"),
        )
        .mount(&server)
        .await;
    Mock::given(path("/bad"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{\"state\":\"error\"}"))
        .mount(&server)
        .await;
    let w = watch(
        &format!("{}/ok", server.uri()),
        "until = [\"json:/state=ok\", \"header:X-Phase=done\"]\nfail_if = [\"json:/state=error\"]",
    );
    assert!(matches!(
        poll(&w).await.finished,
        Some(Finished::Done { .. })
    ));
    let w = watch(
        &format!("{}/bad", server.uri()),
        "until = [\"json:/state=ok\"]\nfail_if = [\"json:/state=error\"]",
    );
    assert_eq!(
        poll(&w).await.finished,
        Some(Finished::Failed {
            condition: "json:/state=error".into()
        })
    );
    let w = watch(
        &format!("{}/ok", server.uri()),
        "until = [\"json:/state=ok\", \"header:X-Phase=later\"]",
    );
    assert_eq!(poll(&w).await.finished, None, "every until must hold");
}

#[tokio::test]
async fn a_link_next_that_is_not_http_is_neither_followed_nor_stored() {
    let server = MockServer::start().await;
    Mock::given(path("/p"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("link", "<ftp://127.0.0.1/next>; rel=\"next\"")
                .set_body_string("page one"),
        )
        .mount(&server)
        .await;
    let w = watch(
        &format!("{}/p", server.uri()),
        "[watch.cursor]\nfrom = \"link:next\"",
    );
    let out = poll(&w).await;
    match &out.kind {
        OutcomeKind::Changed { body, .. } => assert_eq!(&body[..], b"page one"),
        other => panic!("{other:?}"),
    }
    assert_eq!(out.cursor, None, "an ftp:// cursor is not stored");
}

#[tokio::test]
async fn a_later_page_that_breaks_keeps_the_earlier_pages() {
    let server = MockServer::start().await;
    let dead_next = page_with_a_dead_next(&server, "/p", "page one").await;
    let w = watch(
        &format!("{}/p", server.uri()),
        "[watch.cursor]\nfrom = \"link:next\"",
    );
    let out = poll(&w).await;
    match &out.kind {
        OutcomeKind::Changed { body, .. } => assert_eq!(&body[..], b"page one"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        out.cursor.as_deref(),
        Some(dead_next.as_str()),
        "the next poll starts at the page that failed"
    );
}

#[tokio::test]
async fn a_next_page_on_another_origin_gets_no_credentials() {
    let home = MockServer::start().await;
    let away = MockServer::start().await;
    Mock::given(path("/p"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header(
                    "link",
                    format!("<{}/p2>; rel=\"next\"", away.uri()).as_str(),
                )
                .set_body_string("one"),
        )
        .mount(&home)
        .await;
    Mock::given(path("/p2"))
        .respond_with(ResponseTemplate::new(200).set_body_string("two"))
        .mount(&away)
        .await;
    let w = watch(
        &format!("{}/p", home.uri()),
        "headers = { Authorization = \"Bearer t\" }\n[watch.cursor]\nfrom = \"link:next\"",
    );
    let out = poll_with(&w, Some("\"e\""), None, None).await;
    assert!(
        matches!(out.kind, OutcomeKind::Changed { .. }),
        "{:?}",
        out.kind
    );
    assert_eq!(
        received(&home).await[0].headers["authorization"],
        "Bearer t"
    );
    let at_away = received(&away).await;
    assert_eq!(at_away.len(), 1);
    assert!(at_away[0].headers.get("authorization").is_none());
    assert!(at_away[0].headers.get("if-none-match").is_none());
}

#[tokio::test]
async fn credentials_do_not_follow_a_permanent_move_to_another_origin() {
    let configured = MockServer::start().await;
    let moved_to = MockServer::start().await;
    Mock::given(path("/feed"))
        .respond_with(ResponseTemplate::new(200).set_body_string("x"))
        .mount(&moved_to)
        .await;
    let w = watch(
        &format!("{}/feed", configured.uri()),
        "headers = { Authorization = \"Bearer s3cret\", Accept = \"text/plain\" }",
    );
    // The engine re-pointed the watch after repeated 301s to another origin.
    let moved_url = url::Url::parse(&format!("{}/feed", moved_to.uri())).unwrap();
    let out = agent()
        .poll(PollRequest {
            watch: &w,
            url: &moved_url,
            etag: None,
            last_modified: None,
            cursor: None,
            last_hash: None,
            cursor_page_hash: None,
            job: None,
        })
        .await;
    assert!(
        matches!(out.kind, OutcomeKind::Changed { .. }),
        "{:?}",
        out.kind
    );
    let request = &received(&moved_to).await[0];
    assert!(
        request.headers.get("authorization").is_none(),
        "credentials stay with the configured origin"
    );
    assert_eq!(request.headers["accept"], "text/plain");
}

#[tokio::test]
async fn secrets_in_the_url_stay_out_of_error_messages() {
    let server = MockServer::start().await;
    Mock::given(path("/down"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    let port = server.address().port();
    // An HTTP error names the URL it came from.
    let w = watch(
        &format!("http://bob:hunter2@127.0.0.1:{port}/down?page=2&access_token=t0ps3cret"),
        "",
    );
    let error = match poll(&w).await.kind {
        OutcomeKind::Failed { error, .. } => error,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        error,
        format!(
            "http://bob:REDACTED@127.0.0.1:{port}/down?page=2&access_token=REDACTED: \
             HTTP 500 Internal Server Error"
        )
    );
    // So does a transport error, and reqwest's own text in it.
    let closed = common::nobody_listens();
    let w = watch(&format!("{closed}/x?apiKey=t0ps3cret"), "");
    let error = match poll(&w).await.kind {
        OutcomeKind::Failed { error, .. } => error,
        other => panic!("{other:?}"),
    };
    assert!(error.contains("apiKey=REDACTED"), "{error}");
    assert!(!error.contains("t0ps3cret"), "{error}");
}

#[tokio::test]
async fn a_job_longer_than_the_timeout_is_resumed_by_the_next_poll_not_restarted() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/report"))
        .respond_with(
            ResponseTemplate::new(202)
                .insert_header("location", "/jobs/1")
                .insert_header("retry-after", "60"),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/jobs/1"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{\"state\":\"done\"}"))
        .mount(&server)
        .await;
    let w = watch(
        &format!("{}/report", server.uri()),
        "method = \"POST\"\nbody = \"q=1\"\nmax_retry_after = \"10m\"",
    );
    // The job asks for 60 s; the poll may take 3: it ends, saying where to resume.
    let out = poll(&w).await;
    let job = match &out.kind {
        OutcomeKind::JobPending { job } => job.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(job.path(), "/jobs/1");
    assert_eq!(out.status, Some(202));
    assert_eq!(out.hints.retry_after, Some(Duration::from_secs(60)));
    assert_eq!(received(&server).await.len(), 1, "no status check yet");

    // The next poll reads the job's status: no second POST, no new job.
    let out = agent()
        .poll(PollRequest {
            watch: &w,
            url: &w.url,
            etag: None,
            last_modified: None,
            cursor: None,
            last_hash: None,
            cursor_page_hash: None,
            job: Some(job.as_str()),
        })
        .await;
    match &out.kind {
        OutcomeKind::Changed { body, .. } => assert_eq!(&body[..], b"{\"state\":\"done\"}"),
        other => panic!("{other:?}"),
    }
    let requests = received(&server).await;
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].method.as_str(), "GET");
    assert_eq!(requests[1].url.path(), "/jobs/1");
}

#[tokio::test]
async fn an_x_ratelimit_reset_beyond_any_clock_is_capped_not_a_panic() {
    let server = MockServer::start().await;
    Mock::given(path("/"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-ratelimit-remaining", "0")
                .insert_header("x-ratelimit-reset", "18446744073709551615")
                .set_body_string("x"),
        )
        .mount(&server)
        .await;
    let out = poll(&watch(
        &format!("{}/", server.uri()),
        "max_retry_after = \"1h\"",
    ))
    .await;
    assert!(
        matches!(out.kind, OutcomeKind::Changed { .. }),
        "{:?}",
        out.kind
    );
    assert_eq!(out.hints.not_before, Some(Duration::from_secs(3600)));
    assert_eq!(out.hints.reason, Some("RateLimit"));
}

#[tokio::test]
async fn a_429_with_two_retry_after_lines_waits_for_the_longer() {
    let server = MockServer::start().await;
    Mock::given(path("/"))
        .respond_with(
            ResponseTemplate::new(429)
                .append_header("retry-after", "5")
                .append_header("retry-after", "120"),
        )
        .mount(&server)
        .await;
    let out = poll(&watch(&format!("{}/", server.uri()), "")).await;
    assert!(matches!(out.kind, OutcomeKind::RateLimited));
    assert_eq!(out.hints.retry_after, Some(Duration::from_secs(120)));
    assert_eq!(out.hints.not_before, Some(Duration::from_secs(120)));
    assert_eq!(received(&server).await.len(), 1);
}

#[tokio::test]
async fn a_403_secondary_rate_limit_with_retry_after_is_a_wait() {
    // GitHub: "You have exceeded a secondary rate limit" is a 403 (or 429)
    // with Retry-After.
    let server = MockServer::start().await;
    Mock::given(path("/"))
        .respond_with(
            ResponseTemplate::new(403)
                .insert_header("retry-after", "60")
                .set_body_string(r#"{"message":"You have exceeded a secondary rate limit"}"#),
        )
        .mount(&server)
        .await;
    let out = poll(&watch(&format!("{}/", server.uri()), "")).await;
    assert!(
        matches!(out.kind, OutcomeKind::Failed { .. }),
        "{:?}",
        out.kind
    );
    assert_eq!(out.hints.not_before, Some(Duration::from_secs(60)));
    assert_eq!(out.hints.reason, Some("Retry-After"));
    assert_eq!(received(&server).await.len(), 1);
}

#[tokio::test]
async fn freshness_takes_the_first_max_age_less_age_and_expires_less_age() {
    let server = MockServer::start().await;
    Mock::given(path("/cc"))
        .respond_with(
            ResponseTemplate::new(200)
                .append_header("cache-control", "public, max-age=\"300\"")
                .append_header("cache-control", "max-age=3000")
                .insert_header("age", "100")
                .set_body_string("x"),
        )
        .mount(&server)
        .await;
    let date = std::time::SystemTime::now();
    Mock::given(path("/expires"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("date", httpdate::fmt_http_date(date).as_str())
                .insert_header(
                    "expires",
                    httpdate::fmt_http_date(date + Duration::from_secs(600)).as_str(),
                )
                .insert_header("age", "100")
                .set_body_string("x"),
        )
        .mount(&server)
        .await;
    let out = poll(&watch(&format!("{}/cc", server.uri()), "")).await;
    assert_eq!(out.hints.fresh_for, Some(Duration::from_secs(200)));
    assert_eq!(out.hints.not_before, None, "freshness is no server request");
    let out = poll(&watch(&format!("{}/expires", server.uri()), "")).await;
    assert_eq!(out.hints.fresh_for, Some(Duration::from_secs(500)));
}

#[tokio::test]
async fn retry_after_past_dates_garbage_negative_fractional_and_huge_through_poll() {
    let server = MockServer::start().await;
    let cases: [(&str, Option<Duration>); 7] = [
        ("Sun, 06 Nov 1994 08:49:37 GMT", Some(Duration::ZERO)),
        ("Sunday, 06-Nov-94 08:49:37 GMT", Some(Duration::ZERO)),
        ("Sun Nov  6 08:49:37 1994", Some(Duration::ZERO)),
        ("soon", None),
        ("-30", None),
        ("1.5", None),
        ("99999999999999999999", Some(Duration::from_secs(u64::MAX))),
    ];
    for (n, (value, _)) in cases.iter().enumerate() {
        Mock::given(path(format!("/{n}")))
            .respond_with(ResponseTemplate::new(503).insert_header("retry-after", *value))
            .mount(&server)
            .await;
    }
    for (n, (value, expected)) in cases.iter().enumerate() {
        let w = watch(&format!("{}/{n}", server.uri()), "max_retry_after = \"2h\"");
        let out = poll(&w).await;
        assert!(matches!(out.kind, OutcomeKind::RateLimited), "{value}");
        assert_eq!(out.hints.retry_after, *expected, "{value}");
        assert_eq!(
            out.hints.not_before,
            expected.map(|d| d.min(Duration::from_secs(7200))),
            "{value}"
        );
    }
    assert_eq!(
        received(&server).await.len(),
        cases.len(),
        "one request each"
    );
}

#[tokio::test]
async fn a_jobs_202_that_meets_fail_if_ends_the_poll_as_failed() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/run"))
        .respond_with(
            ResponseTemplate::new(202)
                .insert_header("location", "/jobs/9")
                .insert_header("retry-after", "1"),
        )
        .mount(&server)
        .await;
    // The job's status keeps answering 202, now saying it failed.
    Mock::given(method("GET"))
        .and(path("/jobs/9"))
        .respond_with(
            ResponseTemplate::new(202)
                .insert_header("location", "/jobs/9")
                .insert_header("retry-after", "1")
                .set_body_string("{\"status\":\"failed\"}"),
        )
        .mount(&server)
        .await;
    let w = watch(
        &format!("{}/run", server.uri()),
        "method = \"POST\"\ntimeout = \"20s\"\nfail_if = [\"json:/status=failed\"]",
    );
    let started = Instant::now();
    let out = poll(&w).await;
    assert!(
        matches!(&out.finished, Some(Finished::Failed { condition }) if condition.contains("failed")),
        "{:?} {:?}",
        out.kind,
        out.finished
    );
    assert_eq!(out.status, Some(202));
    // One status check, not checks until the timeout or the step cap.
    assert_eq!(received(&server).await.len(), 2);
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Spring Data REST's pages: a comma in the next URL's query, and a
/// `rel=preload` link without a value before it. The next page used to be
/// missed (the whole field was dropped), so only page one was ever stored.
#[tokio::test]
async fn a_link_next_with_a_comma_in_its_query_is_followed() {
    let server = MockServer::start().await;
    Mock::given(path("/items"))
        .and(query_param("page", "1"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header(
                    "link",
                    "</s.css>; as=style; crossorigin, </items?page=2&sort=name,asc>;rel=\"next\"",
                )
                .set_body_string("one"),
        )
        .mount(&server)
        .await;
    Mock::given(path("/items"))
        .and(query_param("page", "2"))
        .and(query_param("sort", "name,asc"))
        .respond_with(ResponseTemplate::new(200).set_body_string("two"))
        .mount(&server)
        .await;
    let w = watch(
        &format!("{}/items?page=1", server.uri()),
        "[watch.cursor]\nfrom = \"link:next\"",
    );
    let out = poll(&w).await;
    match &out.kind {
        OutcomeKind::Changed { body, .. } => assert_eq!(&body[..], b"one\ntwo"),
        other => panic!("{other:?}"),
    }
    let expected = format!("{}/items?page=2&sort=name,asc", server.uri());
    assert_eq!(out.cursor.as_deref(), Some(expected.as_str()));
}

/// RFC 9110 §10.2.3: on a 3xx, `Retry-After` is the wait before the
/// redirected request. A 302 / 307 asking for more than a poll may take
/// used to end the poll as rate limited, and the next poll asked the
/// original URL again, got the same answer, and so never reached the
/// target: the watch stayed `rate_limited` for ever. Now the next poll,
/// after that wait, requests the target, as after a 303.
#[tokio::test]
async fn a_302_or_307_retry_after_beyond_the_deadline_leaves_its_target_to_the_next_poll() {
    for code in [302u16, 307] {
        let server = MockServer::start().await;
        Mock::given(path("/wait"))
            .respond_with(
                ResponseTemplate::new(code)
                    .insert_header("location", "/later")
                    .insert_header("retry-after", "30"),
            )
            .mount(&server)
            .await;
        Mock::given(path("/later"))
            .respond_with(ResponseTemplate::new(200).set_body_string("there"))
            .mount(&server)
            .await;
        let w = watch(&format!("{}/wait", server.uri()), "");
        let started = Instant::now();
        let out = poll(&w).await;
        assert!(started.elapsed() < Duration::from_secs(2), "did not sleep");
        let job = match &out.kind {
            OutcomeKind::JobPending { job } => job.clone(),
            other => panic!("{code}: {other:?}"),
        };
        assert_eq!(job.path(), "/later");
        assert_eq!(out.status, Some(code));
        assert_eq!(out.hints.retry_after, Some(Duration::from_secs(30)));
        assert_eq!(received(&server).await.len(), 1, "/later not requested yet");
        let out = agent()
            .poll(PollRequest {
                watch: &w,
                url: &w.url,
                etag: None,
                last_modified: None,
                cursor: None,
                last_hash: None,
                cursor_page_hash: None,
                job: Some(job.as_str()),
            })
            .await;
        match &out.kind {
            OutcomeKind::Changed { body, .. } => assert_eq!(&body[..], b"there"),
            other => panic!("{code}: {other:?}"),
        }
        let requests = received(&server).await;
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[1].url.path(), "/later");
    }
}

/// A 307 keeps a POST a POST: the next poll cannot resume it as a GET, so
/// that answer stays a rate-limited wait at the configured URL.
#[tokio::test]
async fn a_307_after_post_with_a_long_retry_after_is_not_resumed_as_a_get() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/submit"))
        .respond_with(
            ResponseTemplate::new(307)
                .insert_header("location", "/other")
                .insert_header("retry-after", "30"),
        )
        .mount(&server)
        .await;
    let w = watch(
        &format!("{}/submit", server.uri()),
        "method = \"POST\"\nbody = \"q=1\"",
    );
    let out = poll(&w).await;
    assert!(
        matches!(out.kind, OutcomeKind::RateLimited),
        "{:?}",
        out.kind
    );
    assert_eq!(out.hints.not_before, Some(Duration::from_secs(30)));
}

/// GitHub's `/stats/*` answer a GET with `202 Accepted` and `{}` while
/// they compute (RFC 9110 §15.3.3: accepted, not completed). That answer
/// used to be stored as a version, and the real one as the next: a
/// spurious `{}` version each time the server recomputed. Now it makes no
/// version: the poll ends pending at the same URL, after its Retry-After.
#[tokio::test]
async fn a_get_answered_202_without_location_makes_no_version() {
    let server = MockServer::start().await;
    Mock::given(path("/stats"))
        .respond_with(Sequence {
            times: Arc::default(),
            served: Default::default(),
            responses: vec![
                ResponseTemplate::new(202)
                    .insert_header("retry-after", "20")
                    .set_body_string("{}"),
                ResponseTemplate::new(200).set_body_string("[1,2,3]"),
            ],
        })
        .mount(&server)
        .await;
    let w = watch(&format!("{}/stats", server.uri()), "");
    let out = poll(&w).await;
    let job = match &out.kind {
        OutcomeKind::JobPending { job } => job.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(job, w.url);
    assert_eq!(out.status, Some(202));
    assert_eq!(out.hints.retry_after, Some(Duration::from_secs(20)));
    assert_eq!(out.hints.not_before, Some(Duration::from_secs(20)));
    assert_eq!(received(&server).await.len(), 1, "one request per poll");
    assert_eq!(out.bytes_received, 2, "the 202's body was received too");
    let out = agent()
        .poll(PollRequest {
            watch: &w,
            url: &w.url,
            etag: None,
            last_modified: None,
            cursor: None,
            last_hash: None,
            cursor_page_hash: None,
            job: Some(job.as_str()),
        })
        .await;
    match &out.kind {
        OutcomeKind::Changed { body, .. } => assert_eq!(&body[..], b"[1,2,3]"),
        other => panic!("{other:?}"),
    }
    assert_eq!(out.bytes_received, 7);
    // `until = ["status=202"]` still holds on such an answer.
    let server = MockServer::start().await;
    Mock::given(path("/stats"))
        .respond_with(ResponseTemplate::new(202).set_body_string("{}"))
        .mount(&server)
        .await;
    let w = watch(
        &format!("{}/stats", server.uri()),
        "until = [\"status=202\"]",
    );
    let out = poll(&w).await;
    assert!(
        matches!(out.finished, Some(Finished::Done { .. })),
        "{:?} {:?}",
        out.kind,
        out.finished
    );
}

/// A `rel=next` back to a page this poll already fetched (a server whose
/// last page links to the first, or a page to itself) ends the pages: it
/// used to be fetched again and again up to the page cap, its content
/// joined into the version once per visit.
#[tokio::test]
async fn a_link_next_back_to_a_fetched_page_ends_the_pages() {
    let server = MockServer::start().await;
    for (page, next, body) in [("1", "2", "one"), ("2", "1", "two")] {
        Mock::given(path("/ring"))
            .and(query_param("page", page))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("link", format!("</ring?page={next}>; rel=next").as_str())
                    .set_body_string(body),
            )
            .mount(&server)
            .await;
    }
    Mock::given(path("/self"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("link", "</self>; rel=next")
                .set_body_string("self"),
        )
        .mount(&server)
        .await;
    let w = watch(
        &format!("{}/ring?page=1", server.uri()),
        "[watch.cursor]\nfrom = \"link:next\"",
    );
    let out = poll(&w).await;
    match &out.kind {
        OutcomeKind::Changed { body, .. } => assert_eq!(&body[..], b"one\ntwo"),
        other => panic!("{other:?}"),
    }
    assert_eq!(received(&server).await.len(), 2);
    let w = watch(
        &format!("{}/self", server.uri()),
        "[watch.cursor]\nfrom = \"link:next\"",
    );
    let out = poll(&w).await;
    match &out.kind {
        OutcomeKind::Changed { body, .. } => assert_eq!(&body[..], b"self"),
        other => panic!("{other:?}"),
    }
    assert_eq!(received(&server).await.len(), 3, "the page once");
}

/// Answers `/v?page=N` with ETag "pN", and 304 when `If-None-Match` names
/// it; page 1 links to page 2, the last.
struct Validated;

impl Respond for Validated {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let page = request
            .url
            .query_pairs()
            .find(|(k, _)| k == "page")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let etag = format!("\"p{page}\"");
        let sent = request
            .headers
            .get("if-none-match")
            .and_then(|v| v.to_str().ok());
        if sent == Some(etag.as_str()) {
            return ResponseTemplate::new(304).insert_header("etag", etag.as_str());
        }
        let mut response = ResponseTemplate::new(200)
            .insert_header("etag", etag.as_str())
            .set_body_string(format!("page {page}"));
        if page == "1" {
            response = response.insert_header("link", "</v?page=2>; rel=next");
        }
        response
    }
}

/// The validators stored are those of the page the next poll starts at
/// (the stored cursor), not of the first page: the first page's ETag
/// used to go to the last page, which could never answer 304, and its
/// 200 made a version of a page already stored.
#[tokio::test]
async fn validators_stored_after_pages_are_those_of_where_the_next_poll_starts() {
    let server = MockServer::start().await;
    Mock::given(path("/v"))
        .respond_with(Validated)
        .mount(&server)
        .await;
    let w = watch(
        &format!("{}/v?page=1", server.uri()),
        "[watch.cursor]\nfrom = \"link:next\"",
    );
    let out = poll(&w).await;
    match &out.kind {
        OutcomeKind::Changed { body, .. } => assert_eq!(&body[..], b"page 1\npage 2"),
        other => panic!("{other:?}"),
    }
    let cursor = out.cursor.clone().expect("the last next is stored");
    assert_eq!(out.etag.as_deref(), Some("\"p2\""));
    let out = poll_with(&w, out.etag.as_deref(), None, Some(&cursor)).await;
    assert!(
        matches!(out.kind, OutcomeKind::NotModified),
        "{:?}",
        out.kind
    );
    // Pages cut at the cap: the next poll starts at a page not fetched
    // yet, for which there are no validators.
    let server = MockServer::start().await;
    Mock::given(path("/list"))
        .respond_with(EndlessPages { base: server.uri() })
        .mount(&server)
        .await;
    let w = watch(
        &format!("{}/list?page=1", server.uri()),
        "[watch.cursor]\nfrom = \"link:next\"",
    );
    let out = poll_with(
        &w,
        Some("\"old\""),
        Some("Sun, 06 Nov 1994 08:49:37 GMT"),
        None,
    )
    .await;
    assert!(matches!(out.kind, OutcomeKind::Changed { .. }));
    assert_eq!(out.etag, None);
    assert_eq!(out.last_modified, None);
}

/// An https watch is never re-pointed to plain http, and a watch is never
/// re-pointed to a page of its feed. A `link:next` watch starts its poll at
/// the stored cursor, which a server chose (here an http page); a 301 there
/// (http -> http) was judged hop by hop, and after three polls re-pointed
/// the https watch to that plain-http page.
#[tokio::test]
async fn a_cursor_page_s_permanent_move_never_re_points_the_watch() {
    let server = MockServer::start().await;
    Mock::given(path("/p2"))
        .respond_with(ResponseTemplate::new(301).insert_header("location", "/p2-moved"))
        .mount(&server)
        .await;
    Mock::given(path("/p2-moved"))
        .respond_with(ResponseTemplate::new(200).set_body_string("two"))
        .mount(&server)
        .await;
    // The watch itself is https (never contacted in this poll: the poll
    // resumes at the stored cursor).
    let w = watch(
        "https://127.0.0.1:1/feed",
        "[watch.cursor]\nfrom = \"link:next\"",
    );
    let cursor = format!("{}/p2", server.uri());
    let out = poll_with(&w, None, None, Some(&cursor)).await;
    assert!(
        matches!(out.kind, OutcomeKind::Changed { .. }),
        "{:?}",
        out.kind
    );
    assert_eq!(
        out.moved_permanently
            .as_ref()
            .map(|u| u.scheme().to_owned()),
        None,
        "an https watch offered a re-point to {:?}",
        out.moved_permanently.map(|u| u.to_string())
    );
}

/// The cursor page's hash belongs to the page the cursor points at. When
/// the resumed page is unchanged but names a next page that fails, the
/// cursor moves to that next page: the old page's hash kept with it would
/// take that page, alone, for "unchanged" when its body equals the old
/// page's, and no version of it would ever be made.
#[tokio::test]
async fn the_cursor_page_hash_follows_the_cursor() {
    let server = MockServer::start().await;
    let dead_next = page_with_a_dead_next(&server, "/p2", "[]").await;
    let w = watch(
        &format!("{}/p1", server.uri()),
        "[watch.cursor]\nfrom = \"link:next\"",
    );
    let cursor = format!("{}/p2", server.uri());
    let page = *blake3::hash(b"[]").as_bytes();
    let out = agent()
        .poll(PollRequest {
            watch: &w,
            url: &w.url,
            etag: None,
            last_modified: None,
            cursor: Some(&cursor),
            last_hash: Some(*blake3::hash(b"[1]\n[]").as_bytes()),
            cursor_page_hash: Some(page),
            job: None,
        })
        .await;
    assert!(
        matches!(out.kind, OutcomeKind::Unchanged { .. }),
        "{:?}",
        out.kind
    );
    assert_eq!(out.cursor.as_deref(), Some(dead_next.as_str()));
    assert_eq!(
        out.cursor_page_hash, None,
        "the cursor now points at /p3, never fetched, yet keeps /p2's hash"
    );
}

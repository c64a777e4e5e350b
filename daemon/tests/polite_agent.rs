//! The polite agent against real servers on loopback: what the server
//! received (headers, counts, timing) and the outcome, for every rule of
//! issue 4: conditional requests, Retry-After and rate limits, redirects,
//! the async-job pattern, cursors, and the bounds on bodies and time.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use polld_config::{Config, Watch};
use polld_daemon::agent::{Agent, AgentOptions, Finished, OutcomeKind, PollOutcome, PollRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

fn watch(url: &str, extra: &str) -> Watch {
    // Test defaults, unless `extra` sets the key itself.
    let defaults: String = [
        ("timeout", "\"3s\""),
        ("connect_timeout", "\"2s\""),
        ("max_retry_after", "\"1h\""),
    ]
    .iter()
    .filter(|(key, _)| !extra.lines().any(|l| l.starts_with(&format!("{key} "))))
    .map(|(key, value)| format!("{key} = {value}\n"))
    .collect();
    let text = format!("[[watch]]\nid = \"w\"\nurl = \"{url}\"\n{defaults}{extra}\n");
    Config::from_str_with_env(Path::new("t.toml"), &text, |_| None)
        .unwrap_or_else(|e| panic!("{e}"))
        .watches
        .remove(0)
}

fn agent() -> Agent {
    Agent::new(AgentOptions {
        user_agent: "polld-test/1 (+mailto:t@example.org)".into(),
        allow_private_redirects: false,
    })
    .unwrap()
}

async fn poll(
    watch: &Watch,
    etag: Option<&str>,
    last_modified: Option<&str>,
    last_hash: Option<[u8; 32]>,
) -> PollOutcome {
    agent()
        .poll(PollRequest {
            watch,
            url: &watch.url,
            etag,
            last_modified,
            cursor: None,
            last_hash,
        })
        .await
}

async fn received(server: &MockServer) -> Vec<Request> {
    server.received_requests().await.unwrap_or_default()
}

fn hash(body: &str) -> [u8; 32] {
    *blake3::hash(body.as_bytes()).as_bytes()
}

#[tokio::test]
async fn validators_are_sent_verbatim_and_a_304_keeps_or_freshens_them() {
    let server = MockServer::start().await;
    Mock::given(path("/r"))
        .respond_with(ResponseTemplate::new(304).insert_header("cache-control", "max-age=600"))
        .mount(&server)
        .await;
    let w = watch(&format!("{}/r", server.uri()), "");
    let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
    let out = poll(&w, Some("W/\"x\""), Some(lm), None).await;
    assert!(
        matches!(out.kind, OutcomeKind::NotModified),
        "{:?}",
        out.kind
    );
    let request = &received(&server).await[0];
    assert_eq!(
        request.headers["if-none-match"], "W/\"x\"",
        "quotes and W/ kept"
    );
    assert_eq!(
        request.headers["if-modified-since"], lm,
        "verbatim, not rebuilt from a clock"
    );
    assert_eq!(
        request.headers["user-agent"],
        "polld-test/1 (+mailto:t@example.org)"
    );
    assert_eq!(
        out.etag.as_deref(),
        Some("W/\"x\""),
        "a 304 without an ETag keeps the stored one"
    );
    assert_eq!(out.last_modified.as_deref(), Some(lm));
    assert_eq!(
        out.hints.fresh_for,
        Some(Duration::from_secs(600)),
        "the 304's new Cache-Control is used"
    );
}

#[tokio::test]
async fn a_304_with_a_new_etag_freshens_it() {
    let server = MockServer::start().await;
    Mock::given(path("/r"))
        .respond_with(ResponseTemplate::new(304).insert_header("etag", "\"x\""))
        .mount(&server)
        .await;
    let w = watch(&format!("{}/r", server.uri()), "");
    let out = poll(&w, Some("W/\"x\""), None, None).await;
    assert!(matches!(out.kind, OutcomeKind::NotModified));
    assert_eq!(
        out.etag.as_deref(),
        Some("\"x\""),
        "W/\"x\" stored, \"x\" returned: the new one is stored"
    );
}

#[tokio::test]
async fn change_detection_compares_hashes_not_etags() {
    let server = MockServer::start().await;
    Mock::given(path("/same-etag"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("etag", "\"v1\"")
                .set_body_string("body"),
        )
        .mount(&server)
        .await;
    Mock::given(path("/new-etag"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("etag", "\"v2\"")
                .set_body_string("body"),
        )
        .mount(&server)
        .await;
    Mock::given(path("/changed"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("etag", "\"v1\"")
                .set_body_raw("{\"n\":2}", "application/json"),
        )
        .mount(&server)
        .await;
    // A 200 with the stored ETag and the same body: the server ignored the validator.
    let w = watch(&format!("{}/same-etag", server.uri()), "");
    let out = poll(&w, Some("\"v1\""), None, Some(hash("body"))).await;
    assert!(
        matches!(out.kind, OutcomeKind::Unchanged { .. }),
        "{:?}",
        out.kind
    );
    // A new ETag with an identical body is still unchanged.
    let w = watch(&format!("{}/new-etag", server.uri()), "");
    let out = poll(&w, Some("\"v1\""), None, Some(hash("body"))).await;
    assert!(matches!(out.kind, OutcomeKind::Unchanged { .. }));
    assert_eq!(
        out.etag.as_deref(),
        Some("\"v2\""),
        "the new validator is stored"
    );
    // A different body with the same ETag is a change.
    let w = watch(&format!("{}/changed", server.uri()), "");
    let out = poll(&w, Some("\"v1\""), None, Some(hash("body"))).await;
    match out.kind {
        OutcomeKind::Changed {
            body,
            hash: h,
            content_type,
        } => {
            assert_eq!(&body[..], b"{\"n\":2}");
            assert_eq!(h, hash("{\"n\":2}"));
            assert_eq!(content_type.as_deref(), Some("application/json"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn rate_limits_and_retry_after_through_poll() {
    let server = MockServer::start().await;
    Mock::given(path("/429"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "120"))
        .mount(&server)
        .await;
    Mock::given(path("/far"))
        .respond_with(
            ResponseTemplate::new(503)
                .insert_header("retry-after", "Fri, 31 Dec 2100 23:59:59 GMT"),
        )
        .mount(&server)
        .await;
    Mock::given(path("/xrl"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-ratelimit-remaining", "0")
                .insert_header(
                    "x-ratelimit-reset",
                    &*(std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs()
                        + 30)
                        .to_string(),
                )
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
    let out = poll(
        &watch(&format!("{}/429", server.uri()), ""),
        None,
        None,
        None,
    )
    .await;
    assert!(matches!(out.kind, OutcomeKind::RateLimited));
    assert_eq!(out.hints.retry_after, Some(Duration::from_secs(120)));
    assert_eq!(out.hints.not_before, Some(Duration::from_secs(120)));
    let out = poll(
        &watch(&format!("{}/far", server.uri()), ""),
        None,
        None,
        None,
    )
    .await;
    assert!(matches!(out.kind, OutcomeKind::RateLimited));
    assert_eq!(
        out.hints.not_before,
        Some(Duration::from_secs(3600)),
        "capped by max_retry_after"
    );
    let out = poll(
        &watch(&format!("{}/xrl", server.uri()), ""),
        None,
        None,
        None,
    )
    .await;
    let reset = out
        .hints
        .rate_limit_reset
        .expect("X-RateLimit-Reset in epoch seconds");
    assert!(
        reset > Duration::from_secs(25) && reset <= Duration::from_secs(31),
        "{reset:?}"
    );
    let out = poll(
        &watch(&format!("{}/rl", server.uri()), ""),
        None,
        None,
        None,
    )
    .await;
    assert_eq!(out.hints.rate_limit_reset, Some(Duration::from_secs(10)));
}

#[tokio::test]
async fn a_301_is_reported_a_302_is_not_and_loops_are_cut() {
    let server = MockServer::start().await;
    Mock::given(path("/perm"))
        .respond_with(ResponseTemplate::new(301).insert_header("location", "/target"))
        .mount(&server)
        .await;
    Mock::given(path("/temp"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", "/target"))
        .mount(&server)
        .await;
    Mock::given(path("/target"))
        .respond_with(ResponseTemplate::new(200).set_body_string("here"))
        .mount(&server)
        .await;
    Mock::given(path("/a"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", "/b"))
        .mount(&server)
        .await;
    Mock::given(path("/b"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", "/a"))
        .mount(&server)
        .await;
    Mock::given(path("/file"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", "file:///etc/passwd"))
        .mount(&server)
        .await;
    let out = poll(
        &watch(&format!("{}/perm", server.uri()), ""),
        None,
        None,
        None,
    )
    .await;
    assert!(matches!(out.kind, OutcomeKind::Changed { .. }));
    assert_eq!(out.moved_permanently.unwrap().path(), "/target");
    let out = poll(
        &watch(&format!("{}/temp", server.uri()), ""),
        None,
        None,
        None,
    )
    .await;
    assert!(matches!(out.kind, OutcomeKind::Changed { .. }));
    assert!(
        out.moved_permanently.is_none(),
        "a 302 must not re-point the watch"
    );
    let before = received(&server).await.len();
    let out = poll(&watch(&format!("{}/a", server.uri()), ""), None, None, None).await;
    match &out.kind {
        OutcomeKind::Failed { error, retryable } => {
            assert!(error.contains("loop"), "{error}");
            assert!(!retryable);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        received(&server).await.len() - before,
        2,
        "the loop is cut at the first repeat"
    );
    let out = poll(
        &watch(&format!("{}/file", server.uri()), ""),
        None,
        None,
        None,
    )
    .await;
    assert!(
        matches!(&out.kind, OutcomeKind::Failed { error, .. } if error.contains("file:")),
        "{:?}",
        out.kind
    );
}

#[tokio::test]
async fn a_cross_origin_hop_carries_no_validators_and_no_credentials() {
    let first = MockServer::start().await;
    let other = MockServer::start().await;
    Mock::given(path("/start"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("location", format!("{}/elsewhere", other.uri())),
        )
        .mount(&first)
        .await;
    Mock::given(path("/elsewhere"))
        .respond_with(ResponseTemplate::new(200).set_body_string("x"))
        .mount(&other)
        .await;
    let w = watch(
        &format!("{}/start", first.uri()),
        "headers = { Authorization = \"Bearer s3cret\", Accept = \"text/plain\" }",
    );
    let out = poll(
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
    let at_first = &received(&first).await[0];
    assert_eq!(at_first.headers["authorization"], "Bearer s3cret");
    assert_eq!(at_first.headers["if-none-match"], "\"e\"");
    let at_other = &received(&other).await[0];
    assert!(
        at_other.headers.get("authorization").is_none(),
        "no credentials to another origin"
    );
    assert!(
        at_other.headers.get("if-none-match").is_none(),
        "no validators to another origin"
    );
    assert!(at_other.headers.get("if-modified-since").is_none());
    assert_eq!(
        at_other.headers["accept"], "text/plain",
        "plain headers are kept"
    );
}

#[tokio::test]
async fn more_than_ten_redirects_fail() {
    let server = MockServer::start().await;
    for i in 0..12 {
        Mock::given(path(format!("/hop{i}")))
            .respond_with(
                ResponseTemplate::new(307).insert_header("location", format!("/hop{}", i + 1)),
            )
            .mount(&server)
            .await;
    }
    let out = poll(
        &watch(&format!("{}/hop0", server.uri()), ""),
        None,
        None,
        None,
    )
    .await;
    assert!(
        matches!(&out.kind, OutcomeKind::Failed { error, retryable: false } if error.contains("10 redirects")),
        "{:?}",
        out.kind
    );
    assert_eq!(received(&server).await.len(), 11);
}

/// Records when each request came.
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

#[tokio::test]
async fn async_job_202_and_303_after_post_wait_for_retry_after() {
    let server = MockServer::start().await;
    let times = Arc::new(Mutex::new(Vec::new()));
    Mock::given(method("POST"))
        .and(path("/jobs"))
        .respond_with(Timed {
            times: times.clone(),
            response: ResponseTemplate::new(202)
                .insert_header("location", "/jobs/1")
                .insert_header("retry-after", "1"),
        })
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/jobs/1"))
        .respond_with(Timed {
            times: times.clone(),
            response: ResponseTemplate::new(303)
                .insert_header("location", "/results/1")
                .insert_header("retry-after", "1"),
        })
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/results/1"))
        .respond_with(Timed {
            times: times.clone(),
            response: ResponseTemplate::new(200).set_body_string("{\"status\":\"completed\"}"),
        })
        .mount(&server)
        .await;
    let w = watch(
        &format!("{}/jobs", server.uri()),
        "method = \"POST\"\nbody = \"{}\"\ntimeout = \"10s\"\nuntil = [\"json:/status=completed\"]",
    );
    let out = poll(&w, None, None, None).await;
    assert!(
        matches!(out.kind, OutcomeKind::Changed { .. }),
        "{:?}",
        out.kind
    );
    assert!(
        matches!(out.finished, Some(Finished::Done { .. })),
        "{:?}",
        out.finished
    );
    let times = times.lock().unwrap().clone();
    assert_eq!(times.len(), 3);
    assert!(
        times[1] - times[0] >= Duration::from_millis(950),
        "the status check waited for Retry-After"
    );
    assert!(
        times[2] - times[1] >= Duration::from_millis(950),
        "the 303 was followed after its Retry-After"
    );
    let requests = received(&server).await;
    assert_eq!(requests[1].method.as_str(), "GET");
    assert_eq!(requests[2].method.as_str(), "GET", "303 becomes a GET");
}

#[tokio::test]
async fn cursors_from_json_header_and_link_and_410_resets() {
    let server = MockServer::start().await;
    Mock::given(path("/feed"))
        .and(query_param("since", "5"))
        .respond_with(
            ResponseTemplate::new(200).set_body_string("{\"items\":[6,7],\"next\":\"7\"}"),
        )
        .mount(&server)
        .await;
    Mock::given(path("/feed"))
        .and(query_param("since", "7"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{\"items\":[],\"next\":\"7\"}"))
        .mount(&server)
        .await;
    let w = watch(
        &format!("{}/feed", server.uri()),
        "[watch.cursor]\nparam = \"since\"\nfrom = \"json:/next\"\ninitial = \"0\"",
    );
    let out = agent()
        .poll(PollRequest {
            watch: &w,
            url: &w.url,
            etag: None,
            last_modified: None,
            cursor: Some("5"),
            last_hash: None,
        })
        .await;
    assert_eq!(out.cursor.as_deref(), Some("7"), "the next cursor to store");
    let requests = received(&server).await;
    assert_eq!(requests[0].url.query(), Some("since=5"));
    assert_eq!(
        requests.len(),
        2,
        "the next page was followed until it gave nothing new"
    );

    let pages = MockServer::start().await;
    for (page, next) in [(1, Some(2)), (2, Some(3)), (3, None)] {
        let mut response = ResponseTemplate::new(200).set_body_string(format!("page {page}"));
        if let Some(next) = next {
            response = response.insert_header(
                "link",
                format!("<{}/items?page={next}>; rel=\"next\"", pages.uri()),
            );
        }
        Mock::given(path("/items"))
            .and(query_param("page", page.to_string()))
            .respond_with(response)
            .mount(&pages)
            .await;
    }
    let w = watch(
        &format!("{}/items?page=1", pages.uri()),
        "[watch.cursor]\nfrom = \"link:next\"",
    );
    let out = poll(&w, None, None, None).await;
    assert_eq!(received(&pages).await.len(), 3, "pages followed");
    assert!(
        out.cursor.as_deref().unwrap().ends_with("page=3"),
        "the last rel=next is stored: {:?}",
        out.cursor
    );

    let header_server = MockServer::start().await;
    Mock::given(path("/h"))
        .and(header("x-cursor-test", "1"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-next-cursor", "abc")
                .set_body_string("h"),
        )
        .mount(&header_server)
        .await;
    Mock::given(path("/h"))
        .and(query_param("c", "abc"))
        .respond_with(ResponseTemplate::new(410))
        .with_priority(1)
        .mount(&header_server)
        .await;
    let w = watch(
        &format!("{}/h", header_server.uri()),
        "headers = { X-Cursor-Test = \"1\" }\n[watch.cursor]\nparam = \"c\"\nfrom = \"header:X-Next-Cursor\"",
    );
    let first = poll(&w, None, None, None).await;
    assert_eq!(
        first.cursor.as_deref(),
        Some("abc"),
        "the cursor comes from the response header"
    );
    let out = agent()
        .poll(PollRequest {
            watch: &w,
            url: &w.url,
            etag: None,
            last_modified: None,
            cursor: Some("abc"),
            last_hash: None,
        })
        .await;
    assert!(matches!(out.kind, OutcomeKind::Gone), "{:?}", out.kind);
    assert!(
        out.cursor_reset,
        "a 410 on a cursored request resets to initial"
    );
}

#[tokio::test]
async fn a_gzip_bomb_is_cut_at_max_body() {
    // 64 MiB of zeros compress to ~64 KiB.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..64 {
        encoder.write_all(&chunk).unwrap();
    }
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < 200_000);
    let server = MockServer::start().await;
    Mock::given(path("/bomb"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-encoding", "gzip")
                .set_body_bytes(bomb),
        )
        .mount(&server)
        .await;
    let w = watch(&format!("{}/bomb", server.uri()), "max_body = \"1MiB\"");
    let out = poll(&w, None, None, None).await;
    assert!(
        matches!(&out.kind, OutcomeKind::Failed { error, retryable: false } if error.contains("max_body")),
        "{:?}",
        out.kind
    );
}

/// A raw server: `reply` writes what it likes to each connection.
async fn raw_server<F, Fut>(reply: F) -> String
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reply = Arc::new(reply);
    tokio::spawn(async move {
        for _ in 0..16 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let reply = reply.clone();
            tokio::spawn(async move { reply(stream).await });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn an_endless_body_a_stall_and_2000_headers_end_in_bounded_failures() {
    let endless = raw_server(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await;
        let chunk = format!("{:x}\r\n{}\r\n", 8192, "y".repeat(8192));
        for _ in 0..100_000 {
            if s.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let w = watch(&format!("{endless}/"), "max_body = \"256KiB\"");
    let out = poll(&w, None, None, None).await;
    assert!(
        matches!(&out.kind, OutcomeKind::Failed { error, .. } if error.contains("max_body")),
        "{:?}",
        out.kind
    );

    let stall = raw_server(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
            .await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let w = watch(
        &format!("{stall}/"),
        "timeout = \"1s\"\nconnect_timeout = \"1s\"",
    );
    let started = Instant::now();
    let out = poll(&w, None, None, None).await;
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
        "ended by the deadline: {:?}",
        started.elapsed()
    );

    let many = raw_server(|mut s| async move {
        let mut response = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..2000 {
            response.push_str(&format!("X-H{i}: v\r\n"));
        }
        response.push_str("Content-Length: 2\r\n\r\nok");
        let _ = s.write_all(response.as_bytes()).await;
    })
    .await;
    let w = watch(&format!("{many}/"), "");
    let out = poll(&w, None, None, None).await;
    assert!(
        matches!(&out.kind, OutcomeKind::Failed { .. }),
        "2,000 headers are refused: {:?}",
        out.kind
    );
}

#[tokio::test]
async fn until_and_fail_if_are_evaluated_on_the_final_response() {
    let server = MockServer::start().await;
    let n = Arc::new(AtomicUsize::new(0));
    let counter = n.clone();
    Mock::given(path("/s"))
        .respond_with(move |_: &Request| {
            let body = match counter.fetch_add(1, Ordering::SeqCst) {
                0 => "{\"status\":\"running\"}",
                1 => "{\"status\":\"completed\"}",
                _ => "{\"status\":\"failed\"}",
            };
            ResponseTemplate::new(200).set_body_string(body)
        })
        .mount(&server)
        .await;
    let w = watch(
        &format!("{}/s", server.uri()),
        "until = [\"json:/status=completed\"]\nfail_if = [\"json:/status=failed\"]",
    );
    assert!(poll(&w, None, None, None).await.finished.is_none());
    assert!(matches!(
        poll(&w, None, None, None).await.finished,
        Some(Finished::Done { .. })
    ));
    assert!(matches!(
        poll(&w, None, None, None).await.finished,
        Some(Finished::Failed { .. })
    ));
}

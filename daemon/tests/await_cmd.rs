//! `polld await` against wiremock: the 202 + Location + Retry-After flow,
//! 303, conditions, --fail-if, --timeout, --max-attempts, 429, --save, and
//! bad arguments.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wiremock::matchers::{body_string, header, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn polld_await(args: &[&str]) -> Run {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_polld"))
            .arg("await")
            .args(&args)
            .output()
            .expect("polld runs");
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

/// A job status endpoint: "running" for the first `n` checks, then
/// "completed"; records when each check arrived.
struct Job {
    n: usize,
    times: Arc<Mutex<Vec<Instant>>>,
}

impl Respond for Job {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let mut times = self.times.lock().unwrap();
        times.push(Instant::now());
        if times.len() <= self.n {
            ResponseTemplate::new(200)
                .insert_header("retry-after", "1")
                .set_body_string(r#"{"status":"running"}"#)
        } else {
            ResponseTemplate::new(200)
                .insert_header("x-job-status", "finished")
                .set_body_string(r#"{"status":"completed","job_id":"j-17"}"#)
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn post_202_location_retry_after_until_completed() {
    let server = MockServer::start().await;
    let posted = Arc::new(Mutex::new(None::<Instant>));
    let times = Arc::new(Mutex::new(Vec::new()));
    {
        let posted = posted.clone();
        Mock::given(method("POST"))
            .and(path("/jobs"))
            .and(header("content-type", "application/json"))
            .and(header("x-trace", "t1"))
            .and(body_string(r#"{"input":42}"#))
            .respond_with(move |_: &Request| {
                *posted.lock().unwrap() = Some(Instant::now());
                ResponseTemplate::new(202)
                    .insert_header("location", "/jobs/17")
                    .insert_header("retry-after", "1")
            })
            .mount(&server)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/jobs/17"))
        .respond_with(Job {
            n: 2,
            times: times.clone(),
        })
        .mount(&server)
        .await;
    let url = format!("{}/jobs", server.uri());
    let run = polld_await(&[
        "-X",
        "POST",
        "-d",
        r#"{"input":42}"#,
        "-H",
        "Content-Type: application/json",
        "-H",
        "X-Trace: t1",
        "--until",
        "json:/status=completed",
        "--until",
        "header:X-Job-Status=finished",
        "--until",
        "json:/job_id",
        "--until",
        "!json:/errors",
        "--interval",
        "100ms",
        "--timeout",
        "20s",
        &url,
    ])
    .await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stdout, r#"{"status":"completed","job_id":"j-17"}"#);
    let times = times.lock().unwrap();
    assert_eq!(times.len(), 3, "running, running, completed");
    let posted = posted.lock().unwrap().expect("the POST came");
    assert!(
        times[0] - posted >= Duration::from_millis(950),
        "first check waited for Retry-After: {:?}",
        times[0] - posted
    );
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(950),
            "checks honour Retry-After: {:?}",
            pair[1] - pair[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn see_other_flow_and_save() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/start"))
        .respond_with(ResponseTemplate::new(303).insert_header("location", "/result/5"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/result/5"))
        .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"job_id":"abc","n":3}"#))
        .expect(1)
        .mount(&server)
        .await;
    let url = format!("{}/start", server.uri());
    let run = polld_await(&[
        "-X",
        "POST",
        "--save",
        "json:/job_id",
        "--interval",
        "100ms",
        &url,
    ])
    .await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stdout, "abc\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_if_ends_with_exit_1() {
    let server = MockServer::start().await;
    Mock::given(path("/job"))
        .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"status":"failed"}"#))
        .mount(&server)
        .await;
    let url = format!("{}/job", server.uri());
    let run = polld_await(&[
        "--until",
        "json:/status=completed",
        "--fail-if",
        "json:/status=failed",
        &url,
    ])
    .await;
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("attempt 1")
            && run.stderr.contains("/job")
            && run.stderr.contains("json:/status=failed"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_and_max_attempts_end_with_exit_2() {
    let server = MockServer::start().await;
    Mock::given(path("/never"))
        .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"status":"running"}"#))
        .mount(&server)
        .await;
    let url = format!("{}/never", server.uri());
    let started = Instant::now();
    let run = polld_await(&[
        "--until",
        "json:/status=completed",
        "--interval",
        "200ms",
        "--timeout",
        "1s",
        &url,
    ])
    .await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(started.elapsed() < Duration::from_secs(5));

    let before = server.received_requests().await.unwrap().len();
    let run = polld_await(&[
        "--until",
        "json:/status=completed",
        "--interval",
        "50ms",
        "--max-attempts",
        "4",
        &url,
    ])
    .await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert_eq!(
        server.received_requests().await.unwrap().len() - before,
        4,
        "exactly 4 attempts"
    );
    assert!(run.stderr.contains("--max-attempts"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_0_on_every_answer_is_no_tight_loop() {
    let server = MockServer::start().await;
    Mock::given(path("/eager"))
        .respond_with(
            ResponseTemplate::new(202)
                .insert_header("location", "/eager")
                .insert_header("retry-after", "0"),
        )
        .mount(&server)
        .await;
    let url = format!("{}/eager", server.uri());
    let run = polld_await(&["--interval", "300ms", "--timeout", "1s", &url]).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    // One request, then one every 300 ms until the 1 s timeout: 4, or 5
    // if the last check lands right on the deadline.
    let requests = server.received_requests().await.unwrap().len();
    assert!((3..=5).contains(&requests), "{requests} requests in 1 s");
}

/// 429 with Retry-After once, then the answer.
struct LimitedOnce(Arc<Mutex<Vec<Instant>>>);

impl Respond for LimitedOnce {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let mut times = self.0.lock().unwrap();
        times.push(Instant::now());
        if times.len() == 1 {
            ResponseTemplate::new(429).insert_header("retry-after", "1")
        } else {
            ResponseTemplate::new(200).set_body_string("done")
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_in_the_middle_is_waited_out() {
    let server = MockServer::start().await;
    let times = Arc::new(Mutex::new(Vec::new()));
    Mock::given(path("/busy"))
        .respond_with(LimitedOnce(times.clone()))
        .mount(&server)
        .await;
    let url = format!("{}/busy", server.uri());
    let run = polld_await(&["--interval", "50ms", &url]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "done");
    let times = times.lock().unwrap();
    assert!(
        times[1] - times[0] >= Duration::from_millis(950),
        "waited for Retry-After after the 429"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn permanent_error_and_bad_arguments() {
    let server = MockServer::start().await;
    Mock::given(path("/missing"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    let url = format!("{}/missing", server.uri());
    let run = polld_await(&[&url]).await;
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("HTTP 404"), "{}", run.stderr);
    let run = polld_await(&["--until", "xml:/a", &url]).await;
    assert_eq!(run.code, Some(78), "a bad condition is a bad argument");
    let run = polld_await(&["-H", "no colon", &url]).await;
    assert_eq!(run.code, Some(78));
    // Zero attempts would still make one request: refused.
    let run = polld_await(&["--max-attempts", "0", &url]).await;
    assert_eq!(run.code, Some(78), "{}", run.stderr);
    // A zero interval would check a job that names no wait (and a server
    // that is down) as fast as the network allows, until --timeout.
    let requests = server.received_requests().await.unwrap().len();
    let run = polld_await(&["--interval", "0s", "--timeout", "1s", &url]).await;
    assert_eq!(run.code, Some(78), "{}", run.stderr);
    assert!(run.stderr.contains("--interval"), "{}", run.stderr);
    assert_eq!(server.received_requests().await.unwrap().len(), requests);
    let help = polld_await(&["--help"]).await;
    assert!(
        help.stdout.contains("Example"),
        "--help shows a worked example"
    );
}

/// The conditions judge every answer: a job's status URL that answers 202
/// with a failure, and a 503, end with exit 1 at once instead of being
/// waited out; an explicit `--until status=202` holds on the 202 itself.
#[tokio::test(flavor = "multi_thread")]
async fn conditions_judge_a_running_jobs_202_and_a_503() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/jobs"))
        .respond_with(
            ResponseTemplate::new(202)
                .insert_header("location", "/jobs/1")
                .insert_header("retry-after", "1"),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/jobs/1"))
        .respond_with(
            ResponseTemplate::new(202)
                .insert_header("location", "/jobs/1")
                .insert_header("retry-after", "1")
                .set_body_string(r#"{"status":"failed"}"#),
        )
        .mount(&server)
        .await;
    Mock::given(path("/down"))
        .respond_with(ResponseTemplate::new(503).insert_header("retry-after", "1"))
        .mount(&server)
        .await;
    let jobs = format!("{}/jobs", server.uri());
    let started = Instant::now();
    let run = polld_await(&[
        "-X",
        "POST",
        "--until",
        "json:/status=completed",
        "--fail-if",
        "json:/status=failed",
        "--timeout",
        "20s",
        &jobs,
    ])
    .await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("--fail-if"), "{}", run.stderr);
    assert!(started.elapsed() < Duration::from_secs(10));

    let down = format!("{}/down", server.uri());
    let run = polld_await(&["--fail-if", "status=503", "--timeout", "20s", &down]).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);

    let run = polld_await(&[
        "-X",
        "POST",
        "--until",
        "status=202",
        "--timeout",
        "20s",
        &jobs,
    ])
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

/// A `--save` pointer missing from the final body is a failure, not an
/// empty success that a script would go on with.
#[tokio::test(flavor = "multi_thread")]
async fn a_save_pointer_missing_from_the_body_fails() {
    let server = MockServer::start().await;
    Mock::given(path("/done"))
        .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"status":"completed"}"#))
        .mount(&server)
        .await;
    let url = format!("{}/done", server.uri());
    let run = polld_await(&["--save", "json:/result_url", &url]).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.contains("not in the final body"),
        "{}",
        run.stderr
    );
    let run = polld_await(&["--save", "json:/status", &url]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "completed\n");
}

/// A GET answered 202 without a `Location` (GitHub's `/stats/*` while
/// they compute) is asked again after its `Retry-After`, not taken as the
/// result.
#[tokio::test(flavor = "multi_thread")]
async fn a_get_answered_202_without_location_is_asked_again() {
    let server = MockServer::start().await;
    let times = Arc::new(Mutex::new(Vec::new()));
    {
        let times = times.clone();
        Mock::given(method("GET"))
            .and(path("/stats"))
            .respond_with(move |_: &Request| {
                let mut times = times.lock().unwrap();
                times.push(Instant::now());
                if times.len() == 1 {
                    ResponseTemplate::new(202)
                        .insert_header("retry-after", "1")
                        .set_body_string("{}")
                } else {
                    ResponseTemplate::new(200).set_body_string("[1,2,3]")
                }
            })
            .mount(&server)
            .await;
    }
    let url = format!("{}/stats", server.uri());
    let run = polld_await(&[&url, "--timeout", "30s"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout.trim(), "[1,2,3]");
    let times = times.lock().unwrap();
    assert_eq!(times.len(), 2);
    assert!(
        times[1] - times[0] >= Duration::from_millis(900),
        "the 202's Retry-After was waited out: {:?}",
        times[1] - times[0]
    );
}

/// `polld await`'s messages (often in CI logs) show the URL as the daemon's
/// logs do: a password, a user name that is a token and secret-looking query
/// values used to be printed as given.
#[tokio::test(flavor = "multi_thread")]
async fn messages_keep_the_urls_secrets_out() {
    let server = MockServer::start().await;
    Mock::given(path("/missing"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    let port = server.address().port();
    for (url, shown) in [
        (
            format!("http://bob:hunter2@127.0.0.1:{port}/missing?access_token=t0ps3cret"),
            format!("http://bob:REDACTED@127.0.0.1:{port}/missing?access_token=REDACTED"),
        ),
        (
            format!("http://ghp_t0k3n@127.0.0.1:{port}/missing"),
            format!("http://REDACTED@127.0.0.1:{port}/missing"),
        ),
    ] {
        let run = polld_await(&["--verbose", &url]).await;
        assert_eq!(run.code, Some(1), "{}", run.stderr);
        assert!(run.stderr.contains(&shown), "{}", run.stderr);
        for secret in ["hunter2", "t0ps3cret", "ghp_t0k3n"] {
            assert!(!run.stderr.contains(secret), "{secret}: {}", run.stderr);
        }
    }
}

/// A POST (not idempotent: it may start a job) is not sent again once the
/// server may have acted on it: after a 500, or a connection that broke
/// after the request went out. A GET is asked again after a 500, and a POST
/// whose connection was refused (never sent) is tried again.
#[tokio::test(flavor = "multi_thread")]
async fn a_post_the_server_may_have_acted_on_is_not_sent_again() {
    let server = MockServer::start().await;
    Mock::given(path("/jobs"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    let url = format!("{}/jobs", server.uri());
    let run = polld_await(&["-X", "POST", "--interval", "50ms", "--timeout", "5s", &url]).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("HTTP 500") && run.stderr.contains("not sent again"),
        "{}",
        run.stderr
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 1);

    let run = polld_await(&["--interval", "50ms", "--max-attempts", "3", &url]).await;
    assert_eq!(run.code, Some(2), "a GET is asked again: {}", run.stderr);
    assert_eq!(server.received_requests().await.unwrap().len(), 4);

    // Reads the request, then closes without an answer.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broken = format!("http://{}/jobs", listener.local_addr().unwrap());
    // Counts connections for as long as the command runs (a slow start
    // must not find the port closed).
    let connections = Arc::new(Mutex::new(0));
    let acceptor = tokio::spawn({
        let connections = connections.clone();
        async move {
            use tokio::io::AsyncReadExt;
            while let Ok((mut conn, _)) = listener.accept().await {
                *connections.lock().unwrap() += 1;
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
            }
        }
    });
    let run = polld_await(&[
        "-X",
        "POST",
        "--interval",
        "50ms",
        "--timeout",
        "5s",
        &broken,
    ])
    .await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("not sent again"), "{}", run.stderr);
    acceptor.abort();
    assert_eq!(*connections.lock().unwrap(), 1, "one POST only");

    // Nobody listens: the POST never left, and is tried again.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/jobs", l.local_addr().unwrap())
    };
    let run = polld_await(&[
        "-X",
        "POST",
        "--interval",
        "50ms",
        "--max-attempts",
        "3",
        "--verbose",
        &closed,
    ])
    .await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("attempt 3"), "{}", run.stderr);
}

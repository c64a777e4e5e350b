//! End-to-end tests of the local API on a real `polld run`: the changes
//! feed (immediate, long poll woken by a commit, empty after `wait`, 410
//! below retention), conditional GET of a version, the token, metrics.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use polld_tests::{Polld, eventually};
use serde_json::Value;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers::path};

/// A new body on every request: every poll is a change.
struct Counter(AtomicUsize);

impl Respond for Counter {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.0.fetch_add(1, Ordering::SeqCst);
        ResponseTemplate::new(200)
            .insert_header("content-type", "text/plain")
            .set_body_string(format!("body {n}\n"))
    }
}

fn watch(id: &str, url: &str, interval: &str) -> String {
    format!(
        "[[watch]]\nid = \"{id}\"\nurl = \"{url}\"\ninterval = \"{interval}\"\nmin_interval = \"100ms\"\nmax_interval = \"{interval}\"\nbackoff = 1.0\njitter = 0.0\n\n"
    )
}

async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.expect("request");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, body)
}

async fn ready(polld: &Polld, client: &reqwest::Client) {
    eventually(Duration::from_secs(10), "/readyz", || async {
        let ok = client
            .get(format!("{}/readyz", polld.api))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        ok.then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_feed_long_poll_retention_and_conditional_versions() {
    let server = MockServer::start().await;
    Mock::given(path("/often"))
        .respond_with(Counter(AtomicUsize::new(0)))
        .mount(&server)
        .await;
    Mock::given(path("/rare"))
        .respond_with(Counter(AtomicUsize::new(0)))
        .mount(&server)
        .await;
    let watches = format!(
        "{}{}",
        watch("often", &format!("{}/often", server.uri()), "300ms"),
        watch("rare", &format!("{}/rare", server.uri()), "1h"),
    );
    // A short change log, so that retention moves during the test.
    let mut polld = Polld::start_with("keep_changes = 5", &watches);
    let client = reqwest::Client::new();
    ready(&polld, &client).await;

    // A change appears in the feed.
    let first: Value = eventually(
        Duration::from_secs(10),
        "a new version in the feed",
        || async {
            let (status, body) = get_json(
                &client,
                &format!("{}/v1/changes?after=0&limit=100", polld.api),
            )
            .await;
            if status == 410 {
                // Retention already moved: start from the oldest retained change.
                let (_, body) =
                    get_json(&client, &format!("{}/v1/changes?limit=100", polld.api)).await;
                return Some(body);
            }
            let has_version = body["changes"]
                .as_array()?
                .iter()
                .any(|c| c["kind"] == "new_version");
            has_version.then_some(body)
        },
    )
    .await;
    let changes = first["changes"].as_array().unwrap();
    let seqs: Vec<u64> = changes.iter().map(|c| c["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq strictly increasing: {seqs:?}"
    );
    assert!(
        first["next"].is_string(),
        "next is an opaque string cursor: {first}"
    );

    // A long poll from the head returns early when the next change commits.
    let (_, head) = get_json(&client, &format!("{}/v1/changes?limit=1000", polld.api)).await;
    let mut next = head["next"].as_str().unwrap().to_owned();
    for _ in 0..5 {
        let (_, page) = get_json(
            &client,
            &format!("{}/v1/changes?after={next}&limit=1000", polld.api),
        )
        .await;
        if page["changes"].as_array().unwrap().is_empty() {
            break;
        }
        next = page["next"].as_str().unwrap().to_owned();
    }
    let started = Instant::now();
    let (status, woken) = get_json(
        &client,
        &format!("{}/v1/changes?after={next}&wait=20s", polld.api),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        !woken["changes"].as_array().unwrap().is_empty(),
        "woken by a commit: {woken}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "returned early, after {:?}",
        started.elapsed()
    );

    // 410 below retention, with a body that says how to resync.
    // (Only 5 changes are kept: once more than 5 were made, after=0 is gone.)
    let gone = eventually(Duration::from_secs(10), "410 for after=0", || async {
        let (status, body) = get_json(&client, &format!("{}/v1/changes?after=0", polld.api)).await;
        (status == 410).then_some(body)
    })
    .await;
    assert!(gone["error"].is_string());
    let (status, _) = get_json(&client, &format!("{}/v1/changes?after=banana", polld.api)).await;
    assert_eq!(status, 400, "a malformed cursor");

    // A version body with its own ETag; If-None-Match gets a 304. (The
    // hourly watch's first poll is spread over its hour: ask for it now.)
    let poll = client
        .post(format!("{}/v1/watches/rare/poll", polld.api))
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), 202);
    eventually(Duration::from_secs(10), "rare's first version", || async {
        let r = client
            .get(format!("{}/v1/watches/rare/versions/latest", polld.api))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let latest = client
        .get(format!("{}/v1/watches/rare/versions/latest", polld.api))
        .send()
        .await
        .unwrap();
    assert_eq!(latest.status(), 200);
    assert_eq!(latest.headers()["content-type"], "text/plain");
    let etag = latest.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(latest.text().await.unwrap(), "body 0\n");
    let again = client
        .get(format!("{}/v1/watches/rare/versions/latest", polld.api))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    // The watch as the API shows it.
    let (status, w) = get_json(&client, &format!("{}/v1/watches/often", polld.api)).await;
    assert_eq!(status, 200);
    assert_eq!(w["state"], "ok");
    assert!(w["changed"].as_u64().unwrap() >= 2, "{w}");
    assert!(w["next_poll"].is_string(), "{w}");

    // Metrics with the names of DESIGN.md.
    let metrics = client
        .get(format!("{}/metrics", polld.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "polld_polls_total",
        "polld_changes_total",
        "polld_watches",
        "polld_schedule_lag_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert!(polld.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn long_poll_returns_empty_after_wait_and_poll_now_works() {
    let server = MockServer::start().await;
    Mock::given(path("/slow"))
        .respond_with(Counter(AtomicUsize::new(0)))
        .mount(&server)
        .await;
    let mut polld = Polld::start(&watch("slow", &format!("{}/slow", server.uri()), "1h"));
    let client = reqwest::Client::new();
    ready(&polld, &client).await;
    // The first poll is spread over the first hour: ask for it now.
    let response = client
        .post(format!("{}/v1/watches/slow/poll", polld.api))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let feed: Value = eventually(Duration::from_secs(10), "the first version", || async {
        let (_, body) = get_json(
            &client,
            &format!("{}/v1/changes?after=0&limit=100", polld.api),
        )
        .await;
        let has = body["changes"]
            .as_array()?
            .iter()
            .any(|c| c["kind"] == "new_version" && c["watch"] == "slow");
        has.then_some(body)
    })
    .await;
    let next = feed["next"].as_str().unwrap();
    let started = Instant::now();
    let (status, empty) = get_json(
        &client,
        &format!("{}/v1/changes?after={next}&wait=1s", polld.api),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(empty["changes"].as_array().unwrap().len(), 0);
    assert_eq!(
        empty["next"], next,
        "the cursor does not move without changes"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "held for the wait"
    );
    let (status, _) = get_json(&client, &format!("{}/v1/watches/nope", polld.api)).await;
    assert_eq!(status, 404);
    assert!(polld.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_guards_v1() {
    let server = MockServer::start().await;
    Mock::given(path("/x"))
        .respond_with(Counter(AtomicUsize::new(0)))
        .mount(&server)
        .await;
    let mut polld = Polld::start_with(
        "api_token_file = \"{dir}/token\"",
        &watch("x", &format!("{}/x", server.uri()), "1h"),
    );
    let client = reqwest::Client::new();
    ready(&polld, &client).await;
    let token_path = polld.dir.path().join("token");
    let token = std::fs::read_to_string(&token_path).expect("polld wrote a new token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (status, body) = get_json(&client, &format!("{}/v1/watches", polld.api)).await;
    assert_eq!(status, 401);
    assert!(body["error"].is_string());
    let ok = client
        .get(format!("{}/v1/watches", polld.api))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(
        !polld.log().contains(token.trim()),
        "the token never reaches the log"
    );
    assert!(!polld.log().contains("token file is readable"));
    assert!(polld.stop().success());
}

/// A token file others may read still works, with a warning that says who
/// can read it: they can use the whole API.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_file_others_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let mut polld = Polld::prepare_with("api_token_file = \"{dir}/token\"", "");
    let token_path = polld.dir.path().join("token");
    std::fs::write(&token_path, "shared-token\n").unwrap();
    std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o640)).unwrap();
    polld.spawn();
    let client = reqwest::Client::new();
    ready(&polld, &client).await;
    let ok = client
        .get(format!("{}/v1/watches", polld.api))
        .bearer_auth("shared-token")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let log = polld.log();
    assert!(
        log.contains("the API token file is readable by its group") && log.contains("0640"),
        "{log}"
    );
    assert!(polld.stop().success());
}

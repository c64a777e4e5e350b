//! The changes feed: immediate answers, long polls woken by a commit or
//! ended by `wait` (paused clock), 410 below retention, 429 past the waiter
//! cap, and the SSE stream with `Last-Event-ID`.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use polld_api::{Api, ApiOptions};
use polld_store::ChangeKind;
use tower::ServiceExt;

use crate::common::{Fx, fixture, fixture_with, get};

/// Guard against a hang; never part of what a test asserts.
const HANG: Duration = Duration::from_secs(20);

fn seqs(page: &serde_json::Value) -> Vec<u64> {
    page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["seq"].as_u64().unwrap())
        .collect()
}

/// Waits (by yielding, not sleeping) until `n` long polls are held.
async fn until_waiters(fx: &Fx, n: usize) {
    for _ in 0..1_000_000 {
        if fx.state.waiters() == n {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never saw {n} waiters (have {})", fx.state.waiters());
}

#[tokio::test]
async fn answers_at_once_when_there_are_changes() {
    let fx = fixture();
    fx.commit("alpha", None, vec![ChangeKind::WatchAdded]);
    fx.commit("alpha", Some((b"1", "text/plain")), vec![]);
    fx.commit(
        "beta",
        None,
        vec![ChangeKind::WatchAdded, ChangeKind::ErrorStarted],
    );
    let r = fx.router();

    let page = get(&r, "/v1/changes").await.json();
    assert_eq!(seqs(&page), [1, 2, 3, 4]);
    assert_eq!(page["next"], "4", "next is a string");
    let c = &page["changes"][1];
    assert_eq!(c["watch"], "alpha");
    assert_eq!(c["kind"], "new_version");
    assert_eq!(c["version"], 1);
    assert!(c["at"].as_str().unwrap().ends_with('Z'));
    assert!(page["changes"][0]["version"].is_null());

    let page = get(&r, "/v1/changes?after=1&limit=2").await.json();
    assert_eq!(seqs(&page), [2, 3]);
    let page = get(
        &r,
        &format!("/v1/changes?after={}", page["next"].as_str().unwrap()),
    )
    .await
    .json();
    assert_eq!(seqs(&page), [4]);
    // At the end, without wait: empty at once, same cursor.
    let page = get(&r, "/v1/changes?after=4").await.json();
    assert_eq!(seqs(&page), Vec::<u64>::new());
    assert_eq!(page["next"], "4");
}

#[tokio::test]
async fn bad_parameters_are_400() {
    let fx = fixture();
    let r = fx.router();
    for (query, word) in [
        ("after=abc", "cursor"),
        ("after=-1", "cursor"),
        ("after=1.5", "cursor"),
        ("wait=soon", "wait"),
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
    ] {
        let msg = get(&r, &format!("/v1/changes?{query}"))
            .await
            .error(StatusCode::BAD_REQUEST);
        assert!(msg.contains(word), "{query}: {msg}");
    }
    let msg = get(&r, "/v1/changes/stream?after=x")
        .await
        .error(StatusCode::BAD_REQUEST);
    assert!(msg.contains("cursor"), "{msg}");
}

#[tokio::test]
async fn below_retention_is_410_with_a_way_back() {
    let fx = fixture_with(ApiOptions::new(), 3);
    for _ in 0..3 {
        fx.commit(
            "alpha",
            None,
            vec![ChangeKind::WatchAdded, ChangeKind::ErrorStarted],
        );
    }
    // Six changes, three kept: 4, 5, 6.
    assert_eq!(fx.store.oldest_seq(), 4);
    let r = fx.router();
    for after in ["0", "1", "2"] {
        let res = get(&r, &format!("/v1/changes?after={after}")).await;
        let msg = res.error(StatusCode::GONE);
        assert!(msg.contains("re-read /v1/watches"), "{msg}");
        assert_eq!(res.json()["resync_after"], "3");
        let res = get(&r, &format!("/v1/changes/stream?after={after}")).await;
        res.error(StatusCode::GONE);
    }
    assert_eq!(
        seqs(&get(&r, "/v1/changes?after=3").await.json()),
        [4, 5, 6]
    );
    // No cursor: from the oldest retained change.
    assert_eq!(seqs(&get(&r, "/v1/changes").await.json()), [4, 5, 6]);
    // A cursor from another database (ahead of this one) cannot resume either.
    let res = get(&r, "/v1/changes?after=99").await;
    let msg = res.error(StatusCode::GONE);
    assert!(msg.contains("ahead"), "{msg}");
    assert_eq!(res.json()["resync_after"], "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_wakes_a_held_long_poll() {
    let fx = fixture();
    fx.commit("alpha", None, vec![ChangeKind::WatchAdded]);
    let r = fx.router();
    let waiter = tokio::spawn({
        let r = r.clone();
        async move { get(&r, "/v1/changes?after=1&wait=50s").await }
    });
    until_waiters(&fx, 1).await;
    assert!(!waiter.is_finished());
    // Commit from another task while the request waits.
    let store = fx.store.clone();
    tokio::task::spawn_blocking(move || {
        store
            .apply_blocking(vec![polld_store::Outcome {
                state: crate::common::state("alpha").into(),
                new_version: None,
                events: vec![ChangeKind::ErrorStarted],
                keep_versions: 10,
            }])
            .unwrap()
    })
    .await
    .unwrap();
    let res = tokio::time::timeout(HANG, waiter)
        .await
        .expect("still waiting")
        .unwrap();
    assert_eq!(res.status, StatusCode::OK);
    let page = res.json();
    assert_eq!(seqs(&page), [2]);
    assert_eq!(page["changes"][0]["kind"], "error_started");
    assert_eq!(page["next"], "2");
    assert_eq!(fx.state.waiters(), 0, "the waiter slot is given back");
}

/// 500 commits of `events` for watch `alpha`, one after the other, on a
/// blocking thread.
fn commit_500_times(fx: &Fx, events: Vec<ChangeKind>) -> tokio::task::JoinHandle<()> {
    let store = fx.store.clone();
    tokio::task::spawn_blocking(move || {
        for _ in 0..500 {
            store
                .apply_blocking(vec![polld_store::Outcome {
                    state: crate::common::state("alpha").into(),
                    new_version: None,
                    events: events.clone(),
                    keep_versions: 10,
                }])
                .unwrap();
        }
    })
}

/// A client that follows the feed while polld commits is never told its
/// cursor is "ahead of this feed": every `next` handed out is one the feed
/// accepts back. (A commit is readable a moment before the store publishes
/// its seq; a page read from the store in that moment must not reach past
/// the published seq.) Bounded by the committer's 500 commits; without the
/// bound on the store read a run saw 2 to 5 such 410s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cursor_handed_out_is_never_refused_as_ahead() {
    let fx = fixture();
    fx.commit("alpha", None, vec![ChangeKind::WatchAdded]);
    let r = fx.router();
    let committer = commit_500_times(&fx, vec![ChangeKind::ErrorStarted]);
    let mut cursor = "1".to_owned();
    let mut seen = 1;
    while !committer.is_finished() {
        let res = get(&r, &format!("/v1/changes?after={cursor}")).await;
        assert_eq!(res.status, StatusCode::OK, "after={cursor}: {}", res.text());
        let page = res.json();
        for seq in seqs(&page) {
            assert_eq!(seq, seen + 1, "a change skipped or repeated");
            seen = seq;
        }
        cursor = page["next"].as_str().unwrap().to_owned();
    }
    committer.await.unwrap();
    // The rest: a page may come from the in-memory tail, which can lag the
    // last commit by a moment (the next page has it), so follow `next` a
    // bounded number of times.
    for _ in 0..100 {
        if seen == 501 {
            break;
        }
        let rest = get(&r, &format!("/v1/changes?after={cursor}&limit=1000")).await;
        let page = rest.json();
        for seq in seqs(&page) {
            assert_eq!(seq, seen + 1, "a change skipped or repeated");
            seen = seq;
        }
        cursor = page["next"].as_str().unwrap().to_owned();
        tokio::task::yield_now().await;
    }
    assert_eq!(seen, 501);
}

/// A client that passes no cursor starts at the oldest retained change:
/// it never gets 410, also while every commit prunes (the change log at
/// its retention cap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cursor_is_never_gone_while_pruning() {
    let fx = crate::common::fixture_with(polld_api::ApiOptions::new(), 3);
    fx.commit("alpha", None, vec![ChangeKind::WatchAdded]);
    let r = fx.router();
    let committer = commit_500_times(
        &fx,
        vec![ChangeKind::ErrorStarted, ChangeKind::ErrorCleared],
    );
    let mut asked = 0;
    while !committer.is_finished() {
        let res = get(&r, "/v1/changes").await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.text());
        asked += 1;
    }
    committer.await.unwrap();
    assert!(asked > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_tail_is_read_from_the_store() {
    let fx = fixture();
    fx.commit("alpha", None, vec![ChangeKind::WatchAdded]);
    let r = fx.router();
    let waiter = tokio::spawn({
        let r = r.clone();
        async move { get(&r, "/v1/changes?after=1&wait=50s&limit=5").await }
    });
    until_waiters(&fx, 1).await;
    let events = vec![ChangeKind::ErrorStarted; 3000];
    let store = fx.store.clone();
    tokio::task::spawn_blocking(move || {
        store.apply_blocking(vec![polld_store::Outcome {
            state: crate::common::state("alpha").into(),
            new_version: None,
            events,
            keep_versions: 10,
        }])
    })
    .await
    .unwrap()
    .unwrap();
    let res = tokio::time::timeout(HANG, waiter)
        .await
        .expect("still waiting")
        .unwrap();
    assert_eq!(seqs(&res.json()), [2, 3, 4, 5, 6], "nothing skipped");
}

#[tokio::test(start_paused = true)]
async fn an_idle_long_poll_ends_empty_after_wait() {
    let fx = fixture();
    let r = fx.router();
    let start = tokio::time::Instant::now();
    let res = get(&r, "/v1/changes?after=0&wait=30s").await;
    let held = start.elapsed();
    assert_eq!(res.status, StatusCode::OK);
    let page = res.json();
    assert_eq!(seqs(&page), Vec::<u64>::new());
    assert_eq!(page["next"], "0");
    // Held for `wait`, less at most a tenth of jitter.
    assert!(
        held >= Duration::from_secs(27) && held <= Duration::from_secs(30),
        "{held:?}"
    );

    // `wait` is capped.
    let mut opts = ApiOptions::new();
    opts.max_wait = Duration::from_secs(5);
    let fx = fixture_with(opts, 100);
    let r = fx.router();
    let start = tokio::time::Instant::now();
    let res = get(&r, "/v1/changes?wait=1h").await;
    assert_eq!(res.status, StatusCode::OK);
    let held = start.elapsed();
    assert!(
        held >= Duration::from_millis(4500) && held <= Duration::from_secs(5),
        "{held:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_waiters_is_429_and_close_releases_them() {
    let mut opts = ApiOptions::new();
    opts.max_waiters = 1;
    let fx = fixture_with(opts, 100);
    fx.commit("alpha", None, vec![ChangeKind::WatchAdded]);
    let r = fx.router();
    let first = tokio::spawn({
        let r = r.clone();
        async move { get(&r, "/v1/changes?after=1&wait=50s").await }
    });
    until_waiters(&fx, 1).await;
    let res = get(&r, "/v1/changes?after=1&wait=50s").await;
    res.error(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.header("retry-after"), Some("2"));
    get(&r, "/v1/changes/stream?after=1")
        .await
        .error(StatusCode::TOO_MANY_REQUESTS);
    // Requests that need not wait are still answered.
    assert_eq!(
        seqs(&get(&r, "/v1/changes?after=0&wait=50s").await.json()),
        [1]
    );
    assert_eq!(get(&r, "/v1/changes?after=1").await.status, StatusCode::OK);

    // Shutdown: the held poll answers now, empty, with its cursor.
    fx.state.close();
    let res = tokio::time::timeout(HANG, first)
        .await
        .expect("still held")
        .unwrap();
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.json()["next"], "1");
}

/// Sends a GET and returns the answer with its body unread (a stream).
async fn open_stream(r: &Api, uri: &str) -> axum::http::Response<Body> {
    r.clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap()
}

/// Reads SSE frames until `n` `change` events have arrived; returns their ids.
async fn read_events(body: &mut Body, n: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut buf = String::new();
    for _ in 0..1000 {
        if ids.len() >= n {
            break;
        }
        let frame = tokio::time::timeout(HANG, body.frame())
            .await
            .expect("no event")
            .expect("stream ended")
            .unwrap();
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.push_str(std::str::from_utf8(&data).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if event.contains("event: change") {
                let id = event
                    .lines()
                    .find_map(|l| l.strip_prefix("id: "))
                    .expect("event without id");
                assert!(event.contains("data: {\"seq\":"), "{event}");
                ids.push(id.parse().unwrap());
            }
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_stream_resumes_with_last_event_id() {
    let fx = fixture();
    fx.commit(
        "alpha",
        None,
        vec![ChangeKind::WatchAdded, ChangeKind::ErrorStarted],
    );
    let r = fx.router();

    let res = open_stream(&r, "/v1/changes/stream?after=0").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    // Not cached, and not buffered by a proxy such as nginx.
    assert_eq!(res.headers()["cache-control"], "no-cache");
    assert_eq!(res.headers()["x-accel-buffering"], "no");
    let mut body = res.into_body();
    assert_eq!(read_events(&mut body, 2).await, [1, 2]);
    // A change committed while the stream is open arrives on it.
    fx.commit("alpha", None, vec![ChangeKind::ErrorCleared]);
    assert_eq!(read_events(&mut body, 1).await, [3]);
    assert_eq!(fx.state.waiters(), 1, "a stream holds a waiter slot");
    drop(body);
    assert_eq!(fx.state.waiters(), 0);

    // Reconnect: Last-Event-ID wins over `after`.
    let req = Request::get("/v1/changes/stream?after=0")
        .header("last-event-id", "2")
        .body(Body::empty())
        .unwrap();
    let mut body = r.clone().oneshot(req).await.unwrap().into_body();
    assert_eq!(read_events(&mut body, 1).await, [3]);

    // Shutdown ends the stream.
    fx.state.close();
    let end = tokio::time::timeout(HANG, async {
        for _ in 0..100 {
            match body.frame().await {
                None => return true,
                Some(_) => continue,
            }
        }
        false
    })
    .await
    .expect("stream kept open after close");
    assert!(end);
}

/// A stream whose cursor falls out of retention ends with an `error` event
/// carrying the 410 body, `resync_after` included, so that the client can
/// resync as a long-poll client would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falling_out_of_retention_mid_stream_sends_the_410_body() {
    let fx = fixture_with(ApiOptions::new(), 3);
    fx.commit("alpha", None, vec![ChangeKind::WatchAdded]);
    let r = fx.router();
    let res = open_stream(&r, "/v1/changes/stream?after=1").await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    // Ten changes in one commit, three kept (9, 10, 11): 2 to 8 are gone.
    fx.commit("alpha", None, vec![ChangeKind::ErrorStarted; 10]);
    let text = tokio::time::timeout(HANG, async {
        let mut text = String::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                text.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
        text
    })
    .await
    .expect("stream kept open");
    let event = &text[text.find("event: error\n").expect(&text)..];
    let data = event
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect(event);
    let json: serde_json::Value = serde_json::from_str(data).unwrap();
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("re-read /v1/watches"),
        "{json}"
    );
    assert_eq!(json["resync_after"], "8", "{json}");
    assert_eq!(fx.state.waiters(), 0);
}

/// Closing the store, not the API, also ends the feed: a held long poll
/// answers (empty, with its cursor) and a stream ends, instead of being held
/// until `wait` runs out or for ever; a request that comes after is 503.
/// Paused clock: "at once" is before virtual time moved, where the long
/// poll's deadline is 27 to 30 s away.
#[tokio::test(start_paused = true)]
async fn closing_the_store_answers_held_polls_and_ends_streams() {
    let fx = fixture();
    fx.commit("alpha", None, vec![ChangeKind::WatchAdded]);
    let r = fx.router();
    let start = tokio::time::Instant::now();
    let poll = tokio::spawn({
        let r = r.clone();
        async move { get(&r, "/v1/changes?after=1&wait=30s").await }
    });
    let res = open_stream(&r, "/v1/changes/stream?after=1").await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let stream = tokio::spawn(async move {
        let mut text = String::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                text.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
        text
    });
    until_waiters(&fx, 2).await;
    // Both park (nothing here sleeps, so the clock stays put meanwhile).
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!poll.is_finished() && !stream.is_finished());

    fx.store.clone().close().unwrap();
    let res = tokio::time::timeout(HANG, poll)
        .await
        .expect("long poll still held after the store closed")
        .unwrap();
    assert_eq!(res.status, StatusCode::OK);
    let page = res.json();
    assert_eq!(seqs(&page), Vec::<u64>::new());
    assert_eq!(page["next"], "1", "its cursor, to resume from");
    let text = tokio::time::timeout(HANG, stream)
        .await
        .expect("stream kept open after the store closed")
        .unwrap();
    assert!(
        !text.contains("event:"),
        "ends as at shutdown, without events: {text:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "answered only after {:?}",
        start.elapsed()
    );
    assert_eq!(fx.state.waiters(), 0, "both waiter slots given back");

    // Nothing more will come: new requests are refused as other reads are.
    for uri in ["/v1/changes?after=1&wait=30s", "/v1/changes/stream?after=1"] {
        let msg = get(&r, uri).await.error(StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(msg, "the store is closed", "{uri}");
    }
}

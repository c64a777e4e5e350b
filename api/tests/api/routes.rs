//! Every route except the changes feed: status codes, headers, bodies.

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use polld_api::{ApiOptions, ApiToken};
use polld_store::{ChangeKind, WatchStatus};

use crate::common::{fixture, fixture_with, get, send, state};

#[tokio::test]
async fn health_and_readiness() {
    let fx = fixture();
    let r = fx.router();
    let res = get(&r, "/healthz").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.json()["status"], "ok");
    assert_eq!(get(&r, "/readyz").await.status, StatusCode::OK);

    fx.engine.running.store(false, Ordering::SeqCst);
    let msg = get(&r, "/readyz")
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE);
    assert!(msg.contains("engine"), "{msg}");
    // Liveness does not depend on the engine.
    assert_eq!(get(&r, "/healthz").await.status, StatusCode::OK);

    fx.engine.running.store(true, Ordering::SeqCst);
    fx.state.close();
    let msg = get(&r, "/readyz")
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE);
    assert!(msg.contains("shutting down"), "{msg}");
}

#[tokio::test]
async fn watch_list_is_paged_by_id() {
    let fx = fixture();
    for id in ["e", "a", "c", "b", "d"] {
        fx.commit(id, None, vec![ChangeKind::WatchAdded]);
    }
    let r = fx.router();
    let mut seen = Vec::new();
    let mut uri = "/v1/watches?limit=2".to_owned();
    // 5 watches in pages of 2: three pages, then no `next`.
    for page in 0..3 {
        let res = get(&r, &uri).await;
        assert_eq!(res.status, StatusCode::OK);
        let json = res.json();
        let ids: Vec<String> = json["watches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].as_str().unwrap().to_owned())
            .collect();
        seen.extend(ids);
        match json["next"].as_str() {
            Some(next) => uri = format!("/v1/watches?limit=2&after={next}"),
            None => {
                assert_eq!(page, 2, "next missing early");
                break;
            }
        }
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);
    let all = get(&r, "/v1/watches").await.json();
    assert_eq!(all["watches"].as_array().unwrap().len(), 5);
    assert!(all["next"].is_null());

    for bad in ["limit=0", "limit=1001", "limit=ten", "limit=-1"] {
        let msg = get(&r, &format!("/v1/watches?{bad}"))
            .await
            .error(StatusCode::BAD_REQUEST);
        assert!(msg.contains("limit"), "{msg}");
    }
}

#[tokio::test]
async fn one_watch_has_the_fields_of_the_design() {
    let fx = fixture();
    fx.commit("alpha", Some((b"v1", "text/plain")), vec![]);
    let r = fx.router();
    let w = get(&r, "/v1/watches/alpha").await.json();
    let expected = [
        "id",
        "url",
        "state",
        "last_status",
        "last_error",
        "last_checked",
        "last_changed",
        "next_poll",
        "interval_s",
        "versions",
        "polls",
        "not_modified",
        "unchanged",
        "changed",
        "errors",
        "rate_limited",
        "ratio_304",
    ];
    for key in expected {
        assert!(w.get(key).is_some(), "missing {key} in {w}");
    }
    assert_eq!(w["id"], "alpha");
    assert_eq!(w["state"], "ok");
    assert_eq!(w["last_status"], 200);
    assert_eq!(w["interval_s"], 300.0);
    assert_eq!(w["versions"], 1);
    assert_eq!(w["ratio_304"], 0.6); // 3 / (3 + 1 + 1)
    assert_eq!(w["last_checked"], "2023-11-14T22:13:20.000Z");
    assert_eq!(w["next_poll"], "2023-11-14T22:18:20.000Z");
    assert!(w["last_error"].is_null());

    // No successful poll yet: the ratio is null, not 0 or NaN.
    let mut fresh = state("beta");
    fresh.not_modified = 0;
    fresh.unchanged = 0;
    fresh.changed = 0;
    fresh.errors = 2;
    fresh.status = WatchStatus::Error;
    fresh.last_error = Some("connect timeout".into());
    fx.commit_state(fresh, None, vec![ChangeKind::ErrorStarted]);
    let w = get(&r, "/v1/watches/beta").await.json();
    assert!(w["ratio_304"].is_null(), "{w}");
    assert_eq!(w["state"], "error");
    assert_eq!(w["last_error"], "connect timeout");

    let msg = get(&r, "/v1/watches/nope")
        .await
        .error(StatusCode::NOT_FOUND);
    assert!(msg.contains("nope"), "{msg}");
}

#[tokio::test]
async fn poll_now() {
    let fx = fixture();
    fx.commit("alpha", None, vec![]);
    let mut gone = state("gamma");
    gone.status = WatchStatus::Removed;
    fx.commit_state(gone, None, vec![ChangeKind::WatchRemoved]);
    let r = fx.router();
    let post = |uri: &str| Request::post(uri).body(Body::empty()).unwrap();

    let res = send(&r, post("/v1/watches/alpha/poll")).await;
    assert_eq!(res.status, StatusCode::ACCEPTED);
    assert_eq!(res.json()["queued"], true);
    assert_eq!(*fx.engine.polled.lock().unwrap(), ["alpha"]);

    send(&r, post("/v1/watches/nope/poll"))
        .await
        .error(StatusCode::NOT_FOUND);
    let msg = send(&r, post("/v1/watches/gamma/poll"))
        .await
        .error(StatusCode::CONFLICT);
    assert!(msg.contains("removed"), "{msg}");

    fx.engine.running.store(false, Ordering::SeqCst);
    send(&r, post("/v1/watches/alpha/poll"))
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(fx.engine.polled.lock().unwrap().len(), 1);

    // GET is not how one polls.
    get(&r, "/v1/watches/alpha/poll")
        .await
        .error(StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn versions_and_conditional_bodies() {
    let fx = fixture();
    fx.commit("alpha", None, vec![ChangeKind::WatchAdded]);
    let r = fx.router();
    let msg = get(&r, "/v1/watches/alpha/versions/latest")
        .await
        .error(StatusCode::NOT_FOUND);
    assert!(msg.contains("no versions"), "{msg}");
    assert_eq!(
        get(&r, "/v1/watches/alpha/versions").await.json()["versions"],
        serde_json::json!([])
    );

    fx.commit(
        "alpha",
        Some((b"<p>one</p>", "text/html; charset=utf-8")),
        vec![],
    );
    fx.commit("alpha", Some((b"{\"n\": 2}", "application/json")), vec![]);

    let list = get(&r, "/v1/watches/alpha/versions").await.json();
    let versions = list["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["number"], 1);
    assert_eq!(versions[0]["size"], 10);
    assert_eq!(versions[0]["content_type"], "text/html; charset=utf-8");
    assert_eq!(versions[0]["fetched_at"], "2023-11-14T22:13:20.000Z");
    let hash1 = versions[0]["hash"].as_str().unwrap().to_owned();
    assert_eq!(
        hash1,
        polld_store::hex(&polld_store::hash_body(b"<p>one</p>"))
    );

    let one = get(&r, "/v1/watches/alpha/versions/1").await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.body, b"<p>one</p>");
    assert_eq!(one.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(one.header("etag"), Some(format!("\"{hash1}\"").as_str()));
    assert_eq!(
        one.header("last-modified"),
        Some("Tue, 14 Nov 2023 22:13:20 GMT")
    );
    assert_eq!(one.header("content-security-policy"), Some("sandbox"));
    assert_eq!(one.header("x-content-type-options"), Some("nosniff"));

    let latest = get(&r, "/v1/watches/alpha/versions/latest").await;
    assert_eq!(latest.body, b"{\"n\": 2}");
    assert_eq!(latest.header("content-type"), Some("application/json"));
    assert_eq!(latest.header("x-polld-version"), Some("2"));
    let etag2 = latest.header("etag").unwrap().to_owned();

    // polld as a conditional-GET cache.
    let cond = |uri: &str, etag: &str| {
        Request::get(uri)
            .header("if-none-match", etag)
            .body(Body::empty())
            .unwrap()
    };
    let res = send(&r, cond("/v1/watches/alpha/versions/latest", &etag2)).await;
    assert_eq!(res.status, StatusCode::NOT_MODIFIED);
    assert!(res.body.is_empty());
    assert_eq!(res.header("etag"), Some(etag2.as_str()));
    let res = send(&r, cond("/v1/watches/alpha/versions/1", &etag2)).await;
    assert_eq!(
        res.status,
        StatusCode::OK,
        "another version's tag does not match"
    );
    let res = send(
        &r,
        cond("/v1/watches/alpha/versions/1", &format!("W/\"{hash1}\"")),
    )
    .await;
    assert_eq!(res.status, StatusCode::NOT_MODIFIED);
    let res = send(
        &r,
        Request::get("/v1/watches/alpha/versions/1")
            .header("if-modified-since", "Tue, 14 Nov 2023 22:13:20 GMT")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status, StatusCode::NOT_MODIFIED);
    // A date after the server's clock is invalid and ignored (RFC 9110 13.1.3).
    let res = send(
        &r,
        Request::get("/v1/watches/alpha/versions/1")
            .header("if-modified-since", "Fri, 01 Jan 2100 00:00:00 GMT")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "a future date is ignored");

    get(&r, "/v1/watches/alpha/versions/3")
        .await
        .error(StatusCode::NOT_FOUND);
    get(&r, "/v1/watches/alpha/versions/first")
        .await
        .error(StatusCode::BAD_REQUEST);
    get(&r, "/v1/watches/nope/versions/1")
        .await
        .error(StatusCode::NOT_FOUND);
    get(&r, "/v1/watches/nope/versions")
        .await
        .error(StatusCode::NOT_FOUND);
}

/// The headers kept with a version are served: in the version list as an
/// object by lower-case name (a repeated name's values joined with ", "),
/// and `Content-Language` with the body itself.
#[tokio::test]
async fn versions_serve_their_stored_headers() {
    let fx = fixture();
    let commit = |body: &[u8], headers: &[(&str, &str)]| {
        fx.store
            .apply_blocking(vec![polld_store::Outcome {
                state: state("alpha").into(),
                new_version: Some(polld_store::NewVersion {
                    body: body.to_vec(),
                    hash: polld_store::hash_body(body),
                    content_type: Some("text/html".into()),
                    headers: headers
                        .iter()
                        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                        .collect(),
                    fetched_at_ms: 1_700_000_000_000,
                }),
                events: vec![],
                keep_versions: 10,
            }])
            .unwrap();
    };
    commit(
        b"<p>eins</p>",
        &[
            ("content-type", "text/html"),
            ("Content-Language", "de-CH"),
            ("etag", "\"v1\""),
            ("link", "<https://example.org/2>; rel=\"next\""),
            ("Link", "<https://example.org/0>; rel=\"prev\""),
        ],
    );
    commit(b"<p>two</p>", &[]);
    let r = fx.router();

    let list = get(&r, "/v1/watches/alpha/versions").await.json();
    let v1 = &list["versions"][0];
    assert_eq!(
        v1["headers"],
        serde_json::json!({
            "content-type": "text/html",
            "content-language": "de-CH",
            "etag": "\"v1\"",
            "link": "<https://example.org/2>; rel=\"next\", <https://example.org/0>; rel=\"prev\"",
        })
    );
    // The fields there were before are unchanged.
    assert_eq!(v1["number"], 1);
    assert_eq!(v1["content_type"], "text/html");
    assert_eq!(
        list["versions"][1]["headers"],
        serde_json::json!({}),
        "none kept: an empty object, never missing"
    );

    let one = get(&r, "/v1/watches/alpha/versions/1").await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.header("content-language"), Some("de-CH"));
    assert_eq!(one.header("content-type"), Some("text/html"));
    let latest = get(&r, "/v1/watches/alpha/versions/latest").await;
    assert_eq!(latest.body, b"<p>two</p>");
    assert_eq!(latest.header("content-language"), None, "none stored");
    // A 304 carries no representation metadata but its validators.
    let etag = one.header("etag").unwrap();
    let res = send(
        &r,
        Request::get("/v1/watches/alpha/versions/1")
            .header("if-none-match", etag)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status, StatusCode::NOT_MODIFIED);
    assert_eq!(res.header("content-language"), None);
}

#[tokio::test]
async fn diffs() {
    let fx = fixture();
    fx.commit("alpha", Some((b"a\nb\nc\n", "text/plain")), vec![]);
    let r = fx.router();
    let msg = get(&r, "/v1/watches/alpha/diff")
        .await
        .error(StatusCode::NOT_FOUND);
    assert!(msg.contains("no version before"), "{msg}");
    assert!(msg.contains("name one with from=N"), "{msg}");

    fx.commit("alpha", Some((b"a\nB\nc\n", "text/plain")), vec![]);
    fx.commit("alpha", Some((b"a\nB\nc\nd\n", "text/plain")), vec![]);
    let res = get(&r, "/v1/watches/alpha/diff").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(
        res.header("content-type"),
        Some("text/x-diff; charset=utf-8")
    );
    assert_eq!(
        res.text(),
        "--- alpha@2\n+++ alpha@3\n@@ -1,3 +1,4 @@\n a\n B\n c\n+d\n"
    );
    let res = get(&r, "/v1/watches/alpha/diff?from=1&to=2").await;
    assert!(res.text().contains("-b\n+B\n"), "{}", res.text());
    // `to` alone: compared with the version before it.
    let res = get(&r, "/v1/watches/alpha/diff?to=2").await;
    assert!(
        res.text().starts_with("--- alpha@1\n+++ alpha@2\n"),
        "{}",
        res.text()
    );

    get(&r, "/v1/watches/alpha/diff?from=x")
        .await
        .error(StatusCode::BAD_REQUEST);
    get(&r, "/v1/watches/alpha/diff?from=1&to=9")
        .await
        .error(StatusCode::NOT_FOUND);
    // A `to` that does not exist is named as such, not as "nothing before it".
    let msg = get(&r, "/v1/watches/alpha/diff?to=0")
        .await
        .error(StatusCode::NOT_FOUND);
    assert!(msg.contains("no version 0"), "{msg}");
    get(&r, "/v1/watches/nope/diff")
        .await
        .error(StatusCode::NOT_FOUND);

    // JSON patch between JSON bodies; 406 when a body is not JSON.
    let patch = |uri: &str| {
        Request::get(uri)
            .header("accept", "application/json-patch+json")
            .body(Body::empty())
            .unwrap()
    };
    let msg = send(&r, patch("/v1/watches/alpha/diff"))
        .await
        .error(StatusCode::NOT_ACCEPTABLE);
    assert!(msg.contains("not JSON"), "{msg}");
    fx.commit(
        "beta",
        Some((br#"{"status":"running","n":[1]}"#, "application/json")),
        vec![],
    );
    fx.commit(
        "beta",
        Some((br#"{"status":"done","n":[1,2]}"#, "application/json")),
        vec![],
    );
    let res = send(&r, patch("/v1/watches/beta/diff")).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(
        res.header("content-type"),
        Some("application/json-patch+json")
    );
    let ops = res.json();
    assert!(
        ops.as_array()
            .unwrap()
            .contains(&serde_json::json!({"op": "replace", "path": "/status", "value": "done"})),
        "{ops}"
    );
    assert!(
        ops.as_array()
            .unwrap()
            .contains(&serde_json::json!({"op": "add", "path": "/n/1", "value": 2})),
        "{ops}"
    );

    // Binary bodies: a summary line, not a diff.
    fx.commit("gamma", Some((b"\x89PNG\0\x01", "image/png")), vec![]);
    fx.commit("gamma", Some((b"\x89PNG\0\x02\x03", "image/png")), vec![]);
    let text = get(&r, "/v1/watches/gamma/diff").await.text();
    assert!(
        text.starts_with("Binary versions gamma@1 and gamma@2 differ (6 -> 7 bytes"),
        "{text}"
    );
}

/// `Accept` is negotiated as RFC 9110 12.5.1 says: q-values count (`q=0`
/// refuses a type), the media type must match exactly (case-insensitive),
/// and a client that also takes text gets the text diff when a body is not
/// JSON instead of a 406. The answer depends on `Accept`, so it says
/// `Vary: Accept`.
#[tokio::test]
async fn diff_negotiates_accept_by_q_value() {
    let fx = fixture();
    fx.commit("alpha", Some((b"a\n", "text/plain")), vec![]);
    fx.commit("alpha", Some((b"b\n", "text/plain")), vec![]);
    fx.commit("beta", Some((br#"{"n":1}"#, "application/json")), vec![]);
    fx.commit("beta", Some((br#"{"n":2}"#, "application/json")), vec![]);
    let r = fx.router();
    let diff = |uri: &str, accept: &str| {
        Request::get(uri)
            .header("accept", accept)
            .body(Body::empty())
            .unwrap()
    };
    let text = "text/x-diff; charset=utf-8";
    let patch = "application/json-patch+json";
    for (watch, accept, want) in [
        // JSON bodies.
        ("beta", "application/json-patch+json", patch),
        ("beta", "APPLICATION/JSON-PATCH+JSON", patch),
        ("beta", "*/*, application/json-patch+json", patch),
        ("beta", "application/json-patch+json;q=0", text),
        ("beta", "application/json-patch+json; q=0.0, */*", text),
        (
            "beta",
            "text/x-diff, application/json-patch+json;q=0.5",
            text,
        ),
        ("beta", "application/json-patch+jsonx", text),
        ("beta", "application/json", text),
        // Not JSON, but text is acceptable too: the text diff, not 406.
        (
            "alpha",
            "application/json-patch+json, text/x-diff;q=0.5",
            text,
        ),
        ("alpha", "application/json-patch+json, text/*;q=0.1", text),
        ("alpha", "application/json-patch+json, */*;q=0.1", text),
    ] {
        let res = send(&r, diff(&format!("/v1/watches/{watch}/diff"), accept)).await;
        assert_eq!(
            res.status,
            StatusCode::OK,
            "{watch} {accept}: {:?}",
            res.text()
        );
        assert_eq!(res.header("content-type"), Some(want), "{watch} {accept}");
        assert_eq!(res.header("vary"), Some("accept"), "{watch} {accept}");
    }
    // Only a patch is acceptable, and a body is not JSON: 406, as documented.
    for accept in [
        "application/json-patch+json",
        "application/json-patch+json, text/x-diff;q=0",
    ] {
        let msg = send(&r, diff("/v1/watches/alpha/diff", accept))
            .await
            .error(StatusCode::NOT_ACCEPTABLE);
        assert!(msg.contains("not JSON"), "{accept}: {msg}");
    }
    let res = get(&r, "/v1/watches/alpha/diff").await;
    assert_eq!(res.header("content-type"), Some(text));
    assert_eq!(res.header("vary"), Some("accept"));
}

/// Text in the charset its `Content-Type` declares (or that a UTF-16 BOM
/// names) is text: it is decoded and diffed line by line, the diff in
/// UTF-8, not summarized as binary. Bytes that are not valid in the
/// charset, or NULs, still make a body binary.
#[tokio::test]
async fn diffs_decode_the_declared_charset() {
    let fx = fixture();
    let r = fx.router();
    let diff_of = |id: &str, old: &[u8], old_type: &str, new: &[u8], new_type: &str| {
        fx.commit(id, Some((old, old_type)), vec![]);
        fx.commit(id, Some((new, new_type)), vec![]);
        let r = r.clone();
        let uri = format!("/v1/watches/{id}/diff");
        async move {
            let res = get(&r, &uri).await;
            assert_eq!(res.status, StatusCode::OK, "{uri}");
            assert_eq!(
                res.header("content-type"),
                Some("text/x-diff; charset=utf-8")
            );
            res.text()
        }
    };
    let latin1 = "text/html; charset=ISO-8859-1";
    let text = diff_of(
        "latin",
        b"<p>caf\xe9</p>\nsame\n",
        latin1,
        b"<p>caf\xe8</p>\nsame\n",
        latin1,
    )
    .await;
    assert_eq!(
        text,
        "--- latin@1\n+++ latin@2\n@@ -1,2 +1,2 @@\n-<p>caf\u{e9}</p>\n+<p>caf\u{e8}</p>\n same\n"
    );
    // A quoted label, another family of charsets.
    let sjis = "text/plain; charset=\"Shift_JIS\"";
    let text = diff_of(
        "sjis",
        b"\x93\xfa\x96\x7b\n",
        sjis,
        b"\x93\xfa\x96\x7b\n\x8c\xea\n",
        sjis,
    )
    .await;
    assert!(text.ends_with(" \u{65e5}\u{672c}\n+\u{8a9e}\n"), "{text}");
    // UTF-16 with its BOM, no charset declared.
    let utf16 = |s: &str| {
        let mut b = vec![0xff, 0xfe];
        b.extend(s.encode_utf16().flat_map(u16::to_le_bytes));
        b
    };
    let text = diff_of(
        "wide",
        &utf16("one\ntwo\n"),
        "text/csv",
        &utf16("one\n2\n"),
        "text/csv",
    )
    .await;
    assert!(text.ends_with(" one\n-two\n+2\n"), "{text}");
    // A charset change alone is no change of the text.
    let text = diff_of(
        "moved",
        b"caf\xe9\n",
        latin1,
        "caf\u{e9}\n".as_bytes(),
        "text/html; charset=utf-8",
    )
    .await;
    assert_eq!(text, "");

    // Still binary: not UTF-8 with none declared, NULs, invalid in the charset.
    for (id, old, ct) in [
        ("raw", &b"caf\xe9\n"[..], "text/plain"),
        ("nul", &b"a\0b\n"[..], latin1),
        ("bad", &b"\x82\n"[..], "text/plain; charset=shift_jis"),
    ] {
        let text = diff_of(id, old, ct, b"plain\n", ct).await;
        assert!(
            text.starts_with(&format!("Binary versions {id}@1 and {id}@2 differ")),
            "{id}: {text}"
        );
    }
}

#[tokio::test]
async fn token_guards_v1_only() {
    let mut opts = ApiOptions::new();
    opts.token = Some(ApiToken::new("s3cret\n").unwrap());
    assert!(
        !format!("{opts:?}").contains("s3cret"),
        "the token leaks through Debug"
    );
    let fx = fixture_with(opts, 1000);
    fx.commit("alpha", None, vec![]);
    let r = fx.router();

    let res = get(&r, "/v1/watches").await;
    res.error(StatusCode::UNAUTHORIZED);
    assert!(
        res.header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    for wrong in [
        "Bearer s3cre",
        "Bearer s3cret2",
        "Basic s3cret",
        "s3cret",
        "Bearer ",
    ] {
        let req = Request::get("/v1/watches/alpha")
            .header("authorization", wrong)
            .body(Body::empty())
            .unwrap();
        send(&r, req).await.error(StatusCode::UNAUTHORIZED);
    }
    let req = Request::get("/v1/watches/alpha")
        .header("authorization", "Bearer s3cret")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&r, req).await.status, StatusCode::OK);
    let req = Request::get("/v1/openapi.json")
        .header("authorization", "bearer s3cret")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&r, req).await.status, StatusCode::OK);
    // Unknown /v1 paths do not tell whether they exist before the token.
    get(&r, "/v1/nope").await.error(StatusCode::UNAUTHORIZED);
    // Health and metrics are for local probes and scrapers: no token.
    assert_eq!(get(&r, "/healthz").await.status, StatusCode::OK);
    assert_eq!(get(&r, "/metrics").await.status, StatusCode::OK);
}

#[tokio::test]
async fn foreign_hosts_are_rejected_and_no_cors() {
    let mut opts = ApiOptions::new();
    opts.allowed_hosts = vec!["polld.lan".into()];
    let fx = fixture_with(opts, 1000);
    let r = fx.router();
    let with_host = |host: &str| {
        Request::get("/v1/watches")
            .header("host", host)
            .header("origin", "http://evil.example")
            .body(Body::empty())
            .unwrap()
    };
    for bad in [
        "evil.example",
        "evil.example:8377",
        "localhost.evil.example",
    ] {
        let msg = send(&r, with_host(bad)).await.error(StatusCode::FORBIDDEN);
        assert!(msg.contains("not allowed"), "{msg}");
    }
    let health = Request::get("/healthz")
        .header("host", "evil.example")
        .body(Body::empty())
        .unwrap();
    send(&r, health).await.error(StatusCode::FORBIDDEN);
    for good in [
        "localhost:8377",
        "127.0.0.1:8377",
        "[::1]:8377",
        "polld.lan",
        "polld.lan:80",
        "localhost.:8377",
        "polld.lan.",
    ] {
        let res = send(&r, with_host(good)).await;
        assert_eq!(res.status, StatusCode::OK, "{good}");
        assert!(
            !res.headers
                .keys()
                .any(|k| k.as_str().starts_with("access-control-")),
            "CORS headers: {:?}",
            res.headers
        );
    }
}

#[tokio::test]
async fn unknown_paths_and_methods_are_json() {
    let fx = fixture();
    let r = fx.router();
    let msg = get(&r, "/nope").await.error(StatusCode::NOT_FOUND);
    assert!(msg.contains("/nope"), "{msg}");
    get(&r, "/v1/nope").await.error(StatusCode::NOT_FOUND);
    let del = Request::delete("/v1/watches").body(Body::empty()).unwrap();
    send(&r, del).await.error(StatusCode::METHOD_NOT_ALLOWED);
    // A query axum cannot even decode is a JSON 400 as well.
    get(&r, "/v1/watches?limit=%ZZ")
        .await
        .error(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn openapi_documents_every_route() {
    let fx = fixture();
    fx.commit("alpha", Some((b"1", "text/plain")), vec![]);
    fx.commit("alpha", Some((b"2", "text/plain")), vec![]);
    let r = fx.router();
    let res = get(&r, "/v1/openapi.json").await;
    assert_eq!(res.status, StatusCode::OK);
    let doc = res.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    documented.sort();
    // The paths of DESIGN.md, exactly.
    let mut design: Vec<(String, String)> = [
        ("GET", "/v1/watches"),
        ("GET", "/v1/watches/{id}"),
        ("POST", "/v1/watches/{id}/poll"),
        ("GET", "/v1/watches/{id}/versions"),
        ("GET", "/v1/watches/{id}/versions/{n}"),
        ("GET", "/v1/watches/{id}/diff"),
        ("GET", "/v1/changes"),
        ("GET", "/v1/changes/stream"),
        ("GET", "/metrics"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/v1/openapi.json"),
    ]
    .iter()
    .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
    .collect();
    design.sort();
    assert_eq!(documented, design);
    // Every documented route is served (the router is built from the same
    // annotations, so every served route is documented).
    for (method, path) in &documented {
        let uri = path.replace("{id}", "alpha").replace("{n}", "1");
        let req = Request::builder()
            .method(method.as_str())
            .uri(&uri)
            .body(Body::empty())
            .unwrap();
        let status = if path.ends_with("/stream") {
            // Do not read an endless body: the head is enough.
            use tower::ServiceExt;
            r.clone().oneshot(req).await.unwrap().status()
        } else {
            send(&r, req).await.status
        };
        assert!(status.is_success(), "{method} {uri}: {status}");
    }
}

/// The document says what the guard and the handlers really answer: the
/// token and its 401 on `/v1` only, the Host check's 403 everywhere, both
/// diff formats, and fields that are always sent marked required.
#[tokio::test]
async fn openapi_declares_auth_errors_and_formats() {
    let fx = fixture();
    let doc = get(&fx.router(), "/v1/openapi.json").await.json();
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let error_ref = "#/components/schemas/ErrorJson";
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let at = format!("{method} {path}");
            let responses = op["responses"].as_object().unwrap();
            let error_body = |status: &str| {
                responses
                    .get(status)
                    .map(|r| r["content"]["application/json"]["schema"]["$ref"].clone())
            };
            assert_eq!(error_body("403"), Some(error_ref.into()), "{at}");
            if path.starts_with("/v1/") {
                assert_eq!(op["security"], serde_json::json!([{"bearer": []}]), "{at}");
                assert_eq!(error_body("401"), Some(error_ref.into()), "{at}");
            } else {
                assert!(op.get("security").is_none(), "{at}: {op}");
                assert!(!responses.contains_key("401"), "{at}");
            }
            // The store's failures on every /v1 path that reads it, and
            // nowhere else.
            let reads_store = path.starts_with("/v1/") && path != "/v1/openapi.json";
            let fails = reads_store || path == "/readyz";
            assert_eq!(responses.contains_key("503"), fails, "{at}");
            assert_eq!(responses.contains_key("500"), fails, "{at}");
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    // 410 adds where to resume to the error body.
                    let schema = if status == "410" {
                        "#/components/schemas/GoneJson"
                    } else {
                        error_ref
                    };
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"], schema,
                        "{at} {status}"
                    );
                }
            }
        }
    }
    let header = |path: &str, method: &str, status: &str, name: &str| {
        doc["paths"][path][method]["responses"][status]["headers"]
            .get(name)
            .is_some()
    };
    assert!(header("/v1/watches", "get", "401", "WWW-Authenticate"));
    assert!(header("/v1/changes", "get", "429", "Retry-After"));
    assert!(header("/v1/changes/stream", "get", "429", "Retry-After"));
    assert!(header(
        "/v1/watches/{id}/versions/{n}",
        "get",
        "200",
        "ETag"
    ));
    let diff = &doc["paths"]["/v1/watches/{id}/diff"]["get"]["responses"]["200"]["content"];
    assert!(diff.get("text/x-diff").is_some(), "{diff}");
    assert!(diff.get("application/json-patch+json").is_some(), "{diff}");
    let schemas = &doc["components"]["schemas"];
    let required = |schema: &str| -> Vec<String> {
        serde_json::from_value(schemas[schema]["required"].clone()).unwrap()
    };
    assert!(required("WatchList").contains(&"next".to_owned()));
    assert!(required("VersionJson").contains(&"content_type".to_owned()));
    assert!(required("VersionJson").contains(&"headers".to_owned()));
    let headers = &schemas["VersionJson"]["properties"]["headers"];
    assert_eq!(headers["type"], "object", "{headers}");
    assert_eq!(
        headers["additionalProperties"]["type"], "string",
        "{headers}"
    );
    assert!(header(
        "/v1/watches/{id}/versions/{n}",
        "get",
        "200",
        "Content-Language"
    ));
    assert!(required("ChangeJson").contains(&"version".to_owned()));
    assert_eq!(required("GoneJson"), ["error", "resync_after"]);
    // Every field a watch is served with is in its required list.
    let res = {
        fx.commit("alpha", Some((b"1", "text/plain")), vec![]);
        get(&fx.router(), "/v1/watches/alpha").await.json()
    };
    let mut served: Vec<String> = res.as_object().unwrap().keys().cloned().collect();
    let mut declared = required("WatchJson");
    served.sort();
    declared.sort();
    assert_eq!(served, declared);
}

#[tokio::test]
async fn a_closed_store_is_503_json() {
    let fx = fixture();
    fx.commit("alpha", None, vec![]);
    let r = fx.router();
    fx.store.clone().close().unwrap();
    let msg = get(&r, "/v1/watches")
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(msg, "the store is closed");
    get(&r, "/v1/watches/alpha/versions")
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE);
}

/// HEAD answers as GET without the body, also for an error whose text
/// comes from an extractor's rejection (rewritten to JSON before the body
/// is dropped, so its length is GET's).
#[tokio::test]
async fn head_is_get_without_the_body() {
    let fx = fixture();
    let r = fx.router();
    for uri in [
        "/healthz",
        "/v1/watches/%FF",
        "/v1/changes?after=abc",
        "/v1/nowhere",
    ] {
        let full = get(&r, uri).await;
        let head = send(&r, Request::head(uri).body(Body::empty()).unwrap()).await;
        assert_eq!(head.status, full.status, "{uri}");
        assert!(head.body.is_empty(), "{uri}: a body on HEAD");
        let length = full.body.len().to_string();
        assert_eq!(
            head.header("content-length"),
            Some(length.as_str()),
            "{uri}: GET's length"
        );
        assert_eq!(
            head.header("content-type"),
            full.header("content-type"),
            "{uri}"
        );
    }
    assert_eq!(
        get(&r, "/v1/watches/%FF").await.status,
        StatusCode::BAD_REQUEST
    );
}

/// A watch's URL carries the credentials of a watch list written like
/// `https://user:pass@host/?access_token=...` (or `https://TOKEN@host/`);
/// the API is open to every local user when no `api_token_file` is set, so
/// its JSON shows the URL as logs do, not as configured.
#[tokio::test]
async fn watch_urls_leave_the_api_without_their_secrets() {
    let fx = fixture();
    let r = fx.router();
    let mut with_password = state("pw");
    with_password.url = "https://bob:hunter2@example.org/feed?page=2&access_token=t0ps3cret".into();
    fx.commit_state(with_password, None, vec![]);
    let mut token_as_user = state("user");
    token_as_user.url = "https://ghp_s3cr3tt0k3n@example.org/repos".into();
    fx.commit_state(token_as_user, None, vec![]);

    let one = get(&r, "/v1/watches/pw").await.json();
    assert_eq!(
        one["url"],
        "https://bob:REDACTED@example.org/feed?page=2&access_token=REDACTED"
    );
    let list = get(&r, "/v1/watches").await.text();
    for secret in ["hunter2", "t0ps3cret", "ghp_s3cr3tt0k3n"] {
        assert!(!list.contains(secret), "{secret} in {list}");
    }
    let user = get(&r, "/v1/watches/user").await.json();
    assert_eq!(user["url"], "https://REDACTED@example.org/repos");
}

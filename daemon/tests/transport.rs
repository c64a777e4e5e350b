//! The agent's HTTP client (`agent::transport`, `agent::body`) against
//! loopback servers: what goes on the wire besides the watch's own headers
//! (User-Agent, Accept, Accept-Encoding, Basic auth from the URL), every
//! content coding it offers decoded, https going through TLS, and kept-alive
//! connections reused only when their last answer was read to its end.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::watch;
use polld_config::Watch;
use polld_daemon::agent::{Agent, AgentOptions, OutcomeKind, PollOutcome, PollRequest};
use tokio::io::AsyncReadExt;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const UA: &str = "polld-transport-test/1";

/// One poll of `watch` by an agent of its own.
async fn poll(watch: &Watch) -> PollOutcome {
    poll_with(&agent(), watch).await
}

fn changed_body(outcome: &PollOutcome) -> &[u8] {
    match &outcome.kind {
        OutcomeKind::Changed { body, .. } => body,
        other => panic!("not a new body: {other:?}"),
    }
}

/// `plain` compressed with `coding`, by the same library's encoders.
async fn encode(coding: &str, plain: &[u8]) -> Vec<u8> {
    use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZlibEncoder, ZstdEncoder};
    let mut out = Vec::new();
    match coding {
        "gzip" => GzipEncoder::new(plain).read_to_end(&mut out).await,
        "deflate" => ZlibEncoder::new(plain).read_to_end(&mut out).await,
        "br" => BrotliEncoder::new(plain).read_to_end(&mut out).await,
        "zstd" => ZstdEncoder::new(plain).read_to_end(&mut out).await,
        other => panic!("{other}"),
    }
    .unwrap();
    out
}

/// A server answering `at` with `body` as it is, labelled `coding`.
async fn encoded_at(at: &str, coding: &str, body: impl Into<Vec<u8>>) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(path(at))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-encoding", coding)
                .set_body_bytes(body),
        )
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn every_offered_coding_is_asked_for_and_decoded() {
    let plain = "the same line again and again\n".repeat(200);
    let server = MockServer::start().await;
    for coding in ["gzip", "deflate", "br", "zstd"] {
        let encoded = encode(coding, plain.as_bytes()).await;
        assert!(encoded.len() < plain.len() / 4, "{coding} compresses");
        Mock::given(path(format!("/{coding}")))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("content-encoding", coding)
                    .set_body_bytes(encoded),
            )
            .mount(&server)
            .await;
    }
    for coding in ["gzip", "deflate", "br", "zstd"] {
        let out = poll(&watch(&format!("{}/{coding}", server.uri()), "")).await;
        assert_eq!(
            changed_body(&out),
            plain.as_bytes(),
            "{coding}: decoded to the original"
        );
    }
    for request in server.received_requests().await.unwrap() {
        assert_eq!(
            request.headers.get("accept-encoding").unwrap(),
            "zstd,gzip,deflate,br"
        );
    }
}

/// Codings stacked by a server (`Content-Encoding: gzip, br`, on one field
/// line or several) are undone in reverse order; a list with one coding
/// polld does not know is kept as sent.
#[tokio::test]
async fn stacked_codings_are_undone_last_first() {
    let plain = "stacked codings, line after line\n".repeat(100);
    let twice = encode("br", &encode("gzip", plain.as_bytes()).await).await;
    let one_line = encoded_at("/one-line", "gzip, identity, BR", twice.clone()).await;
    let two_lines = MockServer::start().await;
    Mock::given(path("/two-lines"))
        .respond_with(
            ResponseTemplate::new(200)
                .append_header("content-encoding", "gzip")
                .append_header("content-encoding", "br")
                .set_body_bytes(twice.clone()),
        )
        .mount(&two_lines)
        .await;
    let unknown = encoded_at("/unknown", "x-custom, br", twice.clone()).await;
    for url in [
        format!("{}/one-line", one_line.uri()),
        format!("{}/two-lines", two_lines.uri()),
    ] {
        let out = poll(&watch(&url, "")).await;
        assert_eq!(changed_body(&out), plain.as_bytes(), "{url}");
    }
    let out = poll(&watch(&format!("{}/unknown", unknown.uri()), "")).await;
    assert_eq!(changed_body(&out), &twice[..]);
}

/// RFC 9659: a zstd content coding uses a window of at most 8 MB. A frame
/// that asks for more (here 16 MiB) is refused, not given the memory; one
/// at the limit decodes.
#[tokio::test]
async fn a_zstd_window_above_8_mb_is_refused() {
    use async_compression::{Level, tokio::bufread::ZstdEncoder, zstd::CParameter};
    let plain = "a line of text that repeats\n".repeat(100);
    let at = |log: u32| {
        let plain = plain.clone();
        async move {
            let mut out = Vec::new();
            ZstdEncoder::with_quality_and_params(
                plain.as_bytes(),
                Level::Default,
                &[CParameter::window_log(log)],
            )
            .read_to_end(&mut out)
            .await
            .unwrap();
            out
        }
    };
    let large = encoded_at("/large", "zstd", at(24).await).await;
    let limit = encoded_at("/limit", "zstd", at(23).await).await;
    let out = poll(&watch(&format!("{}/large", large.uri()), "")).await;
    match &out.kind {
        OutcomeKind::Failed { error, .. } => assert!(error.contains("body"), "{error}"),
        other => panic!("a 16 MiB window was decoded: {other:?}"),
    }
    let out = poll(&watch(&format!("{}/limit", limit.uri()), "")).await;
    assert_eq!(changed_body(&out), plain.as_bytes());
}

#[tokio::test]
async fn a_coding_polld_does_not_decode_is_kept_as_sent() {
    let server = encoded_at("/x", "x-custom", &b"\x01\x02opaque"[..]).await;
    let out = poll(&watch(&format!("{}/x", server.uri()), "")).await;
    assert_eq!(changed_body(&out), b"\x01\x02opaque");
}

#[tokio::test]
async fn a_broken_compressed_body_is_a_read_error_naming_the_url() {
    let server = encoded_at("/broken", "gzip", &b"this is not gzip at all"[..]).await;
    let url = format!("{}/broken", server.uri());
    let out = poll(&watch(&url, "")).await;
    match &out.kind {
        OutcomeKind::Failed { error, retryable } => {
            assert!(error.contains(&url) && error.contains("body"), "{error}");
            assert!(retryable, "a bad body may be better next time");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn polld_s_defaults_go_where_the_watch_sets_none() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .mount(&server)
        .await;
    poll(&watch(&format!("{}/default", server.uri()), "")).await;
    poll(&watch(
        &format!("{}/own", server.uri()),
        "headers = { \"User-Agent\" = \"custom/1\", \"Accept\" = \"application/json\", \"Accept-Encoding\" = \"identity\" }",
    ))
    .await;
    poll(&watch(
        &format!("{}/range", server.uri()),
        "headers = { \"Range\" = \"bytes=0-99\" }",
    ))
    .await;
    let requests = server.received_requests().await.unwrap();
    let seen = |path: &str, name: &str| -> Vec<String> {
        let request = requests.iter().find(|r| r.url.path() == path).unwrap();
        request
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(seen("/default", "user-agent"), [UA]);
    assert_eq!(seen("/default", "accept"), ["*/*"]);
    assert_eq!(seen("/own", "user-agent"), ["custom/1"], "one, the watch's");
    assert_eq!(seen("/own", "accept"), ["application/json"]);
    assert_eq!(seen("/own", "accept-encoding"), ["identity"]);
    assert!(
        seen("/range", "accept-encoding").is_empty(),
        "a range of an encoded body is not a range of the body"
    );
}

#[tokio::test]
async fn user_info_in_the_url_is_basic_auth_to_that_origin_only() {
    let other = MockServer::start().await;
    Mock::given(path("/elsewhere"))
        .respond_with(ResponseTemplate::new(200).set_body_string("moved"))
        .mount(&other)
        .await;
    let server = MockServer::start().await;
    // "bob:hunter 2" percent-encoded in the URL, decoded in the header.
    Mock::given(path("/private"))
        .and(header("authorization", "Basic Ym9iOmh1bnRlciAy"))
        .respond_with(ResponseTemplate::new(200).set_body_string("secret page"))
        .mount(&server)
        .await;
    // The Location carries user info of its own: still no credentials
    // across origins.
    let elsewhere = other.uri().replace("http://", "http://eve:pw@");
    Mock::given(path("/away"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("location", format!("{elsewhere}/elsewhere").as_str()),
        )
        .mount(&server)
        .await;
    let with_user = |path: &str| {
        let mut url = url::Url::parse(&server.uri()).unwrap().join(path).unwrap();
        url.set_username("bob").unwrap();
        url.set_password(Some("hunter 2")).unwrap();
        url.to_string()
    };
    let out = poll(&watch(&with_user("/private"), "")).await;
    assert_eq!(changed_body(&out), b"secret page");
    let request = &server.received_requests().await.unwrap()[0];
    assert!(
        !request.url.as_str().contains("hunter"),
        "the user info is not in the request target: {}",
        request.url
    );

    let out = poll(&watch(&with_user("/away"), "")).await;
    assert_eq!(changed_body(&out), b"moved");
    let followed = &other.received_requests().await.unwrap()[0];
    assert!(
        followed.headers.get("authorization").is_none(),
        "credentials went along a redirect to another origin"
    );
}

#[tokio::test]
async fn https_goes_through_tls() {
    // A plain-HTTP server behind an https URL: the client must try a TLS
    // handshake (and fail at it), not send plain text or refuse the scheme.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("plain"))
        .mount(&server)
        .await;
    let url = server.uri().replace("http://", "https://");
    let out = poll(&watch(&format!("{url}/tls"), "")).await;
    match &out.kind {
        OutcomeKind::Failed { error, .. } => {
            assert!(error.contains("cannot connect"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        server.received_requests().await.unwrap().is_empty(),
        "a request was sent in plain text"
    );
}

#[tokio::test]
async fn an_empty_body_is_empty_whatever_its_coding_says() {
    let server = MockServer::start().await;
    for coding in ["gzip", "deflate", "br", "zstd"] {
        Mock::given(path(format!("/{coding}")))
            .respond_with(ResponseTemplate::new(200).insert_header("content-encoding", coding))
            .mount(&server)
            .await;
    }
    for coding in ["gzip", "deflate", "br", "zstd"] {
        let out = poll(&watch(&format!("{}/{coding}", server.uri()), "")).await;
        assert_eq!(changed_body(&out), b"", "{coding}");
    }
}

#[tokio::test]
async fn several_gzip_members_are_one_body() {
    let mut body = encode("gzip", b"first,").await;
    body.extend(encode("gzip", b"second").await);
    let server = encoded_at("/members", "gzip", body).await;
    let out = poll(&watch(&format!("{}/members", server.uri()), "")).await;
    assert_eq!(changed_body(&out), b"first,second");
}

#[tokio::test]
async fn what_follows_a_gzip_member_is_ignored() {
    let mut body = encode("gzip", b"hello").await;
    body.extend_from_slice(b"\n\0\0");
    let server = encoded_at("/padded", "gzip", body).await;
    let out = poll(&watch(&format!("{}/padded", server.uri()), "")).await;
    assert_eq!(changed_body(&out), b"hello");
}

#[tokio::test]
async fn conditions_see_the_decoded_body_s_headers() {
    // `Content-Encoding` and `Content-Length` describe the bytes on the
    // wire; once decoded, the body has neither.
    let server = encoded_at("/z", "gzip", encode("gzip", b"done").await).await;
    let out = poll(&watch(
        &format!("{}/z", server.uri()),
        "fail_if = [\"header:content-encoding\", \"header:content-length\"]",
    ))
    .await;
    assert_eq!(changed_body(&out), b"done");
    assert!(out.finished.is_none(), "{:?}", out.finished);
}

#[tokio::test]
async fn the_connect_timeout_covers_the_tls_handshake() {
    // Accepts TCP and never says a word: a TLS handshake that never ends.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        loop {
            if let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        }
    });
    let started = std::time::Instant::now();
    let out = poll(&watch(
        &format!("https://127.0.0.1:{port}/"),
        "connect_timeout = \"1s\"\ntimeout = \"10s\"",
    ))
    .await;
    let took = started.elapsed();
    held.abort();
    match &out.kind {
        OutcomeKind::Failed { error, retryable } => {
            assert!(error.contains("timed out"), "{error}");
            assert!(retryable);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        took < std::time::Duration::from_secs(5),
        "gave up after {took:?}, not at the 1 s connect timeout"
    );
}

/// A server that sends a complete gzip body in a chunked answer and then
/// drips junk for ever: the body is what was decoded, at once, not a
/// timeout.
#[tokio::test]
async fn a_body_that_never_ends_after_its_encoded_data_is_not_waited_for() {
    use tokio::io::AsyncWriteExt;
    let gz = encode("gzip", b"hello").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 4096];
        let _ = socket.read(&mut request).await;
        let head =
            "HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n";
        let mut first = head.as_bytes().to_vec();
        first.extend(format!("{:x}\r\n", gz.len()).as_bytes());
        first.extend(&gz);
        first.extend(b"\r\n");
        socket.write_all(&first).await.unwrap();
        // At most 10 s of drips: the test's own bound.
        for _ in 0..10 {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            if socket.write_all(b"1\r\nx\r\n").await.is_err() {
                break;
            }
        }
    });
    let started = std::time::Instant::now();
    let out = poll(&watch(
        &format!("http://127.0.0.1:{port}/drip"),
        "timeout = \"8s\"",
    ))
    .await;
    server.abort();
    assert_eq!(changed_body(&out), b"hello");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

/// The public-only client (for hops a remote server chose away from a
/// public address) does not connect to a name that resolves to loopback:
/// `http://127.0.0.1.nip.io/` or a name pointed at 169.254.169.254 used to
/// pass, the redirect rules judging names by their text. The shared client
/// still does (a watch that names an internal host is the operator's).
#[tokio::test]
async fn the_public_only_client_refuses_names_that_resolve_internal() {
    use polld_daemon::agent::transport::{self, Transport};
    use std::time::Duration;
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("internal"))
        .mount(&server)
        .await;
    let url = url::Url::parse(&format!(
        "http://localhost:{}/meta-data",
        server.address().port()
    ))
    .unwrap();
    let ua = http::HeaderValue::from_static(UA);
    let get = || {
        transport::request(
            &http::Method::GET,
            &url,
            http::HeaderMap::new(),
            None,
            &ua,
            false,
        )
        .unwrap()
    };

    let shared = Transport::new(Duration::from_secs(5), 1).unwrap();
    assert_eq!(shared.send(get()).await.unwrap().status(), 200);

    let public = Transport::public_only(Duration::from_secs(5), 1).unwrap();
    let err = public.send(get()).await.expect_err("connected to loopback");
    let text = transport::error_text(&err);
    assert!(text.contains("resolves to the internal address"), "{text}");
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

/// An HTTP/1.1 server on loopback that counts the connections it accepts
/// and answers the requests on them in order, the `n`th (of all) with
/// `answer(n)`; a connection stays open unless its answer closes it.
async fn counting_server(answer: fn(usize) -> String) -> (String, Arc<AtomicUsize>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            let requests = requests.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    let Ok(read) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..read]);
                    // GETs without a body: a request ends at its blank line.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let text = answer(requests.fetch_add(1, Ordering::SeqCst));
                        if stream.write_all(text.as_bytes()).await.is_err() {
                            return;
                        }
                        if text.to_ascii_lowercase().contains("connection: close") {
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, connections)
}

/// An HTTP/1.1 200 with `body` (after `extra` header lines, each ending in CRLF).
fn answer_200(extra: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn agent() -> Agent {
    Agent::new(AgentOptions {
        user_agent: UA.into(),
        allow_private_redirects: false,
        idle_per_host: 4,
    })
    .unwrap()
}

async fn poll_with(agent: &Agent, watch: &Watch) -> PollOutcome {
    agent
        .poll(PollRequest {
            watch,
            url: &watch.url,
            etag: None,
            last_modified: None,
            cursor: None,
            last_hash: None,
            cursor_page_hash: None,
            job: None,
        })
        .await
}

#[tokio::test]
async fn polls_in_a_row_share_one_kept_alive_connection() {
    let (url, connections) = counting_server(|n| answer_200("", &format!("answer {n}"))).await;
    let agent = agent();
    let w = watch(&format!("{url}/kept"), "");
    for n in 0..5 {
        let out = poll_with(&agent, &w).await;
        assert_eq!(changed_body(&out), format!("answer {n}").as_bytes());
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_answer_that_closes_its_connection_is_followed_on_a_new_one() {
    let (url, connections) =
        counting_server(|n| answer_200("connection: close\r\n", &format!("answer {n}"))).await;
    let agent = agent();
    let w = watch(&format!("{url}/closing"), "");
    for n in 0..3 {
        let out = poll_with(&agent, &w).await;
        assert_eq!(changed_body(&out), format!("answer {n}").as_bytes());
    }
    assert_eq!(connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_body_left_unread_is_not_taken_for_the_next_answer() {
    // The first answer is refused for its length before its body is read;
    // what is left of it on the connection must not be parsed as the
    // second answer.
    let (url, connections) = counting_server(|n| match n {
        0 => answer_200("", &"HTTP/1.1 200 OK\r\n".repeat(200)),
        _ => answer_200("", "second"),
    })
    .await;
    let agent = agent();
    let w = watch(&format!("{url}/big"), "max_body = \"1KiB\"");
    let out = poll_with(&agent, &w).await;
    assert!(
        matches!(&out.kind, OutcomeKind::Failed { error, .. } if error.contains("body larger than max_body (1024 bytes")),
        "{:?}",
        out.kind
    );
    let out = poll_with(&agent, &w).await;
    assert_eq!(changed_body(&out), b"second");
    // hyper read the rest of the first body, or closed its connection.
    assert!(connections.load(Ordering::SeqCst) <= 2);
}

#[tokio::test]
async fn answers_whose_bodies_go_unread_keep_their_connection() {
    // A 404 on a watch without conditions and a redirect: their bodies are
    // never read, and their connection serves the next request all the same.
    let (url, connections) = counting_server(|n| match n % 3 {
        0 => "HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nnot found".to_owned(),
        1 => "HTTP/1.1 302 Found\r\nlocation: /final\r\ncontent-length: 5\r\n\r\nmoved".to_owned(),
        _ => answer_200("", "final"),
    })
    .await;
    let agent = agent();
    let w = watch(&format!("{url}/start"), "");
    for _ in 0..3 {
        assert_eq!(poll_with(&agent, &w).await.status, Some(404));
        let out = poll_with(&agent, &w).await;
        assert_eq!(changed_body(&out), b"final");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

/// What a connection of [`one_answer_server`] does after its one answer.
#[derive(Clone, Copy)]
enum Then {
    /// Close at once (an idle timeout of zero), and say so.
    Close,
    /// Read the next request, then close without answering it.
    ReadAndClose,
    /// Close with the next request unread: the kernel resets the
    /// connection, as when an idle timeout fires just as a request arrives.
    CloseUnread,
}

/// An HTTP/1.1 server on loopback each of whose connections answers one
/// request, "answer N" (N counts the requests read, on all connections),
/// then does `then`. Its URL, the connections and requests it counted, and
/// the answers after which `Then::Close` closed.
async fn one_answer_server(
    then: Then,
) -> (
    String,
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
    tokio::sync::mpsc::UnboundedReceiver<usize>,
) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (connections, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
    let (counted, seen) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let (seen, closed_tx) = (seen.clone(), closed_tx.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if stream.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let text = answer_200("", &format!("answer {n}"));
                let _ = stream.write_all(text.as_bytes()).await;
                match then {
                    Then::Close => {
                        drop(stream);
                        let _ = closed_tx.send(n);
                    }
                    Then::ReadAndClose => {
                        if stream.read(&mut buf).await.unwrap_or(0) > 0 {
                            seen.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Then::CloseUnread => {
                        let _ = stream.readable().await;
                    }
                }
            });
        }
    });
    (url, connections, requests, closed)
}

#[tokio::test]
async fn a_kept_alive_connection_its_server_closed_while_idle_is_not_an_error() {
    let (url, _, _, mut closed) = one_answer_server(Then::Close).await;
    let agent = agent();
    let w = watch(&format!("{url}/idle"), "");
    for n in 0..3 {
        let out = poll_with(&agent, &w).await;
        assert_eq!(changed_body(&out), format!("answer {n}").as_bytes());
        assert_eq!(closed.recv().await, Some(n));
    }
}

#[tokio::test]
async fn a_get_its_kept_alive_connection_dropped_unanswered_is_sent_again_on_a_new_one() {
    let (url, connections, requests, _) = one_answer_server(Then::ReadAndClose).await;
    let agent = agent();
    let w = watch(&format!("{url}/crossed"), "");
    assert_eq!(changed_body(&poll_with(&agent, &w).await), b"answer 0");
    // Request 1 went out on the first connection and was dropped; its
    // second send was request 2.
    assert_eq!(changed_body(&poll_with(&agent, &w).await), b"answer 2");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    assert_eq!(requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_get_its_kept_alive_connection_reset_is_sent_again_on_a_new_one() {
    let (url, connections, _, _) = one_answer_server(Then::CloseUnread).await;
    let agent = agent();
    let w = watch(&format!("{url}/reset"), "");
    assert_eq!(changed_body(&poll_with(&agent, &w).await), b"answer 0");
    assert_eq!(changed_body(&poll_with(&agent, &w).await), b"answer 1");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

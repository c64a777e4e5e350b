//! The HTTP-client side of `polld status`, `polld diff` and `polld changes`:
//! thin clients of the local API (`polld-api`), over TCP or the Unix socket
//! (`--api unix:/run/polld/api.sock`), printing to stdout.

use std::io::{self, Write};
use std::time::Duration;

use anyhow::{Context, bail};
use polld_config::Listen;
use serde_json::Value;
use url::Url;

/// Time for one plain request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `changes --follow` asks the server to hold each long poll.
const FOLLOW_WAIT_S: u64 = 30;
/// Client-side timeout of a long poll: above the hold, so that the server's
/// empty answer, not our timeout, ends an idle poll.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(FOLLOW_WAIT_S + 15);
/// `--follow` gives up after this many failed requests in a row.
const MAX_FAILURES: u32 = 10;
/// Changes asked for per page (the API's maximum).
const CHANGES_PAGE: usize = 1000;

/// The API URL for a config's `listen`: `http://IP:PORT/` (an unspecified
/// address becomes loopback) or `unix:PATH`.
#[must_use]
pub fn api_url(listen: &Listen) -> Url {
    match listen {
        Listen::Tcp(addr) => {
            let mut addr = *addr;
            if addr.ip().is_unspecified() {
                addr.set_ip(if addr.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            Url::parse(&format!("http://{addr}/")).expect("an address makes a valid URL")
        }
        Listen::Unix(path) => {
            Url::parse(&format!("unix:{}", path.display())).expect("a path makes a valid URL")
        }
    }
}

/// `polld status`: every watch, one line each.
pub async fn status(api: &Url, token: Option<&str>) -> anyhow::Result<()> {
    let client = Client::new(api, token, REQUEST_TIMEOUT)?;
    let mut out = Out::new();
    let mut after: Option<String> = None;
    loop {
        let mut query = vec![("limit", "1000".to_owned())];
        if let Some(after) = &after {
            query.push(("after", after.clone()));
        }
        let page = client.json(&["v1", "watches"], &query).await?;
        if after.is_none() {
            // After the first answer, so that an error is not preceded by a
            // header.
            let header = format!(
                "{:<24} {:<12} {:>4} {:>8} {:>8} {:>6}  {:<20}  {:<20}",
                "WATCH", "STATE", "HTTP", "VERSIONS", "POLLS", "304%", "LAST CHECKED", "NEXT POLL"
            );
            if !out.line(header.trim_end())? {
                return Ok(());
            }
        }
        for w in page["watches"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let ratio = w["ratio_304"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |r| format!("{:.1}", r * 100.0));
            let line = format!(
                "{:<24} {:<12} {:>4} {:>8} {:>8} {:>6}  {:<20}  {:<20}",
                text(&w["id"]),
                text(&w["state"]),
                text(&w["last_status"]),
                text(&w["versions"]),
                text(&w["polls"]),
                ratio,
                time(&w["last_checked"]),
                time(&w["next_poll"]),
            );
            if !out.line(line.trim_end())? {
                return Ok(());
            }
            if let Some(err) = w["last_error"].as_str() {
                out.line(&format!("    error: {err}"))?;
            }
        }
        match page["next"].as_str() {
            Some(next) => after = Some(moved(after.as_deref(), next)?),
            None => return Ok(()),
        }
    }
}

/// The cursor of the next page, which must differ from the one just used:
/// the log and the watch list can be of any length, so a page count is no
/// guard against a server that keeps answering the same page.
fn moved(after: Option<&str>, next: &str) -> anyhow::Result<String> {
    if after == Some(next) {
        bail!("the API answered another page with the same cursor ({next}); stopped");
    }
    Ok(next.to_owned())
}

/// `polld diff WATCH [--from N] [--to M]`: the unified diff, as the API
/// makes it (the last two versions by default).
pub async fn diff(
    api: &Url,
    token: Option<&str>,
    watch: &str,
    from: Option<u64>,
    to: Option<u64>,
) -> anyhow::Result<()> {
    let client = Client::new(api, token, REQUEST_TIMEOUT)?;
    let mut query = Vec::new();
    if let Some(from) = from {
        query.push(("from", from.to_string()));
    }
    if let Some(to) = to {
        query.push(("to", to.to_string()));
    }
    let res = client
        .send(&["v1", "watches", watch, "diff"], &query)
        .await?;
    let body = res.bytes().await.context("reading the diff")?;
    let mut stdout = io::stdout().lock();
    match stdout.write_all(&body).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

/// `polld changes [--follow]`: the retained change log, one change a line
/// (`SEQ AT WATCH KIND VERSION`); with `--follow`, then every new change as
/// it is committed, until interrupted. A follower also waits out a daemon
/// that is not up yet (or restarting) instead of failing at once.
pub async fn changes(api: &Url, token: Option<&str>, follow: bool) -> anyhow::Result<()> {
    let client = Client::new(api, token, FOLLOW_TIMEOUT)?;
    let mut out = Out::new();
    let mut after: Option<String> = None;
    let mut failures = 0;
    let reader_gone = reader_gone();
    tokio::pin!(reader_gone);
    // Backlog: pages without waiting until one comes back short (a log of
    // whole pages needs one more read to find its end).
    loop {
        let page = match client.changes_page(after.as_deref(), 0).await {
            Ok(page) => page,
            Err(err) if follow => {
                let delay = retry_delay(err, &mut failures)?;
                if pause(delay, reader_gone.as_mut()).await {
                    return Ok(());
                }
                continue;
            }
            Err(err) => return Err(err),
        };
        failures = 0;
        let (n, next) = (page_len(&page), next_of(&page)?);
        if !print_changes(&mut out, &page)? {
            return Ok(());
        }
        if n < CHANGES_PAGE {
            after = Some(next);
            break;
        }
        after = Some(moved(after.as_deref(), &next)?);
    }
    if !follow {
        return Ok(());
    }
    // Runs until interrupted (the user's Ctrl-C ends the process), until the
    // reader of a pipe has gone, or until MAX_FAILURES requests in a row
    // failed.
    loop {
        let page = tokio::select! {
            () = &mut reader_gone => return Ok(()),
            page = client.changes_page(after.as_deref(), FOLLOW_WAIT_S) => page,
        };
        match page {
            Ok(page) => {
                failures = 0;
                if !print_changes(&mut out, &page)? {
                    return Ok(());
                }
                after = Some(next_of(&page)?);
            }
            Err(err) => {
                let delay = retry_delay(err, &mut failures)?;
                if pause(delay, reader_gone.as_mut()).await {
                    return Ok(());
                }
            }
        }
    }
}

/// A follower's failed request: how long to wait before the next one
/// (the server's Retry-After, else 2, 4 ... 32 s), said on stderr; or the
/// error to end with. Only what can clear by waiting is retried: no answer
/// (daemon down or restarting), a body cut short, 5xx, 408 and 429. Any
/// other answer (401 for a wrong token, 404 for a wrong `--api` path, 410
/// for a position the feed has moved past) ends it at once, as does the
/// MAX_FAILURES-th failure in a row (about 3 minutes of waiting).
fn retry_delay(err: anyhow::Error, failures: &mut u32) -> anyhow::Result<Duration> {
    let retry_after = match err.downcast_ref::<ApiFailure>() {
        Some(ApiFailure { status: 410, .. }) => {
            return Err(err.context("the feed moved past our position; run again to resync"));
        }
        Some(ApiFailure {
            status: 408 | 429 | 500..=599,
            retry_after,
            ..
        }) => *retry_after,
        Some(_) => return Err(err),
        None => None,
    };
    *failures += 1;
    if *failures >= MAX_FAILURES {
        return Err(err.context(format!("{failures} failed requests in a row")));
    }
    let delay = retry_after.map_or(Duration::from_secs(1 << (*failures).min(5)), |wait| {
        wait.min(Duration::from_secs(60))
    });
    // Not `eprintln!`, which panics when stderr is closed (a supervisor
    // that went away): the follower goes on following.
    let _ = writeln!(
        io::stderr(),
        "polld: {err:#}; retrying in {} s",
        delay.as_secs()
    );
    Ok(delay)
}

/// The wait an answer's `Retry-After` asks for, in any of its forms
/// (seconds or an HTTP date; a proxy in front of the API may send either),
/// read as the agent reads it.
fn server_wait(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    crate::agent::hints::retry_after(headers, std::time::SystemTime::now())
}

/// Sleeps `delay`; true when the reader of stdout went meanwhile.
async fn pause(delay: Duration, reader_gone: std::pin::Pin<&mut impl Future<Output = ()>>) -> bool {
    tokio::select! {
        () = reader_gone => true,
        () = tokio::time::sleep(delay) => false,
    }
}

/// Resolves once stdout is a pipe whose reader has gone (`polld changes -f
/// | head -1`): a follower waiting for the next change would otherwise only
/// learn it from a failed write, which may never come. Never resolves for a
/// terminal, a file or a socket. Epoll reports an error on a pipe's write
/// end once its last reader closed; the watched descriptor is a duplicate
/// that is never written to, so stdout keeps its blocking mode.
async fn reader_gone() {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileTypeExt;
    use tokio::io::Interest;
    if let Ok(fd) = io::stdout().as_fd().try_clone_to_owned()
        && let pipe = std::fs::File::from(fd)
        && pipe.metadata().is_ok_and(|m| m.file_type().is_fifo())
        && let Ok(pipe) = tokio::net::unix::pipe::Sender::from_file_unchecked(pipe)
        && pipe
            .ready(Interest::ERROR)
            .await
            .is_ok_and(|r| r.is_error())
    {
        return;
    }
    std::future::pending().await
}

fn page_len(page: &Value) -> usize {
    page["changes"].as_array().map_or(0, Vec::len)
}

fn next_of(page: &Value) -> anyhow::Result<String> {
    page["next"]
        .as_str()
        .map(str::to_owned)
        .context("the API answered a page without `next`")
}

fn print_changes(out: &mut Out, page: &Value) -> anyhow::Result<bool> {
    for c in page["changes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let version = c["version"]
            .as_u64()
            .map_or_else(|| "-".to_owned(), |v| v.to_string());
        let line = format!(
            "{}\t{}\t{}\t{}\t{}",
            text(&c["seq"]),
            time(&c["at"]),
            text(&c["watch"]),
            text(&c["kind"]),
            version
        );
        if !out.line(&line)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A JSON value as a table cell: strings bare, null as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An RFC 3339 time to the second (`2026-01-02T03:04:05Z`), or `-`.
fn time(v: &Value) -> String {
    match v.as_str() {
        Some(t) if t.len() > 19 && t.ends_with('Z') => format!("{}Z", &t[..19]),
        Some(t) => t.to_owned(),
        None => "-".to_owned(),
    }
}

/// Stdout that treats a closed pipe (`polld changes | head`) as the end,
/// not as an error.
struct Out(io::Stdout);

impl Out {
    fn new() -> Self {
        Out(io::stdout())
    }

    /// Writes one line; `false` once the reader has gone.
    fn line(&mut self, line: &str) -> anyhow::Result<bool> {
        let mut lock = self.0.lock();
        match writeln!(lock, "{line}").and_then(|()| lock.flush()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e).context("writing to stdout"),
        }
    }
}

/// A non-2xx answer of the API, with its `{"error": "..."}` text.
#[derive(Debug, thiserror::Error)]
#[error("the API answered {status}: {message}")]
struct ApiFailure {
    status: u16,
    message: String,
    retry_after: Option<Duration>,
}

/// A request that got no answer. Names the API as the user gave it (for a
/// socket its path, not the internal `http://localhost/`) and only the
/// innermost cause: reqwest's outer layers repeat the URL. The URL carries
/// no secret (the token is a header).
fn unreachable(api: &Url, err: &reqwest::Error) -> anyhow::Error {
    let mut cause: &dyn std::error::Error = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    if err.is_connect() {
        anyhow::anyhow!(
            "cannot reach the polld API at {api}: {cause}; is polld running, and is this its \
             address (--api, default: the config's `listen`)?"
        )
    } else {
        anyhow::anyhow!("cannot reach the polld API at {api}: {cause}")
    }
}

struct Client {
    http: reqwest::Client,
    /// The API as the user gave it (`unix:PATH` for a socket), for errors.
    api: Url,
    base: Url,
    token: Option<String>,
}

impl Client {
    fn new(api: &Url, token: Option<&str>, timeout: Duration) -> anyhow::Result<Client> {
        let builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            // The API is local: a proxy from the environment must not see it.
            .no_proxy();
        let (builder, base) = match api.scheme() {
            "http" | "https" => (builder, api.clone()),
            "unix" => {
                // `unix://run/x.sock` would quietly connect to /x.sock.
                if api.host_str().is_some_and(|host| !host.is_empty()) {
                    bail!("API URL {api}: unix: takes a path, not a host (unix:/PATH)");
                }
                if api.path().is_empty() {
                    bail!("API URL {api}: unix: needs a socket path");
                }
                let base = Url::parse("http://localhost/").expect("a valid URL");
                (builder.unix_socket(api.path()), base)
            }
            other => {
                bail!("API URL {api}: unsupported scheme {other:?} (use http:// or unix:PATH)")
            }
        };
        let http = builder.build().context("building the HTTP client")?;
        Ok(Client {
            http,
            api: api.clone(),
            base,
            token: token.map(str::to_owned),
        })
    }

    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> anyhow::Result<Url> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("API URL {} cannot take a path", self.base))?
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    /// GETs a path; a non-2xx answer becomes an [`ApiFailure`].
    async fn send(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> anyhow::Result<reqwest::Response> {
        let url = self.url(segments, query)?;
        let mut req = self.http.get(url.clone());
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        let res = req
            .send()
            .await
            .map_err(|err| unreachable(&self.api, &err))?;
        let status = res.status();
        if status.is_success() {
            return Ok(res);
        }
        let retry_after = server_wait(res.headers());
        let body = res.bytes().await.unwrap_or_default();
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
        // Typically `--api` alone, with no watch list to read the token from.
        let message = if status == reqwest::StatusCode::UNAUTHORIZED && self.token.is_none() {
            format!(
                "{message}; no token was sent: pass --token-file PATH (the daemon's api_token_file)"
            )
        } else {
            message
        };
        Err(ApiFailure {
            status: status.as_u16(),
            message,
            retry_after,
        }
        .into())
    }

    async fn json(&self, segments: &[&str], query: &[(&str, String)]) -> anyhow::Result<Value> {
        let body = self
            .send(segments, query)
            .await?
            .bytes()
            .await
            .context("reading the answer")?;
        serde_json::from_slice(&body).context("the API answered something that is not JSON")
    }

    async fn changes_page(&self, after: Option<&str>, wait_s: u64) -> anyhow::Result<Value> {
        let mut query = vec![
            ("limit", CHANGES_PAGE.to_string()),
            ("wait", wait_s.to_string()),
        ];
        if let Some(after) = after {
            query.push(("after", after.to_owned()));
        }
        self.json(&["v1", "changes"], &query).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_both_forms() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(server_wait(&headers), Some(Duration::from_secs(7)));
        let at = std::time::SystemTime::now() + Duration::from_secs(30);
        headers.insert(
            reqwest::header::RETRY_AFTER,
            httpdate::fmt_http_date(at).parse().unwrap(),
        );
        let wait = server_wait(&headers).expect("an HTTP date is a wait too");
        assert!(
            (Duration::from_secs(28)..=Duration::from_secs(30)).contains(&wait),
            "{wait:?}"
        );
    }

    #[test]
    fn api_urls() {
        let url = api_url(&Listen::Tcp("127.0.0.1:8377".parse().unwrap()));
        assert_eq!(url.as_str(), "http://127.0.0.1:8377/");
        let url = api_url(&Listen::Tcp("0.0.0.0:8377".parse().unwrap()));
        assert_eq!(url.as_str(), "http://127.0.0.1:8377/");
        let url = api_url(&Listen::Tcp("[::]:8377".parse().unwrap()));
        assert_eq!(url.as_str(), "http://[::1]:8377/");
        let url = api_url(&Listen::Unix("/run/polld/api.sock".into()));
        assert_eq!(url.scheme(), "unix");
        assert_eq!(url.path(), "/run/polld/api.sock");
    }

    #[test]
    fn request_urls_escape_the_watch_id() {
        let base = Url::parse("http://127.0.0.1:8377/").unwrap();
        let c = Client::new(&base, None, REQUEST_TIMEOUT).unwrap();
        let url = c
            .url(&["v1", "watches", "a/b?c", "diff"], &[("from", "1".into())])
            .unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8377/v1/watches/a%2Fb%3Fc/diff?from=1"
        );
        let c = Client::new(
            &Url::parse("unix:/tmp/x.sock").unwrap(),
            None,
            REQUEST_TIMEOUT,
        )
        .unwrap();
        assert_eq!(
            c.url(&["v1", "changes"], &[]).unwrap().as_str(),
            "http://localhost/v1/changes"
        );
        assert!(Client::new(&Url::parse("ftp://x/").unwrap(), None, REQUEST_TIMEOUT).is_err());
        let unix = |text: &str| Client::new(&Url::parse(text).unwrap(), None, REQUEST_TIMEOUT);
        assert!(unix("unix:///tmp/x.sock").is_ok());
        let err = unix("unix://tmp/x.sock").err().unwrap();
        assert!(format!("{err:#}").contains("not a host"), "{err:#}");
    }

    #[test]
    fn cells() {
        assert_eq!(text(&Value::Null), "-");
        assert_eq!(text(&serde_json::json!("ok")), "ok");
        assert_eq!(text(&serde_json::json!(304)), "304");
        assert_eq!(
            time(&serde_json::json!("2026-01-02T03:04:05.678Z")),
            "2026-01-02T03:04:05Z"
        );
        assert_eq!(time(&Value::Null), "-");
    }

    #[test]
    fn a_cursor_must_move_between_full_pages() {
        assert_eq!(moved(None, "5").unwrap(), "5");
        assert_eq!(moved(Some("5"), "6").unwrap(), "6");
        let err = moved(Some("5"), "5").unwrap_err();
        assert!(format!("{err:#}").contains("same cursor"), "{err:#}");
    }

    /// A server that answers the same page for ever ends `polld status`
    /// (which reads every page, however many) instead of looping.
    #[tokio::test]
    async fn status_stops_at_a_server_whose_cursor_does_not_move() {
        use wiremock::matchers::{method, path};
        use wiremock::{Mock, MockServer, ResponseTemplate};
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v1/watches"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "watches": [{"id": "w", "state": "ok"}],
                "next": "w",
            })))
            .mount(&server)
            .await;
        let url = Url::parse(&server.uri()).unwrap();
        let err = status(&url, None).await.unwrap_err();
        assert!(format!("{err:#}").contains("same cursor"), "{err:#}");
        let asked = server.received_requests().await.unwrap();
        assert_eq!(asked.len(), 2, "the first page, then the same again");
    }

    /// The clients against the real API over loopback.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn against_a_real_api() {
        use polld_store::{ChangeKind, NewVersion, Outcome, WatchState, hash_body};
        struct NoEngine;
        impl polld_api::Engine for NoEngine {
            fn poll_now(&self, _: &str) -> polld_api::BoxFuture<bool> {
                Box::pin(async { false })
            }
            fn is_running(&self) -> bool {
                true
            }
        }
        impl polld_api::MetricsSource for NoEngine {
            fn render(&self) -> String {
                String::new()
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let store = polld_store::Store::open(&dir.path().join("db")).unwrap();
        for body in [&b"one\n"[..], b"two\n"] {
            store
                .apply_blocking(vec![Outcome {
                    state: WatchState {
                        id: "w".into(),
                        url: "https://example.org/".into(),
                        ..WatchState::default()
                    }
                    .into(),
                    new_version: Some(NewVersion {
                        body: body.to_vec(),
                        hash: hash_body(body),
                        content_type: Some("text/plain".into()),
                        headers: Vec::new(),
                        fetched_at_ms: 1,
                    }),
                    events: vec![ChangeKind::WatchAdded],
                    keep_versions: 10,
                }])
                .unwrap();
        }
        let listen = Listen::Tcp("127.0.0.1:0".parse().unwrap());
        let mut options = polld_api::ApiOptions::new();
        options.token = polld_api::ApiToken::new("t");
        let engine = std::sync::Arc::new(NoEngine);
        let state = polld_api::ApiState::new(store, engine.clone(), engine, options);
        let listener = polld_api::bind(&listen).await.unwrap();
        let url = api_url(&listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(listener.serve(
            polld_api::router(state),
            polld_api::ServeLimits::default(),
            async {
                let _ = stopped.await;
            },
        ));
        status(&url, Some("t")).await.unwrap();
        diff(&url, Some("t"), "w", None, None).await.unwrap();
        changes(&url, Some("t"), false).await.unwrap();
        let err = status(&url, Some("wrong")).await.unwrap_err();
        assert!(format!("{err:#}").contains("401"), "{err:#}");
        let err = status(&url, None).await.unwrap_err();
        assert!(format!("{err:#}").contains("--token-file"), "{err:#}");
        let err = diff(&url, Some("t"), "nope", None, None).await.unwrap_err();
        assert!(format!("{err:#}").contains("no watch"), "{err:#}");
        stop.send(()).unwrap();
        server.await.unwrap();
    }
}

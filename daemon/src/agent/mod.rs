//! The polite agent: performs one poll of one watch and returns a typed
//! outcome plus scheduling hints. It does not schedule and does not store.
//!
//! - `mod.rs`: the client, the request/outcome types and the poll itself
//!   (conditional request, redirects, the 202/303 async-job pattern, pages).
//! - [`hints`]: `Retry-After`, `X-Poll-Interval`, rate limits, freshness.
//! - [`redirect`]: which redirect targets are followed.
//! - [`body`]: reading (and decoding) a body within its size and time bounds.
//! - [`transport`]: the HTTP client the requests go out on, and `pool` its
//!   kept-alive connections.
//! - [`cursor`]: the next cursor from a body, a header or `Link: rel=next`.

pub mod body;
pub mod cursor;
pub mod hints;
mod pool;
pub mod redirect;
pub mod transport;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use polld_config::{Condition, ResponseView, Watch};
use url::Url;

use crate::redact;
use transport::{RequestBody, ResponseBody, SendError, Transport};

pub use hints::{Hints, parse_retry_after};

/// Redirect hops followed in one poll.
pub const MAX_REDIRECTS: usize = 10;
/// Pages followed in one poll of a cursored watch.
pub const MAX_PAGES: usize = 10;
/// Steps of the 202 / 303 async-job pattern followed in one poll.
pub const MAX_JOB_STEPS: usize = 30;
/// The shortest gap between two status checks of a 202 job, whatever its
/// `Retry-After` says: `Retry-After: 0` would otherwise make every step of
/// [`MAX_JOB_STEPS`] a back-to-back request.
pub const MIN_JOB_CHECK_GAP: Duration = Duration::from_secs(1);
/// Response headers polld keeps with a version.
pub static KEPT_HEADERS: [HeaderName; 10] = [
    header::CONTENT_TYPE,
    header::CONTENT_LANGUAGE,
    header::ETAG,
    header::LAST_MODIFIED,
    header::CACHE_CONTROL,
    header::EXPIRES,
    header::DATE,
    header::AGE,
    header::LINK,
    HeaderName::from_static("x-poll-interval"),
];

/// Why the agent could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The HTTP client could not be built (TLS roots, ...).
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] transport::BuildError),
    /// The `User-Agent` is not a valid header value.
    #[error("user_agent {0:?} is not a valid header value")]
    UserAgent(String),
}

/// How the agent's client is built.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The `User-Agent` of every request.
    pub user_agent: String,
    /// Follow redirects from public to internal addresses (off by default).
    pub allow_private_redirects: bool,
    /// Keep-alive connections kept per host between polls. Set it to the
    /// engine's `per_host`: a smaller pool closes the connections above it
    /// after every poll, and each poll then pays a TCP (and TLS) handshake.
    pub idle_per_host: usize,
}

/// The connect timeout of the shared client (and of `polld await`).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Distinct per-watch connect timeouts given a client of their own; more
/// fall back to the shared client (still bounded by the watch's `timeout`).
const MAX_CONNECT_CLIENTS: usize = 16;

/// The shared HTTP client and the rules of polling. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Agent {
    client: Transport,
    /// For hops a remote server chose to a name away from a public address
    /// ([`redirect::needs_public_address`]): connects to public addresses
    /// only. Built on first use: a TLS client takes a while to build (the
    /// platform's roots), and most lists never need it; built at start, it
    /// delayed the API's listening socket.
    public_client: Arc<std::sync::OnceLock<Transport>>,
    user_agent: HeaderValue,
    /// The connect timeout belongs to the connector, not the request, so a
    /// watch's `connect_timeout` gets a client built with it, one per value
    /// and kind (public-only or not).
    by_connect_timeout: Arc<Mutex<HashMap<(Duration, bool), Transport>>>,
    allow_private_redirects: bool,
    idle_per_host: usize,
}

/// One poll to perform.
#[derive(Debug, Clone, Copy)]
pub struct PollRequest<'a> {
    /// The watch: method, headers, body, cursor, conditions and policy.
    pub watch: &'a Watch,
    /// The URL to poll now (differs from the watch's after a permanent move).
    pub url: &'a Url,
    /// Stored ETag, sent verbatim in `If-None-Match`.
    pub etag: Option<&'a str>,
    /// Stored Last-Modified, sent verbatim in `If-Modified-Since`.
    pub last_modified: Option<&'a str>,
    /// Stored cursor (for `link:next`, a URL).
    pub cursor: Option<&'a str>,
    /// BLAKE3 of the latest stored body.
    pub last_hash: Option<[u8; 32]>,
    /// BLAKE3 of the page the stored cursor points at, when the latest
    /// version joined several pages (`link:next`): found alone and
    /// unchanged, it is nothing new.
    pub cursor_page_hash: Option<[u8; 32]>,
    /// The status URL of an async job an earlier poll left running: this
    /// poll resumes there (a GET) instead of starting a new job.
    pub job: Option<&'a str>,
}

/// What one poll came to.
#[derive(Debug, Clone)]
pub enum OutcomeKind {
    /// 304: the stored version is current.
    NotModified,
    /// A body whose hash differs from the stored one.
    Changed {
        /// The body (pages joined by a newline when several were followed).
        body: Bytes,
        /// BLAKE3 of the body.
        hash: [u8; 32],
        /// The response's Content-Type.
        content_type: Option<String>,
    },
    /// A body identical to the stored one (the server ignored the validators).
    Unchanged {
        /// BLAKE3 of the body.
        hash: [u8; 32],
    },
    /// 429 or 503.
    RateLimited,
    /// No usable answer.
    Failed {
        /// What went wrong, naming the URL.
        error: String,
        /// Whether trying again later may help (timeouts, 5xx) or not (4xx,
        /// loops, bodies too large).
        retryable: bool,
    },
    /// 410: the resource is gone.
    Gone,
    /// An async job (202 + `Location`, or a 303 to its result), or a
    /// redirect to be followed with a GET, asked for a wait longer than
    /// the poll may take: the next poll resumes at `job`.
    JobPending {
        /// Where to GET next.
        job: Url,
    },
}

/// Conditions of the watch that ended it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// Every `until` condition holds.
    Done {
        /// The conditions, as written.
        condition: String,
    },
    /// A `fail_if` condition holds.
    Failed {
        /// The condition, as written.
        condition: String,
    },
}

/// The outcome of a poll and everything the engine stores or schedules by.
#[derive(Debug, Clone)]
pub struct PollOutcome {
    /// What happened.
    pub kind: OutcomeKind,
    /// The final HTTP status, if an answer came.
    pub status: Option<u16>,
    /// The ETag to store (after RFC 9111 §4.3.4 freshening on 304).
    pub etag: Option<String>,
    /// The Last-Modified to store.
    pub last_modified: Option<String>,
    /// The answer's response headers, moved rather than copied: those of
    /// a 200 (its first page, after pages) or of a 304; empty otherwise. A
    /// version keeps those of [`KEPT_HEADERS`] ([`kept_headers`]), and
    /// most polls make none.
    pub headers: HeaderMap,
    /// When the server wants us back.
    pub hints: Hints,
    /// A 301/308 chain was followed to here.
    pub moved_permanently: Option<Url>,
    /// The cursor to store (None: keep the stored one).
    pub cursor: Option<String>,
    /// A 410 on a cursored request: go back to the initial cursor.
    pub cursor_reset: bool,
    /// After a 200: the hash of the page the cursor now points at, when it
    /// is not the new version's hash (see [`PollRequest::cursor_page_hash`]).
    pub cursor_page_hash: Option<[u8; 32]>,
    /// `until` / `fail_if` held on this response.
    pub finished: Option<Finished>,
    /// Body bytes received (after decompression).
    pub bytes_received: u64,
    /// How long the poll took.
    pub elapsed: Duration,
}

impl PollOutcome {
    pub(crate) fn new(kind: OutcomeKind, request: &PollRequest<'_>) -> Self {
        PollOutcome {
            kind,
            status: None,
            etag: request.etag.map(str::to_owned),
            last_modified: request.last_modified.map(str::to_owned),
            headers: HeaderMap::new(),
            hints: Hints::default(),
            moved_permanently: None,
            cursor: None,
            cursor_reset: false,
            cursor_page_hash: None,
            finished: None,
            bytes_received: 0,
            elapsed: Duration::ZERO,
        }
    }

    fn failed(request: &PollRequest<'_>, error: String, retryable: bool) -> Self {
        PollOutcome::new(OutcomeKind::Failed { error, retryable }, request)
    }

    /// A job that asked for a wait past the poll's deadline (`hints` say
    /// how long): the next poll resumes at `job`.
    fn job_pending(request: &PollRequest<'_>, job: &Url, status: StatusCode, hints: Hints) -> Self {
        let mut outcome = PollOutcome::new(OutcomeKind::JobPending { job: job.clone() }, request);
        outcome.status = Some(status.as_u16());
        outcome.hints = hints;
        outcome
    }
}

impl Agent {
    /// Builds the one client all polls share: no automatic redirects (the
    /// agent follows them itself), no proxy from the environment, rustls,
    /// pooled keep-alive connections.
    pub fn new(options: AgentOptions) -> Result<Agent, AgentError> {
        let idle_per_host = options.idle_per_host.max(1);
        let client = Transport::new(DEFAULT_CONNECT_TIMEOUT, idle_per_host)?;
        let user_agent = HeaderValue::from_str(&options.user_agent)
            .map_err(|_| AgentError::UserAgent(options.user_agent.clone()))?;
        Ok(Agent {
            client,
            public_client: Arc::default(),
            user_agent,
            idle_per_host,
            by_connect_timeout: Arc::default(),
            allow_private_redirects: options.allow_private_redirects,
        })
    }

    /// The client whose connect timeout is `connect_timeout`, when it is
    /// not the default (`None`: use the shared client, or the public-only
    /// one, of the default timeout).
    fn client_for(&self, connect_timeout: Duration, public_only: bool) -> Option<Transport> {
        if connect_timeout == DEFAULT_CONNECT_TIMEOUT || connect_timeout.is_zero() {
            return None;
        }
        let mut clients = self
            .by_connect_timeout
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (connect_timeout, public_only);
        if let Some(client) = clients.get(&key) {
            return Some(client.clone());
        }
        if clients.len() >= MAX_CONNECT_CLIENTS {
            return None;
        }
        let client = if public_only {
            Transport::public_only(connect_timeout, self.idle_per_host)
        } else {
            Transport::new(connect_timeout, self.idle_per_host)
        }
        .ok()?;
        clients.insert(key, client.clone());
        Some(client)
    }

    /// The public-only client of the default connect timeout; `None` if it
    /// cannot be built (the shared one, built the same way, could).
    fn public_client(&self) -> Option<&Transport> {
        if let Some(client) = self.public_client.get() {
            return Some(client);
        }
        let client = Transport::public_only(DEFAULT_CONNECT_TIMEOUT, self.idle_per_host).ok()?;
        Some(self.public_client.get_or_init(|| client))
    }

    /// The shared client (for the `http_stack` bench).
    pub fn transport(&self) -> &Transport {
        &self.client
    }

    /// Performs one poll within the watch's `timeout`. Never panics; every
    /// failure is an outcome.
    pub async fn poll(&self, request: PollRequest<'_>) -> PollOutcome {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + request.watch.policy.timeout;
        // Body bytes read in this poll, also by a read the timeout cancels.
        let received = AtomicU64::new(0);
        let mut outcome =
            match tokio::time::timeout_at(deadline, self.poll_inner(&request, deadline, &received))
                .await
            {
                Ok(outcome) => outcome,
                Err(_) => PollOutcome::failed(
                    &request,
                    format!(
                        "{}: no complete answer within the timeout of {}",
                        redact::url(request.url),
                        humantime::format_duration(request.watch.policy.timeout)
                    ),
                    true,
                ),
            };
        // Every body read of the poll counts, as it arrives: pages, job
        // status answers, and reads cut short by an error or the timeout.
        outcome.bytes_received = received.load(Ordering::Relaxed);
        outcome.elapsed = started.elapsed();
        outcome
    }

    async fn poll_inner(
        &self,
        request: &PollRequest<'_>,
        deadline: tokio::time::Instant,
        received: &AtomicU64,
    ) -> PollOutcome {
        let watch = request.watch;
        let policy = &watch.policy;
        let first_url = cursor::request_url(watch, request.url, request.cursor);
        // Only a poll of the watch's own URL can learn that it moved: a
        // permanent move of a cursor's page (a server-chosen `rel=next`, a
        // URL with the cursor in it) would re-point the watch to that page.
        let at_watch_url = first_url == *request.url;
        let mut pages: Vec<Bytes> = Vec::new();
        let mut cursor_now = request.cursor.map(str::to_owned);
        let mut page_url = first_url;
        // Pages requested in this poll: a next page among them is a cycle.
        // Only a watch with a cursor has pages (at most MAX_PAGES): a plain
        // poll neither allocates nor hashes for this.
        let mut fetched: Vec<Url> = Vec::new();
        let mut first: Option<Exchange> = None;
        let mut last: Option<Exchange> = None;
        // The URL `last` was requested at.
        let mut last_url: Option<Url> = None;
        let mut nothing_new = false;
        // A job URL that no longer parses is dropped: the poll starts anew.
        let pending_job = request.job.and_then(|j| Url::parse(j).ok());

        for page in 0..MAX_PAGES {
            // Validators only on the first page: later pages are new content.
            let conditional = page == 0;
            let job = if page == 0 {
                pending_job.as_ref()
            } else {
                None
            };
            if watch.cursor.is_some() {
                fetched.push(page_url.clone());
            }
            // The page before is where a next page was chosen.
            let from = last.as_ref().map_or(&watch.url, |e| &e.final_url);
            let mut exchange = match self
                .exchange(
                    request,
                    from,
                    &page_url,
                    job,
                    conditional,
                    deadline,
                    received,
                )
                .await
            {
                Ok(exchange) => exchange,
                // A later page that brings no answer (reset, refused
                // redirect, ...) ends the pages like a later non-2xx page
                // does: the earlier pages are kept. It used to fail the
                // whole poll and lose them.
                Err(_) if page > 0 => break,
                Err(outcome) => return outcome,
            };
            let status = exchange.status;
            if page > 0 && !status.is_success() {
                // A later page failed: keep what the earlier pages gave.
                break;
            }
            if !status.is_success() {
                let mut exchange = exchange;
                // `until` / `fail_if` judge the final response whatever its
                // status (`fail_if = ["status=404"]`): they used to be skipped
                // on every non-2xx answer. A 304 is not judged: it only says
                // the stored version, already judged, is current.
                if (!watch.until.is_empty() || !watch.fail_if.is_empty())
                    && status != StatusCode::NOT_MODIFIED
                {
                    let body = body::read_counting(
                        exchange.response_body.take(),
                        policy.max_body,
                        &page_url,
                        received,
                    )
                    .await
                    .unwrap_or_default();
                    exchange.body = Some(body);
                }
                let mut outcome = self.non_success(request, exchange);
                if !at_watch_url {
                    outcome.moved_permanently = None;
                }
                return outcome;
            }
            // A job's 202 that settled the watch comes with its body read.
            let read = match exchange.body.take() {
                Some(body) => Ok(body),
                None => {
                    body::read_counting(
                        exchange.response_body.take(),
                        policy.max_body,
                        &page_url,
                        received,
                    )
                    .await
                }
            };
            let body = match read {
                Ok(body) => body,
                Err(err) => {
                    let mut outcome =
                        PollOutcome::failed(request, err.to_string(), err.retryable());
                    outcome.status = Some(status.as_u16());
                    return outcome;
                }
            };
            let next = watch.cursor.as_ref().and_then(|c| {
                cursor::next_cursor(c, &exchange.final_url, &exchange.headers, &body)
            });
            let exchange = Exchange {
                response_body: None,
                body: Some(body.clone()),
                ..exchange
            };
            if first.is_none() {
                first = Some(exchange.clone_meta());
            }
            // A since-style cursor (JSON or header) that comes back as the
            // one requested means the page had nothing new (DESIGN: "a page
            // with no new content makes no version"). Such a page used to be
            // joined into the body, and on the first page made a version of
            // an empty page that differed from the stored (joined) one.
            let no_progress = watch.cursor.as_ref().is_some_and(|c| {
                !matches!(c.from, polld_config::CursorSource::LinkNext)
                    && cursor_now.is_some()
                    && next.is_some()
                    && next == cursor_now
            });
            last_url = Some(page_url.clone());
            if no_progress {
                if page == 0 {
                    nothing_new = true;
                    pages.push(body);
                }
                last = Some(exchange);
                break;
            }
            pages.push(body);
            last = Some(exchange);
            match (watch.cursor.as_ref(), next) {
                (Some(config), Some(next)) if Some(&next) != cursor_now.as_ref() => {
                    let mut next_url = cursor::request_url(watch, request.url, Some(&next));
                    if matches!(config.from, polld_config::CursorSource::LinkNext) {
                        next_url = Url::parse(&next).unwrap_or(next_url);
                    }
                    // A `rel=next` is chosen by the server like a redirect
                    // target, so the redirect rules apply: no file:// or
                    // ftp://, no hop from a public address to an internal
                    // one. It used to be followed (and stored) unchecked.
                    let from = last.as_ref().map_or(&page_url, |e| &e.final_url);
                    if redirect::refusal(from, &next_url, self.allow_private_redirects).is_some() {
                        break;
                    }
                    // A next page this poll already fetched (a last page
                    // linking to the first, a page to itself) ends the
                    // pages; it used to be fetched again up to the cap,
                    // joined into the version once per visit.
                    if fetched.contains(&next_url) {
                        break;
                    }
                    page_url = next_url;
                    cursor_now = Some(next);
                }
                _ => break,
            }
        }

        let first = first.expect("at least one page");
        let last = last.expect("at least one page");
        let page_count = pages.len();
        let body: Bytes = if page_count == 1 {
            pages.pop().expect("one page")
        } else {
            // Several pages: joined by newlines, so JSON-lines style feeds stay readable.
            Bytes::from(
                pages
                    .iter()
                    .map(|p| p.as_ref())
                    .collect::<Vec<_>>()
                    .join(&b'\n'),
            )
        };
        let hash = *blake3::hash(&body).as_bytes();
        // The page the last poll ended on, fetched alone and as it was: its
        // content is in the latest version already, joined with the pages
        // before it, so the hashes cannot match.
        let cursor_page_unchanged = page_count == 1 && request.cursor_page_hash == Some(hash);
        let kind = if request.last_hash == Some(hash) || nothing_new || cursor_page_unchanged {
            OutcomeKind::Unchanged { hash }
        } else {
            OutcomeKind::Changed {
                body: body.clone(),
                hash,
                content_type: header_value(&first.headers, header::CONTENT_TYPE),
            }
        };
        let mut outcome = PollOutcome::new(kind, request);
        outcome.status = Some(first.status.as_u16());
        // A 200 replaces the validators: a representation without an ETag
        // has none. They are sent where the next poll starts, which after
        // pages is the stored cursor's page: the validators of the page
        // fetched there, or none when it was not fetched (pages cut at the
        // cap, a later page that failed). The first page's used to be
        // kept, and went to another page, which could never answer 304.
        let next_start = cursor::request_url(watch, request.url, cursor_now.as_deref());
        let validated = (last_url.as_ref() == Some(&next_start)).then_some(&last.headers);
        outcome.etag = validated.and_then(|h| header_value(h, header::ETAG));
        outcome.last_modified = validated.and_then(|h| header_value(h, header::LAST_MODIFIED));
        let link_next = watch
            .cursor
            .as_ref()
            .is_some_and(|c| matches!(c.from, polld_config::CursorSource::LinkNext));
        // The hash belongs to the page the cursor points at after this poll.
        outcome.cursor_page_hash =
            if cursor_page_unchanged && cursor_now.as_deref() == request.cursor {
                Some(hash)
            } else if link_next && page_count > 1 && validated.is_some() {
                last.body
                    .as_deref()
                    .map(|page| *blake3::hash(page).as_bytes())
            } else {
                None
            };
        outcome.hints = hints::hints(
            last.status.as_u16(),
            &last.headers,
            SystemTime::now(),
            policy.max_retry_after,
        );
        outcome.headers = first.headers;
        outcome.moved_permanently = first.moved_permanently.filter(|_| at_watch_url);
        if cursor_now.as_deref() != request.cursor {
            outcome.cursor = cursor_now;
        }
        outcome.finished = finished(
            watch,
            last.status,
            &last.headers,
            last.body.as_deref().unwrap_or_default(),
        );
        outcome
    }

    /// The outcome of a final non-2xx answer.
    fn non_success(&self, request: &PollRequest<'_>, exchange: Exchange) -> PollOutcome {
        let status = exchange.status;
        let policy = &request.watch.policy;
        let kind = match status.as_u16() {
            304 => OutcomeKind::NotModified,
            429 | 503 => OutcomeKind::RateLimited,
            410 => OutcomeKind::Gone,
            code if status.is_server_error() => OutcomeKind::Failed {
                error: format!(
                    "{}: HTTP {code} {}",
                    redact::url(&exchange.final_url),
                    reason(status)
                ),
                retryable: true,
            },
            code => OutcomeKind::Failed {
                error: format!(
                    "{}: HTTP {code} {}",
                    redact::url(&exchange.final_url),
                    reason(status)
                ),
                retryable: matches!(code, 408 | 425),
            },
        };
        let mut outcome = PollOutcome::new(kind, request);
        outcome.status = Some(status.as_u16());
        outcome.hints = hints::hints(
            status.as_u16(),
            &exchange.headers,
            SystemTime::now(),
            policy.max_retry_after,
        );
        if status != StatusCode::NOT_MODIFIED {
            outcome.finished = finished(
                request.watch,
                status,
                &exchange.headers,
                exchange.body.as_deref().unwrap_or_default(),
            );
        }
        outcome.moved_permanently = exchange.moved_permanently;
        if status == StatusCode::NOT_MODIFIED {
            // RFC 9111 §4.3.4: the 304's validators update the stored ones;
            // a 304 without an ETag keeps the stored ETag.
            if let Some(etag) = header_value(&exchange.headers, header::ETAG) {
                outcome.etag = Some(etag);
            }
            if let Some(lm) = header_value(&exchange.headers, header::LAST_MODIFIED) {
                outcome.last_modified = Some(lm);
            }
            outcome.headers = exchange.headers;
        }
        if status == StatusCode::GONE && request.watch.cursor.is_some() && request.cursor.is_some()
        {
            outcome.cursor_reset = true;
        }
        outcome
    }

    /// One request and the redirects and async-job steps that follow it,
    /// up to a final answer (whose body is not read yet).
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        request: &PollRequest<'_>,
        from: &Url,
        start: &Url,
        job: Option<&Url>,
        conditional: bool,
        deadline: tokio::time::Instant,
        received: &AtomicU64,
    ) -> Result<Exchange, PollOutcome> {
        let watch = request.watch;
        let origin = request.url.clone();
        let mut url = start.clone();
        let mut method = watch.method.clone();
        let mut body = watch.body.clone();
        let mut seen: HashSet<(Method, Url)> = HashSet::new();
        let mut redirects = 0usize;
        let mut job_steps = 0usize;
        // A chain of only 301/308 from the start re-points the watch.
        let mut permanent_chain = true;
        if let Some(job) = job {
            // Resuming a job: its status is read with a GET, no validators.
            url = job.clone();
            method = Method::GET;
            body = None;
            permanent_chain = false;
            job_steps = 1;
        }
        let conditional = conditional && job.is_none();
        let mut moved: Option<Url> = None;
        let allow_internal = self.allow_private_redirects;
        // A start away from the watch's own host (a resumed job, a next
        // page, a re-pointed watch) was chosen by a server too.
        let mut public_only =
            redirect::needs_public_address(&watch.url, from, &url, allow_internal);
        loop {
            if !seen.insert((method.clone(), url.clone())) {
                return Err(PollOutcome::failed(
                    request,
                    format!(
                        "{}: redirect loop through {}",
                        redact::url(request.url),
                        redact::url(&url)
                    ),
                    false,
                ));
            }
            let same_origin = redirect::same_origin(&origin, &url);
            let configured_origin = redirect::same_origin(&watch.url, &url);
            let http_request = self
                .build_request(
                    request,
                    &method,
                    &url,
                    body.as_deref(),
                    conditional && same_origin && method == Method::GET,
                    same_origin && configured_origin,
                )
                .map_err(|why| {
                    PollOutcome::failed(
                        request,
                        format!("{}: cannot be requested: {why}", redact::url(&url)),
                        false,
                    )
                })?;
            let own_client = self.client_for(watch.policy.connect_timeout, public_only);
            let client = if let Some(own) = &own_client {
                own
            } else if public_only {
                self.public_client().ok_or_else(|| {
                    PollOutcome::failed(
                        request,
                        format!(
                            "{}: cannot build the HTTP client for redirected requests",
                            redact::url(&url)
                        ),
                        true,
                    )
                })?
            } else {
                &self.client
            };
            let response = match client.send(http_request).await {
                Ok(response) => response,
                Err(err) => {
                    return Err(PollOutcome::failed(request, describe(&url, &err), true));
                }
            };
            let status = response.status();
            let headers = body::delivered_headers(response.headers());
            let location = location(&headers, &url, status);

            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                let Some(target) = location else {
                    return Err(PollOutcome::failed(
                        request,
                        format!(
                            "{}: HTTP {} without a usable Location",
                            redact::url(&url),
                            status.as_u16()
                        ),
                        false,
                    ));
                };
                if let Some(why) = redirect::refusal(&url, &target, self.allow_private_redirects) {
                    return Err(PollOutcome::failed(request, why, false));
                }
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(PollOutcome::failed(
                        request,
                        format!(
                            "{}: more than {MAX_REDIRECTS} redirects",
                            redact::url(request.url)
                        ),
                        false,
                    ));
                }
                match status.as_u16() {
                    // Judged against the watch's URL too: a poll may start at
                    // a server-chosen http page of an https watch.
                    301 | 308
                        if !redirect::may_re_point(&url, &target)
                            || !redirect::may_re_point(request.url, &target) =>
                    {
                        permanent_chain = false;
                        moved = None;
                    }
                    301 | 308 => {
                        if permanent_chain {
                            moved = Some(target.clone());
                        }
                    }
                    _ => permanent_chain = false,
                }
                if matches!(status.as_u16(), 301..=303) && method != Method::GET {
                    // 303 always, and 301/302 after a POST by long practice, become GET.
                    if status.as_u16() == 303 || method == Method::POST {
                        method = Method::GET;
                        body = None;
                    }
                }
                // Let the connection go before any wait: an unread response
                // held across a Retry-After kept it out of the pool.
                drop(response);
                // A Retry-After on a 3xx is the wait before the redirected
                // request (RFC 9110 §10.2.3): honoured before following. A
                // target too long to wait for is where the next poll
                // resumes, when that request is a GET (a 303, any redirect
                // of a GET, a 301/302 after a POST), as a job's status is
                // resumed. Ending it as rate limited instead (as all but
                // the 303 did) sent the next poll to the original URL,
                // which answered the same: the target was never reached.
                // A 307/308 of a POST must stay a POST, which a resumed
                // poll does not send: that one still ends rate limited.
                let resumable = method == Method::GET;
                public_only =
                    redirect::needs_public_address(&watch.url, &url, &target, allow_internal);
                self.wait_retry_after(request, &headers, deadline)
                    .await
                    .map_err(|outcome| {
                        if resumable {
                            PollOutcome::job_pending(request, &target, status, outcome.hints)
                        } else {
                            outcome
                        }
                    })?;
                url = target;
                continue;
            }

            if status == StatusCode::ACCEPTED
                && let Some(target) = job_location(&headers, &url)
            {
                if let Some(why) = redirect::refusal(&url, &target, self.allow_private_redirects) {
                    return Err(PollOutcome::failed(request, why, false));
                }
                job_steps += 1;
                if job_steps > MAX_JOB_STEPS {
                    return Err(PollOutcome::failed(
                        request,
                        format!(
                            "{}: the job did not finish within {MAX_JOB_STEPS} status checks",
                            redact::url(request.url)
                        ),
                        true,
                    ));
                }
                // A status answer that already settles the watch (a running
                // job's 202 saying `{"status":"failed"}` to a `fail_if`) is
                // the final answer, not a reason to check again and again.
                if !watch.until.is_empty() || !watch.fail_if.is_empty() {
                    if let Some(settled) =
                        settling(watch, response, status, &headers, &url, &moved, received).await
                    {
                        return Ok(settled);
                    }
                } else {
                    drop(response);
                }
                let wait = hints::retry_after(&headers, SystemTime::now())
                    .unwrap_or(MIN_JOB_CHECK_GAP)
                    .min(watch.policy.max_retry_after)
                    .max(MIN_JOB_CHECK_GAP);
                self.wait_until(request, wait, deadline)
                    .await
                    .map_err(|outcome| {
                        PollOutcome::job_pending(request, &target, status, outcome.hints)
                    })?;
                permanent_chain = false;
                method = Method::GET;
                body = None;
                public_only =
                    redirect::needs_public_address(&watch.url, &url, &target, allow_internal);
                // Each status check may come back to the same URL.
                seen.clear();
                url = target;
                continue;
            }

            if status == StatusCode::ACCEPTED && method == Method::GET {
                // A GET answered 202 without a status URL (GitHub's
                // `/stats/*` while they compute): accepted, not completed
                // (RFC 9110 §15.3.3), so no version of it. It used to be
                // stored, and the real answer after it as another version.
                // The poll ends pending at this URL, after its Retry-After,
                // unless the answer settles the watch.
                if let Some(settled) =
                    settling(watch, response, status, &headers, &url, &moved, received).await
                {
                    return Ok(settled);
                }
                let now = SystemTime::now();
                let cap = watch.policy.max_retry_after;
                let mut hints = hints::hints(status.as_u16(), &headers, now, cap);
                if let Some(wait) = hints::retry_after(&headers, now) {
                    hints.retry_after = Some(wait);
                    if hints.not_before.is_none_or(|n| n < wait.min(cap)) {
                        hints.not_before = Some(wait.min(cap));
                        hints.reason = Some("Retry-After");
                    }
                }
                return Err(PollOutcome::job_pending(request, &url, status, hints));
            }

            return Ok(Exchange {
                status,
                headers,
                final_url: url,
                moved_permanently: moved,
                response_body: Some(response),
                body: None,
            });
        }
    }

    /// One request of a poll: the watch's headers (credentials only when
    /// `with_credentials`), validators when `conditional`, and polld's own
    /// defaults where the watch sets none.
    fn build_request(
        &self,
        request: &PollRequest<'_>,
        method: &Method,
        url: &Url,
        body: Option<&str>,
        conditional: bool,
        with_credentials: bool,
    ) -> Result<Request<RequestBody>, http::Error> {
        let watch = request.watch;
        let mut headers = HeaderMap::with_capacity(watch.headers.len() + 6);
        // Credentials go only to the origin the operator configured: not
        // along a redirect, and not to where a permanent move re-pointed
        // the watch (the operator updates the list for that).
        for (name, value) in &watch.headers {
            if !with_credentials && is_credential(name, value) {
                continue;
            }
            headers.append(name.clone(), value.clone());
        }
        // Validators only to the watch's own origin, and only on a GET. A
        // stored value that is no longer a valid header is not sent: the
        // poll is then unconditional, not failed.
        if conditional {
            let validators = [
                (header::IF_NONE_MATCH, request.etag),
                (header::IF_MODIFIED_SINCE, request.last_modified),
            ];
            for (name, value) in validators {
                if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                    headers.insert(name, value);
                }
            }
        }
        let body = body.map(str::as_bytes);
        transport::request(
            method,
            url,
            headers,
            body,
            &self.user_agent,
            with_credentials,
        )
    }

    async fn wait_retry_after(
        &self,
        request: &PollRequest<'_>,
        headers: &HeaderMap,
        deadline: tokio::time::Instant,
    ) -> Result<(), PollOutcome> {
        match hints::retry_after(headers, SystemTime::now()) {
            Some(wait) if !wait.is_zero() => {
                self.wait_until(
                    request,
                    wait.min(request.watch.policy.max_retry_after),
                    deadline,
                )
                .await
            }
            _ => Ok(()),
        }
    }

    /// Sleeps `wait` unless that would pass the poll's deadline; then the
    /// poll ends now as rate limited, with the wait as its hint.
    async fn wait_until(
        &self,
        request: &PollRequest<'_>,
        wait: Duration,
        deadline: tokio::time::Instant,
    ) -> Result<(), PollOutcome> {
        if tokio::time::Instant::now() + wait >= deadline {
            let mut outcome = PollOutcome::new(OutcomeKind::RateLimited, request);
            outcome.hints.retry_after = Some(wait);
            outcome.hints.not_before = Some(wait);
            outcome.hints.reason = Some("Retry-After");
            return Err(outcome);
        }
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

/// A final answer: status and headers, and its body (read later).
/// Reads a 202's body (a job's status, or an answer still being computed)
/// and returns the exchange that ends the poll with it when it settles the
/// watch (`until` / `fail_if` hold); `None` when the wait goes on.
async fn settling(
    watch: &Watch,
    response: Response<ResponseBody>,
    status: StatusCode,
    headers: &HeaderMap,
    url: &Url,
    moved: &Option<Url>,
    received: &AtomicU64,
) -> Option<Exchange> {
    let body = body::read_counting(Some(response), watch.policy.max_body, url, received)
        .await
        .unwrap_or_default();
    finished(watch, status, headers, &body)
        .is_some()
        .then(|| Exchange {
            status,
            headers: headers.clone(),
            final_url: url.clone(),
            moved_permanently: moved.clone(),
            response_body: None,
            body: Some(body),
        })
}

struct Exchange {
    status: StatusCode,
    headers: HeaderMap,
    final_url: Url,
    moved_permanently: Option<Url>,
    response_body: Option<Response<ResponseBody>>,
    body: Option<Bytes>,
}

impl Exchange {
    fn clone_meta(&self) -> Exchange {
        Exchange {
            status: self.status,
            headers: self.headers.clone(),
            final_url: self.final_url.clone(),
            moved_permanently: self.moved_permanently.clone(),
            response_body: None,
            body: self.body.clone(),
        }
    }
}

/// Configured headers that carry credentials, never sent to another
/// origin: a value marked sensitive (`Authorization`, `Cookie`, anything
/// filled from `${ENV}`) or a name that says it is a secret (`*auth*`,
/// `*key*`, `*token*`, `*secret*`, `*session*`, ...: [`redact::is_secret_name`]).
pub fn is_credential(name: &http::HeaderName, value: &http::HeaderValue) -> bool {
    value.is_sensitive() || redact::is_secret_name(name.as_str())
}

fn reason(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("")
}

fn header_value(headers: &HeaderMap, name: HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The headers of [`KEPT_HEADERS`], in that order; a header sent more than
/// once (`Link`) gives one pair per value, in the order received.
pub fn kept_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    KEPT_HEADERS
        .iter()
        .flat_map(|name| {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(|v| (name.as_str().to_owned(), v.to_owned()))
        })
        .collect()
}

/// The `Location` of a redirect, resolved against the request URL.
fn location(headers: &HeaderMap, base: &Url, status: StatusCode) -> Option<Url> {
    if !status.is_redirection() {
        return None;
    }
    let value = headers.get(header::LOCATION)?.to_str().ok()?;
    base.join(value.trim()).ok()
}

/// Where a 202 says the job's status is: `Operation-Location`,
/// `Azure-AsyncOperation` or `Location`.
pub fn job_location(headers: &HeaderMap, base: &Url) -> Option<Url> {
    ["operation-location", "azure-asyncoperation", "location"]
        .iter()
        .find_map(|name| headers.get(*name))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| base.join(v.trim()).ok())
}

/// Evaluates `fail_if` (any) then `until` (all) on a response.
fn finished(
    watch: &Watch,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<Finished> {
    if watch.until.is_empty() && watch.fail_if.is_empty() {
        return None;
    }
    let view = ResponseView::new(status.as_u16(), headers, body);
    if let Some(c) = watch.fail_if.iter().find(|c| c.holds(&view)) {
        return Some(Finished::Failed {
            condition: c.to_string(),
        });
    }
    if !watch.until.is_empty() && watch.until.iter().all(|c| c.holds(&view)) {
        return Some(Finished::Done {
            condition: watch
                .until
                .iter()
                .map(Condition::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    None
}

/// Appends each cause of `err` (its sources, outermost first) to `text`.
fn push_causes(text: &mut String, err: &(dyn std::error::Error + 'static)) {
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
}

/// A transport error in words, naming the URL.
fn describe(url: &Url, err: &SendError) -> String {
    let message = format!("{url}: {}", transport::error_text(err));
    // A cause may name the URL (or its user info) too.
    redact::in_text(&message, url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_headers_keep_every_value_of_a_repeated_header() {
        let mut headers = HeaderMap::new();
        headers.append("link", HeaderValue::from_static("</a>; rel=next"));
        headers.append("link", HeaderValue::from_static("</b>; rel=last"));
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.insert("set-cookie", HeaderValue::from_static("s=1"));
        assert_eq!(
            kept_headers(&headers),
            [
                ("content-type".to_owned(), "text/plain".to_owned()),
                ("link".to_owned(), "</a>; rel=next".to_owned()),
                ("link".to_owned(), "</b>; rel=last".to_owned()),
            ]
        );
    }

    /// A hop a server chose keeps to public addresses when the watch sets
    /// its own connect timeout too: the client for that timeout is a
    /// public-only one, not the watch's own.
    #[tokio::test]
    async fn a_watch_s_connect_timeout_keeps_server_chosen_hops_public() {
        use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200))
            .mount(&server)
            .await;
        let url = Url::parse(&format!("http://localhost:{}/", server.address().port())).unwrap();
        let agent = Agent::new(AgentOptions {
            user_agent: "polld-test".to_owned(),
            allow_private_redirects: false,
            idle_per_host: 1,
        })
        .unwrap();
        let get = || {
            transport::request(
                &Method::GET,
                &url,
                HeaderMap::new(),
                None,
                &agent.user_agent,
                false,
            )
            .unwrap()
        };
        let timeout = Duration::from_secs(3);
        let own = agent.client_for(timeout, false).expect("a client for 3 s");
        assert_eq!(own.send(get()).await.unwrap().status(), 200);
        let public = agent.client_for(timeout, true).expect("a client for 3 s");
        let err = public.send(get()).await.expect_err("connected to loopback");
        let text = transport::error_text(&err);
        assert!(text.contains("resolves to the internal address"), "{text}");
        assert_eq!(server.received_requests().await.unwrap().len(), 1);
    }
}

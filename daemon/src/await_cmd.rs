//! `polld await`: the polite agent as a one-shot command for async jobs.
//! Sends a request, follows `202 Accepted` / `303 See Other` + `Location`
//! (or `Operation-Location` / `Azure-AsyncOperation`) with GETs, asks a
//! GET answered 202 without one again, honours `Retry-After` everywhere,
//! and stops when `--until` conditions hold (exit 0), a `--fail-if`
//! condition holds or a permanent error comes (1), or the time or attempts
//! run out (2). Needs no daemon and no store.

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue, Method, header};
use polld_config::{Condition, JsonPointer, ResponseView, parse_duration};
use url::Url;

use crate::agent::{self, hints, redirect};
use crate::exit;
use crate::redact;

/// Largest body `polld await` reads.
const MAX_BODY: u64 = 64 << 20;
/// Redirect hops followed within one attempt.
const MAX_HOPS: usize = 10;

const EXAMPLES: &str = "\
Example: start a job, then wait until its status says so (at most 10 minutes):

  polld await -X POST -d '{\"input\": 42}' -H 'Content-Type: application/json' \\
      --until 'json:/status=completed' --fail-if 'json:/status=failed' \\
      --timeout 10m --save 'json:/result_url' https://api.example.org/jobs

The POST answers 202 Accepted with Location: /jobs/17 and Retry-After: 5;
polld waits 5 s, GETs /jobs/17 until its JSON has status \"completed\", and
prints the result_url. Exit codes: 0 done, 1 a --fail-if held or a permanent
HTTP error, 2 timeout or --max-attempts used up, 78 bad arguments.";

/// Flags of `polld await`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct AwaitArgs {
    /// The URL of the first request.
    pub url: String,
    /// Method of the first request. Status checks at a job URL it leads to
    /// (202/303 Location) are GETs; an answer without one repeats this
    /// request, except that a method that is not idempotent (POST, PATCH)
    /// is not sent again after a server error or a connection broken after
    /// sending: the server may have acted on it.
    #[arg(
        short = 'X',
        long = "request",
        value_name = "METHOD",
        default_value = "GET"
    )]
    pub method: String,
    /// Body of the first request.
    #[arg(short = 'd', long = "data", value_name = "BODY")]
    pub data: Option<String>,
    /// Body of the first request, read from a file.
    #[arg(long, value_name = "PATH", conflicts_with = "data")]
    pub data_file: Option<PathBuf>,
    /// A request header, 'Name: value' (repeatable). Sent to the first URL's
    /// origin only when it is a credential (Authorization, Cookie, a name
    /// with auth, key, token, secret, session, pass, sig... in it).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// A condition that must hold to finish with success (repeatable; all
    /// must hold): status=200, json:/pointer=value, json:/pointer,
    /// !json:/pointer, header:Name=value. Without it, the first final 2xx wins.
    #[arg(long, value_name = "CONDITION")]
    pub until: Vec<String>,
    /// A condition that ends the wait with failure (repeatable; any).
    #[arg(long = "fail-if", value_name = "CONDITION")]
    pub fail_if: Vec<String>,
    /// Wait between checks when the server names none (longer than zero).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = positive_duration)]
    pub interval: Duration,
    /// Multiply the wait by this after each check (>= 1).
    #[arg(long, default_value_t = 1.0)]
    pub backoff: f64,
    /// Add up to this fraction of the wait at random, in [0, 1).
    #[arg(long, default_value_t = 0.0)]
    pub jitter: f64,
    /// Give up (exit 2) after this long in total.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = duration)]
    pub timeout: Duration,
    /// Give up (exit 2) after this many requests (at least 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: Option<u32>,
    /// Cap on any delay the server asks for (Retry-After).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = duration)]
    pub max_retry_after: Duration,
    /// Print this value of the final JSON body instead of the body
    /// (json:/pointer; strings are printed without quotes).
    #[arg(long, value_name = "json:/POINTER")]
    pub save: Option<String>,
    /// Print nothing on stdout; only the exit code tells.
    #[arg(short, long)]
    pub quiet: bool,
    /// Log each attempt to stderr with the wait chosen and why.
    #[arg(short, long)]
    pub verbose: bool,
}

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text)
}

/// A zero --interval would check as fast as the network allows, for the
/// whole --timeout, wherever the server names no wait (and --backoff cannot
/// grow it): refused.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("must be longer than zero, e.g. \"2s\"".to_owned()),
        d => Ok(d),
    }
}

/// The validated request and conditions.
struct Plan {
    url: Url,
    method: Method,
    body: Option<Vec<u8>>,
    headers: Vec<(HeaderName, HeaderValue)>,
    until: Vec<Condition>,
    fail_if: Vec<Condition>,
    save: Option<JsonPointer>,
}

fn plan(args: &AwaitArgs) -> Result<Plan, String> {
    let url = Url::parse(&args.url).map_err(|e| format!("{:?} is not a URL: {e}", args.url))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "{}: only http and https URLs can be awaited",
            redact::url(&url)
        ));
    }
    let method = Method::from_str(&args.method.to_ascii_uppercase())
        .map_err(|_| format!("{:?} is not an HTTP method", args.method))?;
    let body = match (&args.data, &args.data_file) {
        (Some(data), _) => Some(data.clone().into_bytes()),
        (None, Some(path)) => Some(
            std::fs::read(path)
                .map_err(|e| format!("cannot read --data-file {}: {e}", path.display()))?,
        ),
        (None, None) => None,
    };
    let mut headers = Vec::new();
    for text in &args.headers {
        let (name, value) = text
            .split_once(':')
            .ok_or_else(|| format!("header {text:?} must be written 'Name: value'"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("{:?} is not a header name", name.trim()))?;
        let value = HeaderValue::from_str(value.trim()).map_err(|_| {
            format!("the value of header {name} holds characters a header cannot carry")
        })?;
        headers.push((name, value));
    }
    let conditions = |list: &[String], flag: &str| -> Result<Vec<Condition>, String> {
        list.iter()
            .map(|c| c.parse::<Condition>().map_err(|e| format!("--{flag}: {e}")))
            .collect()
    };
    let save = match &args.save {
        Some(text) => Some(
            text.strip_prefix("json:")
                .ok_or_else(|| format!("--save {text:?}: expected json:/POINTER"))?
                .parse::<JsonPointer>()
                .map_err(|e| format!("--save: {e}"))?,
        ),
        None => None,
    };
    if !(args.backoff.is_finite() && args.backoff >= 1.0) {
        return Err(format!("--backoff {} must be at least 1.0", args.backoff));
    }
    if !(0.0..1.0).contains(&args.jitter) {
        return Err(format!("--jitter {} must be in [0, 1)", args.jitter));
    }
    Ok(Plan {
        url,
        method,
        body,
        headers,
        until: conditions(&args.until, "until")?,
        fail_if: conditions(&args.fail_if, "fail-if")?,
        save,
    })
}

/// How the wait ended.
#[derive(Debug)]
enum Ending {
    Done(Vec<u8>),
    Failed(String),
    TimedOut(String),
}

/// Runs `polld await` and returns its exit code.
pub fn run(args: AwaitArgs) -> ExitCode {
    let plan = match plan(&args) {
        Ok(plan) => plan,
        Err(message) => {
            eprintln!("polld await: {message}");
            return exit::code(exit::CONFIG);
        }
    };
    let runtime = match crate::cli::runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let ending = runtime.block_on(wait(&args, &plan));
    match ending {
        Ok(Ending::Done(body)) => {
            // `url=$(polld await ... --save json:/url)` must not go on with
            // an empty value: a --save pointer missing from the final body
            // is a failure.
            if args.quiet || print_result(&plan, &body) {
                exit::code(exit::OK)
            } else {
                exit::code(exit::FAILURE)
            }
        }
        Ok(Ending::Failed(message)) => {
            eprintln!("polld await: {message}");
            exit::code(exit::FAILURE)
        }
        Ok(Ending::TimedOut(message)) => {
            eprintln!("polld await: {message}");
            exit::code(exit::TIMEOUT)
        }
        Err(message) => {
            eprintln!("polld await: {message}");
            exit::code(exit::FAILURE)
        }
    }
}

/// Prints the final body, or the value `--save` points at; false when that
/// value is not in the body (said on stderr).
fn print_result(plan: &Plan, body: &[u8]) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let printed = match &plan.save {
        Some(pointer) => {
            let value = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|doc| pointer.resolve(&doc).cloned());
            match value {
                Some(serde_json::Value::String(s)) => {
                    let _ = writeln!(out, "{s}");
                    true
                }
                Some(other) => {
                    let _ = writeln!(out, "{other}");
                    true
                }
                None => {
                    eprintln!("polld await: --save json:{pointer}: not in the final body");
                    false
                }
            }
        }
        None => {
            let _ = out.write_all(body);
            true
        }
    };
    let _ = out.flush();
    printed
}

async fn wait(args: &AwaitArgs, plan: &Plan) -> Result<Ending, String> {
    let client = agent::transport::Transport::new(Duration::from_secs(10), 1)
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let user_agent =
        HeaderValue::from_static(concat!("polld/", env!("CARGO_PKG_VERSION"), " (await)"));
    let started = tokio::time::Instant::now();
    let deadline = started + args.timeout;
    let origin = plan.url.clone();
    let mut url = plan.url.clone();
    let mut method = plan.method.clone();
    let mut body = plan.body.clone();
    let mut interval = args.interval;
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let mut hops = 0;
        // One attempt: the request and the redirects it leads to.
        let (status, headers, final_url, response) = loop {
            let same_origin = redirect::same_origin(&origin, &url);
            // Messages show the URL as logs do: it may carry a token.
            let shown = redact::url(&url);
            let mut request_headers = http::HeaderMap::new();
            for (name, value) in &plan.headers {
                if same_origin || !agent::is_credential(name, value) {
                    request_headers.append(name.clone(), value.clone());
                }
            }
            let request = agent::transport::request(
                &method,
                &url,
                request_headers,
                body.as_deref(),
                &user_agent,
                same_origin,
            )
            .map_err(|e| format!("{method} {shown}: cannot be requested: {e}"))?;
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let sent = tokio::time::timeout(remaining, client.send(request)).await;
            let response = match sent {
                Err(_) => {
                    return Ok(Ending::TimedOut(format!(
                        "attempt {attempt}, {method} {shown}: no answer before the timeout of {}",
                        humantime::format_duration(args.timeout)
                    )));
                }
                Ok(Err(err)) => {
                    break (
                        None,
                        http::HeaderMap::new(),
                        url.clone(),
                        Err((agent::transport::error_text(&err), err.is_connect())),
                    );
                }
                Ok(Ok(response)) => response,
            };
            let status = response.status();
            let headers = agent::body::delivered_headers(response.headers());
            let redirect_to = matches!(status.as_u16(), 301 | 302 | 307 | 308)
                .then(|| headers.get(header::LOCATION))
                .flatten()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| url.join(v.trim()).ok());
            if let Some(target) = redirect_to {
                if let Some(why) = redirect::refusal(&url, &target, true) {
                    return Ok(Ending::Failed(format!(
                        "attempt {attempt}, {method} {shown}: {why}"
                    )));
                }
                hops += 1;
                if hops > MAX_HOPS {
                    return Ok(Ending::Failed(format!(
                        "attempt {attempt}, {method} {shown}: more than {MAX_HOPS} redirects"
                    )));
                }
                if matches!(status.as_u16(), 301 | 302) && method == Method::POST {
                    method = Method::GET;
                    body = None;
                }
                url = target;
                continue;
            }
            break (Some(status), headers, url.clone(), Ok(response));
        };
        let shown_final = redact::url(&final_url);

        // A server's wait is capped by --max-retry-after and floored so that
        // `Retry-After: 0` on every answer cannot make a tight loop: never
        // shorter than --interval or the agent's 1 s between job checks,
        // whichever is smaller.
        let floor = interval.min(agent::MIN_JOB_CHECK_GAP);
        let server_wait = hints::retry_after(&headers, SystemTime::now())
            .map(|d| d.min(args.max_retry_after).max(floor));
        // A request that is not idempotent (a POST that starts a job) is
        // not sent again once the server may have acted on it: sent twice,
        // it could start two jobs. Refused connections, 429, 503, 408 and
        // 425 say it was not acted on, and are tried again.
        let once_only = !method.is_idempotent();
        let (wait, why): (Duration, String) = match (status, response) {
            (_, Err((error, connect))) => {
                if once_only && !connect {
                    return Ok(Ending::Failed(format!(
                        "attempt {attempt}, {method} {shown_final}: {error}; not sent again: the server may have acted on it"
                    )));
                }
                if args.verbose {
                    eprintln!("polld await: attempt {attempt}, {method} {shown_final}: {error}");
                }
                (interval, "interval after a transport error".to_owned())
            }
            (Some(status), Ok(response)) => {
                let code = status.as_u16();
                // The body is read for every answer, within --timeout: the
                // conditions judge every answer, also a running job's 202
                // (`{"status":"failed"}`) and a 429/503.
                let read = agent::body::read(Some(response), MAX_BODY, &final_url);
                let payload = match tokio::time::timeout_at(deadline, read).await {
                    Err(_) => {
                        return Ok(Ending::TimedOut(format!(
                            "attempt {attempt}, {method} {shown_final}: body not complete before the timeout of {}",
                            humantime::format_duration(args.timeout)
                        )));
                    }
                    Ok(read) => read,
                };
                let job = if code == 202 {
                    agent::job_location(&headers, &final_url)
                } else if code == 303 {
                    headers
                        .get(header::LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| final_url.join(v.trim()).ok())
                } else {
                    None
                };
                // A GET answered 202 without a status URL (GitHub's
                // `/stats/*` while they compute) is accepted, not done
                // (RFC 9110 §15.3.3): asked again, at the same URL, as the
                // daemon's agent does.
                let waiting = job.is_some()
                    || code == 429
                    || code == 503
                    || (code == 202 && method == Method::GET);
                // A body that broke off on an answer that only says "wait"
                // is judged as empty; on a final answer it is the error.
                let payload = match payload {
                    Ok(payload) => payload,
                    Err(_) if waiting => bytes::Bytes::new(),
                    Err(e) => return Err(format!("attempt {attempt}: {e}")),
                };
                let view = ResponseView::new(code, &headers, &payload);
                if args.verbose {
                    eprintln!(
                        "polld await: attempt {attempt}, {method} {shown_final} -> {code}, {} bytes",
                        payload.len()
                    );
                }
                if let Some(c) = plan.fail_if.iter().find(|c| c.holds(&view)) {
                    return Ok(Ending::Failed(format!(
                        "attempt {attempt}, {method} {shown_final}: HTTP {code}: --fail-if {c} holds"
                    )));
                }
                // Explicit --until conditions end the wait on any answer;
                // without them, success is a final 2xx (not a job's 202).
                if !plan.until.is_empty() && plan.until.iter().all(|c| c.holds(&view)) {
                    return Ok(Ending::Done(payload.to_vec()));
                }
                if let Some(next) = job {
                    if args.verbose {
                        eprintln!("polld await: attempt {attempt}: status at {next}");
                    }
                    url = next;
                    method = Method::GET;
                    body = None;
                    match server_wait {
                        Some(wait) => (wait, "Retry-After".to_owned()),
                        // A 303 points at the result: fetch it at once.
                        None if code == 303 => (Duration::ZERO, "303 See Other".to_owned()),
                        None => (interval, "interval".to_owned()),
                    }
                } else if waiting {
                    match server_wait {
                        Some(wait) => (wait, format!("Retry-After on {code}")),
                        None => (interval, format!("interval after {code}")),
                    }
                } else {
                    if plan.until.is_empty() && status.is_success() {
                        return Ok(Ending::Done(payload.to_vec()));
                    }
                    if once_only && status.is_server_error() {
                        return Ok(Ending::Failed(format!(
                            "attempt {attempt}, {method} {shown_final}: HTTP {code} {}; not sent again: the server may have acted on it",
                            status.canonical_reason().unwrap_or("")
                        )));
                    }
                    if status.is_client_error() && !matches!(code, 408 | 425) {
                        return Ok(Ending::Failed(format!(
                            "attempt {attempt}, {method} {shown_final}: HTTP {code} {}",
                            status.canonical_reason().unwrap_or("")
                        )));
                    }
                    let reason = if status.is_success() {
                        "interval: conditions do not hold yet"
                    } else {
                        "interval after a server error"
                    };
                    match server_wait {
                        Some(wait) => (wait, "Retry-After".to_owned()),
                        None => (interval, reason.to_owned()),
                    }
                }
            }
            (None, Ok(_)) => unreachable!("a response always has a status"),
        };

        if args.max_attempts.is_some_and(|max| attempt >= max) {
            return Ok(Ending::TimedOut(format!(
                "attempt {attempt}, {method} {shown_final}: all {attempt} attempts of --max-attempts used up"
            )));
        }
        // Jitter only adds; backoff grows the interval for the next time.
        let wait = wait + wait.mul_f64(args.jitter * rand::random::<f64>());
        if tokio::time::Instant::now() + wait > deadline {
            return Ok(Ending::TimedOut(format!(
                "attempt {attempt}, {method} {shown_final}: the next check ({}) would pass the timeout of {}",
                humantime::format_duration(wait),
                humantime::format_duration(args.timeout)
            )));
        }
        if args.verbose {
            eprintln!(
                "polld await: waiting {} ({why})",
                humantime::format_duration(wait)
            );
        }
        tokio::time::sleep(wait).await;
        if why.starts_with("interval") {
            interval = interval.mul_f64(args.backoff);
        }
    }
}

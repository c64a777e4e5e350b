//! OpenTelemetry export over OTLP/HTTP (protobuf): the metrics of
//! [`Metrics`] (read from the same registry `/metrics` renders, so both
//! always agree) every export interval, and one span per poll, batched.
//!
//! Configured by `[telemetry] otlp_endpoint` or the standard variables
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_COMPRESSION` (`gzip` or `none`),
//! `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds), each also per signal
//! (`OTEL_EXPORTER_OTLP_METRICS_…`, `OTEL_EXPORTER_OTLP_TRACES_…`, which
//! win), and `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds). An export the collector
//! answers 429, 502, 503 or 504, or that cannot connect, is retried with
//! backoff, after the collector's `Retry-After` if it sent one (bounded:
//! [`RETRY`]); a partial success is logged. Export failures are logged and
//! never stop polling.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::metrics::Metrics;
use crate::redact;

/// Spans held for the next export at most; beyond, spans are dropped (and counted).
const SPAN_QUEUE: usize = 8192;
/// Spans are exported at least this often.
const SPAN_INTERVAL: Duration = Duration::from_secs(5);

/// Where and how to export.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// Metrics, to `…/v1/metrics`.
    pub metrics: SignalExport,
    /// Poll spans, to `…/v1/traces`.
    pub traces: SignalExport,
    /// Metric export interval.
    pub interval: Duration,
}

/// Where and how one signal is exported.
#[derive(Debug, Clone)]
pub struct SignalExport {
    /// The URL exports are POSTed to.
    pub url: Url,
    /// Extra request headers: the signal's own, else
    /// `OTEL_EXPORTER_OTLP_HEADERS`.
    pub headers: Vec<(String, String)>,
    /// Send bodies gzip-compressed.
    pub gzip: bool,
    /// Longest wait for one export's answer.
    pub timeout: Duration,
}

/// The OTLP exporter's default timeout (the spec's 10 s).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl OtlpConfig {
    /// The export settings from the config and the environment, or None
    /// when no endpoint is configured.
    pub fn resolve(
        configured: Option<&Url>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<OtlpConfig>, String> {
        // The spec reads an empty variable as unset.
        let env = |name: &str| env(name).filter(|value| !value.trim().is_empty());
        let base = match configured {
            Some(url) => Some(url.clone()),
            None => match env("OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some(text) => Some(Url::parse(&text).map_err(|e| {
                    format!("OTEL_EXPORTER_OTLP_ENDPOINT {text:?} is not a URL: {e}")
                })?),
                None => None,
            },
        };
        let signal = |name: &str, path: &str| -> Result<Option<SignalExport>, String> {
            let var = |key: &str| format!("OTEL_EXPORTER_OTLP_{name}_{key}");
            let url = match env(&var("ENDPOINT")) {
                Some(text) => Url::parse(&text)
                    .map_err(|e| format!("{} {text:?} is not a URL: {e}", var("ENDPOINT")))?,
                None => match &base {
                    Some(base) => join(base, path),
                    None => return Ok(None),
                },
            };
            // The signal's own setting, else the general one.
            let setting = |key: &str| {
                let own = var(key);
                match env(&own) {
                    Some(value) => Some((own, value)),
                    None => {
                        let general = format!("OTEL_EXPORTER_OTLP_{key}");
                        env(&general).map(|value| (general, value))
                    }
                }
            };
            // A signal's own headers replace the general ones whole, as
            // the SDKs do: a general `Authorization` must not go to another
            // vendor's collector for that signal.
            let headers = match setting("HEADERS") {
                Some((name, text)) => parse_headers(&name, &text)?,
                None => Vec::new(),
            };
            // A value that cannot be used is ignored with a warning, as the
            // spec asks, rather than stopping polld.
            let gzip = match setting("COMPRESSION") {
                None => false,
                Some((name, value)) => match value.trim().to_ascii_lowercase().as_str() {
                    "gzip" => true,
                    "none" => false,
                    other => {
                        tracing::warn!(variable = %name, value = other, "OTLP compression is gzip or none; sending uncompressed");
                        false
                    }
                },
            };
            let timeout = match setting("TIMEOUT") {
                None => DEFAULT_TIMEOUT,
                Some((name, value)) => match value.trim().parse::<u64>() {
                    Ok(ms) if ms > 0 => Duration::from_millis(ms),
                    _ => {
                        tracing::warn!(variable = %name, value = %value, default = ?DEFAULT_TIMEOUT, "OTLP timeout is milliseconds, more than 0; using the default");
                        DEFAULT_TIMEOUT
                    }
                },
            };
            Ok(Some(SignalExport {
                url,
                headers,
                gzip,
                timeout,
            }))
        };
        let (Some(metrics), Some(traces)) = (
            signal("METRICS", "v1/metrics")?,
            signal("TRACES", "v1/traces")?,
        ) else {
            return Ok(None);
        };
        let interval = env("OTEL_METRIC_EXPORT_INTERVAL")
            .and_then(|ms| ms.trim().parse::<u64>().ok())
            .map_or(Duration::from_secs(60), Duration::from_millis)
            .max(Duration::from_millis(100));
        Ok(Some(OtlpConfig {
            metrics,
            traces,
            interval,
        }))
    }
}

/// `OTEL_EXPORTER_OTLP_HEADERS` (or a signal's own, named `var`):
/// `key=value` pairs separated by commas, in
/// the W3C Baggage format, so keys and values are percent-decoded
/// (`Authorization=Bearer%20TOKEN`). A pair that is no valid HTTP header is
/// an error at start rather than a failure of every export. The values
/// are credentials more often than not: the error names the key only.
fn parse_headers(var: &str, text: &str) -> Result<Vec<(String, String)>, String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s.trim())
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut headers = Vec::new();
    for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!(
                "{var}: a pair is not key=value (comma-separated, values percent-encoded)"
            ));
        };
        let (key, value) = (decode(key), decode(value));
        if http::HeaderName::from_bytes(key.as_bytes()).is_err() {
            return Err(format!("{var}: {key:?} is not a valid header name"));
        }
        if http::HeaderValue::from_str(&value).is_err() {
            return Err(format!(
                "{var}: the value of {key:?} is not a valid header value"
            ));
        }
        headers.push((key, value));
    }
    Ok(headers)
}

/// `base` with `path` appended to its path.
fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}/{path}", base.path().trim_end_matches('/'));
    url.set_path(&joined);
    url
}

/// One finished poll, as a span.
#[derive(Debug, Clone)]
pub struct PollSpan {
    /// Watch id.
    pub watch: String,
    /// The URL polled.
    pub url: String,
    /// The method of the watch's request.
    pub method: http::Method,
    /// The `result` label of `polld_polls_total`.
    pub result: &'static str,
    /// Final HTTP status.
    pub status: Option<u16>,
    /// Error text of a failed poll.
    pub error: Option<String>,
    /// Start and end.
    pub start: SystemTime,
    /// End.
    pub end: SystemTime,
}

/// Where the engine hands its poll spans; never blocks.
#[derive(Debug, Clone)]
pub struct SpanSink {
    queue: mpsc::Sender<PollSpan>,
    /// Spans a full queue dropped since the exporter last logged them.
    dropped: Arc<AtomicU64>,
}

impl SpanSink {
    /// Queues a span; a full queue drops it, and the exporter logs how
    /// many it dropped.
    pub fn record(&self, span: PollSpan) {
        if self.queue.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Logs the spans dropped since the last call, if any.
fn log_dropped(dropped: &AtomicU64) {
    let n = dropped.swap(0, Ordering::Relaxed);
    if n > 0 {
        tracing::warn!(
            dropped = n,
            queue = SPAN_QUEUE,
            "OTLP: poll spans dropped, more than the queue holds between exports (is the collector slow?)"
        );
    }
}

/// Starts the exporter; it flushes once more when `cancel` fires.
pub fn start(
    config: OtlpConfig,
    metrics: Arc<Metrics>,
    user_agent: &str,
    cancel: CancellationToken,
) -> (SpanSink, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(SPAN_QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    // Each export sets its signal's timeout.
    let client = reqwest::Client::builder()
        .user_agent(user_agent)
        .build()
        .unwrap_or_default();
    tracing::info!(metrics = %redact::url(&config.metrics.url), traces = %redact::url(&config.traces.url), interval = ?config.interval, metrics_gzip = config.metrics.gzip, traces_gzip = config.traces.gzip, "exporting telemetry over OTLP/HTTP");
    let exporter = Exporter {
        client,
        config,
        policy: RETRY,
    };
    let task = tokio::spawn(export_loop(exporter, metrics, rx, dropped.clone(), cancel));
    (SpanSink { queue: tx, dropped }, task)
}

async fn export_loop(
    exporter: Exporter,
    metrics: Arc<Metrics>,
    mut spans: mpsc::Receiver<PollSpan>,
    dropped: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    let started = SystemTime::now();
    let interval = exporter.config.interval;
    let mut metric_tick = tokio::time::interval(interval);
    let mut span_tick = tokio::time::interval(SPAN_INTERVAL.min(interval));
    // After an export that waited out retries, go on at the usual pace
    // rather than sending the missed ones back to back.
    metric_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    span_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    metric_tick.tick().await;
    span_tick.tick().await;
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = metric_tick.tick() => {
                let body = metrics_request(&metrics.render(), started, SystemTime::now()).encode_to_vec();
                exporter.post(Signal::Metrics, body, &cancel).await;
            }
            _ = span_tick.tick() => {
                log_dropped(&dropped);
                while let Ok(span) = spans.try_recv() {
                    batch.push(span);
                }
                if !batch.is_empty() {
                    let body = traces_request(&batch).encode_to_vec();
                    batch.clear();
                    exporter.post(Signal::Traces, body, &cancel).await;
                }
            }
        }
    }
    log_dropped(&dropped);
    while let Ok(span) = spans.try_recv() {
        batch.push(span);
    }
    if !batch.is_empty() {
        let body = traces_request(&batch).encode_to_vec();
        exporter.post(Signal::Traces, body, &cancel).await;
    }
    let body = metrics_request(&metrics.render(), started, SystemTime::now()).encode_to_vec();
    exporter.post(Signal::Metrics, body, &cancel).await;
}

/// Which signal an export carries: names the partial-success answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Metrics,
    Traces,
}

/// Retries of one export, as the OTLP/HTTP spec asks: on 429, 502, 503 and
/// 504 (waiting the `Retry-After` the collector sent, else an exponential
/// backoff with jitter) and on transport errors. Bounded in attempts and in
/// the longest wait, so a collector that stays down costs a batch, not the
/// exporter: spans queued meanwhile are dropped and counted by [`SpanSink`],
/// and the engine never waits for any of it.
#[derive(Debug, Clone, Copy)]
struct RetryPolicy {
    /// Tries in all, the first included.
    attempts: u32,
    /// The first backoff; each next one doubles.
    first_backoff: Duration,
    /// The longest wait before a retry; a `Retry-After` beyond it ends the
    /// export (the next one is due by then anyway).
    max_wait: Duration,
}

const RETRY: RetryPolicy = RetryPolicy {
    attempts: 5,
    first_backoff: Duration::from_secs(1),
    max_wait: Duration::from_secs(30),
};

/// How one try ended.
enum Try {
    Done,
    /// Retryable, after at least this long (`Retry-After`), if said.
    Again(Option<Duration>, String),
    Failed,
}

/// Sends exports: the client, where each signal goes, and the retries.
struct Exporter {
    client: reqwest::Client,
    config: OtlpConfig,
    policy: RetryPolicy,
}

impl Exporter {
    /// Exports `body` to the signal's URL, with the retries of `policy`;
    /// `cancel` ends the waits between tries (shutdown flushes once more,
    /// without them).
    async fn post(&self, signal: Signal, body: Vec<u8>, cancel: &CancellationToken) {
        let (client, policy) = (&self.client, self.policy);
        let export = match signal {
            Signal::Metrics => &self.config.metrics,
            Signal::Traces => &self.config.traces,
        };
        let url = &export.url;
        let body = if export.gzip { gzip(&body).await } else { body };
        let body = bytes::Bytes::from(body);
        let mut backoff = policy.first_backoff;
        for attempt in 1..=policy.attempts.max(1) {
            let (retry_after, why) = match try_post(client, export, body.clone(), signal).await {
                Try::Done | Try::Failed => return,
                Try::Again(retry_after, why) => (retry_after, why),
            };
            if attempt == policy.attempts || cancel.is_cancelled() {
                tracing::warn!(url = %redact::url(url), attempts = attempt, error = %why, "OTLP export failed; this batch is dropped");
                return;
            }
            // Full jitter on our own backoff; the collector's Retry-After is a
            // minimum, and never shortened.
            let wait = match retry_after {
                Some(after) => after,
                None => backoff.mul_f64(rand::random_range(0.5..=1.0)),
            };
            if wait > policy.max_wait {
                tracing::warn!(url = %redact::url(url), retry_after = ?wait, error = %why, "OTLP export failed and the collector asks for a longer wait than polld retries for; this batch is dropped");
                return;
            }
            tracing::debug!(url = %redact::url(url), attempt, ?wait, error = %why, "OTLP export will be retried");
            tokio::select! {
                () = cancel.cancelled() => {
                    tracing::warn!(url = %redact::url(url), attempts = attempt, error = %why, "OTLP export failed at shutdown; this batch is dropped");
                    return;
                }
                () = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(policy.max_wait);
        }
    }
}

/// A body compressed for `Content-Encoding: gzip`.
async fn gzip(body: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::with_capacity(body.len() / 4);
    let mut encoder = async_compression::tokio::bufread::GzipEncoder::new(body);
    // Reading from memory into memory cannot fail.
    let _ = encoder.read_to_end(&mut out).await;
    out
}

async fn try_post(
    client: &reqwest::Client,
    export: &SignalExport,
    body: bytes::Bytes,
    signal: Signal,
) -> Try {
    let url = &export.url;
    let mut request = client
        .post(url.clone())
        .header("content-type", "application/x-protobuf")
        .timeout(export.timeout)
        .body(body);
    if export.gzip {
        request = request.header("content-encoding", "gzip");
    }
    for (name, value) in &export.headers {
        request = request.header(name, value);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(err) if err.is_builder() => {
            tracing::warn!(url = %redact::url(url), error = %redact::in_text(&err.to_string(), url), "OTLP export cannot be sent; not retried");
            return Try::Failed;
        }
        // Connect errors and timeouts: the spec retries them with backoff.
        Err(err) => {
            return Try::Again(None, redact::in_text(&err.to_string(), url));
        }
    };
    let status = response.status();
    if status.is_success() {
        let body = response.bytes().await.unwrap_or_default();
        log_partial_success(url, signal, &body);
        return Try::Done;
    }
    if matches!(status.as_u16(), 429 | 502 | 503 | 504) {
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        return Try::Again(retry_after, format!("collector answered {status}"));
    }
    tracing::warn!(url = %redact::url(url), %status, "OTLP export refused; not retried");
    Try::Failed
}

/// `Retry-After`: delay-seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    // The agent's reading of the header (seconds or any HTTP-date form).
    crate::agent::hints::parse_retry_after(value, None, SystemTime::now())
}

/// A 200 may still carry a partial success: what the collector rejected,
/// and why. Not retried (the spec says so), but worth a warning.
fn log_partial_success(url: &Url, signal: Signal, body: &[u8]) {
    if let Some((rejected, message)) = partial_success(signal, body) {
        tracing::warn!(url = %redact::url(url), rejected, message = %message, "OTLP export partly rejected by the collector");
    }
}

/// The rejected count and message of a partial success, if the answer
/// (protobuf) reports one.
fn partial_success(signal: Signal, body: &[u8]) -> Option<(i64, String)> {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    let (rejected, message) = match signal {
        Signal::Metrics => ExportMetricsServiceResponse::decode(body)
            .ok()?
            .partial_success
            .map(|p| (p.rejected_data_points, p.error_message))?,
        Signal::Traces => ExportTraceServiceResponse::decode(body)
            .ok()?
            .partial_success
            .map(|p| (p.rejected_spans, p.error_message))?,
    };
    (rejected > 0 || !message.is_empty()).then_some((rejected, message))
}

fn resource() -> Resource {
    Resource {
        attributes: vec![
            attr("service.name", "polld"),
            attr("service.version", env!("CARGO_PKG_VERSION")),
        ],
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "polld".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..Default::default()
    }
}

fn attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn int_attr(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// `url.full` as the semantic conventions want it: user info replaced by
/// `REDACTED:REDACTED` (a user name alone is often the token itself, as in
/// `https://TOKEN@host/`), secret-looking query values redacted as in logs.
fn span_url(text: &str) -> String {
    match Url::parse(text) {
        Ok(mut url) => {
            if !url.username().is_empty() || url.password().is_some() {
                let _ = url.set_username(redact::MASK);
                let _ = url.set_password(Some(redact::MASK));
            }
            redact::url(&url).to_string()
        }
        Err(_) => redact::url_text(text),
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Label pairs of one sample.
type Labels = Vec<(String, String)>;

/// One sample value: integer instruments (counters, `Gauge<i64>`) are
/// written as integers, float ones always with a point or an exponent
/// (`1.0`), so the text tells which an instrument is. A metric's points then
/// all have one value type, as OTLP consumers expect, whatever the value.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Value {
    Int(i64),
    Double(f64),
}

impl Value {
    fn as_f64(self) -> f64 {
        match self {
            Value::Int(v) => v as f64,
            Value::Double(v) => v,
        }
    }
}

/// One sample line of the text format: name, labels, value.
fn sample(line: &str) -> Option<(&str, Labels, Value)> {
    let (head, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => Value::Double(f64::INFINITY),
        "-Inf" => Value::Double(f64::NEG_INFINITY),
        v => match v.parse::<i64>() {
            Ok(int) => Value::Int(int),
            Err(_) => Value::Double(v.parse().ok()?),
        },
    };
    let (name, labels) = match head.split_once('{') {
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)),
        None => (head, Vec::new()),
    };
    Some((name, labels, value))
}

fn parse_labels(text: &str) -> Labels {
    let mut labels = Vec::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.push((key.trim_start_matches(',').to_owned(), value));
        rest = &after[end..];
    }
    labels
}

/// Converts the registry's OpenMetrics text into OTLP metrics with the
/// names of DESIGN.md (counters keep their `_total`).
pub fn metrics_request(
    text: &str,
    start: SystemTime,
    now: SystemTime,
) -> ExportMetricsServiceRequest {
    let (start, now) = (nanos(start), nanos(now));
    let mut kinds: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeMap<String, String> = BTreeMap::new();
    let mut numbers: BTreeMap<String, Vec<NumberDataPoint>> = BTreeMap::new();
    // histogram name -> labels without `le` -> (buckets (le, cumulative), sum, count)
    type Buckets = (Vec<(f64, f64)>, f64, f64);
    let mut histograms: BTreeMap<String, BTreeMap<Vec<(String, String)>, Buckets>> =
        BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                kinds.insert(name.to_owned(), kind.to_owned());
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, help)) = rest.split_once(' ') {
                helps.insert(name.to_owned(), help.to_owned());
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((name, labels, value)) = sample(line) else {
            continue;
        };
        let family = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| kinds.contains_key(*base))
            })
            .unwrap_or(name);
        match kinds.get(family).map(String::as_str) {
            Some("histogram") => {
                let mut key: Vec<(String, String)> =
                    labels.iter().filter(|(k, _)| k != "le").cloned().collect();
                key.sort();
                let entry = histograms
                    .entry(family.to_owned())
                    .or_default()
                    .entry(key)
                    .or_insert_with(|| (Vec::new(), 0.0, 0.0));
                let value = value.as_f64();
                if name.ends_with("_bucket") {
                    let le = labels.iter().find(|(k, _)| k == "le").and_then(|(_, v)| {
                        if v == "+Inf" {
                            Some(f64::INFINITY)
                        } else {
                            v.parse().ok()
                        }
                    });
                    if let Some(le) = le {
                        entry.0.push((le, value));
                    }
                } else if name.ends_with("_sum") {
                    entry.1 = value;
                } else if name.ends_with("_count") {
                    entry.2 = value;
                }
            }
            Some(_) => {
                numbers
                    .entry(name.to_owned())
                    .or_default()
                    .push(NumberDataPoint {
                        attributes: labels.iter().map(|(k, v)| attr(k, v)).collect(),
                        start_time_unix_nano: start,
                        time_unix_nano: now,
                        value: Some(match value {
                            Value::Int(v) => number_data_point::Value::AsInt(v),
                            Value::Double(v) => number_data_point::Value::AsDouble(v),
                        }),
                        ..Default::default()
                    });
            }
            None => {}
        }
    }
    let mut out = Vec::new();
    for (name, points) in numbers {
        let family = name
            .strip_suffix("_total")
            .filter(|b| kinds.contains_key(*b))
            .unwrap_or(&name);
        let kind = kinds.get(family).map_or("gauge", String::as_str);
        let data = if kind == "counter" {
            metric::Data::Sum(Sum {
                data_points: points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })
        } else {
            metric::Data::Gauge(Gauge {
                data_points: points,
            })
        };
        out.push(Metric {
            description: helps.get(family).cloned().unwrap_or_default(),
            name,
            data: Some(data),
            ..Default::default()
        });
    }
    for (name, series) in histograms {
        let data_points = series
            .into_iter()
            .map(|(labels, (mut buckets, sum, count))| {
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                let mut previous = 0.0;
                let bucket_counts = buckets
                    .iter()
                    .map(|(_, cumulative)| {
                        let n = (cumulative - previous).max(0.0) as u64;
                        previous = *cumulative;
                        n
                    })
                    .collect();
                HistogramDataPoint {
                    attributes: labels.iter().map(|(k, v)| attr(k, v)).collect(),
                    start_time_unix_nano: start,
                    time_unix_nano: now,
                    count: count as u64,
                    sum: Some(sum),
                    bucket_counts,
                    explicit_bounds: buckets
                        .iter()
                        .map(|(le, _)| *le)
                        .filter(|le| le.is_finite())
                        .collect(),
                    ..Default::default()
                }
            })
            .collect();
        // UCUM units: `_seconds` histograms are in seconds; the others
        // (outcomes per commit) count things.
        let unit = if name.ends_with("_seconds") { "s" } else { "1" };
        out.push(Metric {
            description: helps.get(&name).cloned().unwrap_or_default(),
            name,
            unit: unit.to_owned(),
            data: Some(metric::Data::Histogram(Histogram {
                data_points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        });
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics: out,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// One span per poll, each its own trace.
pub fn traces_request(polls: &[PollSpan]) -> ExportTraceServiceRequest {
    let spans = polls
        .iter()
        .map(|p| {
            let mut attributes = vec![
                attr("polld.watch", &p.watch),
                attr("url.full", &span_url(&p.url)),
                attr("http.request.method", p.method.as_str()),
                attr("polld.result", p.result),
            ];
            if let Ok(url) = Url::parse(&p.url) {
                if let Some(host) = url.host_str() {
                    attributes.push(attr("server.address", host));
                }
                if let Some(port) = url.port_or_known_default() {
                    attributes.push(int_attr("server.port", i64::from(port)));
                }
            }
            if let Some(code) = p.status {
                attributes.push(int_attr("http.response.status_code", i64::from(code)));
            }
            if p.error.is_some() {
                // Semantic conventions: the status code of an HTTP error,
                // else `_OTHER` (polld's errors carry no stable class).
                let kind = p
                    .status
                    .filter(|code| *code >= 400)
                    .map_or_else(|| "_OTHER".to_owned(), |code| code.to_string());
                attributes.push(attr("error.type", &kind));
            }
            Span {
                trace_id: rand::random::<[u8; 16]>().to_vec(),
                span_id: rand::random::<[u8; 8]>().to_vec(),
                name: "poll".to_owned(),
                kind: span::SpanKind::Client as i32,
                start_time_unix_nano: nanos(p.start),
                end_time_unix_nano: nanos(p.end),
                attributes,
                // Error for a failed poll, else Unset: the trace API
                // leaves Ok to the application's operators, not to
                // instrumentation.
                status: p.error.as_ref().map(|error| Status {
                    message: error.clone(),
                    code: status::StatusCode::Error as i32,
                }),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource()),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope()),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    /// A collector that answers `first` to the first `n` exports, then 200.
    async fn collector(first: ResponseTemplate, n: u64) -> (MockServer, OtlpConfig) {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/metrics"))
            .respond_with(first)
            .up_to_n_times(n)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/v1/metrics"))
            .respond_with(ResponseTemplate::new(200))
            .mount(&server)
            .await;
        let base = Url::parse(&server.uri()).unwrap();
        let config = OtlpConfig::resolve(Some(&base), |_| None).unwrap().unwrap();
        (server, config)
    }

    const FAST: RetryPolicy = RetryPolicy {
        attempts: 4,
        first_backoff: Duration::from_millis(20),
        max_wait: Duration::from_secs(5),
    };

    async fn export(config: &OtlpConfig, policy: RetryPolicy) -> Duration {
        let exporter = Exporter {
            client: reqwest::Client::new(),
            config: config.clone(),
            policy,
        };
        let started = std::time::Instant::now();
        exporter
            .post(
                Signal::Metrics,
                b"batch".to_vec(),
                &CancellationToken::new(),
            )
            .await;
        started.elapsed()
    }

    async fn bodies(server: &MockServer) -> Vec<Vec<u8>> {
        let requests = server.received_requests().await.unwrap();
        for r in &requests {
            assert_eq!(r.headers["content-type"], "application/x-protobuf");
        }
        requests.into_iter().map(|r| r.body).collect()
    }

    #[tokio::test]
    async fn a_503_with_retry_after_is_retried_after_that_wait() {
        let (server, config) = collector(
            ResponseTemplate::new(503).insert_header("retry-after", "1"),
            1,
        )
        .await;
        let took = export(&config, FAST).await;
        assert_eq!(bodies(&server).await, vec![b"batch".to_vec(); 2]);
        assert!(took >= Duration::from_secs(1), "waited {took:?}");
    }

    #[tokio::test]
    async fn a_429_and_gateway_errors_are_retried_with_backoff() {
        for status in [429, 502, 504] {
            let (server, config) = collector(ResponseTemplate::new(status), 2).await;
            export(&config, FAST).await;
            assert_eq!(bodies(&server).await.len(), 3, "status {status}");
        }
    }

    #[tokio::test]
    async fn retries_are_bounded() {
        let (server, config) = collector(ResponseTemplate::new(503), 100).await;
        export(&config, FAST).await;
        assert_eq!(bodies(&server).await.len(), 4, "FAST.attempts tries");
        // A Retry-After beyond the longest wait ends the export at once.
        let (server, config) = collector(
            ResponseTemplate::new(429).insert_header("retry-after", "3600"),
            100,
        )
        .await;
        let took = export(&config, FAST).await;
        assert_eq!(bodies(&server).await.len(), 1);
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[tokio::test]
    async fn other_refusals_are_not_retried() {
        let (server, config) = collector(ResponseTemplate::new(400), 1).await;
        export(&config, FAST).await;
        assert_eq!(bodies(&server).await.len(), 1);
    }

    #[test]
    fn otlp_headers_are_percent_decoded_and_checked() {
        assert_eq!(
            parse_headers(
                "OTEL_EXPORTER_OTLP_HEADERS",
                "Authorization=Bearer%20abc%3D%3D, x-tenant = a%2Cb ,"
            )
            .unwrap(),
            vec![
                ("Authorization".to_owned(), "Bearer abc==".to_owned()),
                ("x-tenant".to_owned(), "a,b".to_owned()),
            ]
        );
        // Base64 padding needs no encoding: the first `=` splits.
        assert_eq!(
            parse_headers(
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Basic dXNlcjpwYXNz=="
            )
            .unwrap()[0]
                .1,
            "Basic dXNlcjpwYXNz=="
        );
        let err = parse_headers("OTEL_EXPORTER_OTLP_HEADERS", "bad name=1").unwrap_err();
        assert!(err.contains("\"bad name\""), "{err}");
        let err =
            parse_headers("OTEL_EXPORTER_OTLP_HEADERS", "x-key=line%0Abreak-secret").unwrap_err();
        assert!(err.contains("x-key") && !err.contains("secret"), "{err}");
        assert!(parse_headers("OTEL_EXPORTER_OTLP_HEADERS", "novalue").is_err());
        assert!(
            OtlpConfig::resolve(None, |n| match n {
                "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://127.0.0.1:4318".to_owned()),
                "OTEL_EXPORTER_OTLP_HEADERS" => Some("a b=c".to_owned()),
                _ => None,
            })
            .is_err()
        );
    }

    #[test]
    fn a_partial_success_is_read_from_the_answer() {
        use opentelemetry_proto::tonic::collector::trace::v1::{
            ExportTracePartialSuccess, ExportTraceServiceResponse,
        };
        let body = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "too old".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(
            partial_success(Signal::Traces, &body),
            Some((3, "too old".to_owned()))
        );
        assert_eq!(partial_success(Signal::Traces, b""), None);
        assert_eq!(partial_success(Signal::Metrics, b""), None);
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(120);
        let waited = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(waited > Duration::from_secs(100) && waited <= Duration::from_secs(120));
        assert_eq!(
            parse_retry_after("Tue, 01 Jan 2019 00:00:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn a_full_span_queue_counts_what_it_drops() {
        let (queue, _rx) = mpsc::channel(2);
        let sink = SpanSink {
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        let span = || PollSpan {
            watch: "w".into(),
            url: "http://127.0.0.1/".into(),
            method: http::Method::GET,
            result: "not_modified",
            status: Some(304),
            error: None,
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH,
        };
        for _ in 0..5 {
            sink.record(span());
        }
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 3);
        log_dropped(&sink.dropped);
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 0, "logged and reset");
    }

    #[test]
    fn registry_text_becomes_otlp_metrics_with_the_design_names() {
        let metrics = Metrics::new(true);
        metrics.poll("a", "not_modified", Duration::from_millis(20), 10);
        metrics.poll("a", "changed", Duration::from_millis(40), 100);
        metrics.lag(Duration::from_millis(3));
        metrics.ratio("a", Some(0.5));
        metrics.set_watches(1);
        let request = metrics_request(&metrics.render(), SystemTime::UNIX_EPOCH, SystemTime::now());
        let all = &request.resource_metrics[0].scope_metrics[0].metrics;
        let names: Vec<&str> = all.iter().map(|m| m.name.as_str()).collect();
        for name in [
            "polld_polls_total",
            "polld_bytes_received_total",
            "polld_changes_total",
            "polld_watches",
            "polld_poll_duration_seconds",
            "polld_schedule_lag_seconds",
            "polld_not_modified_ratio",
            "polld_store_commit_duration_seconds",
            "polld_store_commit_outcomes",
            "polld_store_errors_total",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        let polls = all.iter().find(|m| m.name == "polld_polls_total").unwrap();
        let Some(metric::Data::Sum(sum)) = &polls.data else {
            panic!("a counter is a Sum")
        };
        assert!(sum.is_monotonic);
        assert_eq!(sum.data_points.len(), 2);
        let lag = all
            .iter()
            .find(|m| m.name == "polld_schedule_lag_seconds")
            .unwrap();
        let Some(metric::Data::Histogram(h)) = &lag.data else {
            panic!("a histogram")
        };
        assert_eq!(h.data_points[0].count, 1);
        assert_eq!(h.data_points[0].bucket_counts.iter().sum::<u64>(), 1);
        assert_eq!(
            h.data_points[0].bucket_counts.len(),
            h.data_points[0].explicit_bounds.len() + 1
        );
    }

    #[test]
    fn a_metric_keeps_one_value_type_and_a_fitting_unit() {
        let metrics = Metrics::new(true);
        // 1.0 and 0.5: a float gauge whose values happen to be whole.
        metrics.ratio("a", Some(1.0));
        metrics.ratio("b", Some(0.5));
        metrics.poll("a", "changed", Duration::from_millis(5), 3);
        metrics.commit(polld_store::CommitReport {
            outcomes: 3,
            duration: Duration::from_millis(2),
            succeeded: true,
        });
        let request = metrics_request(&metrics.render(), SystemTime::UNIX_EPOCH, SystemTime::now());
        let all = &request.resource_metrics[0].scope_metrics[0].metrics;
        let points = |name: &str| -> Vec<number_data_point::Value> {
            let metric = all.iter().find(|m| m.name == name).unwrap();
            match &metric.data {
                Some(metric::Data::Gauge(g)) => &g.data_points,
                Some(metric::Data::Sum(s)) => &s.data_points,
                other => panic!("{name}: {other:?}"),
            }
            .iter()
            .map(|p| p.value.unwrap())
            .collect()
        };
        let mut ratios = points("polld_not_modified_ratio");
        ratios.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        assert_eq!(
            ratios,
            vec![
                number_data_point::Value::AsDouble(0.5),
                number_data_point::Value::AsDouble(1.0)
            ]
        );
        assert_eq!(
            points("polld_bytes_received_total"),
            vec![number_data_point::Value::AsInt(3)]
        );
        let unit = |name: &str| &all.iter().find(|m| m.name == name).unwrap().unit;
        assert_eq!(unit("polld_poll_duration_seconds"), "s");
        assert_eq!(unit("polld_store_commit_duration_seconds"), "s");
        assert_eq!(unit("polld_store_commit_outcomes"), "1");
    }

    #[test]
    fn poll_spans_follow_the_http_client_conventions() {
        let span = |url: &str, status: Option<u16>, error: Option<&str>| PollSpan {
            watch: "w".into(),
            url: url.into(),
            method: if error.is_some() {
                http::Method::POST
            } else {
                http::Method::GET
            },
            result: if error.is_some() { "error" } else { "changed" },
            status,
            error: error.map(str::to_owned),
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH + Duration::from_millis(5),
        };
        let request = traces_request(&[
            span(
                "https://ghp_secret@example.org/x?token=t0p&a=1",
                Some(200),
                None,
            ),
            span(
                "http://127.0.0.1:8080/y",
                Some(500),
                Some("500 Internal Server Error"),
            ),
            span("http://127.0.0.1:8080/y", None, Some("cannot connect")),
        ]);
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        let get = |i: usize, key: &str| -> Option<any_value::Value> {
            spans[i]
                .attributes
                .iter()
                .find(|a| a.key == key)
                .and_then(|a| a.value.clone()?.value)
        };
        let text = |v: &str| Some(any_value::Value::StringValue(v.to_owned()));
        assert_eq!(
            get(0, "url.full"),
            text("https://REDACTED:REDACTED@example.org/x?token=REDACTED&a=1")
        );
        assert_eq!(get(0, "server.address"), text("example.org"));
        assert_eq!(get(0, "http.request.method"), text("GET"));
        assert_eq!(get(1, "http.request.method"), text("POST"));
        assert_eq!(get(0, "server.port"), Some(any_value::Value::IntValue(443)));
        assert_eq!(get(0, "error.type"), None);
        assert_eq!(spans[0].status, None, "success leaves the status Unset");
        assert_eq!(
            get(1, "server.port"),
            Some(any_value::Value::IntValue(8080))
        );
        assert_eq!(get(1, "error.type"), text("500"));
        assert_eq!(get(2, "error.type"), text("_OTHER"));
        for i in [1, 2] {
            let status = spans[i].status.clone().unwrap();
            assert_eq!(status.code, status::StatusCode::Error as i32);
            assert!(!status.message.is_empty());
        }
        assert_ne!(spans[1].trace_id, spans[2].trace_id);
        assert_eq!((spans[1].trace_id.len(), spans[1].span_id.len()), (16, 8));
    }

    #[test]
    fn endpoint_from_config_or_environment() {
        let env = |name: &str| match name {
            "OTEL_EXPORTER_OTLP_HEADERS" => Some("x-api-key=k1, tenant=t".to_owned()),
            "OTEL_METRIC_EXPORT_INTERVAL" => Some("1500".to_owned()),
            _ => None,
        };
        let base = Url::parse("http://127.0.0.1:4318").unwrap();
        let config = OtlpConfig::resolve(Some(&base), env).unwrap().unwrap();
        assert_eq!(
            config.metrics.url.as_str(),
            "http://127.0.0.1:4318/v1/metrics"
        );
        assert_eq!(
            config.traces.url.as_str(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            config.traces.headers[1],
            ("tenant".to_owned(), "t".to_owned())
        );
        assert_eq!(config.interval, Duration::from_millis(1500));
        assert_eq!(
            (config.metrics.gzip, config.metrics.timeout),
            (false, DEFAULT_TIMEOUT)
        );
        assert!(OtlpConfig::resolve(None, |_| None).unwrap().is_none());
        let from_env = OtlpConfig::resolve(None, |n| {
            (n == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://collector:4318/otlp/".to_owned())
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            from_env.traces.url.as_str(),
            "http://collector:4318/otlp/v1/traces"
        );
    }

    /// A signal's own settings win over the general ones, its headers
    /// replacing the general set whole; values polld cannot use are
    /// ignored (the defaults hold), except headers, which are checked.
    #[test]
    fn per_signal_settings_win_over_the_general_ones() {
        let env = |name: &str| {
            let value = match name {
                "OTEL_EXPORTER_OTLP_HEADERS" => "x-api-key=k1,tenant=t",
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS" => "X-Api-Key=k2",
                "OTEL_EXPORTER_OTLP_COMPRESSION" => "gzip",
                "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION" => "none",
                "OTEL_EXPORTER_OTLP_TIMEOUT" => "2500",
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT" => "500",
                _ => return None,
            };
            Some(value.to_owned())
        };
        let base = Url::parse("http://127.0.0.1:4318").unwrap();
        let config = OtlpConfig::resolve(Some(&base), env).unwrap().unwrap();
        let (m, t) = (&config.metrics, &config.traces);
        assert_eq!((m.gzip, m.timeout), (false, Duration::from_millis(2500)));
        assert_eq!((t.gzip, t.timeout), (true, Duration::from_millis(500)));
        assert_eq!(m.headers.len(), 2);
        assert_eq!(t.headers, [("X-Api-Key".to_owned(), "k2".to_owned())]);
        for (var, value) in [
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "br"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "10s"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "0"),
        ] {
            let config = OtlpConfig::resolve(Some(&base), |n| (n == var).then(|| value.to_owned()))
                .unwrap()
                .unwrap();
            assert!(!config.traces.gzip, "{var}");
            assert_eq!(config.traces.timeout, DEFAULT_TIMEOUT, "{var}");
        }
        let var = "OTEL_EXPORTER_OTLP_METRICS_HEADERS";
        let err = OtlpConfig::resolve(Some(&base), |n| (n == var).then(|| "a b=c".to_owned()))
            .unwrap_err();
        assert!(
            err.contains(var) && err.contains("not a valid header name"),
            "{err}"
        );
    }

    /// With compression on, the collector gets the batch gzip-compressed
    /// and labelled so.
    #[tokio::test]
    async fn a_gzip_export_is_labelled_and_decodes_to_the_batch() {
        use std::io::Read;
        let (server, mut config) = collector(ResponseTemplate::new(200), 1).await;
        config.metrics.gzip = true;
        export(&config, FAST).await;
        let requests = server.received_requests().await.unwrap();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].headers["content-encoding"], "gzip");
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&requests[0].body[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, b"batch");
    }

    /// The OTel spec reads an empty variable as unset: an empty
    /// `OTEL_EXPORTER_OTLP_TIMEOUT` (as templated environments often set)
    /// stopped polld's start, and an empty per-signal compression hid the
    /// general `gzip`.
    #[test]
    fn empty_variables_are_unset() {
        let base = Url::parse("http://127.0.0.1:4318").unwrap();
        let config = OtlpConfig::resolve(Some(&base), |n| match n {
            "OTEL_EXPORTER_OTLP_TIMEOUT" => Some(String::new()),
            "OTEL_EXPORTER_OTLP_COMPRESSION" => Some("gzip".to_owned()),
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION" => Some(String::new()),
            _ => None,
        })
        .expect("an empty variable is unset")
        .unwrap();
        assert_eq!(config.metrics.timeout, DEFAULT_TIMEOUT);
        assert!(config.traces.gzip, "the empty TRACES_COMPRESSION is unset");
    }
}

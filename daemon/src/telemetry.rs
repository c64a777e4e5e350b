//! OpenTelemetry export over OTLP/HTTP (protobuf): the metrics of
//! [`Metrics`] (read from the same registry `/metrics` renders, so both
//! always agree) every export interval, and one span per poll, batched.
//!
//! Configured by `[telemetry] otlp_endpoint` or the standard variables
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS` and
//! `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds). Export failures are logged
//! and never stop polling.

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
    /// `…/v1/metrics`.
    pub metrics_url: Url,
    /// `…/v1/traces`.
    pub traces_url: Url,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub headers: Vec<(String, String)>,
    /// Metric export interval.
    pub interval: Duration,
}

impl OtlpConfig {
    /// The export settings from the config and the environment, or None
    /// when no endpoint is configured.
    pub fn resolve(
        configured: Option<&Url>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<OtlpConfig>, String> {
        let base = match configured {
            Some(url) => Some(url.clone()),
            None => match env("OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some(text) => Some(Url::parse(&text).map_err(|e| {
                    format!("OTEL_EXPORTER_OTLP_ENDPOINT {text:?} is not a URL: {e}")
                })?),
                None => None,
            },
        };
        let signal = |var: &str, path: &str| -> Result<Option<Url>, String> {
            if let Some(text) = env(var) {
                return Url::parse(&text)
                    .map(Some)
                    .map_err(|e| format!("{var} {text:?} is not a URL: {e}"));
            }
            Ok(base.as_ref().map(|b| join(b, path)))
        };
        let (Some(metrics_url), Some(traces_url)) = (
            signal("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "v1/metrics")?,
            signal("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "v1/traces")?,
        ) else {
            return Ok(None);
        };
        let headers = env("OTEL_EXPORTER_OTLP_HEADERS")
            .map(|text| {
                text.split(',')
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let interval = env("OTEL_METRIC_EXPORT_INTERVAL")
            .and_then(|ms| ms.trim().parse::<u64>().ok())
            .map_or(Duration::from_secs(60), Duration::from_millis)
            .max(Duration::from_millis(100));
        Ok(Some(OtlpConfig {
            metrics_url,
            traces_url,
            headers,
            interval,
        }))
    }
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
    let client = reqwest::Client::builder()
        .user_agent(user_agent)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    tracing::info!(metrics = %redact::url(&config.metrics_url), traces = %redact::url(&config.traces_url), interval = ?config.interval, "exporting telemetry over OTLP/HTTP");
    let task = tokio::spawn(export_loop(
        config,
        client,
        metrics,
        rx,
        dropped.clone(),
        cancel,
    ));
    (SpanSink { queue: tx, dropped }, task)
}

async fn export_loop(
    config: OtlpConfig,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    mut spans: mpsc::Receiver<PollSpan>,
    dropped: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    let started = SystemTime::now();
    let mut metric_tick = tokio::time::interval(config.interval);
    let mut span_tick = tokio::time::interval(SPAN_INTERVAL.min(config.interval));
    metric_tick.tick().await;
    span_tick.tick().await;
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = metric_tick.tick() => {
                let body = metrics_request(&metrics.render(), started, SystemTime::now()).encode_to_vec();
                post(&client, &config, &config.metrics_url, body).await;
            }
            _ = span_tick.tick() => {
                log_dropped(&dropped);
                while let Ok(span) = spans.try_recv() {
                    batch.push(span);
                }
                if !batch.is_empty() {
                    let body = traces_request(&batch).encode_to_vec();
                    batch.clear();
                    post(&client, &config, &config.traces_url, body).await;
                }
            }
        }
    }
    log_dropped(&dropped);
    while let Ok(span) = spans.try_recv() {
        batch.push(span);
    }
    if !batch.is_empty() {
        post(
            &client,
            &config,
            &config.traces_url,
            traces_request(&batch).encode_to_vec(),
        )
        .await;
    }
    let body = metrics_request(&metrics.render(), started, SystemTime::now()).encode_to_vec();
    post(&client, &config, &config.metrics_url, body).await;
}

async fn post(client: &reqwest::Client, config: &OtlpConfig, url: &Url, body: Vec<u8>) {
    let mut request = client
        .post(url.clone())
        .header("content-type", "application/x-protobuf")
        .body(body);
    for (name, value) in &config.headers {
        request = request.header(name, value);
    }
    match request.send().await {
        Ok(response) if response.status().is_success() => {}
        Ok(response) => {
            tracing::warn!(url = %redact::url(url), status = %response.status(), "OTLP export refused")
        }
        Err(err) => {
            tracing::warn!(url = %redact::url(url), error = %redact::in_text(&err.to_string(), url), "OTLP export failed")
        }
    }
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

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Label pairs of one sample.
type Labels = Vec<(String, String)>;

/// One sample line of the text format: name, labels, value.
fn sample(line: &str) -> Option<(&str, Labels, f64)> {
    let (head, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
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
                        value: Some(if value.fract() == 0.0 && value.abs() < 9e15 {
                            number_data_point::Value::AsInt(value as i64)
                        } else {
                            number_data_point::Value::AsDouble(value)
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
        out.push(Metric {
            description: helps.get(&name).cloned().unwrap_or_default(),
            name,
            unit: "s".to_owned(),
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
                attr("url.full", &redact::url_text(&p.url)),
                attr("polld.result", p.result),
            ];
            if let Some(code) = p.status {
                attributes.push(KeyValue {
                    key: "http.response.status_code".to_owned(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::IntValue(i64::from(code))),
                    }),
                    ..Default::default()
                });
            }
            Span {
                trace_id: rand::random::<[u8; 16]>().to_vec(),
                span_id: rand::random::<[u8; 8]>().to_vec(),
                name: "poll".to_owned(),
                kind: span::SpanKind::Client as i32,
                start_time_unix_nano: nanos(p.start),
                end_time_unix_nano: nanos(p.end),
                attributes,
                status: Some(Status {
                    message: p.error.clone().unwrap_or_default(),
                    code: if p.error.is_some() {
                        status::StatusCode::Error as i32
                    } else {
                        status::StatusCode::Ok as i32
                    },
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
    fn endpoint_from_config_or_environment() {
        let env = |name: &str| match name {
            "OTEL_EXPORTER_OTLP_HEADERS" => Some("x-api-key=k1, tenant=t".to_owned()),
            "OTEL_METRIC_EXPORT_INTERVAL" => Some("1500".to_owned()),
            _ => None,
        };
        let base = Url::parse("http://127.0.0.1:4318").unwrap();
        let config = OtlpConfig::resolve(Some(&base), env).unwrap().unwrap();
        assert_eq!(
            config.metrics_url.as_str(),
            "http://127.0.0.1:4318/v1/metrics"
        );
        assert_eq!(
            config.traces_url.as_str(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(config.headers[1], ("tenant".to_owned(), "t".to_owned()));
        assert_eq!(config.interval, Duration::from_millis(1500));
        assert!(OtlpConfig::resolve(None, |_| None).unwrap().is_none());
        let from_env = OtlpConfig::resolve(None, |n| {
            (n == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://collector:4318/otlp/".to_owned())
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            from_env.traces_url.as_str(),
            "http://collector:4318/otlp/v1/traces"
        );
    }
}

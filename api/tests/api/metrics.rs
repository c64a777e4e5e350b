//! `/metrics`: the classic Prometheus text by default (valid for
//! `promtool check metrics`), OpenMetrics on request.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use polld_api::{ApiOptions, ApiState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::common::{FakeMetrics, get, send};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PollLabels {
    watch: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchLabel {
    watch: String,
}

/// The daemon's instruments (daemon/src/metrics.rs), with some values.
fn daemon_like_openmetrics() -> String {
    let mut registry = Registry::default();
    let polls = Family::<PollLabels, Counter>::default();
    let ratio = Family::<WatchLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let bytes = Counter::<u64>::default();
    let duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
    let lag = Histogram::new(exponential_buckets(0.001, 2.0, 16));
    let watches = Gauge::<i64>::default();
    let changes = Counter::<u64>::default();
    registry.register("polld_polls", "Polls by result", polls.clone());
    registry.register(
        "polld_not_modified_ratio",
        "Share of 304 answers",
        ratio.clone(),
    );
    registry.register("polld_bytes_received", "Body bytes received", bytes.clone());
    registry.register(
        "polld_poll_duration_seconds",
        "Duration of a poll",
        duration.clone(),
    );
    registry.register("polld_schedule_lag_seconds", "Schedule lag", lag.clone());
    registry.register("polld_watches", "Watches being polled", watches.clone());
    registry.register("polld_changes", "New versions stored", changes.clone());
    for result in [
        "not_modified",
        "unchanged",
        "changed",
        "error",
        "rate_limited",
    ] {
        polls
            .get_or_create(&PollLabels {
                watch: "rust-releases".into(),
                result,
            })
            .inc();
    }
    ratio
        .get_or_create(&WatchLabel {
            watch: "rust-releases".into(),
        })
        .set(0.5);
    bytes.inc_by(1234);
    duration.observe(0.2);
    lag.observe(0.003);
    watches.set(1);
    changes.inc();
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
    out
}

fn router_with(text: String) -> (tempfile::TempDir, polld_api::Api) {
    let dir = tempfile::tempdir().unwrap();
    let store = polld_store::Store::open(&dir.path().join("db")).unwrap();
    let engine = crate::common::fixture().engine;
    let state = ApiState::new(
        store,
        engine,
        Arc::new(FakeMetrics(text)),
        ApiOptions::new(),
    );
    (dir, polld_api::router(state))
}

#[tokio::test]
async fn classic_text_by_default_openmetrics_on_request() {
    let om = daemon_like_openmetrics();
    assert!(om.ends_with("# EOF\n"));
    let (_dir, r) = router_with(om.clone());

    let res = get(&r, "/metrics").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(
        res.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = res.text();
    for line in [
        "# TYPE polld_polls_total counter",
        "polld_polls_total{watch=\"rust-releases\",result=\"not_modified\"} 1",
        "# TYPE polld_not_modified_ratio gauge",
        "polld_not_modified_ratio{watch=\"rust-releases\"} 0.5",
        "# TYPE polld_bytes_received_total counter",
        "polld_bytes_received_total 1234",
        "# TYPE polld_poll_duration_seconds histogram",
        "polld_poll_duration_seconds_count 1",
        "polld_schedule_lag_seconds_count 1",
        "polld_watches 1",
        "polld_changes_total 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(!text.contains("# EOF"));

    let req = Request::get("/metrics")
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .body(Body::empty())
        .unwrap();
    let res = send(&r, req).await;
    assert!(
        res.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert_eq!(res.text(), om);
}

/// `promtool check metrics` accepts the classic text. Skipped when promtool
/// is not installed, unless POLLD_REQUIRE_PROMTOOL is set (CI installs it
/// with api/ci/install-promtool.sh).
#[tokio::test]
async fn promtool_accepts_the_exposition() {
    let (_dir, r) = router_with(daemon_like_openmetrics());
    let text = get(&r, "/metrics").await.text();
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) => {
            assert!(
                std::env::var_os("POLLD_REQUIRE_PROMTOOL").is_none(),
                "promtool is required but cannot run: {err}"
            );
            eprintln!("promtool not installed: skipping (api/ci/install-promtool.sh installs it)");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool rejected:\n{report}\n--- input:\n{text}"
    );
    // Lint findings (e.g. a counter without _total) are printed even on success.
    assert!(
        report.trim().is_empty(),
        "promtool lint:\n{report}\n--- input:\n{text}"
    );
}

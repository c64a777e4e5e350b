//! The engine's instruments, with the names of DESIGN.md, in one
//! `prometheus-client` registry: the API renders it at `/metrics`, and the
//! OpenTelemetry exporter reads the same values.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use polld_store::CommitReport;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `polld_polls_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PollLabels {
    /// Watch id (empty when per-watch labels are off).
    pub watch: String,
    /// `not_modified`, `unchanged`, `changed`, `error` or `rate_limited`.
    pub result: &'static str,
}

/// `polld_not_modified_ratio` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabel {
    /// Watch id.
    pub watch: String,
}

/// Every instrument of polld.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    per_watch: bool,
    polls: Family<PollLabels, Counter>,
    not_modified_ratio: Family<WatchLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    bytes_received: Counter,
    poll_duration: Histogram,
    schedule_lag: Histogram,
    watches: Gauge,
    changes: Counter,
    store_errors: Counter,
    commit_duration: Histogram,
    commit_outcomes: Histogram,
    /// Polls by result, all watches together, for the systemd status line.
    totals: [AtomicU64; RESULTS.len()],
    /// Without per-watch labels, the `polls` series of each result, looked
    /// up in the family once rather than on every poll.
    series: [std::sync::OnceLock<Counter>; RESULTS.len()],
    watch_count: AtomicU64,
}

/// The `result` label values, in the order of [`Totals`].
pub const RESULTS: [&str; 5] = [
    "not_modified",
    "unchanged",
    "changed",
    "error",
    "rate_limited",
];

/// Polls by result since start, all watches together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Polls answered 304.
    pub not_modified: u64,
    /// Polls answered 200 with the same body.
    pub unchanged: u64,
    /// Polls that made a new version.
    pub changed: u64,
    /// Failed polls.
    pub errors: u64,
    /// Polls answered 429/503.
    pub rate_limited: u64,
}

impl Totals {
    /// All polls.
    pub fn polls(&self) -> u64 {
        self.not_modified + self.unchanged + self.changed + self.errors + self.rate_limited
    }

    /// not_modified / (not_modified + unchanged + changed).
    pub fn ratio_304(&self) -> Option<f64> {
        let answered = self.not_modified + self.unchanged + self.changed;
        (answered > 0).then(|| self.not_modified as f64 / answered as f64)
    }
}

impl Metrics {
    /// A registry with every instrument; `per_watch` adds the `watch` label.
    pub fn new(per_watch: bool) -> Arc<Self> {
        let mut registry = Registry::default();
        let polls = Family::<PollLabels, Counter>::default();
        let not_modified_ratio = Family::default();
        let bytes_received = Counter::default();
        let poll_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let schedule_lag = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let watches = Gauge::default();
        let changes = Counter::default();
        let store_errors = Counter::default();
        // 0.5 ms to 16 s: an fsync on a fast SSD to a stalled disk.
        let commit_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        // 1 to 16,384, the writer's largest batch.
        let commit_outcomes = Histogram::new(exponential_buckets(1.0, 4.0, 8));
        registry.register("polld_polls", "Polls by result", polls.clone());
        if per_watch {
            registry.register(
                "polld_not_modified_ratio",
                "Share of 304 answers among answered polls (not_modified / (not_modified + unchanged + changed))",
                not_modified_ratio.clone(),
            );
        }
        registry.register(
            "polld_bytes_received",
            "Body bytes received, after decompression",
            bytes_received.clone(),
        );
        registry.register(
            "polld_poll_duration_seconds",
            "Duration of a poll, redirects and pages included",
            poll_duration.clone(),
        );
        registry.register(
            "polld_schedule_lag_seconds",
            "Delay between a poll's due time and its start",
            schedule_lag.clone(),
        );
        registry.register(
            "polld_watches",
            "Watches in the running watch list (those stopped by until or fail_if included)",
            watches.clone(),
        );
        registry.register("polld_changes", "New versions stored", changes.clone());
        registry.register(
            "polld_store_errors",
            "Failed store commits (each try on a full disk) and outcomes the store refused",
            store_errors.clone(),
        );
        registry.register(
            "polld_store_commit_duration_seconds",
            "Duration of a store commit, fsync included",
            commit_duration.clone(),
        );
        registry.register(
            "polld_store_commit_outcomes",
            "Poll outcomes per store commit",
            commit_outcomes.clone(),
        );
        Arc::new(Metrics {
            registry,
            per_watch,
            polls,
            not_modified_ratio,
            bytes_received,
            poll_duration,
            schedule_lag,
            watches,
            changes,
            store_errors,
            commit_duration,
            commit_outcomes,
            totals: Default::default(),
            series: Default::default(),
            watch_count: AtomicU64::new(0),
        })
    }

    /// Records one finished poll.
    pub fn poll(&self, watch: &str, result: &'static str, duration: Duration, bytes: u64) {
        let known = RESULTS.iter().position(|r| *r == result);
        match known {
            Some(i) if !self.per_watch => {
                self.series[i]
                    .get_or_init(|| {
                        let labels = PollLabels {
                            watch: String::new(),
                            result,
                        };
                        self.polls.get_or_create(&labels).clone()
                    })
                    .inc();
            }
            _ => {
                let watch = if self.per_watch {
                    watch.to_owned()
                } else {
                    String::new()
                };
                self.polls
                    .get_or_create(&PollLabels { watch, result })
                    .inc();
            }
        }
        if let Some(i) = known {
            self.totals[i].fetch_add(1, Ordering::Relaxed);
        }
        self.poll_duration.observe(duration.as_secs_f64());
        self.bytes_received.inc_by(bytes);
    }

    /// A new version was committed (`polld_changes_total` counts versions
    /// stored, not polls that saw a change: a commit can fail).
    pub fn version_stored(&self) {
        self.changes.inc();
    }

    /// Sets a watch's 304 ratio (only with per-watch labels).
    pub fn ratio(&self, watch: &str, ratio: Option<f64>) {
        if !self.per_watch {
            return;
        }
        let label = WatchLabel {
            watch: watch.to_owned(),
        };
        match ratio {
            Some(ratio) => {
                self.not_modified_ratio.get_or_create(&label).set(ratio);
            }
            None => {
                self.not_modified_ratio.remove(&label);
            }
        }
    }

    /// Records how late a poll started.
    pub fn lag(&self, lag: Duration) {
        self.schedule_lag.observe(lag.as_secs_f64());
    }

    /// Sets the number of watches in the running list.
    pub fn set_watches(&self, n: usize) {
        self.watches.set(n as i64);
        self.watch_count.store(n as u64, Ordering::Relaxed);
    }

    /// Polls by result since start.
    pub fn totals(&self) -> Totals {
        let get = |i: usize| self.totals[i].load(Ordering::Relaxed);
        Totals {
            not_modified: get(0),
            unchanged: get(1),
            changed: get(2),
            errors: get(3),
            rate_limited: get(4),
        }
    }

    /// Watches in the running list.
    pub fn watch_count(&self) -> u64 {
        self.watch_count.load(Ordering::Relaxed)
    }

    /// Counts an outcome the store refused.
    pub fn store_error(&self) {
        self.store_errors.inc();
    }

    /// Records a commit of the store's writer (or a failed try).
    pub fn commit(&self, report: CommitReport) {
        if report.succeeded {
            self.commit_duration.observe(report.duration.as_secs_f64());
            self.commit_outcomes.observe(report.outcomes as f64);
        } else {
            self.store_errors.inc();
        }
    }

    /// Forgets a removed watch's labelled series.
    pub fn forget(&self, watch: &str) {
        if !self.per_watch {
            return;
        }
        for result in RESULTS {
            self.polls.remove(&PollLabels {
                watch: watch.to_owned(),
                result,
            });
        }
        self.not_modified_ratio.remove(&WatchLabel {
            watch: watch.to_owned(),
        });
    }

    /// The registry in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_names_of_the_design() {
        let metrics = Metrics::new(true);
        metrics.poll("a", "not_modified", Duration::from_millis(20), 0);
        metrics.poll("a", "changed", Duration::from_millis(20), 100);
        metrics.version_stored();
        metrics.ratio("a", Some(0.5));
        metrics.lag(Duration::from_millis(3));
        metrics.set_watches(1);
        metrics.commit(CommitReport {
            outcomes: 3,
            duration: Duration::from_millis(2),
            succeeded: true,
        });
        metrics.commit(CommitReport {
            outcomes: 3,
            duration: Duration::from_millis(2),
            succeeded: false,
        });
        let totals = metrics.totals();
        assert_eq!(
            (totals.not_modified, totals.changed, totals.polls()),
            (1, 1, 2)
        );
        assert_eq!(totals.ratio_304(), Some(0.5));
        let text = metrics.render();
        for name in [
            "polld_polls_total{watch=\"a\",result=\"not_modified\"} 1",
            "polld_not_modified_ratio{watch=\"a\"} 0.5",
            "polld_bytes_received_total 100",
            "polld_poll_duration_seconds_bucket",
            "polld_schedule_lag_seconds_count 1",
            "polld_watches 1",
            "polld_changes_total 1",
            "polld_store_errors_total 1",
            "polld_store_commit_duration_seconds_count 1",
            "polld_store_commit_duration_seconds_bucket{le=\"0.004\"} 1",
            "polld_store_commit_outcomes_sum 3.0",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
    }
}

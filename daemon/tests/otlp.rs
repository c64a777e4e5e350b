//! OpenTelemetry export end to end: `polld run` with `[telemetry]
//! otlp_endpoint` pointing at an in-process OTLP/HTTP receiver (wiremock)
//! that decodes the protobuf payloads and checks the instrument names and
//! the poll spans.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_poll_spans_reach_an_otlp_receiver() {
    let collector = MockServer::start().await;
    for signal in ["/v1/metrics", "/v1/traces"] {
        Mock::given(method("POST"))
            .and(path(signal))
            .and(header("content-type", "application/x-protobuf"))
            .respond_with(ResponseTemplate::new(200))
            .mount(&collector)
            .await;
    }
    let origin = MockServer::start().await;
    Mock::given(path("/feed"))
        .respond_with(ResponseTemplate::new(200).set_body_string("hello"))
        .mount(&origin)
        .await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("watchlist.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nlisten = \"127.0.0.1:{}\"\nstate_dir = \"{}\"\n\n[telemetry]\notlp_endpoint = \"{}\"\n\n[[watch]]\nid = \"feed\"\nurl = \"{}/feed\"\ninterval = \"200ms\"\nmin_interval = \"100ms\"\njitter = 0.0\n",
            free_port(),
            dir.path().join("state").display(),
            collector.uri(),
            origin.uri()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_polld"))
        .args(["run", "--config"])
        .arg(&config)
        .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut metric_names, mut span_watches) = (Vec::<String>::new(), Vec::<String>::new());
    while Instant::now() < deadline {
        for request in collector.received_requests().await.unwrap_or_default() {
            if request.url.path() == "/v1/metrics" {
                let decoded = ExportMetricsServiceRequest::decode(request.body.as_slice())
                    .expect("valid OTLP metrics protobuf");
                for rm in decoded.resource_metrics {
                    for sm in rm.scope_metrics {
                        metric_names.extend(sm.metrics.into_iter().map(|m| m.name));
                    }
                }
            } else {
                let decoded = ExportTraceServiceRequest::decode(request.body.as_slice())
                    .expect("valid OTLP traces protobuf");
                for rs in decoded.resource_spans {
                    for ss in rs.scope_spans {
                        for span in ss.spans {
                            assert_eq!(span.name, "poll");
                            assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
                            let watch = span.attributes.iter().find(|a| a.key == "polld.watch");
                            span_watches.push(format!("{:?}", watch.and_then(|a| a.value.clone())));
                        }
                    }
                }
            }
        }
        if metric_names.iter().any(|n| n == "polld_polls_total") && !span_watches.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    nix_term(&mut child);
    for name in [
        "polld_polls_total",
        "polld_bytes_received_total",
        "polld_changes_total",
        "polld_watches",
        "polld_poll_duration_seconds",
        "polld_schedule_lag_seconds",
        "polld_not_modified_ratio",
    ] {
        assert!(
            metric_names.iter().any(|n| n == name),
            "{name} not exported; got {metric_names:?}"
        );
    }
    assert!(
        span_watches.iter().any(|w| w.contains("feed")),
        "a span per poll with its watch: {span_watches:?}"
    );
}

fn nix_term(child: &mut std::process::Child) {
    // SIGTERM via the kill command keeps this test free of unsafe code and extra crates.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

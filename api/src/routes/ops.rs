//! The operational endpoints: `/healthz`, `/readyz`, `/metrics` and
//! `/v1/openapi.json`, and the conversion of the daemon's OpenMetrics text
//! to the classic Prometheus text format.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::json::{ErrorJson, HealthJson};
use crate::state::ApiState;

/// Alive: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = HealthJson)))]
pub(crate) async fn healthz() -> Json<HealthJson> {
    Json(HealthJson { status: "ok" })
}

/// Ready: the store is open and healthy and the engine runs.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = HealthJson),
        (status = 503, description = "Not ready, with the reason", body = ErrorJson),
    ))]
pub(crate) async fn readyz(State(state): State<ApiState>) -> Result<Json<HealthJson>, ApiError> {
    let inner = &state.inner;
    if inner.closing.is_cancelled() {
        return Err(ApiError::Unavailable("shutting down".into()));
    }
    let store = inner.store.clone();
    tokio::task::spawn_blocking(move || store.health())
        .await
        .map_err(|err| ApiError::Internal(format!("health task failed: {err}")))?
        .map_err(|why| ApiError::Unavailable(format!("store not healthy: {why}")))?;
    if !inner.engine.is_running() {
        return Err(ApiError::Unavailable(
            "the poll engine is not running".into(),
        ));
    }
    Ok(Json(HealthJson { status: "ok" }))
}

/// OpenMetrics, for clients that ask for it.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format (0.0.4), the default.
const PROM_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The daemon's metrics: OpenMetrics when `Accept` asks for
/// `application/openmetrics-text`, else the classic Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics in the Prometheus text format", content_type = "text/plain", body = String)))]
pub(crate) async fn metrics(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let text = state.inner.metrics.render();
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if wants_openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, PROM_TEXT)],
            to_prometheus_text(&text),
        )
            .into_response()
    }
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3 document", content_type = "application/json", body = Object)))]
pub(crate) async fn openapi_json(State(state): State<ApiState>) -> Response {
    let doc = state
        .openapi
        .as_ref()
        .map_or("{}", |d| d.0.as_str())
        .to_owned();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        doc,
    )
        .into_response()
}

/// Converts the OpenMetrics text of prometheus-client to the classic
/// Prometheus text format, which `promtool check metrics` and older scrapers
/// read:
/// - a counter family `x` is announced as `x_total` (the name its samples
///   carry), its `_created` samples dropped;
/// - `# UNIT` and `# EOF` lines, which the classic format lacks, are dropped;
/// - exemplars (` # {...} v` after a value) are cut;
/// - `unknown` becomes `untyped`, `info`/`stateset` become `gauge`, and
///   `gaugehistogram` becomes `histogram`.
#[must_use]
pub(crate) fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut counters: Vec<String> = Vec::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, tail) = (parts.next(), parts.next(), parts.next());
            match (kind, name) {
                (Some("EOF" | "UNIT"), _) | (Some(_), None) => continue,
                (Some("TYPE"), Some(name)) => {
                    let ty = tail.unwrap_or("untyped").trim();
                    let (name, ty) = match ty {
                        "counter" => {
                            counters.push(name.to_owned());
                            (total_name(name), "counter")
                        }
                        "unknown" => (name.to_owned(), "untyped"),
                        "info" | "stateset" => (name.to_owned(), "gauge"),
                        "gaugehistogram" => (name.to_owned(), "histogram"),
                        other => (name.to_owned(), other),
                    };
                    out.push_str(&format!("# TYPE {name} {ty}\n"));
                }
                (Some("HELP"), Some(name)) => {
                    let name = if counters.iter().any(|c| c == name)
                        || is_counter_ahead(openmetrics, name)
                    {
                        total_name(name)
                    } else {
                        name.to_owned()
                    };
                    out.push_str(&format!("# HELP {name} {}\n", tail.unwrap_or("")));
                }
                _ => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let sample = cut_exemplar(line);
        let name = sample.split(['{', ' ']).next().unwrap_or("");
        if let Some(base) = name.strip_suffix("_created")
            && counters.iter().any(|c| c == base)
        {
            continue;
        }
        out.push_str(sample);
        out.push('\n');
    }
    out
}

fn total_name(name: &str) -> String {
    if name.ends_with("_total") {
        name.to_owned()
    } else {
        format!("{name}_total")
    }
}

/// prometheus-client writes `# HELP` before `# TYPE`: whether the `TYPE`
/// line of `name` says counter.
fn is_counter_ahead(text: &str, name: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix("# TYPE ")
            .is_some_and(|r| r == format!("{name} counter"))
    })
}

/// The sample line without an exemplar: the first ` # ` outside the label
/// set's quoted values starts it.
fn cut_exemplar(line: &str) -> &str {
    let bytes = line.as_bytes();
    let (mut in_quotes, mut escaped) = (false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if in_quotes {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_quotes = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_quotes = true,
            b'#' if i > 0 && bytes[i - 1] == b' ' => return line[..i - 1].trim_end(),
            _ => {}
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_to_classic() {
        let om = "# HELP polld_polls Polls by result.\n\
                  # TYPE polld_polls counter\n\
                  polld_polls_total{watch=\"a # b\",result=\"changed\"} 3\n\
                  polld_polls_created{watch=\"a\"} 1.0\n\
                  # HELP polld_poll_duration_seconds Poll time.\n\
                  # TYPE polld_poll_duration_seconds histogram\n\
                  # UNIT polld_poll_duration_seconds seconds\n\
                  polld_poll_duration_seconds_bucket{le=\"+Inf\"} 1 # {trace_id=\"x\"} 0.5\n\
                  # TYPE polld_up unknown\n\
                  polld_up 1\n\
                  # EOF\n";
        let text = to_prometheus_text(om);
        assert_eq!(
            text,
            "# HELP polld_polls_total Polls by result.\n\
             # TYPE polld_polls_total counter\n\
             polld_polls_total{watch=\"a # b\",result=\"changed\"} 3\n\
             # HELP polld_poll_duration_seconds Poll time.\n\
             # TYPE polld_poll_duration_seconds histogram\n\
             polld_poll_duration_seconds_bucket{le=\"+Inf\"} 1\n\
             # TYPE polld_up untyped\n\
             polld_up 1\n"
        );
    }
}

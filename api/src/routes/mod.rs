//! The handlers, one module per resource, and [`router`], which assembles
//! them with the guards of `crate::guard`.

pub(crate) mod changes;
pub(crate) mod ops;
pub(crate) mod versions;
pub(crate) mod watches;

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;

use crate::error::ApiError;
use crate::guard::{self, Api};
use crate::openapi::routes_and_doc;
use crate::state::ApiState;

/// The OpenAPI document, rendered once when the router is built.
#[derive(Clone, Debug)]
pub(crate) struct OpenApiJson(pub(crate) Arc<String>);

/// The whole API with its guards. Serve it with [`crate::serve`], or drive
/// it in tests with `tower::ServiceExt::oneshot`.
pub fn router(state: ApiState) -> Api {
    let (routes, doc) = routes_and_doc();
    let doc = doc
        .to_pretty_json()
        .unwrap_or_else(|err| format!("{{\"error\": \"cannot render the document: {err}\"}}"));
    let routes = routes
        .fallback(guard::not_found)
        .method_not_allowed_fallback(guard::method_not_allowed)
        .with_state(state.clone().with_openapi(OpenApiJson(Arc::new(doc))));
    Api::new(state, routes)
}

/// Maps a malformed query string to a 400 with axum's explanation.
pub(crate) fn query<T>(q: Result<axum::extract::Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|axum::extract::Query(q)| q)
        .map_err(|err| ApiError::BadRequest(err.body_text()))
}

/// Parses a `limit` parameter: `default` when absent, else `1..=max`.
pub(crate) fn parse_limit(
    raw: Option<&str>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    let Some(raw) = raw else { return Ok(default) };
    match raw.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "limit must be an integer from 1 to {max}, got {raw:?}"
        ))),
    }
}

//! `/v1/watches`, `/v1/watches/{id}` and `POST /v1/watches/{id}/poll`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{parse_limit, query};
use crate::error::ApiError;
use crate::feed::blocking;
use crate::json::{ErrorJson, PollQueued, WatchJson, WatchList};
use crate::state::ApiState;

/// Default page size of the watch list.
const DEFAULT_LIMIT: usize = 100;
/// Largest page: 100,000 watches never come back in one response.
const MAX_LIMIT: usize = 1000;

/// Paging of the watch list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Watches per page, 1 to 1000 (default 100).
    limit: Option<String>,
    /// The `next` of the previous page: the list continues after this id.
    after: Option<String>,
}

/// Every watch with its state, a page at a time, ordered by id.
#[utoipa::path(get, path = "/v1/watches", tag = "watches", params(ListQuery),
    responses(
        (status = 200, description = "A page of watches", body = WatchList),
        (status = 400, description = "Bad limit", body = ErrorJson),
    ))]
pub(crate) async fn list(
    State(state): State<ApiState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<WatchList>, ApiError> {
    let q = query(q)?;
    let limit = parse_limit(q.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let store = state.inner.store.clone();
    let after = q.after;
    // One more than asked tells whether another page exists.
    let mut watches = blocking(move || store.watches(after.as_deref(), limit + 1)).await?;
    let next = if watches.len() > limit {
        watches.truncate(limit);
        watches.last().map(|w| w.id.clone())
    } else {
        None
    };
    Ok(Json(WatchList {
        watches: watches.iter().map(WatchJson::from).collect(),
        next,
    }))
}

/// One watch with its state.
#[utoipa::path(get, path = "/v1/watches/{id}", tag = "watches",
    params(("id" = String, Path, description = "Watch id")),
    responses(
        (status = 200, description = "The watch", body = WatchJson),
        (status = 404, description = "No such watch", body = ErrorJson),
    ))]
pub(crate) async fn get_one(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<WatchJson>, ApiError> {
    let watch = read_watch(&state, &id).await?;
    Ok(Json(WatchJson::from(&watch)))
}

/// Asks the engine to poll the watch now.
#[utoipa::path(post, path = "/v1/watches/{id}/poll", tag = "watches",
    params(("id" = String, Path, description = "Watch id")),
    responses(
        (status = 202, description = "The poll was queued", body = PollQueued),
        (status = 404, description = "No such watch", body = ErrorJson),
        (status = 409, description = "The watch is not being polled (removed or done)", body = ErrorJson),
        (status = 503, description = "The engine is not running, or the store is closed", body = ErrorJson),
    ))]
pub(crate) async fn poll(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let engine = &state.inner.engine;
    if !engine.is_running() {
        return Err(ApiError::Unavailable(
            "the poll engine is not running".into(),
        ));
    }
    if engine.poll_now(&id).await {
        let body = PollQueued {
            watch: id,
            queued: true,
        };
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    // The engine does not poll it: say why.
    let watch = read_watch(&state, &id).await?;
    Err(ApiError::Conflict(format!(
        "watch {id:?} is {}: it is not being polled",
        watch.status.as_str()
    )))
}

/// The stored state of watch `id`, or 404.
pub(crate) async fn read_watch(
    state: &ApiState,
    id: &str,
) -> Result<polld_store::WatchState, ApiError> {
    let store = state.inner.store.clone();
    let key = id.to_owned();
    blocking(move || store.watch(&key))
        .await?
        .ok_or_else(|| no_watch(id))
}

pub(crate) fn no_watch(id: &str) -> ApiError {
    ApiError::NotFound(format!("no watch {id:?}"))
}

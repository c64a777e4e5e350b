//! [`ApiError`]: every failure of a handler, with its status code. This is
//! the one place where errors become responses, so every 4xx/5xx body has the
//! same `{"error": "..."}` shape and internal details never reach a client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use polld_store::StoreError;
use serde_json::json;

use crate::json::GoneJson;

/// What went wrong while answering a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// A malformed parameter or cursor (400).
    #[error("{0}")]
    BadRequest(String),
    /// No or a wrong bearer token (401).
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// The `Host` header names neither the listen address, `localhost` nor a
    /// configured name (403): the DNS-rebinding defence.
    #[error("host {0:?} is not allowed")]
    ForbiddenHost(String),
    /// The watch, version or route does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The method is not served on this path (405).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The representation asked for in `Accept` cannot be made (406).
    #[error("{0}")]
    NotAcceptable(String),
    /// The request conflicts with the watch's state (409), e.g. polling a
    /// removed watch.
    #[error("{0}")]
    Conflict(String),
    /// A changes cursor older than the retained history (410). `resync` is
    /// the cursor to start again from once the client has re-read the state.
    #[error("{message}")]
    Gone {
        /// What happened and how to resync.
        message: String,
        /// Where a client that re-read the state may resume, as `after`.
        resync: String,
    },
    /// Too many long polls or streams are open (429).
    #[error("too many concurrent waiters; retry in {retry_after_s} s")]
    TooManyWaiters {
        /// Seconds for `Retry-After`.
        retry_after_s: u64,
    },
    /// The store or the engine is not ready (503).
    #[error("{0}")]
    Unavailable(String),
    /// The store failed (500); the detail is logged, not sent.
    #[error("store error")]
    Store(#[from] StoreError),
    /// Anything else that is our fault (500); the detail is logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The status code this error is answered with.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::ForbiddenHost(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone { .. } => StatusCode::GONE,
            ApiError::TooManyWaiters { .. } => StatusCode::TOO_MANY_REQUESTS,
            // Closed at shutdown: a retry later (after restart) will work.
            ApiError::Unavailable(_) | ApiError::Store(StoreError::Closed) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Store(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A JSON error response with `message`; also used by the middleware that
/// turns axum's own plain-text rejections into JSON.
pub(crate) fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Store(StoreError::Closed) => {}
            // Internal errors are logged with their chain and answered with a
            // generic text: the chain may name paths or data of other watches.
            ApiError::Store(err) => {
                tracing::error!(error = %DisplayChain(err), "store error while serving the API");
            }
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error while serving the API");
            }
            _ => {}
        }
        match self {
            ApiError::Gone { message, resync } => (
                status,
                Json(GoneJson {
                    error: message,
                    resync_after: resync,
                }),
            )
                .into_response(),
            ApiError::Unauthorized => {
                let mut res = json_error(status, &self.to_string());
                res.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"polld\""),
                );
                res
            }
            ApiError::TooManyWaiters { retry_after_s } => {
                let mut res = json_error(status, &self.to_string());
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
                res
            }
            ApiError::Store(StoreError::Closed) => json_error(status, "the store is closed"),
            ApiError::Store(_) => json_error(status, "internal error: the store failed"),
            ApiError::Internal(_) => json_error(status, "internal error"),
            other => json_error(status, &other.to_string()),
        }
    }
}

/// Prints an error with its sources, `a: b: c`, for the log.
struct DisplayChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        // Bounded: error chains are finite, but a cyclic `source` would be a
        // bug elsewhere, and a log line must not hang the handler.
        for _ in 0..16 {
            let Some(err) = source else { break };
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(err: ApiError) -> (StatusCode, serde_json::Value) {
        let res = err.into_response();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn internal_details_stay_in_the_log() {
        let (status, json) = body(ApiError::Internal("secret path /var/lib/x".into())).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(json, json!({"error": "internal error"}));
        let inconsistent = StoreError::Inconsistent("version 3 of watch-b has no body".into());
        let (status, json) = body(ApiError::Store(inconsistent)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(json, json!({"error": "internal error: the store failed"}));
        let (status, _) = body(ApiError::Store(StoreError::Closed)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
}

//! `polld-api` owns the local HTTP API of polld: an axum router over the
//! store (watches, versions, diffs, the long-poll changes feed, metrics,
//! health, OpenAPI) that talks to the engine only through a small handle.

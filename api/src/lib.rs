//! `polld-api` owns the local HTTP API of polld: an axum router over the
//! store (watches, versions, diffs, the long-poll changes feed, metrics,
//! health, OpenAPI) that talks to the engine only through a small handle.
//!
//! # Layout
//! - [`state`]: what the router is built from: the store, the [`Engine`] and
//!   [`MetricsSource`] handles the daemon implements, and [`ApiOptions`].
//! - `error`: [`ApiError`], the one place where failures become a status code
//!   and a `{"error": "..."}` body.
//! - `json`: the JSON shapes of DESIGN.md and their conversion from store records.
//! - `feed`: the in-memory tail of the change log that long polls and SSE
//!   streams are answered from, so that a commit wakes thousands of waiters
//!   without thousands of store reads.
//! - `routes`: the handlers, one module per resource.
//! - `guard`: the DNS-rebinding `Host` check, the bearer token, and the
//!   middleware that makes every error body JSON.
//! - `openapi`: the OpenAPI document, generated from the handlers' annotations.
//! - [`server`]: binding TCP or a Unix socket and serving with a header-read
//!   timeout, a connection limit and a bounded drain.
//!
//! # Use from the daemon
//! ```ignore
//! let state = ApiState::new(store, engine, metrics, ApiOptions::new(listen.clone()));
//! let listener = polld_api::bind(&listen).await?;          // "bound" before READY=1
//! let closer = state.clone();
//! polld_api::serve(listener, polld_api::router(state), ServeLimits::default(),
//!     async move { shutdown.await; closer.close() }).await?;
//! ```

#![deny(missing_docs)]
#![warn(unreachable_pub)]

mod error;
mod feed;
mod guard;
mod json;
mod openapi;
mod routes;
pub mod server;
pub mod state;

pub use error::ApiError;
pub use json::ratio_304;
pub use openapi::openapi;
pub use routes::router;
pub use server::{Listener, ServeError, ServeLimits, bind, serve};
pub use state::{ApiOptions, ApiState, ApiToken, BoxFuture, Engine, MetricsSource};

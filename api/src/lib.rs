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
//! - `guard`: [`Api`], the router inside the DNS-rebinding `Host` check,
//!   the bearer token, and the rewrite that makes every error body JSON.
//! - `openapi`: the OpenAPI document, generated from the handlers' annotations.
//! - [`server`]: binding TCP or a Unix socket and serving with a header-read
//!   timeout, a connection limit and a bounded drain.
//!
//! # Use from the daemon
//! ```ignore
//! let token = token_text.as_deref().map(ApiToken::new).map(|t| t.context("empty token file")).transpose()?;
//! let options = ApiOptions::from_config(&config.daemon, token);
//! let state = ApiState::new(store, engine, metrics, options);   // inside the runtime
//! let listener = polld_api::bind(&config.daemon.listen).await?; // "bound" before READY=1
//! let closer = state.clone();
//! listener
//!     .serve(polld_api::router(state), ServeLimits::default(), async move {
//!         shutdown.await;
//!         closer.close(); // held long polls answer now, SSE streams end
//!     })
//!     .await;
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
pub use guard::{Api, ApiFuture};
pub use json::ratio_304;
pub use openapi::openapi;
pub use routes::router;
pub use server::{Listener, ServeError, ServeLimits, activated, bind, serve};
pub use state::{ApiOptions, ApiState, ApiToken, BoxFuture, Engine, MetricsSource};

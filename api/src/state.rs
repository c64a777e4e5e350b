//! What the router is built from: the store, the handles the daemon
//! implements ([`Engine`], [`MetricsSource`]) and the [`ApiOptions`].
//!
//! The engine lives in the daemon crate, which this crate must not depend on
//! (dependencies point one way: daemon → api → store), so the API sees it
//! only through the [`Engine`] trait.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use polld_config::DaemonConfig;
use polld_store::Store;
use tokio_util::sync::CancellationToken;

use crate::feed::Feed;

/// A boxed, sendable future, so that [`Engine`] stays object-safe.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The API's handle on the poll engine.
pub trait Engine: Send + Sync + 'static {
    /// Asks the engine to poll watch `id` now. Resolves to `true` once the
    /// poll is queued, `false` when the engine polls no watch of that id
    /// (unknown, removed or done).
    fn poll_now(&self, id: &str) -> BoxFuture<bool>;
    /// Whether the engine runs (for `/readyz`).
    fn is_running(&self) -> bool;
}

/// The daemon's metrics registry, rendered on demand for `/metrics`.
pub trait MetricsSource: Send + Sync + 'static {
    /// The registry in the OpenMetrics text format, as
    /// `prometheus_client::encoding::text::encode` writes it (ending in
    /// `# EOF`). The API converts it for clients that ask for the classic
    /// Prometheus text format.
    fn render(&self) -> String;
}

/// The bearer token of the API. Its `Debug` prints no secret, so that the
/// token never reaches a log through `{:?}` of the options.
#[derive(Clone)]
pub struct ApiToken(String);

impl ApiToken {
    /// Wraps a token, trimming the whitespace a token file usually ends with.
    /// `None` when nothing is left: an empty token would let `Bearer ` with
    /// nothing after it in, so the daemon must refuse such a file.
    #[must_use]
    pub fn new(token: &str) -> Option<Self> {
        let token = token.trim();
        (!token.is_empty()).then(|| ApiToken(token.to_owned()))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// How the API behaves. Build with [`ApiOptions::new`] and set fields.
/// Where it listens is not among them: that is the [`crate::Listener`]'s.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ApiOptions {
    /// When set, every `/v1` request needs `Authorization: Bearer TOKEN`.
    pub token: Option<ApiToken>,
    /// Host names accepted in `Host` besides IP literals and `localhost`
    /// (the config's `allowed_hosts`).
    pub allowed_hosts: Vec<String>,
    /// Long polls and SSE streams held at once; past it, 429 + `Retry-After`.
    pub max_waiters: usize,
    /// Cap on a long poll's `wait`.
    pub max_wait: Duration,
}

/// Default cap on concurrent long polls and streams.
pub const DEFAULT_MAX_WAITERS: usize = 512;
/// Default cap on `wait`: below the 60 s idle timeout of common proxies.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(55);

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            token: None,
            allowed_hosts: Vec::new(),
            max_waiters: DEFAULT_MAX_WAITERS,
            max_wait: DEFAULT_MAX_WAIT,
        }
    }
}

impl ApiOptions {
    /// Options with defaults: no token, no extra host names.
    #[must_use]
    pub fn new() -> Self {
        ApiOptions::default()
    }

    /// Options from the config's `[daemon]` table (`allowed_hosts`) and the
    /// token read from `api_token_file`.
    #[must_use]
    pub fn from_config(daemon: &DaemonConfig, token: Option<ApiToken>) -> Self {
        let mut options = ApiOptions::new();
        options.allowed_hosts.clone_from(&daemon.allowed_hosts);
        options.token = token;
        options
    }
}

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub(crate) inner: Arc<Inner>,
    /// Set by [`crate::router`], which renders the document once.
    pub(crate) openapi: Option<crate::routes::OpenApiJson>,
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) metrics: Arc<dyn MetricsSource>,
    pub(crate) options: ApiOptions,
    pub(crate) feed: Feed,
    /// Long polls and SSE streams being held (see [`WaiterSlot`]).
    pub(crate) waiters: AtomicUsize,
    /// Cancelled by [`ApiState::close`]: waiters answer at once and streams end.
    pub(crate) closing: CancellationToken,
}

impl fmt::Debug for ApiState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiState")
            .field("options", &self.inner.options)
            .field("waiters", &self.waiters())
            .finish_non_exhaustive()
    }
}

impl ApiState {
    /// Builds the state and starts the task that follows the store's commits
    /// for the changes feed. Must be called inside a Tokio runtime; the task
    /// ends when the last clone of the state is dropped or the store closes.
    pub fn new(
        store: Store,
        engine: Arc<dyn Engine>,
        metrics: Arc<dyn MetricsSource>,
        options: ApiOptions,
    ) -> Self {
        let closing = CancellationToken::new();
        let feed = Feed::start(store.clone(), closing.clone());
        ApiState {
            inner: Arc::new(Inner {
                store,
                engine,
                metrics,
                options,
                feed,
                waiters: AtomicUsize::new(0),
                closing,
            }),
            openapi: None,
        }
    }

    pub(crate) fn with_openapi(mut self, doc: crate::routes::OpenApiJson) -> Self {
        self.openapi = Some(doc);
        self
    }

    /// Begins shutdown: held long polls answer now (with no changes and
    /// their cursor) and SSE streams end, so that the server can drain
    /// quickly. Call it when the shutdown signal arrives.
    pub fn close(&self) {
        self.inner.closing.cancel();
    }

    /// Long polls and streams being held right now.
    #[must_use]
    pub fn waiters(&self) -> usize {
        self.inner.waiters.load(Ordering::Relaxed)
    }
}

/// One of the `max_waiters` slots, held by a long poll or SSE stream while
/// it waits; given back on drop. A counter rather than a semaphore: nothing
/// ever waits for a slot, and a semaphore's release takes a lock that
/// thousands of waiters answered at once would queue on. It borrows the
/// counter rather than holding a clone of the state: each clone is one
/// more update of the state's reference count, a cache line that 10,000
/// waiters answered at once on two cores would pass back and forth.
pub(crate) struct WaiterSlot<'a>(&'a AtomicUsize);

impl<'a> WaiterSlot<'a> {
    /// A slot, or `None` when all are taken.
    pub(crate) fn take(state: &'a ApiState) -> Option<WaiterSlot<'a>> {
        let max = state.inner.options.max_waiters;
        let waiters = &state.inner.waiters;
        waiters
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| WaiterSlot(waiters))
    }

    /// The same slot, held through a clone of the state rather than a
    /// borrow: for an SSE stream, which outlives the handler.
    pub(crate) fn into_owned(self, state: &ApiState) -> OwnedWaiterSlot {
        debug_assert!(std::ptr::eq(self.0, &state.inner.waiters));
        std::mem::forget(self);
        OwnedWaiterSlot(state.clone())
    }
}

impl Drop for WaiterSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A [`WaiterSlot`] that owns a clone of the state; given back on drop.
pub(crate) struct OwnedWaiterSlot(ApiState);

impl Drop for OwnedWaiterSlot {
    fn drop(&mut self) {
        self.0.inner.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

//! The validated domain types of a watch list. Only these leave the crate.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use url::Url;

use crate::condition::{Condition, JsonPointer};

/// Where `polld` looks for its watch list when neither `--config` nor
/// `$POLLD_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/polld/watchlist.toml";

/// The API's default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8377";

/// A whole, valid watch list.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// `[daemon]`.
    pub daemon: DaemonConfig,
    /// `[telemetry]`.
    pub telemetry: TelemetryConfig,
    /// `[defaults]` merged over the built-in defaults.
    pub defaults: Policy,
    /// `[[watch]]`, in file order; ids are unique.
    pub watches: Vec<Arc<Watch>>,
}

/// `[daemon]`: how the process runs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Where the API listens.
    pub listen: Listen,
    /// Where the database lives.
    pub state_dir: PathBuf,
    /// Polls in flight, all hosts together.
    pub concurrency: usize,
    /// Polls in flight to one host.
    pub per_host: usize,
    /// A file holding the API's bearer token, if the API needs one.
    pub api_token_file: Option<PathBuf>,
    /// The `User-Agent` of every request.
    pub user_agent: String,
    /// Whether metrics carry a `watch` label (switch off for huge lists).
    pub metrics_per_watch: bool,
    /// Host names the API answers to besides the listen address and `localhost`.
    pub allowed_hosts: Vec<String>,
    /// Change-log entries kept; older ones are pruned (the changes feed
    /// answers 410 below them).
    pub keep_changes: u64,
}

/// The API's listen address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `IP:PORT`.
    Tcp(SocketAddr),
    /// `unix:PATH`.
    Unix(PathBuf),
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(addr) => write!(f, "{addr}"),
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// `[telemetry]`.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP endpoint for metrics and traces.
    pub otlp_endpoint: Option<Url>,
}

/// How one watch is polled: the keys of `[defaults]`, each of which a watch
/// may override.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Base interval between polls.
    pub interval: Duration,
    /// No poll comes sooner than this after the previous one.
    pub min_interval: Duration,
    /// Backoff never stretches the interval beyond this.
    pub max_interval: Duration,
    /// Interval multiplier after an unchanged poll (>= 1).
    pub backoff: f64,
    /// Relative jitter on every delay, in [0, 1).
    pub jitter: f64,
    /// Deadline for a whole poll.
    pub timeout: Duration,
    /// Deadline for establishing a connection.
    pub connect_timeout: Duration,
    /// Largest body accepted, after decompression.
    pub max_body: u64,
    /// Cap on any delay a server asks for.
    pub max_retry_after: Duration,
    /// Versions kept per watch.
    pub keep_versions: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            interval: Duration::from_secs(5 * 60),
            min_interval: Duration::from_secs(30),
            max_interval: Duration::from_secs(6 * 3600),
            backoff: 1.5,
            jitter: 0.1,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_body: 8 << 20,
            max_retry_after: Duration::from_secs(6 * 3600),
            keep_versions: 100,
        }
    }
}

/// A watch id: `[a-z0-9_-]+`, at most 128 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WatchId(String);

impl WatchId {
    /// Longest id accepted.
    pub const MAX_LEN: usize = 128;

    /// Validates an id.
    pub fn new(id: &str) -> Result<Self, String> {
        if id.is_empty() || id.len() > Self::MAX_LEN {
            return Err(format!(
                "invalid id {id:?}: expected 1 to {} characters from [a-z0-9_-]",
                Self::MAX_LEN
            ));
        }
        if let Some(bad) = id
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
        {
            return Err(format!(
                "invalid id {id:?}: {bad:?} is not allowed; expected only [a-z0-9_-]"
            ));
        }
        Ok(WatchId(id.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// When a watch is polled.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Adaptive: start at `interval`, back off while unchanged.
    Interval,
    /// At the times of a cron expression (seconds field first).
    Cron {
        /// The expression as written.
        expr: String,
        /// The parsed schedule.
        schedule: Box<cron::Schedule>,
    },
}

/// One `[[watch]]`.
#[derive(Debug, Clone)]
pub struct Watch {
    /// Unique id.
    pub id: WatchId,
    /// What is polled.
    pub url: Url,
    /// Interval or cron.
    pub schedule: Schedule,
    /// Request method (GET unless the endpoint must be POSTed).
    pub method: Method,
    /// Extra request headers, in file order, after `${VAR}` substitution.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Request body for POST/PUT/PATCH.
    pub body: Option<String>,
    /// Incremental fetch, if configured.
    pub cursor: Option<CursorConfig>,
    /// Stop polling once all of these hold.
    pub until: Vec<Condition>,
    /// Stop polling, as failed, once any of these holds.
    pub fail_if: Vec<Condition>,
    /// The effective policy: `[defaults]` with this watch's overrides.
    pub policy: Policy,
}

/// `[watch.cursor]`: where the next cursor comes from and how it is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct CursorConfig {
    /// Query parameter carrying the cursor (not needed with `link:next`).
    pub param: Option<String>,
    /// Where the next cursor is read from.
    pub from: CursorSource,
    /// The cursor of the first request (and after a 410).
    pub initial: Option<String>,
}

/// Where the next cursor is read from.
#[derive(Debug, Clone, PartialEq)]
pub enum CursorSource {
    /// `json:/pointer` into the response body.
    Json(JsonPointer),
    /// `header:Name`.
    Header(HeaderName),
    /// `link:next`: the `Link: <...>; rel="next"` target (RFC 8288).
    LinkNext,
}

impl fmt::Display for CursorSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CursorSource::Json(pointer) => write!(f, "json:{pointer}"),
            CursorSource::Header(name) => write!(f, "header:{name}"),
            CursorSource::LinkNext => f.write_str("link:next"),
        }
    }
}

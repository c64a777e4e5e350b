//! Walks the span-keeping TOML tree of a watch list, validates every table
//! and turns it into the domain types of [`crate::model`]. Problems are
//! collected, never returned early, so that one run reports all of them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use toml::Spanned;
use toml::de::{DeTable, DeValue};
use url::Url;

use crate::condition::Condition;
use crate::error::ConfigError;
use crate::keys::{CURSOR_KEYS, DAEMON_KEYS, POLICY_KEYS, TELEMETRY_KEYS, WATCH_KEYS};
use crate::model::{
    Config, CursorConfig, CursorSource, DEFAULT_LISTEN, DaemonConfig, Listen, Policy, Schedule,
    TelemetryConfig, Watch, WatchId,
};
use crate::segments;
use crate::source::Source;
use crate::values::{parse_duration, parse_size, substitute_env};

type Item<'i> = Spanned<DeValue<'i>>;

/// Request headers polld sets itself; a watch may not set them.
const MANAGED_HEADERS: &[&str] = &[
    "if-none-match",
    "if-modified-since",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
];

impl Config {
    /// Reads and validates the watch list at `path`, substituting `${VAR}`
    /// from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read(path)?;
        Config::from_str_with_env(path, &text, |name| std::env::var(name).ok())
    }

    /// Validates watch-list `text` named `path` in messages, looking
    /// variables up with `env`.
    pub fn from_str_with_env(
        path: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Config::parse(path, text, &env, segments::watch_headers(text), false)
    }

    /// `text` parsed whole, as if it could not be split: what the split
    /// parse must agree with.
    #[cfg(test)]
    pub(crate) fn parse_whole(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Config::parse(path, text, &|_| None, None, false)
    }

    /// `text` parsed in pieces starting at `starts` (see [`segments`]), or
    /// whole; only its `[daemon]` if `daemon_only`.
    fn parse(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        starts: Option<Vec<usize>>,
        daemon_only: bool,
    ) -> Result<Config, ConfigError> {
        let mut walker = Walker {
            src: Source::new(path, text),
            text,
            env,
            daemon_only,
        };
        let config = match starts {
            Some(starts) => walker.split_document(path, text, &starts),
            None => walker
                .piece(text, 0)
                .map(|root| walker.document(path, root)),
        };
        match config {
            Some(config) if !walker.src.has_problems() => Ok(config),
            _ => Err(ConfigError::Invalid {
                problems: walker.src.into_problems(),
            }),
        }
    }

    /// A one-line summary for `polld check-config` and the start-up log.
    pub fn summary(&self) -> String {
        let cron = self
            .watches
            .iter()
            .filter(|w| matches!(w.schedule, Schedule::Cron { .. }))
            .count();
        let n = self.watches.len();
        format!(
            "{}: ok, {n} watch{} ({} on an interval, {} on a cron schedule), API on {}, state in {}",
            self.path.display(),
            if n == 1 { "" } else { "es" },
            n - cron,
            cron,
            self.daemon.listen,
            self.daemon.state_dir.display(),
        )
    }
}

impl DaemonConfig {
    /// Reads only `[daemon]` of the watch list at `path`, for the API
    /// clients (`polld status`, `diff`, `changes`), which need its `listen`
    /// and `api_token_file` and nothing else: a problem elsewhere in the
    /// file, such as a watch's `${VAR}` that is set in the daemon's
    /// environment but not in the operator's shell, does not stop them.
    pub fn load(path: &Path) -> Result<DaemonConfig, ConfigError> {
        let text = read(path)?;
        DaemonConfig::from_str_with_env(path, &text, |name| std::env::var(name).ok())
    }

    /// [`DaemonConfig::load`] of watch-list `text` named `path` in
    /// messages, looking variables up with `env`.
    pub fn from_str_with_env(
        path: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<DaemonConfig, ConfigError> {
        Config::parse(path, text, &env, segments::watch_headers(text), true)
            .map(|config| config.daemon)
    }
}

/// The largest watch list read: a million watches of a few lines each fit
/// many times over; `--config /dev/zero` (or a log file named by mistake)
/// is refused instead of growing memory until the machine gives out.
pub const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// The text of the file at `path`.
fn read(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read as _;
    let failed = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(failed)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(failed(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!(
                "larger than {} MiB: not a watch list",
                MAX_FILE_BYTES / 1024 / 1024
            ),
        )));
    }
    // TOML is UTF-8: a file saved in another encoding is named with the
    // place of each byte that is not, like any other problem.
    String::from_utf8(bytes).map_err(|err| ConfigError::Invalid {
        problems: crate::source::encoding_problems(path, err.as_bytes()),
    })
}

struct Walker<'a> {
    src: Source<'a>,
    /// The text being walked (the whole file or the piece being parsed):
    /// the spans of the tree are offsets into it.
    text: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
    /// Only `[daemon]` is read and checked (see [`DaemonConfig::load`]).
    daemon_only: bool,
}

/// Everything but the watches.
struct TopLevel {
    daemon: DaemonConfig,
    telemetry: TelemetryConfig,
    defaults: Policy,
    defaults_layer: PolicyLayer,
}

impl TopLevel {
    fn into_config(self, path: &Path, watches: Vec<Arc<Watch>>) -> Config {
        Config {
            path: PathBuf::from(path),
            daemon: self.daemon,
            telemetry: self.telemetry,
            defaults: self.defaults,
            watches,
        }
    }
}

/// The known keys of one table, looked up by name; unknown keys have already
/// been reported.
struct Fields<'t, 'i> {
    items: HashMap<&'t str, (&'t Spanned<Cow<'i, str>>, &'t Item<'i>)>,
    span: Range<usize>,
}

impl<'t, 'i> Fields<'t, 'i> {
    fn get(&self, key: &str) -> Option<&'t Item<'i>> {
        self.items.get(key).map(|(_, item)| *item)
    }
}

/// One layer of policy keys (`[defaults]` or a watch), with where each was
/// set (absolute offsets: the layers of a watch come from different pieces).
#[derive(Default)]
struct PolicyLayer {
    interval: Option<(Duration, Range<usize>)>,
    min_interval: Option<(Duration, Range<usize>)>,
    max_interval: Option<(Duration, Range<usize>)>,
    backoff: Option<f64>,
    jitter: Option<f64>,
    timeout: Option<(Duration, Range<usize>)>,
    connect_timeout: Option<(Duration, Range<usize>)>,
    max_body: Option<u64>,
    max_retry_after: Option<Duration>,
    keep_versions: Option<u32>,
}

impl PolicyLayer {
    fn apply(&self, policy: &mut Policy) {
        let d = |v: &Option<(Duration, Range<usize>)>| v.as_ref().map(|(d, _)| *d);
        policy.interval = d(&self.interval).unwrap_or(policy.interval);
        policy.min_interval = d(&self.min_interval).unwrap_or(policy.min_interval);
        policy.max_interval = d(&self.max_interval).unwrap_or(policy.max_interval);
        policy.backoff = self.backoff.unwrap_or(policy.backoff);
        policy.jitter = self.jitter.unwrap_or(policy.jitter);
        policy.timeout = d(&self.timeout).unwrap_or(policy.timeout);
        policy.connect_timeout = d(&self.connect_timeout).unwrap_or(policy.connect_timeout);
        policy.max_body = self.max_body.unwrap_or(policy.max_body);
        policy.max_retry_after = self.max_retry_after.unwrap_or(policy.max_retry_after);
        policy.keep_versions = self.keep_versions.unwrap_or(policy.keep_versions);
    }
}

fn span_of(
    layers: &[&PolicyLayer],
    pick: impl Fn(&PolicyLayer) -> &Option<(Duration, Range<usize>)>,
) -> Option<Range<usize>> {
    layers
        .iter()
        .find_map(|layer| pick(layer).as_ref().map(|(_, span)| span.clone()))
}

fn list(keys: &[&str]) -> String {
    keys.join(", ")
}

impl<'a> Walker<'a> {
    /// Parses one piece of the file (the whole file, or the part of it
    /// that starts at byte `base`), reporting its syntax errors; `None` if
    /// it has any.
    fn piece(&mut self, piece: &'a str, base: usize) -> Option<DeTable<'a>> {
        self.src.set_base(base);
        self.text = piece;
        let (document, syntax_errors) = DeTable::parse_recoverable(piece);
        for error in &syntax_errors {
            let span = error.span().unwrap_or(0..0);
            self.src
                .report(span, format!("TOML syntax: {}", error.message().trim_end()));
        }
        syntax_errors.is_empty().then(|| document.into_inner())
    }

    /// The whole file as one tree.
    fn document(&mut self, path: &Path, mut root: DeTable<'_>) -> Config {
        let top = self.top_level(&root);
        let mut watches = Vec::new();
        let mut seen = HashMap::new();
        if let Some(item) = root.remove("watch")
            && !self.daemon_only
        {
            self.watch_array(item, &top, &mut seen, &mut watches);
        }
        top.into_config(path, watches)
    }

    /// The file split at its `[[watch]]` headers (see [`segments`]): the
    /// part before the first one, then each watch parsed, validated and
    /// freed in turn. `None` when the part before has syntax errors (the
    /// watches are then only checked for theirs).
    fn split_document(&mut self, path: &Path, text: &'a str, starts: &[usize]) -> Option<Config> {
        let pieces = starts.iter().enumerate().map(|(i, &start)| {
            let end = starts.get(i + 1).copied().unwrap_or(text.len());
            (start, &text[start..end])
        });
        let Some(root) = self.piece(&text[..starts[0]], 0) else {
            if !self.daemon_only {
                for (start, piece) in pieces {
                    self.piece(piece, start);
                }
            }
            return None;
        };
        if root.contains_key("watch") {
            // `watch` also defined before the first [[watch]]: let TOML
            // itself say what is wrong, from the whole file.
            drop(root);
            return self.piece(text, 0).map(|root| self.document(path, root));
        }
        let top = self.top_level(&root);
        drop(root);
        if self.daemon_only {
            return Some(top.into_config(path, Vec::new()));
        }
        let mut watches = Vec::with_capacity(starts.len());
        let mut seen = HashMap::with_capacity(starts.len());
        for (start, piece) in pieces {
            // A piece holds one [[watch]] and its sub-tables, nothing else.
            if let Some(mut root) = self.piece(piece, start)
                && let Some(item) = root.remove("watch")
            {
                self.watch_array(item, &top, &mut seen, &mut watches);
            }
        }
        self.src.set_base(0);
        self.text = text;
        Some(top.into_config(path, watches))
    }

    /// `[daemon]`, `[telemetry]` and `[defaults]`, and unknown top-level keys.
    fn top_level(&mut self, root: &DeTable<'_>) -> TopLevel {
        if self.daemon_only {
            let item = root.get("daemon");
            let table = item.and_then(|item| self.table(item, "[daemon]"));
            return TopLevel {
                daemon: self.daemon(table.unwrap_or(&DeTable::new()), item),
                telemetry: TelemetryConfig::default(),
                defaults: Policy::default(),
                defaults_layer: PolicyLayer::default(),
            };
        }
        let top = self.fields(
            root,
            0..0,
            &["daemon", "telemetry", "defaults", "watch"],
            "the top level",
        );

        let daemon_table = top
            .get("daemon")
            .and_then(|item| self.table(item, "[daemon]"));
        let daemon = self.daemon(daemon_table.unwrap_or(&DeTable::new()), top.get("daemon"));

        let telemetry = top
            .get("telemetry")
            .and_then(|item| Some((item, self.table(item, "[telemetry]")?)))
            .map(|(item, table)| self.telemetry(table, item.span()))
            .unwrap_or_default();

        let mut defaults_layer = PolicyLayer::default();
        let mut defaults = Policy::default();
        if let Some(item) = top.get("defaults")
            && let Some(table) = self.table(item, "[defaults]")
        {
            let fields = self.fields(table, item.span(), POLICY_KEYS, "[defaults]");
            defaults_layer = self.policy_layer(&fields);
            defaults_layer.apply(&mut defaults);
            let fallback = self.src.absolute(item.span());
            self.check_policy(&defaults, &[&defaults_layer], fallback, true);
        }
        TopLevel {
            daemon,
            telemetry,
            defaults,
            defaults_layer,
        }
    }

    /// The value of `watch`: an array of tables, each table freed once
    /// validated. `seen` maps ids to where (absolute offset) they were first used.
    fn watch_array(
        &mut self,
        item: Item<'_>,
        top: &TopLevel,
        seen: &mut HashMap<String, usize>,
        watches: &mut Vec<Arc<Watch>>,
    ) {
        let span = item.span();
        match item.into_inner() {
            DeValue::Array(array) => {
                watches.reserve(array.len());
                for entry in array {
                    let Some(table) = self.table(&entry, "a [[watch]] table") else {
                        continue;
                    };
                    if let Some(watch) = self.watch(
                        table,
                        entry.span(),
                        &top.defaults,
                        &top.defaults_layer,
                        seen,
                    ) {
                        watches.push(Arc::new(watch));
                    }
                }
            }
            _ => self.src.report(
                span,
                "`watch` must be an array of tables, written [[watch]]",
            ),
        }
    }

    /// Checks that `table` only has `known` keys and indexes them.
    fn fields<'t, 'i>(
        &mut self,
        table: &'t DeTable<'i>,
        span: Range<usize>,
        known: &[&str],
        context: &str,
    ) -> Fields<'t, 'i> {
        let mut items = HashMap::new();
        for (key, item) in table.iter() {
            let name: &'t str = key.get_ref().as_ref();
            match known.iter().find(|k| **k == name) {
                Some(_) => {
                    items.insert(name, (key, item));
                }
                None => self.src.report(
                    key.span(),
                    format!(
                        "unknown key `{name}` in {context}; expected one of: {}",
                        list(known)
                    ),
                ),
            }
        }
        Fields { items, span }
    }

    fn table<'t, 'i>(&mut self, item: &'t Item<'i>, what: &str) -> Option<&'t DeTable<'i>> {
        match item.get_ref() {
            DeValue::Table(table) => Some(table),
            other => {
                self.src.report(
                    item.span(),
                    format!("expected {what}, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn string(&mut self, item: &Item<'_>, key: &str) -> Option<String> {
        let DeValue::String(value) = item.get_ref() else {
            self.src.report(
                item.span(),
                format!(
                    "`{key}` must be a string, found {}",
                    item.get_ref().type_str()
                ),
            );
            return None;
        };
        match substitute_env(value, self.env) {
            Ok(value) => Some(value),
            Err((offset, message)) => {
                // Point at the `${` itself when the string has no escapes
                // (its raw text, less the quote, is the value).
                let span = item.span();
                let raw = self.text.get(span.start + 1..span.end.saturating_sub(1));
                let start = if raw == Some(value.as_ref()) {
                    span.start + 1 + offset
                } else {
                    span.start
                };
                self.src
                    .report(start..span.end, format!("`{key}`: {message}"));
                None
            }
        }
    }

    fn duration(&mut self, item: &Item<'_>, key: &str) -> Option<(Duration, Range<usize>)> {
        let text = self.duration_text(item, key)?;
        match parse_duration(&text) {
            Ok(duration) => Some((duration, item.span())),
            Err(message) => {
                self.src.report(item.span(), format!("`{key}`: {message}"));
                None
            }
        }
    }

    fn duration_text(&mut self, item: &Item<'_>, key: &str) -> Option<String> {
        if !matches!(item.get_ref(), DeValue::String(_)) {
            self.src.report(
                item.span(),
                format!(
                    "`{key}` must be a duration string such as \"30s\" or \"5m\", found {}",
                    item.get_ref().type_str()
                ),
            );
            return None;
        }
        self.string(item, key)
    }

    fn positive_duration(
        &mut self,
        item: &Item<'_>,
        key: &str,
    ) -> Option<(Duration, Range<usize>)> {
        let (duration, span) = self.duration(item, key)?;
        if duration.is_zero() {
            self.src
                .report(span, format!("`{key}` must be longer than zero"));
            return None;
        }
        Some((duration, span))
    }

    fn integer(&mut self, item: &Item<'_>, key: &str, range: Range<u64>) -> Option<u64> {
        let value = match item.get_ref() {
            DeValue::Integer(int) => u64::from_str_radix(int.as_str(), int.radix()).ok(),
            _ => None,
        };
        match value {
            Some(v) if range.contains(&v) => Some(v),
            _ => {
                self.src.report(
                    item.span(),
                    format!(
                        "`{key}` must be an integer from {} to {}",
                        range.start,
                        range.end - 1
                    ),
                );
                None
            }
        }
    }

    fn float(&mut self, item: &Item<'_>, key: &str) -> Option<f64> {
        let value = match item.get_ref() {
            DeValue::Float(f) => f64::from_str(f.as_str()).ok(),
            DeValue::Integer(int) => i64::from_str_radix(int.as_str(), int.radix())
                .ok()
                .map(|i| i as f64),
            _ => None,
        };
        if value.is_none() {
            self.src.report(
                item.span(),
                format!(
                    "`{key}` must be a number, found {}",
                    item.get_ref().type_str()
                ),
            );
        }
        value
    }

    fn boolean(&mut self, item: &Item<'_>, key: &str) -> Option<bool> {
        match item.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.src.report(
                    item.span(),
                    format!("`{key}` must be true or false, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn http_url(&mut self, item: &Item<'_>, key: &str) -> Option<Url> {
        let text = self.string(item, key)?;
        match Url::parse(&text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Some(url),
            Ok(url) => {
                self.src.report(
                    item.span(),
                    format!(
                        "`{key}` {text:?} has scheme {:?}; expected an http:// or https:// URL",
                        url.scheme()
                    ),
                );
                None
            }
            Err(err) => {
                self.src.report(
                    item.span(),
                    format!("`{key}` {text:?} is not a URL ({err}); expected e.g. \"https://example.org/feed.json\""),
                );
                None
            }
        }
    }

    fn daemon(&mut self, table: &DeTable<'_>, item: Option<&Item<'_>>) -> DaemonConfig {
        let span = item.map_or(0..0, |item| item.span());
        let fields = self.fields(table, span, DAEMON_KEYS, "[daemon]");
        let listen = match fields.get("listen") {
            Some(item) => self.listen(item),
            None => None,
        }
        .unwrap_or_else(|| Listen::Tcp(DEFAULT_LISTEN.parse().expect("valid default")));
        let state_dir = fields
            .get("state_dir")
            .and_then(|item| {
                self.path(
                    item,
                    "state_dir",
                    "remove the key for the default ($STATE_DIRECTORY, else ./polld-state)",
                )
            })
            .unwrap_or_else(|| default_state_dir(self.env));
        let concurrency = fields
            .get("concurrency")
            .and_then(|item| self.integer(item, "concurrency", 1..100_001))
            .unwrap_or(64) as usize;
        let per_host = fields
            .get("per_host")
            .and_then(|item| self.integer(item, "per_host", 1..10_001))
            .unwrap_or(4) as usize;
        let api_token_file = fields.get("api_token_file").and_then(|item| {
            self.path(
                item,
                "api_token_file",
                "remove the key for an API without a token",
            )
        });
        let user_agent = match fields.get("user_agent") {
            Some(item) => self.user_agent(item),
            None => None,
        }
        .unwrap_or_else(|| concat!("polld/", env!("CARGO_PKG_VERSION")).to_owned());
        let metrics_per_watch = fields
            .get("metrics_per_watch")
            .and_then(|item| self.boolean(item, "metrics_per_watch"))
            .unwrap_or(true);
        let allowed_hosts = fields
            .get("allowed_hosts")
            .map(|item| self.string_list(item, "allowed_hosts"))
            .unwrap_or_default()
            .into_iter()
            .map(|(host, _)| host.to_ascii_lowercase())
            .collect();
        let keep_changes = fields
            .get("keep_changes")
            .and_then(|item| self.integer(item, "keep_changes", 1..1_000_000_000_001))
            .unwrap_or(1_000_000);
        DaemonConfig {
            keep_changes,
            listen,
            state_dir,
            concurrency,
            per_host,
            api_token_file,
            user_agent,
            metrics_per_watch,
            allowed_hosts,
        }
    }

    /// A file or directory: an empty one (`"${VAR:-}"` with VAR unset, say)
    /// would pass here and fail only when polld starts, or quietly mean the
    /// working directory. `instead` says what to write for the default.
    fn path(&mut self, item: &Item<'_>, key: &str, instead: &str) -> Option<PathBuf> {
        let text = self.string(item, key)?;
        if text.trim().is_empty() {
            self.src
                .report(item.span(), format!("`{key}` is empty; {instead}"));
            return None;
        }
        Some(PathBuf::from(text))
    }

    fn listen(&mut self, item: &Item<'_>) -> Option<Listen> {
        let text = self.string(item, "listen")?;
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                self.src.report(
                    item.span(),
                    "`listen` \"unix:\" needs a socket path, e.g. \"unix:/run/polld/api.sock\"",
                );
                return None;
            }
            return Some(Listen::Unix(PathBuf::from(path)));
        }
        match text.parse() {
            Ok(addr) => Some(Listen::Tcp(addr)),
            Err(_) => {
                self.src.report(
                    item.span(),
                    format!("`listen` {text:?} is not IP:PORT or unix:PATH; expected e.g. \"127.0.0.1:8377\" or \"unix:/run/polld/api.sock\""),
                );
                None
            }
        }
    }

    fn user_agent(&mut self, item: &Item<'_>) -> Option<String> {
        let text = self.string(item, "user_agent")?;
        if text.trim().is_empty() || HeaderValue::from_str(&text).is_err() {
            self.src.report(
                item.span(),
                "`user_agent` must be a non-empty header value, e.g. \"polld/0.1 (+mailto:ops@example.org)\"",
            );
            return None;
        }
        Some(text)
    }

    fn telemetry(&mut self, table: &DeTable<'_>, span: Range<usize>) -> TelemetryConfig {
        let fields = self.fields(table, span, TELEMETRY_KEYS, "[telemetry]");
        TelemetryConfig {
            // An empty endpoint is "off", so that the key can stay in a file.
            otlp_endpoint: fields
                .get("otlp_endpoint")
                .filter(|item| !matches!(item.get_ref(), DeValue::String(s) if s.is_empty()))
                .and_then(|item| self.http_url(item, "otlp_endpoint")),
        }
    }

    fn policy_layer(&mut self, fields: &Fields<'_, '_>) -> PolicyLayer {
        let mut layer = PolicyLayer::default();
        if let Some(item) = fields.get("interval") {
            layer.interval = self.positive_duration(item, "interval");
        }
        if let Some(item) = fields.get("min_interval") {
            layer.min_interval = self.duration(item, "min_interval");
        }
        if let Some(item) = fields.get("max_interval") {
            layer.max_interval = self.positive_duration(item, "max_interval");
        }
        if let Some(item) = fields.get("backoff") {
            layer.backoff = self.float(item, "backoff").and_then(|b| {
                if b.is_finite() && b >= 1.0 {
                    Some(b)
                } else {
                    self.src.report(
                        item.span(),
                        format!("`backoff` is {b}; expected a multiplier of at least 1.0 (1.0 keeps the interval fixed)"),
                    );
                    None
                }
            });
        }
        if let Some(item) = fields.get("jitter") {
            layer.jitter = self.float(item, "jitter").and_then(|j| {
                if (0.0..1.0).contains(&j) {
                    Some(j)
                } else {
                    self.src.report(
                        item.span(),
                        format!(
                            "`jitter` is {j}; expected a fraction in [0, 1), e.g. 0.1 for +-10%"
                        ),
                    );
                    None
                }
            });
        }
        if let Some(item) = fields.get("timeout") {
            layer.timeout = self.positive_duration(item, "timeout");
        }
        if let Some(item) = fields.get("connect_timeout") {
            layer.connect_timeout = self.positive_duration(item, "connect_timeout");
        }
        if let Some(item) = fields.get("max_body") {
            layer.max_body = self.size(item, "max_body");
        }
        if let Some(item) = fields.get("max_retry_after") {
            layer.max_retry_after = self.duration(item, "max_retry_after").map(|(d, _)| d);
        }
        if let Some(item) = fields.get("keep_versions") {
            layer.keep_versions = self
                .integer(item, "keep_versions", 1..1_000_001)
                .map(|v| v as u32);
        }
        for set in [
            &mut layer.interval,
            &mut layer.min_interval,
            &mut layer.max_interval,
            &mut layer.timeout,
            &mut layer.connect_timeout,
        ]
        .into_iter()
        .flatten()
        {
            set.1 = self.src.absolute(set.1.clone());
        }
        layer
    }

    fn size(&mut self, item: &Item<'_>, key: &str) -> Option<u64> {
        let size = match item.get_ref() {
            DeValue::Integer(_) => self.integer(item, key, 1..u64::MAX),
            DeValue::String(_) => {
                let text = self.string(item, key)?;
                match parse_size(&text) {
                    Ok(size) => Some(size),
                    Err(message) => {
                        self.src.report(item.span(), format!("`{key}`: {message}"));
                        return None;
                    }
                }
            }
            other => {
                self.src.report(
                    item.span(),
                    format!(
                        "`{key}` must be a size such as \"8MiB\", found {}",
                        other.type_str()
                    ),
                );
                return None;
            }
        };
        if size == Some(0) {
            self.src
                .report(item.span(), format!("`{key}` must be larger than zero"));
            return None;
        }
        size
    }

    /// Cross-checks of an effective policy; `layers` are searched, most
    /// specific first, for the place to blame.
    fn check_policy(
        &mut self,
        policy: &Policy,
        layers: &[&PolicyLayer],
        fallback: Range<usize>,
        on_interval: bool,
    ) {
        let human = |d: Duration| humantime::format_duration(d).to_string();
        if on_interval && policy.min_interval > policy.max_interval {
            let span = span_of(layers, |l| &l.min_interval)
                .or_else(|| span_of(layers, |l| &l.max_interval))
                .unwrap_or(fallback.clone());
            self.src.report_absolute(
                span,
                format!(
                    "min_interval {} is greater than max_interval {}",
                    human(policy.min_interval),
                    human(policy.max_interval)
                ),
            );
        } else if on_interval
            && (policy.interval < policy.min_interval || policy.interval > policy.max_interval)
        {
            let span = span_of(layers, |l| &l.interval)
                .or_else(|| span_of(layers, |l| &l.min_interval))
                .or_else(|| span_of(layers, |l| &l.max_interval))
                .unwrap_or(fallback.clone());
            self.src.report_absolute(
                span,
                format!(
                    "interval {} is outside [min_interval {}, max_interval {}]",
                    human(policy.interval),
                    human(policy.min_interval),
                    human(policy.max_interval)
                ),
            );
        }
        if policy.connect_timeout > policy.timeout {
            let span = span_of(layers, |l| &l.connect_timeout)
                .or_else(|| span_of(layers, |l| &l.timeout))
                .unwrap_or(fallback);
            self.src.report_absolute(
                span,
                format!(
                    "connect_timeout {} is longer than timeout {}",
                    human(policy.connect_timeout),
                    human(policy.timeout)
                ),
            );
        }
    }

    fn watch(
        &mut self,
        table: &DeTable<'_>,
        span: Range<usize>,
        defaults: &Policy,
        defaults_layer: &PolicyLayer,
        seen: &mut HashMap<String, usize>,
    ) -> Option<Watch> {
        let known: Vec<&str> = WATCH_KEYS.iter().chain(POLICY_KEYS).copied().collect();
        let fields = self.fields(table, span.clone(), &known, "[[watch]]");

        let id = match fields.get("id") {
            Some(item) => self.string(item, "id").and_then(|text| {
                match WatchId::new(&text) {
                    Ok(id) => {
                        if let Some(first) = seen.get(id.as_str()) {
                            let line = self.src.line_of(*first);
                            self.src.report(
                                item.span(),
                                format!("duplicate id {text:?}; it is already used by the watch at line {line}"),
                            );
                        } else {
                            seen.insert(text, self.src.absolute(item.span()).start);
                        }
                        Some(id)
                    }
                    Err(message) => {
                        self.src.report(item.span(), message);
                        None
                    }
                }
            }),
            None => {
                self.src
                    .report(fields.span.clone(), "this [[watch]] has no `id`; expected e.g. id = \"releases\"");
                None
            }
        };
        let url = match fields.get("url") {
            Some(item) => self.http_url(item, "url"),
            None => {
                self.src
                    .report(fields.span.clone(), "this [[watch]] has no `url`; expected e.g. url = \"https://example.org/feed.json\"");
                None
            }
        };

        let layer = self.policy_layer(&fields);
        let mut policy = defaults.clone();
        layer.apply(&mut policy);

        let schedule = match fields.get("schedule") {
            Some(item) => {
                if let Some(interval) = fields.items.get("interval") {
                    self.src.report(
                        item.span(),
                        format!(
                            "a watch has either `interval` (line {}) or `schedule`, not both",
                            self.src.line_of(self.src.absolute(interval.0.span()).start)
                        ),
                    );
                }
                self.cron(item)
            }
            None => Some(Schedule::Interval),
        };
        // The interval keys only matter to a watch on an interval; the
        // timeouts to every watch.
        let on_interval = !fields.items.contains_key("schedule");
        let fallback = self.src.absolute(span.clone());
        self.check_policy(&policy, &[&layer, defaults_layer], fallback, on_interval);

        let method = match fields.get("method") {
            Some(item) => self.method(item),
            None => Some(Method::GET),
        };
        let body = fields.get("body").and_then(|item| {
            let body = self.string(item, "body")?;
            if method.as_ref().is_some_and(|m| m == Method::GET) {
                self.src.report(
                    item.span(),
                    "`body` needs method = \"POST\", \"PUT\" or \"PATCH\"; a GET carries no body",
                );
            }
            Some(body)
        });
        let headers = fields
            .get("headers")
            .map(|item| self.headers(item))
            .unwrap_or_default();
        let cursor = fields.get("cursor").and_then(|item| self.cursor(item));
        let until = fields
            .get("until")
            .map(|item| self.conditions(item, "until"))
            .unwrap_or_default();
        let fail_if = fields
            .get("fail_if")
            .map(|item| self.conditions(item, "fail_if"))
            .unwrap_or_default();

        Some(Watch {
            id: id?,
            url: url?,
            schedule: schedule?,
            method: method?,
            headers,
            body,
            cursor,
            until,
            fail_if,
            policy,
        })
    }

    fn cron(&mut self, item: &Item<'_>) -> Option<Schedule> {
        let expr = self.string(item, "schedule")?;
        match cron::Schedule::from_str(&expr) {
            Ok(schedule) => {
                // A day that does not exist (30 February) or a year gone
                // by parses, but would leave the watch polled only by the
                // fallback of max_interval, never at a time it names.
                if schedule.after(&chrono::Utc::now()).next().is_none() {
                    self.src.report(
                        item.span(),
                        format!("`schedule` {expr:?} never fires: no time from now on matches it"),
                    );
                    return None;
                }
                Some(Schedule::Cron {
                    expr,
                    schedule: Box::new(schedule),
                })
            }
            Err(err) => {
                self.src
                    .report(item.span(), cron_problem(&expr, &err.to_string()));
                None
            }
        }
    }

    fn method(&mut self, item: &Item<'_>) -> Option<Method> {
        let text = self.string(item, "method")?;
        match text.to_ascii_uppercase().as_str() {
            "GET" => Some(Method::GET),
            "POST" => Some(Method::POST),
            "PUT" => Some(Method::PUT),
            "PATCH" => Some(Method::PATCH),
            _ => {
                self.src.report(
                    item.span(),
                    format!("`method` {text:?} is not supported; expected GET, POST, PUT or PATCH"),
                );
                None
            }
        }
    }

    fn headers(&mut self, item: &Item<'_>) -> Vec<(HeaderName, HeaderValue)> {
        let Some(table) = self.table(
            item,
            "`headers` as a table, e.g. { Accept = \"application/json\" }",
        ) else {
            return Vec::new();
        };
        let mut headers = Vec::new();
        for (key, value) in table.iter() {
            let name_text: &str = key.get_ref().as_ref();
            let Ok(name) = HeaderName::from_bytes(name_text.as_bytes()) else {
                self.src.report(
                    key.span(),
                    format!("{name_text:?} is not a valid header name"),
                );
                continue;
            };
            if MANAGED_HEADERS.contains(&name.as_str()) {
                self.src.report(
                    key.span(),
                    format!("header {name_text} is set by polld itself and cannot be configured"),
                );
                continue;
            }
            let Some(text) = self.string(value, &format!("headers.{name_text}")) else {
                continue;
            };
            match HeaderValue::from_str(&text) {
                Ok(mut header) => {
                    let raw: &str = match value.get_ref() {
                        DeValue::String(raw) => raw,
                        _ => "",
                    };
                    // Credentials and anything from the environment never reach a log.
                    if raw.contains("${")
                        || matches!(
                            name.as_str(),
                            "authorization" | "cookie" | "proxy-authorization"
                        )
                    {
                        header.set_sensitive(true);
                    }
                    headers.push((name, header));
                }
                Err(_) => self.src.report(
                    value.span(),
                    format!(
                        "the value of header {name_text} holds characters a header cannot carry"
                    ),
                ),
            }
        }
        headers
    }

    fn cursor(&mut self, item: &Item<'_>) -> Option<CursorConfig> {
        let table = self.table(item, "[watch.cursor] as a table")?;
        let fields = self.fields(table, item.span(), CURSOR_KEYS, "[watch.cursor]");
        let from = match fields.get("from") {
            Some(from_item) => {
                let text = self.string(from_item, "from")?;
                let source = if text == "link:next" {
                    Some(CursorSource::LinkNext)
                } else if let Some(pointer) = text.strip_prefix("json:") {
                    pointer
                        .parse()
                        .map(CursorSource::Json)
                        .map_err(|e| e.to_string())
                        .ok()
                } else if let Some(name) = text.strip_prefix("header:") {
                    HeaderName::from_bytes(name.trim().as_bytes())
                        .ok()
                        .map(CursorSource::Header)
                } else {
                    None
                };
                if source.is_none() {
                    self.src.report(
                        from_item.span(),
                        format!("cursor `from` {text:?} is not understood; expected \"json:/POINTER\", \"header:NAME\" or \"link:next\""),
                    );
                }
                source
            }
            None => {
                self.src.report(
                    item.span(),
                    "[watch.cursor] needs `from`: \"json:/POINTER\", \"header:NAME\" or \"link:next\"",
                );
                None
            }
        }?;
        let param = fields.get("param").and_then(|p| {
            let text = self.string(p, "param")?;
            if text.is_empty() {
                self.src
                    .report(p.span(), "cursor `param` must not be empty");
                return None;
            }
            Some(text)
        });
        if param.is_none() && from != CursorSource::LinkNext && !fields.items.contains_key("param")
        {
            self.src.report(
                item.span(),
                "[watch.cursor] needs `param`, the query parameter that carries the cursor (only from = \"link:next\" does without)",
            );
        }
        let initial = fields
            .get("initial")
            .and_then(|i| self.string(i, "initial"));
        Some(CursorConfig {
            param,
            from,
            initial,
        })
    }

    fn string_list(&mut self, item: &Item<'_>, key: &str) -> Vec<(String, Range<usize>)> {
        let DeValue::Array(array) = item.get_ref() else {
            self.src.report(
                item.span(),
                format!(
                    "`{key}` must be an array of strings, found {}",
                    item.get_ref().type_str()
                ),
            );
            return Vec::new();
        };
        array
            .iter()
            .filter_map(|entry| Some((self.string(entry, key)?, entry.span())))
            .collect()
    }

    fn conditions(&mut self, item: &Item<'_>, key: &str) -> Vec<Condition> {
        self.string_list(item, key)
            .into_iter()
            .filter_map(|(text, span)| match text.parse::<Condition>() {
                Ok(condition) => Some(condition),
                Err(err) => {
                    self.src.report(span, format!("`{key}`: {err}"));
                    None
                }
            })
            .collect()
    }
}

/// What is wrong with cron expression `expr`, from the cron crate's error
/// `err`: the expression, a caret line under the place, then the reason,
/// which is missing for a wrong number of fields or text it cannot read.
fn cron_problem(expr: &str, err: &str) -> String {
    const EXPECTED: &str =
        "expected 6 fields (7 with a year) with seconds first, e.g. \"0 */10 * * * *\"";
    let mut lines = err.lines();
    let (_, caret) = (lines.next(), lines.next().unwrap_or_default());
    let reason = lines.collect::<Vec<_>>().join(" ");
    let reason = reason.trim();
    if !reason.is_empty() {
        return format!("`schedule` {expr:?} is not a cron expression ({reason}); {EXPECTED}");
    }
    let fields = expr.split_whitespace().count();
    if !(6..=7).contains(&fields) && !expr.trim_start().starts_with('@') {
        // The five fields of crontab(5): the same times, from second 0.
        let hint = if fields == 5 {
            let with_seconds = format!("0 {}", expr.trim());
            cron::Schedule::from_str(&with_seconds)
                .map(|_| format!("; for crontab's 5 fields from second 0 write {with_seconds:?}"))
                .unwrap_or_default()
        } else {
            String::new()
        };
        return format!("`schedule` {expr:?} has {fields} fields; {EXPECTED}{hint}");
    }
    let at = caret.find('^').unwrap_or(0);
    let rest: String = expr.chars().skip(at).collect();
    format!(
        "`schedule` {expr:?} is not a cron expression (cannot read {rest:?} at character {}); {EXPECTED}",
        at + 1
    )
}

/// `$STATE_DIRECTORY` (set by systemd's `StateDirectory=`; the first entry
/// when it lists several), else `./polld-state`.
fn default_state_dir(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    env("STATE_DIRECTORY")
        .and_then(|dirs| dirs.split(':').next().map(str::to_owned))
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from("polld-state"), PathBuf::from)
}

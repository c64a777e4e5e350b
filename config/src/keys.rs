//! The keys of the watch-list format, one list per table. The parser accepts
//! exactly these, and the example file is tested against them.

/// Keys of `[daemon]`.
pub const DAEMON_KEYS: &[&str] = &[
    "listen",
    "state_dir",
    "concurrency",
    "per_host",
    "api_token_file",
    "user_agent",
    "metrics_per_watch",
    "allowed_hosts",
    "keep_changes",
];

/// Keys of `[telemetry]`.
pub const TELEMETRY_KEYS: &[&str] = &["otlp_endpoint"];

/// Keys of `[defaults]`; each may also be set on a `[[watch]]`.
pub const POLICY_KEYS: &[&str] = &[
    "interval",
    "min_interval",
    "max_interval",
    "backoff",
    "jitter",
    "timeout",
    "connect_timeout",
    "max_body",
    "max_retry_after",
    "keep_versions",
];

/// Keys of a `[[watch]]` besides the [`POLICY_KEYS`] it may override.
pub const WATCH_KEYS: &[&str] = &[
    "id", "url", "schedule", "headers", "method", "body", "cursor", "until", "fail_if",
];

/// Keys of `[watch.cursor]`.
pub const CURSOR_KEYS: &[&str] = &["param", "from", "initial"];

/// Every key of the format as a dotted path (`daemon.listen`, `watch.cursor.from`, ...).
pub fn all_key_paths() -> Vec<String> {
    let mut paths = Vec::new();
    let mut add = |table: &str, keys: &[&str]| {
        paths.extend(keys.iter().map(|k| format!("{table}.{k}")));
    };
    add("daemon", DAEMON_KEYS);
    add("telemetry", TELEMETRY_KEYS);
    add("defaults", POLICY_KEYS);
    add("watch", WATCH_KEYS);
    add("watch", POLICY_KEYS);
    add("watch.cursor", CURSOR_KEYS);
    paths
}

//! `polld-config` owns the watch-list file: its types, parsing with
//! `FILE:LINE:COLUMN` errors, defaults, validation and `${VAR}` substitution.
//!
//! The file is read into `toml`'s span-keeping document tree and then walked
//! table by table, so that every problem of a file is collected (not only the
//! first) and each one names the exact place it comes from. Only validated
//! domain types ([`Config`], [`Watch`], [`Policy`], ...) leave the crate.
//!
//! ```
//! let text = "[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\n";
//! let config = polld_config::Config::from_str_with_env("w.toml".as_ref(), text, |_| None).unwrap();
//! assert_eq!(config.watches[0].id.as_str(), "a");
//! ```

mod condition;
mod error;
mod keys;
mod model;
mod parse;
pub mod redact;
mod segments;
mod source;
mod values;

pub use condition::{Condition, ConditionError, JsonPointer, ResponseView};
pub use error::{ConfigError, Problem};
pub use keys::{CURSOR_KEYS, DAEMON_KEYS, POLICY_KEYS, TELEMETRY_KEYS, WATCH_KEYS, all_key_paths};
pub use model::{
    Config, CursorConfig, CursorSource, DEFAULT_CONFIG_PATH, DEFAULT_LISTEN, DaemonConfig, Listen,
    Policy, Schedule, TelemetryConfig, Watch, WatchId,
};
pub use values::{parse_duration, parse_size};

//! Helpers shared by the agent's integration tests.

use std::path::Path;

use polld_config::{Config, Watch};

/// One watch at `url` with `extra` TOML lines, and short timeouts (3 s, 2 s
/// to connect) unless `extra` sets them.
pub fn watch(url: &str, extra: &str) -> Watch {
    let defaults: String = [("timeout", "\"3s\""), ("connect_timeout", "\"2s\"")]
        .iter()
        .filter(|(key, _)| !extra.lines().any(|l| l.starts_with(&format!("{key} "))))
        .map(|(key, value)| format!("{key} = {value}\n"))
        .collect();
    let text = format!("[[watch]]\nid = \"w\"\nurl = \"{url}\"\n{defaults}{extra}\n");
    Config::from_str_with_env(Path::new("t.toml"), &text, |_| None)
        .unwrap_or_else(|e| panic!("{e}"))
        .watches
        .remove(0)
        .as_ref()
        .clone()
}

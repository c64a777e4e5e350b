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

/// `http://127.0.0.1:PORT` of a port nobody listens on (bound, then let
/// go): a connection there is refused.
#[allow(dead_code)] // each test binary compiles this module; not all use it
pub fn nobody_listens() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

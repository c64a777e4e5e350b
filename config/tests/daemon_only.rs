//! `DaemonConfig::load`, what the API clients read: `[daemon]` only, so that
//! problems elsewhere in the file do not stop `polld status`.

use std::path::Path;

use polld_config::{Config, DaemonConfig, Listen};

const DAEMON: &str = "[daemon]\nlisten = \"127.0.0.1:9123\"\napi_token_file = \"/run/t\"\n";

/// A watch whose header needs a variable the operator's shell lacks (the
/// daemon gets it from its unit), and other problems outside `[daemon]`.
const ELSEWHERE: &str = "[defaults]\njitter = 2.0\n[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\nheaders = { Authorization = \"Bearer ${POLLD_TEST_UNSET}\" }\n[[watch]]\nid = \"Bad Id\"\nurl = \"ftp://x\"\n";

#[test]
fn problems_outside_daemon_do_not_stop_the_clients() {
    let path = Path::new("w.toml");
    // Split at the [[watch]] headers, and whole (a table after the watches).
    for text in [
        format!("bogus = 1\n{DAEMON}{ELSEWHERE}"),
        format!("bogus = 1\n{DAEMON}{ELSEWHERE}[telemetry]\n"),
        format!("bogus = 1\n{ELSEWHERE}{DAEMON}"),
    ] {
        let err = Config::from_str_with_env(path, &text, |_| None).unwrap_err();
        assert!(err.problems().len() >= 4, "{err}");
        let daemon = DaemonConfig::from_str_with_env(path, &text, |_| None)
            .unwrap_or_else(|e| panic!("{text}\n{e}"));
        assert_eq!(
            daemon.listen,
            Listen::Tcp("127.0.0.1:9123".parse().unwrap())
        );
        assert_eq!(daemon.api_token_file.as_deref(), Some(Path::new("/run/t")));
    }
}

#[test]
fn problems_of_daemon_are_still_named() {
    let text = format!("bogus = 1\n{ELSEWHERE}[daemon]\nlisten = \"localhost:1\"\nthreads = 4\n");
    let err = DaemonConfig::from_str_with_env(Path::new("w.toml"), &text, |_| None).unwrap_err();
    let problems: Vec<String> = err.problems().iter().map(ToString::to_string).collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].starts_with("w.toml:12:10: `listen`"),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with("w.toml:13:1: unknown key `threads`"),
        "{problems:?}"
    );
    // A syntax error anywhere still is one: the file cannot be read.
    let text = format!("{DAEMON}[[watch]]\nid = \n");
    assert!(DaemonConfig::from_str_with_env(Path::new("w.toml"), &text, |_| None).is_ok());
    let text = format!("{DAEMON}[[watch]]\nid = \n[telemetry]\n");
    assert!(DaemonConfig::from_str_with_env(Path::new("w.toml"), &text, |_| None).is_err());
}

//! `polld check-config` against the example watch list and a table of broken
//! files: the exit code, the message and the exact LINE:COLUMN of each error.

use std::path::Path;
use std::process::{Command, Output};

use polld_config::{Config, all_key_paths};

fn polld() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_polld"));
    // The example and the cases must not depend on the caller's environment.
    command
        .env_remove("POLLD_CONFIG")
        .env_remove("STATE_DIRECTORY");
    command
}

fn check(path: &Path) -> Output {
    polld()
        .args(["check-config", "--config"])
        .arg(path)
        .output()
        .expect("polld runs")
}

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/watchlist.toml")
}

#[test]
fn example_watch_list_is_valid() {
    let output = check(&example());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("ok, 4 watches"), "summary: {stdout}");
    assert_eq!(stdout.lines().count(), 1, "one-line summary: {stdout}");
}

/// Fails when a key of the format is missing from the example file, so the
/// example stays the complete reference.
#[test]
fn example_watch_list_shows_every_key() {
    let text = std::fs::read_to_string(example()).unwrap();
    let document: toml::Table = toml::from_str(&text).unwrap();
    let mut present = std::collections::BTreeSet::new();
    for (table, value) in &document {
        let entries: Vec<&toml::Table> = match value {
            toml::Value::Table(t) => vec![t],
            toml::Value::Array(a) => a.iter().filter_map(toml::Value::as_table).collect(),
            _ => vec![],
        };
        for entry in entries {
            for (key, value) in entry {
                present.insert(format!("{table}.{key}"));
                if let toml::Value::Table(inner) = value
                    && key == "cursor"
                {
                    for inner_key in inner.keys() {
                        present.insert(format!("{table}.{key}.{inner_key}"));
                    }
                }
            }
        }
    }
    let missing: Vec<String> = all_key_paths()
        .into_iter()
        .filter(|path| !present.contains(path))
        .collect();
    assert!(
        missing.is_empty(),
        "systemd/watchlist.toml lacks: {missing:?}"
    );
}

#[test]
fn missing_file_is_a_config_error() {
    let output = check(Path::new("/nonexistent/watchlist.toml"));
    assert_eq!(output.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("cannot read watch list /nonexistent/watchlist.toml")
    );
}

/// A watch list saved as Latin-1: the byte that is not UTF-8 is named at
/// its FILE:LINE:COLUMN, like every other problem, not as a bare read error.
#[test]
fn a_file_that_is_not_utf8_names_the_place_of_the_bad_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.toml");
    std::fs::write(
        &path,
        b"[[watch]]\nid = \"a\"\nurl = \"https://example.org/caf\xe9\"\n",
    )
    .unwrap();
    let output = check(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.starts_with(&format!("{}:3:31: byte 0xE9 is not UTF-8", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("1 problem found"), "{stderr}");
}

#[test]
fn config_path_comes_from_polld_config_env() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.toml");
    std::fs::write(
        &path,
        "[[watch]]\nid = \"a\"\nurl = \"http://127.0.0.1:9/\"\n",
    )
    .unwrap();
    let output = polld()
        .arg("check-config")
        .env("POLLD_CONFIG", &path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok, 1 watch (1 on an interval"));
}

/// A file with no end (or a huge one named by mistake) is refused at a
/// bound, not read until memory runs out.
#[test]
fn an_endless_file_is_refused_at_a_bound() {
    let output = check(std::path::Path::new("/dev/zero"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("/dev/zero: larger than 256 MiB"),
        "{stderr}"
    );
}

#[test]
fn empty_watch_list_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.toml");
    std::fs::write(&path, "").unwrap();
    let output = check(&path);
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok, 0 watches"));
}

/// One broken file: its text and every (line, column, message fragment) expected.
struct Case {
    name: &'static str,
    text: &'static str,
    errors: &'static [(usize, usize, &'static str)],
}

const W: &str = "[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\n";

const CASES: &[Case] = &[
    Case {
        name: "syntax error",
        text: "[daemon\nlisten = 1\n",
        errors: &[(1, 8, "TOML syntax")],
    },
    Case {
        name: "unknown top-level key",
        text: "verbose = true\n",
        errors: &[(1, 1, "unknown key `verbose` in the top level")],
    },
    Case {
        name: "unknown daemon key",
        text: "[daemon]\nlisten = \"127.0.0.1:1\"\nthreads = 4\n",
        errors: &[(3, 1, "unknown key `threads` in [daemon]")],
    },
    Case {
        name: "unknown watch key",
        text: "[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\nintervall = \"5m\"\n",
        errors: &[(4, 1, "unknown key `intervall` in [[watch]]")],
    },
    Case {
        name: "unknown cursor key",
        text: "[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\n[watch.cursor]\nparam = \"p\"\nfrom = \"link:next\"\nstart = \"0\"\n",
        errors: &[(7, 1, "unknown key `start` in [watch.cursor]")],
    },
    Case {
        name: "duplicate id",
        text: "[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\n[[watch]]\nid = \"a\"\nurl = \"https://example.org/2\"\n",
        errors: &[(
            5,
            6,
            "duplicate id \"a\"; it is already used by the watch at line 2",
        )],
    },
    Case {
        name: "malformed id",
        text: "[[watch]]\nid = \"Rust Releases\"\nurl = \"https://example.org/\"\n",
        errors: &[(2, 6, "invalid id \"Rust Releases\"")],
    },
    Case {
        name: "missing id and url",
        text: "[[watch]]\ninterval = \"5m\"\n",
        errors: &[(1, 1, "has no `id`"), (1, 1, "has no `url`")],
    },
    Case {
        name: "non-http url",
        text: "[[watch]]\nid = \"a\"\nurl = \"ftp://example.org/x\"\n",
        errors: &[(3, 7, "has scheme \"ftp\"")],
    },
    Case {
        name: "not a url",
        text: "[[watch]]\nid = \"a\"\nurl = \"example.org/x\"\n",
        errors: &[(3, 7, "is not a URL")],
    },
    Case {
        name: "min above max",
        text: "[defaults]\nmin_interval = \"2h\"\nmax_interval = \"1h\"\ninterval = \"90m\"\n",
        errors: &[(2, 16, "min_interval 2h is greater than max_interval 1h")],
    },
    Case {
        name: "interval and schedule",
        text: "[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\ninterval = \"5m\"\nschedule = \"0 * * * * *\"\n",
        errors: &[(5, 12, "either `interval` (line 4) or `schedule`")],
    },
    Case {
        name: "bad cron",
        text: "[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\nschedule = \"every monday\"\n",
        errors: &[(4, 12, "is not a cron expression")],
    },
    Case {
        name: "cron field out of range, its reason on the same line",
        text: "[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\nschedule = \"0 0 25 * * *\"\n",
        errors: &[(4, 12, "is not a cron expression (Hours must be")],
    },
    Case {
        name: "crontab's five fields, without seconds",
        text: "[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\nschedule = \"*/10 * * * *\"\n",
        errors: &[(
            4,
            12,
            "`schedule` \"*/10 * * * *\" has 5 fields; expected 6 fields (7 with a year) with seconds first, e.g. \"0 */10 * * * *\"; for crontab's 5 fields from second 0 write \"0 */10 * * * *\"",
        )],
    },
    Case {
        name: "cron text that cannot be read",
        text: "[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\nschedule = \"0 1-x * * * *\"\n",
        errors: &[(4, 12, "(cannot read \"-x * * * *\" at character 4)")],
    },
    Case {
        name: "cron that never fires",
        text: "[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\nschedule = \"0 0 0 30 2 *\"\n",
        errors: &[(4, 12, "`schedule` \"0 0 0 30 2 *\" never fires")],
    },
    Case {
        name: "cron in a year gone by",
        text: "[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\nschedule = \"0 0 0 1 1 * 2020\"\n",
        errors: &[(4, 12, "never fires")],
    },
    Case {
        name: "connect timeout above timeout on a cron watch",
        text: "[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\nschedule = \"0 * * * * *\"\nconnect_timeout = \"1m\"\n",
        errors: &[(5, 19, "connect_timeout 1m is longer than timeout 30s")],
    },
    Case {
        name: "jitter of one",
        text: "[defaults]\njitter = 1.0\n",
        errors: &[(2, 10, "expected a fraction in [0, 1)")],
    },
    Case {
        name: "negative jitter",
        text: "[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\njitter = -0.1\n",
        errors: &[(4, 10, "`jitter` is -0.1")],
    },
    Case {
        name: "backoff below one",
        text: "[defaults]\nbackoff = 0.5\n",
        errors: &[(2, 11, "at least 1.0")],
    },
    Case {
        name: "undefined variable",
        text: "[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\nheaders = { Authorization = \"Bearer ${POLLD_TEST_UNSET_TOKEN}\" }\n",
        errors: &[(
            4,
            37,
            "environment variable POLLD_TEST_UNSET_TOKEN is not set",
        )],
    },
    Case {
        name: "bad cursor from",
        text: "[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\ncursor = { param = \"since\", from = \"body:next\" }\n",
        errors: &[(4, 36, "cursor `from` \"body:next\" is not understood")],
    },
    Case {
        name: "bad cursor pointer",
        text: "[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\ncursor = { param = \"since\", from = \"json:next\" }\n",
        errors: &[(4, 36, "cursor `from` \"json:next\"")],
    },
    Case {
        name: "cursor without param",
        text: "[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\ncursor = { from = \"json:/next\" }\n",
        errors: &[(4, 10, "needs `param`")],
    },
    Case {
        name: "bad duration",
        text: "[defaults]\ntimeout = \"30 parsecs\"\n",
        errors: &[(2, 11, "invalid duration \"30 parsecs\"")],
    },
    Case {
        name: "duration as number",
        text: "[defaults]\ninterval = 300\n",
        errors: &[(2, 12, "must be a duration string")],
    },
    Case {
        name: "decimal size unit",
        text: "[defaults]\nmax_body = \"8MB\"\n",
        errors: &[(2, 12, "invalid size \"8MB\"")],
    },
    Case {
        name: "bad listen",
        text: "[daemon]\nlisten = \"localhost:8377\"\n",
        errors: &[(2, 10, "is not IP:PORT or unix:PATH")],
    },
    Case {
        name: "empty paths, e.g. from an unset variable with an empty fallback",
        text: "[daemon]\nstate_dir = \"${POLLD_TEST_UNSET_DIR:-}\"\napi_token_file = \"\"\n",
        errors: &[
            (
                2,
                13,
                "`state_dir` is empty; remove the key for the default",
            ),
            (
                3,
                18,
                "`api_token_file` is empty; remove the key for an API without a token",
            ),
        ],
    },
    Case {
        name: "zero concurrency",
        text: "[daemon]\nconcurrency = 0\n",
        errors: &[(2, 15, "`concurrency` must be an integer from 1 to 100000")],
    },
    Case {
        name: "body on a GET",
        text: "[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\nbody = \"{}\"\n",
        errors: &[(4, 8, "`body` needs method")],
    },
    Case {
        name: "unsupported method",
        text: "[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\nmethod = \"DELETE\"\n",
        errors: &[(4, 10, "`method` \"DELETE\" is not supported")],
    },
    Case {
        name: "managed header",
        text: "[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\nheaders = { If-None-Match = \"x\" }\n",
        errors: &[(4, 13, "is set by polld itself")],
    },
    Case {
        name: "bad until condition",
        text: "[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\nuntil = [\"status=200\", \"xml:/a\"]\n",
        errors: &[(4, 24, "`until`: invalid condition \"xml:/a\"")],
    },
    Case {
        name: "watch not an array",
        text: "watch = \"a\"\n",
        errors: &[(1, 9, "must be an array of tables")],
    },
    Case {
        name: "interval below min",
        text: "[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\ninterval = \"10s\"\n",
        errors: &[(
            4,
            12,
            "interval 10s is outside [min_interval 30s, max_interval 6h]",
        )],
    },
    Case {
        name: "every problem of a file at once",
        text: "[daemon]\nper_host = \"four\"\n[defaults]\njitter = 2\n[[watch]]\nid = \"a\"\nurl = \"gopher://x\"\n",
        errors: &[
            (2, 12, "`per_host` must be an integer"),
            (4, 10, "`jitter` is 2"),
            (7, 7, "has scheme \"gopher\""),
        ],
    },
];

#[test]
fn invalid_files_name_every_error_with_line_and_column() {
    assert!(CASES.len() >= 25);
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let path = dir.path().join(format!("case{i}.toml"));
        std::fs::write(&path, case.text).unwrap();
        let output = check(&path);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.code() != Some(78) {
            failures.push(format!(
                "{}: exit {:?}, stderr {stderr}",
                case.name,
                output.status.code()
            ));
            continue;
        }
        let problem_lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with(path.to_str().unwrap()))
            .collect();
        if problem_lines.len() != case.errors.len() {
            failures.push(format!(
                "{}: expected {} errors, got:\n{stderr}",
                case.name,
                case.errors.len()
            ));
            continue;
        }
        for (line, (l, c, fragment)) in problem_lines.iter().zip(case.errors) {
            let prefix = format!("{}:{l}:{c}: ", path.display());
            if !line.starts_with(&prefix) || !line.contains(fragment) {
                failures.push(format!(
                    "{}: expected {prefix}...{fragment}...\n  got {line}",
                    case.name
                ));
            }
        }
        let n = case.errors.len();
        let summary = format!("problem{} found", if n == 1 { "" } else { "s" });
        if !stderr.contains(&format!("{n} {summary}")) {
            failures.push(format!("{}: no closing summary line", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn environment_substitution_reaches_the_request_headers() {
    let text = format!(
        "{W}headers = {{ Authorization = \"Bearer ${{TOKEN}}\", X-Env = \"${{MISSING:-fallback}}\" }}\n"
    );
    let config = Config::from_str_with_env(Path::new("w.toml"), &text, |name| {
        (name == "TOKEN").then(|| "s3cret".to_owned())
    })
    .unwrap();
    let headers = &config.watches[0].headers;
    assert_eq!(headers[0].1, "Bearer s3cret");
    assert!(
        headers[0].1.is_sensitive(),
        "credentials are marked sensitive"
    );
    assert_eq!(headers[1].1, "fallback");
}

#[test]
fn watch_overrides_defaults_and_defaults_override_builtins() {
    let text =
        format!("[defaults]\ninterval = \"1m\"\nkeep_versions = 7\n{W}max_body = \"1KiB\"\n");
    let config = Config::from_str_with_env(Path::new("w.toml"), &text, |_| None).unwrap();
    let policy = &config.watches[0].policy;
    assert_eq!(policy.interval, std::time::Duration::from_secs(60));
    assert_eq!(policy.keep_versions, 7);
    assert_eq!(policy.max_body, 1024);
    assert_eq!(
        policy.max_interval,
        std::time::Duration::from_secs(6 * 3600)
    );
    assert_eq!(config.daemon.state_dir, Path::new("polld-state"));
}

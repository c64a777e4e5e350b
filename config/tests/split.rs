//! Large watch lists are parsed one `[[watch]]` at a time (segments.rs); a
//! file that ends with another table is parsed whole. Both must mean the
//! same thing and report the same problems at the same LINE:COLUMN.

use std::path::Path;

use polld_config::{Config, ConfigError};

fn problems(text: &str) -> Vec<String> {
    match Config::from_str_with_env(Path::new("w.toml"), text, |_| None) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid { problems }) => {
            problems.iter().map(ToString::to_string).collect()
        }
        Err(other) => panic!("{other}"),
    }
}

const WATCHES: &str = r#"[defaults]
min_interval = "1m"

[[watch]]
id = "a"
url = "https://example.org/a"
interval = "10s"

[[watch]]
id = "b"
url = "https://example.org/b"
[watch.cursor]
from = "json:/next"
param = "after"

[[watch]]
id = "a"
url = "ftp://example.org/c"
"#;

#[test]
fn split_and_whole_files_report_the_same_problems() {
    let split = problems(WATCHES);
    // A table after the watches makes the file parse whole.
    let whole = problems(&format!("{WATCHES}\n[telemetry]\n"));
    assert_eq!(split, whole);
    let want = [
        // The watch's interval is blamed, where it is written.
        "w.toml:7:12: interval 10s is outside [min_interval 1m, max_interval 6h]",
        "w.toml:17:6: duplicate id \"a\"; it is already used by the watch at line 5",
        "w.toml:18:7:",
    ];
    assert_eq!(split.len(), want.len(), "{split:#?}");
    for (got, want) in split.iter().zip(want) {
        assert!(got.starts_with(want), "{got} does not start with {want}");
    }
}

#[test]
fn split_files_parse_to_the_same_watches() {
    let text = WATCHES
        .replace("interval = \"10s\"", "interval = \"2m\"")
        .replace(
            "id = \"a\"\nurl = \"ftp://example.org/c\"",
            "id = \"c\"\nurl = \"https://example.org/c\"",
        );
    let split = Config::from_str_with_env(Path::new("w.toml"), &text, |_| None).unwrap();
    let whole = Config::from_str_with_env(
        Path::new("w.toml"),
        &format!("{text}\n[telemetry]\n"),
        |_| None,
    )
    .unwrap();
    assert_eq!(
        format!("{:?}", split.watches),
        format!("{:?}", whole.watches)
    );
    assert_eq!(split.watches.len(), 3);
    assert!(
        split.watches[1].cursor.is_some(),
        "[watch.cursor] belongs to its watch"
    );
}

#[test]
fn a_syntax_error_in_one_watch_is_reported_with_the_others_problems() {
    let text = "[[watch]]\nid = \"a\"\nurl = \"https://example.org/\"\n\n[[watch]]\nid = \"b\nurl = \"https://example.org/\"\n\n[[watch]]\nid = \"c\"\n";
    let problems = problems(text);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("w.toml:6:8: TOML syntax")),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("w.toml:9:1: this [[watch]] has no `url`")),
        "{problems:#?}"
    );
}

#[test]
fn problems_deep_in_a_crlf_file_with_a_bom_point_at_the_whole_file() {
    // Line 1 starts after the byte order mark: `bogus` is in column 1.
    let mut text = String::from("\u{feff}bogus = 1\r\n");
    let mut lines = 1;
    let mut want = vec!["w.toml:1:1: unknown key `bogus`".to_owned()];
    for i in 0..3000 {
        text.push_str(&format!(
            "\r\n[[watch]] # é\r\nid = \"w{i}\"\r\nurl = \"https://example.org/{i}\"\r\n"
        ));
        lines += 4;
        if i == 2345 {
            // "é" is two bytes: the column counts characters.
            text.push_str("headers = { \"é\" = \"x\", A = 1 }\r\n");
            lines += 1;
            want.push(format!(
                "w.toml:{lines}:13: \"é\" is not a valid header name"
            ));
            want.push(format!("w.toml:{lines}:28: `headers.A` must be a string"));
        }
        if i == 2999 {
            text.push_str("id = \"again\"\r\n");
            lines += 1;
            want.push(format!("w.toml:{lines}:1: TOML syntax: duplicate key"));
        }
    }
    let problems = problems(&text);
    assert_eq!(problems.len(), want.len(), "{problems:#?}");
    for (got, want) in problems.iter().zip(&want) {
        assert!(
            got.starts_with(want.as_str()),
            "{got} does not start with {want}"
        );
    }
}

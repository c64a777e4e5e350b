//! Splitting a watch list at its top-level `[[watch]]` headers, so that the
//! walker parses and frees one watch at a time.
//!
//! Why: `toml`'s span-keeping tree costs far more than the text. For 100,000
//! watches (6.5 MB of TOML) it holds ~90 MB of tokens, ~45 MB of parse events
//! and a B-tree node of ~1 KB per table at once: a 250 MB peak for a file the
//! daemon keeps in ~60 MB. Parsed piece by piece, the peak is one watch's tree.
//!
//! Splitting is only done where it cannot change the meaning: every header
//! after the first `[[watch]]` must be another `[[watch]]` or a sub-table of
//! the current one (`[watch.cursor]`, `[[watch.x]]`). Any other table after
//! the watches (a `[daemon]` at the end, say) makes the whole file parse at
//! once, as before.

use toml_parser::lexer::TokenKind;

/// Byte offsets of the top-level `[[watch]]` headers, or `None` when the
/// file must be parsed whole (no such header, or a header of another table
/// after the first one).
///
/// Headers are found with TOML's own lexer, so a line inside a multi-line
/// string or a multi-line array that looks like a header is not one.
pub(crate) fn watch_headers(text: &str) -> Option<Vec<usize>> {
    let mut starts = Vec::new();
    let mut line_start = true;
    let mut in_value = false;
    // `[` and `{` open inside the current value.
    let mut depth = 0usize;
    for token in toml_parser::Source::new(text).lex() {
        let kind = token.kind();
        match kind {
            TokenKind::Eof => break,
            TokenKind::Newline => {
                if depth == 0 {
                    in_value = false;
                    line_start = true;
                }
                continue;
            }
            TokenKind::Whitespace | TokenKind::Comment => continue,
            _ => {}
        }
        if in_value {
            match kind {
                TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => depth += 1,
                TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => {
                    depth = depth.saturating_sub(1);
                }
                _ => {}
            }
            continue;
        }
        if line_start && kind == TokenKind::LeftSquareBracket {
            let start = token.span().start();
            match header(text, start) {
                Header::Watch => starts.push(start),
                Header::WatchPart if !starts.is_empty() => {}
                Header::WatchPart | Header::Other if starts.is_empty() => {}
                _ => return None,
            }
        } else if kind == TokenKind::Equals {
            in_value = true;
            depth = 0;
        }
        line_start = false;
    }
    (!starts.is_empty()).then_some(starts)
}

#[derive(Debug, PartialEq, Eq)]
enum Header {
    /// `[[watch]]`
    Watch,
    /// `[watch.x]` or `[[watch.x]]`: part of the current watch.
    WatchPart,
    /// Anything else (including quoted keys, which are kept whole).
    Other,
}

/// Classifies the table header that starts at `start` by its text up to the
/// end of the line, less whitespace and any comment.
fn header(text: &str, start: usize) -> Header {
    let line = text[start..].split('\n').next().unwrap_or_default();
    let code = line.split('#').next().unwrap_or_default();
    let compact: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if compact == "[[watch]]" {
        Header::Watch
    } else if compact.starts_with("[watch.") || compact.starts_with("[[watch.") {
        Header::WatchPart
    } else {
        Header::Other
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::error::ConfigError;
    use crate::model::Config;

    #[test]
    fn splits_at_each_top_level_watch_header() {
        let text = "[daemon]\nlisten = \"127.0.0.1:1\"\n\n[[watch]]\nid = \"a\"\n[watch.cursor]\nfrom = \"x\"\n  [[ watch ]] # b\nid = \"b\"\n";
        let starts = watch_headers(text).unwrap();
        assert_eq!(starts.len(), 2);
        assert!(text[starts[0]..].starts_with("[[watch]]\nid = \"a\""));
        assert!(text[starts[1]..].starts_with("[[ watch ]] # b"));
    }

    #[test]
    fn headers_inside_strings_and_arrays_are_not_headers() {
        let text =
            "[[watch]]\nid = \"a\"\nbody = \"\"\"\n[[watch]]\n\"\"\"\nuntil = [\n[[watch]]\n]\n";
        assert_eq!(watch_headers(text).unwrap(), vec![0]);
    }

    #[test]
    fn another_table_after_the_watches_means_parse_whole() {
        assert_eq!(watch_headers("[[watch]]\nid = \"a\"\n[defaults]\n"), None);
        assert_eq!(watch_headers("[[watch]]\nid = \"a\"\n[\"watch\"]\n"), None);
        assert_eq!(watch_headers("[daemon]\n"), None);
        assert_eq!(watch_headers("watch = [{ id = \"a\" }]\n"), None);
    }

    /// A result as text, to compare the split and whole parses whole.
    fn render(result: &Result<Config, ConfigError>) -> String {
        match result {
            Ok(c) => format!("{:?} {:?} {:?}", c.daemon, c.defaults, c.watches),
            Err(e) => format!("error {e}"),
        }
    }

    fn syntax_problems(result: &Result<Config, ConfigError>) -> Vec<String> {
        let problems = result.as_ref().err().map_or(&[][..], ConfigError::problems);
        problems
            .iter()
            .filter(|p| p.message.starts_with("TOML syntax"))
            .map(ToString::to_string)
            .collect()
    }

    /// Checks that the split parse of `text` agrees with `toml` and with
    /// the whole parse: the same files accepted, and for those the same
    /// values and problems; for the others the same first syntax error
    /// (a split parse may then also report the other watches' problems).
    fn agrees(text: &str) {
        let path = Path::new("w.toml");
        let split = Config::from_str_with_env(path, text, |_| None);
        let whole = Config::parse_whole(path, text);
        let toml_accepts = text.parse::<toml::Table>().is_ok();
        let (split_syntax, whole_syntax) = (syntax_problems(&split), syntax_problems(&whole));
        assert_eq!(
            split_syntax.is_empty(),
            toml_accepts,
            "{text:?}\n{}",
            render(&split)
        );
        assert_eq!(
            whole_syntax.is_empty(),
            toml_accepts,
            "{text:?}\n{}",
            render(&whole)
        );
        if toml_accepts {
            assert_eq!(render(&split), render(&whole), "{text:?}");
        } else {
            assert_eq!(split_syntax[0], whole_syntax[0], "{text:?}");
        }
    }

    const A: &str = "[[watch]]\nid = \"a\"\nurl = \"https://example.org/a\"\n";
    const B: &str = "[[watch]]\nid = \"b\"\nurl = \"https://example.org/b\"\n";

    #[test]
    fn split_files_mean_what_whole_files_mean() {
        let split = [
            format!("{A}{B}bogus = 1\n"),
            format!("{A}{B}").replace('\n', "\r\n"),
            format!("{A}{B}id = \"b\r\n").replace('\n', "\r\n"),
            format!("\u{feff}{A}{B}"),
            format!("\u{feff}bogus = 1\n{A}{B}"),
            format!("\u{feff}[daemon]\nbogus = 1\n{A}{B}"),
            // Header text in strings, comments and values spanning lines.
            format!("{A}method = \"POST\"\nbody = \"\"\"\n[[watch]]\n[daemon]\n\"\"\"\n{B}"),
            format!("{A}method = \"POST\"\nbody = '''\n[[watch]]\n'''\n{B}"),
            format!("{A}method = \"POST\"\nbody = '''x''''\n{B}"),
            format!("{A}method = \"POST\"\nbody = \"\"\"x\\\"\"\"\n[[watch]]\n\"\"\"\n{B}"),
            format!("{A}# [[watch]]\n#[daemon]\n{B}"),
            format!("{A}headers = {{\n  Accept = \"x\",\n  B = \"[[watch]]\",\n}}\n{B}"),
            format!("{A}headers = {{\n  Accept = \"x\",\n[[watch]]\n}}\n{B}"),
            format!("{A}until = [\n  \"json:/a\",\n  # ]\n  [[1]],\n]\n{B}"),
            // Headers written otherwise, and a watch's sub-tables.
            format!("{A}[[ watch ]]  # b\nid = \"b\"\nurl = \"https://example.org/b\"\n"),
            format!("{A}[ [watch] ]\nid = \"b\"\n"),
            format!("{A}[[\u{a0}watch]]\nid = \"b\"\n"),
            format!(
                "{A}[watch.headers]\nAccept = \"a\"\n{B}[ watch . cursor ]\nfrom = \"link:next\"\n"
            ),
            format!("{A}headers = {{ A = \"b\" }}\n[watch.headers]\nAccept = \"a\"\n{B}"),
            format!(
                "{A}[watch.cursor]\nfrom = \"link:next\"\n[watch.cursor]\nfrom = \"link:next\"\n"
            ),
            format!("{A}cursor.from = \"link:next\"\n[watch.cursor]\nparam = \"x\"\n"),
            format!("{A}[[watch.cursor]]\nfrom = \"link:next\"\n{B}"),
            format!("{A}[[watch.x]]\ny = 1\n{B}"),
            // Keys after a [[watch]] are the watch's; `watch` defined twice.
            format!("{A}listen = \"127.0.0.1:1\"\n"),
            format!("watch = []\n{A}"),
            format!("[watch.cursor]\n{A}"),
            // Duplicates, and syntax errors at the edges of the pieces.
            format!("{B}{A}{A}id = \"c\"\n"),
            format!("{A}body = \"x\"\r{B}"),
            format!("[daemon]\nconcurrency = 3 {A}{B}"),
            format!("{A}[watch.cursor] {B}"),
            format!("[daemon]\nconcurrency = \n{A}{B}"),
            format!("{A}body = \"\"\"\n{B}"),
            A.trim_end().to_owned(),
        ];
        for text in &split {
            assert!(watch_headers(text).is_some(), "{text:?}");
            agrees(text);
        }
        let whole = [
            String::new(),
            "\n  \n".to_owned(),
            "[defaults]\ninterval = \"1m\"\n".to_owned(),
            format!("{A}[\"watch\".cursor]\nfrom = \"link:next\"\n"),
            format!("{A}[watch]\nid = \"c\"\n"),
            format!("{A}{B}[telemetry]\n"),
        ];
        for text in &whole {
            assert_eq!(watch_headers(text), None, "{text:?}");
            agrees(text);
        }
    }

    /// Watch lists put together from pieces that are easy to split wrong,
    /// some with one character inserted at random, some with CRLF.
    #[test]
    fn generated_split_files_mean_what_whole_files_mean() {
        let tops = [
            "",
            "[daemon]\nconcurrency = 3\n",
            "[defaults]\ninterval = \"1m\"\nmin_interval = \"2m\"\n",
            "[defaults]\nconnect_timeout = \"1h\"\n",
            "[daemon] # [[watch]]\nbogus = 1\n",
            "daemon.per_host = 2\n",
        ];
        let headers = ["[[watch]]\n", "[[ watch ]]  # x\n", "  [[watch]]\t\n"];
        let keys = [
            "id = \"w{i}\"\n",
            "id = \"a\"\n",
            "url = \"https://example.org/{i}\"\n",
            "url = \"ftp://x\"\n",
            "interval = \"10s\"\n",
            "schedule = \"0 * * * * *\"\n",
            "method = \"POST\"\n",
            "body = \"\"\"\n[[watch]]\nid = \"zz\"\n\"\"\"\n",
            "body = '''\n[daemon]\n'''\n",
            "# [[watch]]\n",
            "headers = {\n  Accept = \"a\",\n  X = \"[[watch]]\",\n}\n",
            "until = [\n  \"json:/a=1\",\n  # [[watch]]\n]\n",
            "cursor.from = \"link:next\"\n",
            "id = \"é{i}\"\n",
            "bogus = 1\n",
            "timeout = \"1s\"\n",
        ];
        let tables = [
            "[watch.cursor]\nfrom = \"link:next\"\n",
            "[watch.headers]\nAccept = \"c\"\n",
            "[[watch.x]]\n",
            "[telemetry]\n",
            "[watch]\n",
        ];
        let inserts = [
            "\"", "'", "=", "[", "]", "\n", "#", "{", "}", "\r", "\"\"\"",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut pick = |n: usize| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            usize::try_from(seed >> 33).unwrap() % n
        };
        for _ in 0..3000 {
            let mut text = String::new();
            if pick(10) == 0 {
                text.push('\u{feff}');
            }
            text.push_str(tops[pick(tops.len())]);
            for i in 0..pick(5) {
                text.push_str(headers[pick(headers.len())]);
                for _ in 0..pick(5) {
                    text.push_str(&keys[pick(keys.len())].replace("{i}", &i.to_string()));
                }
                if pick(3) == 0 {
                    text.push_str(tables[pick(tables.len())]);
                }
            }
            let at = pick(text.len() + 1);
            if pick(4) == 0 && text.is_char_boundary(at) {
                text.insert_str(at, inserts[pick(inserts.len())]);
            }
            if pick(3) == 0 {
                text = text.replace('\n', "\r\n");
            }
            agrees(&text);
        }
    }
}

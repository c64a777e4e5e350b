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
    use super::*;

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
}

//! The text of a watch-list file and the mapping from byte spans to
//! `LINE:COLUMN`, plus the collector of problems found while walking it.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::Problem;

/// A file's text with the byte offset of every line start.
pub(crate) struct Source<'a> {
    path: &'a Path,
    text: &'a str,
    line_starts: Vec<usize>,
    /// Where the piece being walked starts in the file: spans given to
    /// [`Source::report`] are relative to it.
    base: usize,
    problems: Vec<Problem>,
}

impl<'a> Source<'a> {
    pub(crate) fn new(path: &'a Path, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Source {
            path,
            text,
            line_starts,
            base: 0,
            problems: Vec::new(),
        }
    }

    /// 1-based line and character column of a byte offset.
    pub(crate) fn line_column(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let mut start = self.line_starts[line - 1];
        // A byte order mark is no character an editor shows: the first
        // line's columns start after it (TOML allows one at the start).
        if line == 1 && self.text.starts_with('\u{feff}') {
            start = offset.min('\u{feff}'.len_utf8());
        }
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |prefix| prefix.chars().count())
            + 1;
        (line, column)
    }

    /// Sets where the piece being walked starts in the file.
    pub(crate) fn set_base(&mut self, base: usize) {
        self.base = base;
    }

    /// A span of the piece being walked, as offsets into the whole file.
    pub(crate) fn absolute(&self, span: Range<usize>) -> Range<usize> {
        span.start + self.base..span.end + self.base
    }

    /// Records a problem found at the start of `span` (in the piece being walked).
    pub(crate) fn report(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.report_absolute(self.absolute(span), message);
    }

    /// Records a problem found at the start of `span` (in the whole file).
    pub(crate) fn report_absolute(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = self.line_column(span.start);
        self.problems.push(Problem {
            path: PathBuf::from(self.path),
            line,
            column,
            message: message.into(),
        });
    }

    /// The 1-based line of a byte offset in the whole file, for messages
    /// that point elsewhere.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.line_column(offset).0
    }

    pub(crate) fn into_problems(self) -> Vec<Problem> {
        let mut problems = self.problems;
        problems.sort_by_key(|p| (p.line, p.column));
        // A `[defaults]` value that no watch can use is blamed once, not
        // once per watch.
        problems.dedup_by(|a, b| (a.line, a.column, &a.message) == (b.line, b.column, &b.message));
        problems
    }

    pub(crate) fn has_problems(&self) -> bool {
        !self.problems.is_empty()
    }
}

/// At most this many bytes that are not UTF-8 are listed one by one (a
/// binary file given by mistake would otherwise print thousands of lines).
const MAX_ENCODING_PROBLEMS: usize = 10;

/// The problems of a file that is not valid UTF-8: each invalid byte
/// sequence at its line and character column (a bad sequence counts as one
/// character, as an editor shows it).
pub(crate) fn encoding_problems(path: &Path, bytes: &[u8]) -> Vec<Problem> {
    let utf16 = bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]);
    let (mut line, mut column) = (1, 1);
    let mut problems: Vec<Problem> = Vec::new();
    let mut more = 0;
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\n' {
                line += 1;
                column = 1;
            } else if !(line == 1 && column == 1 && c == '\u{feff}') {
                column += 1;
            }
        }
        let invalid = chunk.invalid();
        if invalid.is_empty() {
            continue;
        }
        if problems.len() == MAX_ENCODING_PROBLEMS {
            more += 1;
        } else {
            let hex: Vec<String> = invalid.iter().map(|b| format!("0x{b:02X}")).collect();
            let message = if utf16 {
                "the file is UTF-16; a watch list must be UTF-8 (convert it, e.g. with \
                 iconv -f UTF-16 -t UTF-8)"
                    .to_owned()
            } else {
                let (what, verb) = if hex.len() == 1 {
                    ("byte", "is")
                } else {
                    ("bytes", "are")
                };
                format!(
                    "{what} {} {verb} not UTF-8; a watch list must be UTF-8 (convert it, e.g. \
                     with iconv -f LATIN1 -t UTF-8)",
                    hex.join(" ")
                )
            };
            problems.push(Problem {
                path: PathBuf::from(path),
                line,
                column,
                message,
            });
            if utf16 {
                return problems;
            }
        }
        column += 1;
    }
    if more > 0
        && let Some(last) = problems.last_mut()
    {
        last.message
            .push_str(&format!(" ({more} more places further on are not listed)"));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let source = Source::new(Path::new("f"), "ab\nçd = 1\n");
        assert_eq!(source.line_column(0), (1, 1));
        assert_eq!(source.line_column(3), (2, 1));
        // 'ç' is two bytes: the '=' after "çd " is the 4th character.
        assert_eq!(source.line_column(7), (2, 4));
    }

    fn encoding(bytes: &[u8]) -> Vec<String> {
        encoding_problems(Path::new("f"), bytes)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn bytes_that_are_not_utf8_are_named_at_their_line_and_column() {
        // Latin-1 'é' (0xE9) in a URL on line 3, after a BOM and CRLF lines;
        // a truncated 3-byte sequence on line 4, after a 2-byte 'ç'.
        let text = b"\xef\xbb\xbf[[watch]]\r\nid = \"a\"\r\nurl = \"https://caf\xe9.example/\"\r\nx = \"\xc3\xa7\xe2\x82\"\n";
        assert_eq!(
            encoding(text),
            [
                "f:3:19: byte 0xE9 is not UTF-8; a watch list must be UTF-8 (convert it, e.g. with iconv -f LATIN1 -t UTF-8)",
                "f:4:7: bytes 0xE2 0x82 are not UTF-8; a watch list must be UTF-8 (convert it, e.g. with iconv -f LATIN1 -t UTF-8)",
            ]
        );
    }

    #[test]
    fn a_binary_or_utf16_file_gets_a_short_list() {
        let binary = [0xffu8; 1000];
        let problems = encoding(&binary);
        assert_eq!(problems.len(), MAX_ENCODING_PROBLEMS);
        assert!(problems[9].starts_with("f:1:10: byte 0xFF"), "{problems:?}");
        assert!(
            problems[9].ends_with("(990 more places further on are not listed)"),
            "{problems:?}"
        );
        let utf16: Vec<u8> = "\u{feff}[daemon]\n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(
            encoding(&utf16),
            [
                "f:1:1: the file is UTF-16; a watch list must be UTF-8 (convert it, e.g. with iconv -f UTF-16 -t UTF-8)"
            ]
        );
    }

    #[test]
    fn a_byte_order_mark_takes_no_column() {
        let source = Source::new(Path::new("f"), "\u{feff}ab = 1\n");
        // The BOM is 3 bytes; editors put the `a` after it in column 1.
        assert_eq!(source.line_column(3), (1, 1));
        assert_eq!(source.line_column(6), (1, 4));
        assert_eq!(source.line_column(0), (1, 1));
    }
}

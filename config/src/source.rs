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

    #[test]
    fn a_byte_order_mark_takes_no_column() {
        let source = Source::new(Path::new("f"), "\u{feff}ab = 1\n");
        // The BOM is 3 bytes; editors put the `a` after it in column 1.
        assert_eq!(source.line_column(3), (1, 1));
        assert_eq!(source.line_column(6), (1, 4));
        assert_eq!(source.line_column(0), (1, 1));
    }
}

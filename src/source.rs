//! Source files loaded during a compilation, and spans into them.

use std::path::PathBuf;
use std::sync::Arc;

/// Index of a loaded source file in [`Sources`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u32);

/// A byte range in one source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Span {
    /// The file the range is in.
    pub file: FileId,
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

impl Span {
    /// A span covering `start..end` of `file`.
    pub fn new(file: FileId, start: usize, end: usize) -> Span {
        Span {
            file,
            start: start as u32,
            end: end as u32,
        }
    }

    /// The smallest span covering both (which must be in the same file).
    pub fn to(self, other: Span) -> Span {
        Span {
            file: self.file,
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }

    /// The span as a miette span.
    pub fn miette(self) -> miette::SourceSpan {
        (self.start as usize, (self.end - self.start) as usize).into()
    }
}

/// One source file: its display name, its location (if on disk) and its text.
#[derive(Debug)]
pub struct SourceFile {
    /// The name shown in diagnostics (`pipelines/sst2.rkd`, `std::bert`).
    pub name: String,
    /// The canonical path for files on disk; `None` for the embedded stdlib.
    pub path: Option<PathBuf>,
    /// The text, shared with diagnostics.
    pub text: Arc<String>,
}

/// The UTF-8 byte-order mark.
const BOM: char = '\u{feff}';

/// All source files of one compilation.
#[derive(Debug, Default)]
pub struct Sources {
    files: Vec<SourceFile>,
}

impl Sources {
    /// Every file, in the order they were added (the pipeline first).
    pub fn files(&self) -> impl Iterator<Item = &SourceFile> {
        self.files.iter()
    }

    /// Adds a file and returns its id. A leading byte-order mark (which some Windows editors
    /// write) is dropped, so spans and columns count from the first character after it.
    pub fn add(&mut self, name: String, path: Option<PathBuf>, mut text: String) -> FileId {
        if text.starts_with(BOM) {
            text.drain(..BOM.len_utf8());
        }
        self.files.push(SourceFile {
            name,
            path,
            text: Arc::new(text),
        });
        FileId(self.files.len() as u32 - 1)
    }

    /// The file with this id.
    pub fn get(&self, id: FileId) -> &SourceFile {
        &self.files[id.0 as usize]
    }

    /// The text a span covers.
    pub fn slice(&self, span: Span) -> &str {
        &self.get(span.file).text[span.start as usize..span.end as usize]
    }

    /// 1-based line and column of a span's start.
    pub fn line_col(&self, span: Span) -> (usize, usize) {
        let text = &self.get(span.file).text[..span.start as usize];
        let line = text.matches('\n').count() + 1;
        let col = text.len() - text.rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, col)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leading_byte_order_mark_is_dropped_and_spans_count_without_it() {
        let mut sources = Sources::default();
        let id = sources.add("f.rkd".into(), None, "\u{feff}let x = 1\nlet y = \u{feff}".into());
        assert_eq!(*sources.get(id).text, "let x = 1\nlet y = \u{feff}");
        let y = Span::new(id, 14, 15);
        assert_eq!(sources.slice(y), "y");
        assert_eq!(sources.line_col(y), (2, 5));
    }
}

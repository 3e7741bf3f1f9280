//! The one error type of the data loaders: a message, and the file and line it is about.

use std::fmt;
use std::path::{Path, PathBuf};

/// A data loading or batching failure; its `Display` names the file and line where relevant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataError {
    /// The file (or directory) the problem is in, when there is one.
    pub path: Option<PathBuf>,
    /// The 1-based line number in `path`, when the problem is on one line.
    pub line: Option<usize>,
    /// What is wrong, in words.
    pub message: String,
    /// A failure of the machine rather than of the data (an I/O error other than a missing or
    /// unreadable file, a tensor that could not be built): running again may succeed.
    pub transient: bool,
}

impl DataError {
    /// A problem that is not about one file.
    pub fn new(message: impl Into<String>) -> Self {
        DataError {
            path: None,
            line: None,
            message: message.into(),
            transient: false,
        }
    }

    /// A problem with a whole file or directory.
    pub fn file(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        DataError {
            path: Some(path.as_ref().to_path_buf()),
            line: None,
            message: message.into(),
            transient: false,
        }
    }

    /// A problem on one line (1-based) of a file.
    pub fn at(path: impl AsRef<Path>, line: usize, message: impl Into<String>) -> Self {
        DataError {
            path: Some(path.as_ref().to_path_buf()),
            line: Some(line),
            message: message.into(),
            transient: false,
        }
    }

    /// `Ok` when `dir` is a directory; otherwise an error saying whether it is missing or not a
    /// directory, and what is expected there (`expects`, shown in parentheses).
    pub fn unless_dir(dir: &Path, expects: &str) -> Result<(), DataError> {
        if dir.is_dir() {
            return Ok(());
        }
        let why = match dir.exists() {
            true => "not a directory",
            false => "missing directory",
        };
        Err(DataError::file(dir, format!("{why} ({expects})")))
    }

    /// An I/O failure on `path`, with a plain-words reason for the common cases.
    pub fn io(path: impl AsRef<Path>, err: &std::io::Error) -> Self {
        let (message, transient) = match err.kind() {
            std::io::ErrorKind::NotFound => ("missing file (not found)".to_string(), false),
            std::io::ErrorKind::PermissionDenied => ("cannot read it (permission denied)".to_string(), false),
            _ => (format!("cannot read it: {err}"), true),
        };
        DataError {
            transient,
            ..DataError::file(path, message)
        }
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.path, self.line) {
            (Some(p), Some(l)) => write!(f, "{}:{}: {}", p.display(), l, self.message),
            (Some(p), None) => write!(f, "{}: {}", p.display(), self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for DataError {}

impl From<candle_core::Error> for DataError {
    fn from(err: candle_core::Error) -> Self {
        DataError {
            transient: true,
            ..DataError::new(format!("building a batch tensor failed: {err}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_and_line() {
        let e = DataError::at("data/train.tsv", 7, "no tab");
        assert_eq!(e.to_string(), "data/train.tsv:7: no tab");
        let e = DataError::file("x.png", "cannot decode");
        assert_eq!(e.to_string(), "x.png: cannot decode");
        assert_eq!(DataError::new("plain").to_string(), "plain");
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(DataError::io("a/dev.tsv", &io)
            .to_string()
            .contains("a/dev.tsv: missing file"));
    }
}

//! The cells of a table row as a reader hands them on, and where a row is in its file.

use std::path::Path;

use crate::data::error::DataError;

/// One cell of a row, as the file typed it (CSV and TSV cells are always text).
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// A JSON `null` or a Parquet null.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer of any width.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// Text.
    Text(String),
    /// Raw bytes (a Parquet binary column).
    Bytes(Vec<u8>),
    /// An image as the Hugging Face Hub stores it: a struct of encoded `bytes` and/or a `path`.
    Image {
        /// The encoded file (PNG, JPEG), when the table embeds it.
        bytes: Option<Vec<u8>>,
        /// The image's file name or path.
        path: Option<String>,
    },
    /// Anything else (a list, a date, a nested record): named for the error that follows.
    Other(&'static str),
}

impl Cell {
    /// What the cell is, for an error message: `an integer (3)`, `a float (1.5)`, `null`.
    pub fn describe(&self) -> String {
        match self {
            Cell::Null => "null".to_string(),
            Cell::Bool(b) => format!("a boolean ({b})"),
            Cell::Int(i) => format!("an integer ({i})"),
            Cell::Float(x) => format!("a float ({x})"),
            Cell::Text(s) if s.chars().count() > 40 => {
                format!("text (\"{}...\")", s.chars().take(40).collect::<String>())
            }
            Cell::Text(s) => format!("text (\"{s}\")"),
            Cell::Bytes(b) => format!("{} bytes", b.len()),
            Cell::Image { .. } => "an image struct".to_string(),
            Cell::Other(what) => format!("a {what}"),
        }
    }
}

/// Where a row is in its file (1-based): a line of a text file, or a row of a Parquet file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A line of a CSV, TSV or JSON Lines file.
    Line(usize),
    /// A row of a Parquet file.
    Row(usize),
}

impl Place {
    /// An error about this row of `path`.
    pub fn error(self, path: &Path, message: impl Into<String>) -> DataError {
        match self {
            Place::Line(n) => DataError::at(path, n, message),
            Place::Row(n) => DataError::file(path, format!("row {n}: {}", message.into())),
        }
    }
}

/// What to do after a row: read on, or stop (a check that has seen enough).
pub type Flow = std::ops::ControlFlow<()>;

/// The positions of `columns` among a header's names (`have`); a missing one is an error at
/// the header's line naming the columns there are, and so is one the header names twice (which
/// of the two is meant cannot be known).
pub fn column_positions(path: &Path, have: &[&str], columns: &[&str]) -> Result<Vec<usize>, DataError> {
    columns
        .iter()
        .map(|name| {
            let mut at = have.iter().enumerate().filter(|(_, h)| *h == name).map(|(i, _)| i);
            match (at.next(), at.next()) {
                (Some(i), None) => Ok(i),
                (Some(_), Some(_)) => Err(Place::Line(1).error(
                    path,
                    format!("the header names the column `{name}` more than once: rename the others"),
                )),
                (None, _) => Err(no_column(path, Place::Line(1), name, have)),
            }
        })
        .collect()
}

/// The error for a column the file does not have, listing the ones it has.
pub fn no_column(path: &Path, place: Place, name: &str, have: &[&str]) -> DataError {
    place.error(path, format!("no column `{name}`; the columns are {}", have.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_names_its_line_or_its_row() {
        let p = Path::new("t/train.parquet");
        assert_eq!(Place::Row(7).error(p, "bad").to_string(), "t/train.parquet: row 7: bad");
        assert_eq!(Place::Line(3).error(p, "bad").to_string(), "t/train.parquet:3: bad");
    }
}

//! Why a report could not be made.

use std::path::PathBuf;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The data has no rows.
    #[error("the report has no rows: there is no model to report on")]
    NoRows,
    /// The baseline names no row.
    #[error("the baseline `{baseline}` is not one of the report's rows ({})", rows.join(", "))]
    UnknownBaseline {
        /// The baseline asked for.
        baseline: String,
        /// The rows there are.
        rows: Vec<String>,
    },
    /// Two rows have the same name.
    #[error("two rows of the report are named `{0}`")]
    DuplicateRow(String),
    /// A number is out of its range.
    #[error("`{field}` of `{row}` is {value}, expected {expected}")]
    InvalidValue {
        /// The row (or `(report)`).
        row: String,
        /// The field.
        field: &'static str,
        /// The value found.
        value: f64,
        /// What was expected.
        expected: &'static str,
    },
    /// The rows' quality is neither accuracy nor Pearson's r.
    #[error("the report's quality is `{0}`, expected `accuracy` or `pearson`")]
    UnknownQuality(String),
    /// The JSON is not report data.
    #[error("not report data: {0}")]
    Parse(String),
    /// Drawing or encoding a plot failed.
    #[error("plotting failed: {0}")]
    Plot(String),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

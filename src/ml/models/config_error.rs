//! Why a `config.json` cannot be used.

use std::path::PathBuf;

/// An error reading, parsing or checking a model configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// There is no such file.
    #[error("{} is missing", .0.display())]
    Missing(PathBuf),
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An error in a named file.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: Box<ConfigError>,
    },
    /// Not JSON, or a field of the wrong type.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// No `model_type` field.
    #[error("config.json has no `model_type`")]
    NoModelType,
    /// A `model_type` this crate has no model for.
    #[error("model_type `{0}` is not supported (supported: bert, vit)")]
    UnsupportedModelType(String),
    /// A malformed `quantization_config`.
    #[error("quantization_config: {0}")]
    Quantization(serde_json::Error),
    /// Fields that no model can have together (the message names them).
    #[error("{0}")]
    Invalid(String),
}

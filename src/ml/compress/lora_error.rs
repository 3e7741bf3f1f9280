//! Why LoRA adapters cannot be attached, merged, saved or read.

use std::path::PathBuf;

/// An error of the LoRA code.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// A LoRA setting out of range, or an adapter kind this crate cannot merge.
    #[error("{0}")]
    Unsupported(String),
    /// Adapter and model do not fit together (targets, shapes, missing weights).
    #[error("{0}")]
    Mismatch(String),
    /// A tensor operation on one module failed.
    #[error("{module}: {source}")]
    Tensor {
        /// The module.
        module: String,
        /// The tensor error.
        source: candle_core::Error,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O, JSON or tensor-format error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An adapter file this crate cannot use.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: Box<LoraError>,
    },
}

impl LoraError {
    /// A file error at `path`.
    pub fn file(path: &std::path::Path, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        LoraError::File {
            path: path.to_path_buf(),
            source: source.into(),
        }
    }

    /// A tensor error of `module`.
    pub fn tensor(module: &str, source: candle_core::Error) -> Self {
        LoraError::Tensor {
            module: module.to_string(),
            source,
        }
    }
}

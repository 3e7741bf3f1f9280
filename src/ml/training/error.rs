//! Why a training run stopped before its end.

/// Why training stopped early.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The interrupt check said stop.
    #[error("interrupted")]
    Interrupted,
    /// Something failed (a batch, the loss, validation).
    #[error("{0}")]
    Failed(String),
    /// The checkpoint to resume from does not fit this run (nothing was changed: the caller may
    /// start afresh).
    #[error("{0}")]
    Unusable(String),
    /// The run cannot succeed as it is set up (the loss became NaN or infinite, the training split
    /// gives no batches): the same settings fail again, so this is never retried.
    #[error("{0}")]
    Invalid(String),
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError::Failed(e.to_string())
    }
}

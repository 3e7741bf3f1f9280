//! How a stage's op fails: interrupted by the user, or failed for a reason said in words.

/// The error of an op.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OpError {
    /// The run was interrupted (Ctrl-C, SIGTERM, scancel): nothing is stored, nothing failed.
    #[error("interrupted")]
    Interrupted,
    /// The op failed; the message says why and what to do. A retry may succeed (out of memory,
    /// a lost node, a file system that hiccuped): `--retries` reruns it from its checkpoint.
    #[error("{0}")]
    Failed(String),
    /// The op failed in a way that fails the same way again (bad input data, a model that does
    /// not fit the data, a loss that diverges): never retried.
    #[error("{0}")]
    Invalid(String),
}

impl OpError {
    /// Whether running the stage again could succeed (`--retries`): not for an interruption,
    /// not for an [`OpError::Invalid`] failure.
    pub fn retryable(&self) -> bool {
        matches!(self, OpError::Failed(_))
    }

    /// Puts `what` before a failure's message ("fine-tuning: …"); an interruption stays one.
    pub fn context(self, what: &str) -> OpError {
        match self {
            OpError::Failed(e) => OpError::Failed(format!("{what}: {e}")),
            OpError::Invalid(e) => OpError::Invalid(format!("{what}: {e}")),
            interrupted => interrupted,
        }
    }
}

impl From<String> for OpError {
    fn from(e: String) -> OpError {
        OpError::Failed(e)
    }
}

impl From<&str> for OpError {
    fn from(e: &str) -> OpError {
        OpError::Failed(e.to_string())
    }
}

// Bad configurations, data, adapters and arguments fail the same way on every attempt.
impl From<crate::ml::ConfigError> for OpError {
    fn from(e: crate::ml::ConfigError) -> OpError {
        OpError::Invalid(e.to_string())
    }
}

impl From<crate::ml::CheckpointError> for OpError {
    fn from(e: crate::ml::CheckpointError) -> OpError {
        OpError::Failed(e.to_string())
    }
}

impl From<crate::data::DataError> for OpError {
    fn from(e: crate::data::DataError) -> OpError {
        if e.transient {
            OpError::Failed(e.to_string())
        } else {
            OpError::Invalid(e.to_string())
        }
    }
}

impl From<crate::ml::lora::LoraError> for OpError {
    fn from(e: crate::ml::lora::LoraError) -> OpError {
        OpError::Invalid(e.to_string())
    }
}

impl From<candle_core::Error> for OpError {
    fn from(e: candle_core::Error) -> OpError {
        OpError::Failed(e.to_string())
    }
}

impl From<crate::ml::train::TrainError> for OpError {
    fn from(e: crate::ml::train::TrainError) -> OpError {
        match e {
            crate::ml::train::TrainError::Interrupted => OpError::Interrupted,
            crate::ml::train::TrainError::Failed(m) | crate::ml::train::TrainError::Unusable(m) => OpError::Failed(m),
            crate::ml::train::TrainError::Invalid(m) => OpError::Invalid(m),
        }
    }
}

impl From<OpError> for crate::ml::train::TrainError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Interrupted => crate::ml::train::TrainError::Interrupted,
            OpError::Failed(m) | OpError::Invalid(m) => crate::ml::train::TrainError::Failed(m),
        }
    }
}

impl From<crate::registry::ArgError> for OpError {
    fn from(e: crate::registry::ArgError) -> OpError {
        OpError::Invalid(e.to_string())
    }
}

/// `Err(Interrupted)` once the run was interrupted.
pub fn check_interrupted(cancel: &crate::ops::cancel::Cancel) -> Result<(), OpError> {
    if cancel.is_interrupted() {
        Err(OpError::Interrupted)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_is_added_to_failures_only() {
        assert_eq!(
            OpError::from("no data").context("fine-tuning").to_string(),
            "fine-tuning: no data"
        );
        assert_eq!(OpError::Interrupted.context("fine-tuning"), OpError::Interrupted);
    }
}

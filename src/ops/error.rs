//! How a stage's op fails: interrupted by the user, or failed for a reason said in words.

/// The error of an op.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OpError {
    /// The run was interrupted (Ctrl-C, SIGTERM, scancel): nothing is stored, nothing failed.
    #[error("interrupted")]
    Interrupted,
    /// The op failed; the message says why and what to do.
    #[error("{0}")]
    Failed(String),
}

impl OpError {
    /// Puts `what` before a failure's message ("fine-tuning: …"); an interruption stays one.
    pub fn context(self, what: &str) -> OpError {
        match self {
            OpError::Failed(e) => OpError::Failed(format!("{what}: {e}")),
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

impl From<crate::ml::ConfigError> for OpError {
    fn from(e: crate::ml::ConfigError) -> OpError {
        OpError::Failed(e.to_string())
    }
}

impl From<crate::ml::CheckpointError> for OpError {
    fn from(e: crate::ml::CheckpointError) -> OpError {
        OpError::Failed(e.to_string())
    }
}

impl From<crate::data::DataError> for OpError {
    fn from(e: crate::data::DataError) -> OpError {
        OpError::Failed(e.to_string())
    }
}

impl From<crate::ml::lora::LoraError> for OpError {
    fn from(e: crate::ml::lora::LoraError) -> OpError {
        OpError::Failed(e.to_string())
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
            crate::ml::train::TrainError::Failed(m) => OpError::Failed(m),
        }
    }
}

impl From<OpError> for crate::ml::train::TrainError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Interrupted => crate::ml::train::TrainError::Interrupted,
            OpError::Failed(m) => crate::ml::train::TrainError::Failed(m),
        }
    }
}

impl From<crate::registry::ArgError> for OpError {
    fn from(e: crate::registry::ArgError) -> OpError {
        OpError::Failed(e.to_string())
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

//! What a training run did: its loss curve, its epochs and the epoch whose weights it kept.

use serde::{Deserialize, Serialize};

/// One optimiser step, as recorded in the loss curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Global step, from 1.
    pub step: usize,
    /// Epoch, from 1.
    pub epoch: usize,
    /// The batch's loss.
    pub loss: f64,
    /// The learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    #[serde(with = "non_finite")]
    pub grad_norm: f64,
}

/// The end of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch, from 1.
    pub epoch: usize,
    /// Global steps done at its end.
    pub steps: usize,
    /// Mean training loss over its steps.
    pub train_loss: f64,
    /// Validation accuracy, when there is validation.
    #[serde(with = "non_finite::option")]
    pub val_accuracy: Option<f64>,
    /// Validation loss, when there is validation.
    #[serde(with = "non_finite::option")]
    pub val_loss: Option<f64>,
}

/// Validation result after an epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Validation {
    /// Accuracy (what the best checkpoint is chosen by).
    pub accuracy: f64,
    /// Mean loss.
    pub loss: f64,
}

/// What a training run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Steps the schedule was planned for.
    pub planned_steps: usize,
    /// Warm-up steps of the schedule.
    pub warmup_steps: usize,
    /// Every step (the loss curve).
    pub steps: Vec<StepRecord>,
    /// Every epoch (the last one may be partial when `max_steps` stopped it).
    pub epochs: Vec<EpochRecord>,
    /// The epoch whose weights were kept (best validation accuracy; the last without validation).
    pub best_epoch: Option<usize>,
}

impl TrainReport {
    /// Optimiser steps taken.
    pub fn total_steps(&self) -> usize {
        self.steps.len()
    }

    /// Whether training reduced the loss: the mean of the last tenth of the steps at least 5%
    /// below that of the first tenth (`None` with fewer than 4 steps).
    pub fn loss_fell(&self) -> Option<bool> {
        // The mean loss of the first and of the last tenth of the steps (at least one each).
        let n = self.steps.len();
        if n < 4 {
            return None;
        }
        let k = (n / 10).max(1);
        let mean = |s: &[StepRecord]| s.iter().map(|r| r.loss).sum::<f64>() / s.len() as f64;
        let (first, last) = (mean(&self.steps[..k]), mean(&self.steps[n - k..]));
        Some(last < 0.95 * first)
    }

    /// Whether the kept weights were chosen on a split (the epochs were scored); without one
    /// (`select: "last"`, no validation split) the last epoch's are kept, chosen on nothing.
    pub fn selected(&self) -> bool {
        self.best_accuracy().is_some()
    }

    /// Validation accuracy of the kept weights.
    pub fn best_accuracy(&self) -> Option<f64> {
        let best = self.best_epoch?;
        self.epochs.iter().find(|e| e.epoch == best)?.val_accuracy
    }

    /// Mean training loss of the last epoch.
    pub fn final_loss(&self) -> Option<f64> {
        self.epochs.last().map(|e| e.train_loss)
    }
}

/// f64 values that may be infinite or NaN (an f16 step whose gradients overflowed has an infinite
/// norm): JSON has no such numbers, so they are written as the strings "inf", "-inf" and "nan"
/// and read back as the same values (a checkpoint's loss curve must come back exactly).
mod non_finite {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Finite(f64),
        Word(String),
    }

    fn word(x: f64) -> &'static str {
        if x.is_nan() {
            "nan"
        } else if x > 0.0 {
            "inf"
        } else {
            "-inf"
        }
    }

    fn read<E: Error>(n: Number) -> Result<f64, E> {
        match n {
            Number::Finite(x) => Ok(x),
            Number::Word(w) => match w.as_str() {
                "nan" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                other => Err(E::custom(format!(
                    "expected a number, \"inf\", \"-inf\" or \"nan\", got \"{other}\""
                ))),
            },
        }
    }

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else {
            s.serialize_str(word(*x))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        read(Number::deserialize(d)?)
    }

    /// The same for an optional value (absent stays `null`).
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            match x {
                Some(x) => super::serialize(x, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
            Option::<Number>::deserialize(d)?.map(read).transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infinite_and_nan_values_survive_json_exactly() {
        let steps = vec![
            StepRecord {
                step: 1,
                epoch: 1,
                loss: 0.1 + 0.2,
                lr: 1e-4,
                grad_norm: f64::INFINITY,
            },
            StepRecord {
                step: 2,
                epoch: 1,
                loss: 0.7,
                lr: 2e-4,
                grad_norm: 1.0 / 3.0,
            },
        ];
        let epoch = EpochRecord {
            epoch: 1,
            steps: 2,
            train_loss: 0.5,
            val_accuracy: None,
            val_loss: Some(f64::NAN),
        };
        let json = serde_json::to_string(&(&steps, &epoch)).unwrap();
        assert!(json.contains("\"inf\"") && json.contains("\"nan\""), "{json}");
        let (back, e): (Vec<StepRecord>, EpochRecord) = serde_json::from_str(&json).unwrap();
        assert_eq!(back, steps);
        assert_eq!(e.val_accuracy, None);
        assert!(e.val_loss.unwrap().is_nan());
        assert!(serde_json::from_str::<StepRecord>(r#"{"step":1,"epoch":1,"loss":1,"lr":1,"grad_norm":"x"}"#).is_err());
    }
}

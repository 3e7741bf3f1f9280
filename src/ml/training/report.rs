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
    pub val_accuracy: Option<f64>,
    /// Validation loss, when there is validation.
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

//! What a training checkpoint holds, and how the loop writes and reads one.
//!
//! A checkpoint is a directory with two files: `tensors.safetensors` (the trained variables,
//! AdamW's moments and, when an earlier epoch is the best so far, that epoch's weights) and
//! `state.json` (where the loop stood: step, epoch, batch within the epoch, the partial epoch's
//! loss sum, the optimizer's step count, the loss scale, the loss curve so far and the op's own
//! running tallies). The random streams need no saving: dropout draws from the seed and the step,
//! the data order from the seed and the epoch, so the position is the whole of their state.
//! Where the directory lives and how it is written atomically is the caller's business.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::error::TrainError;
use super::loss_scale::LossScale;
use super::optim::AdamW;
use super::report::TrainReport;

/// The checkpoint's description of where the loop stood.
pub const STATE_JSON: &str = "state.json";
/// The checkpoint's tensors.
pub const TENSORS: &str = "tensors.safetensors";
/// Bumped when the layout changes: an older checkpoint is then not resumed from.
const FORMAT: u32 = 1;

/// The best epoch so far: its validation accuracy and a copy of its weights (by variable name).
pub type BestWeights = (f64, BTreeMap<String, Tensor>);

/// Where in the run the loop stands after a step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Optimiser steps taken.
    pub step: usize,
    /// The 0-based epoch being trained.
    pub epoch: usize,
    /// Batches of that epoch already trained on.
    pub batch: usize,
    /// Sum of those batches' losses (the epoch's mean training loss is taken from it).
    pub loss_sum: f64,
}

/// The JSON half of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateFile {
    format: u32,
    position: Position,
    planned_steps: usize,
    batches_per_epoch: usize,
    optimizer_steps: u64,
    loss_scale: Option<LossScale>,
    best_accuracy: Option<f64>,
    vars: Vec<String>,
    report: TrainReport,
    extra: serde_json::Value,
}

/// The loop's state at a checkpoint, borrowed from the running loop (nothing is copied until it
/// is written).
pub struct Snapshot<'a> {
    /// Where the loop stands.
    pub position: Position,
    /// Steps the schedule was planned for.
    pub planned_steps: usize,
    /// Batches in each epoch.
    pub batches_per_epoch: usize,
    /// The loss curve and epochs so far.
    pub report: &'a TrainReport,
    pub(super) optimizer: &'a AdamW,
    pub(super) loss_scale: Option<&'a LossScale>,
    pub(super) best: Option<&'a BestWeights>,
    pub(super) vars: &'a [(String, Var)],
}

impl Snapshot<'_> {
    /// Writes the checkpoint's two files into `dir` (which exists); `extra` is the op's own state.
    pub fn save(&self, dir: &Path, extra: serde_json::Value) -> Result<(), TrainError> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (name, var) in self.vars {
            tensors.insert(format!("var/{name}"), var.as_tensor().clone());
        }
        for (name, m, v) in self.optimizer.moments()? {
            tensors.insert(format!("m/{name}"), m);
            tensors.insert(format!("v/{name}"), v);
        }
        if let Some((_, weights)) = self.best {
            for (name, t) in weights {
                tensors.insert(format!("best/{name}"), t.clone());
            }
        }
        candle_core::safetensors::save(&tensors, dir.join(TENSORS))?;
        let state = StateFile {
            format: FORMAT,
            position: self.position,
            planned_steps: self.planned_steps,
            batches_per_epoch: self.batches_per_epoch,
            optimizer_steps: self.optimizer.steps(),
            loss_scale: self.loss_scale.cloned(),
            best_accuracy: self.best.map(|(a, _)| *a),
            vars: self.vars.iter().map(|(n, _)| n.clone()).collect(),
            report: self.report.clone(),
            extra,
        };
        let json = serde_json::to_vec(&state).map_err(|e| TrainError::Failed(e.to_string()))?;
        std::fs::write(dir.join(STATE_JSON), json)
            .map_err(|e| TrainError::Failed(format!("{}: {e}", dir.join(STATE_JSON).display())))
    }
}

/// A checkpoint read back, ready for [`super::train::train`] to continue from.
pub struct TrainState {
    /// Where the loop stood.
    pub position: Position,
    /// The op's own state, as it saved it.
    pub extra: serde_json::Value,
    pub(super) planned_steps: usize,
    pub(super) batches_per_epoch: usize,
    pub(super) optimizer_steps: u64,
    pub(super) loss_scale: Option<LossScale>,
    pub(super) best_accuracy: Option<f64>,
    pub(super) vars: Vec<String>,
    pub(super) report: TrainReport,
    pub(super) tensors: HashMap<String, Tensor>,
}

impl std::fmt::Debug for TrainState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainState")
            .field("position", &self.position)
            .field("planned_steps", &self.planned_steps)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl TrainState {
    /// Reads a checkpoint directory written by [`Snapshot::save`] (tensors onto the CPU; the loop
    /// moves each to its variable's device).
    pub fn load(dir: &Path) -> Result<TrainState, TrainError> {
        let path = dir.join(STATE_JSON);
        let bytes = std::fs::read(&path).map_err(|e| TrainError::Failed(format!("{}: {e}", path.display())))?;
        let state: StateFile = serde_json::from_slice(&bytes)
            .map_err(|e| TrainError::Failed(format!("{}: not a training checkpoint: {e}", path.display())))?;
        if state.format != FORMAT {
            return Err(TrainError::Failed(format!(
                "{}: checkpoint format {} (this rkd writes {FORMAT})",
                path.display(),
                state.format
            )));
        }
        let tensors = candle_core::safetensors::load(dir.join(TENSORS), &Device::Cpu)?;
        Ok(TrainState {
            position: state.position,
            extra: state.extra,
            planned_steps: state.planned_steps,
            batches_per_epoch: state.batches_per_epoch,
            optimizer_steps: state.optimizer_steps,
            loss_scale: state.loss_scale,
            best_accuracy: state.best_accuracy,
            vars: state.vars,
            report: state.report,
            tensors,
        })
    }

    /// The tensor saved under `group/name`.
    pub(super) fn tensor(&self, group: &str, name: &str) -> Option<&Tensor> {
        self.tensors.get(&format!("{group}/{name}"))
    }

    /// The best epoch's weights and accuracy, when an earlier epoch was the best so far.
    pub(super) fn best(&self) -> Option<BestWeights> {
        let accuracy = self.best_accuracy?;
        let weights = self
            .tensors
            .iter()
            .filter_map(|(k, t)| k.strip_prefix("best/").map(|n| (n.to_string(), t.clone())))
            .collect();
        Some((accuracy, weights))
    }

    /// Checks that this checkpoint belongs to a run of this shape: the same planned steps, batches
    /// per epoch and trained variables (a stage's key fixes them; a mismatch means the checkpoint
    /// is not this run's).
    pub(super) fn check_fits(
        &self,
        planned: usize,
        per_epoch: usize,
        vars: &[(String, Var)],
    ) -> Result<(), TrainError> {
        let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
        let saved: Vec<&str> = self.vars.iter().map(String::as_str).collect();
        let problem = if self.planned_steps != planned {
            Some(format!(
                "it was planned for {} steps, this run for {planned}",
                self.planned_steps
            ))
        } else if self.batches_per_epoch != per_epoch {
            Some(format!(
                "it has {} batches per epoch, this run {per_epoch}",
                self.batches_per_epoch
            ))
        } else if saved != names {
            Some("it trains other variables".to_string())
        } else {
            None
        };
        match problem {
            Some(p) => Err(TrainError::Unusable(format!(
                "the checkpoint does not fit this run: {p}"
            ))),
            None => Ok(()),
        }
    }
}

/// Where checkpoints go: the training loop tells it where it stands after every step (a place to
/// keep a progress file), asks whether a checkpoint is due, and hands over a [`Snapshot`] to write.
pub trait Checkpointer {
    /// After every step: whether to write a checkpoint now. `planned_steps` and `epochs` are
    /// the run's totals.
    fn after_step(&mut self, at: &Position, planned_steps: usize, epochs: usize) -> bool;
    /// Writes one.
    fn save(&mut self, snapshot: &Snapshot) -> Result<(), TrainError>;
}

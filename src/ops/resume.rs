//! How a training stage checkpoints and resumes: when checkpoints are written (every
//! `checkpoint_every` steps, every `checkpoint_minutes`, and when the run is interrupted), where
//! (the store's checkpoint folder of the stage key), and which one a rerun trusts (the newest that
//! passes its hash check; one that fails it is discarded with a warning).

use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use super::progress::Progress;
use super::OpError;
use crate::ml::resume::{Checkpointer, Position, Snapshot, TrainState};
use crate::ml::train::TrainError;
use crate::store::checkpoints::{StageCheckpoints, StageProgress};

/// How often the progress file of a running stage is rewritten, at most.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// When a training stage writes checkpoints (its `checkpoint_every` and `checkpoint_minutes`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Every this many optimiser steps.
    pub every_steps: Option<usize>,
    /// Every this many minutes of training (0: never by time).
    pub minutes: f64,
}

impl Default for Policy {
    /// No step count; every 10 minutes.
    fn default() -> Self {
        Policy {
            every_steps: None,
            minutes: 10.0,
        }
    }
}

/// The op's own state that a checkpoint keeps beside the loop's (running tallies of the losses
/// the op reports): saved with each checkpoint, restored before training goes on.
pub struct OpState<'a> {
    /// The state now.
    pub save: &'a dyn Fn() -> serde_json::Value,
    /// Puts a saved state back.
    pub restore: &'a dyn Fn(serde_json::Value) -> Result<(), String>,
}

/// Writes a training stage's checkpoints into its store folder and keeps its progress file.
pub struct StageCheckpointer<'a> {
    store: StageCheckpoints,
    policy: Policy,
    last: Instant,
    last_progress: Option<Instant>,
    saved: Option<(u64, String)>,
    op_state: Option<&'a OpState<'a>>,
    log: &'a File,
    progress: &'a Progress,
}

impl<'a> StageCheckpointer<'a> {
    /// Checkpoints into `store` by `policy`; `op_state` is saved with each.
    pub fn new(
        store: StageCheckpoints,
        policy: Policy,
        op_state: Option<&'a OpState<'a>>,
        log: &'a File,
        progress: &'a Progress,
    ) -> Self {
        let saved = store.latest().map(|s| (s.step, now()));
        StageCheckpointer {
            store,
            policy,
            last: Instant::now(),
            last_progress: None,
            saved,
            op_state,
            log,
            progress,
        }
    }
}

impl StageCheckpointer<'_> {
    /// Rewrites the progress file: where the loop stands, and the last checkpoint written.
    fn write_progress(&mut self, at: &Position, planned_steps: usize, epochs: usize) {
        self.last_progress = Some(Instant::now());
        let _ = self.store.write_progress(&StageProgress {
            step: at.step as u64,
            planned_steps: planned_steps as u64,
            epoch: at.epoch as u64 + 1,
            epochs: epochs as u64,
            updated: now(),
            checkpoint: self.saved.clone(),
        });
    }
}

impl Checkpointer for StageCheckpointer<'_> {
    fn after_step(&mut self, at: &Position, planned_steps: usize, epochs: usize) -> bool {
        if self.last_progress.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) || at.step == planned_steps {
            self.write_progress(at, planned_steps, epochs);
        }
        if at.step >= planned_steps {
            // The stage is about to finish and store its result: a checkpoint would be thrown away.
            return false;
        }
        let by_steps = self
            .policy
            .every_steps
            .is_some_and(|n| n > 0 && at.step.is_multiple_of(n));
        let interval = Duration::try_from_secs_f64(self.policy.minutes * 60.0).unwrap_or(Duration::MAX);
        let by_time = self.policy.minutes > 0.0 && self.last.elapsed() >= interval;
        by_steps || by_time
    }

    /// Writes one. A checkpoint that cannot be written (a full disk) is a warning, not a failure:
    /// training goes on (and a stop still stops), only without that checkpoint.
    fn save(&mut self, snapshot: &Snapshot) -> Result<(), TrainError> {
        let step = snapshot.position.step as u64;
        self.progress.message(&format!("writing a checkpoint at step {step}"));
        let t = Instant::now();
        let extra = self.op_state.map_or(serde_json::Value::Null, |s| (s.save)());
        let written = self
            .store
            .write(step, |dir| snapshot.save(dir, extra).map_err(CheckpointWrite::Train));
        let mut log = self.log;
        if let Err(e) = written {
            let warning = format!(
                "warning: cannot write the checkpoint of step {step} in {}: {e}; training goes on without it",
                self.store.dir().display()
            );
            let _ = writeln!(log, "{warning}");
            self.progress.note(&warning);
            return Ok(());
        }
        self.last = Instant::now();
        self.saved = Some((step, now()));
        let epochs = snapshot.planned_steps.div_ceil(snapshot.batches_per_epoch.max(1));
        self.write_progress(&snapshot.position, snapshot.planned_steps, epochs);
        let _ = writeln!(
            log,
            "checkpoint: step {step} of {} written in {:.2}s",
            snapshot.planned_steps,
            t.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// Why a checkpoint could not be written.
#[derive(Debug, thiserror::Error)]
enum CheckpointWrite {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Train(TrainError),
}

/// The newest checkpoint of the stage that passes its hash check and can be read, if any; every
/// newer one that fails is discarded, with a warning in the log and on the terminal.
pub fn load_latest(store: &StageCheckpoints, log: &File, progress: &Progress) -> Result<Option<TrainState>, OpError> {
    let mut log = log;
    for saved in store.list() {
        let problems = store.verify(&saved);
        let loaded = if problems.is_empty() {
            TrainState::load(&saved.dir).map_err(|e| e.to_string())
        } else {
            Err(problems.join("; "))
        };
        match loaded {
            Ok(state) => return Ok(Some(state)),
            Err(why) => {
                let warning = format!(
                    "warning: the checkpoint at step {} failed its check and was discarded ({why})",
                    saved.step
                );
                let _ = writeln!(log, "{warning}");
                progress.note(&warning);
                store
                    .discard(&saved)
                    .map_err(|e| OpError::Failed(format!("cannot remove {}: {e}", saved.dir.display())))?;
            }
        }
    }
    Ok(None)
}

/// Discards every checkpoint of a stage whose checkpoint did not fit the run, with a warning.
pub fn discard_unusable(store: &StageCheckpoints, why: &str, log: &File, progress: &Progress) -> Result<(), OpError> {
    let warning =
        format!("warning: the stage's checkpoint does not fit this run and was discarded ({why}); starting afresh");
    let mut log = log;
    let _ = writeln!(log, "{warning}");
    progress.note(&warning);
    store
        .clear()
        .map(|_| ())
        .map_err(|e| OpError::Failed(format!("cannot remove {}: {e}", store.dir().display())))
}

/// The time now, as the progress file writes it.
fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(step: usize) -> Position {
        Position {
            step,
            epoch: 0,
            batch: step,
            loss_sum: 0.0,
        }
    }

    #[test]
    fn checkpoints_fall_due_by_steps_by_time_and_never_on_the_last_step() {
        let tmp = tempfile::tempdir().unwrap();
        let store = crate::store::Store::at(tmp.path()).checkpoints(&[3; 32]);
        let log = File::create(tmp.path().join("log.txt")).unwrap();
        let progress = Progress::hidden();
        let policy = Policy {
            every_steps: Some(5),
            minutes: 0.0,
        };
        let mut c = StageCheckpointer::new(store.clone(), policy, None, &log, &progress);
        let due: Vec<usize> = (1..=20).filter(|s| c.after_step(&at(*s), 20, 1)).collect();
        assert_eq!(
            due,
            [5, 10, 15],
            "the last step is followed by the stored result, not a checkpoint"
        );
        // The progress file follows the steps.
        assert_eq!(store.progress().map(|p| (p.step, p.planned_steps)), Some((20, 20)));

        // By time: not before the interval, then after it.
        let policy = Policy {
            every_steps: None,
            minutes: 0.5 / 60.0,
        };
        let mut c = StageCheckpointer::new(store, policy, None, &log, &progress);
        assert!(!c.after_step(&at(1), 20, 1));
        std::thread::sleep(Duration::from_millis(600));
        assert!(c.after_step(&at(2), 20, 1));
    }
}

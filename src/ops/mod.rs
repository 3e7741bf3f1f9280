//! Stage ops: what running a stage does. One file per op.

pub mod distill;
pub mod eval;
mod exec;
pub mod model_source;
pub mod predict;
pub mod prune;
pub mod qlora;
pub mod report;
pub mod train;

use crate::engine::cancel::Cancel;
use crate::engine::progress::Progress;
use crate::value::{Params, StageId};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;

/// Everything an op gets to run one stage.
pub struct OpContext<'a> {
    /// The op's name.
    pub op: &'static str,
    /// Resolved parameters.
    pub params: &'a Params,
    /// Where the op writes its outputs.
    pub out_dir: PathBuf,
    /// The output directory of an upstream stage.
    pub input_dir: &'a (dyn Fn(StageId) -> PathBuf + Sync),
    /// What an upstream stage is: its name, op and parameters.
    pub upstream: &'a (dyn Fn(StageId) -> Upstream + Sync),
    /// The pipeline file's directory (where relative paths point).
    pub pipeline_dir: PathBuf,
    /// The stage's log file.
    pub log: File,
    /// The stage's progress line.
    pub progress: &'a Progress,
    /// Set when the run is interrupted; long-running ops check it.
    pub cancel: &'a Cancel,
    /// Threads the op may use.
    pub threads: usize,
    /// Where ops may keep caches that are never required (decoded dataset images):
    /// `<store>/cache`.
    pub cache_dir: PathBuf,
    /// The stage's key lock, for the commands it starts to inherit: the key stays locked while
    /// anything they started lives, so a rerun never runs the stage beside an orphan.
    pub key_lock: Option<std::os::fd::RawFd>,
}

/// An upstream stage as an op sees it.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Its display name.
    pub name: String,
    /// Its op.
    pub op: &'static str,
    /// Its parameters.
    pub params: Params,
}

/// What an op reports when it succeeds.
#[derive(Debug, Default)]
pub struct OpOutput {
    /// Headline numbers (accuracy, loss, bytes, ...), recorded in metrics.json and run records.
    pub metrics: BTreeMap<String, f64>,
}

/// The ops this version can run.
pub const RUNNABLE: &[&str] = &[
    "exec", "train", "eval", "predict", "distill", "fuse", "prune", "qlora", "report",
];

/// Runs one stage's op.
pub fn execute(ctx: &mut OpContext) -> Result<OpOutput, String> {
    match ctx.op {
        "exec" => exec::run(ctx),
        "train" => train::run(ctx),
        "eval" => eval::run(ctx),
        "predict" => predict::run(ctx),
        "distill" | "fuse" => distill::run(ctx),
        "prune" => prune::run(ctx),
        "qlora" => qlora::run(ctx),
        "report" => report::run(ctx),
        other => Err(format!(
            "the `{other}` op is not implemented in this version of rkd (it runs {})",
            RUNNABLE.join(", ")
        )),
    }
}

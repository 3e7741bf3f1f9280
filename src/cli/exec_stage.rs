//! `rkd exec-stage`: what a Slurm job runs.

use crate::engine::cancel::Cancel;
use crate::engine::slurm::exec_stage;
use crate::store::records::Outcome;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// Runs the stage with this key from its spec in the store; exit 0 when it ran (or was already
/// stored), 1 when it failed. scancel's SIGTERM stops the stage's commands, and leaves no entry.
pub fn run(store: &Path, key: &str) -> ExitCode {
    let cancel = Arc::new(Cancel::default());
    let handler = cancel.clone();
    if let Err(e) = ctrlc::set_handler(move || handler.interrupt()) {
        eprintln!("warning: cannot handle SIGTERM ({e})");
    }
    match exec_stage(store, key, &cancel) {
        Ok(f) if f.outcome == Outcome::Ran => {
            let metrics: Vec<String> = f.metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
            println!("ran in {:.2}s {}", f.time_s, metrics.join(", "));
            ExitCode::SUCCESS
        }
        Ok(f) if f.outcome == Outcome::Cached => {
            println!("already stored (another run finished it)");
            ExitCode::SUCCESS
        }
        Ok(f) => {
            eprintln!("error: the stage failed: {}", f.error.unwrap_or_default());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

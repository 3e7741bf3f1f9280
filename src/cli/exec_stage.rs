//! `rkd exec-stage`: what a Slurm job runs.

use crate::engine::cancel::Cancel;
use crate::engine::slurm::exec_stage;
use crate::store::records::Outcome;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Set by SIGUSR1: Slurm's warning that the job's time is nearly up (`--signal=B:USR1@lead`).
static TIME_NEARLY_UP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_usr1(_: libc::c_int) {
    // Only an atomic store: safe in a signal handler.
    TIME_NEARLY_UP.store(true, Ordering::SeqCst);
}

/// Runs the stage with this key from its spec in the store; exit 0 when it ran (or was already
/// stored), 1 when it failed. scancel's SIGTERM stops the stage's commands, and leaves no entry;
/// a training stage writes a checkpoint first. On SIGUSR1 (the job's time limit is near) the
/// stage checkpoints and the job requeues itself (`scontrol requeue`): Slurm starts it again,
/// and it goes on from the checkpoint.
pub fn run(store: &Path, key: &str, retries: usize, retry_delay: Duration) -> ExitCode {
    // First of all: Slurm may warn early, and an unhandled SIGUSR1 would end the job.
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t);
    }
    let cancel = Arc::new(Cancel::default());
    let handler = cancel.clone();
    if let Err(e) = ctrlc::set_handler(move || handler.interrupt()) {
        crate::say!("warning: cannot handle SIGTERM ({e})");
    }
    let watched = cancel.clone();
    std::thread::spawn(move || loop {
        if TIME_NEARLY_UP.load(Ordering::SeqCst) {
            crate::say!("SIGUSR1: the job's time limit is near: checkpointing, then requeueing the job");
            watched.interrupt();
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    });
    let checkpoints = blake3::Hash::from_hex(key)
        .ok()
        .map(|k| crate::store::Store::at(store).checkpoints(k.as_bytes()));
    let step_of =
        |c: &Option<crate::store::checkpoints::StageCheckpoints>| c.as_ref().and_then(|c| c.latest()).map(|s| s.step);
    let before = step_of(&checkpoints);
    let result = exec_stage(store, key, &cancel, (retries, retry_delay));
    let unfinished = matches!(&result, Ok(f) if matches!(f.outcome, Outcome::Interrupted | Outcome::Failed));
    if TIME_NEARLY_UP.load(Ordering::SeqCst) && unfinished {
        let after = step_of(&checkpoints);
        if after.is_some() && after != before {
            return requeue();
        }
        crate::say!(
            "error: the job was warned of its time limit before its stage wrote a checkpoint past step {}: \
             not requeued (it would start where it started). Give the job a time limit well above \
             `--signal-lead` (Slurm may warn up to a minute early)",
            before.unwrap_or(0)
        );
        return ExitCode::FAILURE;
    }
    match result {
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
            crate::say!("error: the stage failed: {}", f.error.unwrap_or_default());
            ExitCode::FAILURE
        }
        Err(e) => {
            crate::say!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Puts this job back in the queue (`scontrol requeue $SLURM_JOB_ID`); Slurm then stops it.
fn requeue() -> ExitCode {
    let Ok(job) = std::env::var("SLURM_JOB_ID") else {
        crate::say!("error: SIGUSR1 outside a Slurm job (no SLURM_JOB_ID): the stage stopped after its checkpoint");
        return ExitCode::FAILURE;
    };
    match std::process::Command::new("scontrol").args(["requeue", &job]).status() {
        Ok(s) if s.success() => {
            crate::say!("requeued job {job}: it goes on from the checkpoint when Slurm starts it again");
            ExitCode::SUCCESS
        }
        Ok(s) => {
            crate::say!("error: `scontrol requeue {job}` failed ({s}); the next `rkd run` resumes from the checkpoint");
            ExitCode::FAILURE
        }
        Err(e) => {
            crate::say!("error: cannot run scontrol ({e}); the next `rkd run` resumes from the checkpoint");
            ExitCode::FAILURE
        }
    }
}

//! `rkd run`: decide what must run, verify what it will read, run it in parallel, record it.

use super::cancel::Cancel;
use super::explain::{verdicts_of, Verdict};
use super::progress::{Display, Progress};
use super::record::stage_record;
use super::scheduler::{schedule, Gpus, JobEnd};
use crate::ops::{self, OpContext};
use crate::plan::fingerprint::Fingerprinter;
use crate::plan::{for_each_keyed_path, Plan, PlanStage};
use crate::store::check_cache::{self, Stored};
use crate::store::key::hex;
use crate::store::lock::KeyLock;
use crate::store::manifest::Manifest;
use crate::store::records::{Decided, Outcome, RunRecord, StageRecord};
use crate::store::writer::EntryWriter;
use crate::store::Store;
use crate::value::StageId;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// What a stage computes with: its share of the cores, the device, and the GPU slots it holds.
#[derive(Clone, Debug)]
pub struct Compute {
    /// Threads of the pool the op computes on, shared with the stages running beside it.
    pub threads: usize,
    /// The device the op computes on.
    pub device: candle_core::Device,
    /// The GPU ordinals the stage holds (what an `exec` command sees as `CUDA_VISIBLE_DEVICES`).
    pub gpus: Vec<usize>,
}

/// GPUs a stage needs from the run's slots: one for a model op when the run computes on a GPU,
/// and an `exec` stage what its `resources` ask for.
pub fn gpu_need(stage: &PlanStage, run_device: &candle_core::Device) -> usize {
    let op = stage.def.op.name;
    if op == "exec" {
        crate::registry::resources(op, &stage.def.params).gpus as usize
    } else {
        usize::from(!run_device.is_cpu())
    }
}

/// What to run and how.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The device the ops compute on (`--device`, resolved).
    pub device: candle_core::Device,
    /// GPU slots (`--gpus`): each running stage that computes on a GPU, or an `exec` stage whose
    /// `resources` ask for GPUs, holds its own; none: GPUs are not scheduled.
    pub gpus: Vec<usize>,
    /// Stages run at once.
    pub jobs: usize,
    /// Run only these stages (and what they need).
    pub only: Vec<String>,
    /// After a failure, go on with the stages that do not depend on it.
    pub keep_going: bool,
    /// Only say what would run.
    pub dry_run: bool,
    /// Hash every stored result the run trusts (instead of checking sizes and modification
    /// times, and hashing only what differs).
    pub verify: bool,
    /// Ignore the in-stage checkpoints of the stages that run (they are removed first): every
    /// stage starts at step 0.
    pub fresh: bool,
    /// Rerun a failed stage this many times (a stage's `retries` argument overrides it), from its
    /// checkpoint, after a growing delay; failures that cannot succeed on retry are not retried.
    pub retries: usize,
    /// The delay before the first retry (doubled for each further one, at most 10 minutes).
    pub retry_delay: std::time::Duration,
    /// Plan indices of the stages whose results came from the remote cache before the run
    /// (in a dry run: that the remote holds and a run would pull).
    pub from_remote: HashSet<usize>,
    /// The remote cache, as records name it (no credentials).
    pub remote: Option<String>,
}

/// The result of one stage in a run.
#[derive(Clone, Debug)]
pub struct StageResult {
    /// What happened.
    pub outcome: Outcome,
    /// Seconds it ran.
    pub time_s: f64,
    /// Headline metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Why it failed or was skipped.
    pub error: Option<String>,
    /// Why it ran (or would run).
    pub reasons: Vec<String>,
    /// The step its training resumed from, when it went on from a checkpoint.
    pub resumed_from: Option<u64>,
    /// Times it was run (0 when cached or skipped; more than 1 after retries).
    pub attempts: u32,
    /// The most GPU memory in use while it ran, when it ran on a GPU.
    pub gpu_memory_peak: Option<u64>,
}

/// How one executed stage ended.
#[derive(Clone, Debug)]
pub struct Finished {
    /// Ran, cached (another process finished it first) or failed.
    pub outcome: Outcome,
    /// Seconds it ran.
    pub time_s: f64,
    /// Headline metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Whether running it again could succeed (not for bad input or a diverging loss).
    pub retryable: bool,
    /// The step its training resumed from, when it went on from a checkpoint.
    pub resumed_from: Option<u64>,
    /// Times it was run (more than one after retries).
    pub attempts: u32,
    /// The most GPU memory in use while it ran (the GPU's, sampled), when it ran on a GPU.
    pub gpu_memory_peak: Option<u64>,
}

impl Finished {
    /// A stage that failed before or while running.
    fn failed(time_s: f64, error: String) -> Finished {
        Finished {
            outcome: Outcome::Failed,
            time_s,
            metrics: BTreeMap::new(),
            error: Some(error),
            retryable: true,
            resumed_from: None,
            attempts: 1,
            gpu_memory_peak: None,
        }
    }

    /// A stage whose result was already stored.
    fn cached() -> Finished {
        Finished {
            outcome: Outcome::Cached,
            time_s: 0.0,
            metrics: BTreeMap::new(),
            error: None,
            retryable: false,
            resumed_from: None,
            attempts: 1,
            gpu_memory_peak: None,
        }
    }
}

/// A stored result that failed its check and was discarded.
#[derive(Clone, Debug)]
pub struct Damaged {
    /// The stage's name.
    pub stage: String,
    /// What was wrong with it.
    pub problems: Vec<String>,
}

/// Why a run could not start or be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `--only` names no stage.
    #[error(transparent)]
    NoSuchStage(#[from] super::select::NoSuchStage),
    /// A damaged entry could not be moved out of the way.
    #[error("cannot move aside the damaged entry of `{stage}`: {source}")]
    MoveAside {
        /// The stage's name.
        stage: String,
        /// Why.
        source: std::io::Error,
    },
    /// The run record could not be written.
    #[error("cannot write the run record: {0}")]
    Record(std::io::Error),
    /// The index of the latest records could not be updated.
    #[error("cannot update the run index: {0}")]
    Index(std::io::Error),
}

/// The result of a run: per plan stage (None when not selected by --only).
pub struct RunReport {
    /// One per plan stage, in plan order.
    pub stages: Vec<Option<StageResult>>,
    /// Whether the user interrupted the run.
    pub interrupted: bool,
    /// Damaged entries that were found and discarded.
    pub damaged: Vec<Damaged>,
    /// Seconds the whole run took.
    pub duration_s: f64,
    /// The device its stages computed on (`cpu`, `cuda:0`), as run records name it.
    pub device: String,
    /// The remote cache it used, if any.
    pub remote: Option<String>,
}

/// Runs the plan against the store; `on_stored` is told the plan index of each stage whose
/// result has just entered the store (a `--push` run uploads it then).
pub fn run(
    plan: &Plan,
    pipeline: &Path,
    source_text: &str,
    store: &Store,
    opts: &RunOptions,
    cancel: &Cancel,
    on_stored: &(dyn Fn(usize) + Sync),
) -> Result<RunReport, RunError> {
    let started_at = SystemTime::now();
    let t0 = Instant::now();
    let Prepared {
        mut results,
        to_run,
        damaged,
    } = prepare(plan, pipeline, store, opts)?;
    if opts.dry_run {
        return Ok(RunReport {
            stages: results,
            interrupted: false,
            damaged,
            duration_s: t0.elapsed().as_secs_f64(),
            device: crate::ml::kernels::device::label(&opts.device),
            remote: opts.remote.clone(),
        });
    }

    // Run, in plan (topological) order of priority.
    let mut order: Vec<usize> = to_run.iter().copied().collect();
    order.sort_unstable();
    let position: BTreeMap<usize, usize> = order.iter().enumerate().map(|(j, &i)| (i, j)).collect();
    let deps: Vec<Vec<usize>> = order
        .iter()
        .map(|&i| {
            plan.stage(StageId(i as u32))
                .def
                .inputs
                .iter()
                .filter_map(|id| position.get(&(id.0 as usize)).copied())
                .collect()
        })
        .collect();
    let jobs = opts.jobs.max(1);
    // The stages running at once share one pool of threads, one per core (rayon's global pool):
    // their parallel work queues there, so a stage running alone gets every core and, when a
    // second starts, the two split them — no core idles while a stage has work.
    let threads = crate::ml::kernels::runtime::shared_threads();
    let pipeline_dir = pipeline_dir(pipeline);
    let display = Display::new(order.len());
    let outcomes: Mutex<Vec<Option<Finished>>> = Mutex::new(vec![None; order.len()]);
    let counts = Mutex::new(Counts::default());
    let gpus = Gpus {
        slots: opts.gpus.clone(),
        need: order
            .iter()
            .map(|&i| gpu_need(plan.stage(StageId(i as u32)), &opts.device))
            .collect(),
    };
    let ends = schedule(
        order.len(),
        &deps,
        jobs,
        &gpus,
        opts.keep_going,
        cancel,
        |j, slots| {
            let stage = plan.stage(StageId(order[j] as u32));
            let progress = display.stage(stage.def.op.name, &stage.def.name);
            // While it runs, a stage beside it that is short of memory waits for it.
            let running = crate::ml::kernels::memory_ledger::stage_running(progress.notifier(&stage.def.name));
            let result = match crate::ml::kernels::device::for_slot(&opts.device, slots.first().copied()) {
                Ok(device) => {
                    let compute = Compute {
                        threads,
                        device,
                        gpus: slots.to_vec(),
                    };
                    with_retries(
                        retries_of(stage, opts.retries),
                        opts.retry_delay,
                        cancel,
                        || run_stage(plan, stage, store, &pipeline_dir, &progress, cancel, &compute),
                        |failed, attempt, wait| {
                            display.println(&retry_line(&stage.def.name, failed, attempt, wait));
                        },
                    )
                }
                Err(e) => Finished::failed(0.0, e.to_string()),
            };
            drop(running);
            progress.finish();
            if result.outcome == Outcome::Ran {
                on_stored(order[j]);
            }
            let ok = matches!(result.outcome, Outcome::Ran | Outcome::Cached);
            {
                let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
                if ok {
                    c.done += 1
                } else {
                    c.failed += 1
                }
                let summary = if c.failed > 0 {
                    format!("{} done, {} failed", c.done, c.failed)
                } else {
                    format!("{} done", c.done)
                };
                if let (Outcome::Failed, Some(e)) = (&result.outcome, &result.error) {
                    display.println(&format!("✗ {} failed: {e}", stage.def.name));
                }
                display.finished(&summary);
            }
            outcomes.lock().unwrap_or_else(|e| e.into_inner())[j] = Some(result);
            ok
        },
        |_, _| {},
    );
    display.clear();
    let outcomes = outcomes.into_inner().unwrap_or_else(|e| e.into_inner());
    let failed: HashSet<usize> = ends
        .iter()
        .zip(&order)
        .filter(|(e, _)| **e == JobEnd::Failed)
        .map(|(_, i)| *i)
        .collect();
    for (j, (end, outcome)) in ends.iter().zip(outcomes).enumerate() {
        let r = results[order[j]].as_mut().expect("scheduled stages are selected");
        match (end, outcome) {
            // The job panicked before it had an outcome (a bug; the scheduler printed its message).
            (JobEnd::Failed, None) => {
                r.outcome = Outcome::Failed;
                r.error = Some("internal error while running the stage (its message is above)".into());
            }
            (JobEnd::Skipped, _) | (_, None) => {
                r.outcome = Outcome::Skipped;
                r.error = Some(if cancel.is_interrupted() {
                    "interrupted".into()
                } else {
                    skip_reason(plan, order[j], &failed)
                });
            }
            (_, Some(finished)) => {
                r.outcome = finished.outcome;
                r.time_s = finished.time_s;
                r.metrics = finished.metrics;
                r.error = finished.error;
                r.resumed_from = finished.resumed_from;
                r.attempts = finished.attempts;
                r.gpu_memory_peak = finished.gpu_memory_peak;
            }
        }
    }
    let report = RunReport {
        stages: results,
        interrupted: cancel.is_interrupted(),
        damaged,
        duration_s: t0.elapsed().as_secs_f64(),
        device: crate::ml::kernels::device::label(&opts.device),
        remote: opts.remote.clone(),
    };
    // The next run checks what this one stored without reading its manifests.
    let stored: Vec<_> = plan
        .stages()
        .zip(&report.stages)
        .filter(|(_, r)| r.as_ref().is_some_and(|r| r.outcome == Outcome::Ran))
        .map(|(s, _)| s.key)
        .collect();
    if !stored.is_empty() {
        check_cache::remember(store, &stored, &check_cache::path_for(store, pipeline));
    }
    write_records(plan, pipeline, source_text, store, &report, started_at)?;
    Ok(report)
}

/// What the terminal says before a retry: the failure's first line, the attempt and the wait.
pub fn retry_line(stage: &str, failed: &Finished, attempt: u32, wait: Duration) -> String {
    let why = failed
        .error
        .as_deref()
        .and_then(|e| e.lines().next())
        .unwrap_or("failed");
    format!(
        "↻ {stage} failed (attempt {attempt}): {why}; retrying in {} from its last checkpoint",
        humantime::format_duration(Duration::from_secs(wait.as_secs()))
    )
}

/// Stages finished so far in a run, for the progress line.
#[derive(Default)]
struct Counts {
    done: usize,
    failed: usize,
}

/// What a run decided before running anything.
pub struct Prepared {
    /// One per plan stage: cached, or skipped until it runs (None when not selected).
    pub results: Vec<Option<StageResult>>,
    /// The plan indices of the stages that must run.
    pub to_run: HashSet<usize>,
    /// Damaged entries that were found and discarded.
    pub damaged: Vec<Damaged>,
}

/// Decides what must run (selected stages whose result is not stored), after verifying the stored
/// results that running stages will read (damaged ones are discarded and rerun, unless dry run).
/// Stored results are checked through the pipeline's cache of their manifests (`store::check_cache`).
pub fn prepare(plan: &Plan, pipeline: &Path, store: &Store, opts: &RunOptions) -> Result<Prepared, RunError> {
    let n = plan.len();
    let selected = super::select::select(plan, &opts.only)?;
    store.clean_tmp();

    // What must run: selected stages whose result is not stored. Every stored result the run
    // trusts is checked first (cheaply, or by hashing with --verify): a damaged one is moved
    // aside and runs again, whether or not a running stage reads it.
    let mut to_run: HashSet<usize> = HashSet::new();
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); n];
    let keys: Vec<_> = plan.stages().map(|s| s.key).collect();
    let cache = check_cache::path_for(store, pipeline);
    let checked = check_cache::check_stored(store, &keys, &selected, opts.verify, &cache);
    // A damaged result counts as stored here (it is moved aside and rerun below), and so does
    // what the remote gave (or, in a dry run, would give).
    let cached: Vec<bool> = (0..n)
        .map(|i| matches!(checked[i], Stored::Intact | Stored::Damaged(_)) || opts.from_remote.contains(&i))
        .collect();
    for (i, v) in verdicts_of(plan, pipeline, store, &selected, &cached)
        .into_iter()
        .enumerate()
    {
        if let Some(Verdict::Run(r)) = v {
            reasons[i] = r;
            to_run.insert(i);
        }
    }
    let mut problems: Vec<(usize, Vec<String>)> = Vec::new();
    for (i, c) in checked.into_iter().enumerate() {
        match c {
            Stored::Damaged(p) => problems.push((i, p)),
            // Pulled from the remote by this run a moment ago, yet not found now.
            Stored::Absent if opts.from_remote.contains(&i) && !opts.dry_run => {
                let p = Manifest::check(&store.entry_dir(&plan.stage(StageId(i as u32)).key));
                if !p.is_empty() {
                    problems.push((i, p));
                }
            }
            Stored::Intact | Stored::Absent | Stored::Unchecked => {}
        }
    }
    let mut damaged = Vec::new();
    for (i, p) in problems {
        let stage = plan.stage(StageId(i as u32));
        if !opts.dry_run {
            store.move_aside(&stage.key).map_err(|source| RunError::MoveAside {
                stage: stage.def.name.clone(),
                source,
            })?;
        }
        damaged.push(Damaged {
            stage: stage.def.name.clone(),
            problems: p,
        });
        reasons[i] = vec!["stored result is damaged".into()];
        to_run.insert(i);
    }

    let checkpointed: HashSet<_> = store.checkpointed_keys().into_iter().collect();
    for &i in &to_run {
        let key = &plan.stage(StageId(i as u32)).key;
        if !checkpointed.contains(key) {
            continue;
        }
        if opts.fresh {
            if !opts.dry_run {
                discard_checkpoints(store, key);
            }
        } else {
            reasons[i].extend(resumable(store, key));
        }
    }

    let results: Vec<Option<StageResult>> = (0..n)
        .map(|i| {
            selected[i].then(|| StageResult {
                outcome: if to_run.contains(&i) {
                    Outcome::Skipped
                } else if opts.from_remote.contains(&i) {
                    Outcome::Pulled
                } else {
                    Outcome::Cached
                },
                time_s: 0.0,
                metrics: if opts.from_remote.contains(&i) && !to_run.contains(&i) {
                    store
                        .stage_metrics(&plan.stage(StageId(i as u32)).key)
                        .unwrap_or_default()
                } else {
                    BTreeMap::new()
                },
                error: None,
                reasons: std::mem::take(&mut reasons[i]),
                resumed_from: None,
                attempts: 0,
                gpu_memory_peak: None,
            })
        })
        .collect();
    Ok(Prepared {
        results,
        to_run,
        damaged,
    })
}

/// "resumable from step N" when the stage has an in-stage checkpoint (not yet verified: a rerun
/// hashes it before trusting it).
pub fn resumable(store: &Store, key: &crate::store::key::Key) -> Option<String> {
    store
        .checkpoints(key)
        .latest()
        .map(|c| format!("resumable from step {}", c.step))
}

/// Removes a stage's in-stage checkpoints (`--fresh`), unless a process is running the stage now.
fn discard_checkpoints(store: &Store, key: &crate::store::key::Key) {
    if let Ok(Some(_lock)) = KeyLock::try_acquire(store, key) {
        let _ = store.checkpoints(key).clear();
    }
}

/// The retries a stage gets: its own `retries` argument, else the run's `--retries`.
pub fn retries_of(stage: &PlanStage, default: usize) -> usize {
    crate::registry::RunArgs::from_params(&stage.def.params)
        .ok()
        .and_then(|a| a.retries)
        .unwrap_or(default)
}

/// The longest wait between two attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(600);

/// Runs a stage (`attempt`) and, while it fails in a way that a retry may mend and retries are
/// left, again after a delay that doubles each time (`on_retry` is told first); a training stage
/// goes on from its last checkpoint. Stops retrying when the run is cancelled.
pub fn with_retries(
    retries: usize,
    delay: Duration,
    cancel: &Cancel,
    mut attempt: impl FnMut() -> Finished,
    mut on_retry: impl FnMut(&Finished, u32, Duration),
) -> Finished {
    let mut attempts = 1u32;
    loop {
        let mut result = attempt();
        result.attempts = attempts;
        if result.outcome != Outcome::Failed || !result.retryable || attempts as usize > retries {
            return result;
        }
        let wait = delay.saturating_mul(1 << (attempts - 1).min(16)).min(MAX_RETRY_DELAY);
        if cancel.is_cancelled() {
            return result;
        }
        on_retry(&result, attempts, wait);
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if cancel.is_cancelled() {
                return result;
            }
            std::thread::sleep(Duration::from_millis(50).min(until.saturating_duration_since(Instant::now())));
        }
        attempts += 1;
    }
}

/// The pipeline file's directory, where stages run and relative paths point.
pub fn pipeline_dir(pipeline: &Path) -> PathBuf {
    pipeline
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// "needs `x`, which failed" for a skipped stage (the nearest failed ancestor), or a stop notice.
pub(crate) fn skip_reason(plan: &Plan, i: usize, failed: &HashSet<usize>) -> String {
    let mut stack = vec![i];
    let mut seen = HashSet::new();
    while let Some(s) = stack.pop() {
        for up in &plan.stage(StageId(s as u32)).def.inputs {
            let u = up.0 as usize;
            if failed.contains(&u) {
                return format!("needs `{}`, which failed", plan.name(*up));
            }
            if seen.insert(u) {
                stack.push(u);
            }
        }
    }
    "not started: the run stopped after a failure (use --keep-going to run independent stages)".into()
}

/// Runs one stage under its key's lock; the entry appears in the store only if it succeeds.
/// The local executor calls it on its workers; `rkd exec-stage` (the Slurm executor's job) calls it once.
pub fn run_stage(
    plan: &Plan,
    stage: &PlanStage,
    store: &Store,
    pipeline_dir: &Path,
    progress: &Progress,
    cancel: &Cancel,
    compute: &Compute,
) -> Finished {
    let (threads, device) = (compute.threads, &compute.device);
    let fail = |e: String| Finished::failed(0.0, e);
    let lock = match KeyLock::acquire(store, &stage.key) {
        Ok(l) => l,
        Err(e) => return fail(format!("cannot lock the store entry: {e}")),
    };
    let checkpoints = store.checkpoints(&stage.key);
    // Another process may have finished it while we waited for the lock.
    if store.contains(&stage.key) {
        let _ = checkpoints.clear();
        return Finished::cached();
    }
    let writer = match EntryWriter::create(store, &stage.key) {
        Ok(w) => w,
        Err(e) => return fail(format!("cannot create the store entry: {e}")),
    };
    let spec = serde_yaml::to_string(&stage_record(plan, stage, Outcome::Ran)).unwrap_or_default();
    let log_path = writer.dir().join("log.txt");
    let log = match std::fs::File::create(&log_path).and_then(|f| writer.write("spec.yaml", spec.as_bytes()).map(|_| f))
    {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot write the store entry: {e}")),
    };
    // A wait for memory (stages side by side) is written down in the log too.
    let _log_waits = log.try_clone().ok().map(crate::ml::kernels::memory_ledger::log_waits);
    let input_dir = |id: StageId| store.out_dir(&plan.stage(id).key);
    let upstream = |id: StageId| {
        let def = &plan.stage(id).def;
        ops::Upstream {
            name: def.name.clone(),
            shown: def.shown(),
            op: def.op.name,
            params: def.params.clone(),
            key: crate::store::key::hex(&plan.stage(id).key),
        }
    };
    let mut ctx = OpContext {
        op: stage.def.op.name,
        params: &stage.def.params,
        out_dir: writer.out_dir(),
        input_dir: &input_dir,
        upstream: &upstream,
        pipeline_dir: pipeline_dir.to_path_buf(),
        log,
        progress,
        cancel,
        threads,
        device: device.clone(),
        gpus: compute.gpus.clone(),
        cache_dir: store.cache_dir(),
        checkpoints: Some(checkpoints.clone()),
        resumed_from: None,
        key_lock: Some(lock.raw_fd()),
        selection: Default::default(),
    };
    let started = SystemTime::now();
    let t = Instant::now();
    let gpu_memory = crate::ml::kernels::device::GpuMemoryPeak::start(device);
    let result = ops::execute(&mut ctx);
    let time_s = t.elapsed().as_secs_f64();
    let gpu_memory_peak = gpu_memory.finish();
    let resumed_from = ctx.resumed_from;
    drop(ctx);
    // A stage must not change what it read: a changed input is moved aside (and rebuilt by the
    // next run), and this stage's result, made from it, is not stored.
    // Nor may its input files have changed since its key was computed from them: a result of
    // other contents than the key stands for would be found by the next run with the old ones.
    let changed = inputs_changed(plan, stage, store).or_else(|| files_changed(stage, store));
    let result = match (result, changed) {
        (result, None) => result,
        (_, Some(changed)) => {
            // Its checkpoints were trained on the changed input: not to be resumed from.
            let _ = checkpoints.clear();
            Err(ops::OpError::Invalid(changed))
        }
    };
    match result {
        Ok(output) => {
            let meta = serde_json::json!({
                "rkd_version": env!("CARGO_PKG_VERSION"),
                "started": humantime::format_rfc3339_seconds(started).to_string(),
                "time_s": time_s,
                "threads": threads,
                "device": crate::ml::kernels::device::label(device),
                "resumed_from": resumed_from,
                "gpu_memory_peak_bytes": gpu_memory_peak,
            });
            let written = writer
                .write(
                    "metrics.json",
                    &serde_json::to_vec_pretty(&output.metrics).unwrap_or_default(),
                )
                .and_then(|_| writer.write("meta.json", &serde_json::to_vec_pretty(&meta).unwrap_or_default()))
                .map_err(|e| e.to_string())
                .and_then(|_| writer.commit().map_err(|e| e.to_string()));
            match written {
                Ok(()) => {
                    // The stored result makes the stage's checkpoints useless.
                    let _ = checkpoints.clear();
                    Finished {
                        outcome: Outcome::Ran,
                        time_s,
                        metrics: output.metrics,
                        error: None,
                        retryable: false,
                        resumed_from,
                        attempts: 1,
                        gpu_memory_peak,
                    }
                }
                Err(e) => fail(format!("cannot store the result: {e}")),
            }
        }
        Err(ops::OpError::Interrupted) => Finished {
            outcome: Outcome::Interrupted,
            time_s,
            metrics: BTreeMap::new(),
            error: Some("interrupted".into()),
            retryable: false,
            resumed_from,
            attempts: 1,
            gpu_memory_peak,
        },
        Err(e) => {
            let log = keep_failed_log(store, &stage.key, &log_path);
            let tail = log.as_ref().map(|p| log_tail(p)).unwrap_or_default();
            let mut msg = e.to_string();
            if !tail.is_empty() {
                msg.push_str(&format!("\n{tail}"));
            }
            if let Some(p) = log {
                msg.push_str(&format!("\n(log: {})", p.display()));
            }
            Finished {
                retryable: e.retryable(),
                resumed_from,
                gpu_memory_peak,
                ..Finished::failed(time_s, msg)
            }
        }
    }
}

/// Checks the stored inputs of a stage after it ran; when one changed, moves it aside and says so.
fn inputs_changed(plan: &Plan, stage: &PlanStage, store: &Store) -> Option<String> {
    let mut changed = Vec::new();
    for id in &stage.def.inputs {
        let input = plan.stage(*id);
        let problems = Manifest::check(&store.entry_dir(&input.key));
        if !problems.is_empty() {
            let _ = store.move_aside(&input.key);
            changed.push(format!("`{}` ({})", input.def.name, problems.join("; ")));
        }
    }
    (!changed.is_empty()).then(|| {
        format!(
            "the stage changed its input {}: stages must not write into their inputs (stored results are \
             read-only); the input was moved aside and runs again next time",
            changed.join(", ")
        )
    })
}

/// Fingerprints again the files a stage's key was computed from (answered from the stat cache
/// where size, modification time and inode are unchanged); names those whose contents differ
/// now, or that are gone.
fn files_changed(stage: &PlanStage, store: &Store) -> Option<String> {
    if stage.files.is_empty() {
        return None;
    }
    let mut fingerprints = Fingerprinter::load(&store.stat_cache());
    let mut changed: Vec<String> = Vec::new();
    for_each_keyed_path(&stage.def.params, &mut |path, reads| {
        let now = fingerprints.fingerprint_read(&path.resolved, reads).ok();
        let as_planned = stage.files.iter().any(|(w, k)| *w == path.written && Some(*k) == now);
        if !as_planned && !changed.contains(&path.written) {
            changed.push(path.written.clone());
        }
    });
    (!changed.is_empty()).then(|| {
        let names: Vec<String> = changed.iter().map(|p| format!("`{p}`")).collect();
        format!(
            "input {} changed while the stage ran: its key stands for the contents when the run \
             started, so nothing was stored; run again to use the new contents",
            names.join(", ")
        )
    })
}

/// Copies a failed stage's log to `<store>/failed/<key>.log` (the entry itself is discarded).
pub(crate) fn keep_failed_log(store: &Store, key: &crate::store::key::Key, log: &Path) -> Option<PathBuf> {
    let dir = store.root.join("failed");
    std::fs::create_dir_all(&dir).ok()?;
    let dest = dir.join(format!("{}.log", hex(key)));
    std::fs::copy(log, &dest).ok()?;
    Some(dest)
}

/// The last lines of a log, indented.
pub(crate) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..]
        .iter()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes the run record and updates the index of the latest record of each stage name.
pub(crate) fn write_records(
    plan: &Plan,
    pipeline: &Path,
    source_text: &str,
    store: &Store,
    report: &RunReport,
    started: SystemTime,
) -> Result<(), RunError> {
    let mut stages: Vec<StageRecord> = Vec::new();
    let mut decided: Vec<Decided> = Vec::new();
    let mut decided_ids: Vec<usize> = Vec::new();
    let keys: Vec<String> = plan.stages().map(|s| hex(&s.key)).collect();
    let mut counts: BTreeMap<String, usize> = ["ran", "cached", "failed", "skipped"]
        .iter()
        .map(|k| (k.to_string(), 0))
        .collect();
    for (i, (stage, result)) in plan.stages().zip(&report.stages).enumerate() {
        let Some(r) = result else { continue };
        *counts.entry(r.outcome.name().to_string()).or_default() += 1;
        // The run record names the stage and its key; the entry's spec.yaml holds the rest.
        stages.push(StageRecord {
            name: stage.def.name.clone(),
            aliases: stage.def.aliases.clone(),
            op: stage.def.op.name.to_string(),
            op_version: stage.def.op.version,
            key: keys[i].clone(),
            status: r.outcome,
            time_s: r.time_s,
            metrics: r.metrics.clone(),
            params: serde_json::Value::Null,
            inputs: BTreeMap::new(),
            files: BTreeMap::new(),
            resumed_from: r.resumed_from,
            attempts: r.attempts,
            gpu_memory_peak_bytes: r.gpu_memory_peak,
            error: r.error.clone(),
        });
        if r.outcome != Outcome::Skipped {
            let names = std::iter::once(stage.def.name.as_str())
                .chain(stage.def.aliases.iter().map(String::as_str))
                .collect();
            decided.push(Decided {
                names,
                key: keys[i].as_str(),
                status: match r.outcome {
                    Outcome::Failed | Outcome::Interrupted => r.outcome,
                    _ => Outcome::Ran,
                },
            });
            decided_ids.push(i);
        }
    }
    let status = if report.interrupted {
        "interrupted"
    } else if counts["failed"] > 0 {
        "failed"
    } else {
        "ok"
    };
    let record = RunRecord {
        rkd_version: env!("CARGO_PKG_VERSION").into(),
        pipeline: RunRecord::pipeline_name(pipeline),
        pipeline_hash: blake3::hash(source_text.as_bytes()).to_hex().to_string(),
        started: humantime::format_rfc3339_seconds(started).to_string(),
        duration_s: report.duration_s,
        status: status.into(),
        device: report.device.clone(),
        remote: report.remote.clone(),
        counts,
        stages,
    };
    store.write_record(&record).map_err(RunError::Record)?;
    store
        .update_index(pipeline, &decided, |j| {
            stage_record(plan, plan.stage(StageId(decided_ids[j] as u32)), Outcome::Ran)
        })
        .map_err(RunError::Index)?;
    Ok(())
}

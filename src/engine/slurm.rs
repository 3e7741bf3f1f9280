//! The Slurm executor: every stage that must run becomes one `sbatch` job that runs
//! `rkd exec-stage --store DIR KEY` on a node, with `--dependency=afterok:` on its upstream jobs.
//!
//! Before submitting, the coordinator writes each stage's resolved spec to
//! `<store>/specs/<key>.json` (the pipeline's path and text, the stage's name, op, parameters and
//! upstream keys). The job compiles that text again, finds the stage by its key and runs it with
//! the local executor's one-stage path ([`super::run::run_stage`]): same lock, same private
//! directory renamed into `entries/`, same manifest. So the store must be on a filesystem that the
//! submitting machine and the nodes share, and a result is the same whichever executor made it.
//!
//! Job ids are recorded in `<store>/slurm/<time>-<pid>.json` for `rkd status`; job scripts and
//! Slurm's output of each job are in `<store>/slurm/jobs/` and `<store>/slurm/logs/`.

use super::cancel::Cancel;
use super::run::{log_tail, pipeline_dir, prepare, run_stage, skip_reason, write_records, Compute, Finished};
use super::run::{Prepared, RunError, RunOptions, RunReport};
use crate::plan::Plan;
use crate::registry::Resources;
use crate::store::key::hex;
use crate::store::records::{atomic_write, Outcome};
use crate::store::Store;
use crate::value::StageId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

/// How to submit to Slurm.
#[derive(Clone, Debug, Default)]
pub struct SlurmOptions {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// More `sbatch` arguments, passed as they are (after rkd's own, so they win).
    pub sbatch_args: Vec<String>,
    /// `--device`: resolved on each node, not here (the submitting machine may have no GPU).
    pub device: crate::ml::DeviceChoice,
    /// How long before its time limit a job gets SIGUSR1 (`--signal=B:USR1@...`): the stage then
    /// checkpoints and requeues itself. Zero: no signal.
    pub signal_lead: Duration,
}

/// The `sbatch` arguments that make a job survive its time limit and preemption: requeueable,
/// and warned `lead` before the limit (rounded up to whole seconds; none when zero).
pub fn requeue_args(lead: Duration) -> Vec<String> {
    let mut args = vec!["--requeue".to_string()];
    let secs = lead.as_secs() + u64::from(lead.subsec_nanos() > 0);
    if secs > 0 {
        args.push(format!("--signal=B:USR1@{secs}"));
    }
    args
}

/// A stage's resources as its job asks for them: with `--device cuda`, a stage that computes (any
/// op but `exec`) asks for one GPU unless its `resources` say how many.
pub fn job_resources(stage: &crate::compile::StageDef, device: crate::ml::DeviceChoice) -> Resources {
    let mut r = crate::registry::resources(stage.op.name, &stage.params);
    let said = matches!(stage.params.get("resources"), Some(crate::value::Value::Record(f)) if f.contains_key("gpus"));
    if matches!(device, crate::ml::DeviceChoice::Cuda(_)) && stage.op.name != "exec" && !said {
        r.gpus = 1;
    }
    r
}

/// The line of a job script that sets the node's device: the GPU Slurm gave the job (`cuda`, its
/// first visible one), the CPU, or nothing for `auto`.
fn device_env(device: crate::ml::DeviceChoice) -> &'static str {
    match device {
        crate::ml::DeviceChoice::Cuda(_) => "RKD_DEVICE=cuda; export RKD_DEVICE\n",
        crate::ml::DeviceChoice::Cpu => "RKD_DEVICE=cpu; export RKD_DEVICE\n",
        crate::ml::DeviceChoice::Auto => "",
    }
}

/// The resolved stage a Slurm job runs, written to `<store>/specs/<key>.json` before submission.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageSpec {
    /// The rkd version that wrote it.
    pub rkd_version: String,
    /// The stage key (hex).
    pub key: String,
    /// The stage's display name.
    pub name: String,
    /// Its op.
    pub op: String,
    /// The pipeline file (absolute); relative paths in it resolve against its directory.
    pub pipeline: PathBuf,
    /// The pipeline's text when it was submitted (editing the file later does not change the job).
    pub source: String,
    /// Upstream stages: name → key (hex).
    pub inputs: BTreeMap<String, String>,
    /// Resolved parameters (upstream stages by name), for people reading the file.
    pub params: serde_json::Value,
}

/// One submitted job, as recorded for `rkd status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SlurmJob {
    /// The stage's display name.
    pub stage: String,
    /// The stage key (hex).
    pub key: String,
    /// The Slurm job id.
    pub job: String,
    /// The job's last state seen by a waiting `rkd run` (Slurm forgets finished jobs after a while).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// One submission of a pipeline's stages to Slurm.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SlurmRecord {
    /// The pipeline file (absolute).
    pub pipeline: String,
    /// When it was submitted (RFC 3339, UTC).
    pub submitted: String,
    /// The jobs, in dependency order.
    pub jobs: Vec<SlurmJob>,
}

/// The jobs of one submission, for [`wait`].
pub struct Submission {
    /// What was decided before submitting (cached stages, damaged entries).
    pub prepared: Prepared,
    /// Every submitted stage, in dependency order.
    pub jobs: Vec<Submitted>,
    /// Where the submission is recorded.
    pub record: PathBuf,
    /// The remote cache the run used, as records name it.
    pub remote: Option<String>,
    started: SystemTime,
    t0: Instant,
}

/// One submitted stage.
#[derive(Clone, Debug)]
pub struct Submitted {
    /// Its index in the plan.
    pub stage: usize,
    /// Its Slurm job id.
    pub job: String,
}

/// A job state, as Slurm names it (`squeue %T`, `scontrol`'s `JobState=`); parsed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slurm {
    /// Waiting: for resources, or for its dependencies.
    Pending,
    /// Running.
    Running,
    /// Ended with exit code 0.
    Completed,
    /// Cancelled (by scancel, or by Slurm for a dependency that can no longer be satisfied).
    Cancelled,
    /// Ended with a non-zero exit code.
    Failed,
    /// Ran past its time limit.
    Timeout,
    /// Killed for using more memory than it asked for.
    OutOfMemory,
    /// Its node failed.
    NodeFail,
    /// Neither squeue nor scontrol knows the job (any more).
    Unknown,
    /// Another state that Slurm is still working on (CONFIGURING, COMPLETING, SUSPENDED, ...).
    Transient(String),
    /// Another final state (BOOT_FAIL, DEADLINE, PREEMPTED, REVOKED, ...).
    Ended(String),
}

/// States of a job that has not ended yet, besides PENDING and RUNNING.
const TRANSIENT: &[&str] = &[
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
    "RESV_DEL_HOLD",
];

impl Slurm {
    /// The state Slurm names so.
    pub fn parse(name: &str) -> Slurm {
        match name {
            "PENDING" => Slurm::Pending,
            "RUNNING" => Slurm::Running,
            "COMPLETED" => Slurm::Completed,
            "CANCELLED" => Slurm::Cancelled,
            "FAILED" => Slurm::Failed,
            "TIMEOUT" => Slurm::Timeout,
            "OUT_OF_MEMORY" => Slurm::OutOfMemory,
            "NODE_FAIL" => Slurm::NodeFail,
            "UNKNOWN" => Slurm::Unknown,
            other if TRANSIENT.contains(&other) => Slurm::Transient(other.to_string()),
            other => Slurm::Ended(other.to_string()),
        }
    }

    /// Slurm's name of the state.
    pub fn name(&self) -> &str {
        match self {
            Slurm::Pending => "PENDING",
            Slurm::Running => "RUNNING",
            Slurm::Completed => "COMPLETED",
            Slurm::Cancelled => "CANCELLED",
            Slurm::Failed => "FAILED",
            Slurm::Timeout => "TIMEOUT",
            Slurm::OutOfMemory => "OUT_OF_MEMORY",
            Slurm::NodeFail => "NODE_FAIL",
            Slurm::Unknown => "UNKNOWN",
            Slurm::Transient(s) | Slurm::Ended(s) => s,
        }
    }
}

impl std::fmt::Display for Slurm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A job's state as Slurm reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobState {
    /// PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...
    pub state: Slurm,
    /// Why it is pending or ended ("Dependency", "DependencyNeverSatisfied", "None", ...).
    pub reason: String,
}

impl JobState {
    /// Whether the job has ended (it will not change state again).
    pub fn is_final(&self) -> bool {
        !matches!(self.state, Slurm::Pending | Slurm::Running | Slurm::Transient(_))
    }

    /// Whether Slurm gave up on the job because an upstream job failed.
    fn dependency_never_satisfied(&self) -> bool {
        self.reason.contains("DependencyNeverSatisfied")
    }
}

/// Why a Slurm command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program is not on the PATH.
    #[error("`{0}` is not installed here: the Slurm executor needs Slurm's commands on the PATH")]
    NotInstalled(String),
    /// The program could not be started.
    #[error("cannot run `{program}`: {source}")]
    CannotRun {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The program ran and failed.
    #[error("`{command}` failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it wrote to stderr (trimmed).
        stderr: String,
    },
}

/// Why submitting, following or running Slurm jobs failed.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// Deciding what runs, or recording the run, failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// A Slurm command failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// Ctrl-C while submitting.
    #[error("interrupted while submitting; the jobs submitted so far were cancelled")]
    Interrupted,
    /// A stage could not be submitted.
    #[error("cannot submit stage `{stage}`: {source}{undone}")]
    Submit {
        /// The stage's name.
        stage: String,
        /// Why.
        source: CommandError,
        /// " (the N jobs submitted before it were cancelled)", or empty.
        undone: String,
    },
    /// sbatch answered something else than a job id.
    #[error("sbatch answered `{0}`, not a job id")]
    NotAJobId(String),
    /// A file or directory could not be written or read.
    #[error("{0}")]
    Io(String),
    /// Slurm stopped answering while the jobs ran.
    #[error("cannot follow the Slurm jobs ({source}); they go on: `rkd status {}` shows them", .pipeline.display())]
    Follow {
        /// Why.
        source: CommandError,
        /// The pipeline file.
        pipeline: PathBuf,
    },
    /// The job cannot run its stage on this node.
    #[error("{0}")]
    Node(String),
}

/// Runs `sbatch` and friends, or reports that they cannot be run.
fn slurm_command(program: &str, args: &[String]) -> Result<String, CommandError> {
    let out = Command::new(program).args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            CommandError::NotInstalled(program.to_string())
        } else {
            CommandError::CannotRun {
                program: program.to_string(),
                source: e,
            }
        }
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CommandError::Failed {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Quotes a string for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `sbatch` options for a stage's resources.
pub fn resource_args(r: &Resources) -> Vec<String> {
    let mut args = vec![format!("--cpus-per-task={}", r.cpus)];
    if let Some(m) = &r.mem {
        args.push(format!("--mem={m}"));
    }
    if let Some(t) = &r.time {
        args.push(format!("--time={t}"));
    }
    if r.gpus > 0 {
        args.push(format!("--gres=gpu:{}", r.gpus));
    }
    args
}

/// The `sbatch` options that make a job wait for its upstream jobs, and die if one fails.
pub fn dependency_args(upstream_jobs: &[String]) -> Vec<String> {
    if upstream_jobs.is_empty() {
        return Vec::new();
    }
    vec![
        format!("--dependency=afterok:{}", upstream_jobs.join(":")),
        "--kill-on-invalid-dep=yes".into(),
    ]
}

/// The job id in `sbatch --parsable`'s answer (`ID` or `ID;cluster`).
pub fn parse_job_id(out: &str) -> Option<String> {
    let id = out.trim().split(';').next()?.trim();
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit() || c == '_')).then(|| id.to_string())
}

/// Writes the specs of the stages to run, submits one job per stage, and records the job ids.
pub fn submit(
    plan: &Plan,
    pipeline: &Path,
    source_text: &str,
    store: &Store,
    opts: &RunOptions,
    slurm: &SlurmOptions,
    cancel: &Cancel,
) -> Result<Submission, SlurmError> {
    let started = SystemTime::now();
    let t0 = Instant::now();
    let prepared = prepare(plan, pipeline, store, opts)?;
    let mut order: Vec<usize> = prepared.to_run.iter().copied().collect();
    order.sort_unstable();
    let exe = std::env::current_exe().map_err(|e| SlurmError::Io(format!("cannot find the rkd binary: {e}")))?;
    let pipeline_abs = pipeline.canonicalize().unwrap_or_else(|_| pipeline.to_path_buf());
    let workdir = pipeline_dir(pipeline);
    let dirs = [
        store.specs_dir(),
        store.slurm_dir().join("jobs"),
        store.slurm_dir().join("logs"),
    ];
    for d in &dirs {
        std::fs::create_dir_all(d).map_err(|e| SlurmError::Io(format!("cannot create {}: {e}", d.display())))?;
    }
    let store_abs = store
        .root
        .canonicalize()
        .map_err(|e| SlurmError::Io(format!("cannot resolve the store {}: {e}", store.root.display())))?;
    let mut job_of: HashMap<usize, String> = HashMap::new();
    let mut jobs: Vec<Submitted> = Vec::new();
    let undo = |jobs: &[Submitted]| {
        let ids: Vec<String> = jobs.iter().map(|j| j.job.clone()).collect();
        scancel(&ids, false);
    };
    for &i in &order {
        if cancel.is_interrupted() {
            undo(&jobs);
            return Err(SlurmError::Interrupted);
        }
        let stage = plan.stage(StageId(i as u32));
        let key = hex(&stage.key);
        let record = super::record::stage_record(plan, stage, Outcome::Ran);
        let spec = StageSpec {
            rkd_version: env!("CARGO_PKG_VERSION").into(),
            key: key.clone(),
            name: stage.def.name.clone(),
            op: stage.def.op.name.into(),
            pipeline: pipeline_abs.clone(),
            source: source_text.to_string(),
            inputs: record.inputs,
            params: record.params,
        };
        let spec_path = store.specs_dir().join(format!("{key}.json"));
        let json = serde_json::to_vec_pretty(&spec).map_err(|e| SlurmError::Io(e.to_string()))?;
        atomic_write(&spec_path, &json)
            .map_err(|e| SlurmError::Io(format!("cannot write {}: {e}", spec_path.display())))?;
        let script_path = store.slurm_dir().join("jobs").join(format!("{key}.sh"));
        // `exec`: rkd is the batch shell, so `--signal=B:USR1` reaches it.
        let script = format!(
            "#!/bin/sh\n# rkd: stage `{}` of {}\n{}exec {} exec-stage --store {} --retries {} --retry-delay {} {key}\n",
            stage.def.name.replace('\n', " "),
            pipeline_abs.display(),
            device_env(slurm.device),
            sh_quote(&exe.display().to_string()),
            sh_quote(&store_abs.display().to_string()),
            super::run::retries_of(stage, opts.retries),
            sh_quote(&humantime::format_duration(opts.retry_delay).to_string()),
        );
        atomic_write(&script_path, script.as_bytes())
            .map_err(|e| SlurmError::Io(format!("cannot write {}: {e}", script_path.display())))?;
        let upstream: Vec<String> = stage
            .def
            .inputs
            .iter()
            .filter_map(|id| job_of.get(&(id.0 as usize)).cloned())
            .collect();
        let log = store_abs.join("slurm").join("logs").join(format!("{key}.%j.out"));
        let mut args = vec![
            "--parsable".to_string(),
            format!("--job-name=rkd:{}", stage.def.name),
            format!("--output={}", log.display()),
            format!("--chdir={}", workdir.display()),
        ];
        args.extend(resource_args(&job_resources(&stage.def, slurm.device)));
        args.extend(requeue_args(slurm.signal_lead));
        if let Some(p) = &slurm.partition {
            args.push(format!("--partition={p}"));
        }
        if let Some(a) = &slurm.account {
            args.push(format!("--account={a}"));
        }
        args.extend(dependency_args(&upstream));
        args.extend(slurm.sbatch_args.iter().cloned());
        args.push(script_path.display().to_string());
        let id = match slurm_command("sbatch", &args) {
            Ok(out) => match parse_job_id(&out) {
                Some(id) => id,
                None => {
                    undo(&jobs);
                    return Err(SlurmError::NotAJobId(out.trim().to_string()));
                }
            },
            Err(e) => {
                undo(&jobs);
                let undone = if jobs.is_empty() {
                    String::new()
                } else {
                    format!(" (the {} jobs submitted before it were cancelled)", jobs.len())
                };
                return Err(SlurmError::Submit {
                    stage: stage.def.name.clone(),
                    source: e,
                    undone,
                });
            }
        };
        job_of.insert(i, id.clone());
        jobs.push(Submitted { stage: i, job: id });
    }
    let record = SlurmRecord {
        pipeline: pipeline_abs.display().to_string(),
        submitted: humantime::format_rfc3339_seconds(started).to_string(),
        jobs: jobs
            .iter()
            .map(|j| {
                let s = plan.stage(StageId(j.stage as u32));
                SlurmJob {
                    stage: s.def.name.clone(),
                    key: hex(&s.key),
                    job: j.job.clone(),
                    state: None,
                }
            })
            .collect(),
    };
    let stamp = record
        .submitted
        .replace([':', '-'], "")
        .replace('T', "-")
        .replace('Z', "");
    let record_path = store.slurm_dir().join(format!("{stamp}-{}.json", std::process::id()));
    if !jobs.is_empty() {
        write_slurm_record(&record_path, &record)?;
    }
    Ok(Submission {
        prepared,
        jobs,
        record: record_path,
        remote: opts.remote.clone(),
        started,
        t0,
    })
}

fn write_slurm_record(path: &Path, record: &SlurmRecord) -> Result<(), SlurmError> {
    let json = serde_json::to_vec_pretty(record).map_err(|e| SlurmError::Io(e.to_string()))?;
    atomic_write(path, &json).map_err(|e| SlurmError::Io(format!("cannot write {}: {e}", path.display())))
}

/// Cancels jobs (only those still pending when `pending_only`); errors are ignored, since a job
/// that already ended cannot be cancelled and needs not be.
fn scancel(ids: &[String], pending_only: bool) {
    if ids.is_empty() {
        return;
    }
    let mut args: Vec<String> = Vec::new();
    if pending_only {
        args.push("--state=PENDING".into());
    }
    args.extend(ids.iter().cloned());
    let _ = slurm_command("scancel", &args);
}

/// Parses `squeue -h -o %i|%T|%r` lines.
pub fn parse_squeue(out: &str) -> HashMap<String, JobState> {
    out.lines()
        .filter_map(|line| {
            let mut parts = line.trim().splitn(3, '|');
            let id = parts.next()?.trim();
            let state = parts.next()?.trim();
            let reason = parts.next().unwrap_or("").trim();
            (!id.is_empty() && !state.is_empty()).then(|| {
                (
                    id.to_string(),
                    JobState {
                        state: Slurm::parse(state),
                        reason: reason.to_string(),
                    },
                )
            })
        })
        .collect()
}

/// The value of `Name=` in one line of `scontrol -o show job`.
pub fn scontrol_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|tok| tok.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
}

/// The states of these jobs: `squeue` for the ones it knows, then `scontrol show job` for the
/// rest (finished jobs stay known to the controller for MinJobAge, 300 s by default). Jobs that
/// neither knows are left out.
pub fn query(ids: &[String]) -> Result<HashMap<String, JobState>, CommandError> {
    let mut states = HashMap::new();
    if ids.is_empty() {
        return Ok(states);
    }
    let args = vec![
        "-h".to_string(),
        "--states=all".into(),
        "-o".into(),
        "%i|%T|%r".into(),
        format!("--jobs={}", ids.join(",")),
    ];
    // squeue refuses the whole list when one id is no longer known; scontrol answers the rest.
    let squeue_error = match slurm_command("squeue", &args) {
        Ok(out) => {
            states = parse_squeue(&out);
            None
        }
        Err(e) => Some(e),
    };
    let missing: Vec<&String> = ids.iter().filter(|id| !states.contains_key(*id)).collect();
    for id in missing {
        match slurm_command("scontrol", &["-o".into(), "show".into(), "job".into(), id.clone()]) {
            Ok(out) => {
                if let Some(line) = out.lines().find(|l| scontrol_field(l, "JobId") == Some(id.as_str())) {
                    states.insert(
                        id.clone(),
                        JobState {
                            state: Slurm::parse(scontrol_field(line, "JobState").unwrap_or("UNKNOWN")),
                            reason: scontrol_field(line, "Reason").unwrap_or("").to_string(),
                        },
                    );
                }
            }
            // A job the controller has forgotten.
            Err(CommandError::Failed { stderr, .. }) if stderr.contains("Invalid job id") => {}
            Err(e) => return Err(squeue_error.unwrap_or(e)),
        }
    }
    Ok(states)
}

/// How often [`wait`] asks Slurm.
const POLL: Duration = Duration::from_millis(1000);

/// Waits for the submitted jobs and reports them like a local run: a job that completed and left
/// its entry ran; a job whose upstream failed is skipped (Slurm cancels it for its
/// DependencyNeverSatisfied); without `keep_going` the first failure cancels the jobs still
/// pending; Ctrl-C (`cancel` interrupted) cancels every job. Writes the run record.
pub fn wait(
    plan: &Plan,
    pipeline: &Path,
    source_text: &str,
    store: &Store,
    sub: Submission,
    keep_going: bool,
    cancel: &Cancel,
) -> Result<RunReport, SlurmError> {
    let Submission {
        prepared,
        jobs,
        record,
        remote,
        started,
        t0,
    } = sub;
    let mut results = prepared.results;
    let ids: Vec<String> = jobs.iter().map(|j| j.job.clone()).collect();
    let mut last: Vec<Option<JobState>> = vec![None; jobs.len()];
    let mut unknown_polls = vec![0u32; jobs.len()];
    let mut cancelled_all = false;
    let mut stopped = false;
    let mut query_errors = 0;
    let mut cancel_deadline: Option<Instant> = None;
    while last.iter().any(|s| !s.as_ref().is_some_and(JobState::is_final)) {
        if cancel.is_interrupted() && !cancelled_all {
            cancelled_all = true;
            crate::say!("cancelling the {} submitted Slurm jobs", jobs.len());
            let open: Vec<String> = (0..jobs.len())
                .filter(|&j| !last[j].as_ref().is_some_and(JobState::is_final))
                .map(|j| ids[j].clone())
                .collect();
            scancel(&open, false);
            cancel_deadline = Some(Instant::now() + Duration::from_secs(30));
        }
        if cancel_deadline.is_some_and(|d| Instant::now() > d) {
            break;
        }
        let open: Vec<String> = (0..jobs.len())
            .filter(|&j| !last[j].as_ref().is_some_and(JobState::is_final))
            .map(|j| ids[j].clone())
            .collect();
        let states = match query(&open) {
            Ok(s) => {
                query_errors = 0;
                s
            }
            Err(e) => {
                query_errors += 1;
                if query_errors >= 30 {
                    return Err(SlurmError::Follow {
                        source: e,
                        pipeline: pipeline.to_path_buf(),
                    });
                }
                HashMap::new()
            }
        };
        let mut newly_failed = false;
        for j in 0..jobs.len() {
            if last[j].as_ref().is_some_and(JobState::is_final) {
                continue;
            }
            match states.get(&ids[j]) {
                Some(s) => {
                    if s.state == Slurm::Pending && s.dependency_never_satisfied() {
                        // --kill-on-invalid-dep should have cancelled it; make sure.
                        scancel(&[ids[j].clone()], false);
                    }
                    if s.is_final() {
                        let stage = plan.stage(StageId(jobs[j].stage as u32));
                        if s.state != Slurm::Completed && !s.reason.contains("Dependency") && !cancel.is_interrupted() {
                            newly_failed = true;
                        }
                        let shown = if s.state == Slurm::Completed { "✓" } else { "✗" };
                        crate::say!("{shown} {} (Slurm job {}): {}", stage.def.name, ids[j], describe(s));
                    }
                    last[j] = Some(s.clone());
                }
                None if query_errors == 0 => {
                    unknown_polls[j] += 1;
                    if unknown_polls[j] >= 3 {
                        last[j] = Some(JobState {
                            state: Slurm::Unknown,
                            reason: "Slurm no longer knows the job".into(),
                        });
                    }
                }
                None => {}
            }
        }
        if newly_failed && !keep_going && !stopped {
            stopped = true;
            let pending: Vec<String> = (0..jobs.len())
                .filter(|&j| !last[j].as_ref().is_some_and(JobState::is_final))
                .map(|j| ids[j].clone())
                .collect();
            scancel(&pending, true);
        }
        if last.iter().all(|s| s.as_ref().is_some_and(JobState::is_final)) {
            break;
        }
        let until = Instant::now() + POLL;
        while (cancelled_all || !cancel.is_interrupted()) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // Outcomes, in dependency order, so a stage's upstream is decided before it.
    let mut failed: HashSet<usize> = HashSet::new();
    let mut not_ok: HashSet<usize> = HashSet::new();
    for (j, Submitted { stage: i, job: id }) in jobs.iter().enumerate() {
        let stage = plan.stage(StageId(*i as u32));
        let state = last[j].clone().unwrap_or(JobState {
            state: Slurm::Unknown,
            reason: String::new(),
        });
        let r = results[*i].as_mut().expect("submitted stages are selected");
        let upstream_bad = stage.def.inputs.iter().any(|u| not_ok.contains(&(u.0 as usize)));
        if state.state == Slurm::Completed && store.contains(&stage.key) {
            let numbers = entry_numbers(store, &stage.key);
            r.outcome = Outcome::Ran;
            r.time_s = numbers.time_s;
            r.metrics = numbers.metrics;
            r.resumed_from = numbers.resumed_from;
            r.gpu_memory_peak = numbers.gpu_memory_peak;
            r.attempts = 1;
            continue;
        }
        not_ok.insert(*i);
        if cancel.is_interrupted() && state.state != Slurm::Failed {
            r.outcome = Outcome::Skipped;
            r.error = Some("interrupted".into());
        } else if upstream_bad || state.dependency_never_satisfied() {
            r.outcome = Outcome::Skipped;
            r.error = Some(skip_reason(plan, *i, &failed));
        } else if stopped && state.state == Slurm::Cancelled {
            r.outcome = Outcome::Skipped;
            r.error = Some(
                "not started: the run stopped after a failure and cancelled it (use --keep-going to run independent stages)"
                    .into(),
            );
        } else {
            failed.insert(*i);
            r.outcome = Outcome::Failed;
            r.error = Some(failure_message(store, &stage.key, id, &state));
        }
    }
    // Keep the final states, for `rkd status` once Slurm has forgotten the jobs.
    if let Ok(text) = std::fs::read(&record) {
        if let Ok(mut rec) = serde_json::from_slice::<SlurmRecord>(&text) {
            for (job, state) in rec.jobs.iter_mut().zip(&last) {
                job.state = state.as_ref().map(describe);
            }
            let _ = write_slurm_record(&record, &rec);
        }
    }
    let report = RunReport {
        stages: results,
        interrupted: cancel.is_interrupted(),
        damaged: prepared.damaged,
        duration_s: t0.elapsed().as_secs_f64(),
        // Each job uses its node's device (`RKD_DEVICE`, else a GPU the job was given); each
        // entry's meta.json names it.
        device: "each Slurm node's own".into(),
        remote,
    };
    write_records(plan, pipeline, source_text, store, &report, started)?;
    Ok(report)
}

/// "COMPLETED", or "CANCELLED (DependencyNeverSatisfied)".
pub fn describe(s: &JobState) -> String {
    if s.reason.is_empty() || s.reason == "None" {
        s.state.to_string()
    } else {
        format!("{} ({})", s.state, s.reason)
    }
}

/// Seconds and metrics of a stored entry (from its meta.json and metrics.json).
fn entry_numbers(store: &Store, key: &crate::store::key::Key) -> EntryNumbers {
    let dir = store.entry_dir(key);
    let meta = std::fs::read(dir.join("meta.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .unwrap_or_default();
    let metrics = std::fs::read(dir.join("metrics.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    EntryNumbers {
        time_s: meta["time_s"].as_f64().unwrap_or(0.0),
        metrics,
        resumed_from: meta["resumed_from"].as_u64(),
        gpu_memory_peak: meta["gpu_memory_peak_bytes"].as_u64(),
    }
}

/// What a job's stored entry says about its run.
struct EntryNumbers {
    time_s: f64,
    metrics: BTreeMap<String, f64>,
    /// The step its training resumed from (a requeued job, a rerun after a kill).
    resumed_from: Option<u64>,
    /// The most GPU memory in use while it ran on a GPU node.
    gpu_memory_peak: Option<u64>,
}

/// Why a job failed: its state, the tail of the stage's log (or of Slurm's output, when the
/// stage never started), and where the logs are.
fn failure_message(store: &Store, key: &crate::store::key::Key, job: &str, state: &JobState) -> String {
    let mut msg = format!("Slurm job {job} ended {}", describe(state));
    let stage_log = store.root.join("failed").join(format!("{}.log", hex(key)));
    let slurm_log = store.slurm_dir().join("logs").join(format!("{}.{job}.out", hex(key)));
    // The job's output holds rkd's own error, which quotes the end of the stage's log.
    let shown = if slurm_log.is_file() { &slurm_log } else { &stage_log };
    let tail = log_tail(shown);
    if !tail.is_empty() {
        msg.push_str(&format!("\n{tail}"));
    }
    let logs: Vec<String> = [&slurm_log, &stage_log]
        .iter()
        .filter(|p| p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if !logs.is_empty() {
        msg.push_str(&format!("\n(logs: {})", logs.join(", ")));
    }
    msg
}

/// The most recent job of each stage key, over every submission recorded in the store.
pub fn latest_jobs(store: &Store) -> HashMap<String, SlurmJob> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(store.slurm_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    let mut latest = HashMap::new();
    for p in paths {
        let Ok(rec) = std::fs::read(&p)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<SlurmRecord>(&b).map_err(|e| e.to_string()))
        else {
            continue;
        };
        for job in rec.jobs {
            latest.insert(job.key.clone(), job);
        }
    }
    latest
}

/// Runs one stage from its spec in the store: what a Slurm job does (`rkd exec-stage`).
/// A failed attempt is rerun up to `retries` times (the stage's own `retries` argument wins),
/// `retry_delay` apart and doubling.
pub fn exec_stage(
    store_dir: &Path,
    key: &str,
    cancel: &Cancel,
    (retries, retry_delay): (usize, Duration),
) -> Result<Finished, SlurmError> {
    let host = hostname();
    if !store_dir.join("entries").is_dir() && !store_dir.join("specs").is_dir() {
        return Err(SlurmError::Node(format!(
            "the store {} is not visible on this node ({host}): the Slurm executor needs the store on a \
             filesystem shared by the submitting machine and every node",
            store_dir.display()
        )));
    }
    let store = Store::at(store_dir);
    let spec_path = store.specs_dir().join(format!("{key}.json"));
    let text = std::fs::read(&spec_path).map_err(|e| {
        SlurmError::Node(format!(
            "cannot read the stage spec {} on {host}: {e} (the store must be on a filesystem shared with the submitting machine)",
            spec_path.display()
        ))
    })?;
    let spec: StageSpec = serde_json::from_slice(&text)
        .map_err(|e| SlurmError::Node(format!("the stage spec {} is damaged: {e}", spec_path.display())))?;
    if spec.rkd_version != env!("CARGO_PKG_VERSION") {
        crate::say!(
            "warning: the stage was submitted by rkd {}, and this is rkd {}",
            spec.rkd_version,
            env!("CARGO_PKG_VERSION")
        );
    }
    let display = spec.pipeline.display().to_string();
    let mut compiled = crate::compile::compile_source(&display, &spec.pipeline, spec.source.clone());
    if !compiled.diags.is_empty() {
        return Err(SlurmError::Node(format!(
            "the pipeline does not compile on {host}:\n{}",
            crate::diagnostic::render_all(&compiled.diags, &compiled.sources, false)
        )));
    }
    // The Hub references are pinned as the submitting run pinned them: by the lock file beside
    // the pipeline, which it wrote before submitting.
    crate::lockfile::pin(&spec.pipeline, &mut compiled.stages, crate::lockfile::Mode::Use)
        .map_err(|problems| SlurmError::Node(format!("on {host}: {}", problems.join("; "))))?;
    let mut fingerprints = crate::plan::fingerprint::Fingerprinter::load(&store.stat_cache());
    let plan = Plan::build(&compiled, &mut fingerprints).map_err(|diags| {
        SlurmError::Node(format!(
            "cannot plan the pipeline on {host} (are its input files on the shared filesystem?):\n{}",
            crate::diagnostic::render_all(&diags, &compiled.sources, false)
        ))
    })?;
    let Some(stage) = plan.stages().find(|s| hex(&s.key) == spec.key) else {
        return Err(SlurmError::Node(format!(
            "stage `{}` (key {}) is not in the pipeline as this node sees it: its input files differ from \
             the submitting machine's (they must be on a filesystem shared by both, and unchanged)",
            spec.name,
            &spec.key[..12.min(spec.key.len())]
        )));
    };
    // While the job runs, `rkd gc` keeps its inputs and its own key.
    let keys = std::iter::once(stage.key).chain(stage.def.inputs.iter().map(|u| plan.stage(*u).key));
    let _lease = store.lease(keys).map_err(|e| {
        SlurmError::Node(format!(
            "cannot register the job in the store {}: {e}",
            store_dir.display()
        ))
    })?;
    for up in &stage.def.inputs {
        let u = plan.stage(*up);
        if !store.contains(&u.key) {
            return Err(SlurmError::Node(format!(
                "needs `{}` (key {}), whose result is not in the store {}",
                u.def.name,
                &hex(&u.key)[..12],
                store_dir.display()
            )));
        }
    }
    let threads = std::env::var("SLURM_CPUS_PER_TASK")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    // The job's CPUs are the pool its stage computes on (an error means rayon already started:
    // its pool then stands, one thread per core this process may use).
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    let threads = crate::ml::kernels::runtime::shared_threads();
    let progress = super::progress::Progress::hidden();
    let dir = spec
        .pipeline
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    // The node's own device: its GPU when the job was given one (`RKD_DEVICE` overrides).
    let choice = match std::env::var("RKD_DEVICE") {
        Ok(word) => word.parse().map_err(SlurmError::Node)?,
        Err(_) => crate::ml::DeviceChoice::Auto,
    };
    let device = crate::ml::kernels::device::resolve(choice).map_err(|e| SlurmError::Node(e.to_string()))?;
    let compute = Compute {
        threads,
        device,
        gpus: Vec::new(),
    };
    Ok(super::run::with_retries(
        super::run::retries_of(stage, retries),
        retry_delay,
        cancel,
        || run_stage(&plan, stage, &store, &dir, &progress, cancel, &compute),
        |failed, attempt, wait| crate::say!("{}", super::run::retry_line(&stage.def.name, failed, attempt, wait)),
    ))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "this node".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_device_cuda_computing_stages_ask_for_a_gpu_unless_they_say() {
        let src = "let b = bert(layers: 1, hidden: 16, heads: 2, intermediate: 32, max_position: 32)\n\
                   let d = synthetic_text(seed: 1, max_len: 16)\n\
                   stage t = train(model: b, data: d)\n\
                   stage u = train(model: b, data: d, seed: 2, resources: {gpus: 0})\n\
                   stage x = exec(cmd: \"true\")\n";
        let c = crate::compile::compile_source("p.rkd", Path::new("p.rkd"), src.into());
        assert!(c.diags.is_empty(), "{:?}", c.diags);
        let gpus = |name: &str, device| {
            let stage = c.stages.iter().find(|s| s.name == name).unwrap();
            job_resources(stage, device).gpus
        };
        use crate::ml::DeviceChoice::{Auto, Cuda};
        assert_eq!((gpus("t", Cuda(0)), gpus("u", Cuda(0)), gpus("x", Cuda(0))), (1, 0, 0));
        assert_eq!(gpus("t", Auto), 0);
        assert_eq!(device_env(Cuda(1)), "RKD_DEVICE=cuda; export RKD_DEVICE\n");
        assert_eq!(device_env(Auto), "");
    }

    #[test]
    fn jobs_are_requeueable_and_warned_before_their_time_limit() {
        assert_eq!(
            requeue_args(Duration::from_secs(120)),
            ["--requeue", "--signal=B:USR1@120"]
        );
        assert_eq!(
            requeue_args(Duration::from_millis(1500)),
            ["--requeue", "--signal=B:USR1@2"]
        );
        assert_eq!(requeue_args(Duration::ZERO), ["--requeue"]);
    }

    #[test]
    fn sbatch_options_from_resources_and_dependencies() {
        let r = Resources {
            cpus: 8,
            mem: Some("16G".into()),
            time: Some("2:00:00".into()),
            gpus: 1,
        };
        assert_eq!(
            resource_args(&r),
            ["--cpus-per-task=8", "--mem=16G", "--time=2:00:00", "--gres=gpu:1"]
        );
        assert!(dependency_args(&[]).is_empty());
        assert_eq!(
            dependency_args(&["12".into(), "13".into()]),
            ["--dependency=afterok:12:13", "--kill-on-invalid-dep=yes"]
        );
        assert_eq!(parse_job_id("4242\n").as_deref(), Some("4242"));
        assert_eq!(parse_job_id("4242;cluster\n").as_deref(), Some("4242"));
        assert_eq!(parse_job_id("error"), None);
    }

    #[test]
    fn squeue_and_scontrol_answers_parse() {
        let states = parse_squeue("12|COMPLETED|None\n13|PENDING|DependencyNeverSatisfied\n");
        assert_eq!(states["12"].state, Slurm::Completed);
        assert_eq!(Slurm::parse("COMPLETING"), Slurm::Transient("COMPLETING".into()));
        assert!(!JobState {
            state: Slurm::parse("COMPLETING"),
            reason: String::new()
        }
        .is_final());
        assert_eq!(Slurm::parse("BOOT_FAIL").to_string(), "BOOT_FAIL");
        assert!(states["12"].is_final());
        assert!(!states["13"].is_final());
        assert_eq!(describe(&states["13"]), "PENDING (DependencyNeverSatisfied)");
        let line = "JobId=13 JobName=rkd:c UserId=root(0) JobState=CANCELLED Reason=DependencyNeverSatisfied Dependency=afterok:12(failed)";
        assert_eq!(scontrol_field(line, "JobState"), Some("CANCELLED"));
        assert_eq!(scontrol_field(line, "Reason"), Some("DependencyNeverSatisfied"));
        assert_eq!(scontrol_field(line, "JobId"), Some("13"));
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}

//! `rkd status`: how far each stage of a pipeline is (stored, training progress and checkpoints,
//! Slurm jobs).

use crate::engine::slurm::{describe, latest_jobs, query};
use crate::store::check_cache::{check_stored, path_for, Stored};
use crate::store::checkpoints::StageCheckpoints;
use crate::store::key::hex;
use crate::text::cell;
use std::collections::HashSet;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

/// Prints, for each stage of the pipeline's current plan, whether its result is stored, the
/// progress of an unfinished training stage (step, epoch, last checkpoint) and, for a pipeline
/// run with `--executor slurm`, its latest job and the job's state. Exit 1 when the pipeline does
/// not load or Slurm cannot be asked.
pub fn run(file: &Path, store: Option<&Path>) -> ExitCode {
    let Some((_, plan, store)) = super::load_plan(file, store) else {
        return ExitCode::FAILURE;
    };
    let jobs = latest_jobs(&store);
    let keys: Vec<String> = plan.stages().map(|s| hex(&s.key)).collect();
    let ids: Vec<String> = keys.iter().filter_map(|k| jobs.get(k)).map(|j| j.job.clone()).collect();
    let states = if ids.is_empty() {
        None
    } else {
        match query(&ids) {
            Ok(s) => Some(s),
            Err(e) => {
                crate::say!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    // Each stored result checked as `rkd run` checks it before trusting it (sizes and times).
    let all: Vec<_> = plan.stages().map(|s| s.key).collect();
    let checked = check_stored(&store, &all, &vec![true; all.len()], false, &path_for(&store, file));
    let checkpointed: HashSet<_> = store.checkpointed_keys().into_iter().collect();
    let progress: Vec<String> = plan
        .stages()
        .zip(&checked)
        .map(|(s, c)| match checkpointed.contains(&s.key) && *c != Stored::Intact {
            true => progress_text(&store.checkpoints(&s.key)),
            false => "-".to_string(),
        })
        .collect();
    let names: Vec<String> = plan.stages().map(|s| cell(&s.def.name)).collect();
    let width = crate::text::width(names.iter(), "STAGE");
    let pwidth = crate::text::width(progress.iter(), "PROGRESS");
    match &states {
        Some(_) => println!(
            "{:width$}  {:>8}  {:40}  {:7}  {:pwidth$}  KEY",
            "STAGE", "JOB", "STATE", "STORED", "PROGRESS"
        ),
        None => println!("{:width$}  {:7}  {:pwidth$}  KEY", "STAGE", "STORED", "PROGRESS"),
    }
    for (((checked, key), name), progress) in checked.iter().zip(&keys).zip(&names).zip(&progress) {
        let stored = match checked {
            Stored::Intact => "yes",
            Stored::Damaged(_) => "damaged",
            Stored::Absent | Stored::Unchecked => "no",
        };
        match &states {
            Some(states) => {
                let (job, state) = match jobs.get(key) {
                    Some(j) => {
                        let state = match (states.get(&j.job), &j.state) {
                            (Some(st), _) => describe(st),
                            (None, Some(seen)) => format!("{seen} (seen by rkd run)"),
                            (None, None) => "unknown (Slurm no longer knows it)".into(),
                        };
                        (j.job.clone(), state)
                    }
                    None => ("-".into(), "-".into()),
                };
                println!(
                    "{name:width$}  {job:>8}  {state:40}  {stored:7}  {progress:pwidth$}  {}",
                    &key[..12]
                );
            }
            None => println!("{name:width$}  {stored:7}  {progress:pwidth$}  {}", &key[..12]),
        }
    }
    // Said when the table has nothing but STORED to tell.
    if states.is_none() && progress.iter().all(|p| p == "-") {
        println!(
            "\n(no stage was submitted to Slurm from the store {}: `rkd run {} --executor slurm` submits them)",
            store.root.display(),
            file.display()
        );
    }
    ExitCode::SUCCESS
}

/// An unfinished stage's progress: "step 120/300 · epoch 2/3 · checkpoint at step 100, 3m ago"
/// (or "resumable from step 100" when only a checkpoint is known).
pub fn progress_text(checkpoints: &StageCheckpoints) -> String {
    let latest = checkpoints.latest();
    let ago = |time: &str| -> String {
        humantime::parse_rfc3339(time)
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map(|d| format!("{} ago", humantime::format_duration(Duration::from_secs(d.as_secs()))))
            .unwrap_or_else(|| time.to_string())
    };
    match checkpoints.progress() {
        Some(p) => {
            let mut text = format!(
                "step {}/{} · epoch {}/{} ({})",
                p.step,
                p.planned_steps,
                p.epoch,
                p.epochs,
                ago(&p.updated)
            );
            match (&latest, &p.checkpoint) {
                (Some(c), Some((step, time))) if c.step == *step => {
                    text.push_str(&format!(" · resumable from step {step} ({})", ago(time)))
                }
                (Some(c), _) => text.push_str(&format!(" · resumable from step {}", c.step)),
                (None, _) => text.push_str(" · no checkpoint"),
            }
            text
        }
        None => latest.map_or("-".to_string(), |c| format!("resumable from step {}", c.step)),
    }
}

//! `rkd status`: the Slurm jobs of a pipeline's stages.

use crate::engine::slurm::{describe, latest_jobs, query};
use crate::store::key::hex;
use crate::text::cell;
use std::path::Path;
use std::process::ExitCode;

/// Prints, for each stage of the pipeline's current plan, its latest Slurm job, the job's state
/// and whether the stage's result is stored. Exit 1 when the pipeline does not load or Slurm
/// cannot be asked.
pub fn run(file: &Path, store: Option<&Path>) -> ExitCode {
    let Some((_, plan, store)) = super::load_plan(file, store) else {
        return ExitCode::FAILURE;
    };
    let jobs = latest_jobs(&store);
    let keys: Vec<String> = plan.stages().map(|s| hex(&s.key)).collect();
    let ids: Vec<String> = keys.iter().filter_map(|k| jobs.get(k)).map(|j| j.job.clone()).collect();
    if ids.is_empty() {
        println!(
            "no stage of {} was submitted to Slurm from the store {} (`rkd run {} --executor slurm` submits them)",
            file.display(),
            store.root.display(),
            file.display()
        );
        return ExitCode::SUCCESS;
    }
    let states = match query(&ids) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let names: Vec<String> = plan.stages().map(|s| cell(&s.def.name)).collect();
    let width = crate::text::width(names.iter(), "STAGE");
    println!("{:width$}  {:>8}  {:40}  {:6}  KEY", "STAGE", "JOB", "STATE", "STORED");
    for ((s, key), name) in plan.stages().zip(&keys).zip(&names) {
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
        let stored = if store.contains(&s.key) { "yes" } else { "no" };
        println!("{:width$}  {job:>8}  {state:40}  {stored:6}  {}", name, &key[..12]);
    }
    ExitCode::SUCCESS
}

//! A pipeline's exchange with a remote cache: before a run, the selected stages the store lacks
//! and the remote holds are pulled (only those: what this run needs, not the whole remote);
//! after it, what the store holds and the remote lacks is pushed.

use super::run::Damaged;
use crate::plan::Plan;
use crate::remote::{Pulled, Pushed, Remote, RemoteError};
use crate::store::key::Key;
use crate::store::Store;
use crate::value::StageId;
use std::collections::HashSet;

/// What a pull did.
#[derive(Debug, Default)]
pub struct PullReport {
    /// Plan indices of the stages pulled into the store.
    pub pulled: Vec<usize>,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Stages whose remote copy did not match its record (they run here instead).
    pub damaged: Vec<Damaged>,
    /// Plan indices of those stages.
    pub damaged_ids: HashSet<usize>,
    /// Stages that could not be pulled for another reason: (name, why).
    pub failed: Vec<(String, String)>,
}

/// What a push did.
#[derive(Debug, Default)]
pub struct PushReport {
    /// Entries uploaded.
    pub pushed: usize,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Entries the remote held already.
    pub already: usize,
    /// Entries that could not be pushed: (name, why).
    pub failed: Vec<(String, String)>,
}

fn key_of(plan: &Plan, i: usize) -> Key {
    plan.stage(StageId(i as u32)).key
}

fn name_of(plan: &Plan, i: usize) -> String {
    plan.name(StageId(i as u32)).to_string()
}

/// The selected stages that the store lacks and the remote holds, in plan order.
pub fn remote_hits(plan: &Plan, store: &Store, remote: &Remote, selected: &[bool]) -> Result<Vec<usize>, RemoteError> {
    let keys: Vec<Key> = plan.stages().map(|s| s.key).collect();
    let stored = store.contains_many(&keys);
    let missing: Vec<usize> = (0..plan.len()).filter(|&i| selected[i] && !stored[i]).collect();
    let held = remote.holds(&missing.iter().map(|&i| keys[i]).collect::<Vec<_>>())?;
    Ok(missing
        .into_iter()
        .zip(held)
        .filter(|(_, h)| *h)
        .map(|(i, _)| i)
        .collect())
}

/// A progress bar on stderr (hidden when it is not a terminal).
fn bar(len: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(what.to_string());
    bar
}

/// Pulls these stages into the store, verifying every file.
pub fn pull(plan: &Plan, store: &Store, remote: &Remote, stages: &[usize]) -> PullReport {
    let keys: Vec<Key> = stages.iter().map(|&i| key_of(plan, i)).collect();
    let progress = bar(keys.len(), "pulling");
    let results = remote.pull(store, &keys, |j, _| {
        progress.inc(1);
        progress.set_message(name_of(plan, stages[j]));
    });
    progress.finish_and_clear();
    let mut report = PullReport::default();
    for (&i, result) in stages.iter().zip(results) {
        match result {
            Ok(Pulled::Done(bytes)) => {
                report.pulled.push(i);
                report.bytes += bytes;
            }
            Ok(Pulled::Missing | Pulled::Already | Pulled::Busy) => {}
            Err(RemoteError::Damaged(problems)) => {
                report.damaged_ids.insert(i);
                report.damaged.push(Damaged {
                    stage: name_of(plan, i),
                    problems,
                });
            }
            Err(e) => report.failed.push((name_of(plan, i), e.to_string())),
        }
    }
    report
}

impl PushReport {
    /// Adds what another push did.
    pub fn add(&mut self, other: PushReport) {
        self.pushed += other.pushed;
        self.bytes += other.bytes;
        self.already += other.already;
        self.failed.extend(other.failed);
    }
}

/// Pushes one stage's stored result (`replace`: over a damaged remote copy), while a run goes on.
pub fn push_stage(plan: &Plan, store: &Store, remote: &Remote, i: usize, replace: bool) -> PushReport {
    let mut report = PushReport::default();
    match remote.push(store, &[(key_of(plan, i), replace)], |_, _| {}).remove(0) {
        Ok(Pushed::Done(bytes)) => {
            report.pushed = 1;
            report.bytes = bytes;
        }
        Ok(Pushed::Already) => report.already = 1,
        Err(e) => report.failed.push((name_of(plan, i), e.to_string())),
    }
    report
}

/// Pushes the selected stages the store holds and the remote lacks; `replace`: stages whose
/// remote copy was found damaged, uploaded again over it.
pub fn push(
    plan: &Plan,
    store: &Store,
    remote: &Remote,
    selected: &[bool],
    replace: &HashSet<usize>,
) -> Result<PushReport, RemoteError> {
    let keys: Vec<Key> = plan.stages().map(|s| s.key).collect();
    let stored = store.contains_many(&keys);
    let candidates: Vec<usize> = (0..plan.len()).filter(|&i| selected[i] && stored[i]).collect();
    let held = remote.holds(&candidates.iter().map(|&i| keys[i]).collect::<Vec<_>>())?;
    let mut report = PushReport::default();
    let mut todo: Vec<usize> = Vec::new();
    for (i, held) in candidates.into_iter().zip(held) {
        if replace.contains(&i) || !held {
            todo.push(i);
        } else {
            report.already += 1;
        }
    }
    let jobs: Vec<(Key, bool)> = todo.iter().map(|&i| (keys[i], replace.contains(&i))).collect();
    let progress = bar(jobs.len(), "pushing");
    let results = remote.push(store, &jobs, |j, _| {
        progress.inc(1);
        progress.set_message(name_of(plan, todo[j]));
    });
    progress.finish_and_clear();
    for (&i, result) in todo.iter().zip(results) {
        match result {
            Ok(Pushed::Done(bytes)) => {
                report.pushed += 1;
                report.bytes += bytes;
            }
            Ok(Pushed::Already) => report.already += 1,
            Err(e) => report.failed.push((name_of(plan, i), e.to_string())),
        }
    }
    Ok(report)
}

//! `rkd check` and `rkd update`.

use crate::lockfile::{LockFile, Mode};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Checks each file (with `locked`, against its lock file too); 0 when all are clean.
pub fn run(files: &[PathBuf], locked: bool) -> ExitCode {
    let mut failed = 0;
    for file in files {
        match super::compile_or_report(file) {
            Some(c) => {
                match crate::engine::data_check::check(&c.stages, false) {
                    Ok(warnings) => warnings.iter().for_each(|w| crate::say!("warning: {w}")),
                    Err(problems) => {
                        super::report(&problems, &c.sources, file);
                        failed += 1;
                        continue;
                    }
                }
                // What `rkd run` checks of local checkpoints before it starts anything.
                if crate::engine::preflight::reads_checkpoints(c.stages.iter()) {
                    if let Err(problems) = crate::engine::preflight::check(&c.stages) {
                        super::report(&problems, &c.sources, file);
                        failed += 1;
                        continue;
                    }
                }
                if locked && !agrees_with_lock(file) {
                    failed += 1;
                    continue;
                }
                let n = c.stages.len();
                let lock = if locked { ", agrees with its lock file" } else { "" };
                println!(
                    "ok: {} ({n} stage{}{lock})",
                    file.display(),
                    if n == 1 { "" } else { "s" }
                );
            }
            None => failed += 1,
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Whether the file's plan agrees with its lock file; prints every disagreement.
fn agrees_with_lock(file: &Path) -> bool {
    let Some((_, plan, _, pinned)) = super::load_locked(file, None, Mode::Locked) else {
        return false;
    };
    let problems = pinned.disagreements(&LockFile::of(&plan, &pinned.pins));
    for p in &problems {
        crate::say!("error: {p}");
    }
    if !problems.is_empty() {
        crate::say!(
            "error: {} disagrees with {} ({} difference{}); `rkd run` or `rkd update` brings the lock up to date",
            file.display(),
            pinned.path.display(),
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
    }
    problems.is_empty()
}

/// `rkd update`: resolves every Hub reference again and rewrites the lock file.
pub fn update(file: &Path) -> ExitCode {
    let Some((_, plan, _, pinned)) = super::load_locked(file, None, Mode::Update) else {
        return ExitCode::FAILURE;
    };
    for line in &pinned.resolved {
        println!("{line}");
    }
    let lock = LockFile::of(&plan, &pinned.pins);
    match pinned.save(&lock) {
        Ok(wrote) => {
            let what = if wrote { "wrote" } else { "unchanged:" };
            println!(
                "{what} {} ({} pin{}, {} stage{})",
                pinned.path.display(),
                pinned.pins.len(),
                if pinned.pins.len() == 1 { "" } else { "s" },
                plan.len(),
                if plan.len() == 1 { "" } else { "s" }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            crate::say!("error: cannot write {}: {e}", pinned.path.display());
            ExitCode::FAILURE
        }
    }
}

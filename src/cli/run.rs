//! `rkd run`.

use super::remote_cmds::RemoteArgs;
use crate::engine::cancel::Cancel;
use crate::engine::run::{run as run_plan, RunOptions, RunReport};
use crate::engine::slurm::{submit, wait, SlurmError, SlurmOptions, Submission};
use crate::engine::sync::{pull, push as push_stored, push_stage, remote_hits, PullReport, PushReport};
use crate::lockfile::{LockFile, Mode};
use crate::plan::Plan;
use crate::store::key::hex;
use crate::store::records::Outcome;
use crate::text::cell;
use std::mem::ManuallyDrop;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// Rows of the final table before it is cut short.
const MAX_ROWS: usize = 40;

/// How to run on Slurm (`--executor slurm`).
pub struct Slurm {
    /// Partition, account and extra sbatch arguments.
    pub options: SlurmOptions,
    /// Wait for the jobs (the default), or submit and return (`--no-wait`).
    pub wait: bool,
}

/// How a run shares: its remote cache and lock file.
pub struct Sharing {
    /// `--remote` / `--no-remote`.
    pub remote: RemoteArgs,
    /// `--push`.
    pub push: bool,
    /// `--locked`.
    pub locked: bool,
}

/// Runs the pipeline (here, or as Slurm jobs); exit 0 when every selected stage ran or was
/// cached, 1 on failures, 130 when interrupted.
pub fn run(
    file: &Path,
    store: Option<&Path>,
    mut opts: RunOptions,
    json: bool,
    slurm: Option<Slurm>,
    sharing: &Sharing,
) -> ExitCode {
    if let Err(e) = crate::ml::kernels::host_memory::own_limit() {
        crate::say!("error: {e}");
        return ExitCode::from(2);
    }
    let mode = if sharing.locked { Mode::Locked } else { Mode::Use };
    let Some((compiled, plan, store, pinned)) = super::load_locked(file, store, mode) else {
        return ExitCode::FAILURE;
    };
    let lock = LockFile::of(&plan, &pinned.pins);
    if sharing.locked {
        let problems = pinned.disagreements(&lock);
        if !problems.is_empty() {
            for p in &problems {
                crate::say!("error: {p}");
            }
            crate::say!(
                "error: {} disagrees with {}; nothing was run",
                file.display(),
                pinned.path.display()
            );
            return ExitCode::FAILURE;
        }
    }
    let (remote_args, push) = (&sharing.remote, sharing.push);
    // Dropping a plan of many stages takes milliseconds; the process is about to end anyway.
    let (compiled, plan) = (ManuallyDrop::new(compiled), ManuallyDrop::new(plan));
    let remote = match super::remote_cmds::open(file, remote_args) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let push = push || remote.as_ref().is_some_and(|(_, c)| c.push);
    if push && remote.is_none() {
        crate::say!(
            "error: --push needs a remote cache: --remote URL, RKD_REMOTE, or `[remote] url = \"...\"` in {}",
            crate::remote::config::config_path(file).display()
        );
        return ExitCode::from(2);
    }
    let selected = match crate::engine::select::select(&plan, &opts.only) {
        Ok(s) => s,
        Err(e) => {
            crate::say!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // While this run lives, `rkd gc` keeps every entry it may read or write.
    let _lease = if opts.dry_run {
        None
    } else {
        match store.lease(plan.stages().map(|s| s.key)) {
            Ok(l) => Some(l),
            Err(e) => {
                crate::say!(
                    "error: cannot register the run in the store {}: {e}",
                    store.root.display()
                );
                return ExitCode::FAILURE;
            }
        }
    };
    // What the remote holds of what this run needs is pulled (verified) instead of run.
    let mut pulled = PullReport::default();
    if let Some((remote, _)) = &remote {
        opts.remote = Some(remote.shown().to_string());
        match remote_hits(&plan, &store, remote, &selected) {
            Ok(hits) if opts.dry_run => opts.from_remote = hits.into_iter().collect(),
            Ok(hits) => {
                pulled = pull(&plan, &store, remote, &hits);
                super::remote_cmds::say_pulled(&pulled, remote);
                opts.from_remote = pulled.pulled.iter().copied().collect();
            }
            Err(e) => crate::say!("warning: {e}; running without the remote cache"),
        }
    }
    // The tables that stages about to run read are read through once first (image folders
    // listed): a bad row fails here, at its call, not hours into a run.
    if crate::engine::data_check::reads_data_files(plan.stages().map(|s| &s.def)) {
        let keys: Vec<_> = plan.stages().map(|s| s.key).collect();
        let stored = store.contains_many(&keys);
        let to_run = plan
            .stages()
            .zip(stored)
            .filter(|(_, stored)| !stored)
            .map(|(s, _)| &s.def);
        match crate::engine::data_check::check(to_run, true) {
            Ok(warnings) => warnings.iter().for_each(|w| crate::say!("warning: {w}")),
            Err(problems) => {
                super::report(&problems, &compiled.sources, file);
                return ExitCode::FAILURE;
            }
        }
    }
    if crate::engine::preflight::reads_checkpoints(plan.stages().map(|s| &s.def)) {
        let defs: Vec<_> = plan.stages().map(|s| s.def.clone()).collect();
        if let Err(problems) = crate::engine::preflight::check(&defs) {
            super::report(&problems, &compiled.sources, file);
            return ExitCode::FAILURE;
        }
    }
    // The pipeline passed its checks: its lock is brought up to date before anything runs (a
    // Slurm job pins its references from it).
    if !sharing.locked && !opts.dry_run {
        match pinned.save(&lock) {
            Ok(true) if pinned.old.is_none() => crate::say!("note: wrote {}", pinned.path.display()),
            Ok(_) => {}
            Err(e) => crate::say!("warning: cannot write {}: {e}", pinned.path.display()),
        }
    }
    let cancel = Arc::new(Cancel::default());
    let handler = cancel.clone();
    let first = std::sync::OnceLock::new();
    // The first Ctrl-C stops the run cleanly; a second one exits at once (finished entries are
    // already safe, and unfinished ones are never trusted). Signals within a second of the first
    // are the same interrupt delivered twice (`timeout` signals the process, then its group).
    let installed = ctrlc::set_handler(move || match first.get() {
        None => {
            let _ = first.set(std::time::Instant::now());
            crate::say!("\ninterrupted: stopping the running stages (press Ctrl-C again to quit at once)");
            handler.interrupt();
        }
        Some(at) if at.elapsed() < std::time::Duration::from_secs(1) => {}
        Some(_) => {
            handler.kill_commands();
            std::process::exit(130)
        }
    });
    if let Err(e) = installed {
        crate::say!("warning: cannot handle Ctrl-C ({e}); an interrupted run still leaves a safe store");
    }
    let text = compiled.sources.get(crate::source::FileId(0)).text.clone();
    let mut pushed_early = (PushReport::default(), std::collections::HashSet::new());
    let result = match &slurm {
        // A dry run runs nothing, so it is the same on both executors.
        Some(slurm) if !opts.dry_run => match submit(&plan, file, &text, &store, &opts, &slurm.options, &cancel) {
            Ok(sub) if !slurm.wait => {
                super::quiet_on_closed_pipe();
                return print_submitted(&plan, file, &sub, json);
            }
            Ok(sub) => {
                if !sub.jobs.is_empty() {
                    crate::say!(
                        "submitted {} Slurm job{}; waiting for them (Ctrl-C cancels them)",
                        sub.jobs.len(),
                        if sub.jobs.len() == 1 { "" } else { "s" }
                    );
                }
                wait(&plan, file, &text, &store, sub, opts.keep_going, &cancel)
            }
            Err(e) => Err(e),
        },
        // With --push, each result is uploaded as soon as it is stored, beside the run (a
        // colleague gets the teacher hours before the pipeline ends); the rest after it.
        _ => match remote.as_ref().filter(|_| push && !opts.dry_run) {
            Some((remote, _)) => {
                let (tx, rx) = std::sync::mpsc::channel::<usize>();
                let tx = std::sync::Mutex::new(Some(tx));
                let on_stored = |i: usize| {
                    if let Some(tx) = tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                        let _ = tx.send(i);
                    }
                };
                std::thread::scope(|scope| {
                    let pusher = scope.spawn(|| {
                        let mut report = PushReport::default();
                        let mut handled = std::collections::HashSet::new();
                        for i in rx {
                            let replace = pulled.damaged_ids.contains(&i);
                            report.add(push_stage(&plan, &store, remote, i, replace));
                            handled.insert(i);
                        }
                        (report, handled)
                    });
                    let result = run_plan(&plan, file, &text, &store, &opts, &cancel, &on_stored);
                    // No more stages: the pusher ends once it has uploaded what it was given.
                    drop(tx.lock().unwrap_or_else(|e| e.into_inner()).take());
                    pushed_early = pusher.join().unwrap_or_default();
                    result
                })
                .map_err(SlurmError::from)
            }
            None => run_plan(&plan, file, &text, &store, &opts, &cancel, &|_| {}).map_err(SlurmError::from),
        },
    };
    // The run is over: from here on a reader that went away (`rkd run p.rkd | head`) ends rkd
    // quietly, as it does the other commands, instead of a panic on the failed write.
    super::quiet_on_closed_pipe();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            crate::say!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for d in &report.damaged {
        crate::say!(
            "warning: the stored result of `{}` is damaged ({}); it was moved aside to {} and runs again",
            d.stage,
            d.problems.join("; "),
            store.damaged_dir().display()
        );
    }
    if let (Some((remote, _)), true, false) = (&remote, push, opts.dry_run) {
        if report.interrupted {
            super::remote_cmds::say_pushed(&pushed_early.0, remote);
            crate::say!(
                "note: the run was interrupted: only what was stored during it was pushed; `rkd push {}` uploads the rest",
                file.display()
            );
        } else {
            // What was not pushed as it was stored (cached results the remote lacks, stages of
            // a Slurm run).
            let (mut pushed, handled) = std::mem::take(&mut pushed_early);
            let replace = pulled.damaged_ids.difference(&handled).copied().collect();
            match push_stored(&plan, &store, remote, &selected, &replace) {
                Ok(rest) => pushed.add(rest),
                Err(e) => crate::say!("warning: the results not pushed during the run were not pushed: {e}"),
            }
            super::remote_cmds::say_pushed(&pushed, remote);
        }
    }
    let names = |o: Outcome| -> Vec<&str> {
        plan.stages()
            .zip(&report.stages)
            .filter(|(_, r)| r.as_ref().is_some_and(|r| r.outcome == o))
            .map(|(s, _)| s.def.name.as_str())
            .collect()
    };
    if json {
        // Stage name → the step it resumed from; → its attempts, where more than one.
        let resumed: serde_json::Map<String, serde_json::Value> = plan
            .stages()
            .zip(&report.stages)
            .filter_map(|(s, r)| Some((s.def.name.clone(), r.as_ref()?.resumed_from?.into())))
            .collect();
        let attempts: serde_json::Map<String, serde_json::Value> = plan
            .stages()
            .zip(&report.stages)
            .filter_map(|(s, r)| {
                let n = r.as_ref()?.attempts;
                (n > 1).then(|| (s.def.name.clone(), n.into()))
            })
            .collect();
        // Failed stage name → why.
        let errors: serde_json::Map<String, serde_json::Value> = plan
            .stages()
            .zip(&report.stages)
            .filter_map(|(s, r)| {
                let r = r.as_ref().filter(|r| r.outcome == Outcome::Failed)?;
                Some((s.def.name.clone(), r.error.clone()?.into()))
            })
            .collect();
        let key = if opts.dry_run { "would_run" } else { "ran" };
        let pulled_key = if opts.dry_run { "would_pull" } else { "pulled" };
        let ran = if opts.dry_run {
            names(Outcome::Skipped)
        } else {
            names(Outcome::Ran)
        };
        let skipped = if opts.dry_run {
            Vec::new()
        } else {
            names(Outcome::Skipped)
        };
        println!(
            "{}",
            serde_json::json!({
                key: ran,
                "cached": names(Outcome::Cached),
                pulled_key: names(Outcome::Pulled),
                "failed": names(Outcome::Failed),
                "interrupted": names(Outcome::Interrupted),
                "skipped": skipped,
                "resumed": resumed,
                "attempts": attempts,
                "errors": errors
            })
        );
    } else if opts.dry_run {
        print_dry_run(&plan, &report);
    } else {
        print_summary(&plan, &report);
    }
    if report.interrupted {
        ExitCode::from(130)
    } else if names(Outcome::Failed).is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The one number of a stage's metrics that says most, named so that it cannot be mistaken:
/// a training op's accuracy is on the split that selected its epochs, predict's on the training
/// split, eval's on the split it reports.
fn headline(op: &str, m: &std::collections::BTreeMap<String, f64>) -> String {
    let pct = |v: f64| format!("{:.2}%", 100.0 * v);
    let acc = m.get("accuracy").copied();
    // A task's own score beside accuracy (CoLA's MCC, MRPC's F1).
    let task = ["mcc", "f1"]
        .iter()
        .find_map(|k| m.get(*k).map(|v| format!(" · {} {v:.3}", k.to_uppercase())))
        .unwrap_or_default();
    // A regression (STS-B) is scored by correlation.
    if let Some(p) = m.get("pearson") {
        let spearman = m
            .get("spearman")
            .map(|s| format!(" · Spearman {s:.3}"))
            .unwrap_or_default();
        return match op {
            "eval" => format!("Pearson {p:.3}{spearman}"),
            "predict" => format!("train-split Pearson {p:.3}"),
            _ => format!("selection Pearson {p:.3}"),
        };
    }
    match (op, acc) {
        ("eval", Some(a)) => format!("accuracy {}{task}", pct(a)),
        ("predict", Some(a)) => format!("train-split accuracy {}", pct(a)),
        (op, Some(a)) if crate::registry::trains(op) => format!("selection accuracy {}", pct(a)),
        // Nothing selected its epochs (`select: "last"`, no validation split).
        (op, None) if crate::registry::trains(op) && m.contains_key("loss") => {
            format!("train loss {:.4}", m["loss"])
        }
        ("report", _) => m
            .get("baseline_accuracy")
            .map(|b| format!("baseline accuracy {}", pct(*b)))
            .or_else(|| m.get("baseline_pearson").map(|b| format!("baseline Pearson {b:.3}")))
            .unwrap_or_default(),
        ("prune", None) => m
            .get("sparsity")
            .map(|s| format!("sparsity {}", pct(*s)))
            .unwrap_or_default(),
        _ => m
            .iter()
            .next()
            .map(|(k, v)| format!("{k} {}", crate::text::metric_value(*v)))
            .unwrap_or_default(),
    }
}

/// After `--no-wait`: which stages were submitted as which jobs, and which were cached.
fn print_submitted(plan: &Plan, file: &Path, sub: &Submission, json: bool) -> ExitCode {
    let name = |i: usize| plan.stage(crate::value::StageId(i as u32)).def.name.clone();
    let cached: Vec<String> = (0..plan.len())
        .filter(|i| {
            sub.prepared.results[*i]
                .as_ref()
                .is_some_and(|r| r.outcome == Outcome::Cached)
        })
        .map(name)
        .collect();
    if json {
        let submitted: serde_json::Map<String, serde_json::Value> = sub
            .jobs
            .iter()
            .map(|j| (name(j.stage), serde_json::Value::from(j.job.clone())))
            .collect();
        println!("{}", serde_json::json!({ "submitted": submitted, "cached": cached }));
        return ExitCode::SUCCESS;
    }
    for j in sub.jobs.iter().take(MAX_ROWS) {
        println!("submitted  {:30}  job {}", cell(&name(j.stage)), j.job);
    }
    if sub.jobs.len() > MAX_ROWS {
        println!("... and {} more", sub.jobs.len() - MAX_ROWS);
    }
    println!(
        "{} submitted, {} cached; `rkd status {}` shows the jobs",
        sub.jobs.len(),
        cached.len(),
        file.display()
    );
    ExitCode::SUCCESS
}

fn print_dry_run(plan: &Plan, report: &RunReport) {
    let mut would = 0;
    let mut cached = 0;
    let mut pull = 0;
    for (s, r) in plan.stages().zip(&report.stages) {
        let Some(r) = r else { continue };
        if r.outcome == Outcome::Cached {
            cached += 1;
        } else if r.outcome == Outcome::Pulled {
            pull += 1;
            if pull + would <= MAX_ROWS {
                println!("would pull {:30}  the remote cache holds it", cell(&s.def.shown()));
            }
        } else {
            would += 1;
            if would <= MAX_ROWS {
                println!("would run  {:30}  {}", cell(&s.def.shown()), r.reasons.join("; "));
            }
        }
    }
    if would > MAX_ROWS {
        println!("... and {} more", would - MAX_ROWS);
    }
    let pulls = if pull > 0 {
        format!(", {pull} would be pulled from the remote cache")
    } else {
        String::new()
    };
    println!("dry run: {would} would run{pulls}, {cached} cached");
}

fn print_summary(plan: &Plan, report: &RunReport) {
    let rows: Vec<_> = plan
        .stages()
        .zip(&report.stages)
        .filter_map(|(s, r)| r.as_ref().map(|r| (s, r)))
        .filter(|(_, r)| r.outcome != Outcome::Cached)
        .collect();
    if !rows.is_empty() {
        let names: Vec<String> = rows.iter().map(|(s, _)| cell(&s.def.shown())).collect();
        let width = crate::text::width(names.iter().take(MAX_ROWS), "STAGE");
        let statuses: Vec<String> = rows.iter().map(|(_, r)| r.outcome.name().to_string()).collect();
        let swidth = crate::text::width(statuses.iter().take(MAX_ROWS), "STATUS").max(7);
        println!(
            "{:width$}  {:swidth$}  {:>8}  {:12}  METRIC",
            "STAGE", "STATUS", "TIME", "KEY"
        );
        for ((s, r), name) in rows.iter().zip(&names).take(MAX_ROWS) {
            let mut metric = headline(s.def.op.name, &r.metrics);
            let notes: Vec<String> = [
                r.resumed_from.map(|step| format!("resumed from step {step}")),
                (r.attempts > 1).then(|| format!("{} attempts", r.attempts)),
            ]
            .into_iter()
            .flatten()
            .collect();
            if !notes.is_empty() {
                metric = format!("{metric} ({})", notes.join(", ")).trim_start().to_string();
            }
            println!(
                "{:width$}  {:swidth$}  {:>7.2}s  {:12}  {metric}",
                name,
                r.outcome.name(),
                r.time_s,
                &hex(&s.key)[..12]
            );
        }
        if rows.len() > MAX_ROWS {
            println!("... and {} more", rows.len() - MAX_ROWS);
        }
    }
    for (s, r) in &rows {
        if let (Outcome::Failed, Some(e)) = (r.outcome, &r.error) {
            crate::say!("\nerror: stage `{}` ({}) failed: {e}", s.def.name, s.def.op.name);
        }
    }
    let count = |o: Outcome| report.stages.iter().flatten().filter(|r| r.outcome == o).count();
    let skipped = count(Outcome::Skipped);
    let interrupted = match count(Outcome::Interrupted) {
        0 if report.interrupted => " (interrupted)".to_string(),
        0 => String::new(),
        n => format!(", {n} interrupted"),
    };
    let pulled = match count(Outcome::Pulled) {
        0 => String::new(),
        n => format!("{n} pulled, "),
    };
    println!(
        "\n{} ran, {pulled}{} cached, {} failed, {skipped} skipped in {:.2}s{interrupted}",
        count(Outcome::Ran),
        count(Outcome::Cached),
        count(Outcome::Failed),
        report.duration_s,
    );
    if skipped > 0 && !report.interrupted {
        if let Some((s, r)) = rows.iter().find(|(_, r)| r.outcome == Outcome::Skipped) {
            println!(
                "  skipped `{}`{}: {}",
                s.def.name,
                others(skipped - 1),
                r.error.as_deref().unwrap_or("")
            );
        }
    }
}

/// " and N other(s)" after the first skipped stage's name; empty when it is the only one.
fn others(n: usize) -> String {
    match n {
        0 => String::new(),
        1 => " and 1 other".into(),
        n => format!(" and {n} others"),
    }
}

#[cfg(test)]
mod tests {
    use super::headline;
    use std::collections::BTreeMap;

    fn m(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn the_headline_names_which_accuracy_it_is() {
        assert_eq!(
            headline("eval", &m(&[("accuracy", 0.725), ("bytes", 9.0)])),
            "accuracy 72.50%"
        );
        assert_eq!(
            headline("train", &m(&[("accuracy", 0.685)])),
            "selection accuracy 68.50%"
        );
        assert_eq!(
            headline("predict", &m(&[("accuracy", 0.97)])),
            "train-split accuracy 97.00%"
        );
        assert_eq!(
            headline("prune", &m(&[("nonzeros", 43469.0), ("sparsity", 0.3)])),
            "sparsity 30.00%"
        );
        assert_eq!(
            headline("report", &m(&[("baseline_accuracy", 0.775), ("models", 8.0)])),
            "baseline accuracy 77.50%"
        );
        assert_eq!(headline("exec", &m(&[])), "");
        // Trained with nothing to select on: its training loss.
        assert_eq!(
            headline("train", &m(&[("epochs", 2.0), ("loss", 0.5123), ("steps", 8.0)])),
            "train loss 0.5123"
        );
        // Whole numbers without decimals.
        assert_eq!(headline("exec", &m(&[("rows", 4450.0)])), "rows 4450");
    }
}

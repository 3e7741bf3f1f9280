//! `rkd verify`, `rkd log` and `rkd gc`: looking after the store.

use crate::store::gc::{collect, keys_of_last_runs, keys_of_latest_run_of};
use crate::store::key::{hex, Key};
use crate::store::manifest::Manifest;
use crate::store::Store;
use rayon::prelude::*;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The store of a pipeline file (as `rkd run` chooses it), else the current directory's. Exit
/// code 2, after saying why, when FILE is no file: a mistyped name or a folder would otherwise
/// stand for whatever store lies beside it.
pub(super) fn store_of(file: Option<&Path>, store: Option<&Path>) -> Result<Store, ExitCode> {
    match file {
        Some(f) if !f.is_file() => {
            let why = if f.exists() { "is not a file" } else { "does not exist" };
            crate::say!(
                "error: the pipeline file {} {why}\n  help: give the .rkd file whose store (.rkd/ beside it) is meant, or the store with --store DIR",
                f.display()
            );
            Err(ExitCode::from(2))
        }
        Some(f) => Ok(Store::for_pipeline(f, store)),
        None => Ok(Store::for_cwd(store)),
    }
}

/// Says that there is no store where one was expected; exit 1.
fn no_store(store: &Store) -> ExitCode {
    crate::say!(
        "error: there is no store at {} (use --store DIR or RKD_STORE)",
        store.root.display()
    );
    ExitCode::FAILURE
}

/// Checks every entry against its manifest; exit 1 when any is damaged.
pub fn verify(file: Option<&Path>, store: Option<&Path>) -> ExitCode {
    let store = match store_of(file, store) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if !store.root.is_dir() {
        return no_store(&store);
    }
    let keys = match store.keys() {
        Ok(k) => k,
        Err(e) => {
            crate::say!("error: cannot read the store {}: {e}", store.root.display());
            return ExitCode::FAILURE;
        }
    };
    let damaged: Vec<(Key, Vec<String>)> = keys
        .par_iter()
        .map(|k| (*k, Manifest::verify(&store.entry_dir(k))))
        .filter(|(_, p)| !p.is_empty())
        .collect();
    for (key, problems) in &damaged {
        let name = entry_name(&store, key);
        println!("damaged  {}  {name}", &hex(key)[..12]);
        for p in problems {
            println!("         {p}");
        }
    }
    println!(
        "{} entr{} checked in {}: {} intact, {} damaged",
        keys.len(),
        if keys.len() == 1 { "y" } else { "ies" },
        store.root.display(),
        keys.len() - damaged.len(),
        damaged.len()
    );
    if damaged.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!(
            "the next `rkd run` of a pipeline that has a damaged entry moves it aside (to {}) and runs it again; \
             `rkd gc` removes entries no pipeline keeps",
            store.damaged_dir().display()
        );
        ExitCode::FAILURE
    }
}

/// The stage name recorded in an entry's spec, for messages.
fn entry_name(store: &Store, key: &Key) -> String {
    store
        .stage_spec(key)
        .map(|r| format!("{} ({})", crate::text::cell(&r.name), r.op))
        .unwrap_or_default()
}

/// Lists the runs recorded in the store, oldest first.
pub fn log(file: Option<&Path>, store: Option<&Path>, limit: usize) -> ExitCode {
    let store = match store_of(file, store) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let paths = store.record_paths();
    if paths.is_empty() {
        println!("no runs recorded in {}", store.root.display());
        return ExitCode::SUCCESS;
    }
    println!(
        "{:20}  {:11}  {:>5}  {:>6}  {:>6}  {:>7}  {:>9}  PIPELINE",
        "STARTED", "STATUS", "RAN", "CACHED", "FAILED", "SKIPPED", "TIME"
    );
    for path in &paths[paths.len().saturating_sub(limit)..] {
        match Store::read_record(path) {
            Ok(r) => {
                let c = |k: &str| r.counts.get(k).copied().unwrap_or(0);
                println!(
                    "{:20}  {:11}  {:>5}  {:>6}  {:>6}  {:>7}  {:>8.2}s  {}",
                    r.started,
                    r.status,
                    c("ran"),
                    c("cached"),
                    c("failed"),
                    c("skipped"),
                    r.duration_s,
                    r.pipeline
                );
            }
            Err(e) => println!("unreadable record: {e}"),
        }
    }
    println!(
        "({} run{}; records in {})",
        paths.len(),
        if paths.len() == 1 { "" } else { "s" },
        store.runs_dir().display()
    );
    ExitCode::SUCCESS
}

/// Removes entries not reachable from the kept pipelines' plans or the last runs.
pub fn gc(keep: &[PathBuf], keep_runs: Option<usize>, store: Option<&Path>, dry_run: bool) -> ExitCode {
    if keep.is_empty() && keep_runs.is_none() {
        crate::say!(
            "error: say what to keep: `--keep FILE` (entries of the pipelines' current plans) and/or `--keep-runs N`"
        );
        return ExitCode::from(2);
    }
    let store = match (store, keep.first()) {
        (None, Some(first)) => Store::for_pipeline(first, None),
        _ => Store::for_cwd(store),
    };
    // A mistyped store is an error, not an empty store made and "collected".
    if !store.root.is_dir() {
        return no_store(&store);
    }
    if let Err(e) = store.check_layout() {
        crate::say!("error: {e}");
        return ExitCode::FAILURE;
    }
    let mut reachable: HashSet<Key> = HashSet::new();
    for file in keep {
        let Some((_, plan, _)) = super::load_plan(file, Some(&store.root)) else {
            return ExitCode::FAILURE;
        };
        reachable.extend(plan.stages().map(|s| s.key));
        // The run may have seen other environment variables (`env()`) than this shell.
        match keys_of_latest_run_of(&store, file) {
            Ok(keys) => reachable.extend(keys),
            Err(e) => {
                crate::say!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(n) = keep_runs {
        match keys_of_last_runs(&store, n) {
            Ok(keys) => reachable.extend(keys),
            Err(e) => {
                crate::say!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    match collect(&store, &reachable, dry_run) {
        Ok(c) => {
            let verb = if dry_run { "would remove" } else { "removed" };
            if dry_run && !c.removed.is_empty() {
                println!("{:12}  {:>10}  STAGE (OP)", "KEY", "SIZE");
                for (key, bytes) in &c.removed {
                    println!(
                        "{:12}  {:>10}  {}",
                        &hex(key)[..12],
                        human_bytes(*bytes),
                        entry_name(&store, key)
                    );
                }
            }
            // What else went: " and 2 damaged entries and the checkpoints of 1 unfinished stage …".
            let plural = |n: usize, one: &str, many: &str| if n == 1 { one.to_string() } else { many.to_string() };
            let damaged: String = [
                (
                    c.damaged,
                    format!("{} damaged entr{}", c.damaged, plural(c.damaged, "y", "ies")),
                ),
                (
                    c.checkpoints,
                    format!(
                        "the checkpoints of {} unfinished stage{}",
                        c.checkpoints,
                        plural(c.checkpoints, "", "s")
                    ),
                ),
                (
                    c.cache_files,
                    format!(
                        "{} cache file{} (prepared datasets, decoded images, manifest caches)",
                        c.cache_files,
                        plural(c.cache_files, "", "s")
                    ),
                ),
            ]
            .into_iter()
            .filter(|(n, _)| *n > 0)
            .map(|(_, text)| format!(" and {text}"))
            .collect();
            let in_use = if c.in_use > 0 {
                format!(" ({} in use by running pipelines)", c.in_use)
            } else {
                String::new()
            };
            println!(
                "{verb} {} entr{}{damaged} ({}), kept {}{in_use} in {}",
                c.entries,
                if c.entries == 1 { "y" } else { "ies" },
                human_bytes(c.bytes),
                c.kept,
                store.root.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            let help = if e.kind() == std::io::ErrorKind::PermissionDenied {
                format!(
                    "gc removes files in the store: run it as a user who may write to {} (`ls -ld` shows its owner and permissions)",
                    store.root.display()
                )
            } else {
                "`rkd verify` checks the store's entries; gc can be run again".to_string()
            };
            crate::say!(
                "error: cannot clean the store {}: {e}\n  help: {help}",
                store.root.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// Bytes in B / KiB / MiB / GiB.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

//! Garbage collection: remove entries that nothing we keep refers to.

use super::key::Key;
use super::layout::at;
use super::records::RecordError;
use super::Store;
use std::collections::HashSet;

/// What a collection removed (or would remove, in a dry run).
#[derive(Debug, Default)]
pub struct Collected {
    /// Entries removed.
    pub entries: usize,
    /// Bytes freed.
    pub bytes: u64,
    /// Entries kept.
    pub kept: usize,
    /// Of the kept entries, those kept only because a running pipeline may read them.
    pub in_use: usize,
    /// Damaged entries (moved aside by earlier runs) removed.
    pub damaged: usize,
    /// Stages whose in-stage checkpoints were removed (no kept pipeline needs them, or their
    /// result is stored).
    pub checkpoints: usize,
    /// Files of `cache/` removed (prepared datasets, decoded images, manifest caches): speed-ups
    /// that any stage or run rebuilds.
    pub cache_files: usize,
    /// Each entry removed (or that would be), with its bytes, in key order.
    pub removed: Vec<(Key, u64)>,
}

/// Keys named by the last `n` run records.
pub fn keys_of_last_runs(store: &Store, n: usize) -> Result<HashSet<Key>, RecordError> {
    let paths = store.record_paths();
    let mut keys = HashSet::new();
    for path in paths.iter().rev().take(n) {
        let record = Store::read_record(path)?;
        for s in record.stages {
            keys.extend(super::key::parse(&s.key));
        }
    }
    Ok(keys)
}

/// Keys named by the latest run record of this pipeline file (the stages as that run saw them,
/// with the environment it had), or none when it has no record.
pub fn keys_of_latest_run_of(store: &Store, pipeline: &std::path::Path) -> Result<HashSet<Key>, RecordError> {
    let wanted = super::records::RunRecord::pipeline_name(pipeline);
    for path in store.record_paths().iter().rev() {
        let record = Store::read_record(path)?;
        if record.pipeline == wanted {
            return Ok(record.stages.iter().filter_map(|s| super::key::parse(&s.key)).collect());
        }
    }
    Ok(HashSet::new())
}

/// Removes every entry whose key is not in `keep` and that no running pipeline leased, and the
/// damaged entries moved aside. Entries being run by another process (locked) are left alone.
/// Runs that start meanwhile wait until it is done. An error names the path it happened at.
pub fn collect(store: &Store, keep: &HashSet<Key>, dry_run: bool) -> std::io::Result<Collected> {
    let mut out = Collected::default();
    let registry = store.lock_leases().map_err(|e| at(&store.leases_dir(), e))?;
    let leased = store.leased_keys(&registry)?;
    for key in store.keys().map_err(|e| at(&store.entries_dir(), e))? {
        if keep.contains(&key) {
            out.kept += 1;
            continue;
        }
        if leased.contains(&key) {
            out.kept += 1;
            out.in_use += 1;
            continue;
        }
        let Some(_lock) = super::lock::KeyLock::try_acquire(store, &key).map_err(|e| at(&store.locks_dir(), e))? else {
            out.kept += 1;
            continue;
        };
        let bytes = if dry_run {
            super::dir_size(&store.entry_dir(&key))
        } else {
            store.remove_entry(&key).map_err(|e| at(&store.entry_dir(&key), e))?
        };
        out.entries += 1;
        out.bytes += bytes;
        out.removed.push((key, bytes));
    }
    // Checkpoints are kept only for unfinished stages that a kept (or running) pipeline needs.
    for key in store.checkpointed_keys() {
        let needed = (keep.contains(&key) || leased.contains(&key)) && !store.contains(&key);
        if needed {
            continue;
        }
        let Some(_lock) = super::lock::KeyLock::try_acquire(store, &key).map_err(|e| at(&store.locks_dir(), e))? else {
            continue;
        };
        let checkpoints = store.checkpoints(&key);
        out.checkpoints += 1;
        out.bytes += if dry_run {
            super::dir_size(checkpoints.dir())
        } else {
            checkpoints.clear().map_err(|e| at(checkpoints.dir(), e))?
        };
    }
    if let Ok(dir) = std::fs::read_dir(store.damaged_dir()) {
        for entry in dir.flatten() {
            out.damaged += 1;
            out.bytes += super::dir_size(&entry.path());
            if !dry_run {
                super::files::remove_tree(&entry.path()).map_err(|e| at(&entry.path(), e))?;
            }
        }
    }
    // Caches are only speed-ups: a stage that needs one again rebuilds it (a stage reading one
    // while it goes finds it missing or incomplete, and prepares its data anew).
    let cache = store.cache_dir();
    let mut stack = vec![cache];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(_) => {
                    out.cache_files += 1;
                    out.bytes += entry.metadata().map_or(0, |m| m.len());
                    if !dry_run {
                        std::fs::remove_file(&path).map_err(|e| at(&path, e))?;
                    }
                }
                Err(_) => {}
            }
        }
    }
    if !dry_run {
        store.clean_tmp();
    }
    out.removed.sort();
    drop(registry);
    Ok(out)
}

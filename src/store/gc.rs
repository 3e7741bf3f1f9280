//! Garbage collection: remove entries that nothing we keep refers to.

use super::Store;
use crate::plan::key::Key;
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
}

/// Keys named by the last `n` run records.
pub fn keys_of_last_runs(store: &Store, n: usize) -> Result<HashSet<Key>, String> {
    let paths = store.record_paths();
    let mut keys = HashSet::new();
    for path in paths.iter().rev().take(n) {
        let record = Store::read_record(path)?;
        for s in record.stages {
            if let Ok(h) = blake3::Hash::from_hex(&s.key) {
                keys.insert(*h.as_bytes());
            }
        }
    }
    Ok(keys)
}

/// Removes every entry whose key is not in `keep`. Entries being run by another process
/// (locked) are left alone.
pub fn collect(store: &Store, keep: &HashSet<Key>, dry_run: bool) -> std::io::Result<Collected> {
    let mut out = Collected::default();
    for key in store.keys()? {
        if keep.contains(&key) {
            out.kept += 1;
            continue;
        }
        let Some(_lock) = super::lock::KeyLock::try_acquire(store, &key)? else {
            out.kept += 1;
            continue;
        };
        let bytes = if dry_run {
            super::dir_size(&store.entry_dir(&key))
        } else {
            store.remove_entry(&key)?
        };
        out.entries += 1;
        out.bytes += bytes;
    }
    if !dry_run {
        store.clean_tmp();
    }
    Ok(out)
}

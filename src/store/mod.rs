//! The content-addressed store (`.rkd/` beside the pipeline): one entry per stage key.
//!
//! Layout:
//! ```text
//! <store>/entries/<key>/   one finished stage: out/ (the op's outputs), spec.yaml, log.txt,
//!                          metrics.json, meta.json, and manifest.json (size, mtime and blake3 of
//!                          every file); read-only (files 0444, directories 0555)
//! <store>/tmp/             entries being written; renamed into entries/ only when complete
//! <store>/damaged/         entries that failed their check, moved aside (kept for a look; gc empties it)
//! <store>/locks/<key>.lock held while a process runs that key (never the same key twice at once)
//! <store>/leases/          one file per running `rkd run`: the keys it may read, which gc keeps
//! <store>/runs/            one JSON record per run, and index/<id>.json per pipeline file (the
//!                          latest record of each of its stage names)
//! <store>/stat-cache.json  file fingerprints by (path, size, mtime, inode)
//! <store>/checkpoints/<key>/ in-stage checkpoints of unfinished training stages (never entries)
//! <store>/cache/           caches ops and runs may use but never need (decoded image_folder
//!                          images, prepared datasets in cache/prepared/, each pipeline's
//!                          manifests in cache/manifests/, see `check_cache`); gc empties it
//! <store>/specs/<key>.json the resolved stage a Slurm job runs (`rkd exec-stage`)
//! <store>/slurm/           one JSON record per Slurm submission (job ids), job scripts and logs
//! ```
//! An entry directory appears only complete (rename is atomic), so a crash, Ctrl-C or kill -9
//! leaves at most a directory in tmp/, which the next run removes.

pub mod check_cache;
pub mod checkpoints;
pub mod files;
pub mod gc;
pub mod key;
pub mod layout;
pub mod lease;
pub mod lock;
pub mod manifest;
pub mod records;
pub mod writer;

use key::{hex, Key};
use std::path::{Path, PathBuf};

/// The stat-cache file name inside the store (file fingerprints, see `plan::fingerprint`).
pub const STAT_CACHE: &str = "stat-cache.json";

/// From this many keys on, [`Store::manifests`] may list the entries directory instead of
/// looking each key up.
const LIST_ENTRIES_FROM: usize = 64;

/// Environment variable that overrides the store location.
pub const STORE_ENV: &str = "RKD_STORE";

/// A store directory.
#[derive(Clone, Debug)]
pub struct Store {
    /// Its root.
    pub root: PathBuf,
}

impl Store {
    /// The store at `root`, made absolute: every path the store hands out (to commands too) is
    /// absolute, whatever directory they run in.
    pub fn at(root: &Path) -> Store {
        Store {
            root: std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf()),
        }
    }

    /// The store for a pipeline: `explicit` if given, else `$RKD_STORE`, else `.rkd/` beside the file.
    pub fn for_pipeline(pipeline: &Path, explicit: Option<&Path>) -> Store {
        match Store::overridden(explicit) {
            Some(s) => s,
            None => Store::at(&pipeline.parent().unwrap_or(Path::new(".")).join(".rkd")),
        }
    }

    /// The store named by `explicit` or `$RKD_STORE`, else `.rkd/` in the current directory.
    pub fn for_cwd(explicit: Option<&Path>) -> Store {
        Store::overridden(explicit).unwrap_or_else(|| Store::at(Path::new(".rkd")))
    }

    fn overridden(explicit: Option<&Path>) -> Option<Store> {
        match (explicit, std::env::var_os(STORE_ENV)) {
            (Some(p), _) => Some(Store::at(p)),
            (None, Some(p)) if !p.is_empty() => Some(Store::at(Path::new(&p))),
            _ => None,
        }
    }

    /// The directory of finished entries.
    pub fn entries_dir(&self) -> PathBuf {
        self.root.join("entries")
    }

    /// The directory of the entry with this key.
    pub fn entry_dir(&self, key: &Key) -> PathBuf {
        self.entries_dir().join(hex(key))
    }

    /// The op outputs of the entry with this key.
    pub fn out_dir(&self, key: &Key) -> PathBuf {
        self.entry_dir(key).join("out")
    }

    /// Whether the finished result of the stage with this key is stored: its entry has a valid
    /// manifest (an entry without one is treated as absent, and moved aside when rerun).
    pub fn contains(&self, key: &Key) -> bool {
        manifest::Manifest::read(&self.entry_dir(key)).is_ok()
    }

    /// [`Store::contains`] for many keys at once: the entries directory is listed once, and only
    /// the manifests of the entries found there are read (in parallel).
    pub fn contains_many(&self, keys: &[Key]) -> Vec<bool> {
        self.manifests(keys).iter().map(Option::is_some).collect()
    }

    /// The manifests of the finished entries of these keys (`None` where [`Store::contains`] is
    /// false), read in parallel. For many keys the entries directory is listed once and only the
    /// manifests found there are read, unless the store holds many more entries than that (the
    /// directory's size says roughly how many): then each key is looked up.
    pub fn manifests(&self, keys: &[Key]) -> Vec<Option<manifest::Manifest>> {
        use rayon::prelude::*;
        let read = |k: &Key| manifest::Manifest::read(&self.entry_dir(k)).ok();
        let dir = match std::fs::metadata(self.entries_dir()) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return vec![None; keys.len()],
            Err(_) => return keys.par_iter().map(read).collect(),
        };
        // A directory entry of a 64-character name takes some 64 to 100 bytes.
        let list = keys.len() >= LIST_ENTRIES_FROM && dir.len() / 64 <= 8 * keys.len() as u64;
        let listed = if list { self.keys().ok() } else { None };
        let Some(present) = listed.map(|found| found.into_iter().collect::<std::collections::HashSet<Key>>()) else {
            return keys.par_iter().map(read).collect();
        };
        keys.par_iter()
            .map(|k| if present.contains(k) { read(k) } else { None })
            .collect()
    }

    /// Where damaged entries are moved aside.
    pub fn damaged_dir(&self) -> PathBuf {
        self.root.join("damaged")
    }

    /// Where entries are written before they are renamed into place.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Where the per-key lock files are.
    pub fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// Where run records are.
    pub fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }

    /// Where the caches are: prepared datasets, decoded images, manifest caches (speed-ups
    /// that gc may empty).
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// Where the resolved stages that Slurm jobs run are written (`<key>.json`).
    pub fn specs_dir(&self) -> PathBuf {
        self.root.join("specs")
    }

    /// Where Slurm submissions are recorded, with their job scripts and logs.
    pub fn slurm_dir(&self) -> PathBuf {
        self.root.join("slurm")
    }

    /// The stat cache of file fingerprints.
    pub fn stat_cache(&self) -> PathBuf {
        self.root.join(STAT_CACHE)
    }

    /// Keys of all finished entries (directories in entries/ with a hex name).
    pub fn keys(&self) -> std::io::Result<Vec<Key>> {
        hex_keys(&self.entries_dir())
    }

    /// Removes a finished entry: renamed into tmp/ first, so it disappears at once.
    pub fn remove_entry(&self, key: &Key) -> std::io::Result<u64> {
        let dir = self.entry_dir(key);
        let bytes = dir_size(&dir);
        let doomed = self
            .tmp_dir()
            .join(format!("{}.removed.{}", hex(key), std::process::id()));
        self.move_out(&dir, &doomed)?;
        files::remove_tree(&doomed)?;
        Ok(bytes)
    }

    /// Moves a damaged entry (or an entry directory without a valid manifest) out of entries/
    /// into damaged/, where it is no longer trusted; returns where it went.
    pub fn move_aside(&self, key: &Key) -> std::io::Result<PathBuf> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let dest = self
            .damaged_dir()
            .join(format!("{}.{stamp}.{}", hex(key), std::process::id()));
        self.move_out(&self.entry_dir(key), &dest)?;
        Ok(dest)
    }

    /// Renames a (read-only) entry directory to `dest`.
    fn move_out(&self, dir: &Path, dest: &Path) -> std::io::Result<()> {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Moving a directory to another parent rewrites its `..`: it must be writable.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o700))?;
        std::fs::rename(dir, dest)
    }

    /// Removes what interrupted runs left in tmp/: directories whose writer (the pid in the name)
    /// is gone and whose key no process holds locked. A key still held by the orphaned command of
    /// a dead rkd is freed by stopping that command. Returns how many were removed.
    pub fn clean_tmp(&self) -> usize {
        let Ok(dir) = std::fs::read_dir(self.tmp_dir()) else {
            return 0;
        };
        let mut removed = 0;
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if writer_alive(&name) {
                continue;
            }
            let key = name.split('.').next().and_then(|h| blake3::Hash::from_hex(h).ok());
            let free = match key {
                Some(k) => lock::KeyLock::try_acquire_reaping(self, k.as_bytes())
                    .ok()
                    .flatten()
                    .is_some(),
                None => true,
            };
            if free && files::remove_tree(&entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

/// Whether the process that named a tmp/ directory (`<key>.<pid>.<n>` or `<key>.removed.<pid>`)
/// is alive: its work is never removed, even if the lock files were.
pub(crate) fn writer_alive(name: &str) -> bool {
    let pid = name.split('.').skip(1).find_map(|part| part.parse::<u32>().ok());
    match pid {
        Some(pid) if pid != std::process::id() => crate::process::alive(pid, 0),
        _ => false,
    }
}

/// The keys named by a directory's hex-named entries, sorted (none when it does not exist).
fn hex_keys(dir: &Path) -> std::io::Result<Vec<Key>> {
    let mut keys = Vec::new();
    let dir = match std::fs::read_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
        Err(e) => return Err(e),
    };
    for entry in dir {
        let name = entry?.file_name();
        keys.extend(key::parse(&name.to_string_lossy()));
    }
    keys.sort();
    Ok(keys)
}

/// Total size of the files under a directory.
pub fn dir_size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|d| d.flatten().map(|e| dir_size(&e.path())).sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_of_many_keys_agree_with_contains_whether_listed_or_looked_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path());
        let keys: Vec<Key> = (0..100u8).map(|i| *blake3::hash(&[i]).as_bytes()).collect();
        assert!(store.manifests(&keys).iter().all(Option::is_none), "no entries/ yet");
        for k in &keys[..3] {
            let w = writer::EntryWriter::create(&store, k).unwrap();
            std::fs::write(w.out_dir().join("f.txt"), "x").unwrap();
            w.commit().unwrap();
        }
        // A directory without a manifest is not a stored result.
        std::fs::create_dir_all(store.entry_dir(&keys[3])).unwrap();
        let expected: Vec<bool> = keys.iter().map(|k| store.contains(k)).collect();
        assert_eq!(expected.iter().filter(|c| **c).count(), 3);
        // 100 keys: the directory is listed; 5 keys: each is looked up.
        assert_eq!(store.contains_many(&keys), expected);
        assert_eq!(store.contains_many(&keys[..5]), expected[..5]);
        assert_eq!(store.manifests(&keys)[0].as_ref().map(|m| m.files.len()), Some(1));
    }
}

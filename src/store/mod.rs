//! The content-addressed store (`.rkd/` beside the pipeline): one entry per stage key.
//!
//! Layout:
//! ```text
//! <store>/entries/<key>/   one finished stage: out/ (the op's outputs), spec.yaml, log.txt,
//!                          metrics.json, meta.json, and manifest.json (blake3 of every file)
//! <store>/tmp/             entries being written; renamed into entries/ only when complete
//! <store>/locks/<key>.lock held while a process runs that key (never the same key twice at once)
//! <store>/runs/            one YAML record per run, and index.json (the latest record of each stage name)
//! <store>/stat-cache.json  file fingerprints by (path, size, mtime, inode)
//! <store>/cache/           caches ops may use but never need (decoded image_folder images)
//! <store>/specs/<key>.json the resolved stage a Slurm job runs (`rkd exec-stage`)
//! <store>/slurm/           one JSON record per Slurm submission (job ids), job scripts and logs
//! ```
//! An entry directory appears only complete (rename is atomic), so a crash, Ctrl-C or kill -9
//! leaves at most a directory in tmp/, which the next run removes.

pub mod gc;
pub mod lock;
pub mod manifest;
pub mod records;
pub mod writer;

use crate::plan::key::{hex, Key};
use std::path::{Path, PathBuf};

/// Environment variable that overrides the store location.
pub const STORE_ENV: &str = "RKD_STORE";

/// A store directory.
#[derive(Clone, Debug)]
pub struct Store {
    /// Its root.
    pub root: PathBuf,
}

impl Store {
    /// The store for a pipeline: `explicit` if given, else `$RKD_STORE`, else `.rkd/` beside the file.
    pub fn for_pipeline(pipeline: &Path, explicit: Option<&Path>) -> Store {
        match Store::overridden(explicit) {
            Some(s) => s,
            None => Store {
                root: pipeline.parent().unwrap_or(Path::new(".")).join(".rkd"),
            },
        }
    }

    /// The store named by `explicit` or `$RKD_STORE`, else `.rkd/` in the current directory.
    pub fn for_cwd(explicit: Option<&Path>) -> Store {
        Store::overridden(explicit).unwrap_or(Store {
            root: PathBuf::from(".rkd"),
        })
    }

    fn overridden(explicit: Option<&Path>) -> Option<Store> {
        match (explicit, std::env::var_os(STORE_ENV)) {
            (Some(p), _) => Some(Store { root: p.to_path_buf() }),
            (None, Some(p)) if !p.is_empty() => Some(Store { root: PathBuf::from(p) }),
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

    /// Whether the finished result of the stage with this key is stored.
    pub fn contains(&self, key: &Key) -> bool {
        self.entry_dir(key).join(manifest::MANIFEST).is_file()
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
        self.root.join(crate::plan::fingerprint::STAT_CACHE)
    }

    /// Keys of all finished entries (directories in entries/ with a hex name).
    pub fn keys(&self) -> std::io::Result<Vec<Key>> {
        let mut keys = Vec::new();
        let dir = match std::fs::read_dir(self.entries_dir()) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
            Err(e) => return Err(e),
        };
        for entry in dir {
            let name = entry?.file_name();
            if let Ok(h) = blake3::Hash::from_hex(name.to_string_lossy().as_bytes()) {
                keys.push(*h.as_bytes());
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Removes a finished entry: renamed into tmp/ first, so it disappears at once.
    pub fn remove_entry(&self, key: &Key) -> std::io::Result<u64> {
        let dir = self.entry_dir(key);
        let bytes = dir_size(&dir);
        std::fs::create_dir_all(self.tmp_dir())?;
        let doomed = self
            .tmp_dir()
            .join(format!("{}.removed.{}", hex(key), std::process::id()));
        std::fs::rename(&dir, &doomed)?;
        std::fs::remove_dir_all(&doomed)?;
        Ok(bytes)
    }

    /// Removes what interrupted runs left in tmp/ (entries whose key no process holds locked).
    /// Returns how many were removed.
    pub fn clean_tmp(&self) -> usize {
        let Ok(dir) = std::fs::read_dir(self.tmp_dir()) else {
            return 0;
        };
        let mut removed = 0;
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let key = name.split('.').next().and_then(|h| blake3::Hash::from_hex(h).ok());
            let free = match key {
                Some(k) => lock::KeyLock::try_acquire(self, k.as_bytes()).ok().flatten().is_some(),
                None => true,
            };
            if free && std::fs::remove_dir_all(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
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

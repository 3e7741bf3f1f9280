//! In-stage checkpoints: where a long stage keeps its progress until it finishes.
//!
//! ```text
//! <store>/checkpoints/<key>/step-000120/   one checkpoint: the files the op wrote, and
//!                                          manifest.json (size and blake3 of each), written last
//! <store>/checkpoints/<key>/progress.json  the running stage's step, epoch and last checkpoint
//! ```
//! A checkpoint is written in a private directory and renamed into place when complete, so a
//! kill at any moment leaves either the previous checkpoints or the new one, never half of one.
//! The last [`KEEP`] are kept. Checkpoints are never cache entries: nothing reads them but a rerun
//! of the same key, which hashes a checkpoint before trusting it; the stage's entry, once stored,
//! makes them useless, and they are removed then (and by `rkd gc` when no kept pipeline needs
//! the stage).

use super::files;
use super::key::{hex, Key};
use super::manifest::{Manifest, MANIFEST};
use super::Store;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Checkpoints kept per stage (the newest; an older one is the fallback if the newest is damaged).
pub const KEEP: usize = 2;

/// The running stage's progress file inside its checkpoint folder.
const PROGRESS: &str = "progress.json";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The checkpoints of one stage key.
#[derive(Debug, Clone)]
pub struct StageCheckpoints {
    dir: PathBuf,
}

/// One complete checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// The optimiser steps it holds.
    pub step: u64,
    /// Its directory.
    pub dir: PathBuf,
}

/// A training stage's progress, as `rkd status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageProgress {
    /// Optimiser steps taken.
    pub step: u64,
    /// Steps planned.
    pub planned_steps: u64,
    /// The epoch being trained (from 1).
    pub epoch: u64,
    /// Epochs planned.
    pub epochs: u64,
    /// When this was written (RFC 3339).
    pub updated: String,
    /// The step and time (RFC 3339) of the last checkpoint, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<(u64, String)>,
}

impl Store {
    /// Where stages keep their in-stage checkpoints.
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// The checkpoints of stage `key`.
    pub fn checkpoints(&self, key: &Key) -> StageCheckpoints {
        StageCheckpoints {
            dir: self.checkpoints_dir().join(hex(key)),
        }
    }

    /// Keys that have a checkpoint folder.
    pub fn checkpointed_keys(&self) -> Vec<Key> {
        super::hex_keys(&self.checkpoints_dir()).unwrap_or_default()
    }
}

impl StageCheckpoints {
    /// The stage's checkpoint folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The complete checkpoints (with a manifest), newest first.
    pub fn list(&self) -> Vec<Saved> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut saved: Vec<Saved> = dir
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let step = name.to_str()?.strip_prefix("step-")?.parse().ok()?;
                let dir = e.path();
                dir.join(MANIFEST).is_file().then_some(Saved { step, dir })
            })
            .collect();
        saved.sort_by_key(|s| std::cmp::Reverse(s.step));
        saved
    }

    /// The newest complete checkpoint (not yet verified).
    pub fn latest(&self) -> Option<Saved> {
        self.list().into_iter().next()
    }

    /// Writes checkpoint `step`: `fill` writes its files into a private directory, which gets a
    /// manifest, is flushed to disk and renamed into place; then the oldest beyond [`KEEP`] are
    /// removed (a kill at any moment leaves the newest complete checkpoints; briefly one more).
    pub fn write<E: From<std::io::Error>>(
        &self,
        step: u64,
        fill: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<Saved, E> {
        std::fs::create_dir_all(&self.dir)?;
        self.remove_partials();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let partial = self.dir.join(format!(".partial.{}.{n}", std::process::id()));
        std::fs::create_dir_all(&partial)?;
        let written = fill(&partial).and_then(|()| {
            let manifest = Manifest::build(&partial)?;
            let bytes = serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::other)?;
            std::fs::write(partial.join(MANIFEST), bytes)?;
            sync_tree(&partial)?;
            let dest = self.dir.join(format!("step-{step:09}"));
            if dest.exists() {
                files::remove_tree(&dest)?;
            }
            std::fs::rename(&partial, &dest)?;
            sync_dir(&self.dir)?;
            Ok(Saved { step, dir: dest })
        });
        if written.is_err() {
            let _ = files::remove_tree(&partial);
        }
        let saved = written?;
        // Only once the new one is in place do the oldest go.
        for old in self.list().into_iter().skip(KEEP) {
            let _ = files::remove_tree(&old.dir);
        }
        Ok(saved)
    }

    /// Checks a checkpoint against its manifest by hashing every file: the problems found, empty
    /// when it can be trusted.
    pub fn verify(&self, saved: &Saved) -> Vec<String> {
        Manifest::verify(&saved.dir)
    }

    /// Removes one checkpoint (one that failed its check).
    pub fn discard(&self, saved: &Saved) -> std::io::Result<()> {
        files::remove_tree(&saved.dir)
    }

    /// Removes every checkpoint of the stage; returns the bytes freed.
    pub fn clear(&self) -> std::io::Result<u64> {
        if !self.dir.exists() {
            return Ok(0);
        }
        let bytes = super::dir_size(&self.dir);
        files::remove_tree(&self.dir)?;
        Ok(bytes)
    }

    /// Writes the running stage's progress (atomically: readers see the old or the new file).
    pub fn write_progress(&self, progress: &StageProgress) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let json = serde_json::to_vec_pretty(progress).map_err(std::io::Error::other)?;
        super::records::atomic_write(&self.dir.join(PROGRESS), &json)
    }

    /// The stage's last written progress, if any.
    pub fn progress(&self) -> Option<StageProgress> {
        serde_json::from_slice(&std::fs::read(self.dir.join(PROGRESS)).ok()?).ok()
    }

    /// Removes partial checkpoints whose writer is gone (killed while writing).
    fn remove_partials(&self) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str().filter(|n| n.starts_with(".partial.")) else {
                continue;
            };
            let ours = name.split('.').nth(2) == Some(&std::process::id().to_string());
            if !ours && !super::writer_alive(name) {
                let _ = files::remove_tree(&e.path());
            }
        }
    }
}

/// Flushes every file under `dir` and the directories themselves to disk.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        let path = e.path();
        if e.file_type()?.is_dir() {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path)?.sync_all()?;
        }
    }
    sync_dir(dir)
}

/// Flushes a directory's entries (names) to disk.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_files(dir: &Path, text: &str) -> std::io::Result<()> {
        std::fs::write(dir.join("a.bin"), text)?;
        std::fs::create_dir(dir.join("sub"))?;
        std::fs::write(dir.join("sub/b.json"), "{}")
    }

    #[test]
    fn keeps_the_newest_two_complete_checkpoints_and_never_a_partial_one() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::at(tmp.path());
        let c = store.checkpoints(&[7; 32]);
        assert_eq!(c.latest(), None);
        for step in [10, 20, 30] {
            c.write::<std::io::Error>(step, |d| write_files(d, &format!("step {step}")))
                .unwrap();
        }
        let steps: Vec<u64> = c.list().iter().map(|s| s.step).collect();
        assert_eq!(steps, vec![30, 20]);
        let latest = c.latest().unwrap();
        assert!(c.verify(&latest).is_empty());
        assert_eq!(std::fs::read_to_string(latest.dir.join("a.bin")).unwrap(), "step 30");
        // A failed write leaves nothing behind and the older checkpoints as they were.
        let err = c.write::<std::io::Error>(40, |d| {
            std::fs::write(d.join("a.bin"), "half")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(err.is_err());
        assert_eq!(c.latest().unwrap().step, 30);
        let names: Vec<String> = std::fs::read_dir(c.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with(".partial")), "{names:?}");
        // A checkpoint whose bytes changed fails its check.
        std::fs::write(latest.dir.join("a.bin"), "step 31").unwrap();
        let problems = c.verify(&latest);
        assert!(problems.iter().any(|p| p.contains("a.bin")), "{problems:?}");
        c.discard(&latest).unwrap();
        assert_eq!(c.latest().unwrap().step, 20);
        assert_eq!(store.checkpointed_keys(), vec![[7; 32]]);
        assert!(c.clear().unwrap() > 0);
        assert!(store.checkpointed_keys().is_empty());
    }

    #[test]
    fn progress_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Store::at(tmp.path()).checkpoints(&[1; 32]);
        assert_eq!(c.progress(), None);
        let p = StageProgress {
            step: 12,
            planned_steps: 40,
            epoch: 2,
            epochs: 4,
            updated: "2026-12-06T07:00:00Z".into(),
            checkpoint: Some((10, "2026-12-06T06:59:00Z".into())),
        };
        c.write_progress(&p).unwrap();
        assert_eq!(c.progress(), Some(p));
    }
}

//! Writing one entry: in a private directory under tmp/, renamed into entries/ when complete.

use super::manifest::{Manifest, MANIFEST};
use super::Store;
use crate::plan::key::{hex, Key};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// An entry being written. Dropping it without [`EntryWriter::commit`] removes what was written.
#[derive(Debug)]
pub struct EntryWriter {
    dir: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl EntryWriter {
    /// Starts an entry for `key`: creates its private directory and its `out/`.
    pub fn create(store: &Store, key: &Key) -> std::io::Result<EntryWriter> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = store.tmp_dir().join(format!("{}.{}.{n}", hex(key), std::process::id()));
        std::fs::create_dir_all(dir.join("out"))?;
        std::fs::create_dir_all(store.entries_dir())?;
        Ok(EntryWriter {
            dir,
            target: store.entry_dir(key),
            committed: false,
        })
    }

    /// The directory being written.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the op writes its outputs.
    pub fn out_dir(&self) -> PathBuf {
        self.dir.join("out")
    }

    /// Writes a file into the entry (next to out/).
    pub fn write(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        std::fs::write(self.dir.join(name), bytes)
    }

    /// Writes the manifest and moves the entry into place. If another process finished the same
    /// key meanwhile, its entry is kept (keys are content addresses: both are the same result).
    pub fn commit(mut self) -> std::io::Result<()> {
        let manifest = Manifest::build(&self.dir)?;
        self.write(MANIFEST, &serde_json::to_vec_pretty(&manifest)?)?;
        match std::fs::rename(&self.dir, &self.target) {
            Ok(()) => {
                self.committed = true;
                Ok(())
            }
            Err(_) if self.target.join(MANIFEST).is_file() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for EntryWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

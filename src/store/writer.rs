//! Writing one entry: in a private directory under tmp/, renamed into entries/ when complete.

use super::files;
use super::key::{hex, Key};
use super::manifest::{Manifest, MANIFEST};
use super::Store;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// An entry being written. Dropping it without [`EntryWriter::commit`] removes what was written.
#[derive(Debug)]
pub struct EntryWriter {
    dir: PathBuf,
    target: PathBuf,
    committed: bool,
    store: Store,
    key: Key,
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
            store: store.clone(),
            key: *key,
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

    /// Writes the manifest and moves the entry into place, read-only. Symlinks in the output are
    /// replaced by copies of what they point to first (an entry holds its contents, nothing
    /// outside it). If another process finished the same key meanwhile, its entry is kept (keys
    /// are content addresses: both are the same result); a directory there without a valid
    /// manifest is moved aside.
    pub fn commit(mut self) -> Result<(), String> {
        files::materialize_links(&self.dir)?;
        let manifest = Manifest::build(&self.dir).map_err(|e| format!("cannot hash the outputs: {e}"))?;
        let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
        self.write(MANIFEST, &bytes).map_err(|e| e.to_string())?;
        files::make_read_only(&self.dir, false).map_err(|e| format!("cannot make the entry read-only: {e}"))?;
        let mut first = true;
        loop {
            match std::fs::rename(&self.dir, &self.target) {
                Ok(()) => {
                    self.committed = true;
                    return files::make_read_only_dir(&self.target).map_err(|e| e.to_string());
                }
                Err(_) if Manifest::read(&self.target).is_ok() => return Ok(()),
                Err(_) if first && self.target.exists() => {
                    first = false;
                    self.store
                        .move_aside(&self.key)
                        .map_err(|e| format!("cannot move aside the invalid entry in its place: {e}"))?;
                }
                Err(e) => return Err(format!("cannot move the entry into the store: {e}")),
            }
        }
    }
}

impl Drop for EntryWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = files::remove_tree(&self.dir);
        }
    }
}

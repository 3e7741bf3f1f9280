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
        std::fs::create_dir_all(dir.join("out")).map_err(|e| super::layout::at(&dir, e))?;
        std::fs::create_dir_all(store.entries_dir()).map_err(|e| super::layout::at(&store.entries_dir(), e))?;
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
    pub fn commit(mut self) -> Result<(), CommitError> {
        files::materialize_links(&self.dir).map_err(CommitError::Links)?;
        let manifest = Manifest::build(&self.dir).map_err(CommitError::Hash)?;
        let bytes = serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::other)?;
        self.write(MANIFEST, &bytes)?;
        files::make_read_only(&self.dir, false).map_err(CommitError::ReadOnly)?;
        let mut first = true;
        loop {
            match std::fs::rename(&self.dir, &self.target) {
                Ok(()) => {
                    self.committed = true;
                    return Ok(files::make_read_only_dir(&self.target)?);
                }
                Err(_) if Manifest::read(&self.target).is_ok() => return Ok(()),
                Err(_) if first && self.target.exists() => {
                    first = false;
                    self.store.move_aside(&self.key).map_err(CommitError::MoveAside)?;
                }
                Err(e) => return Err(CommitError::Rename(e)),
            }
        }
    }
}

/// Why an entry could not be committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// A symlink in the output cannot be replaced by what it points to.
    #[error("{0}")]
    Links(String),
    /// The files cannot be hashed.
    #[error("cannot hash the outputs: {0}")]
    Hash(std::io::Error),
    /// The files cannot be made read-only.
    #[error("cannot make the entry read-only: {0}")]
    ReadOnly(std::io::Error),
    /// A directory without a valid manifest is in the entry's place and cannot be moved aside.
    #[error("cannot move aside the invalid entry in its place: {0}")]
    MoveAside(std::io::Error),
    /// The entry cannot be renamed into place.
    #[error("cannot move the entry into the store: {0}")]
    Rename(std::io::Error),
    /// Another write failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Drop for EntryWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = files::remove_tree(&self.dir);
        }
    }
}

//! Where stage results live: the content-addressed store (`.rkd/` beside the pipeline).
//!
//! Layout: `<store>/entries/<key hex>/` holds one stage's results; `<store>/stat-cache.json`
//! remembers file fingerprints. An entry directory only ever appears complete (it is written
//! elsewhere and renamed into place), so its presence means the stage's result is there.

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
        let root = match (explicit, std::env::var_os(STORE_ENV)) {
            (Some(p), _) => p.to_path_buf(),
            (None, Some(p)) if !p.is_empty() => PathBuf::from(p),
            _ => pipeline.parent().unwrap_or(Path::new(".")).join(".rkd"),
        };
        Store { root }
    }

    /// The directory of the entry with this key.
    pub fn entry_dir(&self, key: &crate::plan::key::Key) -> PathBuf {
        self.root.join("entries").join(crate::plan::key::hex(key))
    }

    /// Whether the result of the stage with this key is stored.
    pub fn contains(&self, key: &crate::plan::key::Key) -> bool {
        self.entry_dir(key).is_dir()
    }

    /// The stat cache of file fingerprints.
    pub fn stat_cache(&self) -> PathBuf {
        self.root.join(crate::plan::fingerprint::STAT_CACHE)
    }
}

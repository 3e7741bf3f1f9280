//! Whether a store is usable as one: its root and the folders it keeps are folders (a file in
//! their place is a damaged layout, reported with where it is), and I/O errors that name the path.

use super::Store;
use std::path::{Path, PathBuf};

/// Why a store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The store's root is not a folder.
    #[error(
        "the store {} is not a folder\n  help: --store (or $RKD_STORE) names the store's folder, which rkd makes if it is missing; give another path or move the file away",
        .root.display()
    )]
    NotAFolder {
        /// The store's root.
        root: PathBuf,
    },
    /// A folder of the store is something else.
    #[error(
        "the store's layout is damaged: {} should be a folder but is not\n  help: move it aside (`mv {0} {0}.bad`; rkd makes the folder again), or use another store with --store",
        .path.display()
    )]
    Damaged {
        /// The path that should be a folder.
        path: PathBuf,
    },
}

impl Store {
    /// Checks that the store's root and the folders it keeps are folders where they exist
    /// (a missing one is made when needed).
    pub fn check_layout(&self) -> Result<(), LayoutError> {
        if !is_folder_or_missing(&self.root) {
            return Err(LayoutError::NotAFolder {
                root: self.root.clone(),
            });
        }
        // The folders a store keeps beside its files.
        let folders = [
            self.entries_dir(),
            self.tmp_dir(),
            self.runs_dir(),
            self.locks_dir(),
            self.leases_dir(),
            self.damaged_dir(),
            self.checkpoints_dir(),
            self.cache_dir(),
            self.specs_dir(),
            self.slurm_dir(),
        ];
        match folders.into_iter().find(|p| !is_folder_or_missing(p)) {
            Some(path) => Err(LayoutError::Damaged { path }),
            None => Ok(()),
        }
    }
}

/// Whether `path` is a folder (followed through links), or nothing is there.
fn is_folder_or_missing(path: &Path) -> bool {
    match std::fs::metadata(path) {
        Ok(m) => m.is_dir(),
        // Missing is fine, unless a file stands where a folder above it should be; what cannot
        // be looked at (permissions) is left to the operation that needs it to report.
        Err(e) => e.kind() != std::io::ErrorKind::NotADirectory,
    }
}

/// `error` with the path it happened at, keeping its kind.
pub fn at(path: &Path, error: std::io::Error) -> std::io::Error {
    std::io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_in_place_of_the_store_or_its_folders_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(&dir.path().join("s"));
        assert!(store.check_layout().is_ok(), "a missing store is made when needed");
        std::fs::create_dir_all(store.root.join("runs")).unwrap();
        assert!(store.check_layout().is_ok());
        std::fs::write(store.root.join("entries"), "").unwrap();
        let e = store.check_layout().unwrap_err().to_string();
        assert!(e.contains("layout is damaged") && e.contains("s/entries"), "{e}");
        let file = Store::at(&dir.path().join("s/entries"));
        let e = file.check_layout().unwrap_err().to_string();
        assert!(e.contains("is not a folder") && e.contains("help:"), "{e}");
    }
}

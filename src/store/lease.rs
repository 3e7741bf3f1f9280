//! Run leases: the keys a running `rkd run` (or Slurm job) may read or write, which `rkd gc`
//! keeps. A lease is a file in `<store>/leases/` locked by its process for as long as it lives;
//! a lease whose lock is free belongs to a dead process and is ignored (and removed).
//!
//! Taking a lease and collecting garbage exclude each other (`leases/.registry`): a run that
//! starts while gc works waits for it, and a run that started before gc is seen by it.

use super::key::{hex, Key};
use super::Store;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

const REGISTRY: &str = ".registry";

/// A held lease; dropping it ends it.
#[derive(Debug)]
pub struct Lease {
    _file: File,
    path: PathBuf,
}

/// The exclusive right to change the set of leases (held briefly by a run, throughout by gc).
#[derive(Debug)]
pub struct Registry {
    _file: File,
}

impl Store {
    /// Where leases are.
    pub fn leases_dir(&self) -> PathBuf {
        self.root.join("leases")
    }

    /// Waits until no gc is running, then locks the lease registry.
    pub fn lock_leases(&self) -> std::io::Result<Registry> {
        std::fs::create_dir_all(self.leases_dir())?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.leases_dir().join(REGISTRY))?;
        file.lock()?;
        Ok(Registry { _file: file })
    }

    /// Leases these keys for as long as the returned lease lives.
    pub fn lease(&self, keys: impl IntoIterator<Item = Key>) -> std::io::Result<Lease> {
        let _registry = self.lock_leases()?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self.leases_dir().join(format!("{}.{n}.lease", std::process::id()));
        let mut file = OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
        file.lock()?;
        let mut text = String::new();
        for key in keys {
            text.push_str(&hex(&key));
            text.push('\n');
        }
        file.write_all(text.as_bytes())?;
        file.flush()?;
        Ok(Lease { _file: file, path })
    }

    /// The keys leased by living processes. Call it holding the registry ([`Store::lock_leases`]).
    /// Leases of dead processes are removed.
    pub fn leased_keys(&self, _registry: &Registry) -> std::io::Result<HashSet<Key>> {
        let mut keys = HashSet::new();
        let dir = match std::fs::read_dir(self.leases_dir()) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
            Err(e) => return Err(e),
        };
        for entry in dir.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|x| x != "lease") {
                continue;
            }
            let Ok(file) = File::open(&path) else { continue };
            match file.try_lock_shared() {
                Ok(()) => {
                    // No one holds it: its run is over.
                    let _ = std::fs::remove_file(&path);
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    let text = std::fs::read_to_string(&path)?;
                    keys.extend(text.lines().filter_map(|l| super::key::parse(l.trim())));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
        }
        Ok(keys)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_living_lease_is_seen_and_an_ended_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path());
        let lease = store.lease([[1u8; 32], [2u8; 32]]).unwrap();
        let registry = store.lock_leases().unwrap();
        let keys = store.leased_keys(&registry).unwrap();
        assert_eq!(keys, HashSet::from([[1u8; 32], [2u8; 32]]));
        drop(registry);
        drop(lease);
        let registry = store.lock_leases().unwrap();
        assert!(store.leased_keys(&registry).unwrap().is_empty());
    }

    #[test]
    fn a_dead_process_lease_is_ignored_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path());
        std::fs::create_dir_all(store.leases_dir()).unwrap();
        let stale = store.leases_dir().join("999999.0.lease");
        std::fs::write(&stale, format!("{}\n", hex(&[3u8; 32]))).unwrap();
        let registry = store.lock_leases().unwrap();
        assert!(store.leased_keys(&registry).unwrap().is_empty());
        assert!(!stale.exists());
    }
}

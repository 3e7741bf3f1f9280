//! Per-key file locks, so that two processes never run the same stage at once.

use super::Store;
use crate::plan::key::{hex, Key};
use std::fs::{File, OpenOptions};

/// An exclusive lock on one key, released when dropped (or when the process dies).
#[derive(Debug)]
pub struct KeyLock {
    _file: File,
}

impl KeyLock {
    fn open(store: &Store, key: &Key) -> std::io::Result<File> {
        std::fs::create_dir_all(store.locks_dir())?;
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(store.locks_dir().join(format!("{}.lock", hex(key))))
    }

    /// Waits until the key is free and locks it.
    pub fn acquire(store: &Store, key: &Key) -> std::io::Result<KeyLock> {
        let file = KeyLock::open(store, key)?;
        file.lock()?;
        Ok(KeyLock { _file: file })
    }

    /// Locks the key if no one holds it; `None` if someone does.
    pub fn try_acquire(store: &Store, key: &Key) -> std::io::Result<Option<KeyLock>> {
        let file = KeyLock::open(store, key)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(KeyLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

//! Per-key file locks, so that two processes never run the same stage at once.
//!
//! The lock file names the rkd process that holds it (pid and start time). A stage's command
//! inherits the lock, so a key stays locked while anything that stage started is still alive.
//! When the rkd that held a key is gone (kill -9, power loss) but its command lives on, the next
//! process that needs the key stops that orphaned command first: a stage never runs twice at once.

use super::key::{hex, Key};
use super::Store;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An exclusive lock on one key, released when dropped (or when the process and every command
/// it handed the lock to are gone).
#[derive(Debug)]
pub struct KeyLock {
    file: File,
}

impl KeyLock {
    /// Waits until the key is free and locks it. A key held by the orphaned command of an rkd
    /// that died is freed by stopping that command.
    pub fn acquire(store: &Store, key: &Key) -> std::io::Result<KeyLock> {
        if let Some(lock) = KeyLock::try_acquire(store, key)? {
            return Ok(lock);
        }
        let path = lock_path(store, key);
        if let Some(stopped) = stop_orphans(&path) {
            crate::say!(
                "note: stopped the command an interrupted run left running for key {} (pid {})",
                &hex(key)[..12],
                stopped.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
            );
        }
        lock_file(&path, true).map(|l| l.expect("a blocking lock is always taken"))
    }

    /// Locks the key if no one holds it; `None` if someone does.
    pub fn try_acquire(store: &Store, key: &Key) -> std::io::Result<Option<KeyLock>> {
        lock_file(&lock_path(store, key), false)
    }

    /// Like [`KeyLock::try_acquire`], but first stops the orphaned command of a dead rkd that
    /// still holds the key (what a cleanup does before it removes that key's leftovers).
    pub fn try_acquire_reaping(store: &Store, key: &Key) -> std::io::Result<Option<KeyLock>> {
        if let Some(lock) = KeyLock::try_acquire(store, key)? {
            return Ok(Some(lock));
        }
        if stop_orphans(&lock_path(store, key)).is_none() {
            return Ok(None);
        }
        // The killed processes release the lock as they exit.
        for _ in 0..50 {
            if let Some(lock) = KeyLock::try_acquire(store, key)? {
                return Ok(Some(lock));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(None)
    }

    /// The lock's file descriptor, for a stage command to inherit (so that the key stays locked
    /// while the command lives).
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        // A released lock names no owner: only a dead holder's record stays behind.
        let _ = self.file.set_len(0);
    }
}

fn lock_path(store: &Store, key: &Key) -> PathBuf {
    store.locks_dir().join(format!("{}.lock", hex(key)))
}

/// Opens and locks `path`, creating the lock directory again if it vanished, and making sure the
/// lock is on the file that the path names now (not one that was removed meanwhile).
fn lock_file(path: &Path, blocking: bool) -> std::io::Result<Option<KeyLock>> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let file = match open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 100 => continue,
            Err(e) => return Err(e),
        };
        if blocking {
            file.lock()?;
        } else {
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
        }
        let current = std::fs::metadata(path).ok();
        let held = file.metadata()?;
        if current.is_some_and(|m| m.ino() == held.ino() && m.dev() == held.dev()) {
            write_owner(&file)?;
            return Ok(Some(KeyLock { file }));
        }
        if attempts >= 100 {
            return Err(std::io::Error::other(format!(
                "{} keeps disappearing while it is locked",
                path.display()
            )));
        }
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
}

/// Records this process as the holder: `rkd <pid> <start time>`.
fn write_owner(file: &File) -> std::io::Result<()> {
    let pid = std::process::id();
    let mut f = file;
    f.set_len(0)?;
    f.rewind()?;
    f.write_all(format!("rkd {pid} {}\n", crate::process::start_time(pid).unwrap_or(0)).as_bytes())
}

/// The holder recorded in a lock file: (pid, start time).
fn read_owner(path: &Path) -> Option<(u32, u64)> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    let mut words = text.split_whitespace();
    (words.next()? == "rkd").then_some(())?;
    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}

/// When the rkd recorded in a held lock file is dead, kills the processes that still hold the
/// file open (the command it started, and that command's process group). Returns their pids,
/// or `None` when there was nothing to stop.
fn stop_orphans(path: &Path) -> Option<Vec<u32>> {
    let (pid, started) = read_owner(path)?;
    if crate::process::alive(pid, started) {
        return None;
    }
    // A new holder may have locked the file a moment ago and not written its name yet.
    std::thread::sleep(Duration::from_millis(50));
    if read_owner(path) != Some((pid, started)) {
        return None;
    }
    let holders = processes_holding(path);
    if holders.is_empty() {
        return None;
    }
    // SAFETY: getpgrp has no preconditions.
    let own_group = unsafe { libc::getpgrp() };
    for &p in &holders {
        // SAFETY: signalling processes (and their groups) that hold this key's lock file open.
        unsafe {
            let group = libc::getpgid(p as libc::pid_t);
            if group > 1 && group != own_group {
                libc::kill(-group, libc::SIGKILL);
            }
            libc::kill(p as libc::pid_t, libc::SIGKILL);
        }
    }
    Some(holders)
}

/// The processes (other than this one) with `path` open, found through /proc (Linux).
fn processes_holding(path: &Path) -> Vec<u32> {
    let Ok(target) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| m.ino() == target.ino() && m.dev() == target.dev()));
        if holds {
            out.push(pid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path());
        (dir, store)
    }

    #[test]
    fn a_held_key_cannot_be_taken_twice_and_is_free_after_drop() {
        let (_d, store) = store();
        let key = [7u8; 32];
        let lock = KeyLock::acquire(&store, &key).unwrap();
        assert!(KeyLock::try_acquire(&store, &key).unwrap().is_none());
        let (pid, _) = read_owner(&lock_path(&store, &key)).unwrap();
        assert_eq!(pid, std::process::id());
        drop(lock);
        assert!(
            read_owner(&lock_path(&store, &key)).is_none(),
            "a released lock names no owner"
        );
        assert!(KeyLock::try_acquire(&store, &key).unwrap().is_some());
    }

    #[test]
    fn a_removed_lock_directory_is_made_again() {
        let (_d, store) = store();
        let held = KeyLock::acquire(&store, &[1u8; 32]).unwrap();
        std::fs::remove_dir_all(store.locks_dir()).unwrap();
        let other = KeyLock::acquire(&store, &[2u8; 32]).unwrap();
        assert!(store.locks_dir().is_dir());
        drop((held, other));
    }
}

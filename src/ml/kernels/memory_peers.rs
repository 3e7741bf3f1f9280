//! Memory that other rkd processes of this user on this machine reserved in their ledgers
//! ([`super::memory_ledger`]) and have not allocated yet — a model being built, a training
//! step's activations between two steps — so that two `rkd run`s side by side do not each count
//! the same free memory.
//!
//! A process running stages or holding reservations keeps a file
//! `<temp dir>/rkd-memory-<uid>/<pid>-<start time>`: the bytes it reserved, how many stages it
//! runs, whether every one of them waits for memory, and its control groups (its `/proc/self/cgroup` lines), so that a process
//! under a group's limit counts only the others inside that group. A check reads the others'
//! files while it holds the folder's `lock` file, so two checks never pass on the same memory;
//! the file of a process that is gone (killed, crashed) is removed by the next check. Linux only:
//! elsewhere no figure of free memory exists, and nothing is kept.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::PathBuf;

/// What another process reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its process id.
    pub pid: u32,
    /// Bytes reserved and not yet released.
    pub reserved: u64,
    /// Stages it runs.
    pub stages: usize,
    /// Whether every stage it runs waits for memory (it releases nothing until another does).
    pub waiting: bool,
    /// Its `/proc/self/cgroup` lines.
    pub cgroups: Vec<String>,
}

impl Peer {
    /// Whether it may release memory without another process releasing some first: it runs
    /// stages or holds reservations, and not all of its stages wait.
    pub fn could_release(&self) -> bool {
        !self.waiting && (self.stages > 0 || self.reserved > 0)
    }

    /// Whether the peer is inside `group` (or is it) in the hierarchy of `controllers` (the
    /// second field of a `/proc/self/cgroup` line: "" for cgroup v2, "memory" for v1's).
    pub fn inside(&self, controllers: &str, group: &str) -> bool {
        let group = group.trim_end_matches('/');
        self.cgroups.iter().any(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, c, path) = (parts.next(), parts.next(), parts.next());
            c == Some(controllers)
                && path.is_some_and(|p| {
                    group.is_empty() || p == group || p.strip_prefix(group).is_some_and(|r| r.starts_with('/'))
                })
        })
    }
}

/// The folder where one user's rkd processes say what they reserved, and this process's name
/// in it.
#[derive(Debug)]
pub struct Peers {
    dir: PathBuf,
    /// This process's file: `<pid>-<start time>`, and `-<tag>` for a test's second ledger.
    own: String,
    /// This process's `/proc/self/cgroup` lines.
    cgroups: Vec<String>,
}

/// The folder, locked: no other process's check passes while it lives.
pub struct Locked<'a> {
    peers: &'a Peers,
    _lock: File,
}

impl Peers {
    /// This user's folder under the temp directory; `None` where processes cannot be told
    /// apart (no /proc).
    pub fn for_this_process() -> Option<Peers> {
        let pid = std::process::id();
        let started = crate::process::start_time(pid)?;
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Some(Peers::at(
            std::env::temp_dir().join(format!("rkd-memory-{uid}")),
            format!("{pid}-{started}"),
            cgroups.lines().map(String::from).collect(),
        ))
    }

    /// The folder `dir`, where this process's file is `own` (`<pid>-<start time>[-<tag>]`) and
    /// its groups are `cgroups`.
    pub fn at(dir: PathBuf, own: String, cgroups: Vec<String>) -> Peers {
        Peers { dir, own, cgroups }
    }

    /// Locks the folder, waiting while another process checks. `Err` when the folder cannot
    /// be made or is not this user's.
    pub fn lock(&self) -> std::io::Result<Locked<'_>> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        // SAFETY: getuid has no preconditions.
        if std::fs::metadata(&self.dir)?.uid() != unsafe { libc::getuid() } {
            return Err(std::io::Error::other(format!("{} is not yours", self.dir.display())));
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("lock"))?;
        lock.lock()?;
        Ok(Locked {
            peers: self,
            _lock: lock,
        })
    }

    /// Says that this process now holds `reserved` bytes, runs `stages` stages and whether all
    /// of them wait (no file when it holds nothing, runs nothing and does not wait). Callers
    /// serialize their calls (the ledger's lock).
    pub fn publish(&self, reserved: u64, stages: usize, waiting: bool) {
        let path = self.dir.join(&self.own);
        if reserved == 0 && stages == 0 && !waiting {
            let _ = std::fs::remove_file(path);
            return;
        }
        let mut text = format!("reserved {reserved}\nstages {stages}\nwaiting {}\n", u8::from(waiting));
        for line in &self.cgroups {
            text.push_str(&format!("cgroup {line}\n"));
        }
        // Written aside and renamed into place: a reader sees the old figure or the new one.
        let tmp = self.dir.join(format!(".{}.tmp", self.own));
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

impl Locked<'_> {
    /// The other living processes' reservations; the files of processes that are gone are
    /// removed.
    pub fn others(&self) -> Vec<Peer> {
        let Ok(entries) = std::fs::read_dir(&self.peers.dir) else {
            return Vec::new();
        };
        let mut peers = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == self.peers.own || name == "lock" || name.starts_with('.') {
                continue;
            }
            let mut parts = name.split('-');
            let pid = parts.next().and_then(|p| p.parse::<u32>().ok());
            let started = parts.next().and_then(|s| s.parse::<u64>().ok());
            let (Some(pid), Some(started)) = (pid, started) else {
                continue;
            };
            if !crate::process::alive(pid, started) {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            if let Some(peer) = std::fs::read_to_string(entry.path()).ok().and_then(|t| parse(pid, &t)) {
                peers.push(peer);
            }
        }
        peers.sort_by_key(|p| p.pid);
        peers
    }
}

/// A peer's file.
fn parse(pid: u32, text: &str) -> Option<Peer> {
    let mut peer = Peer {
        pid,
        reserved: 0,
        stages: 0,
        waiting: false,
        cgroups: Vec::new(),
    };
    for line in text.lines() {
        let (field, value) = line.split_once(' ')?;
        match field {
            "reserved" => peer.reserved = value.parse().ok()?,
            "stages" => peer.stages = value.parse().ok()?,
            "waiting" => peer.waiting = value == "1",
            "cgroup" => peer.cgroups.push(value.to_string()),
            _ => {}
        }
    }
    Some(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(dir: &std::path::Path, tag: &str, cgroup: &str) -> Peers {
        let pid = std::process::id();
        let started = crate::process::start_time(pid).unwrap_or(0);
        Peers::at(
            dir.to_path_buf(),
            format!("{pid}-{started}-{tag}"),
            vec![cgroup.to_string()],
        )
    }

    #[test]
    fn a_process_sees_what_the_others_reserved_and_not_its_own() {
        if crate::process::start_time(std::process::id()).is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let a = peers(dir.path(), "a", "0::/slurm/job_1/step_0");
        let b = peers(dir.path(), "b", "0::/user.slice");
        a.publish(3 << 30, 1, false);
        b.publish(1 << 30, 2, true);
        let seen = a.lock().unwrap().others();
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].reserved, seen[0].stages, seen[0].waiting), (1 << 30, 2, true));
        assert!(!seen[0].could_release(), "all its stages wait");
        assert!(seen[0].inside("", "/user.slice") && seen[0].inside("", "/"));
        assert!(!seen[0].inside("", "/user") && !seen[0].inside("memory", "/user.slice"));
        let a_seen = &b.lock().unwrap().others()[0];
        assert!(a_seen.reserved == 3 << 30 && a_seen.could_release());
        // A stage running, nothing reserved: it may still release what it uses.
        a.publish(0, 1, false);
        assert!(b.lock().unwrap().others()[0].could_release());
        // Nothing reserved, nothing running, none waiting: no file, nothing counted.
        a.publish(0, 0, false);
        assert!(b.lock().unwrap().others().is_empty());
    }

    #[test]
    fn the_file_of_a_process_that_is_gone_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let me = peers(dir.path(), "a", "0::/");
        // A pid that cannot exist, and this one with another start time (a reused pid).
        for name in [format!("{}-5", u32::MAX / 2), format!("{}-1", std::process::id())] {
            std::fs::write(dir.path().join(&name), "reserved 100\nwaiting 0\n").unwrap();
        }
        assert!(me.lock().unwrap().others().is_empty());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["lock"]);
    }
}

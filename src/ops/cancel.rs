//! Cancellation of a run (Ctrl-C, SIGTERM, or the first failure without --keep-going).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Shared cancellation state: a flag, and the child process groups to stop.
#[derive(Debug, Default)]
pub struct Cancel {
    cancelled: AtomicBool,
    interrupted: AtomicBool,
    children: Mutex<HashSet<u32>>,
}

/// Keeps a child registered for cancellation while alive.
pub struct ChildGuard<'a> {
    cancel: &'a Cancel,
    pid: u32,
}

impl Drop for ChildGuard<'_> {
    fn drop(&mut self) {
        self.cancel
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.pid);
    }
}

impl Cancel {
    /// Whether the run was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Whether the cancellation came from the user (Ctrl-C / SIGTERM).
    pub fn is_interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    /// Registers a child process (the leader of its own process group) to stop on cancellation.
    pub fn register(&self, pid: u32) -> ChildGuard<'_> {
        self.children.lock().unwrap_or_else(|e| e.into_inner()).insert(pid);
        if self.is_interrupted() {
            kill_group(pid);
        }
        ChildGuard { cancel: self, pid }
    }

    /// Stops the run because the user asked: sets the flag and stops every running command.
    pub fn interrupt(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
        self.cancelled.store(true, Ordering::SeqCst);
        for pid in self.children.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            kill_group(*pid);
        }
    }

    /// Stops scheduling new stages; running ones finish.
    pub fn stop_scheduling(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }
}

fn kill_group(pid: u32) {
    // SAFETY: kill(2) with a negative pid signals the process group; it has no memory effects.
    unsafe {
        libc::kill(-(pid as libc::pid_t), libc::SIGTERM);
    }
}

//! Cancellation of a run (Ctrl-C, SIGTERM, or the first failure without --keep-going).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a command has to end after SIGTERM, when the user interrupts the run, before its
/// process group gets SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);

/// Shared cancellation state: a flag, and the child process groups to stop.
#[derive(Debug, Default)]
pub struct Cancel {
    cancelled: AtomicBool,
    interrupted: AtomicBool,
    children: Arc<Children>,
}

/// The registered process groups, and whether their grace period is over.
#[derive(Debug, Default)]
struct Children {
    pids: Mutex<HashSet<u32>>,
    grace_over: AtomicBool,
}

impl Children {
    /// Sends `signal` to every registered group. Under the lock: a command's group is
    /// unregistered before its shell is reaped, so no pid here can have been reused.
    fn signal_all(&self, signal: libc::c_int) {
        for pid in self.pids.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            signal_group(*pid, signal);
        }
    }

    /// Ends the grace period: SIGKILL to every group now and to any registered later.
    fn kill_all(&self) {
        self.grace_over.store(true, Ordering::SeqCst);
        self.signal_all(libc::SIGKILL);
    }
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
            .pids
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
    /// Drop the guard before reaping the child, so that its pid is never signalled once reused.
    pub fn register(&self, pid: u32) -> ChildGuard<'_> {
        let mut pids = self.children.pids.lock().unwrap_or_else(|e| e.into_inner());
        pids.insert(pid);
        if self.children.grace_over.load(Ordering::SeqCst) {
            signal_group(pid, libc::SIGKILL);
        } else if self.is_interrupted() {
            signal_group(pid, libc::SIGTERM);
        }
        ChildGuard { cancel: self, pid }
    }

    /// Stops the run because the user asked: sets the flag and sends SIGTERM to every running
    /// command's process group; SIGKILL follows [`GRACE`] later for the groups still there.
    pub fn interrupt(&self) {
        let first = !self.interrupted.swap(true, Ordering::SeqCst);
        self.cancelled.store(true, Ordering::SeqCst);
        self.children.signal_all(libc::SIGTERM);
        if first {
            let children = self.children.clone();
            std::thread::spawn(move || {
                std::thread::sleep(GRACE);
                children.kill_all();
            });
        }
    }

    /// Sends SIGKILL to every running command's process group at once (before quitting
    /// without waiting for them).
    pub fn kill_commands(&self) {
        self.children.kill_all();
    }

    /// Stops scheduling new stages; running ones finish.
    pub fn stop_scheduling(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }
}

fn signal_group(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) with a negative pid signals the process group; it has no memory effects.
    unsafe {
        libc::kill(-(pid as libc::pid_t), signal);
    }
}

//! Which process is which across time: a pid with its start time names one process for good,
//! since pids are reused.

use std::path::Path;

/// When process `pid` started (clock ticks since boot, /proc/PID/stat field 22); `None` when it
/// does not exist or the system does not say (not Linux).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid`, started at `started` (0: not known), is still alive. Without /proc
/// only the pid can be checked.
pub fn alive(pid: u32, started: u64) -> bool {
    if Path::new("/proc/self/stat").exists() {
        start_time(pid).is_some_and(|s| started == 0 || s == started)
    } else {
        // SAFETY: kill with signal 0 only checks that the process exists.
        unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_made_up_start_time_is_not() {
        let me = std::process::id();
        assert!(alive(me, 0));
        if let Some(started) = start_time(me) {
            assert!(alive(me, started));
            assert!(!alive(me, started + 1));
            assert!(!alive(u32::MAX / 2, 5));
        }
    }
}

//! Messages to stderr that cannot fail: a full (`2>/dev/full`), closed or broken stderr loses
//! the message, never the run. (`eprintln!` panics when the write fails, which in `rkd run`
//! stopped it before, or between, the stages whose work it was to store; and once `rkd run`
//! restores SIGPIPE for its summary, a write into a pipe nobody reads would end it by a signal.)

use std::io::Write;

/// Writes a line to stderr, ignoring write errors; `say!` is the `eprintln!`-like front.
/// Control characters other than line breaks and tabs are escaped
/// ([`crate::text::printable`]): a name or path from a user's file cannot restyle the terminal.
pub fn line(args: std::fmt::Arguments) {
    let mut s = crate::text::printable(&args.to_string()).into_owned();
    s.push('\n');
    text(&s);
}

/// Writes text as it is (no newline added) to stderr, ignoring write errors.
pub fn text(s: &str) {
    let _quiet = NoSigpipe::new();
    let _ = std::io::stderr().lock().write_all(s.as_bytes());
}

/// `eprintln!` that ignores a failed write (see the module docs).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::say::line(format_args!($($arg)*))
    };
}

/// While it lives, a write into a broken pipe on this thread fails with EPIPE instead of
/// raising SIGPIPE: the signal is blocked, and one that the write left pending is taken back.
struct NoSigpipe {
    #[cfg(unix)]
    old: Option<libc::sigset_t>,
}

/// The set holding SIGPIPE alone.
#[cfg(unix)]
fn sigpipe() -> libc::sigset_t {
    // SAFETY: the sigset functions only write the set passed to them, which lives on this frame.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        set
    }
}

/// Whether a SIGPIPE is pending for this thread (`None` when that cannot be told).
#[cfg(unix)]
fn sigpipe_pending() -> Option<bool> {
    // SAFETY: sigpending only writes the set passed to it, which lives on this frame.
    unsafe {
        let mut pending: libc::sigset_t = std::mem::zeroed();
        match libc::sigpending(&mut pending) {
            0 => Some(libc::sigismember(&pending, libc::SIGPIPE) == 1),
            _ => None,
        }
    }
}

impl NoSigpipe {
    #[cfg(unix)]
    fn new() -> NoSigpipe {
        // A SIGPIPE already pending is someone else's: leave it to be delivered.
        if sigpipe_pending() != Some(false) {
            return NoSigpipe { old: None };
        }
        // SAFETY: pthread_sigmask changes this thread's mask only and writes `old`, on this frame.
        unsafe {
            let mut old: libc::sigset_t = std::mem::zeroed();
            if libc::pthread_sigmask(libc::SIG_BLOCK, &sigpipe(), &mut old) != 0 {
                return NoSigpipe { old: None };
            }
            NoSigpipe { old: Some(old) }
        }
    }

    #[cfg(not(unix))]
    fn new() -> NoSigpipe {
        NoSigpipe {}
    }
}

#[cfg(unix)]
impl Drop for NoSigpipe {
    fn drop(&mut self) {
        let Some(old) = self.old else { return };
        // SAFETY: as in `new`; the SIGPIPE is pending (checked just before), so taking it off
        // this thread does not wait: with a zero timeout where sigtimedwait exists (Linux),
        // with sigwait elsewhere (macOS and the BSDs have no sigtimedwait).
        unsafe {
            if sigpipe_pending() == Some(true) {
                let pipe = sigpipe();
                #[cfg(any(target_os = "linux", target_os = "android"))]
                {
                    let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                    libc::sigtimedwait(&pipe, std::ptr::null_mut(), &zero);
                }
                #[cfg(not(any(target_os = "linux", target_os = "android")))]
                {
                    let mut taken: libc::c_int = 0;
                    libc::sigwait(&pipe, &mut taken);
                }
            }
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        }
    }
}

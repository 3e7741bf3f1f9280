//! `rkd run` with a standard error that cannot be written (`2>/dev/full`, `2>&-`, a pipe whose
//! reader is gone): the messages are lost, never the run. Stages run and are stored, and the
//! exit status is the run's.

mod common;
use common::Test;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// Two stages, one failing: the exit status says so (1), not a panic (101) or a signal.
const MIXED: &str = "stage bad = exec(cmd: \"exit 3\")\nstage good = exec(cmd: \"echo hi > $RKD_OUT/x\")\n";

/// Runs `rkd run p.rkd` in `t` with this stderr (`None`: closed, as `2>&-`); its exit code
/// (-1 for a signal) and stdout.
fn run_with_stderr(t: &Test, stderr: Option<Stdio>) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rkd"));
    cmd.args(["run", "p.rkd"])
        .current_dir(t.path())
        .env_remove("RKD_STORE")
        .env_remove("RKD_REMOTE")
        .env_remove("RKD_DEVICE")
        .env("NO_COLOR", "1");
    match stderr {
        Some(stderr) => {
            cmd.stderr(stderr);
        }
        // SAFETY: between fork and exec the child only closes its own descriptor 2
        // (async-signal-safe).
        None => unsafe {
            cmd.pre_exec(|| {
                libc::close(2);
                Ok(())
            });
        },
    }
    let out = cmd.output().expect("rkd runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The write end of a pipe whose read end is already closed.
fn dead_pipe() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fresh descriptors into `fds`; each is owned exactly once below.
    let (read, write) = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    drop(read);
    Stdio::from(write)
}

fn dev_full() -> Stdio {
    Stdio::from(std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap())
}

/// A model trained and evaluated on generated data with stderr full: it runs, and is stored.
#[test]
fn a_full_stderr_loses_no_work() {
    let t = Test::new().file("p.rkd", common::SHARED_PIPELINE);
    let (code, stdout) = run_with_stderr(&t, Some(dev_full()));
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("4 ran, 0 cached, 0 failed"), "{stdout}");
    let again = t.run_with(&["run", "p.rkd"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.contains("0 ran, 4 cached"), "{}", again.stdout);
}

/// Failures are said on stderr after the stages; with no one to read it, the run still ends
/// with its own status.
#[test]
fn a_failing_run_into_a_broken_stderr_exits_with_its_status() {
    for (what, stderr) in [
        ("/dev/full", Some(dev_full as fn() -> Stdio)),
        ("a pipe nobody reads", Some(dead_pipe)),
        ("a closed stderr", None),
    ] {
        let t = Test::new().file("p.rkd", MIXED);
        let (code, stdout) = run_with_stderr(&t, stderr.map(|f| f()));
        assert_eq!(code, 1, "{what}: {stdout}");
        assert!(stdout.contains("1 ran, 0 cached, 1 failed"), "{what}: {stdout}");
        let again = t.run_with(&["run", "p.rkd"]);
        assert!(
            again.stdout.contains("0 ran, 1 cached, 1 failed"),
            "{what}: {}",
            again.stdout
        );
    }
}

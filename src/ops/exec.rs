//! `exec`: a shell command as a stage.

use super::{OpContext, OpError, OpOutput};
use crate::registry::ExecArgs;
use crate::value::Value;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};

/// Runs `sh -c cmd` in the pipeline's directory with RKD_OUT, RKD_INPUTS and RKD_PARAM_<NAME>
/// (absolute paths: the store's root is made absolute by `Store::at`). The command inherits the stage's key lock, and whatever it leaves
/// running in its process group is stopped when it ends.
pub fn run(ctx: &mut OpContext) -> Result<OpOutput, OpError> {
    let args = ExecArgs::from_params(ctx.params)?;
    let cmd = args.cmd;
    let inputs: Vec<String> = args
        .inputs
        .iter()
        .filter_map(|x| match x {
            Value::Stage(id) => Some((ctx.input_dir)(*id).display().to_string()),
            _ => None,
        })
        .collect();
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(&cmd)
        .current_dir(&ctx.pipeline_dir)
        .env("RKD_OUT", &ctx.out_dir)
        .env("RKD_INPUTS", inputs.join(":"))
        .stdin(Stdio::null())
        .stdout(ctx.log.try_clone().map_err(|e| e.to_string())?)
        .stderr(ctx.log.try_clone().map_err(|e| e.to_string())?)
        // Its own process group, so that cancelling kills the whole command tree.
        .process_group(0);
    for var in crate::ml::runtime::own_env_vars() {
        command.env_remove(var);
    }
    // The GPUs this stage holds (`--gpus` with `resources: {gpus: N}`), and no others.
    if !ctx.gpus.is_empty() {
        let parent = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        command.env(
            "CUDA_VISIBLE_DEVICES",
            crate::ml::kernels::device::cuda_visible_devices(&ctx.gpus, parent.as_deref()),
        );
    }
    if let Value::Record(params) = &args.params {
        for (k, v) in params.iter() {
            command.env(format!("RKD_PARAM_{}", k.to_uppercase()), env_value(v));
        }
    }
    ctx.progress.message(&first_line(&cmd));
    let mut child = spawn_holding(&mut command, ctx.key_lock).map_err(|e| format!("cannot start `sh`: {e}"))?;
    let guard = ctx.cancel.register(child.id());
    stop_leftovers(child.id());
    // Unregistered before the shell is reaped: until then its pid cannot be reused.
    drop(guard);
    let status = child.wait().map_err(|e| e.to_string())?;
    if ctx.cancel.is_interrupted() {
        return Err(OpError::Interrupted);
    }
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(OpOutput::default()),
        (Some(code), _) => Err(format!("command exited with status {code}").into()),
        (None, Some(sig)) => Err(format!("command was killed by signal {sig}").into()),
        (None, None) => Err("command ended abnormally".into()),
    }
}

/// Waits until the command's shell has exited, then kills what it left running in its process
/// group (`cmd &`), so that nothing writes into the entry after it is stored. The shell is not
/// reaped yet, so its pid (the group's id) cannot have been reused by another process.
fn stop_leftovers(pid: u32) {
    // SAFETY: waitid with WNOWAIT only observes our own child; kill signals its process group.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        while libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) == -1 {
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return;
            }
        }
        libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
    }
}

/// Spawns the command with a copy of the stage's key lock, so the key stays locked while anything
/// the command started lives (a rerun after `kill -9` stops those orphans before it runs the
/// stage). The copy is made without close-on-exec only for this spawn, under a lock, so no other
/// stage's command inherits it; no code runs in the child before exec, so the spawn stays a
/// cheap vfork (`posix_spawn`) however large rkd's memory is.
fn spawn_holding(command: &mut Command, key_lock: Option<std::os::fd::RawFd>) -> std::io::Result<std::process::Child> {
    static SPAWN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: dup of a descriptor we own; the copy is closed below.
    let inherited = key_lock.map(|fd| unsafe { libc::dup(fd) });
    let child = command.spawn();
    if let Some(fd) = inherited.filter(|fd| *fd >= 0) {
        // SAFETY: closing the copy made above (the child has its own).
        unsafe { libc::close(fd) };
    }
    child
}

/// A parameter as an environment variable: strings as they are, numbers and bools as written,
/// anything else as JSON.
fn env_value(v: &Value) -> String {
    match v {
        Value::Str(s) => s.to_string(),
        Value::Int(_) | Value::Float(_) | Value::Bool(_) => v.to_string(),
        Value::Path(p) => p.resolved.display().to_string(),
        other => crate::value::to_json(other, &|id| format!("stage#{}", id.0)).to_string(),
    }
}

fn first_line(cmd: &str) -> String {
    let line = cmd.lines().next().unwrap_or("");
    if line.chars().count() > 60 {
        format!("{}…", line.chars().take(60).collect::<String>())
    } else {
        line.to_string()
    }
}

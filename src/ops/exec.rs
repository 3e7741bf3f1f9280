//! `exec`: a shell command as a stage.

use super::{OpContext, OpOutput};
use crate::value::Value;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};

/// Runs `sh -c cmd` in the pipeline's directory with RKD_OUT, RKD_INPUTS and RKD_PARAM_<NAME>.
pub fn run(ctx: &mut OpContext) -> Result<OpOutput, String> {
    let cmd = match ctx.params.get("cmd") {
        Some(Value::Str(s)) => s.to_string(),
        _ => return Err("exec needs `cmd`".into()),
    };
    let mut inputs = Vec::new();
    if let Some(Value::List(xs)) = ctx.params.get("inputs") {
        for x in xs.iter() {
            if let Value::Stage(id) = x {
                inputs.push((ctx.input_dir)(*id).display().to_string());
            }
        }
    }
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
    if let Some(Value::Record(params)) = ctx.params.get("params") {
        for (k, v) in params.iter() {
            command.env(format!("RKD_PARAM_{}", k.to_uppercase()), env_value(v));
        }
    }
    ctx.progress.message(&first_line(&cmd));
    let mut child = command.spawn().map_err(|e| format!("cannot start `sh`: {e}"))?;
    let guard = ctx.cancel.register(child.id());
    let status = child.wait().map_err(|e| e.to_string());
    drop(guard);
    let status = status?;
    if ctx.cancel.is_interrupted() {
        return Err("interrupted".into());
    }
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(OpOutput::default()),
        (Some(code), _) => Err(format!("command exited with status {code}")),
        (None, Some(sig)) => Err(format!("command was killed by signal {sig}")),
        (None, None) => Err("command ended abnormally".into()),
    }
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

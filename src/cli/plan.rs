//! `rkd plan` and `rkd explain`.

use crate::engine::explain::{verdict, verdicts, Verdict};
use crate::plan::{ParamsJson, Plan, PlanStage};
use crate::store::key::hex;
use crate::text::cell;
use rayon::prelude::*;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// Prints every stage with its key and status.
pub fn run(file: &Path, store: Option<&Path>, json: bool, remote_args: &super::remote_cmds::RemoteArgs) -> ExitCode {
    let Some((_, plan, store)) = super::load_plan(file, store) else {
        return ExitCode::FAILURE;
    };
    let remote = match super::remote_cmds::open(file, remote_args) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let mut verdicts: Vec<Verdict> = verdicts(&plan, file, &store, &vec![true; plan.len()])
        .into_iter()
        .flatten()
        .collect();
    let checkpointed: std::collections::HashSet<_> = store.checkpointed_keys().into_iter().collect();
    for (s, v) in plan.stages().zip(verdicts.iter_mut()) {
        if let (Verdict::Run(reasons), true) = (v, checkpointed.contains(&s.key)) {
            reasons.extend(crate::engine::run::resumable(&store, &s.key));
        }
    }
    // Stages the remote cache holds are pulled, not run.
    let mut in_remote = vec![false; plan.len()];
    if let Some((remote, _)) = &remote {
        match crate::engine::sync::remote_hits(&plan, &store, remote, &vec![true; plan.len()]) {
            Ok(hits) => hits.into_iter().for_each(|i| in_remote[i] = true),
            Err(e) => crate::say!("warning: {e}"),
        }
    }
    if json {
        print_json(&plan, &verdicts, &in_remote);
        // The process ends now: freeing a large plan piece by piece would only cost time.
        std::mem::forget(plan);
        return ExitCode::SUCCESS;
    }
    print_table(&plan, &verdicts, &in_remote);
    let cached = verdicts.iter().filter(|v| **v == Verdict::Cached).count();
    let held = in_remote.iter().filter(|h| **h).count();
    let remote_part = match &remote {
        Some((r, _)) => format!(", {held} in the remote cache {}", r.shown()),
        None => String::new(),
    };
    println!(
        "\n{} stage{}: {cached} cached{remote_part}, {} to run (store: {})",
        plan.len(),
        if plan.len() == 1 { "" } else { "s" },
        plan.len() - cached - held,
        store.root.display()
    );
    std::mem::forget(plan);
    ExitCode::SUCCESS
}

/// One stage in `rkd plan --json` (fields in the order of a JSON object with sorted keys).
#[derive(serde::Serialize)]
struct JsonStage<'a> {
    aliases: &'a [String],
    inputs: Vec<&'a str>,
    key: String,
    name: &'a str,
    op: &'a str,
    params: ParamsJson<'a>,
    reasons: &'a [String],
    status: &'static str,
}

/// `{"stages": [...]}`: the stages are serialized in parallel, then written at once.
fn print_json(plan: &Plan, verdicts: &[Verdict], in_remote: &[bool]) {
    let stages: Vec<&PlanStage> = plan.stages().collect();
    let parts: Vec<Vec<u8>> = stages
        .par_iter()
        .zip(verdicts)
        .zip(in_remote)
        .map(|((s, v), held)| {
            let (status, reasons): (_, &[String]) = match v {
                Verdict::Cached => ("cached", &[]),
                Verdict::Run(_) if *held => ("remote", &[]),
                Verdict::Run(r) => ("run", r),
            };
            let stage = JsonStage {
                aliases: &s.def.aliases,
                inputs: s.def.inputs.iter().map(|i| plan.name(*i)).collect(),
                key: hex(&s.key),
                name: &s.def.name,
                op: s.def.op.name,
                params: ParamsJson::new(plan, s),
                reasons,
                status,
            };
            serde_json::to_vec(&stage).unwrap_or_default()
        })
        .collect();
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum::<usize>() + 16);
    out.extend_from_slice(b"{\"stages\":[");
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(p);
    }
    out.extend_from_slice(b"]}\n");
    let _ = std::io::stdout().lock().write_all(&out);
}

/// The plan table: stage, op, key prefix, status, reasons.
fn print_table(plan: &Plan, verdicts: &[Verdict], in_remote: &[bool]) {
    let names: Vec<String> = plan.stages().map(|s| cell(&s.def.shown())).collect();
    let width = crate::text::width(names.iter(), "STAGE");
    let op_width = plan.stages().map(|s| s.def.op.name.len()).max().unwrap_or(2).max(2);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let _ = writeln!(
        out,
        "{:width$}  {:op_width$}  {:12}  {:6}  REASON",
        "STAGE", "OP", "KEY", "STATUS"
    );
    for (((s, v), name), held) in plan.stages().zip(verdicts).zip(&names).zip(in_remote) {
        let (status, reasons) = match v {
            Verdict::Cached => ("cached", String::new()),
            Verdict::Run(_) if *held => ("remote", "the remote cache holds it: a run pulls it".to_string()),
            Verdict::Run(r) => ("run", r.join("; ")),
        };
        let _ = writeln!(
            out,
            "{:width$}  {:op_width$}  {:12}  {:6}  {reasons}",
            name,
            s.def.op.name,
            &hex(&s.key)[..12],
            status
        );
    }
    let _ = out.flush();
}

/// Explains one stage: its key, its inputs, and whether and why it runs.
pub fn explain(file: &Path, name: &str, store: Option<&Path>) -> ExitCode {
    let Some((_, plan, store)) = super::load_plan(file, store) else {
        return ExitCode::FAILURE;
    };
    let Some(stage) = plan.find(name) else {
        crate::say!("error: {}", crate::engine::select::not_one_stage(&plan, file, name));
        return ExitCode::FAILURE;
    };
    let index = store.read_index(file);
    println!("stage   {}", stage.def.shown());
    println!("op      {} (version {})", stage.def.op.name, stage.def.op.version);
    println!("key     {}", hex(&stage.key));
    for id in &stage.def.inputs {
        println!("input   {} ({})", plan.name(*id), &hex(&plan.stage(*id).key)[..12]);
    }
    for (path, fp) in &stage.files {
        println!("file    {path} ({})", &hex(fp)[..12]);
    }
    match verdict(&plan, stage, &store, &index) {
        Verdict::Cached => println!("status  cached: {}", store.entry_dir(&stage.key).display()),
        Verdict::Run(reasons) => {
            println!("status  runs, because:");
            for r in reasons {
                println!("  - {r}");
            }
            if let Some(resumable) = crate::engine::run::resumable(&store, &stage.key) {
                println!(
                    "        ({resumable}: {})",
                    store.checkpoints(&stage.key).dir().display()
                );
            }
        }
    }
    ExitCode::SUCCESS
}

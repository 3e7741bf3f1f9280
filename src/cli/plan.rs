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
pub fn run(file: &Path, store: Option<&Path>, json: bool) -> ExitCode {
    let Some((_, plan, store)) = super::load_plan(file, store) else {
        return ExitCode::FAILURE;
    };
    let mut verdicts: Vec<Verdict> = verdicts(&plan, &store, &vec![true; plan.len()])
        .into_iter()
        .flatten()
        .collect();
    let checkpointed: std::collections::HashSet<_> = store.checkpointed_keys().into_iter().collect();
    for (s, v) in plan.stages().zip(verdicts.iter_mut()) {
        if let (Verdict::Run(reasons), true) = (v, checkpointed.contains(&s.key)) {
            reasons.extend(crate::engine::run::resumable(&store, &s.key));
        }
    }
    if json {
        print_json(&plan, &verdicts);
        // The process ends now: freeing a large plan piece by piece would only cost time.
        std::mem::forget(plan);
        return ExitCode::SUCCESS;
    }
    print_table(&plan, &verdicts);
    let cached = verdicts.iter().filter(|v| **v == Verdict::Cached).count();
    println!(
        "\n{} stage{}: {cached} cached, {} to run (store: {})",
        plan.len(),
        if plan.len() == 1 { "" } else { "s" },
        plan.len() - cached,
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
fn print_json(plan: &Plan, verdicts: &[Verdict]) {
    let stages: Vec<&PlanStage> = plan.stages().collect();
    let parts: Vec<Vec<u8>> = stages
        .par_iter()
        .zip(verdicts)
        .map(|(s, v)| {
            let (status, reasons): (_, &[String]) = match v {
                Verdict::Cached => ("cached", &[]),
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
fn print_table(plan: &Plan, verdicts: &[Verdict]) {
    let names: Vec<String> = plan.stages().map(|s| cell(&s.def.shown())).collect();
    let width = crate::text::width(names.iter(), "STAGE");
    let op_width = plan.stages().map(|s| s.def.op.name.len()).max().unwrap_or(2).max(2);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let _ = writeln!(
        out,
        "{:width$}  {:op_width$}  {:12}  {:6}  REASON",
        "STAGE", "OP", "KEY", "STATUS"
    );
    for ((s, v), name) in plan.stages().zip(verdicts).zip(&names) {
        let (status, reasons) = match v {
            Verdict::Cached => ("cached", String::new()),
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
        let names: Vec<&str> = plan.stages().map(|s| s.def.name.as_str()).collect();
        let hint = crate::diagnostic::suggestion(name, names.iter().copied())
            .unwrap_or_else(|| "`rkd plan` lists the stages".into());
        eprintln!("error: {} has no stage `{name}`\n  help: {hint}", file.display());
        return ExitCode::FAILURE;
    };
    let index = store.read_index();
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

//! `rkd plan` and `rkd explain`.

use crate::engine::explain::{verdict, verdicts, Verdict};
use crate::plan::{Plan, PlanStage};
use crate::store::key::hex;
use crate::text::cell;
use std::path::Path;
use std::process::ExitCode;

/// A stage's name with its aliases.
pub fn shown(s: &PlanStage) -> String {
    if s.def.aliases.is_empty() {
        s.def.name.clone()
    } else {
        format!("{} (= {})", s.def.name, s.def.aliases.join(", "))
    }
}

/// Prints every stage with its key and status.
pub fn run(file: &Path, store: Option<&Path>, json: bool) -> ExitCode {
    let Some((_, plan, store)) = super::load_plan(file, store) else {
        return ExitCode::FAILURE;
    };
    let verdicts: Vec<Verdict> = verdicts(&plan, &store, &vec![true; plan.len()])
        .into_iter()
        .flatten()
        .collect();
    if json {
        let stages: Vec<serde_json::Value> = plan
            .stages()
            .zip(&verdicts)
            .map(|(s, v)| {
                let (status, reasons) = match v {
                    Verdict::Cached => ("cached", Vec::new()),
                    Verdict::Run(r) => ("run", r.clone()),
                };
                serde_json::json!({
                    "name": s.def.name,
                    "aliases": s.def.aliases,
                    "op": s.def.op.name,
                    "key": hex(&s.key),
                    "inputs": s.def.inputs.iter().map(|i| plan.name(*i)).collect::<Vec<_>>(),
                    "params": plan.params_json(s),
                    "status": status,
                    "reasons": reasons,
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "stages": stages }));
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
    ExitCode::SUCCESS
}

/// The plan table: stage, op, key prefix, status, reasons.
fn print_table(plan: &Plan, verdicts: &[Verdict]) {
    let names: Vec<String> = plan.stages().map(|s| cell(&shown(s))).collect();
    let width = crate::text::width(names.iter(), "STAGE");
    let op_width = plan.stages().map(|s| s.def.op.name.len()).max().unwrap_or(2).max(2);
    println!(
        "{:width$}  {:op_width$}  {:12}  {:6}  REASON",
        "STAGE", "OP", "KEY", "STATUS"
    );
    for ((s, v), name) in plan.stages().zip(verdicts).zip(&names) {
        let (status, reasons) = match v {
            Verdict::Cached => ("cached", String::new()),
            Verdict::Run(r) => ("run", r.join("; ")),
        };
        println!(
            "{:width$}  {:op_width$}  {:12}  {:6}  {reasons}",
            name,
            s.def.op.name,
            &hex(&s.key)[..12],
            status
        );
    }
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
    println!("stage   {}", shown(stage));
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
        }
    }
    ExitCode::SUCCESS
}

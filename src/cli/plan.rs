//! `rkd plan`.

use crate::plan::fingerprint::Fingerprinter;
use crate::plan::key::hex;
use crate::plan::status::{statuses, Status};
use crate::plan::Plan;
use crate::store::Store;
use std::path::Path;
use std::process::ExitCode;

/// Prints every stage with its key and status.
pub fn run(file: &Path, store: Option<&Path>, json: bool) -> ExitCode {
    let Some(compiled) = super::compile_or_report(file) else {
        return ExitCode::FAILURE;
    };
    let store = Store::for_pipeline(file, store);
    let mut fingerprints = Fingerprinter::load(&store.stat_cache());
    let plan = match Plan::build(&compiled, &mut fingerprints) {
        Ok(p) => p,
        Err(diags) => {
            super::report(&diags, &compiled.sources, file);
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = fingerprints.save(&store.stat_cache()) {
        eprintln!(
            "warning: could not save the fingerprint cache in {}: {e}",
            store.root.display()
        );
    }
    let statuses = statuses(&plan, &store);
    if json {
        let stages: Vec<serde_json::Value> = plan
            .stages()
            .zip(&statuses)
            .map(|(s, st)| {
                serde_json::json!({
                    "name": s.def.name,
                    "aliases": s.def.aliases,
                    "op": s.def.op.name,
                    "key": hex(&s.key),
                    "inputs": s.def.inputs.iter().map(|i| plan.name(*i)).collect::<Vec<_>>(),
                    "params": plan.params_json(s),
                    "status": st.status,
                    "reasons": st.reasons,
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "stages": stages }));
        return ExitCode::SUCCESS;
    }
    let shown = |s: &crate::plan::PlanStage| {
        if s.def.aliases.is_empty() {
            s.def.name.clone()
        } else {
            format!("{} (= {})", s.def.name, s.def.aliases.join(", "))
        }
    };
    let width = plan.stages().map(|s| shown(s).len()).max().unwrap_or(5).max(5);
    let op_width = plan.stages().map(|s| s.def.op.name.len()).max().unwrap_or(2).max(2);
    println!(
        "{:width$}  {:op_width$}  {:12}  {:6}  REASON",
        "STAGE", "OP", "KEY", "STATUS"
    );
    for (s, st) in plan.stages().zip(&statuses) {
        let status = match st.status {
            Status::Cached => "cached",
            Status::Run => "run",
        };
        println!(
            "{:width$}  {:op_width$}  {:12}  {:6}  {}",
            shown(s),
            s.def.op.name,
            &hex(&s.key)[..12],
            status,
            st.reasons.join("; ")
        );
    }
    let cached = statuses.iter().filter(|s| s.status == Status::Cached).count();
    println!(
        "\n{} stage{}: {cached} cached, {} to run (store: {})",
        plan.len(),
        if plan.len() == 1 { "" } else { "s" },
        plan.len() - cached,
        store.root.display()
    );
    ExitCode::SUCCESS
}

//! Why a stage must run: a comparison with the last record of the stage with the same name.

use super::record::stage_record;
use crate::plan::{Plan, PlanStage};
use crate::store::records::{Index, Outcome, StageRecord};
use crate::store::Store;

/// Whether a stage's result is stored, and if not, why it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Its result is stored.
    Cached,
    /// It must run, for these reasons.
    Run(Vec<String>),
}

/// The verdicts of the selected stages (`None` for the others). The run index is read only
/// when some stage must run, so that checking a fully cached plan stays cheap.
pub fn verdicts(plan: &Plan, store: &Store, selected: &[bool]) -> Vec<Option<Verdict>> {
    let keys: Vec<_> = plan.stages().map(|s| s.key).collect();
    verdicts_of(plan, store, selected, &store.contains_many(&keys))
}

/// [`verdicts`], knowing which stages' results are stored.
pub fn verdicts_of(plan: &Plan, store: &Store, selected: &[bool], cached: &[bool]) -> Vec<Option<Verdict>> {
    let index = if selected.iter().zip(cached).any(|(s, c)| *s && !c) {
        store.read_index()
    } else {
        Index::new()
    };
    plan.stages()
        .enumerate()
        .map(|(i, s)| {
            selected[i].then(|| {
                if cached[i] {
                    Verdict::Cached
                } else {
                    why_it_runs(plan, s, &index)
                }
            })
        })
        .collect()
}

/// The verdict for one stage.
pub fn verdict(plan: &Plan, stage: &PlanStage, store: &Store, index: &Index) -> Verdict {
    if store.contains(&stage.key) {
        return Verdict::Cached;
    }
    why_it_runs(plan, stage, index)
}

/// The verdict for a stage whose result is not stored.
fn why_it_runs(plan: &Plan, stage: &PlanStage, index: &Index) -> Verdict {
    let previous = std::iter::once(&stage.def.name)
        .chain(&stage.def.aliases)
        .find_map(|n| index.get(n));
    Verdict::Run(match previous {
        None => vec!["new".into()],
        Some(old) => reasons(&stage_record(plan, stage, Outcome::Ran), old),
    })
}

/// What differs between the stage now and its last record.
pub fn reasons(now: &StageRecord, old: &StageRecord) -> Vec<String> {
    let mut out = Vec::new();
    if now.op != old.op {
        out.push(format!("op changed: {} → {}", old.op, now.op));
    } else if now.op_version != old.op_version {
        out.push(format!("op version changed: {} → {}", old.op_version, now.op_version));
    }
    if let (Some(new), Some(prev)) = (now.params.as_object(), old.params.as_object()) {
        let mut keys: Vec<&String> = new.keys().chain(prev.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            match (prev.get(k), new.get(k)) {
                (Some(a), Some(b)) if a != b => out.push(format!("parameter changed: {k} {} → {}", show(a), show(b))),
                (None, Some(b)) => out.push(format!("parameter added: {k} = {}", show(b))),
                (Some(a), None) => out.push(format!("parameter removed: {k} (was {})", show(a))),
                _ => {}
            }
        }
    }
    // An upstream stage under the same name with a new key; a different stage shows as a parameter change.
    for (name, key) in &now.inputs {
        if old.inputs.get(name).is_some_and(|k| k != key) {
            out.push(format!("upstream changed: {name}"));
        }
    }
    for (path, fp) in &now.files {
        match old.files.get(path) {
            Some(f) if f != fp => out.push(format!("input file changed: {path}")),
            None => out.push(format!("input file changed: {path} (new input)")),
            _ => {}
        }
    }
    if out.is_empty() {
        out.push(if now.key == old.key {
            match old.status {
                Outcome::Failed => "failed last time".to_string(),
                Outcome::Interrupted => "interrupted last time (nothing was stored)".to_string(),
                _ => "result missing from the store (removed, or damaged and discarded)".to_string(),
            }
        } else {
            "key changed (another rkd version?)".to_string()
        });
    }
    out
}

fn show(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(0.0);
            format!("{f:?}")
        }
        other => other.to_string(),
    }
}

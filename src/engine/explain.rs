//! Why a stage must run: a comparison with the last record of the stage with the same name in a
//! run of the same pipeline file.

use super::record::stage_record;
use crate::plan::{Plan, PlanStage};
use crate::store::check_cache::{self, Stored};
use crate::store::records::{Index, Outcome, StageRecord};
use crate::store::Store;
use crate::text::sweep_point;
use std::collections::HashSet;
use std::path::Path;

/// Whether a stage's result is stored, and if not, why it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Its result is stored.
    Cached,
    /// It must run, for these reasons.
    Run(Vec<String>),
}

/// The verdicts of the selected stages of the pipeline at `pipeline` (`None` for the others).
/// The run index is read only when some stage must run, so that checking a fully cached plan
/// stays cheap. Stored results are checked as `rkd run` checks them before trusting them
/// (sizes and times, through the pipeline's manifest cache): a damaged one runs again.
pub fn verdicts(plan: &Plan, pipeline: &Path, store: &Store, selected: &[bool]) -> Vec<Option<Verdict>> {
    let keys: Vec<_> = plan.stages().map(|s| s.key).collect();
    let cache = check_cache::path_for(store, pipeline);
    let checked = check_cache::check_stored(store, &keys, selected, false, &cache);
    let intact: Vec<bool> = checked.iter().map(|c| *c == Stored::Intact).collect();
    let mut verdicts = verdicts_of(plan, pipeline, store, selected, &intact);
    for (v, c) in verdicts.iter_mut().zip(checked) {
        if let (Some(v), Stored::Damaged(problems)) = (v, c) {
            *v = Verdict::Run(vec![format!("stored result is damaged ({})", problems.join("; "))]);
        }
    }
    verdicts
}

/// [`verdicts`], knowing which stages' results are stored.
pub fn verdicts_of(
    plan: &Plan,
    pipeline: &Path,
    store: &Store,
    selected: &[bool],
    cached: &[bool],
) -> Vec<Option<Verdict>> {
    let index = if selected.iter().zip(cached).any(|(s, c)| *s && !c) {
        store.read_index(pipeline)
    } else {
        Index::new()
    };
    let vanished = vanished_points(plan, &index);
    plan.stages()
        .enumerate()
        .map(|(i, s)| {
            selected[i].then(|| {
                if cached[i] {
                    Verdict::Cached
                } else {
                    why_it_runs(plan, s, &index, &vanished)
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
    why_it_runs(plan, stage, index, &vanished_points(plan, index))
}

/// The recorded sweep points that the plan no longer has: where a new point's values came from.
fn vanished_points<'a>(plan: &Plan, index: &'a Index) -> Vec<&'a StageRecord> {
    if !index.keys().any(|n| sweep_point(n).is_some()) {
        return Vec::new();
    }
    let names: HashSet<&str> = plan
        .stages()
        .flat_map(|s| std::iter::once(&s.def.name).chain(&s.def.aliases))
        .map(String::as_str)
        .collect();
    index
        .iter()
        .filter(|(n, _)| sweep_point(n).is_some() && !names.contains(n.as_str()))
        .map(|(_, r)| r)
        .collect()
}

/// The vanished point of the same sweep closest to `name` (fewest values changed), with the
/// changes: `t 8.0 → 16.0`.
fn moved_from<'a>(name: &str, vanished: &[&'a StageRecord]) -> Option<(&'a StageRecord, String)> {
    let (base, coords) = sweep_point(name)?;
    vanished
        .iter()
        .filter_map(|old| {
            let (old_base, old_coords) = sweep_point(&old.name)?;
            let same_vars = old_coords.len() == coords.len() && old_coords.iter().zip(&coords).all(|(a, b)| a.0 == b.0);
            (old_base == base && same_vars).then(|| {
                let changes: Vec<String> = old_coords
                    .iter()
                    .zip(&coords)
                    .filter(|(a, b)| a.1 != b.1)
                    .map(|(a, b)| format!("{} {} → {}", a.0, a.1, b.1))
                    .collect();
                (*old, changes)
            })
        })
        .filter(|(_, changes)| !changes.is_empty())
        .min_by_key(|(_, changes)| changes.len())
        .map(|(old, changes)| (old, changes.join(", ")))
}

/// The verdict for a stage whose result is not stored.
fn why_it_runs(plan: &Plan, stage: &PlanStage, index: &Index, vanished: &[&StageRecord]) -> Verdict {
    let previous = std::iter::once(&stage.def.name)
        .chain(&stage.def.aliases)
        .find_map(|n| index.get(n));
    Verdict::Run(match previous {
        Some(old) => reasons(&stage_record(plan, stage, Outcome::Ran), old),
        None => match moved_from(&stage.def.name, vanished) {
            Some((old, changes)) => {
                let mut out = vec![format!("sweep value changed: {changes} (was {})", old.name)];
                out.extend(
                    reasons(&stage_record(plan, stage, Outcome::Ran), old)
                        .into_iter()
                        .filter(|r| r.starts_with("parameter")),
                );
                out
            }
            None => vec!["new".into()],
        },
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
                (Some(a), Some(b)) if a != b => changed(k, a, b, &mut out),
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

/// "parameter changed: PATH old → new" for each innermost value that differs, so that a changed
/// seed inside a dataset reads `data.synthetic_text.seed 0 → 1`, not two whole datasets.
fn changed(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value as J;
    match (a, b) {
        (J::Object(x), J::Object(y)) if x.len() == y.len() && x.keys().eq(y.keys()) => {
            for (k, va) in x {
                if let Some(vb) = y.get(k).filter(|vb| *vb != va) {
                    changed(&format!("{path}.{k}"), va, vb, out);
                }
            }
        }
        (J::Array(x), J::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                if va != vb {
                    changed(&format!("{path}[{i}]"), va, vb, out);
                }
            }
        }
        _ => out.push(format!("parameter changed: {path} {} → {}", short(a), short(b))),
    }
}

/// A value for a reason line, cut to a readable length.
fn short(v: &serde_json::Value) -> String {
    const MAX: usize = 80;
    let s = show(v);
    if s.chars().count() <= MAX {
        s
    } else {
        s.chars().take(MAX - 1).collect::<String>() + "…"
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(params: serde_json::Value) -> StageRecord {
        StageRecord {
            name: "t".into(),
            aliases: Vec::new(),
            op: "train".into(),
            op_version: 1,
            key: "k".into(),
            status: Outcome::Ran,
            time_s: 0.0,
            metrics: Default::default(),
            params,
            inputs: Default::default(),
            files: Default::default(),
            resumed_from: None,
            attempts: 1,
            gpu_memory_peak_bytes: None,
            error: None,
        }
    }

    #[test]
    fn a_changed_value_inside_a_dataset_is_named_by_its_path() {
        let words = "w ".repeat(500);
        let old = record(
            serde_json::json!({"data": {"synthetic_text": {"seed": 0, "noise": 0.1, "text": words}}, "lr": 1e-3}),
        );
        let new = record(
            serde_json::json!({"data": {"synthetic_text": {"seed": 1, "noise": 0.1, "text": words}}, "lr": 1e-3}),
        );
        assert_eq!(
            reasons(&new, &old),
            ["parameter changed: data.synthetic_text.seed 0 → 1"]
        );
        // A whole value that differs in shape is shown cut to a readable length.
        let other = record(serde_json::json!({"data": {"glue_sst2": {"path": words}}, "lr": 1e-3}));
        let r = reasons(&other, &old);
        assert_eq!(r.len(), 1);
        assert!(
            r[0].starts_with("parameter changed: data {") && r[0].chars().count() < 200,
            "{}",
            r[0]
        );
    }

    #[test]
    fn a_new_sweep_point_is_named_after_the_vanished_point_it_replaces() {
        let named = |name: &str| StageRecord {
            name: name.into(),
            ..record(serde_json::json!({}))
        };
        let (a, b, other) = (
            named("tuned[t=8.0,a=0.5]"),
            named("tuned[t=8.0,a=0.9]"),
            named("x[t=8.0]"),
        );
        let vanished = [&a, &b, &other];
        let (old, changes) = moved_from("tuned[t=16.0,a=0.5]", &vanished).unwrap();
        assert_eq!(
            (old.name.as_str(), changes.as_str()),
            ("tuned[t=8.0,a=0.5]", "t 8.0 → 16.0")
        );
        let (_, changes) = moved_from("tuned[t=2.0,a=0.7]", &vanished).unwrap();
        assert_eq!(changes, "t 8.0 → 2.0, a 0.5 → 0.7");
        assert!(moved_from("chain/step[1]", &vanished).is_none());
        assert!(moved_from("tuned[lr=0.1]", &vanished).is_none());
    }
}

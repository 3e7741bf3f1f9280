//! The `require` op: a gate on a metric some stage recorded. When the condition holds, the
//! model passes on (its files linked into the gate's output, so what depends on the gate takes
//! it as a model); when it does not, the stage fails with the measured value, the bound and the
//! stage that measured it, and nothing that depends on the gate runs. It reads stored metrics
//! only, so it costs nothing, and a passing gate is cached like any stage.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::model_source::{self, ModelSource};
use super::{OpContext, OpError, OpOutput};
use crate::registry::RequireArgs;
use crate::value::{StageId, Value};

/// The metrics a stage recorded (`metrics.json` beside its output) and its name.
fn recorded(ctx: &OpContext, id: StageId) -> Result<(String, BTreeMap<String, f64>), OpError> {
    let name = (ctx.upstream)(id).shown;
    let out = (ctx.input_dir)(id);
    let path = out.parent().unwrap_or(&out).join("metrics.json");
    let bytes = std::fs::read(&path)
        .map_err(|e| OpError::Failed(format!("`{name}` has no recorded metrics ({}: {e})", path.display())))?;
    let metrics = serde_json::from_slice(&bytes).map_err(|e| OpError::Failed(format!("{}: {e}", path.display())))?;
    Ok((name, metrics))
}

/// The value of `metric` in a stage's metrics, or an error that lists what it recorded.
fn value_of(name: &str, metrics: &BTreeMap<String, f64>, metric: &str) -> Result<f64, OpError> {
    metrics.get(metric).copied().ok_or_else(|| {
        let have: Vec<&str> = metrics.keys().map(String::as_str).collect();
        OpError::Invalid(format!(
            "`{name}` recorded no `{metric}`; it recorded: {}",
            if have.is_empty() {
                "nothing".to_string()
            } else {
                have.join(", ")
            }
        ))
    })
}

/// What the gate decided: `Ok` with the bound it passed closest to, or `Err` with why it failed.
fn judge(a: &RequireArgs, measured: &str, value: f64, baseline: Option<(&str, f64)>) -> Result<Vec<String>, String> {
    let m = &a.metric;
    let mut passed = Vec::new();
    if let Some(lo) = a.at_least {
        if value < lo {
            return Err(format!("`{measured}` measured {m} {value:.4}, below at_least {lo}"));
        }
        passed.push(format!("{m} {value:.4} ≥ {lo}"));
    }
    if let Some(hi) = a.at_most {
        if value > hi {
            return Err(format!("`{measured}` measured {m} {value:.4}, above at_most {hi}"));
        }
        passed.push(format!("{m} {value:.4} ≤ {hi}"));
    }
    if let (Some(max), Some((base_name, base))) = (a.max_drop, baseline) {
        let drop = base - value;
        if drop > max {
            return Err(format!(
                "`{measured}` measured {m} {value:.4}, {drop:.4} below the baseline `{base_name}`'s {base:.4}: more than max_drop {max}"
            ));
        }
        passed.push(format!(
            "{m} {value:.4} is {drop:.4} below `{base_name}`'s {base:.4} (max_drop {max})"
        ));
    }
    Ok(passed)
}

/// Runs a `require` stage.
pub fn run(ctx: &mut OpContext) -> Result<OpOutput, OpError> {
    let a = RequireArgs::from_params(ctx.params)?;
    let measured_id = match (&a.measured_by, &a.model) {
        (Some(Value::Stage(id)), _) | (None, Value::Stage(id)) => *id,
        _ => {
            return Err(OpError::Invalid(
                "a pretrained model has no recorded metrics: give `measured_by:`".into(),
            ))
        }
    };
    let (measured, metrics) = recorded(ctx, measured_id)?;
    let value = value_of(&measured, &metrics, &a.metric)?;
    let baseline = match &a.baseline {
        Some(Value::Stage(id)) => {
            let (name, metrics) = recorded(ctx, *id)?;
            let v = value_of(&name, &metrics, &a.metric)?;
            Some((name, v))
        }
        _ => None,
    };
    let verdict = judge(&a, &measured, value, baseline.as_ref().map(|(n, v)| (n.as_str(), *v)));
    let passed = verdict.map_err(|why| OpError::Failed(format!("requirement not met: {why}")))?;
    let _ = writeln!(ctx.log, "passed: {}", passed.join("; "));
    let source = model_source::resolve_value(&a.model, &|id| (ctx.input_dir)(id))?;
    let ModelSource::Dir { dir, .. } = source else {
        return Err(OpError::Invalid(
            "`model` is an architecture, not trained weights: gate a stage that trains it".into(),
        ));
    };
    let linked = link_tree(&dir, &ctx.out_dir).map_err(|e| OpError::Failed(format!("{}: {e}", dir.display())))?;
    let _ = writeln!(ctx.log, "model passed on: {} files from {}", linked, dir.display());
    let mut out = OpOutput::default();
    out.metrics.insert(a.metric.clone(), value);
    if let Some((_, base)) = baseline {
        out.metrics.insert(format!("baseline_{}", a.metric), base);
    }
    Ok(out)
}

/// Puts every file of `from` into `to` (created), as a hard link where the filesystem allows
/// (store entries are read-only, so sharing their bytes is safe), else as a copy. Returns how
/// many files. `selection.json` is left out: the gate writes its own (its inputs' selections).
fn link_tree(from: &Path, to: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(to)?;
    let mut n = 0;
    let mut stack: Vec<(PathBuf, PathBuf)> = vec![(from.to_path_buf(), to.to_path_buf())];
    while let Some((src_dir, dst_dir)) = stack.pop() {
        for entry in std::fs::read_dir(&src_dir)? {
            let entry = entry?;
            let (src, dst) = (entry.path(), dst_dir.join(entry.file_name()));
            if src_dir == from && entry.file_name() == super::selection::FILE {
                continue;
            }
            if std::fs::metadata(&src)?.is_dir() {
                std::fs::create_dir_all(&dst)?;
                stack.push((src, dst));
            } else {
                if std::fs::hard_link(&src, &dst).is_err() {
                    std::fs::copy(&src, &dst)?;
                }
                n += 1;
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(at_least: Option<f64>, at_most: Option<f64>, max_drop: Option<f64>) -> RequireArgs {
        RequireArgs {
            model: Value::Stage(StageId(0)),
            measured_by: None,
            metric: "accuracy".into(),
            at_least,
            at_most,
            baseline: max_drop.map(|_| Value::Stage(StageId(1))),
            max_drop,
            resources: None,
            retries: None,
        }
    }

    #[test]
    fn a_gate_names_the_value_the_bound_and_the_stage() {
        let e = judge(&args(Some(0.85), None, None), "p_eval", 0.8123, None).unwrap_err();
        assert_eq!(e, "`p_eval` measured accuracy 0.8123, below at_least 0.85");
        let e = judge(&args(None, Some(2.0), None), "p_eval", 2.5, None).unwrap_err();
        assert_eq!(e, "`p_eval` measured accuracy 2.5000, above at_most 2");
        let e = judge(&args(None, None, Some(0.02)), "p", 0.80, Some(("teacher", 0.83))).unwrap_err();
        assert!(
            e.contains("0.0300 below the baseline `teacher`'s 0.8300: more than max_drop 0.02"),
            "{e}"
        );
        // At the bound passes; so does a model better than its baseline.
        assert!(judge(&args(Some(0.85), None, None), "p", 0.85, None).is_ok());
        assert!(judge(&args(None, None, Some(0.02)), "p", 0.82, Some(("teacher", 0.83))).is_ok());
        assert!(judge(&args(None, None, Some(0.0)), "p", 0.9, Some(("teacher", 0.83))).is_ok());
    }

    #[test]
    fn a_metric_the_stage_did_not_record_lists_those_it_did() {
        let m = BTreeMap::from([("accuracy".to_string(), 0.9), ("loss".to_string(), 0.3)]);
        let e = value_of("p", &m, "f1").unwrap_err().to_string();
        assert!(e.contains("`p` recorded no `f1`; it recorded: accuracy, loss"), "{e}");
    }

    #[test]
    fn linked_files_have_the_same_bytes_and_selection_is_left_out() {
        let from = tempfile::tempdir().unwrap();
        std::fs::write(from.path().join("model.safetensors"), b"weights").unwrap();
        std::fs::create_dir(from.path().join("merged")).unwrap();
        std::fs::write(from.path().join("merged/config.json"), b"{}").unwrap();
        std::fs::write(from.path().join(super::super::selection::FILE), b"{}").unwrap();
        let to = tempfile::tempdir().unwrap();
        let out = to.path().join("out");
        assert_eq!(link_tree(from.path(), &out).unwrap(), 2);
        assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), b"weights");
        assert_eq!(std::fs::read(out.join("merged/config.json")).unwrap(), b"{}");
        assert!(!out.join(super::super::selection::FILE).exists());
    }
}

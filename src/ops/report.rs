//! `report`: every model of the study measured on one split, side by side — accuracy, retention
//! and compression against the baseline (the teacher), measured sizes, latency — as report.md,
//! report.csv, report.json and plots (see [`crate::report`]).
//!
//! Each model is evaluated here, on its own tokenizer's reading of the data, with
//! [`measure`](super::eval::measure), so the report depends on nothing but the models and the
//! data. A row's strategy comes from the stage that made it: `distill` from a trained teacher is
//! `straightforward`, from another student `successive`; `fuse` is `multi-agent`; the baseline is
//! the `teacher`.

use crate::registry::{DistillArgs, ReportArgs};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use super::eval::measure;
use super::model_source::{self, ModelSource};
use super::selection::{report_split, Selection};
use super::train::load_dataset;
use super::{OpContext, OpError, OpOutput};
use crate::data::{Dataset, SplitName};
use crate::report::{write_report, Curve, ReportData, ReportRow};
use crate::value::Value;

/// A model to report on.
struct Entry {
    value: Value,
    name: String,
    key: Option<String>,
    op: String,
    strategy: String,
}

/// Runs a `report` stage.
pub fn run(ctx: &mut OpContext) -> Result<OpOutput, OpError> {
    let args = ReportArgs::from_params(ctx.params)?;
    let mut split: Option<SplitName> = None;
    let mut split_examples = None;
    let mut selection = Selection::default();
    let models = &args.models;
    let Some(first) = models.first() else {
        return Err("`models` must list at least one model".into());
    };
    let baseline_value = args.baseline.clone().unwrap_or_else(|| first.clone());
    let mut entries: Vec<Entry> = Vec::new();
    for v in models.iter().chain(std::iter::once(&baseline_value)) {
        if entries.iter().any(|e| same(&e.value, v)) {
            continue;
        }
        entries.push(describe(ctx, v, same(v, &baseline_value), entries.len()));
    }
    let baseline = entries
        .iter()
        .find(|e| same(&e.value, &baseline_value))
        .map(|e| e.name.clone())
        .unwrap_or_default();
    // Entries are measured in the order given; the baseline, when not among the models, last.
    let mut datasets: HashMap<Option<PathBuf>, Dataset> = HashMap::new();
    let mut rows = Vec::with_capacity(entries.len());
    let mut curves = Vec::new();
    let mut chance = None;
    let mut score_name = None;
    let mut quality_name = "accuracy";
    for (i, e) in entries.iter().enumerate() {
        ctx.progress
            .message(&format!("measuring {} ({}/{})", e.name, i + 1, entries.len()));
        let source = model_source::resolve_value(&e.value, &|id| (ctx.input_dir)(id))?;
        if let ModelSource::Arch(spec) = &source {
            return Err(format!(
                "`{}` is the architecture `{}`, not a trained model: report on a stage that trains it",
                e.name, spec.ctor.name
            )
            .into());
        }
        let tok = model_source::tokenizer_dir(&source)?;
        if !datasets.contains_key(&tok) {
            let d = load_dataset(&args.data, tok.clone(), &ctx.cache_dir, &mut ctx.log)?;
            datasets.insert(tok.clone(), d);
        }
        let data = &datasets[&tok];
        let split = *split.get_or_insert_with(|| report_split(args.split, data));
        if let Value::Stage(id) = &e.value {
            let dir = (ctx.input_dir)(*id);
            let s = Selection::read(&dir)?;
            s.check_reportable(split, &format!("`{}`", e.name))?;
            selection.merge(s);
            curves.extend(Curve::read(&e.name, e.key.clone(), &dir).map_err(|err| err.to_string())?);
        }
        if chance.is_none() {
            // A regression's "chance" is no correlation.
            chance = Some(if data.is_regression() {
                0.0
            } else {
                majority(data.labels(split), data.classes.len())
            });
            split_examples = Some(data.len(split) as u64);
            quality_name = data.score_name();
        }
        let m = measure(ctx, &source, data, split, 32).map_err(|err| format!("{}: {err}", e.name))?;
        // The quality: accuracy, or a regression's Pearson r (with Spearman as its score).
        let (quality, score) = if data.is_regression() {
            (m.eval.pearson(), Some(("Spearman".to_string(), m.eval.spearman())))
        } else {
            let score = super::eval::task_score(data.metric, &m.eval.confusion);
            (m.eval.confusion.accuracy(), score.map(|(k, v)| (k.to_uppercase(), v)))
        };
        if let Some((k, _)) = &score {
            score_name = Some(k.clone());
        }
        let _ = writeln!(
            ctx.log,
            "{} ({}, {}): {} {}{} on {} {} examples; {} parameters, {} nonzero; {} bytes on disk; {:.3} ms/example",
            e.name,
            e.strategy,
            e.op,
            data.score_name(),
            if data.is_regression() {
                format!("{quality:.4}")
            } else {
                format!("{:.2}%", 100.0 * quality)
            },
            score.as_ref().map_or(String::new(), |(k, v)| format!(", {k} {v:.4}")),
            m.examples,
            split.as_str(),
            m.sizes.params,
            m.sizes.nonzeros,
            m.bytes,
            m.latency_b1
        );
        rows.push(ReportRow {
            name: e.name.clone(),
            key: e.key.clone(),
            strategy: e.strategy.clone(),
            op: e.op.clone(),
            quality,
            score: score.map(|(_, v)| v),
            parameters: m.sizes.params as u64,
            nonzeros: m.sizes.nonzeros as u64,
            dense_bytes: m.sizes.dense_bytes,
            nf4_bytes: Some(m.sizes.nf4_bytes),
            sparse_bytes: m.sizes.sparse_bytes,
            disk_bytes: m.bytes,
            latency_ms: m.latency_b1,
        });
    }
    let dataset_name = match &args.data {
        Value::Spec(s) => s.label.clone().unwrap_or_else(|| s.ctor.name.to_string()),
        _ => "data".into(),
    };
    let data = ReportData {
        title: "Compression report".into(),
        dataset: dataset_name,
        split: split.map_or("validation", SplitName::as_str).into(),
        selection: selection.how.into_iter().collect(),
        examples: split_examples,
        chance_level: chance.unwrap_or(0.0),
        quality_name: quality_name.into(),
        score_name,
        baseline: baseline.clone(),
        rows,
        curves,
    };
    ctx.progress.message("writing the report");
    let files = write_report(&data, &ctx.out_dir).map_err(|e| e.to_string())?;
    for p in &files.paths {
        let _ = writeln!(ctx.log, "wrote {}", p.file_name().unwrap_or_default().to_string_lossy());
    }
    let mut out = OpOutput::default();
    let base = data.rows.iter().find(|r| r.name == baseline);
    if let Some(b) = base {
        out.metrics.insert(format!("baseline_{quality_name}"), b.quality);
    }
    if let Some(best) = data
        .rows
        .iter()
        .filter(|r| r.name != baseline)
        .max_by(|a, b| a.quality.total_cmp(&b.quality))
    {
        out.metrics.insert(format!("best_other_{quality_name}"), best.quality);
    }
    out.metrics.insert("models".into(), data.rows.len() as f64);
    out.metrics.insert("chance_level".into(), data.chance_level);
    Ok(out)
}

/// Whether two model values are the same model (one stage, or one constructor call).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Stage(x), Value::Stage(y)) => x == y,
        (Value::Spec(x), Value::Spec(y)) => std::sync::Arc::ptr_eq(x, y),
        _ => false,
    }
}

/// Names a model and says which strategy made it.
fn describe(ctx: &OpContext, v: &Value, is_baseline: bool, index: usize) -> Entry {
    let (name, key, op, strategy) = match v {
        Value::Stage(id) => {
            let up = (ctx.upstream)(*id);
            // A gate passes a model on: it is what made that model (the row keeps the gate's name).
            if up.op == "require" {
                if let Ok(gate) = crate::registry::RequireArgs::from_params(&up.params) {
                    let made = describe(ctx, &gate.model, is_baseline, index);
                    return Entry {
                        value: v.clone(),
                        name: up.shown,
                        key: Some(up.key),
                        ..made
                    };
                }
            }
            let strategy = match up.op {
                "distill" => match DistillArgs::from_params(&up.params).map(|a| a.teacher) {
                    Ok(Value::Stage(t)) if matches!((ctx.upstream)(t).op, "distill" | "fuse") => "successive",
                    _ => "straightforward",
                },
                "fuse" => "multi-agent",
                other => other,
            };
            (up.shown, Some(up.key), up.op.to_string(), strategy.to_string())
        }
        Value::Spec(s) => (
            s.label
                .clone()
                .unwrap_or_else(|| format!("{}#{}", s.ctor.name, index + 1)),
            None,
            s.ctor.name.to_string(),
            "pretrained".to_string(),
        ),
        other => (format!("model#{}", index + 1), None, other.type_name(), "model".into()),
    };
    Entry {
        value: v.clone(),
        name,
        key,
        op,
        strategy: if is_baseline { "teacher".into() } else { strategy },
    }
}

/// The accuracy of always answering the most frequent class.
fn majority(labels: &[u32], classes: usize) -> f64 {
    let mut counts = vec![0usize; classes.max(1)];
    for &l in labels {
        if let Some(c) = counts.get_mut(l as usize) {
            *c += 1;
        }
    }
    counts.iter().copied().max().unwrap_or(0) as f64 / labels.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::super::train::testing::*;
    use super::*;
    use crate::ops::cancel::Cancel;
    use crate::value::{Params, StageId};
    use std::sync::Arc;

    #[test]
    fn reports_measured_models_with_plots() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let mut params = train_params(tiny_bert(), 1, 1);
        params.insert("max_steps".into(), Value::Int(10));
        run_op("train", &params, &a, dir.path(), &Cancel::default(), 1)
            .0
            .unwrap();
        let b = dir.path().join("b");
        let mut p = Params::new();
        p.insert("model".into(), Value::Stage(StageId(0)));
        p.insert("sparsity".into(), Value::Float(0.5));
        run_op("prune", &p, &b, &a, &Cancel::default(), 1).0.unwrap();
        let dirs = [a.clone(), b.clone()];
        let mut r = Params::new();
        r.insert(
            "models".into(),
            Value::List(Arc::new(vec![Value::Stage(StageId(0)), Value::Stage(StageId(1))])),
        );
        r.insert("data".into(), text_data());
        let out = dir.path().join("report");
        let (res, log) = run_op_with(
            "report",
            &r,
            &out,
            &move |id: StageId| dirs[id.0 as usize].clone(),
            &Cancel::default(),
            1,
        );
        let m = res.unwrap_or_else(|e| panic!("{e}\n{log}")).metrics;
        assert_eq!(m["models"], 2.0);
        assert!((m["chance_level"] - 0.5).abs() < 0.1);
        for f in [
            "report.md",
            "report.csv",
            "report.json",
            "params_vs_accuracy.svg",
            "params_vs_accuracy.png",
            "size_vs_accuracy.svg",
            "size_vs_accuracy.png",
        ] {
            assert!(out.join(f).is_file(), "{f}\n{log}");
        }
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
        let rows = report["rows"].as_array().unwrap();
        assert_eq!(rows[0]["name"], "stage0");
        assert_eq!(rows[0]["strategy"], "teacher");
        // Half of the linear weights pruned: fewer nonzeros and a smaller sparse size, same dense size.
        assert_eq!(rows[0]["dense_bytes"], rows[1]["dense_bytes"]);
        assert!(rows[1]["nonzeros"].as_u64() < rows[0]["nonzeros"].as_u64());
        assert!(rows[1]["sparse_bytes"].as_u64() < rows[0]["sparse_bytes"].as_u64());
        assert_eq!(rows[0]["retention"], 1.0);
        assert!(log.contains("stage0 (teacher, train): accuracy"), "{log}");
    }
}

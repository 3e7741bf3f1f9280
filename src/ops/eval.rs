//! `eval`: accuracy (overall and per class), parameter and nonzero counts, bytes on disk and
//! measured latency of one model on one split.
//!
//! Inference runs on detached weights (a model built from
//! [`ParamStore::frozen_var_builder`](crate::ml::ParamStore::frozen_var_builder)), so no autograd
//! graph is recorded, on the pool of threads that running stages share. The full report goes to
//! `eval.json` in the stage's output; the headline numbers are the op's metrics.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::DType;

use super::model_source::{self, load_frozen, ModelSource};
use super::selection::report_split;
use super::train::load_for;
use super::{OpContext, OpError, OpOutput};
use crate::data::Dataset;
use crate::data::SplitName;
use crate::ml::metrics::{evaluate, Confusion, Evaluation};
use crate::ml::sizes::Sizes;
use crate::ml::{ForwardCtx, Model, ModelInput};
use crate::registry::EvalArgs;

/// Each example's label and predicted class (`index,label,predicted,correct`), beside eval.json.
pub const PREDICTIONS_CSV: &str = "predictions.csv";

/// Whether a file of a model directory is part of the model (weights, config, tokenizer,
/// adapter), not rkd's record of how it was made (metrics, curves, selection, logs) or hidden.
pub fn is_model_file(name: &str) -> bool {
    let bookkeeping = name.ends_with("metrics.json")
        || name == "eval.json"
        || name == super::selection::FILE
        || name.ends_with(".csv")
        || name.ends_with(".log")
        || name == "log.txt";
    !bookkeeping && !name.starts_with('.')
}

/// Files of a model directory that make up the model (weights, config, tokenizer), with their
/// sizes; the op's own reports and logs are left out.
pub fn model_files(dir: &Path) -> Result<BTreeMap<String, u64>, OpError> {
    let mut files = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| OpError::Failed(format!("{}: {e}", dir.display())))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !is_model_file(&name) {
            continue;
        }
        // Follows symlinks (the hf-hub cache links snapshot files to blobs).
        if let Ok(meta) = std::fs::metadata(entry.path()) {
            if meta.is_file() {
                files.insert(name, meta.len());
            }
        }
    }
    Ok(files)
}

/// Whether a file of a model directory holds weights.
fn is_weights(name: &str) -> bool {
    name.ends_with(".safetensors") || name.ends_with(".bin")
}

/// The first `n` examples of a batch.
fn head(input: &ModelInput, start: usize, n: usize) -> candle_core::Result<ModelInput> {
    input.map(|t| t.narrow(0, start, n))
}

fn batch_len(input: &ModelInput) -> candle_core::Result<usize> {
    match input {
        ModelInput::Text { input_ids, .. } => input_ids.dim(0),
        ModelInput::Images { pixel_values } => pixel_values.dim(0),
    }
}

/// Median seconds of one forward pass (logits read back) over up to `reps` runs after one
/// warm-up, stopping early once `budget` is spent.
fn time_forward(model: &Model, inputs: &[ModelInput], reps: usize, budget: Duration) -> candle_core::Result<f64> {
    let run = |input: &ModelInput| -> candle_core::Result<f64> {
        let t = Instant::now();
        let out = model.forward(input, &mut ForwardCtx::eval().logits_only())?;
        let _ = out.logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(t.elapsed().as_secs_f64())
    };
    let Some(first) = inputs.first() else {
        return Ok(f64::NAN);
    };
    run(first)?;
    let started = Instant::now();
    let mut times = Vec::with_capacity(reps);
    for input in inputs.iter().cycle().take(reps) {
        times.push(run(input)?);
        if started.elapsed() > budget {
            break;
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Latency per example in milliseconds at batch 1 and at batch 32 (or the split's size when
/// smaller; the batch used is returned too).
pub fn latency(model: &Model, batch: &ModelInput) -> candle_core::Result<(f64, f64, usize)> {
    let n = batch_len(batch)?;
    let singles: Vec<ModelInput> = (0..n.min(16))
        .map(|i| head(batch, i, 1))
        .collect::<candle_core::Result<_>>()?;
    let b1 = time_forward(model, &singles, 16, Duration::from_secs(3))?;
    let big = head(batch, 0, n.min(32))?;
    let b32 = time_forward(model, std::slice::from_ref(&big), 5, Duration::from_secs(5))?;
    let m = n.min(32);
    Ok((1e3 * b1, 1e3 * b32 / m as f64, m))
}

/// A task's own score besides accuracy, as (key, value): F1 of class 1 (MRPC, QQP), Matthews
/// correlation (CoLA); `None` where accuracy is the task's metric.
pub fn task_score(
    metric: crate::data::glue::Metric,
    confusion: &crate::ml::training::metrics::Confusion,
) -> Option<(&'static str, f64)> {
    use crate::data::glue::Metric;
    match metric {
        Metric::F1 => Some(("f1", confusion.f1(1))),
        Metric::Matthews => Some(("mcc", confusion.matthews())),
        Metric::Accuracy | Metric::Correlation => None,
    }
}

/// One model measured on one split: accuracy, sizes and latency.
pub struct Measured {
    /// What the model is, for messages.
    pub what: String,
    /// Its directory.
    pub dir: std::path::PathBuf,
    /// Examples evaluated.
    pub examples: usize,
    /// Accuracy, loss and the confusion matrix.
    pub eval: Evaluation,
    /// Measured sizes (parameters, nonzeros, dense / NF4 / sparse bytes).
    pub sizes: Sizes,
    /// The model's files and their sizes.
    pub files: BTreeMap<String, u64>,
    /// Bytes of the whole model directory (weights, config, tokenizer).
    pub bytes: u64,
    /// Bytes of its weight files.
    pub weights_bytes: u64,
    /// Latency per example at batch 1, in ms.
    pub latency_b1: f64,
    /// Latency per example at the larger batch, in ms.
    pub latency_b32: f64,
    /// The larger batch's size.
    pub latency_batch: usize,
    /// Tensors the checkpoint lacked (initialised at random).
    pub missing: Vec<String>,
    /// Bytes of the weights held in memory while evaluating (NF4 weights packed).
    pub weights_in_memory: u64,
    /// Linear weights multiplied in NF4 (4-bit) rather than dense.
    pub nf4_weights: usize,
    /// Pruned linear weights multiplied by the sparse kernel rather than dense.
    pub sparse_weights: usize,
    /// The process's peak resident memory while the model was loaded and evaluated, in bytes
    /// (where the system tells it).
    pub peak_rss: Option<u64>,
}

/// Evaluates a trained model on a split of `dataset` (read with the model's tokenizer) and
/// measures its sizes and latency.
pub fn measure(
    ctx: &OpContext,
    source: &ModelSource,
    dataset: &Dataset,
    split: SplitName,
    batch_size: usize,
) -> Result<Measured, OpError> {
    let device = ctx.device.clone();
    let frozen = load_frozen(source, "eval", &device, true)?;
    let config = frozen.loaded.config.clone();
    model_source::check_fits(&config, dataset, true)?;
    let n = dataset.len(split);
    if n == 0 {
        return Err(OpError::Failed(format!(
            "the {} split of the dataset is empty",
            split.as_str()
        )));
    }
    // Peak memory from here: loading and evaluating this model (the process's, see `memory`).
    let rss_reset = super::memory::reset_peak_rss();
    let batches = dataset.inference_batches(split, batch_size, &device)?;
    let mut eval = Evaluation {
        confusion: Confusion::new(config.num_labels()),
        loss: 0.0,
        predicted: Vec::new(),
        outputs: Vec::new(),
        targets: Vec::new(),
    };
    let mut order = Vec::with_capacity(n);
    for (i, b) in batches.iter().enumerate() {
        if ctx.cancel.is_interrupted() {
            return Err(OpError::Interrupted);
        }
        eval.merge(evaluate(&frozen.loaded.model, std::iter::once((&b.input, &b.labels)))?)?;
        order.extend_from_slice(&b.indices);
        ctx.progress.steps("batch", i as u64 + 1, batches.len() as u64);
    }
    eval.into_example_order(&order)?;
    drop(batches);
    let sizes = frozen
        .loaded
        .sizes
        .ok_or_else(|| OpError::Failed("the model's sizes were not measured".into()))?;
    let files = model_files(&frozen.dir)?;
    let bytes: u64 = files.values().sum();
    let weights_bytes: u64 = files.iter().filter(|(k, _)| is_weights(k)).map(|(_, v)| *v).sum();
    ctx.progress.message("measuring latency");
    // The first 32 examples in split order (not the longest, which come first above).
    let first = match dataset.batch_iter(split, 32, None, false, &device)?.next() {
        Some(b) => b?,
        None => {
            return Err(OpError::Failed(format!(
                "the {} split of the dataset is empty",
                split.as_str()
            )))
        }
    };
    let (latency_b1, latency_b32, latency_batch) = latency(&frozen.loaded.model, &first.input)?;
    let peak_rss = if rss_reset { super::memory::peak_rss() } else { None };
    Ok(Measured {
        what: frozen.what,
        dir: frozen.dir,
        examples: n,
        eval,
        sizes,
        files,
        bytes,
        weights_bytes,
        latency_b1,
        latency_b32,
        latency_batch,
        missing: frozen.loaded.missing,
        weights_in_memory: frozen.loaded.weight_bytes,
        nf4_weights: frozen.loaded.nf4_weights.len(),
        sparse_weights: frozen.loaded.sparse_weights.len(),
        peak_rss,
    })
}

/// Runs an `eval` stage.
pub fn run(ctx: &mut OpContext) -> Result<OpOutput, OpError> {
    let args = EvalArgs::from_params(ctx.params)?;
    let batch_size = args.batch_size.max(1);
    ctx.progress.message("loading the model and data");
    let source = model_source::resolve(ctx, &args.model)?;
    let dataset = load_for(ctx, &args.data, &source)?;
    let split = report_split(args.split, &dataset);
    let split_name = split.as_str();
    // What selected the model (its stage's `selection.json`, read before the op ran).
    ctx.selection.check_reportable(split, "the model")?;
    ctx.progress
        .message(&format!("evaluating {} {split_name} examples", dataset.len(split)));
    let m = measure(ctx, &source, &dataset, split, batch_size)?;
    if !m.missing.is_empty() {
        let _ = writeln!(
            ctx.log,
            "warning: the checkpoint lacks {:?}; they are random, so the accuracy means little",
            m.missing
        );
    }
    let ev = &m.eval;
    let (n, s) = (m.examples, m.sizes);
    let (lat1, lat32, lat_batch) = (m.latency_b1, m.latency_b32, m.latency_batch);
    // How well: accuracy (and the task's own score) for classes, correlations for a regression.
    let mut quality: Vec<(String, f64)> = Vec::new();
    let mut report = serde_json::json!({
        "model": format!("{} ({})", m.what, m.dir.display()),
        "split": split_name,
        "selection": ctx.selection.how,
        "examples": n,
    });
    let mut csv;
    if ev.is_regression() {
        let (pearson, spearman) = (ev.pearson(), ev.spearman());
        quality.push(("pearson".into(), pearson));
        quality.push(("spearman".into(), spearman));
        quality.push(("loss".into(), ev.loss));
        let _ = writeln!(
            ctx.log,
            "{split_name}: {n} examples, Pearson {pearson:.4}, Spearman {spearman:.4}, MSE {:.4}",
            ev.loss
        );
        report["pearson"] = serde_json::json!(pearson);
        report["spearman"] = serde_json::json!(spearman);
        report["mse"] = serde_json::json!(ev.loss);
        // Per example: the target and the model's output.
        csv = String::from("index,label,predicted\n");
        for (i, (t, p)) in ev.targets.iter().zip(&ev.outputs).enumerate() {
            csv.push_str(&format!("{i},{t},{p}\n"));
        }
    } else {
        let per_class = ev.confusion.per_class_accuracy();
        let support = ev.confusion.support();
        let accuracy = ev.confusion.accuracy();
        let score = task_score(dataset.metric, &ev.confusion);
        let score_text = score.map_or(String::new(), |(k, v)| format!(", {} {v:.4}", k.to_uppercase()));
        let _ = writeln!(
            ctx.log,
            "{split_name}: {n} examples, accuracy {:.2}%{score_text}, loss {:.4}",
            100.0 * accuracy,
            ev.loss
        );
        quality.push(("accuracy".into(), accuracy));
        if let Some((k, v)) = score {
            quality.push((k.into(), v));
            report[k] = serde_json::json!(v);
        }
        quality.push(("loss".into(), ev.loss));
        for (i, name) in dataset.classes.iter().enumerate() {
            if let Some(Some(a)) = per_class.get(i) {
                quality.push((format!("class_accuracy.{name}"), *a));
            }
        }
        let classes: Vec<serde_json::Value> = dataset
            .classes
            .iter()
            .enumerate()
            .map(|(i, name)| {
                serde_json::json!({
                    "class": name,
                    "accuracy": per_class.get(i).copied().flatten(),
                    "support": support.get(i).copied().unwrap_or(0),
                })
            })
            .collect();
        report["accuracy"] = serde_json::json!(accuracy);
        report["loss"] = serde_json::json!(ev.loss);
        report["per_class"] = serde_json::json!(classes);
        report["confusion"] = serde_json::json!(ev.confusion.rows());
        // Per example, so that two models measured on the same split can be compared pairwise.
        csv = String::from("index,label,predicted,correct\n");
        for (i, (&label, &p)) in dataset.labels(split).iter().zip(&ev.predicted).enumerate() {
            csv.push_str(&format!("{i},{label},{p},{}\n", u8::from(label == p)));
        }
    }
    let _ = writeln!(
        ctx.log,
        "{} parameters ({} nonzero); dense {} bytes, NF4 {} bytes, sparse {} bytes; {} bytes on disk; latency \
         {lat1:.3} ms/example at batch 1, {lat32:.3} ms/example at batch {lat_batch}",
        s.params, s.nonzeros, s.dense_bytes, s.nf4_bytes, s.sparse_bytes, m.bytes
    );
    let _ = writeln!(
        ctx.log,
        "memory: weights {} bytes in memory ({} linear weights multiplied in NF4, {} by the sparse kernel); peak RSS {}",
        m.weights_in_memory,
        m.nf4_weights,
        m.sparse_weights,
        m.peak_rss.map_or("unknown".to_string(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
    );
    let sizes = serde_json::json!({
        "params": s.params,
        "nonzero": s.nonzeros,
        "sparsity": if s.params > 0 { 1.0 - s.nonzeros as f64 / s.params as f64 } else { 0.0 },
        "dense_bytes": s.dense_bytes,
        "nf4_bytes": s.nf4_bytes,
        "sparse_bytes": s.sparse_bytes,
        "bytes": m.bytes,
        "weights_bytes": m.weights_bytes,
        "files": m.files,
        "latency": {
            "batch_1_ms_per_example": lat1,
            "batch_32_ms_per_example": lat32,
            "batch_32_size": lat_batch,
            "threads": ctx.threads,
            "device": crate::ml::kernels::device::label(&ctx.device),
            "cpu": crate::ml::kernels::isa::active().name(),
        },
        "memory": {
            "weights_in_memory_bytes": m.weights_in_memory,
            "nf4_weights": m.nf4_weights,
            "sparse_weights": m.sparse_weights,
            "peak_rss_bytes": m.peak_rss,
        },
    });
    if let (Some(r), Some(extra)) = (report.as_object_mut(), sizes.as_object()) {
        r.extend(extra.clone());
    }
    let path = ctx.out_dir.join("eval.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report).unwrap_or_default())
        .map_err(|e| OpError::Failed(format!("{}: {e}", path.display())))?;
    let path = ctx.out_dir.join(PREDICTIONS_CSV);
    std::fs::write(&path, csv).map_err(|e| OpError::Failed(format!("{}: {e}", path.display())))?;

    let mut out = OpOutput::default();
    let o = &mut out.metrics;
    o.extend(quality);
    o.insert("examples".into(), n as f64);
    o.insert("params".into(), s.params as f64);
    o.insert("nonzero".into(), s.nonzeros as f64);
    o.insert("dense_bytes".into(), s.dense_bytes as f64);
    o.insert("nf4_bytes".into(), s.nf4_bytes as f64);
    o.insert("sparse_bytes".into(), s.sparse_bytes as f64);
    o.insert("bytes".into(), m.bytes as f64);
    o.insert("weights_bytes".into(), m.weights_bytes as f64);
    o.insert("latency_ms_b1".into(), lat1);
    o.insert("latency_ms_b32".into(), lat32);
    o.insert("weights_in_memory_bytes".into(), m.weights_in_memory as f64);
    if let Some(rss) = m.peak_rss {
        o.insert("peak_rss_bytes".into(), rss as f64);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::train::testing::*;
    use crate::ops::cancel::Cancel;
    use crate::value::{Params, StageId, Value};

    #[test]
    fn evaluates_a_trained_stage() {
        let dir = tempfile::tempdir().unwrap();
        let trained = dir.path().join("trained");
        let mut params = train_params(tiny_bert(), 2, 1);
        params.insert("max_steps".into(), Value::Int(40));
        let (t, _) = run_op("train", &params, &trained, dir.path(), &Cancel::default(), 1);
        let t = t.unwrap().metrics;

        let mut p = Params::new();
        p.insert("model".into(), Value::Stage(StageId(0)));
        p.insert("data".into(), text_data());
        p.insert("split".into(), Value::str("validation"));
        p.insert("batch_size".into(), Value::Int(16));
        // train kept its best epoch by validation accuracy: that split is not reported.
        let (r, _) = run_op("eval", &p, &dir.path().join("refused"), &trained, &Cancel::default(), 1);
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("selected on the validation split") && e.contains("holdout: 0.1"),
            "{e}"
        );
        // `auto` takes the test split, which nothing selected on.
        p.insert("split".into(), Value::str("auto"));
        let out = dir.path().join("eval");
        let (r, log) = run_op("eval", &p, &out, &trained, &Cancel::default(), 1);
        let m = r.unwrap().metrics;
        assert_eq!(m.keys().next().map(String::as_str), Some("accuracy"));
        // Another sample of the same task: near the validation figure train kept.
        assert!((m["accuracy"] - t["accuracy"]).abs() < 0.1, "{t:?}\n{log}");
        assert_eq!(m["examples"], 256.0);
        assert_eq!(m["params"], t["params"]);
        assert!(m["nonzero"] <= m["params"] && m["nonzero"] > 0.9 * m["params"]);
        assert!(m["latency_ms_b1"] > 0.0 && m["latency_ms_b32"] > 0.0);
        assert_eq!(m["dense_bytes"], 4.0 * m["params"]);
        assert!(
            m["nf4_bytes"] < m["dense_bytes"] && m["sparse_bytes"] > m["dense_bytes"],
            "{m:?}"
        );
        let weights = std::fs::metadata(trained.join("model.safetensors")).unwrap().len() as f64;
        assert_eq!(m["weights_bytes"], weights);
        assert!(m["bytes"] > weights);
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
        let per_class = report["per_class"].as_array().unwrap();
        assert_eq!(per_class.len(), 2);
        let support: u64 = per_class.iter().map(|c| c["support"].as_u64().unwrap()).sum();
        assert_eq!(support, 256);
        // Every example's prediction is kept, and they add up to the accuracy.
        let csv = std::fs::read_to_string(out.join(super::PREDICTIONS_CSV)).unwrap();
        let rows: Vec<&str> = csv.lines().skip(1).collect();
        assert_eq!(rows.len(), 256);
        let correct = rows.iter().filter(|r| r.ends_with(",1")).count();
        assert!((correct as f64 / 256.0 - m["accuracy"]).abs() < 1e-12);
        // Overall accuracy is the support-weighted mean of the per-class accuracies.
        let weighted: f64 = per_class
            .iter()
            .map(|c| c["accuracy"].as_f64().unwrap() * c["support"].as_f64().unwrap())
            .sum::<f64>()
            / 256.0;
        assert!((weighted - m["accuracy"]).abs() < 1e-12);
        assert_eq!(m["class_accuracy.class_0"], per_class[0]["accuracy"].as_f64().unwrap());
        assert!(!report["files"].as_object().unwrap().contains_key("train_metrics.json"));

        // An architecture has no weights to evaluate.
        p.insert("model".into(), tiny_bert());
        let (r, _) = run_op("eval", &p, &dir.path().join("e2"), &trained, &Cancel::default(), 1);
        assert!(r.unwrap_err().to_string().contains("needs trained weights"));
    }
}

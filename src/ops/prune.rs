//! `prune`: magnitude pruning of a trained model, optionally followed by masked fine-tuning.
//!
//! Loads the `model:` (a stage output or a local Hugging Face directory), prunes it with
//! [`crate::ml::prune`] (`l1_unstructured` per tensor, `l1_global` with one threshold, or
//! `heads`, which removes whole attention heads and shrinks the matrices), and with
//! `finetune_epochs: N` and `data:` fine-tunes it for N epochs while the pruning masks are
//! re-applied after every optimiser update, so pruned weights stay exactly zero. With `data:`
//! the validation accuracy right after pruning is measured too. Fine-tuning uses the stage's
//! `lr` and `seed` and `train`'s defaults for the rest (batch size 32, AdamW weight decay 0.01,
//! 10% warm-up, gradient clipping at 1.0), keeping the best validation epoch.
//!
//! Metrics: `sparsity` (achieved, over the prunable weights: the share of their original
//! entries that are zero or were removed with their head), `nonzeros` and `params` (the whole
//! model after pruning), `accuracy` (validation, when `data:` is given: after fine-tuning when
//! there is any, else right after pruning), `pruned_accuracy` (right after pruning, when
//! fine-tuned) and `heads_removed` (method `heads`).
//!
//! Writes a Hugging Face directory into the stage's output: config.json (with `pruned_heads`
//! when heads were removed), model.safetensors (dense, zeros baked in), the source's tokenizer
//! files, and `prune_metrics.json` (sparsity per tensor and per layer, heads removed per layer,
//! parameters and nonzeros before and after, the fine-tuning curve).

use std::io::Write;
use std::path::Path;

use candle_core::{DType, Device};

use super::model_source::{self, ModelSource};
use super::resume::Policy;
use super::train::{checkpoint_policy, fit, load_for, supervised_loss, FitOptions, Schedule};
use super::{check_interrupted, OpContext, OpError, OpOutput};
use crate::data::{Dataset, SplitName};
use crate::keyword::Keyword;
use crate::ml::checkpoint::{load_pretrained, LoadOptions};
use crate::ml::metrics::{evaluate, parameter_counts};
use crate::ml::prune::{prune, Method, PruneReport, Pruned, Zeros};
use crate::ml::train::{TrainError, TrainReport};
use crate::ml::{Model, ParamStore};
use crate::registry::{PruneArgs, DEFAULT_BATCH_SIZE};

/// Files of a model directory that travel with its weights (tokenizer, image preprocessing).
const COMPANION_FILES: [&str; 5] = [
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
];

/// The pruning record a `prune` stage writes beside the weights.
const PRUNE_METRICS: &str = "prune_metrics.json";

/// A fraction as a percentage with two decimals.
fn percent(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

/// Validation accuracy of the model built on `params` (detached), `None` without a validation split.
fn validation_accuracy(
    config: &crate::ml::ModelConfig,
    params: &ParamStore,
    dataset: &Dataset,
    batch_size: usize,
    device: &Device,
) -> Result<Option<f64>, OpError> {
    if dataset.len(SplitName::Validation) == 0 {
        return Ok(None);
    }
    let device = device.clone();
    let model = Model::new(config, params.frozen_var_builder(DType::F32, &device))?;
    let batches = dataset.batches(SplitName::Validation, batch_size, None, false, &device)?;
    let ev = evaluate(&model, batches.iter().map(|b| (&b.input, &b.labels)))?;
    Ok(Some(ev.score()))
}

/// Runs a `prune` stage.
pub fn run(ctx: &mut OpContext) -> Result<OpOutput, OpError> {
    let args = PruneArgs::from_params(ctx.params)?;
    let (method, scope) = (args.method, args.scope);
    let sparsity = args.sparsity;
    if !(0.0..1.0).contains(&sparsity) {
        return Err(OpError::Failed(format!("`sparsity` must be in [0, 1), got {sparsity}")));
    }
    let finetune_epochs = args.finetune_epochs;
    if finetune_epochs > 0 && args.data.is_none() {
        return Err(OpError::Failed(format!(
            "finetune_epochs: {finetune_epochs} needs a dataset to fine-tune on: add `data:`"
        )));
    }
    // Fine-tuning takes the training loop's defaults for what prune does not ask.
    let (opts, batch_size, policy) = Schedule {
        epochs: finetune_epochs,
        batch_size: DEFAULT_BATCH_SIZE as usize,
        lr: args.lr,
        weight_decay: None,
        warmup: None,
        grad_clip: None,
        seed: args.seed,
        max_steps: None,
        select: args.select,
        precision: args.precision,
        checkpoint: checkpoint_policy!(args),
    }
    .options();
    let device = ctx.device.clone();

    ctx.progress.message("loading the model");
    let source = model_source::resolve(ctx, &args.model)?;
    let (dir, what) = match &source {
        ModelSource::Dir { dir, what } => (dir.clone(), what.clone()),
        ModelSource::Arch(spec) => {
            return Err(OpError::Failed(format!(
                "prune needs trained weights, not the architecture `{}`: train it first",
                spec.ctor.name
            )))
        }
    };
    let pretrained = load_pretrained(
        &dir,
        &LoadOptions {
            device: device.clone(),
            ..LoadOptions::default()
        },
    )
    .map_err(|e| OpError::Failed(format!("{what}: {e}")))?;
    let source_config = pretrained.model.config();
    let (params_before, nonzeros_before) = parameter_counts(&pretrained.params)?;
    let _ = writeln!(
        ctx.log,
        "model: {what} ({}): {params_before} parameters, {nonzeros_before} nonzero",
        dir.display()
    );
    if !pretrained.report.initialised.is_empty() {
        let _ = writeln!(
            ctx.log,
            "warning: {what} lacks {:?}; they are random",
            pretrained.report.initialised
        );
    }
    let dataset = if let Some(data) = &args.data {
        ctx.progress.message("loading the data");
        let d = load_for(ctx, data, &source)?;
        model_source::check_fits(&source_config, &d, true)?;
        let _ = writeln!(
            ctx.log,
            "data: {} classes; {} training, {} validation examples; batch size {batch_size}; {} thread{}",
            d.classes.len(),
            d.len(SplitName::Train),
            d.len(SplitName::Validation),
            ctx.threads,
            if ctx.threads == 1 { "" } else { "s" }
        );
        Some(d)
    } else {
        None
    };
    check_interrupted(ctx.cancel)?;

    ctx.progress
        .message(&format!("pruning ({}, sparsity {sparsity})", method.word()));
    // The zeros of a model an earlier `prune` made are pruned entries; any other model's zeros
    // (a dequantised NF4 weight has many) are weights, and count in the amount.
    let zeros = match dir.join(PRUNE_METRICS).is_file() {
        true => {
            let _ = writeln!(
                ctx.log,
                "{what} was pruned before: its zeros stay pruned and the sparsity applies to the weights left"
            );
            Zeros::Pruned
        }
        false => Zeros::Weights,
    };
    let Pruned {
        model: pruned,
        masks,
        mut report,
    } = prune(pretrained, method, scope, sparsity, zeros)
        .map_err(|e| OpError::Failed(format!("pruning {what}: {e}")))?;
    log_pruning(&mut ctx.log, &report);
    check_interrupted(ctx.cancel)?;

    let model = pruned.model.clone();
    let params = pruned.params.clone();
    let config = model.config();
    let pruned_accuracy = match &dataset {
        Some(d) => {
            ctx.progress.message("validating the pruned model");
            let acc = validation_accuracy(&config, &params, d, batch_size, &device)?;
            if let Some(a) = acc {
                let _ = writeln!(ctx.log, "validation accuracy after pruning: {}", percent(a));
            }
            acc
        }
        None => None,
    };
    check_interrupted(ctx.cancel)?;

    let finetune = match &dataset {
        Some(d) if finetune_epochs > 0 => {
            let _ = writeln!(
                ctx.log,
                "fine-tuning for {finetune_epochs} epoch{} (lr {:e}, seed {}); the masks of {} weight tensors \
                 are re-applied after every update",
                if finetune_epochs == 1 { "" } else { "s" },
                opts.lr,
                opts.seed,
                masks.len()
            );
            Some(finetune(ctx, &model, &params, d, (&opts, batch_size, policy), &masks)?)
        }
        _ => None,
    };
    // The masks hold after the last update too (training restores the best epoch's weights,
    // which were masked when saved); re-applying is a no-op that makes sure of it.
    masks.apply(&params)?;
    report.refresh(&params)?;
    check_interrupted(ctx.cancel)?;

    ctx.progress.message("saving");
    crate::ml::save_pretrained(&ctx.out_dir, &config, &params)?;
    for f in COMPANION_FILES {
        let from = dir.join(f);
        if from.is_file() {
            let to = ctx.out_dir.join(f);
            std::fs::copy(&from, &to)
                .map_err(|e| OpError::Failed(format!("copying {} to {}: {e}", from.display(), to.display())))?;
        }
    }
    let (params_after, nonzeros_after) = parameter_counts(&params)?;
    let accuracy = match &finetune {
        Some(r) => r.best_accuracy(),
        None => pruned_accuracy,
    };
    let _ = writeln!(
        ctx.log,
        "result: sparsity {} of the prunable weights; {params_after} parameters ({params_before} before), \
         {nonzeros_after} nonzero ({nonzeros_before} before){}",
        percent(report.sparsity()),
        accuracy
            .map(|a| format!("; validation accuracy {}", percent(a)))
            .unwrap_or_default()
    );
    write_metrics(
        &ctx.out_dir,
        &MetricsFile {
            source: &format!("{what} ({})", dir.display()),
            report: &report,
            params: (params_before, params_after),
            nonzeros: (nonzeros_before, nonzeros_after),
            pruned_accuracy,
            finetune: finetune.as_ref(),
        },
    )?;

    let mut out = OpOutput::default();
    let m = &mut out.metrics;
    if let Some(a) = accuracy {
        m.insert("accuracy".into(), a);
    }
    if let (Some(a), Some(_)) = (pruned_accuracy, &finetune) {
        m.insert("pruned_accuracy".into(), a);
    }
    m.insert("sparsity".into(), report.sparsity());
    m.insert("nonzeros".into(), nonzeros_after as f64);
    m.insert("params".into(), params_after as f64);
    if method == Method::Heads {
        m.insert("heads_removed".into(), report.num_heads_removed() as f64);
    }
    Ok(out)
}

/// Writes what pruning did, per encoder layer and for the rest, to the log.
fn log_pruning(log: &mut std::fs::File, report: &PruneReport) {
    let _ = writeln!(
        log,
        "pruned with {} (scope {}, sparsity {}): {} prunable weights in {} tensors",
        report.method,
        report.scope,
        report.sparsity_target,
        report.prunable_before(),
        report.tensors.len()
    );
    for (layer, (before, after)) in report.heads_before.iter().zip(&report.heads_after).enumerate() {
        let ts: Vec<_> = report.tensors.iter().filter(|t| t.layer == Some(layer)).collect();
        let numel: usize = ts.iter().map(|t| t.numel_before).sum();
        let nonzero: usize = ts.iter().map(|t| t.nonzero_after).sum();
        let heads = match report.heads_removed.get(&layer) {
            Some(h) => format!("; heads {before} → {after} (removed {h:?})"),
            None => String::new(),
        };
        let _ = writeln!(
            log,
            "  layer {layer}: sparsity {}{heads}",
            percent(1.0 - nonzero as f64 / numel.max(1) as f64)
        );
    }
    for t in report.tensors.iter().filter(|t| t.layer.is_none()) {
        let _ = writeln!(log, "  {}: sparsity {}", t.name, percent(t.sparsity()));
    }
}

/// Fine-tunes with the masks re-applied after every optimiser update.
fn finetune(
    ctx: &mut OpContext,
    model: &Model,
    params: &ParamStore,
    dataset: &Dataset,
    (opts, batch_size, policy): (&crate::ml::train::TrainOptions, usize, Policy),
    masks: &crate::ml::prune::Masks,
) -> Result<TrainReport, OpError> {
    let mut reapply = || {
        masks
            .apply(params)
            .map_err(|e| TrainError::Failed(format!("re-applying the pruning masks: {e}")))
    };
    let fit_options = FitOptions {
        after_update: if masks.is_empty() { None } else { Some(&mut reapply) },
        epoch_label: Some("fine-tuning epoch"),
        policy,
        ..FitOptions::default()
    };
    fit(
        ctx,
        model,
        params,
        dataset,
        opts,
        batch_size,
        supervised_loss,
        fit_options,
        |_| None,
    )
    .map_err(|e| e.context("fine-tuning"))
}

/// What goes into `prune_metrics.json`.
struct MetricsFile<'a> {
    source: &'a str,
    report: &'a PruneReport,
    params: (usize, usize),
    nonzeros: (usize, usize),
    pruned_accuracy: Option<f64>,
    finetune: Option<&'a TrainReport>,
}

fn write_metrics(out_dir: &Path, m: &MetricsFile) -> Result<(), OpError> {
    let r = m.report;
    let layers: Vec<serde_json::Value> = r
        .heads_before
        .iter()
        .zip(&r.heads_after)
        .enumerate()
        .map(|(layer, (hb, ha))| {
            let ts: Vec<_> = r.tensors.iter().filter(|t| t.layer == Some(layer)).collect();
            let numel_before: usize = ts.iter().map(|t| t.numel_before).sum();
            let numel_after: usize = ts.iter().map(|t| t.numel_after).sum();
            let nonzero: usize = ts.iter().map(|t| t.nonzero_after).sum();
            serde_json::json!({
                "layer": layer,
                "numel_before": numel_before,
                "numel_after": numel_after,
                "nonzero": nonzero,
                "sparsity": if numel_before > 0 { 1.0 - nonzero as f64 / numel_before as f64 } else { 0.0 },
                "heads_before": hb,
                "heads_after": ha,
                "heads_removed": r.heads_removed.get(&layer).cloned().unwrap_or_default(),
            })
        })
        .collect();
    let tensors: Vec<serde_json::Value> = r
        .tensors
        .iter()
        .map(|t| {
            serde_json::json!({
                "name": t.name,
                "layer": t.layer,
                "numel_before": t.numel_before,
                "numel_after": t.numel_after,
                "nonzero_before": t.nonzero_before,
                "nonzero_after": t.nonzero_after,
                "sparsity": t.sparsity(),
            })
        })
        .collect();
    let heads_removed: serde_json::Map<String, serde_json::Value> = r
        .heads_removed
        .iter()
        .map(|(l, h)| (l.to_string(), serde_json::json!(h)))
        .collect();
    let finetune = m.finetune.map(|f| {
        serde_json::json!({
            "best_epoch": f.best_epoch,
            "best_accuracy": f.best_accuracy(),
            "planned_steps": f.planned_steps,
            "epochs": f.epochs,
            "steps": f.steps,
        })
    });
    let details = serde_json::json!({
        "source": m.source,
        "method": r.method,
        "scope": r.scope,
        "sparsity_target": r.sparsity_target,
        "sparsity": r.sparsity(),
        "sparsity_all_params": if m.params.0 > 0 { 1.0 - m.nonzeros.1 as f64 / m.params.0 as f64 } else { 0.0 },
        "prunable_before": r.prunable_before(),
        "prunable_nonzero_after": r.nonzero_after(),
        "params_before": m.params.0,
        "params_after": m.params.1,
        "nonzeros_before": m.nonzeros.0,
        "nonzeros_after": m.nonzeros.1,
        "heads_removed": heads_removed,
        "layers": layers,
        "tensors": tensors,
        "pruned_accuracy": m.pruned_accuracy,
        "finetune": finetune,
    });
    let path = out_dir.join(PRUNE_METRICS);
    std::fs::write(&path, serde_json::to_vec_pretty(&details).unwrap_or_default())
        .map_err(|e| OpError::Failed(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::super::train::testing::*;
    use super::*;
    use crate::ml::prune::Scope;
    use crate::ml::prune::{amount_to_prune, prunable_weights};
    use crate::ops::cancel::Cancel;
    use crate::value::StageId;
    use crate::value::{Params, Value};

    /// Trains the tiny BERT briefly into `dir/trained`.
    fn trained(dir: &Path, heads: i64) -> std::path::PathBuf {
        let out = dir.join("trained");
        let model = spec(
            "bert",
            &[
                ("layers", Value::Int(1)),
                ("hidden", Value::Int(32)),
                ("heads", Value::Int(heads)),
                ("intermediate", Value::Int(64)),
                ("vocab_size", Value::Int(30522)),
                ("max_position", Value::Int(32)),
                ("dropout", Value::Float(0.1)),
                ("attention_dropout", Value::Float(0.1)),
            ],
        );
        let mut p = train_params(model, 1, 1);
        p.insert("max_steps".into(), Value::Int(16));
        let (r, log) = run_op("train", &p, &out, dir, &Cancel::default(), 1);
        r.unwrap_or_else(|e| panic!("{e}\n{log}"));
        out
    }

    fn prune_params(method: &str, sparsity: f64, finetune_epochs: i64) -> Params {
        let mut p = Params::new();
        p.insert("model".into(), Value::Stage(StageId(0)));
        p.insert("sparsity".into(), Value::Float(sparsity));
        p.insert("method".into(), Value::str(method));
        p.insert("scope".into(), Value::str("linear"));
        p.insert("finetune_epochs".into(), Value::Int(finetune_epochs));
        p.insert("lr".into(), Value::Float(1e-3));
        p.insert("seed".into(), Value::Int(2));
        p
    }

    fn tensors(dir: &Path) -> BTreeMap<String, Vec<f32>> {
        let p = load_pretrained(dir, &LoadOptions::default()).unwrap();
        p.params
            .tensors()
            .unwrap()
            .into_iter()
            .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            .collect()
    }

    #[test]
    fn zeros_survive_masked_fine_tuning() {
        let dir = tempfile::tempdir().unwrap();
        let src = trained(dir.path(), 2);
        // Pruned only, and pruned then fine-tuned for one epoch.
        let (r, log) = run_op(
            "prune",
            &prune_params("l1_unstructured", 0.3, 0),
            &dir.path().join("p"),
            &src,
            &Cancel::default(),
            1,
        );
        let plain = r.unwrap_or_else(|e| panic!("{e}\n{log}")).metrics;
        assert!(!plain.contains_key("accuracy"), "no data, no accuracy: {plain:?}");
        let mut params = prune_params("l1_unstructured", 0.3, 1);
        params.insert("data".into(), text_data());
        let (r, log) = run_op("prune", &params, &dir.path().join("ft"), &src, &Cancel::default(), 1);
        let tuned = r.unwrap_or_else(|e| panic!("{e}\n{log}")).metrics;
        assert!(
            tuned["accuracy"] > 0.0 && tuned.contains_key("pruned_accuracy"),
            "{tuned:?}"
        );
        assert!(log.contains("fine-tuning epoch 1: 16 steps"), "{log}");
        assert_eq!(tuned["sparsity"], plain["sparsity"]);
        assert_eq!(tuned["nonzeros"], plain["nonzeros"]);

        let source = tensors(&src);
        let (p, ft) = (tensors(&dir.path().join("p")), tensors(&dir.path().join("ft")));
        let config = crate::ml::checkpoint::read_config(&src).unwrap();
        let names = prunable_weights(&config, Scope::Linear);
        let mut pruned_total = 0;
        for n in &names {
            let zeros = |v: &[f32]| v.iter().filter(|x| **x == 0.0).count();
            assert_eq!(zeros(&source[n]), 0, "{n}: the trained weights have no zeros");
            let want = amount_to_prune(0.3, source[n].len());
            assert_eq!(zeros(&p[n]), want, "{n}: exact per-tensor count");
            // Fine-tuning kept exactly the same zeros and moved the other weights.
            let same_zeros = p[n].iter().zip(&ft[n]).all(|(a, b)| (*a == 0.0) == (*b == 0.0));
            assert!(same_zeros, "{n}: the zeros moved during fine-tuning");
            assert!(p[n] != ft[n], "{n}: fine-tuning changed nothing");
            pruned_total += want;
        }
        let prunable: usize = names.iter().map(|n| source[n].len()).sum();
        assert!((plain["sparsity"] - pruned_total as f64 / prunable as f64).abs() < 1e-12);
        let total: usize = source.values().map(Vec::len).sum();
        assert_eq!(plain["params"], total as f64);
        assert_eq!(plain["nonzeros"], (total - pruned_total) as f64);

        // The output is a complete HF directory with the report.
        let out = dir.path().join("ft");
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "vocab.txt",
            "prune_metrics.json",
        ] {
            assert!(out.join(f).is_file(), "{f} missing");
        }
        let pm: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("prune_metrics.json")).unwrap()).unwrap();
        assert_eq!(pm["method"], "l1_unstructured");
        assert_eq!(pm["layers"].as_array().unwrap().len(), 1);
        assert_eq!(pm["tensors"].as_array().unwrap().len(), names.len());
        assert_eq!(pm["params_before"], pm["params_after"]);
        assert_eq!(pm["nonzeros_before"].as_u64().unwrap() as usize, total);
        assert_eq!(pm["finetune"]["epochs"].as_array().unwrap().len(), 1);

        // Pruning the pruned model again by 30% gives 51% (30% of the remaining 70%).
        let (r, log) = run_op(
            "prune",
            &prune_params("l1_global", 0.3, 0),
            &dir.path().join("again"),
            &dir.path().join("p"),
            &Cancel::default(),
            1,
        );
        let again = r.unwrap_or_else(|e| panic!("{e}\n{log}")).metrics;
        let left = prunable - pruned_total;
        let want = pruned_total + amount_to_prune(0.3, left);
        assert!(
            (again["sparsity"] - want as f64 / prunable as f64).abs() < 1e-12,
            "{again:?}"
        );
        assert!((again["sparsity"] - 0.51).abs() < 0.005);
    }

    #[test]
    fn head_pruning_writes_a_smaller_checkpoint_that_eval_reads() {
        let dir = tempfile::tempdir().unwrap();
        let src = trained(dir.path(), 4);
        let mut params = prune_params("heads", 0.5, 0);
        params.insert("data".into(), text_data());
        let out = dir.path().join("h");
        let (r, log) = run_op("prune", &params, &out, &src, &Cancel::default(), 1);
        let m = r.unwrap_or_else(|e| panic!("{e}\n{log}")).metrics;
        assert_eq!(m["heads_removed"], 2.0);
        assert!(log.contains("heads 4 → 2"), "{log}");
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["num_attention_heads"], 4);
        assert_eq!(config["pruned_heads"]["0"].as_array().unwrap().len(), 2);
        let t = tensors(&out);
        assert_eq!(t["bert.encoder.layer.0.attention.self.query.weight"].len(), 16 * 32);
        assert_eq!(t["bert.encoder.layer.0.attention.output.dense.weight"].len(), 32 * 16);
        let before: usize = tensors(&src).values().map(Vec::len).sum();
        // Two heads of width 8: q/k/v rows with biases and output columns.
        assert_eq!(m["params"], (before - 2 * (3 * (8 * 32 + 8) + 32 * 8)) as f64);
        // The checkpoint loads (eval builds the smaller layers from pruned_heads) and gives the
        // accuracy prune measured on the same batches.
        let mut e = Params::new();
        e.insert("model".into(), Value::Stage(StageId(0)));
        e.insert("data".into(), text_data());
        e.insert("batch_size".into(), Value::Int(32));
        let (r, log) = run_op("eval", &e, &dir.path().join("e"), &out, &Cancel::default(), 1);
        let em = r.unwrap_or_else(|e| panic!("{e}\n{log}")).metrics;
        // eval measures the test split (the op's own figure is on validation, which selected it).
        assert!((em["accuracy"] - m["accuracy"]).abs() < 0.1, "{em:?} vs {m:?}");
        assert_eq!(em["params"], m["params"]);
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        // A model directory without weights.
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let config = crate::ml::ModelConfig::Bert(crate::ml::BertConfig::new(50, 16, 1, 2, 32, 2));
        std::fs::write(empty.join("config.json"), config.to_json_string()).unwrap();
        let params = prune_params("l1_unstructured", 0.3, 0);
        let (r, _) = run_op("prune", &params, &dir.path().join("a"), &empty, &Cancel::default(), 1);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("no weights found"), "{e}");
        // An architecture has no weights to prune.
        let mut p = params.clone();
        p.insert("model".into(), tiny_bert());
        let (r, _) = run_op("prune", &p, &dir.path().join("b"), &empty, &Cancel::default(), 1);
        assert!(r.unwrap_err().to_string().contains("prune needs trained weights"));
        // Fine-tuning without data, an unknown method, a sparsity out of range.
        let (r, _) = run_op(
            "prune",
            &prune_params("l1_unstructured", 0.3, 2),
            &dir.path().join("c"),
            &empty,
            &Cancel::default(),
            1,
        );
        assert!(r.unwrap_err().to_string().contains("add `data:`"));
        let (r, _) = run_op(
            "prune",
            &prune_params("random", 0.3, 0),
            &dir.path().join("d"),
            &empty,
            &Cancel::default(),
            1,
        );
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("`method` must be one of l1_unstructured, l1_global, heads, got \"random\""),
            "{e}"
        );
        let (r, _) = run_op(
            "prune",
            &prune_params("heads", 1.5, 0),
            &dir.path().join("e"),
            &empty,
            &Cancel::default(),
            1,
        );
        assert!(r.unwrap_err().to_string().contains("[0, 1)"));
        // Interrupted: nothing written.
        let cancel = Cancel::default();
        cancel.interrupt();
        let src = dir.path().join("w");
        crate::ml::Pretrained::random(&config, 1, &Device::Cpu)
            .unwrap()
            .save(&src)
            .unwrap();
        let out = dir.path().join("f");
        let (r, _) = run_op("prune", &params, &out, &src, &cancel, 1);
        assert_eq!(r.unwrap_err(), OpError::Interrupted);
        assert!(!out.join("model.safetensors").exists());
    }
}

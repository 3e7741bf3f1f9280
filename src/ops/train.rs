//! `train`: supervised training of a model on a dataset's training split.
//!
//! Writes a Hugging Face directory into the stage's output (config.json with the dataset's
//! labels, model.safetensors holding the best epoch's weights, the tokenizer files) and
//! train_metrics.json (the loss per step and the validation accuracy per epoch).
//!
//! Threads: candle's matrix products, the fused kernels and the optimiser run their parallel parts
//! on the process-wide pool (`ctx.threads` threads, one per core) that every running stage shares
//! ([`crate::ml::kernels::runtime`]): alone, the stage has every core.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use super::model_source::{self, ModelSource};
use super::resume::{self, OpState, Policy, StageCheckpointer};
use super::selection::Selection;
use super::{OpContext, OpError, OpOutput};
use crate::data::{Batch, Dataset, LoadOptions, SplitName};
use crate::keyword::Keyword;
use crate::ml::metrics::evaluate;
use crate::ml::rng::derive_seed;
use crate::ml::train::{train, EpochRecord, Hooks, StepRecord, TrainError, TrainOptions, TrainReport, Validation};
use crate::ml::train::{Precision, Select};
use crate::ml::training::activations::ActivationCheck;
use crate::ml::ParamStore;
use crate::ml::{ForwardCtx, Model};
use crate::registry::TrainArgs;
use crate::report::{EPOCHS_CSV, STEPS_CSV};
use crate::value::Value;
use candle_core::Var;

/// Loads a dataset value (the op's `data` argument), with the given tokenizer directory and cache
/// directory; says in `log` whether it came prepared from the store, and the dataset's warnings.
pub(super) fn load_dataset(
    data: &Value,
    tokenizer_dir: Option<PathBuf>,
    cache_dir: &Path,
    log: &mut dyn std::io::Write,
) -> Result<Dataset, OpError> {
    let spec = match data {
        Value::Spec(s) => s.clone(),
        other => {
            return Err(OpError::Invalid(format!(
                "`data` must be a dataset, got {}",
                other.type_name()
            )))
        }
    };
    let opts = LoadOptions {
        tokenizer_dir,
        cache_dir: Some(cache_dir.to_path_buf()),
    };
    let dataset = Dataset::load(spec.ctor.name, &spec.params, &opts)?;
    if let Some(line) = dataset.prepared.describe() {
        let _ = writeln!(log, "{line}");
    }
    for line in &dataset.warnings {
        let _ = writeln!(log, "warning: {line}");
    }
    Ok(dataset)
}

/// Loads the op's dataset with the tokenizer of the model `source` (see [`load_dataset`]).
pub(super) fn load_for(
    ctx: &mut OpContext,
    data: &Value,
    source: &model_source::ModelSource,
) -> Result<Dataset, OpError> {
    let tokenizer = model_source::tokenizer_dir(source)?;
    load_dataset(data, tokenizer, &ctx.cache_dir, &mut ctx.log)
}

/// The supervised loss of the model on a batch: cross-entropy against class ids, or the mean
/// squared error against a regression's targets. It reads the logits only, so the last layer
/// computes the first token alone ([`ForwardCtx::logits_only`]).
pub fn supervised_loss(model: &Model, batch: &Batch, ctx: &mut ForwardCtx) -> candle_core::Result<Tensor> {
    ctx.set_logits_only(true);
    let out = model.forward(&batch.input, ctx)?;
    crate::ml::training::regression::supervised_loss(&out.logits, &batch.labels)
}

/// The training hyper-parameters of an op's typed arguments; an op without one of them (qlora
/// has no `weight_decay`) leaves it at the training loop's default.
#[derive(Clone, Debug)]
pub(super) struct Schedule {
    /// Passes over the training split.
    pub epochs: usize,
    /// Examples per optimiser step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: Option<f64>,
    /// Warm-up fraction.
    pub warmup: Option<f64>,
    /// Gradient-norm clipping.
    pub grad_clip: Option<f64>,
    /// Random seed.
    pub seed: u64,
    /// Stop after this many optimiser steps.
    pub max_steps: Option<usize>,
    /// Which epoch's weights are kept.
    pub select: Select,
    /// What the linear layers compute in.
    pub precision: Precision,
    /// When in-stage checkpoints are written.
    pub checkpoint: Policy,
}

impl Schedule {
    /// The training loop's options, the batch size and when to checkpoint.
    pub fn options(&self) -> (TrainOptions, usize, Policy) {
        let d = TrainOptions::default();
        let opts = TrainOptions {
            epochs: self.epochs,
            lr: self.lr,
            weight_decay: self.weight_decay.unwrap_or(d.weight_decay),
            warmup: self.warmup.unwrap_or(d.warmup),
            grad_clip: self.grad_clip.or(d.grad_clip),
            seed: self.seed,
            max_steps: self.max_steps.map(|m| m.max(1)),
            select: self.select,
            precision: self.precision,
        };
        (opts, self.batch_size.max(1), self.checkpoint)
    }
}

/// The [`Schedule`] of typed arguments that declare all of the training parameters (`train`,
/// `distill`, `fuse`).
macro_rules! full_schedule {
    ($a:expr) => {
        $crate::ops::train::Schedule {
            epochs: $a.epochs,
            batch_size: $a.batch_size,
            lr: $a.lr,
            weight_decay: Some($a.weight_decay),
            warmup: Some($a.warmup),
            grad_clip: Some($a.grad_clip),
            seed: $a.seed,
            max_steps: $a.max_steps,
            select: $a.select,
            precision: $a.precision,
            checkpoint: $crate::ops::train::checkpoint_policy!($a),
        }
    };
}

/// The checkpoint [`Policy`] of a training op's typed arguments.
macro_rules! checkpoint_policy {
    ($a:expr) => {
        $crate::ops::resume::Policy {
            every_steps: $a.checkpoint_every,
            minutes: $a.checkpoint_minutes,
        }
    };
}
pub(super) use {checkpoint_policy, full_schedule};

/// Runs a `train` stage.
pub fn run(ctx: &mut OpContext) -> Result<OpOutput, OpError> {
    let args = TrainArgs::from_params(ctx.params)?;
    let (opts, batch_size, policy) = full_schedule!(args).options();
    let device = ctx.device.clone();
    ctx.progress.message("loading the model and data");
    let source = model_source::resolve(ctx, &args.model)?;
    let dataset = load_for(ctx, &args.data, &source)?;
    log_data(ctx, &dataset, batch_size);
    let pretrained = model_source::model_for_training(&source, &dataset, opts.seed, &device, &mut ctx.log)?;
    let model = pretrained.model.clone();
    let params = pretrained.params.clone();
    let _ = writeln!(ctx.log, "parameters: {}", params.num_parameters());
    let report = fit(
        ctx,
        &model,
        &params,
        &dataset,
        &opts,
        batch_size,
        supervised_loss,
        FitOptions {
            policy,
            ..FitOptions::default()
        },
        |_| None,
    )?;
    finish(
        ctx,
        &source_label(&source),
        &model,
        &params,
        &dataset,
        &report,
        batch_size,
        serde_json::Map::new(),
    )
}

/// A model source as the metrics files name it.
pub(super) fn source_label(source: &ModelSource) -> String {
    match source {
        ModelSource::Dir { dir, what } => format!("{what} ({})", dir.display()),
        ModelSource::Arch(spec) => spec.label.clone().unwrap_or_else(|| spec.ctor.name.to_string()),
    }
}

/// Logs the dataset's shape.
pub(super) fn log_data(ctx: &mut OpContext, dataset: &Dataset, batch_size: usize) {
    let _ = writeln!(
        ctx.log,
        "data: {} classes {:?}; {} training, {} validation{} examples; batch size {batch_size}; {} thread{}",
        dataset.classes.len(),
        dataset.classes,
        dataset.len(SplitName::Train),
        dataset.len(SplitName::Validation),
        match dataset.len(SplitName::Holdout) {
            0 => String::new(),
            n => format!(", {n} held-out"),
        },
        ctx.threads,
        if ctx.threads == 1 { "" } else { "s" }
    );
}

/// How [`fit`] differs between ops; the default is `train`'s.
#[derive(Default)]
pub(super) struct FitOptions<'a> {
    /// When in-stage checkpoints are written.
    pub policy: Policy,
    /// The op's own running state, kept in checkpoints (distillation's loss tallies).
    pub op_state: Option<&'a OpState<'a>>,
    /// The model validation runs (default: `model` rebuilt on detached copies of `params`).
    pub eval_model: Option<Model>,
    /// Trainable variables outside `params` (distillation projections).
    pub extra_vars: Vec<(String, Var)>,
    /// Called after every optimiser update (pruning masks).
    pub after_update: Option<&'a mut dyn FnMut() -> Result<(), TrainError>>,
    /// What the progress line and the log call an epoch (default "epoch").
    pub epoch_label: Option<&'a str>,
}

/// Trains `model` (built on `params`) on the dataset's training split with `loss`, validating
/// after each epoch and keeping the best epoch's weights; progress, per-epoch log lines
/// (`epoch_note` may add to them) and Ctrl-C handling included.
#[allow(clippy::too_many_arguments)]
pub(super) fn fit(
    ctx: &mut OpContext,
    model: &Model,
    params: &ParamStore,
    dataset: &Dataset,
    opts: &TrainOptions,
    batch_size: usize,
    mut loss: impl FnMut(&Model, &Batch, &mut ForwardCtx) -> candle_core::Result<Tensor>,
    mut fit: FitOptions,
    mut epoch_note: impl FnMut(&EpochRecord) -> Option<String>,
) -> Result<TrainReport, OpError> {
    let device = ctx.device.clone();
    let label = fit.epoch_label.unwrap_or("epoch");
    let log = &ctx.log;
    if opts.precision != Precision::F32 {
        note(
            log,
            &format!(
                "precision: {} (the linear layers' products in {}; weights, gradients and optimizer state f32{})",
                opts.precision.word(),
                opts.precision.word(),
                if opts.precision == Precision::F16 {
                    "; dynamic loss scaling"
                } else {
                    ""
                }
            ),
        );
    }
    let eval_model = match fit.eval_model.take() {
        Some(m) => m,
        None => Model::new(&model.config(), params.frozen_var_builder(DType::F32, &device))?,
    };
    let selection_split = dataset.selection_split();
    let val_batches = match opts.select {
        Select::Last => {
            note(
                log,
                "select: \"last\": the last epoch's weights are kept (no split selects them)",
            );
            Vec::new()
        }
        Select::Best if dataset.len(selection_split) > 0 => {
            dataset.batches(selection_split, batch_size, None, false, &device)?
        }
        Select::Best => {
            note(
                log,
                &format!("no {selection_split} split to select on: the last epoch's weights are kept"),
            );
            Vec::new()
        }
    };
    let mut validate = |_epoch: usize| -> Result<Validation, TrainError> {
        let ev = evaluate(&eval_model, val_batches.iter().map(|b| (&b.input, &b.labels)))?;
        Ok(Validation {
            accuracy: ev.score(),
            loss: ev.loss,
        })
    };
    let progress = ctx.progress;
    let cancel = ctx.cancel;
    let epochs = opts.epochs;
    let mut on_step = |r: &StepRecord, total: usize| {
        progress.steps(
            &format!("{label} {}/{epochs} · loss {:.4} · step", r.epoch, r.loss),
            r.step as u64,
            total as u64,
        );
    };
    let mut on_epoch = |r: &EpochRecord| {
        let mut line = match (r.val_accuracy, r.val_loss) {
            (Some(a), Some(l)) => format!(
                "{label} {}: {} steps, train loss {:.4}, {selection_split} loss {l:.4}, {}",
                r.epoch,
                r.steps,
                r.train_loss,
                score_text(dataset, a)
            ),
            _ => format!("{label} {}: {} steps, train loss {:.4}", r.epoch, r.steps, r.train_loss),
        };
        if let Some(n) = epoch_note(r) {
            line.push_str("; ");
            line.push_str(&n);
        }
        note(log, &line);
    };
    let interrupted = || cancel.is_interrupted();
    let mut memory = ActivationCheck::new(model, params, opts.precision, &device);
    let seed = opts.seed;
    let checkpoints = ctx.checkpoints.clone();
    let mut resume = match &checkpoints {
        Some(c) => resume::load_latest(c, log, progress)?,
        None => None,
    };
    let mut resumed_from = None;
    let result = loop {
        if let (Some(state), Some(op_state), Some(c)) = (&resume, fit.op_state, &checkpoints) {
            if let Err(why) = (op_state.restore)(state.extra.clone()) {
                // The op cannot take its state back: the checkpoint is of no use.
                resume::discard_unusable(c, &why, log, progress)?;
                (op_state.restore)(serde_json::Value::Null).map_err(OpError::Failed)?;
                resume = None;
            }
        }
        if let Some(state) = &resume {
            let at = state.position;
            resumed_from = Some(at.step as u64);
            let line = format!(
                "resumed from the checkpoint at step {} (epoch {}, batch {}): the steps before it are not run again",
                at.step,
                at.epoch + 1,
                at.batch
            );
            note(log, &line);
            progress.note(&format!("↻ {line}"));
            progress.resumed_at(at.step as u64);
        }
        let mut checkpointer = checkpoints
            .clone()
            .map(|c| StageCheckpointer::new(c, fit.policy, fit.op_state, log, progress));
        let result = train(
            model,
            params,
            opts,
            |epoch| {
                dataset
                    .batches(
                        SplitName::Train,
                        batch_size,
                        Some(derive_seed(seed, &format!("shuffle/epoch{epoch}"))),
                        // Applied only where the dataset allows it (images, `augment: true`).
                        true,
                        &device,
                    )
                    .map_err(|e| TrainError::Failed(e.to_string()))
            },
            |m: &Model, b: &Batch, c: &mut ForwardCtx| {
                memory.before(&b.input)?;
                loss(m, b, c)
            },
            Hooks {
                validate: if val_batches.is_empty() {
                    None
                } else {
                    Some(&mut validate)
                },
                on_step: Some(&mut on_step),
                on_epoch: Some(&mut on_epoch),
                after_update: match fit.after_update.as_mut() {
                    Some(f) => Some(&mut **f),
                    None => None,
                },
                interrupted: Some(&interrupted),
                extra_vars: fit.extra_vars.clone(),
                checkpoint: checkpointer
                    .as_mut()
                    .map(|c| c as &mut dyn crate::ml::resume::Checkpointer),
                resume: resume.take(),
            },
        );
        match (result, &checkpoints) {
            (Err(TrainError::Unusable(why)), Some(c)) => {
                resume::discard_unusable(c, &why, log, progress)?;
                if let Some(op_state) = fit.op_state {
                    (op_state.restore)(serde_json::Value::Null).map_err(OpError::Failed)?;
                }
                resumed_from = None;
            }
            (result, _) => break result,
        }
    };
    ctx.resumed_from = resumed_from;
    let report = result?;
    write_curves(&ctx.out_dir, &report, selection_split, dataset.score_name())?;
    if report.loss_fell() == Some(false) {
        note(
            &ctx.log,
            "warning: the training loss did not fall (the last tenth of the steps is not 5% below the first): \
             did it learn? A model trained from scratch often needs a larger `lr` (3e-4 or more) and more epochs",
        );
    }
    if report.selected() {
        ctx.selection.merge(Selection::on(selection_split, dataset));
    }
    Ok(report)
}

/// Appends a line to a stage's log (a log that cannot be written is no reason to fail a stage).
fn note(log: &std::fs::File, line: &str) {
    let mut log = log;
    let _ = writeln!(log, "{line}");
}

/// Saves the trained model (HF layout, with the dataset's tokenizer) and `train_metrics.json`
/// (the run's details, `extra` merged in), and returns the op's headline metrics.
#[allow(clippy::too_many_arguments)]
pub(super) fn finish(
    ctx: &mut OpContext,
    source: &str,
    model: &Model,
    params: &ParamStore,
    dataset: &Dataset,
    report: &TrainReport,
    batch_size: usize,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Result<OpOutput, OpError> {
    ctx.progress.message("saving");
    let config = model.config();
    crate::ml::save_pretrained(&ctx.out_dir, &config, params)?;
    if let Some(tok) = &dataset.tokenizer {
        tok.save(&ctx.out_dir)?;
    }
    if let Some(e) = report.best_epoch {
        let _ = writeln!(
            ctx.log,
            "kept the weights of epoch {e}{}",
            report
                .best_accuracy()
                .map(|a| format!(" ({} {})", dataset.selection_split(), score_text(dataset, a)))
                .unwrap_or_default()
        );
    }
    let n_params = params.num_parameters();
    write_train_metrics(ctx, source, n_params, dataset, report, batch_size, extra)?;
    let mut out = OpOutput {
        metrics: run_metrics(report, dataset),
    };
    out.metrics.insert("params".into(), n_params as f64);
    Ok(out)
}

/// Writes `train_metrics.json`: the run's setting, its loss curve and epochs, `extra` merged in.
pub(super) fn write_train_metrics(
    ctx: &OpContext,
    source: &str,
    params: usize,
    dataset: &Dataset,
    report: &TrainReport,
    batch_size: usize,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Result<(), OpError> {
    let mut details = serde_json::json!({
        "source": source,
        "params": params,
        "batch_size": batch_size,
        "threads": ctx.threads,
        "train_examples": dataset.len(SplitName::Train),
        "validation_examples": dataset.len(SplitName::Validation),
        "kept_epoch": kept_epoch(report),
        "loss_fell": report.loss_fell(),
        "selection_split": report.selected().then(|| dataset.selection_split().as_str()),
        "selection_examples": report.selected().then(|| dataset.len(dataset.selection_split())),
        "best_epoch": report.best_epoch,
        // What epochs were selected by (and what `val_accuracy` of each epoch holds): accuracy,
        // or a regression's Pearson correlation.
        "selection_metric": dataset.score_name(),
        (format!("best_{}", dataset.score_name())): report.best_accuracy(),
        "planned_steps": report.planned_steps,
        "warmup_steps": report.warmup_steps,
        "epochs": report.epochs,
        "steps": report.steps,
    });
    if let Some(map) = details.as_object_mut() {
        map.extend(extra);
    }
    let path = ctx.out_dir.join("train_metrics.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&details).unwrap_or_default())
        .map_err(|e| OpError::Failed(format!("{}: {e}", path.display())))
}

/// The training curves as CSV, for spreadsheets, plotting scripts and the report's curves
/// ([`crate::report::Curve::read`]): [`STEPS_CSV`] and [`EPOCHS_CSV`].
/// `metric` names what each epoch was scored by (`accuracy`, or `pearson` for a regression).
pub(super) fn write_curves(
    dir: &Path,
    report: &TrainReport,
    selection: SplitName,
    metric: &str,
) -> Result<(), OpError> {
    let mut steps = String::from("step,epoch,loss,lr,grad_norm\n");
    for s in &report.steps {
        steps.push_str(&format!("{},{},{},{},{}\n", s.step, s.epoch, s.loss, s.lr, s.grad_norm));
    }
    let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    let mut epochs = format!("epoch,steps,train_loss,{selection}_loss,{selection}_{metric}\n");
    for e in &report.epochs {
        epochs.push_str(&format!(
            "{},{},{},{},{}\n",
            e.epoch,
            e.steps,
            e.train_loss,
            opt(e.val_loss),
            opt(e.val_accuracy)
        ));
    }
    for (name, text) in [(STEPS_CSV, steps), (EPOCHS_CSV, epochs)] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| OpError::Failed(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

/// Which epoch's weights a run kept: `best` (chosen on the selection split) or `last`.
fn kept_epoch(report: &TrainReport) -> &'static str {
    if report.selected() {
        "best"
    } else {
        "last"
    }
}

/// A selection score in words: `accuracy 81.25%`, or for a regression `Pearson 0.8123`.
pub(super) fn score_text(dataset: &Dataset, score: f64) -> String {
    if dataset.is_regression() {
        format!("Pearson {score:.4}")
    } else {
        format!("accuracy {:.2}%", 100.0 * score)
    }
}

/// A training run's headline metrics: the kept epoch's validation accuracy and loss and its
/// number when it was selected, the last epoch's training loss, and the epochs and steps taken.
pub(super) fn run_metrics(report: &TrainReport, dataset: &Dataset) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    // The selection score: accuracy, or a regression's Pearson correlation.
    if let Some(a) = report.best_accuracy() {
        m.insert(dataset.score_name().into(), a);
    }
    if let Some(l) = report.final_loss() {
        m.insert("loss".into(), l);
    }
    if let Some(l) = report
        .best_epoch
        .and_then(|b| report.epochs.iter().find(|e| e.epoch == b))
        .and_then(|e| e.val_loss)
    {
        m.insert("val_loss".into(), l);
    }
    m.insert("epochs".into(), report.epochs.len() as f64);
    if let Some(b) = report.best_epoch.filter(|_| report.selected()) {
        m.insert("best_epoch".into(), b as f64);
    }
    m.insert("steps".into(), report.total_steps() as f64);
    m
}

/// Helpers for the op tests: a hand-built stage context on synthetic data.
#[cfg(test)]
pub(super) mod testing {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use super::*;
    use crate::ops::cancel::Cancel;
    use crate::ops::progress::Progress;
    use crate::value::{Params, Spec, StageId};

    /// A spec value of constructor `ctor` with these integer/float arguments.
    pub fn spec(ctor: &str, args: &[(&str, Value)]) -> Value {
        let params: Params = args.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        Value::Spec(Arc::new(Spec {
            ctor: crate::registry::lookup(ctor).expect("registered"),
            params,
            label: Some(format!("test_{ctor}")),
        }))
    }

    /// A small synthetic text task (512 training, 256 validation examples, 64 ids).
    pub fn text_data() -> Value {
        spec(
            "synthetic_text",
            &[
                ("seed", Value::Int(3)),
                ("classes", Value::Int(2)),
                ("train_size", Value::Int(512)),
                ("val_size", Value::Int(256)),
                ("test_size", Value::Int(256)),
                ("max_len", Value::Int(24)),
                ("vocab_size", Value::Int(64)),
                ("noise", Value::Float(0.1)),
            ],
        )
    }

    /// A 1-layer BERT of width 32 (its vocab_size left at BERT's 30522: the op resizes it).
    pub fn tiny_bert() -> Value {
        spec(
            "bert",
            &[
                ("layers", Value::Int(1)),
                ("hidden", Value::Int(32)),
                ("heads", Value::Int(2)),
                ("intermediate", Value::Int(64)),
                ("vocab_size", Value::Int(30522)),
                ("max_position", Value::Int(32)),
                ("dropout", Value::Float(0.1)),
                ("attention_dropout", Value::Float(0.1)),
            ],
        )
    }

    /// A small generated image task (3 classes, 96 training and 48 validation 16 px images).
    pub fn image_data() -> Value {
        spec(
            "synthetic_images",
            &[
                ("seed", Value::Int(1)),
                ("classes", Value::Int(3)),
                ("train_size", Value::Int(96)),
                ("val_size", Value::Int(48)),
                ("image_size", Value::Int(16)),
            ],
        )
    }

    /// A 1-layer ViT of width 32 for [`image_data`] (patch 4, no dropout).
    pub fn tiny_vit() -> Value {
        spec(
            "vit",
            &[
                ("layers", Value::Int(1)),
                ("hidden", Value::Int(32)),
                ("heads", Value::Int(2)),
                ("patch", Value::Int(4)),
                ("image_size", Value::Int(16)),
                ("channels", Value::Int(3)),
                ("intermediate", Value::Int(64)),
                ("dropout", Value::Float(0.0)),
            ],
        )
    }

    /// Runs `op` with `params` into `out`; `stage_dir` is every upstream stage's output.
    /// Returns the result and the log.
    pub fn run_op(
        op: &'static str,
        params: &Params,
        out: &Path,
        stage_dir: &Path,
        cancel: &Cancel,
        threads: usize,
    ) -> (Result<OpOutput, OpError>, String) {
        let stage_dir = stage_dir.to_path_buf();
        run_op_with(op, params, out, &move |_: StageId| stage_dir.clone(), cancel, threads)
    }

    /// Runs `op` with `params` into `out`; `stage_dir(id)` is upstream stage `id`'s output.
    /// Returns the result and the log.
    pub fn run_op_with(
        op: &'static str,
        params: &Params,
        out: &Path,
        stage_dir: &(dyn Fn(StageId) -> PathBuf + Sync),
        cancel: &Cancel,
        threads: usize,
    ) -> (Result<OpOutput, OpError>, String) {
        std::fs::create_dir_all(out).unwrap();
        let log_path = out.with_extension("log");
        let log = std::fs::File::create(&log_path).unwrap();
        let upstream = |id: StageId| super::super::Upstream {
            name: format!("stage{}", id.0),
            shown: format!("stage{}", id.0),
            op: "train",
            params: Params::new(),
            key: format!("stage{}", id.0),
        };
        let progress = Progress::hidden();
        let mut ctx = OpContext {
            op,
            params,
            out_dir: out.to_path_buf(),
            input_dir: stage_dir,
            upstream: &upstream,
            pipeline_dir: out.to_path_buf(),
            log,
            progress: &progress,
            cancel,
            threads,
            device: candle_core::Device::Cpu,
            gpus: Vec::new(),
            cache_dir: out.with_extension("cache"),
            checkpoints: None,
            resumed_from: None,
            key_lock: None,
            selection: Default::default(),
        };
        let r = super::super::execute(&mut ctx);
        drop(ctx);
        (r, std::fs::read_to_string(&log_path).unwrap())
    }

    /// `train` parameters: the tiny BERT (or `model`) on the synthetic task.
    pub fn train_params(model: Value, epochs: i64, seed: i64) -> Params {
        let mut p = Params::new();
        p.insert("model".into(), model);
        p.insert("data".into(), text_data());
        p.insert("epochs".into(), Value::Int(epochs));
        p.insert("batch_size".into(), Value::Int(16));
        p.insert("lr".into(), Value::Float(3e-3));
        p.insert("weight_decay".into(), Value::Float(0.01));
        p.insert("warmup".into(), Value::Float(0.1));
        p.insert("grad_clip".into(), Value::Float(1.0));
        p.insert("seed".into(), Value::Int(seed));
        p
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::ops::cancel::Cancel;
    use crate::value::StageId;

    #[test]
    fn an_image_folders_warnings_go_to_the_stage_log() {
        let dir = crate::data::images::tests::tiny_folder();
        let path = Value::Path(std::sync::Arc::new(crate::value::PathValue {
            written: "tiny".into(),
            resolved: dir.path().to_path_buf(),
            span: crate::source::Span::new(crate::source::FileId(0), 0, 0),
        }));
        let data = spec(
            "image_folder",
            &[
                ("path", path),
                ("image_size", Value::Int(8)),
                ("augment", Value::Bool(false)),
            ],
        );
        let mut log = Vec::new();
        load_dataset(&data, None, dir.path(), &mut log).unwrap();
        let log = String::from_utf8(log).unwrap();
        assert!(
            log.starts_with("warning: 1 file in ") && log.contains("(e.g. a_cls/notes.txt)"),
            "{log}"
        );
    }

    #[test]
    fn trains_a_tiny_bert_that_beats_chance_bit_identically_twice() {
        let dir = tempfile::tempdir().unwrap();
        let params = train_params(tiny_bert(), 4, 1);
        let (a, log) = run_op(
            "train",
            &params,
            &dir.path().join("a"),
            dir.path(),
            &Cancel::default(),
            2,
        );
        let a = a.unwrap();
        assert_eq!(a.metrics.keys().next().map(String::as_str), Some("accuracy"));
        let acc = a.metrics["accuracy"];
        // Chance is 50% (balanced classes); the task's ceiling is about 90% (10% label noise).
        assert!(acc > 0.62, "validation accuracy {acc}\n{log}");
        assert_eq!(a.metrics["steps"], 128.0);
        assert_eq!(a.metrics["epochs"], 4.0);
        assert!(a.metrics["params"] > 10_000.0);
        assert!(log.contains("sized to the dataset's tokenizer, 64 tokens"), "{log}");
        // The HF directory: config with labels and the tokenizer's vocabulary, weights, tokenizer.
        let out = dir.path().join("a");
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["vocab_size"], 64);
        assert_eq!(config["id2label"]["1"], "class_1");
        for f in ["model.safetensors", "tokenizer.json", "vocab.txt", "train_metrics.json"] {
            assert!(out.join(f).is_file(), "{f} missing");
        }
        let tm: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("train_metrics.json")).unwrap()).unwrap();
        assert_eq!(tm["steps"].as_array().unwrap().len(), 128);
        assert_eq!(tm["epochs"].as_array().unwrap().len(), 4);
        assert_eq!(tm["best_accuracy"].as_f64(), Some(acc));
        // Same seed, same threads: the same bytes.
        let (b, _) = run_op(
            "train",
            &params,
            &dir.path().join("b"),
            dir.path(),
            &Cancel::default(),
            2,
        );
        assert_eq!(b.unwrap().metrics, a.metrics);
        let weights = |d: &str| std::fs::read(dir.path().join(d).join("model.safetensors")).unwrap();
        assert!(weights("a") == weights("b"), "two runs with the same seed differ");
        // Another seed: other weights.
        let other = train_params(tiny_bert(), 1, 2);
        run_op(
            "train",
            &other,
            &dir.path().join("c"),
            dir.path(),
            &Cancel::default(),
            2,
        )
        .0
        .unwrap();
        assert!(weights("a") != weights("c"));
    }

    #[test]
    fn trains_on_from_an_upstream_stage_output() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first");
        let mut params = train_params(tiny_bert(), 1, 1);
        params.insert("max_steps".into(), Value::Int(8));
        let (r, _) = run_op("train", &params, &first, dir.path(), &Cancel::default(), 1);
        assert_eq!(r.unwrap().metrics["steps"], 8.0);
        // The next stage starts from the first one's output directory.
        let mut params = train_params(Value::Stage(StageId(0)), 1, 2);
        params.insert("max_steps".into(), Value::Int(4));
        let (r, log) = run_op(
            "train",
            &params,
            &dir.path().join("second"),
            &first,
            &Cancel::default(),
            1,
        );
        let m = r.unwrap().metrics;
        assert_eq!(m["steps"], 4.0);
        assert!(log.contains("loaded") && log.contains("0 initialised"), "{log}");
    }

    #[test]
    fn an_interrupted_run_stops_with_nothing_written() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = Cancel::default();
        cancel.interrupt();
        let params = train_params(tiny_bert(), 3, 1);
        let out = dir.path().join("x");
        let (r, _) = run_op("train", &params, &out, dir.path(), &cancel, 1);
        assert_eq!(r.unwrap_err(), OpError::Interrupted);
        assert!(!out.join("model.safetensors").exists());
    }

    #[test]
    fn trains_a_tiny_vit_on_generated_images() {
        let dir = tempfile::tempdir().unwrap();
        let (data, vit) = (image_data(), tiny_vit());
        let mut params = train_params(vit, 2, 1);
        params.insert("data".into(), data);
        let out = dir.path().join("v");
        let (r, log) = run_op("train", &params, &out, dir.path(), &Cancel::default(), 1);
        let m = r.unwrap().metrics;
        assert_eq!(m["steps"], 12.0, "{log}");
        assert!(m["accuracy"] > 0.0);
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["model_type"], "vit");
        assert_eq!(config["image_size"], 16);
        assert!(!out.join("tokenizer.json").exists(), "images need no tokenizer");
    }

    /// Fine-tunes the real all-MiniLM-L6-v2 for two steps on the SST-2 sample (shared data only).
    #[test]
    fn fine_tunes_a_pretrained_checkpoint_with_its_tokenizer() {
        let Some(data) = std::env::var_os("RKD_SHARED_DATA").map(PathBuf::from) else {
            crate::say!("skipped: RKD_SHARED_DATA is not set");
            return;
        };
        let model_dir = data.join("../models/all-MiniLM-L6-v2");
        if !model_dir.join("model.safetensors").is_file() {
            crate::say!("skipped: {} has no model.safetensors", model_dir.display());
            return;
        }
        let path = |p: PathBuf| {
            Value::Path(std::sync::Arc::new(crate::value::PathValue {
                written: p.display().to_string(),
                resolved: p,
                span: crate::source::Span::new(crate::source::FileId(0), 0, 0),
            }))
        };
        let sst2 = spec(
            "glue_sst2",
            &[("path", path(data.join("sst2-sample"))), ("max_len", Value::Int(64))],
        );
        let mut params = train_params(spec("pretrained", &[("path", path(model_dir))]), 1, 0);
        params.insert("data".into(), sst2);
        params.insert("max_steps".into(), Value::Int(2));
        params.insert("lr".into(), Value::Float(1e-4));
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ft");
        let (r, log) = run_op("train", &params, &out, dir.path(), &Cancel::default(), 2);
        let m = r.unwrap().metrics;
        assert_eq!(m["steps"], 2.0);
        assert!(log.contains("103 tensors loaded, 2 initialised"), "{log}");
        // The checkpoint's own vocabulary travels with the fine-tuned model.
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["vocab_size"], 30522);
        assert_eq!(config["id2label"]["1"], "positive");
        assert!(out.join("tokenizer.json").is_file());
    }

    #[test]
    fn mismatched_model_and_data_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let vit = spec(
            "vit",
            &[
                ("layers", Value::Int(1)),
                ("hidden", Value::Int(16)),
                ("heads", Value::Int(2)),
                ("patch", Value::Int(4)),
                ("image_size", Value::Int(8)),
                ("channels", Value::Int(3)),
            ],
        );
        let params = train_params(vit, 1, 1);
        let (r, _) = run_op(
            "train",
            &params,
            &dir.path().join("x"),
            dir.path(),
            &Cancel::default(),
            1,
        );
        assert_eq!(
            r.unwrap_err().to_string(),
            "a ViT model needs an image dataset, not text"
        );
        let params = train_params(spec("pretrained", &[]), 1, 1);
        let (r, _) = run_op(
            "train",
            &params,
            &dir.path().join("y"),
            dir.path(),
            &Cancel::default(),
            1,
        );
        assert!(r.unwrap_err().to_string().contains("needs `path:`"));
    }
}

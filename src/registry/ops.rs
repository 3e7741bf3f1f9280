//! The stage ops: each call creates one content-hashed stage.

use super::bounds::{MAX_BATCH, MAX_EPOCHS, MAX_OPTIMISER_STEPS, MAX_RANK, MAX_RETRIES};
use super::schema::{p, ArgProblem, Default as D, OpKind, Output, ParamSchema, Range, Ty};
use crate::keyword::Keyword;
use crate::ml::distill::FusionKind;
use crate::ml::prune::{Method, Scope};
use crate::ml::student::StudentInit;
use crate::ml::train::{Precision, Select};
use crate::value::{OpSchema, Params, Value};

const DATA: ParamSchema = p(
    "data",
    Ty::Dataset,
    D::Required,
    None,
    "the dataset to train on (and select epochs on: its holdout, else validation)",
);
const MEASURED_DATA: ParamSchema = p(
    "data",
    Ty::Dataset,
    D::Required,
    None,
    "the dataset whose split (`split:`) is measured",
);
const PREDICT_DATA: ParamSchema = p(
    "data",
    Ty::Dataset,
    D::Required,
    None,
    "the dataset whose training split the teacher predicts",
);
const SELECT: ParamSchema = p(
    "select",
    Ty::Enum(Select::WORDS),
    D::Str("best"),
    None,
    "keep the epoch best on the selection split (validation, or `holdout:` of the data), or the last",
);
const PRECISION: ParamSchema = p(
    "precision",
    Ty::Enum(Precision::WORDS),
    D::Str("f32"),
    None,
    "what the linear layers compute in: f32, or bf16 / f16 (mixed precision: weights and optimizer state stay f32; f16 with loss scaling)",
);
const EPOCHS: ParamSchema = p(
    "epochs",
    Ty::Int,
    D::Int(3),
    Some(Range::closed(1.0, MAX_EPOCHS)),
    "passes over the training split",
);
/// `epochs` of the ops whose model may start from random weights (see [`scratch_defaults`]).
const SCRATCH_EPOCHS_PARAM: ParamSchema = p(
    EPOCHS.name,
    EPOCHS.ty,
    EPOCHS.default,
    EPOCHS.range,
    "passes over the training split (5 when the model starts from random weights)",
);
/// The default batch size of the training ops (prune's fine-tuning uses it too).
pub const DEFAULT_BATCH_SIZE: i64 = 32;

const BATCH: ParamSchema = p(
    "batch_size",
    Ty::Int,
    D::Int(DEFAULT_BATCH_SIZE),
    Some(Range::closed(1.0, MAX_BATCH)),
    "examples per optimiser step",
);
const LR: ParamSchema = p(
    "lr",
    Ty::Float,
    D::Float(1e-4),
    Some(Range::above(0.0)),
    "peak AdamW learning rate (3e-4 when the model starts from random weights: an architecture)",
);
/// `prune`'s learning rate: its model is always trained weights.
const FINETUNE_LR: ParamSchema = p(
    LR.name,
    LR.ty,
    LR.default,
    LR.range,
    "peak AdamW learning rate of the masked fine-tuning",
);

/// The learning rate and epochs a model trained from random weights gets unless told otherwise:
/// 1e-4 × 3 epochs suits fine-tuning a pretrained model, but leaves a small model trained from
/// scratch at the majority class.
const SCRATCH_LR: f64 = 3e-4;
const SCRATCH_EPOCHS: i64 = 5;

/// Whether a model argument is an architecture (random weights), not a checkpoint or a stage.
fn is_architecture(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::Spec(s)) if super::constructors::ARCHITECTURES.iter().any(|a| std::ptr::eq(*a, s.ctor)))
}

/// Fills `lr` and `epochs` for training from scratch when they were not given.
fn scratch_defaults(params: &mut Params) {
    params.entry("lr".into()).or_insert(Value::Float(SCRATCH_LR));
    params.entry("epochs".into()).or_insert(Value::Int(SCRATCH_EPOCHS));
}

/// `train`: a model given as an architecture trains from scratch.
fn derive_train(params: &mut Params) {
    if is_architecture(params.get("model")) {
        scratch_defaults(params);
    }
}

/// `distill`/`fuse`: a student architecture trains from scratch unless it starts from the
/// teacher's layers.
fn derive_student(params: &mut Params) {
    let from_teacher =
        matches!(params.get("init"), Some(Value::Str(s)) if s.as_ref() == StudentInit::TeacherLayers.word());
    if is_architecture(params.get("student")) && !from_teacher {
        scratch_defaults(params);
    }
}
const WD: ParamSchema = p(
    "weight_decay",
    Ty::Float,
    D::Float(0.01),
    Some(Range::at_least(0.0)),
    "AdamW weight decay (not on biases and LayerNorm)",
);
const WARMUP: ParamSchema = p(
    "warmup",
    Ty::Float,
    D::Float(0.1),
    Some(Range::closed(0.0, 1.0)),
    "fraction of steps with linear warm-up, then linear decay",
);
const CLIP: ParamSchema = p(
    "grad_clip",
    Ty::Float,
    D::Float(1.0),
    Some(Range::above(0.0)),
    "global gradient-norm clipping",
);
const SEED: ParamSchema = p(
    "seed",
    Ty::Int,
    D::Int(0),
    Some(Range::at_least(0.0)),
    "random seed (initialisation, shuffling, dropout)",
);
/// The seed of a fine-tuning that initialises nothing (`prune`).
const FINETUNE_SEED: ParamSchema = p(
    SEED.name,
    SEED.ty,
    SEED.default,
    SEED.range,
    "random seed (shuffling, dropout)",
);
const MAX_STEPS: ParamSchema = p(
    "max_steps",
    Ty::Int,
    D::Optional,
    Some(Range::closed(1.0, MAX_OPTIMISER_STEPS)),
    "stop after this many optimiser steps",
);
const TEMPERATURE: ParamSchema = p(
    "temperature",
    Ty::Float,
    D::Float(4.0),
    Some(Range::above(0.0)),
    "softmax temperature T of the soft targets",
);
const ALPHA: ParamSchema = p(
    "alpha",
    Ty::Float,
    D::Float(0.5),
    Some(Range::closed(0.0, 1.0)),
    "weight of the hard-label loss; the soft loss gets 1 - alpha",
);
const T2: ParamSchema = p(
    "t2_scale",
    Ty::Bool,
    D::Bool(true),
    None,
    "multiply the soft loss by T^2 (Hinton); false is the TextBrewer convention",
);
const INIT: ParamSchema = p(
    "init",
    Ty::Enum(StudentInit::WORDS),
    D::Str("random"),
    None,
    "student initialisation: random, or every k-th teacher layer",
);
const INTERMEDIATE: ParamSchema = p(
    "intermediate",
    Ty::Record,
    D::Optional,
    None,
    "layer losses, e.g. {hidden: 1.0, attention: 1.0, map: \"uniform\"}",
);
const STUDENT: ParamSchema = p(
    "student",
    Ty::Arch,
    D::Required,
    None,
    "the student architecture (or checkpoint)",
);
crate::keywords! {
    /// The split `eval` and `report` measure on (`split:`).
    pub enum SplitChoice {
        /// The test split when the dataset has one, else validation.
        Auto = "auto",
        /// The test split.
        Test = "test",
        /// The validation split.
        Validation = "validation",
        /// The training split.
        Train = "train",
    }
}

const SPLIT: ParamSchema = p(
    "split",
    Ty::Enum(SplitChoice::WORDS),
    D::Str("auto"),
    None,
    "split to measure on: auto is test when the data has one, else validation; never one that selected the model",
);

const RESOURCES: ParamSchema = p(
    "resources",
    Ty::Record,
    D::Optional,
    None,
    "what a Slurm job of this stage asks for, e.g. {cpus: 8, mem: \"16G\", time: \"2h\", gpus: 1}",
);

const CHECKPOINT_EVERY: ParamSchema = p(
    "checkpoint_every",
    Ty::Int,
    D::Optional,
    Some(Range::closed(1.0, MAX_OPTIMISER_STEPS)),
    "also write an in-stage checkpoint every this many optimiser steps (not part of the stage key)",
);
const CHECKPOINT_MINUTES: ParamSchema = p(
    "checkpoint_minutes",
    Ty::Float,
    D::Float(10.0),
    Some(Range::at_least(0.0)),
    "write an in-stage checkpoint after this many minutes of training; 0: never by time (not part of the stage key)",
);
const RETRIES: ParamSchema = p(
    "retries",
    Ty::Int,
    D::Optional,
    Some(Range::closed(0.0, MAX_RETRIES)),
    "rerun the stage this many times when it fails (from its checkpoint, with backoff); default: `rkd run --retries` (not part of the stage key)",
);

crate::op_args! {
    /// What the executors read from any stage's arguments (how it runs, not what it computes).
    pub struct RunArgs {
        resources: Option<Value> = RESOURCES,
        retries: Option<usize> = RETRIES,
    }
}

crate::op_args! {
    /// `train`'s arguments.
    pub struct TrainArgs {
        /// Where training starts: an architecture, a checkpoint or a trained stage.
        model: Value = p(
            "model",
            Ty::Init,
            D::Required,
            None,
            "where training starts: an architecture, a checkpoint, or a trained stage (fine-tuning)",
        ),
        /// The dataset.
        data: Value = DATA,
        epochs: usize = SCRATCH_EPOCHS_PARAM,
        select: Select = SELECT,
        precision: Precision = PRECISION,
        checkpoint_every: Option<usize> = CHECKPOINT_EVERY,
        checkpoint_minutes: f64 = CHECKPOINT_MINUTES,
        batch_size: usize = BATCH,
        lr: f64 = LR,
        weight_decay: f64 = WD,
        warmup: f64 = WARMUP,
        grad_clip: f64 = CLIP,
        seed: u64 = SEED,
        max_steps: Option<usize> = MAX_STEPS,
        /// Read by the executors, not the op.
        resources: Option<Value> = RESOURCES,
        /// Read by the executors, not the op.
        retries: Option<usize> = RETRIES,
    }
}

/// `train`: supervised training of a model on a dataset.
pub static TRAIN: OpSchema = OpSchema {
    name: "train",
    kind: OpKind::Stage(Output::Model),
    // 4: nothing is recorded as selected when no split selected the epochs.
    version: 4,
    doc: "Train a model on labelled data (AdamW, warm-up then linear decay, best checkpoint kept).",
    params: TrainArgs::PARAMS,
    derive: Some(derive_train),
    check: Some(check_resources),
};

crate::op_args! {
    /// `distill`'s arguments.
    pub struct DistillArgs {
        /// The trained model to learn from.
        teacher: Value = p(
            "teacher",
            Ty::Model,
            D::Required,
            None,
            "the trained model to learn from",
        ),
        /// The student architecture (or checkpoint).
        student: Value = STUDENT,
        /// The dataset.
        data: Value = DATA,
        temperature: f64 = TEMPERATURE,
        alpha: f64 = ALPHA,
        t2_scale: bool = T2,
        init: StudentInit = INIT,
        intermediate: Option<Value> = INTERMEDIATE,
        epochs: usize = SCRATCH_EPOCHS_PARAM,
        select: Select = SELECT,
        precision: Precision = PRECISION,
        checkpoint_every: Option<usize> = CHECKPOINT_EVERY,
        checkpoint_minutes: f64 = CHECKPOINT_MINUTES,
        batch_size: usize = BATCH,
        lr: f64 = LR,
        weight_decay: f64 = WD,
        warmup: f64 = WARMUP,
        grad_clip: f64 = CLIP,
        seed: u64 = SEED,
        max_steps: Option<usize> = MAX_STEPS,
        /// Read by the executors, not the op.
        resources: Option<Value> = RESOURCES,
        /// Read by the executors, not the op.
        retries: Option<usize> = RETRIES,
    }
}

/// `distill`: Hinton knowledge distillation from one teacher.
pub static DISTILL: OpSchema = OpSchema {
    name: "distill",
    kind: OpKind::Stage(Output::Model),
    // 4: nothing is recorded as selected when no split selected the epochs.
    version: 4,
    doc: "Distil a teacher into a student: alpha*CE(labels) + (1-alpha)*T^2*KL(teacher/T || student/T).",
    params: DistillArgs::PARAMS,
    derive: Some(derive_student),
    check: Some(check_resources),
};

crate::op_args! {
    /// `fuse`'s arguments.
    pub struct FuseArgs {
        /// The trained teachers.
        teachers: Vec<Value> = p(
            "teachers",
            Ty::List(&Ty::Model),
            D::Required,
            Some(Range::at_least(1.0)),
            "the trained teachers",
        ),
        /// The student architecture (or checkpoint).
        student: Value = STUDENT,
        /// The dataset.
        data: Value = DATA,
        /// How teacher logits are combined.
        fusion: FusionKind = p(
            "fusion",
            Ty::Enum(FusionKind::WORDS),
            D::Str("mean"),
            None,
            "how teacher logits are combined per example",
        ),
        /// Fixed teacher weights for fusion "weighted".
        weights: Option<Vec<f64>> = p(
            "weights",
            Ty::List(&Ty::Float),
            D::Optional,
            None,
            "fixed teacher weights for fusion \"weighted\" (sum to 1)",
        ),
        temperature: f64 = TEMPERATURE,
        alpha: f64 = ALPHA,
        t2_scale: bool = T2,
        init: StudentInit = INIT,
        epochs: usize = SCRATCH_EPOCHS_PARAM,
        select: Select = SELECT,
        precision: Precision = PRECISION,
        checkpoint_every: Option<usize> = CHECKPOINT_EVERY,
        checkpoint_minutes: f64 = CHECKPOINT_MINUTES,
        batch_size: usize = BATCH,
        lr: f64 = LR,
        weight_decay: f64 = WD,
        warmup: f64 = WARMUP,
        grad_clip: f64 = CLIP,
        seed: u64 = SEED,
        max_steps: Option<usize> = MAX_STEPS,
        /// Read by the executors, not the op.
        resources: Option<Value> = RESOURCES,
        /// Read by the executors, not the op.
        retries: Option<usize> = RETRIES,
    }
}

/// `fuse`: multi-agent distillation from several teachers' fused predictions.
pub static FUSE: OpSchema = OpSchema {
    name: "fuse",
    kind: OpKind::Stage(Output::Model),
    // 4: nothing is recorded as selected when no split selected the epochs.
    version: 4,
    doc: "Multi-agent distillation: one student learns from the fused predictions of several teachers.",
    params: FuseArgs::PARAMS,
    derive: Some(derive_student),
    check: Some(check_fuse_and_resources),
};

fn check_fuse(params: &Params) -> Vec<ArgProblem> {
    // Arguments of the wrong type are reported by the type check; nothing to add here.
    let Ok(args) = FuseArgs::from_params(params) else {
        return Vec::new();
    };
    let teachers = args.teachers.len();
    match (args.fusion, args.weights) {
        (FusionKind::Weighted, None) => {
            vec![("fusion", "fusion \"weighted\" needs `weights:`, one per teacher".into())]
        }
        (FusionKind::Weighted, Some(ws)) => {
            let mut problems = Vec::new();
            if ws.len() != teachers {
                problems.push((
                    "weights",
                    format!(
                        "{} weights for {} teacher{}",
                        ws.len(),
                        teachers,
                        if teachers == 1 { "" } else { "s" }
                    ),
                ));
            }
            let sum: f64 = ws.iter().sum();
            if (sum - 1.0).abs() > 1e-6 {
                problems.push(("weights", format!("the weights sum to {sum}, not 1")));
            }
            if ws.iter().any(|w| *w < 0.0) {
                problems.push(("weights", "weights must not be negative".into()));
            }
            problems
        }
        (other, Some(_)) => vec![(
            "weights",
            format!(
                "`weights:` is only used with fusion \"weighted\", not \"{}\"",
                other.word()
            ),
        )],
        _ => Vec::new(),
    }
}

crate::op_args! {
    /// `predict`'s arguments.
    pub struct PredictArgs {
        /// The model whose predictions are stored.
        model: Value = p(
            "model",
            Ty::Model,
            D::Required,
            None,
            "the model whose predictions are stored",
        ),
        /// The dataset.
        data: Value = PREDICT_DATA,
        /// Examples per forward pass.
        batch_size: usize = p(
            "batch_size",
            Ty::Int,
            D::Int(64),
            Some(Range::closed(1.0, MAX_BATCH)),
            "examples per forward pass",
        ),
        /// Read by the executors, not the op.
        resources: Option<Value> = RESOURCES,
        /// Read by the executors, not the op.
        retries: Option<usize> = RETRIES,
    }
}

/// `predict`: a teacher's logits on the training split, stored once for every student.
pub static PREDICT: OpSchema = OpSchema {
    name: "predict",
    kind: OpKind::Stage(Output::Predictions),
    version: 3,
    doc: "A model's logits on every training example. `distill` and `fuse` create one per teacher and \
          dataset, so students that share a teacher share its predictions.",
    params: PredictArgs::PARAMS,
    derive: None,
    check: Some(check_resources),
};

crate::op_args! {
    /// `qlora`'s arguments.
    pub struct QloraArgs {
        /// The trained model to quantise and adapt.
        base: Value = p(
            "base",
            Ty::Model,
            D::Required,
            None,
            "the trained model to quantise and adapt",
        ),
        /// The dataset.
        data: Value = DATA,
        /// LoRA rank r.
        rank: usize = p("rank", Ty::Int, D::Int(8), Some(Range::closed(1.0, MAX_RANK)), "LoRA rank r"),
        /// LoRA alpha.
        alpha: f64 = p(
            "alpha",
            Ty::Float,
            D::Float(16.0),
            Some(Range::above(0.0)),
            "LoRA alpha; the update is scaled by alpha/r",
        ),
        /// Dropout on the adapter input.
        dropout: f64 = p(
            "dropout",
            Ty::Float,
            D::Float(0.05),
            Some(Range::half_open(0.0, 1.0)),
            "dropout on the adapter input",
        ),
        /// Linear modules that get adapters.
        targets: Vec<String> = p(
            "targets",
            Ty::List(&Ty::Str),
            D::Strs(&["query", "value"]),
            Some(Range::at_least(1.0)),
            "linear modules that get adapters",
        ),
        /// Quantise the absmax constants too.
        double_quant: bool = p(
            "double_quant",
            Ty::Bool,
            D::Bool(true),
            None,
            "quantise the absmax constants too (about 4.127 instead of 4.5 bits/param)",
        ),
        /// NF4 block size.
        block_size: usize = p(
            "block_size",
            Ty::Int,
            D::Int(64),
            Some(Range::closed(32.0, 4096.0)),
            "NF4 block size (a power of two)",
        ),
        /// Also write a merged dense checkpoint.
        merge: bool = p(
            "merge",
            Ty::Bool,
            D::Bool(false),
            None,
            "also write a merged dense checkpoint",
        ),
        epochs: usize = EPOCHS,
        select: Select = SELECT,
        precision: Precision = PRECISION,
        checkpoint_every: Option<usize> = CHECKPOINT_EVERY,
        checkpoint_minutes: f64 = CHECKPOINT_MINUTES,
        batch_size: usize = BATCH,
        /// Peak AdamW learning rate.
        lr: f64 = p(
            "lr",
            Ty::Float,
            D::Float(2e-4),
            Some(Range::above(0.0)),
            "peak AdamW learning rate",
        ),
        seed: u64 = SEED,
        max_steps: Option<usize> = MAX_STEPS,
        /// Read by the executors, not the op.
        resources: Option<Value> = RESOURCES,
        /// Read by the executors, not the op.
        retries: Option<usize> = RETRIES,
    }
}

/// `qlora`: NF4-quantised base with trained LoRA adapters.
pub static QLORA: OpSchema = OpSchema {
    name: "qlora",
    kind: OpKind::Stage(Output::Model),
    // 4: nothing is recorded as selected when no split selected the epochs.
    version: 4,
    doc: "QLoRA: freeze the base as 4-bit NF4 and train low-rank adapters (PEFT layout) plus the head.",
    params: QloraArgs::PARAMS,
    derive: None,
    check: Some(check_qlora_and_resources),
};

fn check_qlora(params: &Params) -> Vec<ArgProblem> {
    match QloraArgs::from_params(params) {
        Ok(a) if !(a.block_size as u64).is_power_of_two() => {
            vec![(
                "block_size",
                format!("block size {} is not a power of two", a.block_size),
            )]
        }
        _ => Vec::new(),
    }
}

crate::op_args! {
    /// `prune`'s arguments.
    pub struct PruneArgs {
        /// The trained model to prune.
        model: Value = p("model", Ty::Model, D::Required, None, "the trained model to prune"),
        /// Fraction of prunable weights (or heads) to remove.
        sparsity: f64 = p(
            "sparsity",
            Ty::Float,
            D::Float(0.3),
            Some(Range::half_open(0.0, 1.0)),
            "fraction of prunable weights (or heads) to remove",
        ),
        /// How weights are chosen.
        method: Method = p(
            "method",
            Ty::Enum(Method::WORDS),
            D::Str("l1_unstructured"),
            None,
            "per-layer L1, one global L1 threshold, or structured head removal",
        ),
        /// Which weights.
        scope: Scope = p(
            "scope",
            Ty::Enum(Scope::WORDS),
            D::Str("linear"),
            None,
            "which weights: every linear layer, or the encoder's only (head kept)",
        ),
        /// Epochs of masked fine-tuning.
        finetune_epochs: usize = p(
            "finetune_epochs",
            Ty::Int,
            D::Int(0),
            Some(Range::closed(0.0, MAX_EPOCHS)),
            "epochs of masked fine-tuning after pruning (needs `data:`)",
        ),
        /// Dataset for fine-tuning.
        data: Option<Value> = p("data", Ty::Dataset, D::Optional, None, "dataset for fine-tuning"),
        select: Select = SELECT,
        precision: Precision = PRECISION,
        checkpoint_every: Option<usize> = CHECKPOINT_EVERY,
        checkpoint_minutes: f64 = CHECKPOINT_MINUTES,
        lr: f64 = FINETUNE_LR,
        seed: u64 = FINETUNE_SEED,
        /// Read by the executors, not the op.
        resources: Option<Value> = RESOURCES,
        /// Read by the executors, not the op.
        retries: Option<usize> = RETRIES,
    }
}

/// `prune`: magnitude pruning, optionally followed by masked fine-tuning.
pub static PRUNE: OpSchema = OpSchema {
    name: "prune",
    kind: OpKind::Stage(Output::Model),
    // 4: nothing is recorded as selected when no split selected the epochs; the zeros of a model
    // no `prune` made are weights and count in the amount.
    version: 4,
    doc: "Prune a model: L1 magnitude per layer or globally, or whole attention heads; masks kept while fine-tuning.",
    params: PruneArgs::PARAMS,
    derive: None,
    check: Some(check_prune_and_resources),
};

fn check_prune(params: &Params) -> Vec<ArgProblem> {
    match PruneArgs::from_params(params) {
        Ok(a) if a.finetune_epochs > 0 && a.data.is_none() => {
            vec![("finetune_epochs", "fine-tuning needs a dataset: add `data:`".into())]
        }
        _ => Vec::new(),
    }
}

crate::op_args! {
    /// `eval`'s arguments.
    pub struct EvalArgs {
        /// The model to evaluate.
        model: Value = p("model", Ty::Model, D::Required, None, "the model to evaluate"),
        /// The dataset.
        data: Value = MEASURED_DATA,
        split: SplitChoice = SPLIT,
        /// Examples per forward pass.
        batch_size: usize = p(BATCH.name, BATCH.ty, BATCH.default, BATCH.range, "examples per forward pass"),
        /// Read by the executors, not the op.
        resources: Option<Value> = RESOURCES,
        /// Read by the executors, not the op.
        retries: Option<usize> = RETRIES,
    }
}

/// `eval`: accuracy, sizes and latency of one model.
pub static EVAL: OpSchema = OpSchema {
    name: "eval",
    kind: OpKind::Stage(Output::Metrics),
    version: 3,
    doc: "Evaluate a model: accuracy, per-class accuracy, parameters, nonzeros, bytes on disk, latency.",
    params: EvalArgs::PARAMS,
    derive: None,
    check: Some(check_measured),
};

crate::op_args! {
    /// `report`'s arguments.
    pub struct ReportArgs {
        /// The models to compare.
        models: Vec<Value> = p(
            "models",
            Ty::List(&Ty::Model),
            D::Required,
            Some(Range::at_least(1.0)),
            "the models to compare",
        ),
        /// The dataset.
        data: Value = MEASURED_DATA,
        /// The reference for retention and compression.
        baseline: Option<Value> = p(
            "baseline",
            Ty::Model,
            D::Optional,
            None,
            "the reference for retention and compression (default: the first model)",
        ),
        split: SplitChoice = SPLIT,
        /// Read by the executors, not the op.
        resources: Option<Value> = RESOURCES,
        /// Read by the executors, not the op.
        retries: Option<usize> = RETRIES,
    }
}

/// `report`: the comparison table and plots.
pub static REPORT: OpSchema = OpSchema {
    name: "report",
    kind: OpKind::Stage(Output::Report),
    version: 5,
    doc: "Compare models in one report: accuracy, retention, measured sizes, compression; tables, sweep pivots, plots, training curves.",
    params: ReportArgs::PARAMS,
    derive: None,
    check: Some(check_measured),
};

crate::op_args! {
    /// `require`'s arguments.
    pub struct RequireArgs {
        /// The model that passes the gate.
        model: Value = p(
            "model",
            Ty::Model,
            D::Required,
            None,
            "the model that passes on when the condition holds (what depends on the gate uses it)",
        ),
        /// The stage whose recorded metric is checked.
        measured_by: Option<Value> = p(
            "measured_by",
            Ty::Stage,
            D::Optional,
            None,
            "the stage whose recorded metric is checked, e.g. an eval of the model (default: the model's own stage)",
        ),
        /// The metric's name in metrics.json.
        metric: String = p(
            "metric",
            Ty::Str,
            D::Str("accuracy"),
            None,
            "the metric, as the stage's metrics.json names it (accuracy, mcc, f1, pearson, latency_ms_b1, ...)",
        ),
        /// The lowest value that passes.
        at_least: Option<f64> = p("at_least", Ty::Float, D::Optional, None, "fail when the metric is below this"),
        /// The highest value that passes.
        at_most: Option<f64> = p("at_most", Ty::Float, D::Optional, None, "fail when the metric is above this"),
        /// The stage the drop is measured from.
        baseline: Option<Value> = p(
            "baseline",
            Ty::Stage,
            D::Optional,
            None,
            "a stage whose same metric the value may not fall far below (with max_drop)",
        ),
        /// How far below the baseline's value the metric may fall.
        max_drop: Option<f64> = p(
            "max_drop",
            Ty::Float,
            D::Optional,
            Some(Range::at_least(0.0)),
            "fail when the metric is more than this below the baseline's (absolute: 0.02 = two points of accuracy)",
        ),
        /// Read by the executors, not the op.
        resources: Option<Value> = RESOURCES,
        /// Read by the executors, not the op.
        retries: Option<usize> = RETRIES,
    }
}

/// `require`: a gate on a recorded metric.
pub static REQUIRE: OpSchema = OpSchema {
    name: "require",
    kind: OpKind::Stage(Output::Model),
    version: 1,
    doc: "Gate a model on a recorded metric (at_least, at_most, or max_drop from a baseline): fails, and what depends on it does not run, when the condition does not hold.",
    params: RequireArgs::PARAMS,
    derive: None,
    check: Some(check_require),
};

/// Metrics recorded as fractions from 0 to 1 (percentages are only how they are shown).
const FRACTIONS: [&str; 5] = ["accuracy", "sparsity", "f1", "pruned_accuracy", "baseline_accuracy"];

fn check_require(params: &Params) -> Vec<ArgProblem> {
    let mut problems = check_resources(params);
    let Ok(a) = RequireArgs::from_params(params) else {
        return problems;
    };
    if a.at_least.is_none() && a.at_most.is_none() && a.max_drop.is_none() {
        problems.push((
            "metric",
            "a gate needs a condition: add `at_least:`, `at_most:`, or `baseline:` with `max_drop:`".into(),
        ));
    }
    match (&a.baseline, a.max_drop) {
        (Some(_), None) => problems.push((
            "baseline",
            "a baseline needs `max_drop:` (how far below it the metric may fall)".into(),
        )),
        (None, Some(_)) => problems.push((
            "max_drop",
            "`max_drop` is measured from a baseline: add `baseline:` (a stage that recorded the same metric)".into(),
        )),
        _ => {}
    }
    if let (Some(lo), Some(hi)) = (a.at_least, a.at_most) {
        if lo > hi {
            problems.push((
                "at_most",
                format!("no value passes: at_least {lo} is above at_most {hi}"),
            ));
        }
    }
    // Accuracy-like metrics are fractions: a bound past 1 is a percentage written by mistake.
    if FRACTIONS.contains(&a.metric.as_str()) {
        for (param, bound) in [
            ("at_least", a.at_least),
            ("at_most", a.at_most),
            ("max_drop", a.max_drop),
        ] {
            if let Some(b) = bound.filter(|b| b.abs() > 1.0) {
                problems.push((
                    param,
                    format!(
                        "`{}` is a fraction from 0 to 1, so {param}: {b} can never be what is meant: write {}",
                        a.metric,
                        b / 100.0
                    ),
                ));
            }
        }
    }
    if !matches!(a.model, Value::Stage(_)) && a.measured_by.is_none() {
        problems.push((
            "measured_by",
            "a pretrained model has no recorded metrics: name the stage that measured it, e.g. `measured_by: its_eval`"
                .into(),
        ));
    }
    problems
}

crate::op_args! {
    /// `exec`'s arguments.
    pub struct ExecArgs {
        /// The command.
        cmd: String = p(
            "cmd",
            Ty::Str,
            D::Required,
            None,
            "the command, run with `sh -c` in the pipeline's directory",
        ),
        /// Stages whose outputs the command reads.
        inputs: Vec<Value> = p(
            "inputs",
            Ty::List(&Ty::Stage),
            D::EmptyList,
            None,
            "stages whose outputs the command reads",
        ),
        /// Input files.
        files: Vec<Value> = p(
            "files",
            Ty::List(&Ty::Path),
            D::EmptyList,
            None,
            "input files; their content is part of the key",
        ),
        /// Values passed as environment variables.
        params: Value = p(
            "params",
            Ty::Record,
            D::EmptyRecord,
            None,
            "values passed as RKD_PARAM_<NAME> environment variables",
        ),
        /// Read by the executors, not the op.
        resources: Option<Value> = RESOURCES,
        /// Read by the executors, not the op.
        retries: Option<usize> = RETRIES,
    }
}

/// `exec`: a shell command as a stage.
pub static EXEC: OpSchema = OpSchema {
    name: "exec",
    kind: OpKind::Stage(Output::Files),
    version: 1,
    doc: "Run a shell command as a stage: RKD_OUT is its output directory, RKD_INPUTS its inputs' directories.",
    params: ExecArgs::PARAMS,
    derive: None,
    check: Some(check_resources),
};

fn check_fuse_and_resources(params: &Params) -> Vec<ArgProblem> {
    let mut problems = check_fuse(params);
    problems.extend(check_resources(params));
    problems
}

fn check_qlora_and_resources(params: &Params) -> Vec<ArgProblem> {
    let mut problems = check_qlora(params);
    problems.extend(check_resources(params));
    problems
}

fn check_prune_and_resources(params: &Params) -> Vec<ArgProblem> {
    let mut problems = check_prune(params);
    problems.extend(check_resources(params));
    problems
}

/// The fields a stage's `resources:` record may have.
pub const RESOURCE_FIELDS: &[&str] = &["cpus", "mem", "time", "gpus"];

/// What a stage's Slurm job asks for: the op's defaults, overridden by the stage's `resources:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resources {
    /// CPU cores (`--cpus-per-task`).
    pub cpus: u32,
    /// Memory, as Slurm writes it (`--mem`, e.g. "16G"); None leaves the cluster's default.
    pub mem: Option<String>,
    /// Time limit in Slurm's format (`--time`, e.g. "2:00:00"); None leaves the partition's default.
    pub time: Option<String>,
    /// GPUs (`--gres=gpu:N`); 0 asks for none.
    pub gpus: u32,
}

/// The ops that train weights (and so select epochs): the training loop runs inside them.
pub static TRAINING_OPS: &[&OpSchema] = &[&TRAIN, &DISTILL, &FUSE, &QLORA, &PRUNE];

/// Whether the op of this name trains weights (one of [`TRAINING_OPS`]).
pub fn trains(op: &str) -> bool {
    TRAINING_OPS.iter().any(|o| o.name == op)
}

/// The default resources of a stage op: training ops get more cores and memory than `exec`.
pub fn default_resources(op: &str) -> Resources {
    let (cpus, mem, time) = match op {
        op if trains(op) => (8, Some("16G"), Some("12:00:00")),
        "eval" | "predict" | "report" => (4, Some("8G"), Some("2:00:00")),
        _ => (1, None, None),
    };
    Resources {
        cpus,
        mem: mem.map(String::from),
        time: time.map(String::from),
        gpus: 0,
    }
}

/// A stage's resources: its op's defaults with the fields its `resources:` record gives.
/// The record was checked when the pipeline compiled, so fields that do not parse are ignored.
pub fn resources(op: &str, params: &Params) -> Resources {
    let mut r = default_resources(op);
    let Some(Value::Record(fields)) = params.get("resources") else {
        return r;
    };
    if let Some(Value::Int(n)) = fields.get("cpus") {
        r.cpus = u32::try_from(*n).unwrap_or(r.cpus);
    }
    if let Some(Value::Int(n)) = fields.get("gpus") {
        r.gpus = u32::try_from(*n).unwrap_or(r.gpus);
    }
    if let Some(m) = fields.get("mem").and_then(|v| slurm_mem(v).ok()) {
        r.mem = Some(m);
    }
    if let Some(t) = fields.get("time").and_then(|v| slurm_time(v).ok()) {
        r.time = Some(t);
    }
    r
}

/// `mem:` as Slurm's `--mem`: a whole number of megabytes, or a string like "512M", "16G", "1T".
fn slurm_mem(v: &Value) -> Result<String, String> {
    let bad = || format!("`mem` must be a size like \"16G\", \"512M\" or a number of megabytes, not {v}");
    match v {
        Value::Int(n) if *n > 0 => Ok(format!("{n}M")),
        Value::Str(s) => {
            let s = s.trim();
            let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
                Some((i, _)) => s.split_at(i),
                None => (s, "M"),
            };
            let unit = unit.to_ascii_uppercase();
            let unit = unit.strip_suffix('B').unwrap_or(&unit);
            match (digits.parse::<u64>(), unit) {
                (Ok(n), "K" | "M" | "G" | "T") if n > 0 => Ok(format!("{n}{unit}")),
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

/// `time:` as Slurm's `--time`: minutes as a number, "30m", "2h", "1d", "90s", or Slurm's own
/// forms ("2:00:00", "1-12:00:00").
fn slurm_time(v: &Value) -> Result<String, String> {
    let bad = || format!("`time` must be like \"30m\", \"2h\", \"1d\", \"2:00:00\" or a number of minutes, not {v}");
    match v {
        Value::Int(n) if *n > 0 => Ok(n.to_string()),
        Value::Str(s) => {
            let s = s.trim();
            if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == ':' || c == '-') {
                let ok = s
                    .split([':', '-'])
                    .all(|part| !part.is_empty() && part.parse::<u64>().is_ok());
                return if ok && s.matches('-').count() <= 1 {
                    Ok(s.to_string())
                } else {
                    Err(bad())
                };
            }
            let (num, unit) = s.split_at(s.len().saturating_sub(1));
            let n: u64 = num.parse().map_err(|_| bad())?;
            if n == 0 {
                return Err(bad());
            }
            Ok(match unit {
                "s" => format!("{}:{:02}", n / 60, n % 60),
                "m" => n.to_string(),
                "h" => format!("{n}:00:00"),
                "d" => format!("{n}-0"),
                _ => return Err(bad()),
            })
        }
        _ => Err(bad()),
    }
}

/// `eval` and `report`: the resources, and a `split: "test"` that the dataset is known never to have.
fn check_measured(params: &Params) -> Vec<ArgProblem> {
    let mut problems = check_resources(params);
    let (Some(Value::Str(split)), Some(Value::Spec(data))) = (params.get("split"), params.get("data")) else {
        return problems;
    };
    if &**split != SplitChoice::Test.word() {
        return problems;
    }
    // Synthetic sets always have a test split (`test_size` >= 1); an image folder's is known only
    // when it is read.
    let empty = match data.ctor.name {
        "glue_sst2" | "glue" => {
            Some("GLUE hides the labels of its test split: rkd reads its training and validation files only")
        }
        _ => None,
    };
    if let Some(why) = empty {
        problems.push((
            "split",
            format!(
                "`{}(...)` has no test split ({why}); use split: \"validation\", or \"auto\" (test where there is one)",
                data.ctor.name
            ),
        ));
    }
    problems
}

fn check_resources(params: &Params) -> Vec<ArgProblem> {
    let Some(Value::Record(fields)) = params.get("resources") else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    for (name, v) in fields.iter() {
        let problem = match name.as_str() {
            "cpus" => match v {
                Value::Int(n) if *n >= 1 && *n <= i64::from(u32::MAX) => None,
                _ => Some(format!("`cpus` must be a whole number >= 1, not {v}")),
            },
            "gpus" => match v {
                Value::Int(n) if *n >= 0 && *n <= i64::from(u32::MAX) => None,
                _ => Some(format!("`gpus` must be a whole number >= 0, not {v}")),
            },
            "mem" => slurm_mem(v).err(),
            "time" => slurm_time(v).err(),
            other => Some(format!(
                "unknown resource `{other}`: a stage's resources are {}",
                RESOURCE_FIELDS.join(", ")
            )),
        };
        if let Some(p) = problem {
            problems.push(("resources", p));
        }
    }
    problems
}

#[cfg(test)]
mod resource_tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn with(fields: &[(&str, Value)]) -> Params {
        let record: BTreeMap<String, Value> = fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        let mut params = Params::new();
        params.insert("resources".into(), Value::Record(Arc::new(record)));
        params
    }

    #[test]
    fn a_stage_overrides_its_ops_defaults() {
        assert_eq!(default_resources("exec").cpus, 1);
        let r = resources(
            "train",
            &with(&[
                ("cpus", Value::Int(2)),
                ("mem", Value::str("512m")),
                ("time", Value::str("2h")),
            ]),
        );
        assert_eq!(r.cpus, 2);
        assert_eq!(r.mem.as_deref(), Some("512M"));
        assert_eq!(r.time.as_deref(), Some("2:00:00"));
        assert_eq!(r.gpus, 0);
        assert_eq!(
            resources("exec", &with(&[("time", Value::Int(5))])).time.as_deref(),
            Some("5")
        );
        assert_eq!(
            resources("exec", &with(&[("time", Value::str("1-12:00:00"))]))
                .time
                .as_deref(),
            Some("1-12:00:00")
        );
    }

    #[test]
    fn unknown_or_malformed_fields_are_reported() {
        let problems = check_resources(&with(&[
            ("cpu", Value::Int(2)),
            ("mem", Value::str("lots")),
            ("gpus", Value::Int(-1)),
        ]));
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().any(|(_, m)| m.contains("unknown resource `cpu`")));
        assert!(check_resources(&with(&[
            ("cpus", Value::Int(4)),
            ("gpus", Value::Int(1)),
            ("time", Value::str("30m"))
        ]))
        .is_empty());
    }
}

#[cfg(test)]
mod doc_tests {
    use super::*;

    #[test]
    fn docs_describe_only_what_the_op_can_do() {
        for op in crate::registry::REGISTRY {
            for p in op.params {
                // Only the ops that derive defaults for a model from random weights say so.
                if p.doc.contains("random weights") {
                    assert!(op.derive.is_some(), "{}.{}: {}", op.name, p.name, p.doc);
                }
                // Only training ops take optimiser steps.
                if p.doc.contains("optimiser") {
                    assert!(trains(op.name), "{}.{}: {}", op.name, p.name, p.doc);
                }
            }
        }
        let doc = |op: &OpSchema, name: &str| op.param(name).map(|p| p.doc).unwrap_or_default();
        assert_eq!(doc(&EVAL, "batch_size"), "examples per forward pass");
        assert_eq!(doc(&QLORA, "epochs"), "passes over the training split");
        assert!(doc(&TRAIN, "epochs").contains("random weights"));
        assert!(!doc(&PRUNE, "lr").contains("random"));
    }
}

//! The training loop shared by the `train`, `distill` and `fuse` ops: AdamW with linear warm-up
//! and decay, global-norm gradient clipping, validation after each epoch and the best
//! checkpoint kept.
//!
//! The loop knows nothing about datasets or losses: the caller gives it the batches of each
//! epoch and a closure that turns a batch into a scalar loss (cross-entropy for `train`, the
//! KD loss for `distill`). With the same seed, the same batches and the same thread count, two
//! runs give bit-identical weights: initialisation and dropout draw from the seeded
//! [`Rng`](crate::ml::kernels::rng::Rng) (one dropout stream per step), and every parallel kernel used
//! splits its work so that each output is computed by one thread in a fixed order.

use candle_core::Tensor;

pub use super::error::TrainError;
pub use super::loss_scale::LossScale;
use super::optim::{clip_scale, AdamW, AdamWConfig};
pub use super::report::{EpochRecord, StepRecord, TrainReport, Validation};
use super::resume::{BestWeights, Checkpointer, Position, Snapshot, TrainState};
use super::schedule::LinearSchedule;
use crate::ml::kernels::memory_ledger::{self, Reservation};
use crate::ml::kernels::rng::derive_seed;
use crate::ml::models::layers::ForwardCtx;
use crate::ml::models::model::Model;
use crate::ml::models::params::ParamStore;

/// Re-exported from [`crate::ml::kernels::runtime`], where it lives.
pub use crate::ml::kernels::runtime::with_threads;

crate::keywords! {
    /// Which epoch's weights a training run keeps (`select:`).
    pub enum Select {
        /// The epoch with the best accuracy on the selection split (validation, or `holdout:`).
        Best = "best",
        /// The last epoch's: no split is used for selection.
        Last = "last",
    }
}

crate::keywords! {
    /// What the matrix products of a training run compute in (`precision:`); the weights, their
    /// gradients and the optimizer state stay f32 (mixed precision).
    pub enum Precision {
        /// Everything in f32.
        F32 = "f32",
        /// The linear layers' products in bfloat16.
        Bf16 = "bf16",
        /// The linear layers' products in float16, with dynamic loss scaling.
        F16 = "f16",
    }
}

impl Precision {
    /// The dtype the linear layers compute in.
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
            Precision::F16 => candle_core::DType::F16,
        }
    }
}

/// Hyper-parameters of a training run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    /// Passes over the training batches.
    pub epochs: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW weight decay (not on biases and LayerNorm).
    pub weight_decay: f64,
    /// Fraction of the steps with linear warm-up.
    pub warmup: f64,
    /// Maximum global gradient norm (`None`: no clipping).
    pub grad_clip: Option<f64>,
    /// Seed of the dropout streams.
    pub seed: u64,
    /// Stop after this many optimiser steps (the schedule is planned for them).
    pub max_steps: Option<usize>,
    /// Which epoch's weights are kept (the op's training driver reads it: the loop restores the
    /// best epoch whenever it is given validation).
    pub select: Select,
    /// What the linear layers compute in (weights and optimizer state stay f32).
    pub precision: Precision,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            epochs: 3,
            lr: 1e-4,
            weight_decay: 0.01,
            warmup: 0.1,
            grad_clip: Some(1.0),
            seed: 0,
            max_steps: None,
            select: Select::Best,
            precision: Precision::F32,
        }
    }
}

/// A progress callback: the step just taken and the planned number of steps.
pub type OnStep<'a> = &'a mut dyn FnMut(&StepRecord, usize);

/// Optional callbacks of [`train`].
#[derive(Default)]
pub struct Hooks<'a> {
    /// Validation after each epoch (0-based epoch); its accuracy picks the best checkpoint.
    pub validate: Option<&'a mut dyn FnMut(usize) -> Result<Validation, TrainError>>,
    /// After each step, with the planned number of steps (progress lines, logs).
    pub on_step: Option<OnStep<'a>>,
    /// After each epoch's validation.
    pub on_epoch: Option<&'a mut dyn FnMut(&EpochRecord)>,
    /// After each optimiser update (e.g. re-applying pruning masks).
    pub after_update: Option<&'a mut dyn FnMut() -> Result<(), TrainError>>,
    /// Checked before every step; `true` stops with [`TrainError::Interrupted`].
    pub interrupted: Option<&'a dyn Fn() -> bool>,
    /// Trainable variables outside `params` that the loss uses (distillation projections):
    /// optimised with the model, but not part of its checkpoint.
    pub extra_vars: Vec<(String, candle_core::Var)>,
    /// Where periodic checkpoints go (also written when an interruption stops the loop).
    pub checkpoint: Option<&'a mut dyn Checkpointer>,
    /// A checkpoint to continue from instead of starting at step 0.
    pub resume: Option<TrainState>,
}

/// Trains every variable of `params` (which `model` was built on).
///
/// `batches(epoch)` gives the batches of a 0-based epoch (shuffled as the caller wishes; each
/// epoch must have the same number); `loss(model, batch, ctx)` gives the scalar loss of a batch
/// in train mode. The schedule covers `epochs × batches`, or `max_steps` when that is smaller.
/// When there is validation, the weights of the best epoch are restored into `params` at the end.
///
/// With `hooks.resume`, the run continues from that checkpoint: weights, optimizer moments, loss
/// scale, best epoch so far, loss curve and position are restored, and the remaining steps are
/// exactly those an uninterrupted run would take (same batches, same dropout), so the weights at
/// the end are bit-identical to it on the same machine and thread count.
pub fn train<B>(
    model: &Model,
    params: &ParamStore,
    opts: &TrainOptions,
    mut batches: impl FnMut(usize) -> Result<Vec<B>, TrainError>,
    mut loss: impl FnMut(&Model, &B, &mut ForwardCtx) -> candle_core::Result<Tensor>,
    mut hooks: Hooks,
) -> Result<TrainReport, TrainError> {
    let interrupted = || hooks.interrupted.is_some_and(|f| f());
    if interrupted() {
        return Err(TrainError::Interrupted);
    }
    let resume = hooks.resume.take();
    let first_epoch = resume.as_ref().map_or(0, |r| r.position.epoch);
    let mut epoch_batches = batches(first_epoch)?;
    let per_epoch = epoch_batches.len();
    if per_epoch == 0 {
        return Err(TrainError::Invalid("the training split gives no batches".into()));
    }
    let mut planned = opts.epochs.max(1) * per_epoch;
    if let Some(m) = opts.max_steps {
        planned = planned.min(m.max(1));
    }
    let epochs = planned.div_ceil(per_epoch);
    let schedule = LinearSchedule::new(opts.lr, opts.warmup, planned);
    let mut vars = params.named_vars();
    vars.extend(std::mem::take(&mut hooks.extra_vars));
    let mut state = reserve_state(&vars)?;
    // Once the first update has written the moments, the system counts them: what stays
    // reserved is the gradients, made again at every step.
    let gradient_bytes = state.bytes() / 3;
    let mut optimizer = AdamW::new(
        vars.clone(),
        AdamWConfig {
            lr: opts.lr,
            weight_decay: opts.weight_decay,
            ..AdamWConfig::default()
        },
    )?;
    let mut report = TrainReport {
        planned_steps: planned,
        warmup_steps: schedule.warmup_steps,
        steps: Vec::with_capacity(planned),
        epochs: Vec::with_capacity(epochs),
        best_epoch: None,
    };
    let mut best: Option<BestWeights> = None;
    let mut loss_scale = (opts.precision == Precision::F16).then(LossScale::new);
    let mut at = Position {
        step: 0,
        epoch: 0,
        batch: 0,
        loss_sum: 0.0,
    };
    if let Some(state) = resume {
        state.check_fits(planned, per_epoch, &vars)?;
        restore(&state, &vars, &mut optimizer)?;
        best = best_on_devices(state.best(), &vars)?;
        loss_scale = state.loss_scale.or(loss_scale);
        report.steps = state.report.steps;
        report.epochs = state.report.epochs;
        report.best_epoch = state.report.best_epoch;
        at = state.position;
    }
    let mut saved_at = at.step;
    let mut checkpoint = hooks.checkpoint.take();
    // Writes a checkpoint of the loop as it stands (`at`), unless one of this step exists; gives
    // the step of the newest checkpoint.
    macro_rules! save_checkpoint {
        () => {
            match checkpoint.as_mut() {
                Some(c) if at.step > saved_at => {
                    c.save(&Snapshot {
                        position: at,
                        planned_steps: planned,
                        batches_per_epoch: per_epoch,
                        report: &report,
                        optimizer: &optimizer,
                        loss_scale: loss_scale.as_ref(),
                        best: best.as_ref(),
                        vars: &vars,
                    })?;
                    at.step
                }
                _ => saved_at,
            }
        };
    }
    for epoch in first_epoch..epochs {
        if epoch > first_epoch {
            epoch_batches = batches(epoch)?;
            if epoch_batches.len() != per_epoch {
                return Err(TrainError::Invalid(format!(
                    "epoch {} has {} batches, the first had {per_epoch}",
                    epoch + 1,
                    epoch_batches.len()
                )));
            }
        }
        if at.epoch != epoch {
            at = Position {
                step: at.step,
                epoch,
                batch: 0,
                loss_sum: 0.0,
            };
        }
        for batch in &epoch_batches[at.batch.min(per_epoch)..] {
            if at.step >= planned {
                break;
            }
            if interrupted() {
                save_checkpoint!();
                return Err(TrainError::Interrupted);
            }
            let step = at.step;
            let lr = schedule.lr(step);
            optimizer.set_lr(lr);
            let mut ctx = ForwardCtx::train(derive_seed(opts.seed, &format!("dropout/step{step}")))
                .with_compute(opts.precision.dtype());
            let l = loss(model, batch, &mut ctx)?;
            let value = l.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            if !value.is_finite() {
                return Err(TrainError::Invalid(format!(
                    "the loss is {value} at step {} (learning rate {lr:e} too high?)",
                    step + 1
                )));
            }
            let factor = loss_scale.as_ref().map_or(1.0, |s| s.scale);
            let grads = if factor == 1.0 {
                l.backward()?
            } else {
                (l * factor)?.backward()?
            };
            let grad_norm = optimizer.grad_norm(&grads)? / factor;
            let apply = match loss_scale.as_mut() {
                Some(s) => s.update(grad_norm.is_finite()),
                None => true,
            };
            if apply {
                let scale = opts.grad_clip.map_or(1.0, |c| clip_scale(grad_norm, c));
                optimizer.step(&grads, scale / factor)?;
            }
            drop(grads);
            if apply {
                state.shrink_to(gradient_bytes);
            }
            if let Some(f) = hooks.after_update.as_mut() {
                f()?;
            }
            at.step += 1;
            at.batch += 1;
            at.loss_sum += value;
            let record = StepRecord {
                step: at.step,
                epoch: epoch + 1,
                loss: value,
                lr,
                grad_norm,
            };
            if let Some(f) = hooks.on_step.as_mut() {
                f(&record, planned);
            }
            report.steps.push(record);
            if checkpoint.as_mut().is_some_and(|c| c.after_step(&at, planned, epochs)) {
                saved_at = save_checkpoint!();
            }
        }
        if interrupted() {
            save_checkpoint!();
            return Err(TrainError::Interrupted);
        }
        let validation = match hooks.validate.as_mut() {
            Some(f) => Some(f(epoch)?),
            None => None,
        };
        let record = EpochRecord {
            epoch: epoch + 1,
            steps: at.step,
            train_loss: at.loss_sum / at.batch.max(1) as f64,
            val_accuracy: validation.map(|v| v.accuracy),
            val_loss: validation.map(|v| v.loss),
        };
        if let Some(f) = hooks.on_epoch.as_mut() {
            f(&record);
        }
        report.epochs.push(record);
        match validation {
            Some(v) => {
                if best.as_ref().is_none_or(|(acc, _)| v.accuracy > *acc) {
                    report.best_epoch = Some(epoch + 1);
                    let keep_copy = epoch + 1 < epochs;
                    // The last epoch's weights are in the variables already: no copy needed.
                    let snapshot = if keep_copy {
                        params.tensors()?
                    } else {
                        Default::default()
                    };
                    best = Some((v.accuracy, snapshot));
                }
            }
            None => report.best_epoch = Some(epoch + 1),
        }
    }
    // Restore the best epoch's weights when it was not the last.
    if let (Some((_, snapshot)), Some(best_epoch)) = (&best, report.best_epoch) {
        if best_epoch < epochs {
            for (name, var) in params.named_vars() {
                if let Some(t) = snapshot.get(&name) {
                    var.set(&t.to_device(var.device())?)?;
                }
            }
        }
    }
    Ok(report)
}

/// Reserves the gradients and AdamW's two moments of the CPU variables `vars` (three more copies
/// of them) for as long as training runs: an error before the first step when they cannot fit,
/// instead of an out-of-memory kill during it.
fn reserve_state(vars: &[(String, candle_core::Var)]) -> Result<Reservation, TrainError> {
    let bytes: u64 = vars
        .iter()
        .filter(|(_, v)| v.device().is_cpu())
        .map(|(_, v)| (v.elem_count() * v.dtype().size_in_bytes()) as u64)
        .sum();
    memory_ledger::reserve(
        bytes.saturating_mul(3),
        "training's gradients and optimiser state",
        "use a smaller model",
    )
    .map_err(TrainError::Failed)
}

/// Puts a checkpoint's variables and optimizer moments back (every shape checked before anything
/// is changed).
fn restore(state: &TrainState, vars: &[(String, candle_core::Var)], optimizer: &mut AdamW) -> Result<(), TrainError> {
    // What does not fit is `Unusable` (the caller may start afresh); a device failure while
    // moving the values is an ordinary failure, and the checkpoint is kept.
    let unusable = |what: String| TrainError::Unusable(format!("the checkpoint {what}"));
    for (name, var) in vars {
        for group in ["var", "m", "v"] {
            let t = state
                .tensor(group, name)
                .ok_or_else(|| unusable(format!("has no `{group}` values for `{name}`")))?;
            if t.shape() != var.shape() {
                return Err(unusable(format!(
                    "has `{group}` values of shape {:?} for `{name}`, the model {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
        }
    }
    let mut values = Vec::with_capacity(vars.len());
    for (name, var) in vars {
        if let Some(t) = state.tensor("var", name) {
            values.push((var, t.to_device(var.device())?.to_dtype(var.dtype())?));
        }
    }
    optimizer.restore(state.optimizer_steps, |name| {
        Some((state.tensor("m", name)?.clone(), state.tensor("v", name)?.clone()))
    })?;
    for (var, t) in values {
        var.set(&t)?;
    }
    Ok(())
}

/// The best epoch's weights of a checkpoint, on the devices of the variables they belong to.
fn best_on_devices(
    best: Option<BestWeights>,
    vars: &[(String, candle_core::Var)],
) -> Result<Option<BestWeights>, TrainError> {
    let Some((accuracy, weights)) = best else {
        return Ok(None);
    };
    let mut moved = std::collections::BTreeMap::new();
    for (name, t) in weights {
        let t = match vars.iter().find(|(n, _)| *n == name) {
            Some((_, var)) => t.to_device(var.device())?.to_dtype(var.dtype())?,
            None => t,
        };
        moved.insert(name, t);
    }
    Ok(Some((accuracy, moved)))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ml::kernels::rng::Rng;
    use crate::ml::models::config::{BertConfig, ModelConfig};
    use crate::ml::models::model::ModelInput;
    use crate::ml::training::metrics::evaluate;
    use crate::ml::training::resume::{Checkpointer, Position, Snapshot, TrainState};
    use candle_core::{DType, Device};

    #[test]
    fn the_loss_scale_halves_on_overflow_and_doubles_after_2000_good_steps() {
        let mut s = LossScale::new();
        assert_eq!(s.scale, 65536.0);
        assert!(!s.update(false), "an overflowing step is skipped");
        assert_eq!(s.scale, 32768.0);
        for _ in 0..1999 {
            assert!(s.update(true));
        }
        assert_eq!(s.scale, 32768.0);
        s.update(true);
        assert_eq!(s.scale, 65536.0);
        for _ in 0..40 {
            s.update(false);
        }
        assert_eq!(s.scale, 1.0, "never below 1");
    }

    /// A learnable toy task: filler tokens plus three copies of a signal token (1 or 2) that
    /// gives the class.
    fn toy_batches(n_batches: usize, batch: usize, seq: usize, seed: u64) -> Vec<(ModelInput, Tensor)> {
        let mut rng = Rng::new(seed);
        (0..n_batches)
            .map(|_| {
                let mut ids = Vec::with_capacity(batch * seq);
                let mut labels = Vec::with_capacity(batch);
                for _ in 0..batch {
                    let label = rng.below(2) as u32;
                    let mut row: Vec<u32> = (0..seq).map(|_| 3 + rng.below(20) as u32).collect();
                    for _ in 0..3 {
                        row[1 + rng.below(seq as u64 - 1) as usize] = 1 + label;
                    }
                    labels.push(label);
                    ids.extend(row);
                }
                let dev = Device::Cpu;
                (
                    ModelInput::Text {
                        input_ids: Tensor::from_vec(ids, (batch, seq), &dev).unwrap(),
                        token_type_ids: None,
                        attention_mask: None,
                    },
                    Tensor::from_vec(labels, batch, &dev).unwrap(),
                )
            })
            .collect()
    }

    fn tiny() -> ModelConfig {
        let mut c = BertConfig::new(24, 32, 2, 2, 64, 2);
        c.max_position_embeddings = 16;
        c.hidden_dropout_prob = 0.1;
        c.attention_probs_dropout_prob = 0.1;
        ModelConfig::Bert(c)
    }

    fn ce(model: &Model, b: &(ModelInput, Tensor), ctx: &mut ForwardCtx) -> candle_core::Result<Tensor> {
        let out = model.forward(&b.0, ctx)?;
        candle_nn::loss::cross_entropy(&out.logits, &b.1)
    }

    /// Trains the toy task; returns the report, the weights' bits and validation accuracy.
    fn run(seed: u64, epochs: usize, threads: usize) -> (TrainReport, Vec<u32>, f64) {
        with_threads(threads, || {
            let params = ParamStore::new(seed);
            let model = Model::new(&tiny(), params.var_builder(DType::F32, &Device::Cpu)).unwrap();
            let eval_model = Model::new(&tiny(), params.frozen_var_builder(DType::F32, &Device::Cpu)).unwrap();
            let val = toy_batches(4, 32, 12, 999);
            let mut validate = |_e: usize| {
                let ev = evaluate(&eval_model, val.iter().map(|(i, l)| (i, l)))?;
                Ok(Validation {
                    accuracy: ev.confusion.accuracy(),
                    loss: ev.loss,
                })
            };
            let opts = TrainOptions {
                epochs,
                lr: 3e-3,
                seed,
                ..TrainOptions::default()
            };
            let report = train(
                &model,
                &params,
                &opts,
                |e| Ok(toy_batches(8, 32, 12, 100 + e as u64)),
                ce,
                Hooks {
                    validate: Some(&mut validate),
                    ..Hooks::default()
                },
            )
            .unwrap();
            let bits: Vec<u32> = params
                .tensors()
                .unwrap()
                .values()
                .flat_map(crate::ml::testutil::bits)
                .collect();
            let acc = validate(0).unwrap().accuracy;
            (report, bits, acc)
        })
    }

    #[test]
    fn learns_keeps_the_best_epoch_and_is_bit_identical_twice() {
        let (report, bits, acc) = run(3, 6, 2);
        assert_eq!(report.total_steps(), 48);
        assert_eq!(report.epochs.len(), 6);
        assert_eq!(report.warmup_steps, 5);
        let best = report.best_accuracy().unwrap();
        assert!(best > 0.9, "toy task not learned: {:?}", report.epochs);
        // The kept weights are the best epoch's: re-validating them gives its accuracy.
        assert_eq!(acc, best, "{:?}", report.epochs);
        let max = report.epochs.iter().filter_map(|e| e.val_accuracy).fold(0.0, f64::max);
        assert_eq!(best, max);
        let (report2, bits2, _) = run(3, 6, 2);
        assert_eq!(report.steps, report2.steps, "the loss curve differs");
        assert!(bits == bits2, "weights differ between two runs with the same seed");
        let (_, bits3, _) = run(4, 1, 2);
        assert!(bits3 != bits);
    }

    /// The same seed gives the same weights on any number of threads (a remote cache shares
    /// results between machines with other core counts), with batches of 57 × 9 = 513 rows,
    /// whose products of more than 64 columns run as blocks of rows, one per thread (on 5
    /// threads four blocks of 128 rows and one of a single row, unless that joins the one before).
    #[test]
    fn training_gives_the_same_bits_on_any_thread_count() {
        let mut config = BertConfig::new(24, 32, 2, 2, 96, 2);
        config.max_position_embeddings = 16;
        config.hidden_dropout_prob = 0.1;
        let config = ModelConfig::Bert(config);
        let run = |threads: usize| {
            with_threads(threads, || {
                let params = ParamStore::new(5);
                let model = Model::new(&config, params.var_builder(DType::F32, &Device::Cpu)).unwrap();
                let opts = TrainOptions {
                    epochs: 1,
                    lr: 3e-3,
                    seed: 5,
                    ..TrainOptions::default()
                };
                let batches = |_| Ok(toy_batches(3, 57, 9, 7));
                train(&model, &params, &opts, batches, ce, Hooks::default()).unwrap();
                let tensors = params.tensors().unwrap();
                tensors
                    .values()
                    .flat_map(crate::ml::testutil::bits)
                    .collect::<Vec<u32>>()
            })
        };
        let one = run(1);
        for threads in [2, 3, 5] {
            assert!(
                one == run(threads),
                "the weights trained on {threads} threads differ from 1 thread's"
            );
        }
    }

    #[test]
    fn the_best_epoch_is_restored() {
        let params = ParamStore::new(2);
        let model = Model::new(&tiny(), params.var_builder(DType::F32, &Device::Cpu)).unwrap();
        let accuracies = [0.5, 0.9, 0.6];
        let mut validate = |e: usize| {
            Ok(Validation {
                accuracy: accuracies[e],
                loss: 0.0,
            })
        };
        let snapshots = std::cell::RefCell::new(Vec::new());
        let mut on_epoch = |_: &EpochRecord| snapshots.borrow_mut().push(params.tensors().unwrap());
        let opts = TrainOptions {
            epochs: 3,
            warmup: 0.0,
            ..TrainOptions::default()
        };
        let report = train(
            &model,
            &params,
            &opts,
            |e| Ok(toy_batches(2, 8, 8, e as u64)),
            ce,
            Hooks {
                validate: Some(&mut validate),
                on_epoch: Some(&mut on_epoch),
                ..Hooks::default()
            },
        )
        .unwrap();
        assert_eq!(report.best_epoch, Some(2));
        assert_eq!(report.best_accuracy(), Some(0.9));
        let bits = |m: &std::collections::BTreeMap<String, Tensor>| -> Vec<u32> {
            m.values().flat_map(crate::ml::testutil::bits).collect()
        };
        let snaps = snapshots.borrow();
        let now = bits(&params.tensors().unwrap());
        assert!(now == bits(&snaps[1]), "the weights are not epoch 2's");
        assert!(now != bits(&snaps[2]));
    }

    #[test]
    fn max_steps_and_interruption() {
        let params = ParamStore::new(1);
        let model = Model::new(&tiny(), params.var_builder(DType::F32, &Device::Cpu)).unwrap();
        let opts = TrainOptions {
            epochs: 5,
            max_steps: Some(3),
            warmup: 0.0,
            ..TrainOptions::default()
        };
        let report = train(
            &model,
            &params,
            &opts,
            |e| Ok(toy_batches(2, 4, 8, e as u64)),
            ce,
            Hooks::default(),
        )
        .unwrap();
        assert_eq!(report.planned_steps, 3);
        assert_eq!(report.total_steps(), 3);
        assert_eq!(report.epochs.len(), 2, "the partial second epoch is recorded");
        assert_eq!(report.best_epoch, Some(2));

        let calls = std::cell::Cell::new(0);
        let stop = || {
            calls.set(calls.get() + 1);
            calls.get() > 2
        };
        let before = params.tensors().unwrap();
        let err = train(
            &model,
            &params,
            &opts,
            |e| Ok(toy_batches(2, 4, 8, e as u64)),
            ce,
            Hooks {
                interrupted: Some(&stop),
                ..Hooks::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, TrainError::Interrupted), "{err}");
        assert_eq!(err.to_string(), "interrupted");
        // It stopped after one step (checks: start, step 1, step 2).
        let after = params.tensors().unwrap();
        assert!(before.iter().any(|(k, t)| {
            let a = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = after[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            a != b
        }));
    }

    /// Writes every checkpoint into its own folder `s<step>` under `dir`.
    struct DirCheckpointer {
        dir: std::path::PathBuf,
        every: usize,
    }

    impl Checkpointer for DirCheckpointer {
        fn after_step(&mut self, at: &Position, _planned: usize, _epochs: usize) -> bool {
            at.step.is_multiple_of(self.every)
        }

        fn save(&mut self, s: &Snapshot) -> Result<(), TrainError> {
            let dir = self.dir.join(format!("s{}", s.position.step));
            std::fs::create_dir_all(&dir).unwrap();
            s.save(&dir, serde_json::json!({"op": s.position.step}))
        }
    }

    /// Three epochs of 8 toy batches with dropout; validation says epoch 1 is best (so its
    /// weights are the ones kept, from the snapshot a checkpoint must carry). Stops (interrupted)
    /// once `stop_at` steps are done; resumes from `resume`. Returns the report and the weights.
    fn resumable_run(
        stop_at: Option<usize>,
        resume: Option<TrainState>,
        checkpoints: &std::path::Path,
    ) -> Result<(TrainReport, Vec<u32>), TrainError> {
        resumable_run_in(Precision::F32, stop_at, resume, checkpoints)
    }

    /// [`resumable_run`] with the linear layers in `precision`.
    fn resumable_run_in(
        precision: Precision,
        stop_at: Option<usize>,
        resume: Option<TrainState>,
        checkpoints: &std::path::Path,
    ) -> Result<(TrainReport, Vec<u32>), TrainError> {
        with_threads(2, || {
            let params = ParamStore::new(5);
            let model = Model::new(&tiny(), params.var_builder(DType::F32, &Device::Cpu)).unwrap();
            let accuracies = [0.9, 0.5, 0.6];
            let mut validate = |e: usize| {
                Ok(Validation {
                    accuracy: accuracies[e],
                    loss: 0.0,
                })
            };
            let steps = std::cell::Cell::new(0);
            let mut on_step = |r: &StepRecord, _: usize| steps.set(r.step);
            let stop = || stop_at.is_some_and(|n| steps.get() >= n);
            let mut checkpointer = DirCheckpointer {
                dir: checkpoints.to_path_buf(),
                every: 8,
            };
            let opts = TrainOptions {
                epochs: 3,
                lr: 3e-3,
                seed: 5,
                precision,
                ..TrainOptions::default()
            };
            let report = train(
                &model,
                &params,
                &opts,
                |e| Ok(toy_batches(8, 16, 12, 40 + e as u64)),
                ce,
                Hooks {
                    validate: Some(&mut validate),
                    on_step: Some(&mut on_step),
                    interrupted: Some(&stop),
                    checkpoint: Some(&mut checkpointer),
                    resume,
                    ..Hooks::default()
                },
            )?;
            let bits = params
                .tensors()
                .unwrap()
                .values()
                .flat_map(crate::ml::testutil::bits)
                .collect();
            Ok((report, bits))
        })
    }

    #[test]
    fn a_resumed_run_ends_bit_identical_to_an_uninterrupted_one() {
        let tmp = tempfile::tempdir().unwrap();
        let (full, full_bits) = resumable_run(None, None, &tmp.path().join("full")).unwrap();
        assert_eq!(full.best_epoch, Some(1));
        assert_eq!(full.total_steps(), 24);
        // Periodic checkpoints at steps 8 and 16.
        for step in [8, 16] {
            assert!(tmp.path().join(format!("full/s{step}/state.json")).is_file());
        }

        // Interrupted in the middle of epoch 2: a checkpoint of step 11 is written on the way out.
        let dir = tmp.path().join("stopped");
        let err = resumable_run(Some(11), None, &dir).unwrap_err();
        assert!(matches!(err, TrainError::Interrupted), "{err}");
        let state = TrainState::load(&dir.join("s11")).unwrap();
        assert_eq!(state.position.step, 11);
        assert_eq!((state.position.epoch, state.position.batch), (1, 3));
        assert_eq!(state.extra, serde_json::json!({"op": 11}));
        let (resumed, bits) = resumable_run(None, Some(state), &dir).unwrap();
        assert_eq!(resumed.steps, full.steps, "the loss curve differs");
        assert_eq!(resumed.epochs, full.epochs);
        assert!(
            bits == full_bits,
            "the resumed run's weights differ from the uninterrupted run's"
        );

        // From the checkpoint at an epoch's end (step 16, before that epoch's validation), which
        // carries epoch 1's weights as the best so far.
        let state = TrainState::load(&tmp.path().join("full/s16")).unwrap();
        let (resumed, bits) = resumable_run(None, Some(state), &tmp.path().join("again")).unwrap();
        assert_eq!(resumed, full);
        assert!(bits == full_bits);
    }

    #[test]
    fn an_f16_run_with_its_loss_scale_resumes_bit_identical() {
        let tmp = tempfile::tempdir().unwrap();
        let (full, full_bits) = resumable_run_in(Precision::F16, None, None, &tmp.path().join("full")).unwrap();
        let dir = tmp.path().join("stopped");
        resumable_run_in(Precision::F16, Some(13), None, &dir).unwrap_err();
        let state = TrainState::load(&dir.join("s13")).unwrap();
        let (resumed, bits) = resumable_run_in(Precision::F16, None, Some(state), &dir).unwrap();
        assert_eq!(format!("{:?}", resumed.steps), format!("{:?}", full.steps));
        assert!(bits == full_bits, "the resumed f16 run's weights differ");
    }

    #[test]
    fn a_checkpoint_of_another_run_shape_is_refused_before_anything_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a");
        resumable_run(Some(3), None, &dir).unwrap_err();
        let state = TrainState::load(&dir.join("s3")).unwrap();
        let params = ParamStore::new(5);
        let model = Model::new(&tiny(), params.var_builder(DType::F32, &Device::Cpu)).unwrap();
        let before = params.tensors().unwrap();
        let err = train(
            &model,
            &params,
            &TrainOptions {
                epochs: 5,
                ..TrainOptions::default()
            },
            |e| Ok(toy_batches(8, 16, 12, e as u64)),
            ce,
            Hooks {
                resume: Some(state),
                ..Hooks::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, TrainError::Unusable(_)), "{err}");
        assert!(
            err.to_string().contains("planned for 24 steps, this run for 40"),
            "{err}"
        );
        let after = params.tensors().unwrap();
        let bits = |m: &std::collections::BTreeMap<String, Tensor>| -> Vec<u32> {
            m.values().flat_map(crate::ml::testutil::bits).collect()
        };
        assert!(
            bits(&before) == bits(&after),
            "a refused checkpoint changed the weights"
        );
    }

    #[test]
    fn a_diverging_loss_is_a_clear_error() {
        let params = ParamStore::new(1);
        let model = Model::new(&tiny(), params.var_builder(DType::F32, &Device::Cpu)).unwrap();
        let err = train(
            &model,
            &params,
            &TrainOptions::default(),
            |_| Ok(toy_batches(1, 2, 8, 0)),
            |_m: &Model, b: &(ModelInput, Tensor), _c: &mut ForwardCtx| {
                (b.1.to_dtype(DType::F32)?.sum_all()? / 0.0)?.log()
            },
            Hooks::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("the loss is") && err.contains("step 1"), "{err}");
    }
}

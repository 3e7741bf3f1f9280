//! `qlora`: QLoRA fine-tuning of a trained classifier.
//!
//! The base's linear weights below the head (every encoder layer's query, key, value, attention
//! output, intermediate and output projections, and BERT's pooler) are quantized to NF4
//! ([`Nf4Tensor`], `block_size`, `double_quant`) and frozen: each layer holds its weight in NF4
//! on the device it computes on (the CPU kernel's packed form, or codes and scales as tensors on
//! a GPU) and dequantizes it inside each product, forward and backward, as bitsandbytes does; no
//! dense copy of those weights is kept, so they take 4 bits per weight (plus one f32 scale per
//! block) in memory while the adapters train. Every module whose name
//! ends with one of `targets` gets a LoRA adapter ([`crate::ml::lora`]: `A` Kaiming-uniform,
//! `B` zero, scale `alpha / rank`, `dropout` on its input), and the classification head is
//! trained in full (PEFT's `modules_to_save`). Embeddings, LayerNorms and biases stay dense and
//! frozen. AdamW sees only the adapters and the head.
//!
//! Outputs (`ctx.out_dir`):
//! - `model.safetensors` + `config.json`: the base with each quantized weight in the
//!   bitsandbytes layout (`<module>.weight` packed uint8, `.absmax`, `.quant_map`, with double
//!   quantization `.nested_absmax`, `.nested_quant_map`, and
//!   `.quant_state.bitsandbytes__nf4`), every other tensor dense (the trained head included),
//!   and `quantization_config` in config.json;
//! - `adapter_config.json` + `adapter_model.safetensors` (PEFT layout, task `SEQ_CLS`);
//! - the tokenizer files and `train_metrics.json`;
//! - with `merge: true`, `merged/`: a plain dense HF directory with `W = dequant(NF4) + scale·B·A`.
//!
//! [`crate::ml::checkpoint::load_pretrained`] reads the output as a dense model (dequantized and
//! merged), so `eval`, `prune`, `distill`, `predict` and `pretrained(path:)` take it.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::model_source::{self, ModelSource};
use super::resume::Policy;
use super::train::{
    checkpoint_policy, fit, load_for, log_data, run_metrics, source_label, supervised_loss, write_train_metrics,
    FitOptions, Schedule,
};
use super::{OpContext, OpError, OpOutput};
use crate::data::Dataset;
use crate::ml::checkpoint::{save_quantized, save_tensors, Pretrained};
use crate::ml::config::QuantizationConfig;
use crate::ml::layers::{stand_in, Linear, PackedWeight};
use crate::ml::lora::{self, AdapterConfig, LoraConfig, HEAD};
use crate::ml::nf4::Nf4Tensor;
use crate::ml::train::{TrainOptions, TrainReport};
use crate::ml::{Model, ParamStore};
use crate::registry::QloraArgs;

/// The op's QLoRA settings (schema defaults where a parameter is absent).
#[derive(Debug, Clone, PartialEq)]
pub struct QloraSettings {
    /// Rank, alpha, dropout and targets of the adapters.
    pub lora: LoraConfig,
    /// Whether the absmax constants are quantized too.
    pub double_quant: bool,
    /// NF4 block size.
    pub block_size: usize,
    /// Whether to write the merged dense checkpoint into `merged/`.
    pub merge: bool,
}

impl QloraSettings {
    /// The settings of the op's typed arguments, checked.
    pub fn from_args(a: &QloraArgs) -> Result<Self, OpError> {
        let s = Self {
            lora: LoraConfig {
                rank: a.rank,
                alpha: a.alpha,
                dropout: a.dropout,
                targets: a.targets.clone(),
            },
            double_quant: a.double_quant,
            block_size: a.block_size,
            merge: a.merge,
        };
        s.lora.validate()?;
        if !(s.block_size >= 32 && s.block_size.is_power_of_two()) {
            return Err(OpError::Failed(format!(
                "`block_size` must be a power of two >= 32, got {}",
                s.block_size
            )));
        }
        Ok(s)
    }
}

/// A base model with NF4-frozen linears, LoRA adapters and a trainable head.
#[derive(Debug, Clone)]
pub struct QloraModel {
    /// The model to train (frozen constants, adapter and head variables).
    pub model: Model,
    /// The trainable variables only: `<module>.lora_A.weight`, `<module>.lora_B.weight` and the head.
    pub trainable: ParamStore,
    /// Every frozen dense tensor of the base (not the head, not the quantized weights).
    pub frozen: BTreeMap<String, Tensor>,
    /// The quantized weights, by tensor name (`<module>.weight`).
    pub quantized: BTreeMap<String, Nf4Tensor>,
    /// The modules with an adapter.
    pub adapted: Vec<String>,
    /// The adapters' settings.
    pub lora: LoraConfig,
}

impl QloraModel {
    /// Quantizes `base`'s linears below the head, freezes everything but the head, and
    /// attaches adapters; the adapters and the head are variables of a store seeded with `seed`.
    /// The model computes on `device` and holds each quantized weight there in NF4 (4 bits per
    /// weight and a scale per block, dequantized per product); `base` may live elsewhere (the
    /// CPU), so that no dense copy of those weights ever reaches the device.
    pub fn build(base: &Pretrained, settings: &QloraSettings, seed: u64, device: &Device) -> Result<Self, OpError> {
        let config = base.model.config();
        let mut tensors = base.params.tensors()?;
        let mut quantized = BTreeMap::new();
        for module in lora::base_linears(&config) {
            let name = format!("{module}.weight");
            let w = tensors
                .remove(&name)
                .ok_or_else(|| OpError::Failed(format!("the base has no `{name}`")))?;
            let q = Nf4Tensor::from_tensor(&w, settings.block_size, settings.double_quant)
                .map_err(|e| OpError::Failed(format!("{name}: {e}")))?;
            quantized.insert(name, q);
        }
        for t in tensors.values_mut() {
            *t = t.to_device(device)?;
        }
        let is_head = |k: &str| k.strip_prefix(HEAD).is_some_and(|r| r.starts_with('.'));
        let head: HashMap<String, Tensor> = tensors
            .iter()
            .filter(|(k, _)| is_head(k))
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        let trainable = ParamStore::with_source(seed, head);
        let vb = trainable.var_builder(DType::F32, device);
        // The quantized weights' places hold stand-ins without memory until their layers take
        // the packed weights.
        let mut all: HashMap<String, Tensor> = tensors.iter().map(|(k, t)| (k.clone(), t.clone())).collect();
        for (name, q) in &quantized {
            all.insert(name.clone(), stand_in(q.shape(), DType::F32, device)?);
        }
        let mut model = Model::new(&config, VarBuilder::from_tensors(all, DType::F32, device))?;
        for (name, linear) in lora::linears_mut(&mut model) {
            let weight_name = format!("{name}.weight");
            if name == HEAD {
                let (out_dim, in_dim) = linear.weight.dims2()?;
                let weight = vb.get((out_dim, in_dim), "classifier.weight")?;
                let bias = vb.get(out_dim, "classifier.bias")?;
                *linear = Linear::from_tensors(weight, Some(bias));
            } else if let Some(q) = quantized.get(&weight_name) {
                let packed = q
                    .to_packed()
                    .ok_or_else(|| OpError::Failed(format!("`{weight_name}` is not a matrix")))?;
                linear.keep_packed(PackedWeight::nf4_on(Arc::new(packed), device)?)?;
            }
        }
        let adapted = lora::attach(&mut model, &settings.lora, vb)?;
        tensors.retain(|k, _| !is_head(k));
        Ok(Self {
            model,
            trainable,
            frozen: tensors,
            quantized,
            adapted,
            lora: settings.lora.clone(),
        })
    }

    /// Parameters of the whole model: the base's (head included) and the adapters'.
    pub fn num_parameters(&self) -> usize {
        self.frozen.values().map(Tensor::elem_count).sum::<usize>()
            + self.quantized_parameters()
            + self.trainable.num_parameters()
    }

    /// Parameters stored in NF4.
    pub fn quantized_parameters(&self) -> usize {
        self.quantized.values().map(Nf4Tensor::numel).sum()
    }

    /// Bytes of the NF4 weights as stored (packed codes and scales).
    pub fn nf4_bytes(&self) -> usize {
        self.quantized.values().map(Nf4Tensor::bytes).sum()
    }

    /// The current head and adapter values, by model name.
    pub fn trained_tensors(&self) -> Result<BTreeMap<String, Tensor>, OpError> {
        Ok(self.trainable.tensors()?)
    }

    /// The dense model with the adapters merged: `W = dequant(NF4) + scale·B·A`, the head as trained.
    pub fn merged_tensors(&self) -> Result<HashMap<String, Tensor>, OpError> {
        let mut all: HashMap<String, Tensor> = self.frozen.iter().map(|(k, t)| (k.clone(), t.clone())).collect();
        for (name, q) in &self.quantized {
            let dense = q
                .to_tensor(&Device::Cpu)
                .map_err(|e| OpError::Failed(format!("{name}: {e}")))?;
            all.insert(name.clone(), dense);
        }
        let trained: HashMap<String, Tensor> = self.trained_tensors()?.into_iter().collect();
        lora::merge_tensors(&mut all, &trained, self.lora.scale())?;
        Ok(all)
    }
}

/// Runs a `qlora` stage.
pub fn run(ctx: &mut OpContext) -> Result<OpOutput, OpError> {
    let args = QloraArgs::from_params(ctx.params)?;
    let settings = QloraSettings::from_args(&args)?;
    let (opts, batch_size, policy) = Schedule {
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        weight_decay: None,
        warmup: None,
        grad_clip: None,
        seed: args.seed,
        max_steps: args.max_steps,
        select: args.select,
        precision: args.precision,
        checkpoint: checkpoint_policy!(args),
    }
    .options();
    let device = ctx.device.clone();
    ctx.progress.message("loading the base model and data");
    let source = model_source::resolve(ctx, &args.base)?;
    let base_dir = match &source {
        ModelSource::Dir { dir, .. } => dir.clone(),
        ModelSource::Arch(spec) => {
            return Err(OpError::Failed(format!(
                "qlora needs trained weights as `base:`, not the architecture `{}`: train it first",
                spec.ctor.name
            )))
        }
    };
    let dataset = load_for(ctx, &args.data, &source)?;
    log_data(ctx, &dataset, batch_size);
    // The dense base stays in CPU memory: only its NF4 form goes to the device.
    let base = model_source::model_for_training(&source, &dataset, opts.seed, &Device::Cpu, &mut ctx.log)?;
    ctx.progress.message("quantizing the base to NF4");
    let q = QloraModel::build(&base, &settings, opts.seed, &device)?;
    drop(base);
    log_setup(ctx, &settings, &q);
    let report = train_adapters(ctx, &q, &dataset, &opts, batch_size, policy)?;
    save_outputs(ctx, &settings, &q, &dataset, &base_dir)?;
    write_qlora_metrics(ctx, &source, &settings, &q, &dataset, &report, batch_size)?;
    let mut out = OpOutput {
        metrics: run_metrics(&report, &dataset),
    };
    let m = &mut out.metrics;
    m.insert("params".into(), q.num_parameters() as f64);
    m.insert("trainable_params".into(), q.trainable.num_parameters() as f64);
    m.insert("nf4_bytes".into(), q.nf4_bytes() as f64);
    m.insert("bits_per_param".into(), bits_per_param(&q));
    Ok(out)
}

/// Bits per parameter of the quantized weights, as stored.
fn bits_per_param(q: &QloraModel) -> f64 {
    8.0 * q.nf4_bytes() as f64 / q.quantized_parameters().max(1) as f64
}

/// Logs what was quantized and what trains.
fn log_setup(ctx: &mut OpContext, s: &QloraSettings, q: &QloraModel) {
    let adapter_params: usize = q
        .trainable
        .named_vars()
        .iter()
        .filter(|(k, _)| k.contains(".lora_"))
        .map(|(_, v)| v.elem_count())
        .sum();
    let trainable = q.trainable.num_parameters();
    let total = q.num_parameters();
    let log = &mut ctx.log;
    let _ = writeln!(
        log,
        "quantized {} linear weights to NF4 (block {}, {}): {} parameters in {} bytes, {:.3} bits/param",
        q.quantized.len(),
        s.block_size,
        if s.double_quant {
            "double quantization"
        } else {
            "f32 absmax"
        },
        q.quantized_parameters(),
        q.nf4_bytes(),
        bits_per_param(q)
    );
    let _ = writeln!(
        log,
        "LoRA rank {}, alpha {} (scale {}), dropout {} on {} modules (targets {:?}): {}",
        s.lora.rank,
        s.lora.alpha,
        s.lora.scale(),
        s.lora.dropout,
        q.adapted.len(),
        s.lora.targets,
        q.adapted.join(", ")
    );
    let _ = writeln!(
        log,
        "trainable parameters: {trainable} of {total} ({:.2}%): adapters {adapter_params}, classifier {}",
        100.0 * trainable as f64 / total.max(1) as f64,
        trainable - adapter_params
    );
}

/// Trains the adapters and the head, validating each epoch and keeping the best epoch's values.
fn train_adapters(
    ctx: &mut OpContext,
    q: &QloraModel,
    dataset: &Dataset,
    opts: &TrainOptions,
    batch_size: usize,
    policy: Policy,
) -> Result<TrainReport, OpError> {
    let fit_options = FitOptions {
        eval_model: Some(lora::detached(&q.model)),
        policy,
        ..FitOptions::default()
    };
    let report = fit(
        ctx,
        &q.model,
        &q.trainable,
        dataset,
        opts,
        batch_size,
        supervised_loss,
        fit_options,
        |_| None,
    )?;
    if let Some(e) = report.best_epoch {
        let _ = writeln!(
            ctx.log,
            "kept the adapters and head of epoch {e}{}",
            report
                .best_accuracy()
                .map(|a| format!(" ({} accuracy {:.2}%)", dataset.selection_split(), 100.0 * a))
                .unwrap_or_default()
        );
    }
    Ok(report)
}

/// Writes the packed base, the adapter, the tokenizer and (with `merge`) the merged checkpoint.
fn save_outputs(
    ctx: &mut OpContext,
    s: &QloraSettings,
    q: &QloraModel,
    dataset: &Dataset,
    base_dir: &Path,
) -> Result<(), OpError> {
    ctx.progress.message("saving");
    let out = ctx.out_dir.clone();
    let config = q.model.config();
    let trained = q.trained_tensors()?;
    let mut dense: HashMap<String, Tensor> = q
        .frozen
        .iter()
        .filter(|(k, _)| !q.quantized.contains_key(*k))
        .map(|(k, t)| (k.clone(), t.clone()))
        .collect();
    dense.extend(
        trained
            .iter()
            .filter(|(k, _)| !k.contains(".lora_"))
            .map(|(k, t)| (k.clone(), t.clone())),
    );
    let quantization = QuantizationConfig::nf4(s.double_quant, s.block_size, vec![HEAD.to_string()]);
    save_quantized(&out, &config, &dense, &q.quantized, &quantization)?;
    let adapter = AdapterConfig::seq_cls(&s.lora, Some(base_dir.display().to_string()));
    lora::save_adapter(&out, &adapter, &trained)?;
    if let Some(tok) = &dataset.tokenizer {
        tok.save(&out)?;
    }
    if s.merge {
        let merged_dir = out.join("merged");
        save_tensors(&merged_dir, &config, &q.merged_tensors()?)?;
        if let Some(tok) = &dataset.tokenizer {
            tok.save(&merged_dir)?;
        }
        let _ = writeln!(ctx.log, "merged dense checkpoint written to merged/");
    }
    Ok(())
}

/// Writes `train_metrics.json`: the run, the QLoRA settings and the measured sizes.
fn write_qlora_metrics(
    ctx: &mut OpContext,
    source: &ModelSource,
    s: &QloraSettings,
    q: &QloraModel,
    dataset: &Dataset,
    report: &TrainReport,
    batch_size: usize,
) -> Result<(), OpError> {
    let extra = serde_json::json!({
        "trainable_params": q.trainable.num_parameters(),
        "rank": s.lora.rank,
        "alpha": s.lora.alpha,
        "scale": s.lora.scale(),
        "dropout": s.lora.dropout,
        "targets": s.lora.targets,
        "adapted_modules": q.adapted,
        "quantized_weights": q.quantized.keys().collect::<Vec<_>>(),
        "block_size": s.block_size,
        "double_quant": s.double_quant,
        "nf4_bytes": q.nf4_bytes(),
        "bits_per_param": bits_per_param(q),
    });
    write_train_metrics(
        ctx,
        &source_label(source),
        q.num_parameters(),
        dataset,
        report,
        batch_size,
        extra.as_object().cloned().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::train::testing::*;
    use super::*;
    use crate::data::SplitName;
    use crate::ml::checkpoint::{load_pretrained, LoadOptions};
    use crate::ml::config::{BertConfig, ModelConfig};
    use crate::ml::layers::ForwardCtx;
    use crate::ml::lora::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
    use crate::ml::model::ModelInput;
    use crate::ml::nf4::QUANT_STATE_KEY;
    use crate::ml::testutil::bits;
    use crate::ml::train::{train, Hooks};
    use crate::ops::cancel::Cancel;
    use crate::value::StageId;
    use crate::value::{Params, Value};

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap()
    }

    /// A tiny BERT trained for 32 steps on the synthetic task, in `dir/base`.
    fn trained_base(dir: &Path) -> PathBuf {
        let out = dir.join("base");
        let mut p = train_params(tiny_bert(), 1, 1);
        p.insert("max_steps".into(), Value::Int(32));
        let (r, log) = run_op("train", &p, &out, dir, &Cancel::default(), 1);
        r.unwrap_or_else(|e| panic!("{e}\n{log}"));
        out
    }

    fn qlora_params(seed: i64) -> Params {
        let mut p = Params::new();
        p.insert("base".into(), Value::Stage(StageId(0)));
        p.insert("data".into(), text_data());
        p.insert("rank".into(), Value::Int(4));
        p.insert("alpha".into(), Value::Float(8.0));
        p.insert("epochs".into(), Value::Int(2));
        p.insert("batch_size".into(), Value::Int(16));
        p.insert("lr".into(), Value::Float(1e-2));
        p.insert("seed".into(), Value::Int(seed));
        p
    }

    fn run_qlora(params: &Params, out: &Path, base: &Path) -> (Result<OpOutput, OpError>, String) {
        run_op("qlora", params, out, base, &Cancel::default(), 1)
    }

    fn ok(r: (Result<OpOutput, OpError>, String)) -> (OpOutput, String) {
        let (r, log) = r;
        (r.unwrap_or_else(|e| panic!("{e}\n{log}")), log)
    }

    fn safetensors(path: &Path) -> HashMap<String, Tensor> {
        candle_core::safetensors::load(path, &Device::Cpu).unwrap()
    }

    fn json(path: &Path) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// The validation batches of the synthetic task, read with the tokenizer in `dir`.
    fn val_batches(dir: &Path, cache: &Path) -> Vec<crate::data::Batch> {
        let data =
            super::super::train::load_dataset(&text_data(), Some(dir.to_path_buf()), cache, &mut std::io::sink())
                .unwrap();
        data.batches(SplitName::Validation, 64, None, false, &Device::Cpu)
            .unwrap()
    }

    fn logits(m: &Model, input: &ModelInput) -> Tensor {
        m.forward(input, &mut ForwardCtx::eval()).unwrap().logits
    }

    fn random_base() -> Pretrained {
        let mut c = BertConfig::new(64, 32, 2, 2, 64, 2);
        c.max_position_embeddings = 16;
        let mut p = Pretrained::random(&ModelConfig::Bert(c), 4, &Device::Cpu).unwrap();
        // Larger weights than the default 0.02 so that NF4 rounding shows in the logits.
        for (_, v) in p.params.named_vars() {
            if v.rank() == 2 {
                v.set(&(v.as_tensor() * 10.0).unwrap()).unwrap();
            }
        }
        p.model = Model::new(&p.model.config(), p.params.var_builder(DType::F32, &Device::Cpu)).unwrap();
        p
    }

    fn settings() -> QloraSettings {
        QloraSettings::from_args(&QloraArgs::from_params(&qlora_params(1)).unwrap()).unwrap()
    }

    fn text_input(n: usize, seed: u64) -> (ModelInput, Tensor) {
        let mut rng = crate::ml::Rng::new(seed);
        let ids: Vec<u32> = (0..n * 8).map(|_| 1 + rng.below(63) as u32).collect();
        let labels: Vec<u32> = (0..n).map(|_| rng.below(2) as u32).collect();
        let input = ModelInput::Text {
            input_ids: Tensor::from_vec(ids, (n, 8), &Device::Cpu).unwrap(),
            token_type_ids: None,
            attention_mask: None,
        };
        (input, Tensor::from_vec(labels, n, &Device::Cpu).unwrap())
    }

    /// Loss and the gradient of every trainable tensor (adapters, head) of one training step
    /// with dropout on.
    fn qlora_step(q: &QloraModel, input: &ModelInput, labels: &Tensor) -> (Tensor, Vec<(String, Tensor)>) {
        crate::ml::training::step_grads::step_grads(&q.model, &q.trainable, input, labels, 5).unwrap()
    }

    /// The NF4 base as a GPU holds it (codes and scales as tensors, dequantized per product by
    /// tensor ops, every layer in its device-generic form) and as the CPU kernel holds it give the
    /// loss and gradients that the dense dequantized weights give, within 1e-4; the model holds
    /// no dense copy of a quantized weight.
    #[test]
    fn the_nf4_base_trains_in_4_bit_on_every_path_with_the_dense_gradients() {
        use crate::ml::kernels::fused::device_generic;
        use crate::ml::kernels::nf4_device::DeviceNf4;
        use crate::ml::testutil::{max_abs_diff, rel_err};
        let base = random_base();
        let build = || {
            let q = QloraModel::build(&base, &settings(), 3, &Device::Cpu).unwrap();
            // Nonzero B, so that every adapter has a gradient through the frozen layers above it.
            for (name, v) in q.trainable.named_vars() {
                if name.contains("lora_B") {
                    v.set(&(v.as_tensor().ones_like().unwrap() * 0.05).unwrap()).unwrap();
                }
            }
            q
        };
        let kernel = build();
        let mut held = 0;
        for (_, l) in lora::linears_mut(&mut kernel.model.clone()) {
            if let Some(p) = &l.packed {
                assert!(matches!(p, PackedWeight::Nf4(_)));
                assert_eq!(l.weight.stride(), [0, 0], "the stand-in holds no memory");
                held += p.bytes();
            }
        }
        // 4 bits per weight and an f32 scale per block (double quantization decoded).
        let want_held: usize = kernel
            .quantized
            .values()
            .map(|q| q.numel().div_ceil(2) + 4 * q.num_blocks())
            .sum();
        assert_eq!(held, want_held);
        let mut gpu_form = build();
        let mut dense = build();
        for (_, l) in lora::linears_mut(&mut gpu_form.model) {
            if let Some(PackedWeight::Nf4(p)) = &l.packed {
                l.packed = Some(PackedWeight::Nf4Device(Arc::new(
                    DeviceNf4::upload(p, &Device::Cpu).unwrap(),
                )));
            }
        }
        for (_, l) in lora::linears_mut(&mut dense.model) {
            if let Some(p) = l.packed.take() {
                l.weight = p.dense_on(&Device::Cpu).unwrap();
            }
        }
        let (input, labels) = text_input(6, 2);
        let (want_loss, want) = qlora_step(&dense, &input, &labels);
        let runs = [
            ("cpu kernel", qlora_step(&kernel, &input, &labels)),
            ("gpu form", device_generic(|| qlora_step(&gpu_form, &input, &labels))),
        ];
        for (what, (loss, grads)) in runs {
            let e = rel_err(&loss, &want_loss);
            assert!(e <= 1e-4, "{what}: loss differs by {e:e}");
            assert_eq!(grads.len(), want.len());
            for ((name, g), (_, w)) in grads.iter().zip(&want) {
                assert!(
                    max_abs_diff(w, &w.zeros_like().unwrap()) > 0.0,
                    "{name}: a zero gradient proves nothing"
                );
                let e = rel_err(g, w);
                assert!(e <= 1e-4, "{what}: gradient of {name} differs by {e:e}");
            }
        }
    }

    #[test]
    fn adapter_is_a_no_op_before_training_and_only_adapters_and_head_train() {
        let base = random_base();
        let q = QloraModel::build(&base, &settings(), 3, &Device::Cpu).unwrap();
        assert_eq!(q.quantized.len(), 2 * 6 + 1, "encoder linears and the pooler");
        assert!(!q.quantized.contains_key("classifier.weight"));
        // The NF4-dequantized base, built independently.
        let mut deq: HashMap<String, Tensor> = base.params.tensors().unwrap().into_iter().collect();
        for module in lora::base_linears(&base.model.config()) {
            let name = format!("{module}.weight");
            let t = Nf4Tensor::from_tensor(&deq[&name], 64, true)
                .unwrap()
                .to_tensor(&Device::Cpu)
                .unwrap();
            deq.insert(name, t);
        }
        let deq_model = Model::new(
            &base.model.config(),
            VarBuilder::from_tensors(deq, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let (input, labels) = text_input(16, 1);
        let before = logits(&q.model, &input);
        assert_eq!(
            bits(&before),
            bits(&logits(&deq_model, &input)),
            "B = 0: the adapter adds nothing"
        );
        assert!(
            max_abs_diff(&before, &logits(&base.model, &input)) > 1e-4,
            "NF4 rounding shows"
        );
        // Only adapters on query/value and the head are variables.
        let names: Vec<String> = q.trainable.named_vars().into_iter().map(|(k, _)| k).collect();
        assert_eq!(names.len(), 2 * 2 * 2 + 2, "{names:?}");
        assert!(names.iter().all(|n| n.starts_with("classifier.")
            || (n.contains(".lora_") && (n.contains(".query.") || n.contains(".value.")))));
        let frozen_before: Vec<(String, Vec<u32>)> = {
            let mut m = q.model.clone();
            lora::linears_mut(&mut m)
                .into_iter()
                .filter(|(n, _)| n != HEAD)
                .map(|(n, l)| (n, bits(&l.weight)))
                .collect()
        };
        let head_before = bits(&q.trained_tensors().unwrap()["classifier.weight"]);
        let opts = TrainOptions {
            epochs: 1,
            lr: 1e-2,
            ..TrainOptions::default()
        };
        let batches = vec![(input.clone(), labels.clone()); 4];
        train(
            &q.model,
            &q.trainable,
            &opts,
            |_| Ok(batches.clone()),
            |m, (x, y), ctx| candle_nn::loss::cross_entropy(&m.forward(x, ctx)?.logits, y),
            Hooks::default(),
        )
        .unwrap();
        let mut m = q.model.clone();
        let frozen_after: Vec<(String, Vec<u32>)> = lora::linears_mut(&mut m)
            .into_iter()
            .filter(|(n, _)| n != HEAD)
            .map(|(n, l)| (n, bits(&l.weight)))
            .collect();
        assert!(frozen_before == frozen_after, "a frozen NF4 weight moved");
        let trained = q.trained_tensors().unwrap();
        assert_ne!(bits(&trained["classifier.weight"]), head_before);
        let b = &trained["bert.encoder.layer.1.attention.self.value.lora_B.weight"];
        assert!(bits(b).iter().any(|&x| x != 0), "lora_B trained");
        assert_ne!(bits(&logits(&q.model, &input)), bits(&before));
    }

    #[test]
    fn qlora_of_a_tiny_bert_beats_chance_and_keeps_the_nf4_base() {
        let dir = tempfile::tempdir().unwrap();
        let base = trained_base(dir.path());
        let out = dir.path().join("q");
        let (r, log) = ok(run_qlora(&qlora_params(1), &out, &base));
        let m = &r.metrics;
        // Chance is 50% (balanced classes); the briefly trained base is no better (50.4%):
        // what the adapters and the head learn shows.
        let base_acc = json(&base.join("train_metrics.json"))["best_accuracy"]
            .as_f64()
            .unwrap();
        assert!(
            m["accuracy"] > 0.62 && m["accuracy"] > base_acc + 0.08,
            "{m:?} (base {base_acc})\n{log}"
        );
        assert_eq!(m["steps"], 64.0);
        assert!(
            log.contains("quantized 7 linear weights to NF4 (block 64, double quantization)"),
            "{log}"
        );
        assert!(log.contains("on 2 modules (targets [\"query\", \"value\"])"), "{log}");
        // Adapters: 2 × (4·32 + 32·4); head: 32·2 + 2.
        assert_eq!(m["trainable_params"], (2 * 256 + 66) as f64);
        // The packed base is the NF4 quantization of the base's weights, bit for bit.
        let base_w = safetensors(&base.join("model.safetensors"));
        let saved = safetensors(&out.join("model.safetensors"));
        let mut nf4_bytes = 0;
        let mut numel = 0;
        for module in lora::base_linears(&load_pretrained(&base, &LoadOptions::default()).unwrap().model.config()) {
            let w = format!("{module}.weight");
            let want = Nf4Tensor::from_tensor(&base_w[&w], 64, true).unwrap();
            let got = Nf4Tensor::from_state_dict(&saved, &format!("{module}.")).unwrap();
            assert_eq!(got, want, "{w}");
            nf4_bytes += got.bytes();
            numel += got.numel();
        }
        assert_eq!(m["nf4_bytes"], nf4_bytes as f64);
        assert_eq!(m["bits_per_param"], 8.0 * nf4_bytes as f64 / numel as f64);
        assert!(m["bits_per_param"] > 4.1 && m["bits_per_param"] < 4.3, "{m:?}");
        // Embeddings, LayerNorms and biases are the base's; the head was trained.
        for (k, t) in &base_w {
            if k.starts_with("classifier.") {
                assert_ne!(bits(t), bits(&saved[k]), "{k} should have trained");
            } else if !saved.contains_key(&format!("{k}.absmax")) {
                assert_eq!(bits(t), bits(&saved[k]), "{k} changed");
            }
        }
        assert_eq!(
            m["params"],
            (base_w.values().map(Tensor::elem_count).sum::<usize>() + 512) as f64
        );
        let tm = json(&out.join("train_metrics.json"));
        assert_eq!(tm["best_accuracy"].as_f64(), Some(m["accuracy"]));
        assert_eq!(tm["adapted_modules"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn saved_layout_follows_bitsandbytes_and_peft() {
        let dir = tempfile::tempdir().unwrap();
        let base = trained_base(dir.path());
        let out = dir.path().join("q");
        let mut p = qlora_params(1);
        p.insert("max_steps".into(), Value::Int(4));
        p.insert(
            "targets".into(),
            Value::List(std::sync::Arc::new(vec![
                Value::str("query"),
                Value::str("output.dense"),
            ])),
        );
        ok(run_qlora(&p, &out, &base));
        let saved = safetensors(&out.join("model.safetensors"));
        let q = "bert.encoder.layer.0.attention.self.query.weight";
        assert_eq!(saved[q].dtype(), DType::U8);
        assert_eq!(saved[q].dims(), &[32 * 32 / 2, 1]);
        assert_eq!(
            saved[&format!("{q}.absmax")].dtype(),
            DType::U8,
            "double-quantized absmax"
        );
        assert_eq!(saved[&format!("{q}.absmax")].dims(), &[16]);
        assert_eq!(saved[&format!("{q}.quant_map")].dims(), &[16]);
        assert_eq!(saved[&format!("{q}.nested_absmax")].dtype(), DType::F32);
        assert_eq!(saved[&format!("{q}.nested_quant_map")].dims(), &[256]);
        let state: serde_json::Value = serde_json::from_slice(
            &saved[&format!("bert.encoder.layer.0.attention.self.query.{QUANT_STATE_KEY}")]
                .to_vec1::<u8>()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(state["quant_type"], "nf4");
        assert_eq!(state["shape"], serde_json::json!([32, 32]));
        assert_eq!(state["blocksize"], 64);
        assert!(saved.contains_key("bert.pooler.dense.weight.quant_state.bitsandbytes__nf4"));
        for dense in [
            "classifier.weight",
            "classifier.bias",
            "bert.encoder.layer.0.attention.self.query.bias",
        ] {
            assert_eq!(saved[dense].dtype(), DType::F32, "{dense}");
        }
        assert!(!saved.contains_key("classifier.weight.absmax"));
        assert_eq!(saved["bert.embeddings.word_embeddings.weight"].dims(), &[64, 32]);
        let config = json(&out.join("config.json"));
        let qc = &config["quantization_config"];
        assert_eq!(qc["quant_method"], "bitsandbytes");
        assert_eq!(qc["load_in_4bit"], true);
        assert_eq!(qc["bnb_4bit_quant_type"], "nf4");
        assert_eq!(qc["bnb_4bit_use_double_quant"], true);
        assert_eq!(qc["bnb_4bit_compute_dtype"], "float32");
        assert_eq!(qc["bnb_4bit_blocksize"], 64);
        assert_eq!(qc["llm_int8_skip_modules"], serde_json::json!(["classifier"]));
        // The adapter, in PEFT's layout.
        let ac = json(&out.join(ADAPTER_CONFIG));
        assert_eq!(ac["peft_type"], "LORA");
        assert_eq!(ac["task_type"], "SEQ_CLS");
        assert_eq!(ac["r"], 4);
        assert_eq!(ac["lora_alpha"], 8.0);
        assert_eq!(ac["lora_dropout"], 0.05);
        assert_eq!(ac["target_modules"], serde_json::json!(["query", "output.dense"]));
        assert_eq!(ac["bias"], "none");
        assert_eq!(ac["modules_to_save"], serde_json::json!(["classifier"]));
        assert_eq!(ac["base_model_name_or_path"], base.display().to_string());
        assert_eq!(ac["init_lora_weights"], true);
        assert_eq!(ac["use_rslora"], false);
        assert_eq!(ac["inference_mode"], true);
        let adapter = safetensors(&out.join(ADAPTER_WEIGHTS));
        let mut keys: Vec<&str> = adapter.keys().map(String::as_str).collect();
        keys.sort();
        let l = "base_model.model.bert.encoder.layer.0";
        assert_eq!(
            keys,
            [
                format!("{l}.attention.output.dense.lora_A.weight"),
                format!("{l}.attention.output.dense.lora_B.weight"),
                format!("{l}.attention.self.query.lora_A.weight"),
                format!("{l}.attention.self.query.lora_B.weight"),
                format!("{l}.output.dense.lora_A.weight"),
                format!("{l}.output.dense.lora_B.weight"),
                "base_model.model.classifier.bias".to_string(),
                "base_model.model.classifier.weight".to_string(),
            ]
        );
        // A [r, in], B [out, r]: the feed-forward output projection reads 64 features.
        assert_eq!(adapter[&format!("{l}.output.dense.lora_A.weight")].dims(), &[4, 64]);
        assert_eq!(adapter[&format!("{l}.output.dense.lora_B.weight")].dims(), &[32, 4]);
        assert_eq!(
            bits(&adapter["base_model.model.classifier.weight"]),
            bits(&saved["classifier.weight"])
        );
        for f in ["tokenizer.json", "vocab.txt", "train_metrics.json"] {
            assert!(out.join(f).is_file(), "{f} missing");
        }
        assert!(!out.join("merged").exists(), "merge defaults to false");
    }

    #[test]
    fn reload_and_merged_checkpoint_give_the_trained_logits() {
        let dir = tempfile::tempdir().unwrap();
        let base = trained_base(dir.path());
        let out = dir.path().join("q");
        let mut p = qlora_params(1);
        p.insert("epochs".into(), Value::Int(1));
        p.insert("merge".into(), Value::Bool(true));
        ok(run_qlora(&p, &out, &base));
        // The trained adapter model: the base quantized again, the saved adapter values set.
        let b = load_pretrained(&base, &LoadOptions::default()).unwrap();
        let mut s = settings();
        s.lora.targets = vec!["query".into(), "value".into()];
        let q = QloraModel::build(&b, &s, 0, &Device::Cpu).unwrap();
        let adapter = lora::read_adapter(&out).unwrap().unwrap();
        for (name, var) in q.trainable.named_vars() {
            var.set(&adapter.tensors[&name]).unwrap();
        }
        let input = &val_batches(&out, &dir.path().join("cache"))[0].input;
        let trained = logits(&q.model, input);
        let reloaded = load_pretrained(&out, &LoadOptions::default()).unwrap();
        assert!(reloaded.report.initialised.is_empty() && reloaded.report.unused.is_empty());
        assert_eq!(reloaded.model.config().quantization().unwrap(), None);
        let d = max_abs_diff(&logits(&reloaded.model, input), &trained);
        assert!(d < 1e-5, "reloaded vs trained: {d}");
        let merged_dir = out.join("merged");
        let config = json(&merged_dir.join("config.json"));
        assert!(config.get("quantization_config").is_none());
        assert!(merged_dir.join("tokenizer.json").is_file());
        let merged = safetensors(&merged_dir.join("model.safetensors"));
        assert!(merged.values().all(|t| t.dtype() == DType::F32));
        assert_eq!(merged.len(), b.params.named_vars().len(), "a plain dense checkpoint");
        let m = load_pretrained(&merged_dir, &LoadOptions::default()).unwrap();
        let d = max_abs_diff(&logits(&m.model, input), &trained);
        assert!(d < 1e-4, "merged vs trained: {d}");
        // The merge changed the targets only (and the head).
        let base_w = safetensors(&base.join("model.safetensors"));
        let qw = "bert.encoder.layer.0.attention.self.query.weight";
        let kw = "bert.encoder.layer.0.attention.self.key.weight";
        let deq = |w: &str| {
            Nf4Tensor::from_tensor(&base_w[w], 64, true)
                .unwrap()
                .to_tensor(&Device::Cpu)
                .unwrap()
        };
        assert_eq!(bits(&merged[kw]), bits(&deq(kw)));
        assert!(max_abs_diff(&merged[qw], &deq(qw)) > 0.0);
    }

    #[test]
    fn the_same_seed_gives_identical_adapter_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let base = trained_base(dir.path());
        let mut p = qlora_params(1);
        p.insert("max_steps".into(), Value::Int(12));
        let (a, _) = ok(run_qlora(&p, &dir.path().join("a"), &base));
        let (b, _) = ok(run_qlora(&p, &dir.path().join("b"), &base));
        assert_eq!(a.metrics, b.metrics);
        let read = |d: &str, f: &str| std::fs::read(dir.path().join(d).join(f)).unwrap();
        assert!(
            read("a", ADAPTER_WEIGHTS) == read("b", ADAPTER_WEIGHTS),
            "same seed, other adapter"
        );
        assert!(read("a", "model.safetensors") == read("b", "model.safetensors"));
        p.insert("seed".into(), Value::Int(2));
        ok(run_qlora(&p, &dir.path().join("c"), &base));
        assert!(read("a", ADAPTER_WEIGHTS) != read("c", ADAPTER_WEIGHTS));
    }

    #[test]
    fn eval_prune_and_predict_take_a_qlora_output() {
        let dir = tempfile::tempdir().unwrap();
        let base = trained_base(dir.path());
        let out = dir.path().join("q");
        let (q, _) = ok(run_qlora(&qlora_params(1), &out, &base));
        assert!(q.metrics["accuracy"] > 0.6, "{:?}", q.metrics);
        let mut e = Params::new();
        e.insert("model".into(), Value::Stage(StageId(0)));
        e.insert("data".into(), text_data());
        e.insert("batch_size".into(), Value::Int(16));
        let (ev, log) = ok(run_op("eval", &e, &dir.path().join("e"), &out, &Cancel::default(), 1));
        // eval measures the test split (qlora's own figure is on validation, which selected it).
        assert!((ev.metrics["accuracy"] - q.metrics["accuracy"]).abs() < 0.1, "{log}");
        let mut pr = Params::new();
        pr.insert("model".into(), Value::Stage(StageId(0)));
        pr.insert("sparsity".into(), Value::Float(0.3));
        pr.insert("method".into(), Value::str("l1_unstructured"));
        pr.insert("seed".into(), Value::Int(1));
        let pruned = dir.path().join("p");
        let (pm, log) = ok(run_op("prune", &pr, &pruned, &out, &Cancel::default(), 1));
        assert!(pm.metrics["sparsity"] > 0.2, "{:?}\n{log}", pm.metrics);
        let config = json(&pruned.join("config.json"));
        assert!(config.get("quantization_config").is_none(), "the pruned model is dense");
        load_pretrained(&pruned, &LoadOptions::default()).unwrap();
        // `predict` (what a distillation reads from a teacher) runs on it too.
        let mut pd = Params::new();
        pd.insert("model".into(), Value::Stage(StageId(0)));
        pd.insert("data".into(), text_data());
        let (pm, log) = ok(run_op(
            "predict",
            &pd,
            &dir.path().join("pd"),
            &out,
            &Cancel::default(),
            1,
        ));
        assert_eq!(pm.metrics["examples"], 512.0, "{log}");
        assert!(pm.metrics["accuracy"] > 0.6, "{:?}", pm.metrics);
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let base = trained_base(dir.path());
        let err = |p: &Params, name: &str| run_qlora(p, &dir.path().join(name), &base).0.unwrap_err().to_string();
        let mut p = qlora_params(1);
        p.insert(
            "targets".into(),
            Value::List(std::sync::Arc::new(vec![Value::str("query"), Value::str("qkv")])),
        );
        let e = err(&p, "t");
        assert!(e.contains("LoRA target `qkv` matches no linear module"), "{e}");
        assert!(
            e.contains("attention.self.query, attention.self.key, attention.self.value, attention.output.dense"),
            "{e}"
        );
        p.insert(
            "targets".into(),
            Value::List(std::sync::Arc::new(vec![Value::str("classifier")])),
        );
        assert!(err(&p, "c").contains("trained in full"));
        let mut p = qlora_params(1);
        p.insert("block_size".into(), Value::Int(48));
        assert!(err(&p, "b").contains("power of two"));
        let mut p = qlora_params(1);
        p.insert("rank".into(), Value::Int(0));
        assert!(err(&p, "r").contains("rank must be at least 1"));
        let mut p = qlora_params(1);
        p.insert("base".into(), tiny_bert());
        assert!(err(&p, "a").contains("needs trained weights as `base:`"));
        assert!(!dir.path().join("t").join("model.safetensors").exists());
        // Ctrl-C: nothing is written.
        let cancel = Cancel::default();
        cancel.interrupt();
        let (r, _) = run_op("qlora", &qlora_params(1), &dir.path().join("i"), &base, &cancel, 1);
        assert_eq!(r.unwrap_err(), OpError::Interrupted);
        assert!(!dir.path().join("i").join(ADAPTER_WEIGHTS).exists());
    }

    #[test]
    fn a_vit_works_too() {
        let dir = tempfile::tempdir().unwrap();
        let (data, vit) = (image_data(), tiny_vit());
        let base = dir.path().join("base");
        let mut t = train_params(vit, 1, 1);
        t.insert("data".into(), data.clone());
        ok(run_op("train", &t, &base, dir.path(), &Cancel::default(), 1));
        let out = dir.path().join("q");
        let mut p = qlora_params(1);
        p.insert("data".into(), data);
        p.insert("merge".into(), Value::Bool(true));
        let (r, log) = ok(run_qlora(&p, &out, &base));
        assert_eq!(r.metrics["steps"], 12.0);
        assert!(log.contains("quantized 6 linear weights"), "{log}");
        let adapter = safetensors(&out.join(ADAPTER_WEIGHTS));
        assert!(adapter.contains_key("base_model.model.vit.encoder.layer.0.attention.attention.query.lora_A.weight"));
        assert!(adapter.contains_key("base_model.model.vit.encoder.layer.0.attention.attention.value.lora_B.weight"));
        assert_eq!(adapter.len(), 2 * 2 + 2);
        let saved = safetensors(&out.join("model.safetensors"));
        assert_eq!(
            saved["vit.encoder.layer.0.intermediate.dense.weight"].dtype(),
            DType::U8
        );
        assert_eq!(
            saved["vit.embeddings.patch_embeddings.projection.weight"].dtype(),
            DType::F32
        );
        assert!(!out.join("tokenizer.json").exists());
        let reloaded = load_pretrained(&out, &LoadOptions::default()).unwrap();
        let merged = load_pretrained(&out.join("merged"), &LoadOptions::default()).unwrap();
        let x = ModelInput::Images {
            pixel_values: Tensor::randn(0f32, 1.0, (2, 3, 16, 16), &Device::Cpu).unwrap(),
        };
        let d = max_abs_diff(&logits(&reloaded.model, &x), &logits(&merged.model, &x));
        assert!(d < 1e-5, "{d}");
    }
}

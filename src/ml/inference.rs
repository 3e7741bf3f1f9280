//! Loading a model for inference as it is stored: no autograd variables, and NF4 weights that
//! stay 4-bit.
//!
//! [`load_pretrained`](super::checkpoint::load_pretrained) builds a trainable model: every
//! tensor becomes a variable (a copy), NF4 weights are dequantized and a LoRA adapter is merged.
//! For `eval` and `predict`, [`load_inference`] instead builds the model straight on the
//! checkpoint's tensors (shared, not copied), keeps each NF4 linear weight packed (the layer
//! multiplies with it through [`crate::ml::kernels::nf4_kernel`] on the CPU, or dequantizes it on
//! the GPU per product ([`crate::ml::kernels::nf4_device`]), holding 4 bits per weight and
//! one f32 scale per block instead of 32 bits), and keeps a LoRA adapter on such a weight as a
//! separate low-rank branch (merging it would need the dense weight). Adapter weights on dense
//! layers and fully saved modules (the head) are merged as before. A pruned linear weight with at
//! least [`SPARSE_FROM`] zeros is held in compressed sparse rows and multiplied by
//! [`crate::ml::kernels::sparse_kernel`]; below that the dense kernel is faster.
//!
//! Sizes ([`Sizes`]) are counted as [`load_pretrained`](super::checkpoint::load_pretrained)'s
//! model would give them — the adapter merged — one tensor at a time, so no dense copy of the
//! model exists at any point.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{Init, VarBuilder};

use super::checkpoint::{nf4_prefixes, read_checkpoint, take_nf4, tensor_err, CheckpointError};
use super::compress::lora::{merge_tensors, read_adapter, ADAPTER_WEIGHTS};
use super::compress::sizes::{SizeCounter, Sizes};
use super::kernels::nf4_kernel::PackedNf4;
use super::kernels::sparse_kernel::SPARSE_FROM;
use super::models::config::ModelConfig;
use super::models::layers::{stand_in, Dropout, LoraBranch, PackedWeight};
use super::models::linears::{linear_modules, linears_mut};
use super::models::model::Model;
use super::models::params::init_tensor;

/// A model ready for inference, with what it holds.
pub struct Inference {
    /// The model (no autograd variables).
    pub model: Model,
    /// Its configuration (quantization cleared: it computes in f32).
    pub config: ModelConfig,
    /// The linear weights kept in NF4, by tensor name.
    pub nf4_weights: Vec<String>,
    /// The pruned linear weights multiplied by the sparse kernel, by tensor name.
    pub sparse_weights: Vec<String>,
    /// Bytes of the weights the model holds (dense tensors, packed NF4 weights and scales).
    pub weight_bytes: u64,
    /// Sizes of the model (when asked for).
    pub sizes: Option<Sizes>,
    /// Tensors the checkpoint lacked (initialised at random from seed 0).
    pub missing: Vec<String>,
}

/// Loads the HF directory `dir` for inference on `device` (see the module doc); with
/// `measure_sizes`, also counts its [`Sizes`].
pub fn load_inference(dir: &Path, device: &Device, measure_sizes: bool) -> Result<Inference, CheckpointError> {
    let format_err = |path: &Path, message: String| CheckpointError::Format {
        path: path.to_path_buf(),
        message,
    };
    let (mut config, mut tensors) = read_checkpoint(dir, device)?;
    // NF4 weights of the catalog's linears stay packed; any other NF4 tensor is made dense.
    let linear_weights: Vec<String> = linear_modules(&config).iter().map(|m| m.weight()).collect();
    let mut packed: BTreeMap<String, Arc<PackedNf4>> = BTreeMap::new();
    for prefix in nf4_prefixes(&tensors).map_err(|m| format_err(dir, m))? {
        let q = take_nf4(&mut tensors, &prefix).map_err(|m| format_err(dir, m))?;
        let name = format!("{prefix}weight");
        match q.to_packed().filter(|_| linear_weights.contains(&name)) {
            Some(p) => {
                packed.insert(name, Arc::new(p));
            }
            None => {
                let dense = q
                    .to_tensor(device)
                    .map_err(|e| format_err(dir, format!("`{name}`: {e}")))?;
                tensors.insert(name, dense);
            }
        }
    }
    config.set_quantization(None);
    // A LoRA adapter: branches on the packed weights, merged everywhere else.
    let mut halves: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    let mut adapter_scale = 1.0;
    if let Some(adapter) = read_adapter(dir)? {
        adapter_scale = adapter.config.scale();
        let mut rest = HashMap::new();
        for (name, t) in super::checkpoint::normalize_names(&config, adapter.tensors) {
            let t = t.to_device(device).map_err(tensor_err(dir))?;
            let (module, is_a) = match (name.strip_suffix(".lora_A.weight"), name.strip_suffix(".lora_B.weight")) {
                (Some(m), _) => (Some(m), true),
                (_, Some(m)) => (Some(m), false),
                _ => (None, false),
            };
            match module {
                Some(m) if packed.contains_key(&format!("{m}.weight")) => {
                    let entry = halves.entry(m.to_string()).or_default();
                    if is_a {
                        entry.0 = Some(t);
                    } else {
                        entry.1 = Some(t);
                    }
                }
                _ => {
                    rest.insert(name, t);
                }
            }
        }
        merge_tensors(&mut tensors, &rest, adapter_scale)
            .map_err(|e| format_err(&dir.join(ADAPTER_WEIGHTS), e.to_string()))?;
    }
    let mut branches: HashMap<String, (Tensor, Tensor)> = HashMap::new();
    for (m, pair) in halves {
        let (Some(a), Some(b)) = pair else {
            let message = format!("the adapter has only one of `{m}.lora_A.weight` and `{m}.lora_B.weight`");
            return Err(format_err(&dir.join(ADAPTER_WEIGHTS), message));
        };
        branches.insert(m, (a, b));
    }
    let shapes: HashMap<String, Vec<usize>> = packed
        .iter()
        .map(|(k, p)| {
            let (r, c) = p.dims();
            (k.clone(), vec![r, c])
        })
        .collect();
    let backend = Backed {
        tensors,
        stand_ins: shapes,
        used: Mutex::new(Vec::new()),
        missing: Mutex::new(Vec::new()),
    };
    let backend = Arc::new(backend);
    let vb = VarBuilder::from_backend(Box::new(Shared(backend.clone())), DType::F32, device.clone());
    let mut model = Model::new(&config, vb).map_err(tensor_err(dir))?;
    // Hand each packed weight (and its adapter branch) to its layer.
    for (name, linear) in linears_mut(&mut model) {
        let weight = format!("{name}.weight");
        if let Some(p) = packed.get(&weight) {
            linear
                .keep_packed(PackedWeight::nf4_on(p.clone(), device).map_err(tensor_err(dir))?)
                .map_err(tensor_err(dir))?;
            if let Some((a, b)) = branches.get(&name) {
                let fits = matches!((a.dims(), b.dims()), ([r, i], [o, r2]) if r == r2 && (*o, *i) == p.dims());
                if !fits {
                    let message = format!(
                        "the adapter's `{name}` is lora_A {:?}, lora_B {:?} for a weight {:?}",
                        a.dims(),
                        b.dims(),
                        p.dims()
                    );
                    return Err(format_err(&dir.join(ADAPTER_WEIGHTS), message));
                }
                linear.lora = Some(LoraBranch {
                    a: a.clone(),
                    b: b.clone(),
                    scale: adapter_scale,
                    dropout: Dropout::new(0.0),
                });
            }
        }
    }
    // Pruned dense linears sparse enough for the sparse kernel to be faster (see its module);
    // the bytes each linear's weight holds as it is held.
    let (mut sparse, mut weight_bytes) = (Vec::new(), 0u64);
    let mut linear_weights = std::collections::HashSet::new();
    for (name, linear) in linears_mut(&mut model) {
        if device.is_cpu() && linear.keep_sparse_from(SPARSE_FROM).map_err(tensor_err(dir))? {
            sparse.push(format!("{name}.weight"));
        }
        weight_bytes += linear.weight_bytes();
        linear_weights.insert(format!("{name}.weight"));
    }
    let used = std::mem::take(&mut *backend.used.lock().unwrap_or_else(|e| e.into_inner()));
    let missing = std::mem::take(&mut *backend.missing.lock().unwrap_or_else(|e| e.into_inner()));
    let mut sorted = used;
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted.dedup_by(|a, b| a.0 == b.0);
    weight_bytes += sorted
        .iter()
        .filter(|(name, _)| !linear_weights.contains(name))
        .map(|(_, t)| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
        .sum::<u64>();
    let mut counter = measure_sizes.then(|| SizeCounter::new(&config));
    if let Some(counter) = counter.as_mut() {
        for (name, t) in &sorted {
            let values = match packed.get(name) {
                // As the merged dense model has it: dequantized, plus the adapter's update.
                Some(p) => merged_values(name, p, branches.get(name.trim_end_matches(".weight")), adapter_scale)
                    .map_err(tensor_err(dir))?,
                None => t
                    .to_dtype(DType::F32)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(tensor_err(dir))?,
            };
            counter.add(name, t.dims(), &values).map_err(tensor_err(dir))?;
        }
    }
    let nf4_weights = packed.keys().cloned().collect();
    Ok(Inference {
        model,
        config,
        nf4_weights,
        sparse_weights: sparse,
        weight_bytes,
        sizes: counter.map(|c| c.sizes()),
        missing,
    })
}

/// The values of an NF4 weight with its adapter merged, as `load_pretrained` computes them.
fn merged_values(
    name: &str,
    p: &PackedNf4,
    branch: Option<&(Tensor, Tensor)>,
    scale: f64,
) -> candle_core::Result<Vec<f32>> {
    let values = p.dequantize();
    let Some((a, b)) = branch else {
        return Ok(values);
    };
    let dense = Tensor::from_vec(values, p.dims(), &Device::Cpu)?;
    let module = name.trim_end_matches(".weight");
    let mut one = HashMap::from([(name.to_string(), dense)]);
    let pair = HashMap::from([
        (format!("{module}.lora_A.weight"), a.to_device(&Device::Cpu)?),
        (format!("{module}.lora_B.weight"), b.to_device(&Device::Cpu)?),
    ]);
    merge_tensors(&mut one, &pair, scale).map_err(candle_core::Error::wrap)?;
    one[name].flatten_all()?.to_vec1::<f32>()
}

/// The tensors a model is built on: the checkpoint's own (shared, not copied), a stand-in
/// without memory for each packed weight, and a seeded random tensor for anything missing.
struct Backed {
    tensors: HashMap<String, Tensor>,
    stand_ins: HashMap<String, Vec<usize>>,
    /// Every tensor handed out, by name.
    used: Mutex<Vec<(String, Tensor)>>,
    missing: Mutex<Vec<String>>,
}

/// [`Backed`] shared with the builder (which takes its backend by value).
struct Shared(Arc<Backed>);

impl candle_nn::var_builder::SimpleBackend for Shared {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let b = &self.0;
        let t = if let Some(dims) = b.stand_ins.get(name) {
            if dims.as_slice() != s.dims() {
                candle_core::bail!("NF4 weight `{name}` has shape {dims:?} but the model expects {s:?}")
            }
            stand_in(s, dtype, dev)?
        } else if let Some(t) = b.tensors.get(name) {
            if t.shape() != &s {
                candle_core::bail!(
                    "checkpoint tensor `{name}` has shape {:?} but the model (from its config) expects {s:?}",
                    t.shape()
                )
            }
            t.to_device(dev)?.to_dtype(dtype)?
        } else {
            b.missing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(name.to_string());
            init_tensor(0, name, &s, h, dtype, dev)?
        };
        b.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_string(), t.clone()));
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.0.tensors.get(name) {
            Some(t) => t.to_device(dev)?.to_dtype(dtype),
            None => candle_core::bail!("no tensor named `{name}`"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.tensors.contains_key(name) || self.0.stand_ins.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::checkpoint::{load_pretrained, save_pretrained, save_quantized, LoadOptions};
    use crate::ml::compress::lora::{base_linears, save_adapter, AdapterConfig, LoraConfig};
    use crate::ml::compress::nf4::Nf4Tensor;
    use crate::ml::compress::sizes;
    use crate::ml::models::config::QuantizationConfig;
    use crate::ml::testutil::{max_abs_diff, text_input, tiny_bert};
    use crate::ml::{ForwardCtx, Pretrained};

    fn logits(model: &Model) -> Tensor {
        model.forward(&text_input(), &mut ForwardCtx::eval()).unwrap().logits
    }

    /// A QLoRA output of `tiny_bert` (hidden 16): the base linears in NF4, an adapter on query
    /// and value, a trained head.
    fn qlora_dir(config: &ModelConfig) -> tempfile::TempDir {
        let p = Pretrained::random(config, 8, &Device::Cpu).unwrap();
        let mut dense: HashMap<String, Tensor> = p.params.tensors().unwrap().into_iter().collect();
        let mut quantized = BTreeMap::new();
        for module in base_linears(config) {
            let name = format!("{module}.weight");
            quantized.insert(
                name.clone(),
                Nf4Tensor::from_tensor(&dense.remove(&name).unwrap(), 64, true).unwrap(),
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let qc = QuantizationConfig::nf4(true, 64, vec!["classifier".into()]);
        save_quantized(dir.path(), config, &dense, &quantized, &qc).unwrap();
        let lora = LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.1,
            targets: vec!["query".into(), "value".into()],
        };
        let mut rng = crate::ml::Rng::new(3);
        let mut adapter = BTreeMap::new();
        for module in base_linears(config)
            .into_iter()
            .filter(|m| m.ends_with("query") || m.ends_with("value"))
        {
            let (out, inp) = (16, 16);
            let a = Tensor::from_vec(rng.normal_vec(4 * inp, 0.0, 0.1), (4, inp), &Device::Cpu).unwrap();
            let b = Tensor::from_vec(rng.normal_vec(out * 4, 0.0, 0.1), (out, 4), &Device::Cpu).unwrap();
            adapter.insert(format!("{module}.lora_A.weight"), a);
            adapter.insert(format!("{module}.lora_B.weight"), b);
        }
        // The head, fully saved (PEFT's modules_to_save), replaces the base's.
        let head = Tensor::from_vec(rng.normal_vec(2 * 16, 0.0, 0.1), (2, 16), &Device::Cpu).unwrap();
        adapter.insert("classifier.weight".into(), head);
        save_adapter(dir.path(), &AdapterConfig::seq_cls(&lora, None), &adapter).unwrap();
        dir
    }

    /// Every base linear NF4, without and with a LoRA adapter on each: q, k and v as one NF4 op,
    /// the residual sums and the feed-forward GELU inside the NF4 ops, the adapter inside each —
    /// the logits of the dense model holding the dequantized weights (and the same adapters, on
    /// the composite path), on the whole forward and on the first-token one.
    #[test]
    fn an_nf4_model_computes_what_its_dequantized_weights_compute_with_and_without_adapters() {
        let config = ModelConfig::Bert(tiny_bert(2));
        // Frozen weights, as `load_inference` holds them (nothing tracks a gradient).
        let params = crate::ml::ParamStore::new(9);
        Model::new(&config, params.var_builder(DType::F32, &Device::Cpu)).unwrap();
        let frozen = || Model::new(&config, params.frozen_var_builder(DType::F32, &Device::Cpu)).unwrap();
        let quantized = base_linears(&config);
        let mut logits = Vec::new();
        for adapters in [false, true] {
            let (mut nf4, mut dense) = (frozen(), frozen());
            let mut rng = crate::ml::Rng::new(10);
            let dense_linears = crate::ml::models::linears::linears_mut(&mut dense);
            for ((name, linear), (_, reference)) in crate::ml::models::linears::linears_mut(&mut nf4)
                .into_iter()
                .zip(dense_linears)
            {
                if !quantized.contains(&name) {
                    continue;
                }
                let packed = Nf4Tensor::from_tensor(&linear.weight, 64, true)
                    .unwrap()
                    .to_packed()
                    .unwrap();
                reference.weight = Tensor::from_vec(packed.dequantize(), linear.weight.dims(), &Device::Cpu).unwrap();
                linear
                    .keep_packed(PackedWeight::Nf4(std::sync::Arc::new(packed)))
                    .unwrap();
                if adapters {
                    let (out, inp) = linear.weight.dims2().unwrap();
                    let a = Tensor::from_vec(rng.normal_vec(4 * inp, 0.0, 0.3), (4, inp), &Device::Cpu).unwrap();
                    let b = Tensor::from_vec(rng.normal_vec(out * 4, 0.0, 0.3), (out, 4), &Device::Cpu).unwrap();
                    let branch = LoraBranch {
                        a,
                        b,
                        scale: 2.0,
                        dropout: Dropout::new(0.1),
                    };
                    linear.lora = Some(branch.clone());
                    reference.lora = Some(branch);
                }
            }
            for ctx in [ForwardCtx::eval(), ForwardCtx::eval().logits_only()] {
                let run = |m: &Model| m.forward(&text_input(), &mut ctx.clone()).unwrap().logits;
                let (a, b) = (run(&nf4), run(&dense));
                let err = max_abs_diff(&a, &b);
                assert!(err < 1e-5, "adapters {adapters}: {err}");
                logits.push(a);
            }
        }
        // The adapters change what the model computes (so the comparisons above see them).
        assert!(max_abs_diff(&logits[0], &logits[2]) > 1e-2);
    }

    #[test]
    fn a_qlora_output_runs_4_bit_with_its_adapter_and_agrees_with_the_merged_dense_model() {
        let config = ModelConfig::Bert(tiny_bert(2));
        let dir = qlora_dir(&config);
        let dense = load_pretrained(dir.path(), &LoadOptions::default()).unwrap();
        let inf = load_inference(dir.path(), &Device::Cpu, true).unwrap();
        assert_eq!(inf.nf4_weights.len(), base_linears(&config).len());
        assert!(inf.sparse_weights.is_empty() && inf.missing.is_empty());
        // Same predictions as the dequantized, merged model (the sums differ only in order).
        let err = max_abs_diff(&logits(&inf.model), &logits(&dense.model));
        assert!(err < 1e-4, "{err}");
        // Sizes as the merged dense model has them, without building it.
        assert_eq!(inf.sizes, Some(sizes::measure(&config, &dense.params).unwrap()));
        // The held weights: the quantized linears at 4.5 bits instead of 32.
        let linears: usize = base_linears(&config)
            .iter()
            .map(|m| dense.params.tensors().unwrap()[&format!("{m}.weight")].elem_count())
            .sum();
        let all = 4 * dense.params.num_parameters() as u64;
        // 2 layers × (query, value) × (A 4×16 + B 16×4), f32.
        let adapter = 4 * (2 * 2 * 2 * 4 * 16) as u64;
        let expected = all - 4 * linears as u64 + (linears as u64 * 9).div_ceil(16) + adapter;
        assert!(
            inf.weight_bytes.abs_diff(expected) < 64,
            "{} vs {expected}",
            inf.weight_bytes
        );
    }

    #[test]
    fn a_pruned_model_runs_sparse_where_most_of_its_weights_are_zero() {
        let config = ModelConfig::Bert(tiny_bert(2));
        let p = Pretrained::random(&config, 9, &Device::Cpu).unwrap();
        let names = crate::ml::prune::prunable_weights(&config, crate::ml::prune::Scope::Encoder);
        crate::ml::prune::prune_unstructured(&p.params, &names[..3], 0.85, false, crate::ml::prune::Zeros::Weights)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        save_pretrained(dir.path(), &config, &p.params).unwrap();
        let inf = load_inference(dir.path(), &Device::Cpu, true).unwrap();
        assert_eq!(inf.sparse_weights, names[..3].to_vec());
        let dense = load_pretrained(dir.path(), &LoadOptions::default()).unwrap();
        let err = max_abs_diff(&logits(&inf.model), &logits(&dense.model));
        assert!(err < 1e-4, "{err}");
        assert_eq!(inf.sizes, Some(sizes::measure(&config, &dense.params).unwrap()));
        assert!(inf.weight_bytes < 4 * dense.params.num_parameters() as u64);
    }

    #[test]
    fn a_dense_model_loads_as_it_is_and_missing_tensors_are_named() {
        let config = ModelConfig::Bert(tiny_bert(2));
        let p = Pretrained::random(&config, 10, &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save_pretrained(dir.path(), &config, &p.params).unwrap();
        let inf = load_inference(dir.path(), &Device::Cpu, false).unwrap();
        assert!(inf.nf4_weights.is_empty() && inf.sparse_weights.is_empty() && inf.sizes.is_none());
        assert_eq!(
            crate::ml::testutil::bits(&logits(&inf.model)),
            crate::ml::testutil::bits(&logits(&p.model))
        );
        assert_eq!(inf.weight_bytes, 4 * p.params.num_parameters() as u64);
        // Without the head: named as missing, and initialised from seed 0 as `load_pretrained` does.
        let mut t = p.params.tensors().unwrap();
        t.remove("classifier.weight");
        let map: HashMap<String, Tensor> = t.into_iter().collect();
        candle_core::safetensors::save(&map, dir.path().join("model.safetensors")).unwrap();
        let inf = load_inference(dir.path(), &Device::Cpu, false).unwrap();
        assert_eq!(inf.missing, vec!["classifier.weight".to_string()]);
        let dense = load_pretrained(dir.path(), &LoadOptions::default()).unwrap();
        assert_eq!(
            crate::ml::testutil::bits(&logits(&inf.model)),
            crate::ml::testutil::bits(&logits(&dense.model))
        );
    }
}

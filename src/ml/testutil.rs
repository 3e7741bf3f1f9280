//! Helpers shared by the ml tests: tiny configs, seeded batches, comparisons.

use std::path::PathBuf;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};

use crate::ml::kernels::rng::Rng;
use crate::ml::models::config::{BertConfig, VitConfig};
use crate::ml::models::model::ModelInput;
use crate::ml::models::params::ParamStore;

/// A 2-layer BERT small enough for sub-second tests, with dropout on.
pub fn tiny_bert(num_labels: usize) -> BertConfig {
    let mut c = BertConfig::new(50, 16, 2, 2, 32, num_labels);
    c.max_position_embeddings = 16;
    c
}

/// A 2-layer ViT on 8×8 images with 4×4 patches, with dropout on.
pub fn tiny_vit(num_labels: usize) -> VitConfig {
    let mut c = VitConfig::new(8, 4, 3, 16, 2, 2, 32, num_labels);
    c.hidden_dropout_prob = 0.1;
    c.attention_probs_dropout_prob = 0.1;
    c
}

/// Seeded token ids `[batch, seq]` in `[1, vocab)`, an attention mask whose last row is
/// padded after `seq - 2` tokens, and token types (second half of each row is segment 1).
pub fn text_batch(batch: usize, seq: usize, vocab: usize, seed: u64) -> (Tensor, Tensor, Tensor) {
    let mut rng = Rng::new(seed);
    let ids: Vec<u32> = (0..batch * seq)
        .map(|_| 1 + rng.below(vocab as u64 - 1) as u32)
        .collect();
    let mask: Vec<u32> = (0..batch * seq)
        .map(|i| u32::from(!(i / seq == batch - 1 && i % seq >= seq - 2)))
        .collect();
    let types: Vec<u32> = (0..batch * seq).map(|i| u32::from(i % seq >= seq / 2)).collect();
    let dev = Device::Cpu;
    (
        Tensor::from_vec(ids, (batch, seq), &dev).unwrap(),
        Tensor::from_vec(mask, (batch, seq), &dev).unwrap(),
        Tensor::from_vec(types, (batch, seq), &dev).unwrap(),
    )
}

/// Seeded standard-normal pixels `[batch, channels, size, size]`.
pub fn image_batch(batch: usize, channels: usize, size: usize, seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let v = rng.normal_vec(batch * channels * size * size, 0.0, 1.0);
    Tensor::from_vec(v, (batch, channels, size, size), &Device::Cpu).unwrap()
}

/// Seeded class targets in `[0, n)`.
pub fn targets(batch: usize, n: usize, seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let v: Vec<u32> = (0..batch).map(|_| rng.below(n as u64) as u32).collect();
    Tensor::from_vec(v, batch, &Device::Cpu).unwrap()
}

/// A seeded text batch of 3 sequences of 7 tokens (vocabulary 50, the last one padded) as a
/// model input.
pub fn text_input() -> ModelInput {
    let (ids, mask, types) = text_batch(3, 7, 50, 2);
    ModelInput::Text {
        input_ids: ids,
        token_type_ids: Some(types),
        attention_mask: Some(mask),
    }
}

/// A tensor's f32 values as bit patterns, for exact (bit-identical) comparisons.
pub fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// `max|a - b|`.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap()
}

/// `max|a - b| / max|b|`.
pub fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let d = max_abs_diff(a, b);
    let m: f32 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    d / m.max(f32::MIN_POSITIVE)
}

/// The cross-entropy of `logits` against `labels`, then every variable's gradient (in `params`'
/// order), flattened: what one training step computes.
pub fn loss_and_gradients(params: &ParamStore, logits: &Tensor, labels: &Tensor) -> Vec<f32> {
    let loss = candle_nn::loss::cross_entropy(logits, labels).unwrap();
    let grads = loss.backward().unwrap();
    let mut all = vec![loss.to_scalar::<f32>().unwrap()];
    for (name, v) in params.named_vars() {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        all.extend(g.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    all
}

/// `max|a - b| / max|b|` of two equally long slices.
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale.max(f32::MIN_POSITIVE)
}

/// Panics unless every variable of `params` has a gradient with a non-zero entry;
/// returns the number of variables checked.
pub fn assert_every_var_has_gradient(params: &ParamStore, grads: &GradStore) -> usize {
    let vars = params.named_vars();
    let mut missing = Vec::new();
    let mut zero = Vec::new();
    for (name, var) in &vars {
        match grads.get(var.as_tensor()) {
            None => missing.push(name.clone()),
            Some(g) => {
                let s: f32 = g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
                if !(s > 0.0 && s.is_finite()) {
                    zero.push(format!("{name} (|g| sum {s})"));
                }
            }
        }
    }
    assert!(
        missing.is_empty() && zero.is_empty(),
        "no gradient: {missing:?}; zero gradient: {zero:?}"
    );
    vars.len()
}

/// The real checkpoint folder, or `None` (with a printed reason) when the shared data is absent.
pub fn minilm_dir() -> Option<PathBuf> {
    let Some(data) = std::env::var_os("RKD_SHARED_DATA") else {
        crate::say!("skipped: RKD_SHARED_DATA is not set (needs ../shared/models/all-MiniLM-L6-v2)");
        return None;
    };
    let dir = PathBuf::from(data).join("../models/all-MiniLM-L6-v2");
    if !dir.join("model.safetensors").is_file() {
        crate::say!("skipped: {} has no model.safetensors", dir.display());
        return None;
    }
    Some(dir)
}

/// A tensor of normal(0, `std`) values from `rng`.
pub fn randn(rng: &mut Rng, dims: &[usize], std: f64) -> Tensor {
    let n: usize = dims.iter().product();
    Tensor::from_vec(rng.normal_vec(n, 0.0, std), dims, &Device::Cpu).unwrap()
}

/// The values of `t` as f64, flattened.
pub fn values_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(candle_core::DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// max |a − b| / max |b| (b the reference).
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (values_f64(a), values_f64(b));
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

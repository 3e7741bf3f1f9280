//! Magnitude pruning of the classifiers: L1 unstructured (per tensor or with one global
//! threshold) and structured removal of whole attention heads.
//!
//! Semantics follow `torch.nn.utils.prune`:
//! - **What is prunable**: the weights of linear layers only — attention query/key/value and
//!   output projections, the feed-forward `intermediate.dense` and `output.dense`, and (scope
//!   [`Scope::Linear`]) the BERT pooler and the classifier. Biases, LayerNorms, embeddings and
//!   ViT's patch projection are never pruned.
//! - **How many**: `round(sparsity · remaining)` weights, where `remaining` counts the weights
//!   that are not already exactly zero, with Python's `round` (half to even) as torch uses.
//!   Exact zeros already in a prunable weight are taken to be an earlier pass's mask, as torch's
//!   `PruningContainer` applies a new amount to the still-unpruned entries: pruning 30% and then
//!   30% again leaves 0.3 + 0.7·0.3 = 51% of the weights at zero.
//! - **Which**: the smallest |w| among the remaining weights; ties are broken by position (the
//!   earlier weight in [`prunable_weights`] order, then the lower flat index, is pruned first),
//!   so the result is deterministic.
//! - **Per tensor** ([`Method::L1Unstructured`], torch's `l1_unstructured` on each tensor) or
//!   **global** ([`Method::L1Global`], torch's `global_unstructured` over the concatenation of
//!   all prunable weights, so per-tensor sparsity differs).
//! - **Heads** ([`Method::Heads`]): the importance of a head is the L1 norm of its weights — its
//!   `head_dim` rows of the query, key and value weights plus its `head_dim` input columns of
//!   the attention output projection (biases left out; raw norms, compared across layers). Of
//!   the heads still present, the `round(sparsity · heads)` of smallest importance over all
//!   layers are removed, keeping at least one head per layer (so fewer may go). The `scope`
//!   only decides which weights the sparsity figures count. The matrices really shrink
//!   (query/key/value become `[kept · head_dim, hidden]`, the output projection
//!   `[hidden, kept · head_dim]`) and the config records the removed heads in Hugging Face's
//!   `pruned_heads` (`{"layer": [original head indices]}`), so the saved checkpoint loads here
//!   and in transformers.
//!
//! The zeros are baked into the weights (torch's `prune.remove`); [`Masks`] keep them at zero
//! when the optimiser would move them during fine-tuning.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use candle_core::{DType, Device, Result, Tensor, Var};
use serde::Serialize;

use crate::keyword::Keyword;
use crate::ml::models::config::{ModelConfig, PrunedHeads};
use crate::ml::models::linears::{encoder_module, linear_modules, LinearModule, Role};
use crate::ml::models::model::Model;
use crate::ml::models::model::Pretrained;
use crate::ml::models::params::ParamStore;

crate::keywords! {
    /// Which weights may be pruned.
    pub enum Scope {
        /// Every linear weight: the encoder's, the pooler's (BERT) and the classifier's.
        Linear = "linear",
        /// Only the encoder layers' linear weights (pooler and classifier kept whole).
        Encoder = "encoder",
    }
}

crate::keywords! {
    /// How weights are chosen.
    pub enum Method {
        /// The smallest |w| of each prunable weight tensor separately.
        L1Unstructured = "l1_unstructured",
        /// The smallest |w| over all prunable weights together (one threshold).
        L1Global = "l1_global",
        /// Whole attention heads of smallest L1 norm, removed from the matrices.
        Heads = "heads",
    }
}

/// Names of the prunable linear weights of a model with this config, in catalog order
/// ([`linear_modules`]): each encoder layer's query, key, value, attention output, intermediate
/// and output weights, then (scope `linear`) the pooler's (BERT) and the classifier's. Global
/// ties follow this order.
pub fn prunable_weights(config: &ModelConfig, scope: Scope) -> Vec<String> {
    linear_modules(config)
        .iter()
        .filter(|m| scope == Scope::Linear || m.layer.is_some())
        .map(LinearModule::weight)
        .collect()
}

/// The encoder layer a tensor name belongs to (`None` for the head, pooler and embeddings).
pub fn layer_of(name: &str) -> Option<usize> {
    let rest = name.split_once(".encoder.layer.")?.1;
    rest.split('.').next()?.parse().ok()
}

/// How many of `remaining` unpruned entries a pass of `sparsity` prunes: `round(sparsity ·
/// remaining)` with ties to even (Python's `round`, as torch's `_compute_nparams_toprune`).
pub fn amount_to_prune(sparsity: f64, remaining: usize) -> usize {
    let k = (sparsity * remaining as f64).round_ties_even();
    if k <= 0.0 {
        0
    } else {
        (k as usize).min(remaining)
    }
}

/// What the entries of a model that are already zero are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zeros {
    /// Pruned by an earlier pruning: they stay pruned and a new amount applies to the entries
    /// left (torch's pruning containers: 30% twice gives 51%).
    Pruned,
    /// Weights like any other (a dequantised NF4 weight has exact zeros): they are the smallest
    /// |w| and count in the amount, as torch's pruning of a fresh module (30% gives 30%).
    Weights,
}

impl Zeros {
    /// Whether `x` is a candidate for pruning (not already pruned).
    fn candidate(self, x: f32) -> bool {
        self == Zeros::Weights || x != 0.0
    }

    /// The entries of `v` a pruning may still prune.
    pub fn remaining(self, v: &[f32]) -> usize {
        v.iter().filter(|x| self.candidate(**x)).count()
    }
}

/// Keep flags for `values` (one slice per tensor) after pruning the `k` candidate entries of
/// smallest |w| taken over all slices together; with [`Zeros::Pruned`] entries already zero stay
/// pruned and are not counted in `k`. Ties go by position: earlier slice, then lower index,
/// pruned first.
pub fn smallest_magnitude_keep(values: &[&[f32]], k: usize, zeros: Zeros) -> Vec<Vec<bool>> {
    let mut keep: Vec<Vec<bool>> = values
        .iter()
        .map(|v| v.iter().map(|x| zeros.candidate(*x)).collect())
        .collect();
    // |w| of a float orders like its bit pattern (non-negative floats; NaN sorts last, kept).
    let mut keys: Vec<u32> = values
        .iter()
        .flat_map(|v| v.iter().filter(|x| zeros.candidate(**x)).map(|x| x.abs().to_bits()))
        .collect();
    let k = k.min(keys.len());
    if k == 0 {
        return keep;
    }
    let threshold = *keys.select_nth_unstable(k - 1).1;
    let below = keys.iter().filter(|&&b| b < threshold).count();
    let mut ties = k - below;
    for (v, kv) in values.iter().zip(keep.iter_mut()) {
        for (x, flag) in v.iter().zip(kv.iter_mut()) {
            if !zeros.candidate(*x) {
                continue;
            }
            let b = x.abs().to_bits();
            if b < threshold {
                *flag = false;
            } else if b == threshold && ties > 0 {
                *flag = false;
                ties -= 1;
            }
        }
    }
    keep
}

/// A tensor's values as f32, flattened.
fn values_of(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// Number of nonzero entries of a tensor.
fn count_nonzero(t: &Tensor) -> Result<usize> {
    Ok(values_of(t)?.iter().filter(|x| **x != 0.0).count())
}

/// The variables named `names`, in that order; a missing one is an error.
fn vars_named(params: &ParamStore, names: &[String]) -> Result<Vec<Var>> {
    let all: HashMap<String, Var> = params.named_vars().into_iter().collect();
    names
        .iter()
        .map(|n| match all.get(n) {
            Some(v) => Ok(v.clone()),
            None => candle_core::bail!("the model has no weight `{n}` to prune"),
        })
        .collect()
}

/// Keep masks of pruned weights by variable name (1 keeps, 0 prunes), re-applied after every
/// optimiser update while fine-tuning so that pruned weights stay exactly zero.
#[derive(Debug, Clone, Default)]
pub struct Masks {
    masks: BTreeMap<String, Tensor>,
}

impl Masks {
    /// Masks of the current exact zeros of the weights `names` (the zeros are the pruned
    /// entries); weights without a zero need no mask and get none.
    pub fn of_zeros(params: &ParamStore, names: &[String]) -> Result<Self> {
        let mut masks = BTreeMap::new();
        for (name, var) in names.iter().zip(vars_named(params, names)?) {
            let t = var.as_tensor();
            let keep = t.ne(&t.zeros_like()?)?;
            if count_nonzero(t)? < t.elem_count() {
                masks.insert(name.clone(), keep);
            }
        }
        Ok(Self { masks })
    }

    /// Sets every masked entry of `params` to (positive) zero; the other entries are untouched.
    pub fn apply(&self, params: &ParamStore) -> Result<()> {
        if self.masks.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = self.masks.keys().cloned().collect();
        for (name, var) in names.iter().zip(vars_named(params, &names)?) {
            let w = var.as_tensor().detach();
            let mask = &self.masks[name];
            if mask.dims() != w.dims() {
                candle_core::bail!(
                    "the mask of `{name}` has shape {:?} but the weight {:?}",
                    mask.dims(),
                    w.dims()
                )
            }
            var.set(&mask.where_cond(&w, &w.zeros_like()?)?)?;
        }
        Ok(())
    }

    /// Names of the masked weights.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.masks.keys().map(String::as_str)
    }

    /// Number of masked weights.
    pub fn len(&self) -> usize {
        self.masks.len()
    }

    /// Whether no weight is masked.
    pub fn is_empty(&self) -> bool {
        self.masks.is_empty()
    }

    /// Entries pruned (mask 0) over all masks.
    pub fn pruned(&self) -> Result<usize> {
        let mut n = 0;
        for m in self.masks.values() {
            n += m.elem_count() - count_nonzero(&m.to_dtype(DType::F32)?)?;
        }
        Ok(n)
    }
}

/// Zeroes, in place, the `round(sparsity · remaining)` smallest-|w| candidate entries of each
/// weight `names` of `params` (`global: false`) or of all of them together (`global: true`);
/// `zeros` says whether the entries already zero are candidates.
pub fn prune_unstructured(
    params: &ParamStore,
    names: &[String],
    sparsity: f64,
    global: bool,
    zeros: Zeros,
) -> Result<()> {
    check_sparsity(sparsity)?;
    let vars = vars_named(params, names)?;
    let values: Vec<Vec<f32>> = vars.iter().map(|v| values_of(v.as_tensor())).collect::<Result<_>>()?;
    let keep: Vec<Vec<bool>> = if global {
        let slices: Vec<&[f32]> = values.iter().map(Vec::as_slice).collect();
        let remaining = slices.iter().map(|v| zeros.remaining(v)).sum();
        smallest_magnitude_keep(&slices, amount_to_prune(sparsity, remaining), zeros)
    } else {
        values
            .iter()
            .map(|v| {
                let k = amount_to_prune(sparsity, zeros.remaining(v));
                smallest_magnitude_keep(&[v.as_slice()], k, zeros)
                    .pop()
                    .unwrap_or_default()
            })
            .collect()
    };
    for (var, kv) in vars.iter().zip(keep) {
        let t = var.as_tensor();
        let mask = Tensor::from_vec(kv.into_iter().map(u8::from).collect::<Vec<u8>>(), t.shape(), t.device())?;
        let w = t.detach();
        var.set(&mask.where_cond(&w, &w.zeros_like()?)?)?;
    }
    Ok(())
}

fn check_sparsity(sparsity: f64) -> Result<()> {
    if !(0.0..1.0).contains(&sparsity) {
        candle_core::bail!("sparsity must be in [0, 1), got {sparsity}")
    }
    Ok(())
}

/// Names of layer `layer`'s attention tensors: query, key, value weights and biases (biases
/// may be absent) and the output projection's weight.
struct HeadTensors {
    qkv_weights: [String; 3],
    qkv_biases: [String; 3],
    output_weight: String,
}

fn head_tensors(config: &ModelConfig, layer: usize) -> HeadTensors {
    let qkv = [Role::Query, Role::Key, Role::Value].map(|role| encoder_module(config, layer, role));
    HeadTensors {
        qkv_weights: qkv.clone().map(|m| format!("{m}.weight")),
        qkv_biases: qkv.map(|m| format!("{m}.bias")),
        output_weight: format!("{}.weight", encoder_module(config, layer, Role::AttentionOutput)),
    }
}

/// L1 importance of every head still present, `[layer][position]` in the order of
/// [`ModelConfig::kept_heads`]: the sum of |w| over the head's rows of the query, key and value
/// weights and its input columns of the attention output projection (biases not counted).
pub fn head_importance(config: &ModelConfig, params: &ParamStore) -> Result<Vec<Vec<f64>>> {
    let d = config.head_dim();
    let tensors: HashMap<String, Var> = params.named_vars().into_iter().collect();
    let get = |name: &str| -> Result<Tensor> {
        match tensors.get(name) {
            Some(v) => v.as_tensor().detach().to_dtype(DType::F64),
            None => candle_core::bail!("the model has no tensor `{name}`"),
        }
    };
    (0..config.num_hidden_layers())
        .map(|layer| {
            let n = config.kept_heads(layer).len();
            let names = head_tensors(config, layer);
            let mut total = Tensor::zeros(n, DType::F64, &Device::Cpu)?;
            for w in &names.qkv_weights {
                // [n·d, hidden] → per head: sum over its d rows and every column.
                let w = get(w)?;
                let per_head = w.abs()?.reshape((n, ()))?.sum(1)?.to_device(&Device::Cpu)?;
                total = (total + per_head)?;
            }
            // [hidden, n·d] → per head: sum over every row and its d columns.
            let o = get(&names.output_weight)?;
            let hidden = o.dim(0)?;
            let per_head = o
                .abs()?
                .reshape((hidden, n, d))?
                .sum(2)?
                .sum(0)?
                .to_device(&Device::Cpu)?;
            (total + per_head)?.to_vec1::<f64>()
        })
        .collect()
}

/// The heads to remove, by layer (original indices): of the heads present, the
/// `round(sparsity · heads)` of smallest importance over all layers (ties: lower layer, then
/// lower position first), skipping a head when it is the last one its layer has. `importance`
/// is [`head_importance`]'s.
pub fn select_heads(config: &ModelConfig, importance: &[Vec<f64>], sparsity: f64) -> Result<PrunedHeads> {
    check_sparsity(sparsity)?;
    let layers = config.num_hidden_layers();
    if importance.len() != layers {
        candle_core::bail!("importance for {} layers, the model has {layers}", importance.len())
    }
    let mut order = Vec::new();
    let mut left = Vec::with_capacity(layers);
    for (layer, scores) in importance.iter().enumerate() {
        let kept = config.kept_heads(layer);
        if scores.len() != kept.len() {
            candle_core::bail!(
                "importance for {} heads of layer {layer}, it has {}",
                scores.len(),
                kept.len()
            )
        }
        left.push(kept.len());
        order.extend(scores.iter().zip(&kept).map(|(s, &h)| (*s, layer, h)));
    }
    order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut k = amount_to_prune(sparsity, order.len());
    let mut chosen = PrunedHeads::new();
    for (_, layer, head) in order {
        if k == 0 {
            break;
        }
        if left[layer] > 1 {
            left[layer] -= 1;
            chosen.entry(layer).or_default().insert(head);
            k -= 1;
        }
    }
    Ok(chosen)
}

/// The dtype and device of a model's weights.
fn dtype_device(model: &Model) -> (DType, Device) {
    let w = match model {
        Model::Bert(m) => &m.classifier.weight,
        Model::Vit(m) => &m.classifier.weight,
    };
    (w.dtype(), w.device().clone())
}

/// A copy of `p` without the attention heads `heads` (original indices, by layer): the query,
/// key and value rows and output-projection columns of those heads are cut out, the config's
/// `pruned_heads` gains them, and the model is rebuilt on the smaller tensors.
pub fn remove_heads(p: &Pretrained, heads: &PrunedHeads) -> Result<Pretrained> {
    let mut config = p.model.config();
    let d = config.head_dim();
    let mut tensors: HashMap<String, Tensor> = p.params.tensors()?.into_iter().collect();
    for (&layer, gone) in heads {
        if layer >= config.num_hidden_layers() {
            candle_core::bail!(
                "cannot remove heads of layer {layer}: the model has {} layers",
                config.num_hidden_layers()
            )
        }
        let kept = config.kept_heads(layer);
        if let Some(h) = gone.iter().find(|h| !kept.contains(h)) {
            candle_core::bail!("head {h} of layer {layer} is not in the model (kept heads: {kept:?})")
        }
        let rows: Vec<u32> = kept
            .iter()
            .enumerate()
            .filter(|(_, h)| !gone.contains(h))
            .flat_map(|(pos, _)| (pos * d..(pos + 1) * d).map(|r| r as u32))
            .collect();
        let names = head_tensors(&config, layer);
        let take = |tensors: &mut HashMap<String, Tensor>, name: &str, dim: usize| -> Result<()> {
            if let Some(t) = tensors.get(name) {
                let idx = Tensor::new(rows.as_slice(), t.device())?;
                let cut = t.index_select(&idx, dim)?;
                tensors.insert(name.to_string(), cut);
            }
            Ok(())
        };
        for name in names.qkv_weights.iter().chain(&names.qkv_biases) {
            take(&mut tensors, name, 0)?;
        }
        take(&mut tensors, &names.output_weight, 1)?;
        config
            .pruned_heads_mut()
            .entry(layer)
            .or_default()
            .extend(gone.iter().copied());
    }
    config.validate().map_err(candle_core::Error::msg)?;
    let (dtype, device) = dtype_device(&p.model);
    let params = ParamStore::with_source(p.params.seed(), tensors);
    let model = Model::new(&config, params.var_builder(dtype, &device))?;
    let report = params.report();
    params.release_source();
    if !report.initialised.is_empty() || !report.unused.is_empty() {
        candle_core::bail!(
            "removing heads left tensors unmatched: initialised {:?}, unused {:?}",
            report.initialised,
            report.unused
        )
    }
    Ok(Pretrained {
        model,
        params,
        report: p.report.clone(),
    })
}

/// One prunable weight before and after pruning.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorStats {
    /// Variable name (HF).
    pub name: String,
    /// Encoder layer, `None` for the pooler and the classifier.
    pub layer: Option<usize>,
    /// Entries before pruning.
    pub numel_before: usize,
    /// Entries after (fewer only when heads were removed).
    pub numel_after: usize,
    /// Nonzero entries before pruning.
    pub nonzero_before: usize,
    /// Nonzero entries after.
    pub nonzero_after: usize,
}

impl TensorStats {
    /// Fraction of the original entries that are zero or gone: `1 − nonzero_after / numel_before`.
    pub fn sparsity(&self) -> f64 {
        ratio_pruned(self.nonzero_after, self.numel_before)
    }
}

fn ratio_pruned(nonzero: usize, numel: usize) -> f64 {
    if numel == 0 {
        0.0
    } else {
        1.0 - nonzero as f64 / numel as f64
    }
}

/// Sizes (entries, nonzeros) of the weights `names` of `params`, by name.
fn sizes(params: &ParamStore, names: &[String]) -> Result<Vec<(usize, usize)>> {
    vars_named(params, names)?
        .iter()
        .map(|v| Ok((v.elem_count(), count_nonzero(v.as_tensor())?)))
        .collect()
}

/// What a pruning pass did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PruneReport {
    /// `l1_unstructured`, `l1_global` or `heads`.
    pub method: &'static str,
    /// `linear` or `encoder`.
    pub scope: &'static str,
    /// The requested sparsity (of the remaining weights, or of the heads).
    pub sparsity_target: f64,
    /// Every prunable weight, before and after.
    pub tensors: Vec<TensorStats>,
    /// Heads removed in this pass, by layer (original indices).
    pub heads_removed: BTreeMap<usize, BTreeSet<usize>>,
    /// Attention heads per layer before the pass.
    pub heads_before: Vec<usize>,
    /// Attention heads per layer after the pass.
    pub heads_after: Vec<usize>,
}

impl PruneReport {
    /// Entries of the prunable weights before pruning.
    pub fn prunable_before(&self) -> usize {
        self.tensors.iter().map(|t| t.numel_before).sum()
    }

    /// Nonzero entries of the prunable weights after pruning.
    pub fn nonzero_after(&self) -> usize {
        self.tensors.iter().map(|t| t.nonzero_after).sum()
    }

    /// Achieved sparsity over the prunable weights: the fraction of their original entries
    /// that are zero or were removed with their head.
    pub fn sparsity(&self) -> f64 {
        ratio_pruned(self.nonzero_after(), self.prunable_before())
    }

    /// Number of heads removed in this pass.
    pub fn num_heads_removed(&self) -> usize {
        self.heads_removed.values().map(BTreeSet::len).sum()
    }

    /// Recomputes the after-counts from `params` (e.g. after fine-tuning).
    pub fn refresh(&mut self, params: &ParamStore) -> Result<()> {
        let names: Vec<String> = self.tensors.iter().map(|t| t.name.clone()).collect();
        for (t, (numel, nonzero)) in self.tensors.iter_mut().zip(sizes(params, &names)?) {
            t.numel_after = numel;
            t.nonzero_after = nonzero;
        }
        Ok(())
    }
}

/// A pruned model and what was done to it.
#[derive(Debug, Clone)]
pub struct Pruned {
    /// The model: the same variables pruned in place (unstructured), or a rebuilt, smaller
    /// model (heads).
    pub model: Pretrained,
    /// Masks of every zero in the prunable weights, to re-apply after fine-tuning updates.
    pub masks: Masks,
    /// Counts before and after.
    pub report: PruneReport,
}

/// Prunes `p` with `method` over the weights of `scope` (heads: the encoder's attention);
/// `zeros` says what its entries already zero are. Unstructured methods change `p`'s variables
/// in place; `heads` builds a new model.
pub fn prune(p: Pretrained, method: Method, scope: Scope, sparsity: f64, zeros: Zeros) -> Result<Pruned> {
    check_sparsity(sparsity)?;
    let config = p.model.config();
    let names = prunable_weights(&config, scope);
    let before = sizes(&p.params, &names)?;
    let heads_of = |c: &ModelConfig| (0..c.num_hidden_layers()).map(|l| c.kept_heads(l).len()).collect();
    let heads_before: Vec<usize> = heads_of(&config);
    let (model, heads_removed) = match method {
        Method::L1Unstructured | Method::L1Global => {
            prune_unstructured(&p.params, &names, sparsity, method == Method::L1Global, zeros)?;
            (p, PrunedHeads::new())
        }
        Method::Heads => {
            let importance = head_importance(&config, &p.params)?;
            let chosen = select_heads(&config, &importance, sparsity)?;
            (remove_heads(&p, &chosen)?, chosen)
        }
    };
    let after = sizes(&model.params, &names)?;
    let tensors = names
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(name, (b, a))| TensorStats {
            name: name.clone(),
            layer: layer_of(name),
            numel_before: b.0,
            numel_after: a.0,
            nonzero_before: b.1,
            nonzero_after: a.1,
        })
        .collect();
    let masks = Masks::of_zeros(&model.params, &names)?;
    let report = PruneReport {
        method: method.word(),
        scope: scope.word(),
        sparsity_target: sparsity,
        tensors,
        heads_removed,
        heads_before,
        heads_after: heads_of(&model.model.config()),
    };
    Ok(Pruned { model, masks, report })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::checkpoint::{load_pretrained, LoadOptions};
    use crate::ml::models::layers::ForwardCtx;
    use crate::ml::models::model::ModelInput;
    use crate::ml::testutil::*;

    fn random_bert(seed: u64) -> Pretrained {
        Pretrained::random(&ModelConfig::Bert(tiny_bert(3)), seed, &Device::Cpu).unwrap()
    }

    fn zeros_of(p: &ParamStore, name: &str) -> usize {
        let (n, nz) = sizes(p, &[name.to_string()]).unwrap()[0];
        n - nz
    }

    fn logits(p: &Pretrained, input: &ModelInput) -> Tensor {
        p.model.forward(input, &mut ForwardCtx::eval()).unwrap().logits
    }

    #[test]
    fn amounts_round_like_python() {
        assert_eq!(amount_to_prune(0.3, 100), 30);
        assert_eq!(amount_to_prune(0.3, 70), 21);
        // Half to even, as Python's round: 2.5 → 2, 3.5 → 4.
        assert_eq!(amount_to_prune(0.5, 5), 2);
        assert_eq!(amount_to_prune(0.5, 7), 4);
        assert_eq!(amount_to_prune(0.0, 9), 0);
        assert_eq!(amount_to_prune(0.99, 0), 0);
    }

    #[test]
    fn smallest_magnitudes_with_existing_zeros_and_ties() {
        // Zeros an earlier pruning made are not counted; ties go to the lower index.
        let v = [0.5f32, -0.1, 0.0, 0.1, 0.3, -0.2, 0.1, 0.0];
        let keep = smallest_magnitude_keep(&[&v], 2, Zeros::Pruned);
        assert_eq!(keep[0], vec![true, false, false, false, true, true, true, false]);
        let keep = smallest_magnitude_keep(&[&v], 4, Zeros::Pruned);
        assert_eq!(keep[0], vec![true, false, false, false, true, false, false, false]);
        // Zeros that are weights are the smallest, and count: 2 pruned are the two zeros, 4 are
        // the zeros and the two smallest of the rest (-0.1 and the first 0.1).
        assert_eq!(Zeros::Weights.remaining(&v), 8);
        let keep = smallest_magnitude_keep(&[&v], 2, Zeros::Weights);
        assert_eq!(keep[0], vec![true, true, false, true, true, true, true, false]);
        let keep = smallest_magnitude_keep(&[&v], 4, Zeros::Weights);
        assert_eq!(keep[0], vec![true, false, false, false, true, true, true, false]);
        // More than remain: everything goes.
        assert!(smallest_magnitude_keep(&[&v], 100, Zeros::Pruned)[0].iter().all(|k| !k));
        // Across slices: one threshold, earlier slice first on ties.
        let a = [0.1f32, 0.9];
        let b = [0.1f32, 0.05, 0.8];
        let keep = smallest_magnitude_keep(&[&a, &b], 2, Zeros::Pruned);
        assert_eq!(keep, vec![vec![false, true], vec![true, false, true]]);
    }

    #[test]
    fn zeros_that_are_weights_count_in_the_amount() {
        // A model with exact zeros of its own (as a dequantised NF4 weight has): 30% asked is
        // 30% zero in every tensor, the model's own zeros among them.
        let p = random_bert(2);
        let names = prunable_weights(&p.model.config(), Scope::Linear);
        for var in vars_named(&p.params, &names).unwrap() {
            let mut v = values_of(var.as_tensor()).unwrap();
            for x in v.iter_mut().step_by(10) {
                *x = 0.0;
            }
            var.set(&Tensor::from_vec(v, var.shape(), var.device()).unwrap())
                .unwrap();
        }
        let pruned = prune(p, Method::L1Unstructured, Scope::Linear, 0.3, Zeros::Weights).unwrap();
        for t in &pruned.report.tensors {
            assert_eq!(
                t.numel_before - t.nonzero_after,
                amount_to_prune(0.3, t.numel_before),
                "{}",
                t.name
            );
        }
        assert!(
            (pruned.report.sparsity() - 0.3).abs() < 0.001,
            "{}",
            pruned.report.sparsity()
        );
    }

    #[test]
    fn per_layer_pruning_hits_the_exact_count_in_every_tensor() {
        let p = random_bert(1);
        let config = p.model.config();
        let before = p.params.tensors().unwrap();
        let pruned = prune(p, Method::L1Unstructured, Scope::Linear, 0.3, Zeros::Pruned).unwrap();
        let names = prunable_weights(&config, Scope::Linear);
        // 2 layers × 6 + pooler + classifier.
        assert_eq!(names.len(), 14);
        assert_eq!(pruned.report.tensors.len(), 14);
        for t in &pruned.report.tensors {
            let want = amount_to_prune(0.3, t.numel_before);
            assert_eq!(t.numel_before - t.nonzero_after, want, "{}", t.name);
            assert_eq!(zeros_of(&pruned.model.params, &t.name), want, "{}", t.name);
            // The zeros are exactly the smallest |w| of that tensor.
            let old = values_of(&before[&t.name]).unwrap();
            let new = values_of(&pruned.model.params.tensors().unwrap()[&t.name]).unwrap();
            let cut = old
                .iter()
                .zip(&new)
                .filter(|(_, n)| **n == 0.0)
                .map(|(o, _)| o.abs())
                .fold(0f32, f32::max);
            let kept_min = old
                .iter()
                .zip(&new)
                .filter(|(_, n)| **n != 0.0)
                .map(|(o, _)| o.abs())
                .fold(f32::INFINITY, f32::min);
            assert!(cut <= kept_min, "{}: pruned {cut} > kept {kept_min}", t.name);
            // Kept values are unchanged, bit for bit.
            assert!(old
                .iter()
                .zip(&new)
                .all(|(o, n)| *n == 0.0 || o.to_bits() == n.to_bits()));
        }
        // Nothing else is touched: biases, LayerNorms, embeddings.
        let after = pruned.model.params.tensors().unwrap();
        for (k, t) in &before {
            if !names.contains(k) {
                assert_eq!(bits(t), bits(&after[k]), "{k} changed");
            }
        }
        assert_eq!(pruned.masks.len(), 14);
        let expect: usize = pruned
            .report
            .tensors
            .iter()
            .map(|t| t.numel_before - t.nonzero_after)
            .sum();
        assert_eq!(pruned.masks.pruned().unwrap(), expect);
        assert!((pruned.report.sparsity() - 0.3).abs() < 0.01);
    }

    #[test]
    fn encoder_scope_keeps_the_pooler_and_classifier() {
        let p = random_bert(2);
        let pruned = prune(p, Method::L1Unstructured, Scope::Encoder, 0.5, Zeros::Pruned).unwrap();
        assert_eq!(pruned.report.tensors.len(), 12);
        for name in ["bert.pooler.dense.weight", "classifier.weight"] {
            assert_eq!(zeros_of(&pruned.model.params, name), 0, "{name}");
        }
        let q = "bert.encoder.layer.1.attention.self.query.weight";
        assert_eq!(zeros_of(&pruned.model.params, q), 128);
        let vit = Pretrained::random(&ModelConfig::Vit(tiny_vit(2)), 3, &Device::Cpu).unwrap();
        let names = prunable_weights(&vit.model.config(), Scope::Linear);
        assert_eq!(
            names.len(),
            13,
            "ViT: no pooler, the patch projection is not a linear layer"
        );
        assert_eq!(names[0], "vit.encoder.layer.0.attention.attention.query.weight");
    }

    #[test]
    fn global_pruning_uses_one_threshold() {
        let p = random_bert(4);
        let config = p.model.config();
        let names = prunable_weights(&config, Scope::Linear);
        let before = p.params.tensors().unwrap();
        let pruned = prune(p, Method::L1Global, Scope::Linear, 0.4, Zeros::Pruned).unwrap();
        let total: usize = pruned.report.tensors.iter().map(|t| t.numel_before).sum();
        let zeros = total - pruned.report.nonzero_after();
        assert_eq!(zeros, amount_to_prune(0.4, total), "exact global count");
        // One threshold: every pruned |w| ≤ every kept |w|, across tensors.
        let after = pruned.model.params.tensors().unwrap();
        let (mut max_cut, mut min_kept) = (0f32, f32::INFINITY);
        for n in &names {
            for (o, a) in values_of(&before[n]).unwrap().iter().zip(values_of(&after[n]).unwrap()) {
                if a == 0.0 {
                    max_cut = max_cut.max(o.abs());
                } else {
                    min_kept = min_kept.min(o.abs());
                }
            }
        }
        assert!(max_cut <= min_kept, "{max_cut} > {min_kept}");
        // So per-tensor sparsity differs (the classifier and the larger FFN matrices differ).
        let s: BTreeSet<u64> = pruned
            .report
            .tensors
            .iter()
            .map(|t| (t.sparsity() * 1e6) as u64)
            .collect();
        assert!(s.len() > 1, "all tensors equally sparse: {s:?}");
    }

    #[test]
    fn thirty_percent_twice_gives_fifty_one_percent() {
        for method in [Method::L1Unstructured, Method::L1Global] {
            let p = random_bert(5);
            let once = prune(p, method, Scope::Linear, 0.3, Zeros::Pruned).unwrap();
            let twice = prune(once.model, method, Scope::Linear, 0.3, Zeros::Pruned).unwrap();
            let r = &twice.report;
            if method == Method::L1Unstructured {
                for t in &r.tensors {
                    // The second pass prunes 30% of what the first left.
                    let first = amount_to_prune(0.3, t.numel_before);
                    assert_eq!(t.nonzero_before, t.numel_before - first);
                    let second = amount_to_prune(0.3, t.nonzero_before);
                    assert_eq!(t.nonzero_after, t.nonzero_before - second, "{}", t.name);
                }
            } else {
                let total = r.prunable_before();
                let left = total - amount_to_prune(0.3, total);
                assert_eq!(r.nonzero_after(), left - amount_to_prune(0.3, left));
            }
            assert!((r.sparsity() - 0.51).abs() < 0.003, "{method:?}: {}", r.sparsity());
        }
    }

    #[test]
    fn masks_keep_pruned_weights_at_zero() {
        let p = random_bert(6);
        let pruned = prune(p, Method::L1Unstructured, Scope::Linear, 0.5, Zeros::Pruned).unwrap();
        let params = &pruned.model.params;
        let name = "bert.encoder.layer.0.intermediate.dense.weight";
        let zeros = zeros_of(params, name);
        // An update that moves every weight: the masks put the pruned ones back to zero.
        for (_, v) in params.named_vars() {
            v.set(&(v.as_tensor().detach() + 1.0).unwrap()).unwrap();
        }
        assert_eq!(zeros_of(params, name), 0);
        pruned.masks.apply(params).unwrap();
        assert_eq!(zeros_of(params, name), zeros);
        assert_eq!(
            Masks::of_zeros(params, &[name.to_string()]).unwrap().pruned().unwrap(),
            zeros
        );
    }

    #[test]
    fn removing_heads_shrinks_the_matrices_and_equals_zeroing_their_output() {
        let mut cfg = tiny_bert(3);
        cfg.num_attention_heads = 4;
        cfg.initializer_range = 0.3;
        let p = Pretrained::random(&ModelConfig::Bert(cfg), 8, &Device::Cpu).unwrap();
        let gone = PrunedHeads::from([(0, BTreeSet::from([1, 3])), (1, BTreeSet::from([0]))]);
        let small = remove_heads(&p, &gone).unwrap();
        let t = small.params.tensors().unwrap();
        assert_eq!(t["bert.encoder.layer.0.attention.self.query.weight"].dims(), &[8, 16]);
        assert_eq!(t["bert.encoder.layer.0.attention.self.value.bias"].dims(), &[8]);
        assert_eq!(t["bert.encoder.layer.0.attention.output.dense.weight"].dims(), &[16, 8]);
        assert_eq!(t["bert.encoder.layer.1.attention.self.key.weight"].dims(), &[12, 16]);
        assert_eq!(
            small.params.num_parameters(),
            p.params.num_parameters() - 3 * (3 * (4 * 16 + 4) + 16 * 4)
        );
        // The same as the full model with those heads' output-projection columns zeroed.
        let full = p.params.tensors().unwrap();
        for (&layer, heads) in &gone {
            let name = format!("bert.encoder.layer.{layer}.attention.output.dense.weight");
            let mut cols = vec![1f32; 16];
            for &h in heads {
                cols[h * 4..(h + 1) * 4].iter_mut().for_each(|c| *c = 0.0);
            }
            let m = Tensor::new(cols.as_slice(), &Device::Cpu).unwrap();
            let zeroed = full[&name].broadcast_mul(&m).unwrap();
            let var = p.params.named_vars().into_iter().find(|(k, _)| *k == name).unwrap().1;
            var.set(&zeroed).unwrap();
        }
        let input = text_input();
        let out = small
            .model
            .forward(&input, &mut ForwardCtx::eval().with_attention_maps())
            .unwrap();
        assert_eq!(out.attentions[0].dims(), &[3, 2, 7, 7]);
        assert_eq!(out.attentions[1].dims(), &[3, 3, 7, 7]);
        let rel = rel_diff(&out.logits, &logits(&p, &input));
        assert!(rel < 1e-5, "{rel}");
        // A second removal takes original indices; a head already gone is an error.
        let smaller = remove_heads(&small, &PrunedHeads::from([(0, BTreeSet::from([2]))])).unwrap();
        assert_eq!(smaller.model.config().kept_heads(0), vec![0]);
        let e = remove_heads(&small, &PrunedHeads::from([(0, BTreeSet::from([1]))])).unwrap_err();
        assert!(e.to_string().contains("head 1 of layer 0 is not in the model"), "{e}");
        let e = remove_heads(&smaller, &PrunedHeads::from([(0, BTreeSet::from([0]))])).unwrap_err();
        assert!(e.to_string().contains("every head of layer 0"), "{e}");
    }

    #[test]
    fn head_selection_takes_the_weakest_and_keeps_one_per_layer() {
        let mut cfg = tiny_bert(2);
        cfg.num_attention_heads = 4;
        let config = ModelConfig::Bert(cfg);
        let importance = vec![vec![5.0, 1.0, 2.0, 9.0], vec![0.5, 0.4, 0.3, 0.2]];
        // round(0.5 · 8) = 4: the four weakest are all in layer 1, which must keep one.
        let chosen = select_heads(&config, &importance, 0.5).unwrap();
        assert_eq!(
            chosen,
            PrunedHeads::from([(0, BTreeSet::from([1])), (1, BTreeSet::from([1, 2, 3]))])
        );
        // Ties go to the lower layer.
        let chosen = select_heads(&config, &[vec![1.0; 4], vec![1.0; 4]], 0.25).unwrap();
        assert_eq!(chosen, PrunedHeads::from([(0, BTreeSet::from([0, 1]))]));
        // At most all but one per layer, whatever the sparsity.
        let chosen = select_heads(&config, &importance, 0.99).unwrap();
        assert_eq!(chosen.values().map(BTreeSet::len).sum::<usize>(), 6);

        // The importance is the L1 norm of the head's q/k/v rows and output columns.
        let p = Pretrained::random(&config, 3, &Device::Cpu).unwrap();
        let imp = head_importance(&config, &p.params).unwrap();
        let t = p.params.tensors().unwrap();
        let l1 = |name: &str, dim: usize, h: usize| -> f64 {
            let part = t[name].narrow(dim, h * 4, 4).unwrap();
            part.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64
        };
        let pre = "bert.encoder.layer.1.attention.";
        let want = ["query", "key", "value"]
            .iter()
            .map(|n| l1(&format!("{pre}self.{n}.weight"), 0, 2))
            .sum::<f64>()
            + l1(&format!("{pre}output.dense.weight"), 1, 2);
        assert!((imp[1][2] - want).abs() < 1e-4 * want, "{} vs {want}", imp[1][2]);
    }

    #[test]
    fn head_pruned_bert_and_vit_save_and_reload_with_the_same_logits() {
        let mut bert = tiny_bert(3);
        bert.num_attention_heads = 4;
        let mut vit = tiny_vit(2);
        vit.num_attention_heads = 4;
        let cases = [
            (ModelConfig::Bert(bert), text_input()),
            (
                ModelConfig::Vit(vit),
                ModelInput::Images {
                    pixel_values: image_batch(2, 3, 8, 1),
                },
            ),
        ];
        for (config, input) in cases {
            let p = Pretrained::random(&config, 7, &Device::Cpu).unwrap();
            let pruned = prune(p, Method::Heads, Scope::Linear, 0.5, Zeros::Pruned).unwrap();
            let r = &pruned.report;
            assert_eq!(r.num_heads_removed(), 4);
            assert_eq!(r.heads_before, vec![4, 4]);
            assert_eq!(r.heads_after.iter().sum::<usize>(), 4);
            assert!(r.heads_after.iter().all(|&h| h >= 1));
            assert!(pruned.masks.is_empty(), "removed heads need no mask");
            // Attention weights lose half their entries; the FFN and head are whole.
            assert!((r.sparsity() - 4.0 * 4.0 * 16.0 * 4.0 / r.prunable_before() as f64).abs() < 1e-12);
            let dir = tempfile::tempdir().unwrap();
            pruned.model.save(dir.path()).unwrap();
            let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            let listed: usize = v["pruned_heads"]
                .as_object()
                .unwrap()
                .values()
                .map(|h| h.as_array().unwrap().len())
                .sum();
            assert_eq!(listed, 4);
            let back = load_pretrained(dir.path(), &LoadOptions::default()).unwrap();
            assert!(back.report.initialised.is_empty() && back.report.unused.is_empty());
            assert_eq!(back.model.config(), pruned.model.model.config());
            assert_eq!(back.params.num_parameters(), pruned.model.params.num_parameters());
            assert_eq!(bits(&logits(&back, &input)), bits(&logits(&pruned.model, &input)));
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        let p = random_bert(9);
        let e = prune(p.clone(), Method::L1Unstructured, Scope::Linear, 1.0, Zeros::Pruned).unwrap_err();
        assert!(e.to_string().contains("sparsity must be in [0, 1)"), "{e}");
        let e = prune_unstructured(&p.params, &["nope.weight".into()], 0.3, false, Zeros::Pruned).unwrap_err();
        assert!(e.to_string().contains("no weight `nope.weight`"), "{e}");
        assert_eq!(Method::from_word("heads"), Some(Method::Heads));
        assert_eq!(Method::from_word("l2"), None);
        assert_eq!(Scope::WORDS, &["linear", "encoder"]);
        // Sparsity 0 prunes nothing.
        let same = prune(p, Method::L1Global, Scope::Linear, 0.0, Zeros::Pruned).unwrap();
        assert_eq!(same.report.sparsity(), 0.0);
        assert!(same.masks.is_empty());
        assert_eq!(layer_of("bert.encoder.layer.12.output.dense.weight"), Some(12));
        assert_eq!(layer_of("classifier.weight"), None);
    }
}

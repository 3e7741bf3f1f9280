//! LoRA: low-rank adapters on linear layers, as Hugging Face PEFT makes, merges and saves them.
//!
//! - **Layer** ([`LoraBranch`], carried by [`Linear::lora`]): `y = W·x + b + scale · B·A·dropout(x)`
//!   with `A: [r, in]` drawn like `nn.Linear`'s default (`kaiming_uniform(a=√5)`, i.e.
//!   `U(−1/√in, 1/√in)`), `B: [out, r]` zero, so the adapter is a no-op until trained, and
//!   `scale = alpha / r` (`alpha / √r` with rsLoRA). Dropout applies to the branch's input only
//!   and draws from the forward context's seeded stream.
//! - **Targets** ([`attach`]): PEFT's rule for a list of `target_modules` — a module gets an
//!   adapter when its name equals a target or ends with `.` + target (`"query"` matches
//!   `bert.encoder.layer.3.attention.self.query`). Every linear except the classification head
//!   can be a target; the head is trained in full instead (PEFT's `modules_to_save`).
//! - **Merging** ([`merge_tensors`]): `W ← W + scale · B·A`, in f32.
//! - **Files** ([`AdapterConfig`], [`save_adapter`], [`read_adapter`]): `adapter_config.json`
//!   and `adapter_model.safetensors` whose keys are `base_model.model.<module>.lora_A.weight` /
//!   `lora_B.weight` (the adapter name removed, as PEFT saves them) and, for the modules saved
//!   in full, `base_model.model.<module>.weight` / `.bias`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ml::models::config::ModelConfig;
use crate::ml::models::linears::{linear_modules, Role};
use crate::ml::models::model::Model;

pub use super::lora_error::LoraError;

// The layer and the catalog live with the models; re-exported under their old paths.
pub use crate::ml::models::layers::LoraBranch;
pub use crate::ml::models::linears::{linears_mut, HEAD};

/// The file name of a PEFT adapter's configuration.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// The file name of a PEFT adapter's weights.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// The legacy (pickled) file name of a PEFT adapter's weights.
pub const ADAPTER_WEIGHTS_BIN: &str = "adapter_model.bin";

/// The prefix PEFT puts before every module name in an adapter's weights.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// LoRA hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Rank `r` of the update.
    pub rank: usize,
    /// `lora_alpha`; the update is scaled by `alpha / r`.
    pub alpha: f64,
    /// Dropout on the adapter's input, in [0, 1).
    pub dropout: f64,
    /// Module-name targets (PEFT `target_modules`).
    pub targets: Vec<String>,
}

impl LoraConfig {
    /// The scale of the update, `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Checks the ranges (rank ≥ 1, alpha > 0, dropout in [0, 1), at least one target).
    pub fn validate(&self) -> Result<(), LoraError> {
        if self.rank == 0 {
            return Err(LoraError::Unsupported("the LoRA rank must be at least 1".into()));
        }
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            return Err(LoraError::Unsupported(format!(
                "the LoRA alpha must be positive, got {}",
                self.alpha
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(LoraError::Unsupported(format!(
                "the LoRA dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        if self.targets.is_empty() {
            return Err(LoraError::Unsupported("LoRA needs at least one target module".into()));
        }
        Ok(())
    }
}

/// Module names of the linears below the head (what QLoRA quantizes and may adapt), in
/// catalog order ([`linear_modules`]); their weights are `<name>.weight`.
pub fn base_linears(config: &ModelConfig) -> Vec<String> {
    linear_modules(config)
        .into_iter()
        .filter(|m| m.role != Role::Classifier)
        .map(|m| m.name)
        .collect()
}

/// Whether PEFT's list rule makes `target` match `module`: equal, or a `.`-separated suffix.
pub fn target_matches(module: &str, target: &str) -> bool {
    module == target || module.strip_suffix(target).is_some_and(|rest| rest.ends_with('.'))
}

/// The modules of `modules` that some target matches, in order. A target that matches none is
/// an error naming the module names there are (per encoder layer, and the others).
pub fn match_targets(modules: &[String], targets: &[String]) -> Result<Vec<String>, LoraError> {
    for t in targets {
        if !modules.iter().any(|m| target_matches(m, t)) {
            let mut kinds: Vec<String> = Vec::new();
            for m in modules {
                let short = match m.split_once(".encoder.layer.") {
                    Some((_, rest)) => rest.split_once('.').map_or(rest, |(_, s)| s).to_string(),
                    None => m.clone(),
                };
                if !kinds.contains(&short) {
                    kinds.push(short);
                }
            }
            let head = if t == HEAD || target_matches(HEAD, t) {
                " (the classifier is trained in full, not adapted)"
            } else {
                ""
            };
            return Err(LoraError::Mismatch(format!(
                "LoRA target `{t}` matches no linear module{head}; the model's linear modules are {} \
                 (in every encoder layer `<family>.encoder.layer.N.`); a target matches a module whose name \
                 equals it or ends with `.` followed by it",
                kinds.join(", ")
            )));
        }
    }
    Ok(modules
        .iter()
        .filter(|m| targets.iter().any(|t| target_matches(m, t)))
        .cloned()
        .collect())
}

/// Gives every linear that `cfg.targets` match a LoRA branch whose variables come from `vb`
/// (`<module>.lora_A.weight`, `<module>.lora_B.weight`). Returns the adapted module names.
pub fn attach(model: &mut Model, cfg: &LoraConfig, vb: VarBuilder) -> Result<Vec<String>, LoraError> {
    cfg.validate()?;
    let candidates = base_linears(&model.config());
    let chosen = match_targets(&candidates, &cfg.targets)?;
    for (name, linear) in linears_mut(model) {
        if chosen.contains(&name) {
            let (out_dim, in_dim) = linear.weight.dims2().map_err(|e| LoraError::tensor(&name, e))?;
            let branch = LoraBranch::new(in_dim, out_dim, cfg.rank, cfg.scale(), cfg.dropout, vb.pp(&name))
                .map_err(|e| LoraError::tensor(&name, e))?;
            linear.lora = Some(branch);
        }
    }
    Ok(chosen)
}

/// A copy of `model` whose linears (weights, biases, adapters) are detached views: it records
/// no autograd graph and sees every optimiser update (for validation while training).
pub fn detached(model: &Model) -> Model {
    let mut m = model.clone();
    for (_, l) in linears_mut(&mut m) {
        l.weight = l.weight.detach();
        l.bias = l.bias.as_ref().map(Tensor::detach);
        l.lora = l.lora.as_ref().map(LoraBranch::detached);
    }
    m
}

/// Merges LoRA updates and fully saved modules into a state dict (model names): for every
/// `<m>.lora_A.weight` / `<m>.lora_B.weight` pair, `<m>.weight += scale · B·A` (in f32, then
/// the weight's dtype); every other adapter tensor replaces the state dict's tensor of that
/// name. Returns the merged module names, sorted.
pub fn merge_tensors(
    tensors: &mut HashMap<String, Tensor>,
    adapter: &HashMap<String, Tensor>,
    scale: f64,
) -> Result<Vec<String>, LoraError> {
    let mut pairs: BTreeMap<String, (Option<&Tensor>, Option<&Tensor>)> = BTreeMap::new();
    for (k, t) in adapter {
        if let Some(m) = k.strip_suffix(".lora_A.weight") {
            pairs.entry(m.to_string()).or_default().0 = Some(t);
        } else if let Some(m) = k.strip_suffix(".lora_B.weight") {
            pairs.entry(m.to_string()).or_default().1 = Some(t);
        } else if k.contains("lora_") {
            return Err(LoraError::Unsupported(format!(
                "adapter tensor `{k}` is not a LoRA A/B weight (unsupported LoRA variant)"
            )));
        } else {
            tensors.insert(k.clone(), t.clone());
        }
    }
    for (m, pair) in &pairs {
        let (Some(a), Some(b)) = *pair else {
            return Err(LoraError::Mismatch(format!(
                "the adapter has only one of `{m}.lora_A.weight` and `{m}.lora_B.weight`"
            )));
        };
        let key = format!("{m}.weight");
        let w = tensors.get(&key).ok_or_else(|| {
            LoraError::Mismatch(format!(
                "the adapter has weights for `{m}` but the model has no `{key}`"
            ))
        })?;
        let d = LoraBranch::delta(a, b, scale).map_err(|e| LoraError::tensor(m, e))?;
        if d.dims() != w.dims() {
            return Err(LoraError::Mismatch(format!(
                "the adapter's update of `{m}` is {:?} (lora_B · lora_A) but `{key}` is {:?}",
                d.dims(),
                w.dims()
            )));
        }
        let merged = (w.to_dtype(DType::F32).and_then(|w| w + d))
            .and_then(|t| t.to_dtype(w.dtype()))
            .map_err(|e| LoraError::tensor(m, e))?;
        tensors.insert(key, merged);
    }
    Ok(pairs.into_keys().collect())
}

/// A PEFT `adapter_config.json` (LoRA), keys in the sorted order PEFT writes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// Per-module alpha overrides (unsupported when non-empty).
    #[serde(default)]
    pub alpha_pattern: Map<String, Value>,
    /// The base model the adapter was trained on.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Which biases are trained (`"none"`).
    #[serde(default = "d_none")]
    pub bias: String,
    /// Whether weights are stored transposed (GPT-2's Conv1D; unsupported when true).
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Whether the adapter was saved for inference.
    #[serde(default)]
    pub inference_mode: bool,
    /// How A and B were initialised (`true`: Kaiming-uniform A, zero B).
    #[serde(default = "d_true")]
    pub init_lora_weights: Value,
    /// `lora_alpha`.
    pub lora_alpha: f64,
    /// `lora_dropout`.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Modules trained and saved in full (the head).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// `"LORA"`.
    pub peft_type: String,
    /// The rank.
    pub r: usize,
    /// Per-module rank overrides (unsupported when non-empty).
    #[serde(default)]
    pub rank_pattern: Map<String, Value>,
    /// Target module names (a list) or a regular expression (a string).
    #[serde(default)]
    pub target_modules: Value,
    /// `"SEQ_CLS"` for classifiers.
    #[serde(default)]
    pub task_type: Option<String>,
    /// DoRA (unsupported when true).
    #[serde(default)]
    pub use_dora: bool,
    /// Scale by `alpha / √r` instead of `alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// Every other field, kept for round trips.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn d_none() -> String {
    "none".into()
}
fn d_true() -> Value {
    Value::Bool(true)
}

impl AdapterConfig {
    /// The configuration of a LoRA sequence-classification adapter with the head saved in full.
    pub fn seq_cls(cfg: &LoraConfig, base_model: Option<String>) -> Self {
        Self {
            alpha_pattern: Map::new(),
            base_model_name_or_path: base_model,
            bias: "none".into(),
            fan_in_fan_out: false,
            inference_mode: true,
            init_lora_weights: Value::Bool(true),
            lora_alpha: cfg.alpha,
            lora_dropout: cfg.dropout,
            modules_to_save: Some(vec![HEAD.into()]),
            peft_type: "LORA".into(),
            r: cfg.rank,
            rank_pattern: Map::new(),
            target_modules: Value::Array(cfg.targets.iter().cloned().map(Value::String).collect()),
            task_type: Some("SEQ_CLS".into()),
            use_dora: false,
            use_rslora: false,
            extra: Map::new(),
        }
    }

    /// The update's scale: `alpha / r`, or `alpha / √r` with rsLoRA.
    pub fn scale(&self) -> f64 {
        let r = self.r.max(1) as f64;
        if self.use_rslora {
            self.lora_alpha / r.sqrt()
        } else {
            self.lora_alpha / r
        }
    }

    /// Checks that the adapter is a plain LoRA this crate can merge.
    pub fn check_supported(&self) -> Result<(), LoraError> {
        if self.peft_type != "LORA" {
            return Err(LoraError::Unsupported(format!(
                "peft_type is `{}`, only LORA adapters are supported",
                self.peft_type
            )));
        }
        if self.r == 0 {
            return Err(LoraError::Unsupported("r is 0".into()));
        }
        if self.use_dora || self.fan_in_fan_out || !self.alpha_pattern.is_empty() || !self.rank_pattern.is_empty() {
            return Err(LoraError::Unsupported(
                "DoRA, fan_in_fan_out and per-module rank/alpha patterns are not supported".into(),
            ));
        }
        Ok(())
    }
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir`; `tensors` are the
/// adapter's variables by model name (`<module>.lora_A.weight`, `classifier.weight`, …) and
/// are saved under [`PEFT_PREFIX`].
pub fn save_adapter(dir: &Path, config: &AdapterConfig, tensors: &BTreeMap<String, Tensor>) -> Result<(), LoraError> {
    std::fs::create_dir_all(dir).map_err(|e| LoraError::file(dir, e))?;
    let path = dir.join(ADAPTER_CONFIG);
    let json = serde_json::to_string_pretty(config).map_err(|e| LoraError::file(&path, e))?;
    std::fs::write(&path, json + "\n").map_err(|e| LoraError::file(&path, e))?;
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| (format!("{PEFT_PREFIX}{k}"), t.clone()))
        .collect();
    let path = dir.join(ADAPTER_WEIGHTS);
    candle_core::safetensors::save(&map, &path).map_err(|e| LoraError::file(&path, e))
}

/// A PEFT LoRA adapter read from disk: its configuration and tensors by model name (the
/// [`PEFT_PREFIX`] removed).
#[derive(Debug, Clone)]
pub struct PeftAdapter {
    /// `adapter_config.json`.
    pub config: AdapterConfig,
    /// The weights, by model name.
    pub tensors: HashMap<String, Tensor>,
}

/// Reads the PEFT adapter in `dir`, or `None` when there is no `adapter_config.json`.
pub fn read_adapter(dir: &Path) -> Result<Option<PeftAdapter>, LoraError> {
    let cfg_path = dir.join(ADAPTER_CONFIG);
    if !cfg_path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| LoraError::file(&cfg_path, e))?;
    let config: AdapterConfig = serde_json::from_str(&text).map_err(|e| LoraError::file(&cfg_path, e))?;
    config.check_supported().map_err(|e| LoraError::InFile {
        path: cfg_path.clone(),
        source: Box::new(e),
    })?;
    let st = dir.join(ADAPTER_WEIGHTS);
    let bin = dir.join(ADAPTER_WEIGHTS_BIN);
    let raw = if st.is_file() {
        candle_core::safetensors::load(&st, &candle_core::Device::Cpu).map_err(|e| LoraError::file(&st, e))?
    } else if bin.is_file() {
        candle_core::pickle::read_all(&bin)
            .map_err(|e| LoraError::file(&bin, e))?
            .into_iter()
            .collect()
    } else {
        return Err(LoraError::Mismatch(format!(
            "{}: the adapter has no weights ({ADAPTER_WEIGHTS} or {ADAPTER_WEIGHTS_BIN})",
            dir.display()
        )));
    };
    let tensors = raw
        .into_iter()
        .map(|(k, t)| (k.strip_prefix(PEFT_PREFIX).map(str::to_string).unwrap_or(k), t))
        .collect();
    Ok(Some(PeftAdapter { config, tensors }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::checkpoint::Pretrained;
    use crate::ml::models::layers::ForwardCtx;
    use crate::ml::models::model::ModelInput;
    use crate::ml::models::params::ParamStore;
    use crate::ml::testutil::*;
    use candle_core::Device;

    fn cfg(targets: &[&str]) -> LoraConfig {
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.1,
            targets: targets.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn logits(m: &Model, input: &ModelInput, ctx: &mut ForwardCtx) -> Tensor {
        m.forward(input, ctx).unwrap().logits
    }

    #[test]
    fn targets_follow_peft_suffix_matching() {
        let config = ModelConfig::Bert(tiny_bert(2));
        let modules = base_linears(&config);
        assert_eq!(modules.len(), 2 * 6 + 1);
        assert_eq!(modules[0], "bert.encoder.layer.0.attention.self.query");
        assert_eq!(modules[12], "bert.pooler.dense");
        let m = |t: &[&str]| match_targets(&modules, &t.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            m(&["query", "value"]).unwrap(),
            [
                "bert.encoder.layer.0.attention.self.query",
                "bert.encoder.layer.0.attention.self.value",
                "bert.encoder.layer.1.attention.self.query",
                "bert.encoder.layer.1.attention.self.value"
            ]
        );
        // "output.dense" is a suffix of both output projections; "dense" of the pooler too.
        assert_eq!(m(&["output.dense"]).unwrap().len(), 4);
        assert_eq!(m(&["dense"]).unwrap().len(), 7);
        // A partial component is not a match, and the head is never adapted.
        let e = m(&["uery"]).unwrap_err().to_string();
        assert!(e.contains("`uery` matches no linear module"), "{e}");
        assert!(e.contains("attention.self.query, attention.self.key"), "{e}");
        assert!(e.contains("bert.pooler.dense"), "{e}");
        let e = m(&["query", "classifier"]).unwrap_err().to_string();
        assert!(e.contains("trained in full"), "{e}");
        // The walk and the list agree.
        let mut model = Pretrained::random(&config, 1, &Device::Cpu).unwrap().model;
        let walked: Vec<String> = linears_mut(&mut model).into_iter().map(|(n, _)| n).collect();
        assert_eq!(walked[..walked.len() - 1], modules[..]);
        let mut vit = Pretrained::random(&ModelConfig::Vit(tiny_vit(2)), 1, &Device::Cpu)
            .unwrap()
            .model;
        let walked: Vec<String> = linears_mut(&mut vit).into_iter().map(|(n, _)| n).collect();
        assert_eq!(walked[..walked.len() - 1], base_linears(&vit.config())[..]);
        assert_eq!(walked[2], "vit.encoder.layer.0.attention.attention.value");
    }

    #[test]
    fn a_fresh_adapter_is_a_no_op_with_kaiming_uniform_a() {
        let p = Pretrained::random(&ModelConfig::Bert(tiny_bert(2)), 3, &Device::Cpu).unwrap();
        let input = text_input();
        let before = logits(&p.model, &input, &mut ForwardCtx::eval());
        let mut model = p.model.clone();
        let store = ParamStore::new(5);
        let chosen = attach(
            &mut model,
            &cfg(&["query", "value"]),
            store.var_builder(DType::F32, &Device::Cpu),
        )
        .unwrap();
        assert_eq!(chosen.len(), 4);
        assert_eq!(store.named_vars().len(), 8);
        assert_eq!(bits(&logits(&model, &input, &mut ForwardCtx::eval())), bits(&before));
        let a = store.tensors().unwrap()["bert.encoder.layer.0.attention.self.query.lora_A.weight"].clone();
        assert_eq!(a.dims(), &[4, 16]);
        let v: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let bound = 1.0 / 4.0; // 1/√16
        assert!(v.iter().all(|x| x.abs() <= bound), "{v:?}");
        assert!(v.iter().any(|x| x.abs() > 0.8 * bound), "{v:?}");
        let b = &store.tensors().unwrap()["bert.encoder.layer.0.attention.self.query.lora_B.weight"];
        assert_eq!(b.dims(), &[16, 4]);
        assert_eq!(bits(b), vec![0; 64]);
    }

    #[test]
    fn branch_equals_merged_weight_and_trains_with_seeded_dropout() {
        let p = Pretrained::random(&ModelConfig::Vit(tiny_vit(3)), 3, &Device::Cpu).unwrap();
        let input = ModelInput::Images {
            pixel_values: image_batch(2, 3, 8, 1),
        };
        let mut model = p.model.clone();
        let store = ParamStore::new(5);
        let c = cfg(&["query", "output.dense"]);
        attach(&mut model, &c, store.var_builder(DType::F32, &Device::Cpu)).unwrap();
        // Give B values so the branch does something.
        for (name, var) in store.named_vars() {
            if name.ends_with("lora_B.weight") {
                let t = Tensor::randn(0f32, 0.5, var.shape(), &Device::Cpu).unwrap();
                var.set(&t).unwrap();
            }
        }
        let adapted = logits(&model, &input, &mut ForwardCtx::eval());
        // Merging B·A·scale into the weights gives the same function.
        let mut tensors: HashMap<String, Tensor> = p.params.tensors().unwrap().into_iter().collect();
        let adapter: HashMap<String, Tensor> = store.tensors().unwrap().into_iter().collect();
        let merged_names = merge_tensors(&mut tensors, &adapter, c.scale()).unwrap();
        assert_eq!(merged_names.len(), 6);
        let merged = Model::new(
            &p.model.config(),
            candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let m = logits(&merged, &input, &mut ForwardCtx::eval());
        assert!(max_abs_diff(&m, &adapted) < 1e-5, "{}", max_abs_diff(&m, &adapted));
        assert!(max_abs_diff(&m, &logits(&p.model, &input, &mut ForwardCtx::eval())) > 1e-3);
        // Train mode: the adapter dropout is seeded; every adapter variable gets a gradient and
        // the (detached) base weights none.
        let t1 = logits(&model, &input, &mut ForwardCtx::train(7));
        assert_eq!(bits(&t1), bits(&logits(&model, &input, &mut ForwardCtx::train(7))));
        assert_ne!(bits(&t1), bits(&logits(&model, &input, &mut ForwardCtx::train(8))));
        let loss = candle_nn::loss::cross_entropy(&t1, &targets(2, 3, 1)).unwrap();
        let grads = loss.backward().unwrap();
        assert_eq!(assert_every_var_has_gradient(&store, &grads), 12);
        // A step on the last layer's first token alone is the same step: the adapters' dropout
        // (on the query's one-row input too) takes the whole mask's first rows.
        let step = |ctx: &mut ForwardCtx| loss_and_gradients(&store, &logits(&model, &input, ctx), &targets(2, 3, 1));
        let full = step(&mut ForwardCtx::train(7));
        let err = max_rel_diff(&step(&mut ForwardCtx::train(7).logits_only()), &full);
        assert!(err < 1e-4, "first-token step: relative difference {err}");
        // The detached copy computes the same and sees later updates.
        let det = detached(&model);
        assert_eq!(bits(&logits(&det, &input, &mut ForwardCtx::eval())), bits(&adapted));
        let (_, var) = &store.named_vars()[1];
        var.set(&var.as_tensor().zeros_like().unwrap()).unwrap();
        assert_eq!(
            bits(&logits(&det, &input, &mut ForwardCtx::eval())),
            bits(&logits(&model, &input, &mut ForwardCtx::eval()))
        );
    }

    #[test]
    fn adapter_files_round_trip_in_peft_layout() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(&["query", "value"]);
        let config = AdapterConfig::seq_cls(&c, Some("base/dir".into()));
        let dev = Device::Cpu;
        let tensors = BTreeMap::from([
            (
                "m.lora_A.weight".to_string(),
                Tensor::ones((4, 3), DType::F32, &dev).unwrap(),
            ),
            (
                "m.lora_B.weight".to_string(),
                Tensor::ones((2, 4), DType::F32, &dev).unwrap(),
            ),
            (
                "classifier.bias".to_string(),
                Tensor::ones(2, DType::F32, &dev).unwrap(),
            ),
        ]);
        save_adapter(dir.path(), &config, &tensors).unwrap();
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(ADAPTER_CONFIG)).unwrap()).unwrap();
        assert_eq!(v["peft_type"], "LORA");
        assert_eq!(v["task_type"], "SEQ_CLS");
        assert_eq!(v["r"], 4);
        assert_eq!(v["lora_alpha"], 8.0);
        assert_eq!(v["target_modules"], serde_json::json!(["query", "value"]));
        assert_eq!(v["modules_to_save"], serde_json::json!(["classifier"]));
        assert_eq!(v["bias"], "none");
        assert_eq!(v["init_lora_weights"], true);
        assert_eq!(v["use_rslora"], false);
        assert_eq!(v["inference_mode"], true);
        let raw = candle_core::safetensors::load(dir.path().join(ADAPTER_WEIGHTS), &dev).unwrap();
        let mut keys: Vec<&String> = raw.keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "base_model.model.classifier.bias",
                "base_model.model.m.lora_A.weight",
                "base_model.model.m.lora_B.weight"
            ]
        );
        let back = read_adapter(dir.path()).unwrap().unwrap();
        assert_eq!(back.config, config);
        assert_eq!(back.config.scale(), 2.0);
        let mut state = HashMap::from([
            ("m.weight".to_string(), Tensor::zeros((2, 3), DType::F32, &dev).unwrap()),
            (
                "classifier.bias".to_string(),
                Tensor::zeros(2, DType::F32, &dev).unwrap(),
            ),
        ]);
        assert_eq!(merge_tensors(&mut state, &back.tensors, 2.0).unwrap(), ["m"]);
        // B·A = 4 everywhere, times the scale 2.
        assert_eq!(
            state["m.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![8.0; 6]
        );
        assert_eq!(state["classifier.bias"].to_vec1::<f32>().unwrap(), vec![1.0; 2]);
        // Mismatches are clear errors.
        let mut small = HashMap::from([("m.weight".to_string(), Tensor::zeros((3, 3), DType::F32, &dev).unwrap())]);
        let e = merge_tensors(&mut small, &back.tensors, 1.0).unwrap_err().to_string();
        assert!(e.contains("[2, 3]") && e.contains("[3, 3]"), "{e}");
        let e = merge_tensors(&mut HashMap::new(), &back.tensors, 1.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no `m.weight`"), "{e}");
        let mut dora = config.clone();
        dora.use_dora = true;
        assert!(dora.check_supported().is_err());
        assert!(read_adapter(&dir.path().join("none")).unwrap().is_none());
    }
}

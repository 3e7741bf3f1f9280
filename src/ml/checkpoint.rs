//! Loading and saving models as local Hugging Face directories.
//!
//! A directory holds `config.json` (HF layout) and the weights as `model.safetensors`,
//! sharded safetensors (`model.safetensors.index.json`) or `pytorch_model.bin`. Tensor names
//! may come with or without the family prefix (`bert.` / `vit.`), as a bare `BertModel` or
//! `ViTModel` saves them; old TensorFlow-converted names (`LayerNorm.gamma`/`beta`) are
//! accepted. Variables absent from the checkpoint, typically the classification head, are
//! created from the seed, and the [`LoadReport`](crate::ml::models::params::LoadReport) says which.
//!
//! QLoRA outputs load as dense models: linear weights stored 4-bit in the bitsandbytes NF4
//! layout (`<module>.weight` packed, `.absmax`, `.quant_map`, …, see [`crate::ml::compress::nf4`]) are
//! dequantized, the `quantization_config` is dropped from the config, and a PEFT LoRA adapter
//! in the same directory (`adapter_config.json`, see [`crate::ml::compress::lora`]) is merged in
//! (`W + scale·B·A`, and its fully saved modules replace the base's). [`save_quantized`] writes
//! that layout.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::ml::compress::nf4::{Nf4Tensor, QUANT_STATE_KEY};
use crate::ml::models::config::{Labels, ModelConfig, QuantizationConfig};
pub use crate::ml::models::model::Pretrained;
use crate::ml::models::params::ParamStore;

/// Why a checkpoint could not be read, written or turned into a model.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The PEFT adapter in the directory cannot be read (the error names the file).
    #[error(transparent)]
    Adapter(#[from] crate::ml::compress::lora_error::LoraError),
    /// config.json cannot be read or is invalid (the error names the file).
    #[error(transparent)]
    ModelConfig(#[from] crate::ml::models::config_error::ConfigError),
    /// config.json is missing or invalid.
    #[error("{path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The directory has no weights file.
    #[error("{dir}: no weights found (looked for model.safetensors, model.safetensors.index.json, pytorch_model.bin)")]
    NoWeights {
        /// The directory.
        dir: PathBuf,
    },
    /// Quantized weights or a LoRA adapter are malformed or unsupported.
    #[error("{path}: {message}")]
    Format {
        /// The directory or file concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A weights file could not be decoded, or the weights do not fit the config.
    #[error("{path}: {source}")]
    Tensor {
        /// The file or directory concerned.
        path: PathBuf,
        /// candle's error.
        source: candle_core::Error,
    },
}

pub(crate) fn tensor_err(path: &Path) -> impl Fn(candle_core::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Tensor {
        path: path.to_path_buf(),
        source,
    }
}

/// Options for [`load_pretrained`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Replace the config's labels (the classifier is re-created if its size changes).
    pub labels: Option<Labels>,
    /// Seed for every variable the checkpoint lacks.
    pub seed: u64,
    /// Device for the variables.
    pub device: Device,
    /// Dtype for the variables.
    pub dtype: DType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            labels: None,
            seed: 0,
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }
}

/// Saving, beside loading: [`Pretrained`] itself lives with the models.
impl Pretrained {
    /// Writes the model as an HF directory (see [`save_pretrained`]).
    pub fn save(&self, dir: &Path) -> Result<(), CheckpointError> {
        save_pretrained(dir, &self.model.config(), &self.params)
    }
}

/// Reads every tensor of the weights file(s) in `dir`, by their stored names.
pub fn read_weights(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>, CheckpointError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return candle_core::safetensors::load(&single, device).map_err(tensor_err(&single));
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|source| CheckpointError::Io {
            path: index.clone(),
            source,
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| CheckpointError::Config {
            path: index.clone(),
            message: e.to_string(),
        })?;
        let files: BTreeSet<String> = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| CheckpointError::Config {
                path: index.clone(),
                message: "no `weight_map` object".into(),
            })?
            .values()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect();
        let mut all = HashMap::new();
        for f in files {
            let p = dir.join(&f);
            all.extend(candle_core::safetensors::load(&p, device).map_err(tensor_err(&p))?);
        }
        return Ok(all);
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.is_file() {
        let tensors = candle_core::pickle::read_all(&bin).map_err(tensor_err(&bin))?;
        return tensors
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_device(device).map_err(tensor_err(&bin))?)))
            .collect();
    }
    Err(CheckpointError::NoWeights { dir: dir.to_path_buf() })
}

/// Maps stored tensor names onto this crate's (transformers') names for the config's family:
/// adds the `bert.` / `vit.` prefix where absent, renames `gamma`/`beta` to `weight`/`bias`,
/// and drops non-parameter buffers (`position_ids`).
pub fn normalize_names(config: &ModelConfig, tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    let (prefix, roots): (&str, &[&str]) = match config {
        ModelConfig::Bert(_) => ("bert.", &["embeddings.", "encoder.", "pooler."]),
        ModelConfig::Vit(_) => ("vit.", &["embeddings.", "encoder.", "layernorm.", "pooler."]),
    };
    tensors
        .into_iter()
        .filter(|(k, _)| !k.ends_with("position_ids"))
        .map(|(k, t)| {
            let mut k = if roots.iter().any(|r| k.starts_with(r)) {
                format!("{prefix}{k}")
            } else {
                k
            };
            if let Some(stem) = k.strip_suffix("LayerNorm.gamma") {
                k = format!("{stem}LayerNorm.weight");
            } else if let Some(stem) = k.strip_suffix("LayerNorm.beta") {
                k = format!("{stem}LayerNorm.bias");
            }
            (k, t)
        })
        .collect()
}

/// Reads and parses `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<ModelConfig, CheckpointError> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(CheckpointError::Config {
            message: "missing (a Hugging Face model directory needs config.json)".into(),
            path,
        });
    }
    Ok(ModelConfig::from_file(&path)?)
}

/// The suffix (after the module path) that marks a bitsandbytes 4-bit FP4 weight.
const FP4_STATE_SUFFIX: &str = "weight.quant_state.bitsandbytes__fp4";

/// The module prefixes (`<module>.`, or empty) of the bitsandbytes NF4 weights in a state dict,
/// sorted; an error for 4-bit FP4 weights (unsupported).
pub fn nf4_prefixes(tensors: &HashMap<String, Tensor>) -> Result<Vec<String>, String> {
    if let Some(k) = tensors.keys().find(|k| k.ends_with(FP4_STATE_SUFFIX)) {
        return Err(format!("`{k}`: 4-bit FP4 weights are not supported (only NF4)"));
    }
    let mut prefixes: Vec<String> = tensors
        .keys()
        .filter_map(|k| k.strip_suffix(QUANT_STATE_KEY).map(str::to_string))
        .filter(|p| p.is_empty() || p.ends_with('.'))
        .collect();
    prefixes.sort();
    Ok(prefixes)
}

/// Removes the NF4 weight under `prefix` (`<module>.weight` packed, with its `.absmax`,
/// `.quant_map`, nested and quant-state tensors) from a state dict and returns it.
pub fn take_nf4(tensors: &mut HashMap<String, Tensor>, prefix: &str) -> Result<Nf4Tensor, String> {
    let q = Nf4Tensor::from_state_dict(tensors, prefix).map_err(|e| format!("`{prefix}weight`: {e}"))?;
    for suffix in [
        "weight",
        "weight.absmax",
        "weight.quant_map",
        "weight.nested_absmax",
        "weight.nested_quant_map",
        QUANT_STATE_KEY,
    ] {
        tensors.remove(&format!("{prefix}{suffix}"));
    }
    Ok(q)
}

/// Replaces every bitsandbytes NF4 weight of a state dict by its dequantized dense tensor, on
/// `device`. Returns the names of the dequantized weights, sorted.
pub fn dequantize_nf4(tensors: &mut HashMap<String, Tensor>, device: &Device) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for prefix in nf4_prefixes(tensors)? {
        let q = take_nf4(tensors, &prefix)?;
        let dense = q.to_tensor(device).map_err(|e| format!("`{prefix}weight`: {e}"))?;
        let name = format!("{prefix}weight");
        tensors.insert(name.clone(), dense);
        names.push(name);
    }
    Ok(names)
}

/// config.json and the weights of the HF directory `dir` (names normalized to rkd's), on
/// `device`; 8-bit bitsandbytes checkpoints are refused.
pub fn read_checkpoint(dir: &Path, device: &Device) -> Result<(ModelConfig, HashMap<String, Tensor>), CheckpointError> {
    let config = read_config(dir)?;
    let tensors = normalize_names(&config, read_weights(dir, device)?);
    let quantization = config.quantization().map_err(|e| CheckpointError::Config {
        path: dir.join("config.json"),
        message: e.to_string(),
    })?;
    if quantization.as_ref().is_some_and(|q| q.load_in_8bit) {
        return Err(CheckpointError::Format {
            path: dir.to_path_buf(),
            message: "8-bit bitsandbytes checkpoints are not supported (only 4-bit NF4)".into(),
        });
    }
    Ok((config, tensors))
}

/// Loads a local HF directory as a trainable classifier (NF4 weights dequantized and a PEFT
/// LoRA adapter in the directory merged, see the module doc).
pub fn load_pretrained(dir: &Path, opts: &LoadOptions) -> Result<Pretrained, CheckpointError> {
    let (mut config, mut tensors) = read_checkpoint(dir, &opts.device)?;
    let format_err = |path: PathBuf| move |message: String| CheckpointError::Format { path, message };
    dequantize_nf4(&mut tensors, &opts.device).map_err(format_err(dir.to_path_buf()))?;
    // The weights are dense from here on: a model saved from them is not quantized.
    config.set_quantization(None);
    if let Some(adapter) = crate::ml::compress::lora::read_adapter(dir)? {
        let scale = adapter.config.scale();
        let adapter_tensors = normalize_names(&config, adapter.tensors);
        crate::ml::compress::lora::merge_tensors(&mut tensors, &adapter_tensors, scale)
            .map_err(|e| format_err(dir.join(crate::ml::compress::lora::ADAPTER_WEIGHTS))(e.to_string()))?;
    }
    if let Some(labels) = &opts.labels {
        match &mut config {
            ModelConfig::Bert(c) => c.labels = labels.clone(),
            ModelConfig::Vit(c) => c.labels = labels.clone(),
        }
        // A head of another size is not this task's head: create a new one.
        let stale = tensors
            .get("classifier.weight")
            .is_some_and(|w| w.dims().first() != Some(&labels.names.len()));
        if stale {
            tensors.remove("classifier.weight");
            tensors.remove("classifier.bias");
        }
    }
    let params = ParamStore::with_source(opts.seed, tensors);
    Pretrained::build(&config, params, opts.dtype, &opts.device).map_err(tensor_err(dir))
}

/// Writes `config.json` and `model.safetensors` (all variables, HF names) into `dir`.
pub fn save_pretrained(dir: &Path, config: &ModelConfig, params: &ParamStore) -> Result<(), CheckpointError> {
    write_config(dir, config)?;
    let weights = dir.join("model.safetensors");
    params.save_safetensors(&weights).map_err(tensor_err(&weights))
}

/// Creates `dir` and writes `config.json` into it.
fn write_config(dir: &Path, config: &ModelConfig) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(dir).map_err(|source| CheckpointError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, config.to_json_string() + "\n")
        .map_err(|source| CheckpointError::Io { path: cfg_path, source })
}

/// Writes `config.json` and `model.safetensors` holding `tensors` (HF names) into `dir`.
pub fn save_tensors(
    dir: &Path,
    config: &ModelConfig,
    tensors: &HashMap<String, Tensor>,
) -> Result<(), CheckpointError> {
    write_config(dir, config)?;
    let weights = dir.join("model.safetensors");
    candle_core::safetensors::save(tensors, &weights).map_err(tensor_err(&weights))
}

/// Writes a 4-bit checkpoint in the bitsandbytes serialization layout: every weight of
/// `quantized` (by tensor name, `<module>.weight`) as its [`Nf4Tensor::bnb_tensors`] under
/// `<module>.`, every tensor of `dense` as it is, and `config.json` with `quantization`.
pub fn save_quantized(
    dir: &Path,
    config: &ModelConfig,
    dense: &HashMap<String, Tensor>,
    quantized: &BTreeMap<String, Nf4Tensor>,
    quantization: &QuantizationConfig,
) -> Result<(), CheckpointError> {
    let weights = dir.join("model.safetensors");
    let mut all = dense.clone();
    for (name, q) in quantized {
        let prefix = name.strip_suffix("weight").ok_or_else(|| CheckpointError::Format {
            path: weights.clone(),
            message: format!("quantized tensor `{name}` is not a `.weight`"),
        })?;
        let parts = q.bnb_tensors().map_err(|e| CheckpointError::Format {
            path: weights.clone(),
            message: format!("`{name}`: {e}"),
        })?;
        for (suffix, t) in parts {
            all.insert(format!("{prefix}{suffix}"), t);
        }
    }
    let mut config = config.clone();
    config.set_quantization(Some(quantization));
    save_tensors(dir, &config, &all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::models::config::Labels;
    use crate::ml::models::layers::ForwardCtx;
    use crate::ml::models::model::ModelInput;
    use crate::ml::testutil::*;

    fn logits_bits(p: &Pretrained, input: &ModelInput) -> Vec<u32> {
        bits(&p.model.forward(input, &mut ForwardCtx::eval()).unwrap().logits)
    }

    fn round_trip(config: ModelConfig, input: ModelInput) {
        let p = Pretrained::random(&config, 21, &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        p.save(dir.path()).unwrap();
        let q = load_pretrained(dir.path(), &LoadOptions::default()).unwrap();
        assert!(q.report.initialised.is_empty(), "{:?}", q.report.initialised);
        assert!(q.report.unused.is_empty(), "{:?}", q.report.unused);
        assert_eq!(q.model.config(), config);
        assert_eq!(logits_bits(&p, &input), logits_bits(&q, &input));
        // Saving is deterministic: same values, same bytes.
        let dir2 = tempfile::tempdir().unwrap();
        q.save(dir2.path()).unwrap();
        for f in ["config.json", "model.safetensors"] {
            assert_eq!(
                std::fs::read(dir.path().join(f)).unwrap(),
                std::fs::read(dir2.path().join(f)).unwrap(),
                "{f}"
            );
        }
    }

    #[test]
    fn save_then_load_gives_identical_logits() {
        let (ids, mask, types) = text_batch(2, 6, 50, 3);
        round_trip(
            ModelConfig::Bert(tiny_bert(3)),
            ModelInput::Text {
                input_ids: ids,
                token_type_ids: Some(types),
                attention_mask: Some(mask),
            },
        );
        round_trip(
            ModelConfig::Vit(tiny_vit(2)),
            ModelInput::Images {
                pixel_values: image_batch(2, 3, 8, 4),
            },
        );
    }

    #[test]
    fn loads_without_prefix_and_creates_missing_head() {
        let config = ModelConfig::Bert(tiny_bert(2));
        let p = Pretrained::random(&config, 5, &Device::Cpu).unwrap();
        // Write it as a bare `BertModel` would: no `bert.` prefix, old gamma/beta names, no head.
        let dir = tempfile::tempdir().unwrap();
        let mut bare = HashMap::new();
        for (k, t) in p.params.tensors().unwrap() {
            if k.starts_with("classifier.") {
                continue;
            }
            let k = k.strip_prefix("bert.").unwrap().to_string();
            let k = k
                .replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta");
            bare.insert(k, t);
        }
        bare.insert(
            "embeddings.position_ids".into(),
            Tensor::arange(0u32, 16, &Device::Cpu).unwrap(),
        );
        bare.insert(
            "cls.predictions.bias".into(),
            Tensor::zeros(50, DType::F32, &Device::Cpu).unwrap(),
        );
        candle_core::safetensors::save(&bare, dir.path().join("model.safetensors")).unwrap();
        std::fs::write(dir.path().join("config.json"), config.to_json_string()).unwrap();

        let opts = LoadOptions {
            seed: 5,
            ..LoadOptions::default()
        };
        let q = load_pretrained(dir.path(), &opts).unwrap();
        assert_eq!(q.report.initialised, vec!["classifier.bias", "classifier.weight"]);
        assert_eq!(q.report.unused, vec!["cls.predictions.bias"]);
        // Same seed, so the re-created head equals the original one: identical logits.
        let (ids, mask, _) = text_batch(2, 5, 50, 1);
        let input = ModelInput::Text {
            input_ids: ids,
            token_type_ids: None,
            attention_mask: Some(mask),
        };
        assert_eq!(logits_bits(&p, &input), logits_bits(&q, &input));

        // New labels of another count: the head is re-created with that size.
        let opts = LoadOptions {
            labels: Some(Labels::from_names(["a", "b", "c"])),
            ..LoadOptions::default()
        };
        let r = load_pretrained(dir.path(), &opts).unwrap();
        assert_eq!(r.model.num_labels(), 3);
        let out = r.model.forward(&input, &mut ForwardCtx::eval()).unwrap();
        assert_eq!(out.logits.dims(), &[2, 3]);
    }

    #[test]
    fn nf4_checkpoints_load_dequantized_and_dense_again() {
        let config = ModelConfig::Bert(tiny_bert(2));
        let p = Pretrained::random(&config, 8, &Device::Cpu).unwrap();
        let mut dense: HashMap<String, Tensor> = p.params.tensors().unwrap().into_iter().collect();
        let mut quantized = BTreeMap::new();
        for module in crate::ml::compress::lora::base_linears(&config) {
            let name = format!("{module}.weight");
            let q = Nf4Tensor::from_tensor(&dense.remove(&name).unwrap(), 64, true).unwrap();
            quantized.insert(name, q);
        }
        assert_eq!(quantized.len(), 2 * 6 + 1);
        let dir = tempfile::tempdir().unwrap();
        let qc = QuantizationConfig::nf4(true, 64, vec!["classifier".into()]);
        save_quantized(dir.path(), &config, &dense, &quantized, &qc).unwrap();
        let q = load_pretrained(dir.path(), &LoadOptions::default()).unwrap();
        assert!(
            q.report.initialised.is_empty() && q.report.unused.is_empty(),
            "{:?}",
            q.report
        );
        assert_eq!(
            q.model.config(),
            config,
            "quantization_config dropped: the loaded model is dense"
        );
        let loaded = q.params.tensors().unwrap();
        for (name, nf4) in &quantized {
            assert_eq!(
                bits(&loaded[name]),
                bits(&nf4.to_tensor(&Device::Cpu).unwrap()),
                "{name}"
            );
        }
        assert_eq!(
            bits(&loaded["bert.embeddings.word_embeddings.weight"]),
            bits(&dense["bert.embeddings.word_embeddings.weight"])
        );
        // Saving the loaded model writes a plain dense checkpoint.
        let dense_dir = tempfile::tempdir().unwrap();
        q.save(dense_dir.path()).unwrap();
        let text = std::fs::read_to_string(dense_dir.path().join("config.json")).unwrap();
        assert!(!text.contains("quantization_config"), "{text}");
        // FP4 weights and 8-bit checkpoints are refused with a reason.
        let mut raw = candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
        let k = "bert.pooler.dense.weight.quant_state.bitsandbytes__nf4";
        let state = raw.remove(k).unwrap();
        raw.insert(k.replace("nf4", "fp4"), state);
        candle_core::safetensors::save(&raw, dir.path().join("model.safetensors")).unwrap();
        let e = load_pretrained(dir.path(), &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("FP4 weights are not supported"), "{e}");
        let mut eight = config.clone();
        let mut qc8 = qc.clone();
        qc8.load_in_4bit = false;
        qc8.load_in_8bit = true;
        eight.set_quantization(Some(&qc8));
        std::fs::write(dir.path().join("config.json"), eight.to_json_string()).unwrap();
        let e = load_pretrained(dir.path(), &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("8-bit"), "{e}");
    }

    #[test]
    fn clear_errors_for_bad_directories() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_pretrained(dir.path(), &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.json") && e.contains("missing"), "{e}");
        std::fs::write(
            dir.path().join("config.json"),
            ModelConfig::Vit(tiny_vit(2)).to_json_string(),
        )
        .unwrap();
        let e = load_pretrained(dir.path(), &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no weights found"), "{e}");
        // Weights that do not fit the config name the tensor.
        let p = Pretrained::random(&ModelConfig::Vit(tiny_vit(2)), 1, &Device::Cpu).unwrap();
        p.save(dir.path()).unwrap();
        let mut other = tiny_vit(2);
        other.hidden_size = 32;
        std::fs::write(dir.path().join("config.json"), ModelConfig::Vit(other).to_json_string()).unwrap();
        let e = load_pretrained(dir.path(), &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("checkpoint tensor") && e.contains("expects"), "{e}");
    }
}

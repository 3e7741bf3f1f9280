//! Resolving a model argument (`model:`, `teacher:`, `student:`, `base:`) into weights.
//!
//! A stage reference is the upstream stage's output directory; `pretrained(path:)` is a local
//! Hugging Face directory; `hf(repo:, revision:)` is downloaded through the hf-hub crate into
//! its cache (`HF_HOME`, default `~/.cache/huggingface`); `bert(...)` and `vit(...)` are
//! architectures, initialised from the seed with the dataset's classes as labels.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;

use super::OpContext;
use super::OpError;
use crate::data::{DataKind, Dataset};
use crate::ml::checkpoint::{load_pretrained, read_config, Pretrained};
use crate::ml::{BertConfig, Labels, ModelConfig, VitConfig};
use crate::value::{Params, Spec, Value};

/// Where a model's weights come from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A local directory in Hugging Face layout (config.json, weights, tokenizer files).
    Dir {
        /// The directory.
        dir: PathBuf,
        /// What it is, for messages ("stage output", "pretrained(...)", "hf(...)").
        what: String,
    },
    /// An architecture to initialise from the seed.
    Arch(Arc<Spec>),
}

/// Resolves a model argument of the op (downloading `hf(...)` checkpoints).
pub fn resolve(ctx: &OpContext, model: &Value) -> Result<ModelSource, OpError> {
    resolve_value(model, &|id| (ctx.input_dir)(id))
}

/// Resolves one model value; `stage_dir` maps a stage to its output directory.
pub fn resolve_value(v: &Value, stage_dir: &dyn Fn(crate::value::StageId) -> PathBuf) -> Result<ModelSource, OpError> {
    match v {
        Value::Stage(id) => Ok(ModelSource::Dir {
            dir: stage_dir(*id),
            what: "the upstream stage's output".into(),
        }),
        Value::Spec(spec) => match spec.ctor.name {
            "pretrained" => match spec.params.get("path") {
                Some(Value::Path(p)) => Ok(ModelSource::Dir {
                    dir: p.resolved.clone(),
                    what: format!("pretrained(path: \"{}\")", p.written),
                }),
                _ => Err(OpError::Invalid(String::from("pretrained(...) needs `path:`"))),
            },
            "hf" => {
                let repo = str_param(&spec.params, "repo").ok_or("hf(...) needs `repo:`")?;
                let revision = str_param(&spec.params, "revision").unwrap_or_else(|| "main".into());
                let dir = hf_download(&repo, &revision)?;
                Ok(ModelSource::Dir {
                    dir,
                    what: format!("hf(repo: \"{repo}\", revision: \"{revision}\")"),
                })
            }
            "bert" | "vit" => Ok(ModelSource::Arch(spec.clone())),
            other => Err(OpError::Invalid(format!("`{other}(...)` is not a model"))),
        },
        other => Err(OpError::Invalid(format!("expected a model, got {}", other.type_name()))),
    }
}

fn str_param(p: &Params, name: &str) -> Option<String> {
    match p.get(name) {
        Some(Value::Str(s)) => Some(s.to_string()),
        _ => None,
    }
}

fn int_param(p: &Params, name: &str) -> Result<usize, OpError> {
    match p.get(name) {
        Some(Value::Int(i)) if *i >= 0 => Ok(*i as usize),
        _ => Err(OpError::Invalid(format!(
            "model parameter `{name}` is missing or not a non-negative integer"
        ))),
    }
}

fn float_param(p: &Params, name: &str, default: f64) -> f64 {
    p.get(name).and_then(Value::as_f64).unwrap_or(default)
}

/// The files of a checkpoint worth fetching: config, weights (one format), tokenizer.
const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
];

/// Downloads `repo` at `revision` from the Hugging Face Hub into hf-hub's cache (or finds it
/// there) and returns the snapshot directory.
pub fn hf_download(repo: &str, revision: &str) -> Result<PathBuf, OpError> {
    let cache = hf_hub::Cache::from_env();
    let builder = hf_hub::api::sync::ApiBuilder::from_env();
    hf_download_with(repo, revision, cache, builder)
}

fn offline_error(repo: &str, e: impl std::fmt::Display) -> String {
    format!(
        "cannot download {repo} from the Hugging Face Hub (offline?): {e}; \
         download it yourself and use pretrained(path: ...)"
    )
}

fn hf_download_with(
    repo: &str,
    revision: &str,
    cache: hf_hub::Cache,
    builder: hf_hub::api::sync::ApiBuilder,
) -> Result<PathBuf, OpError> {
    use hf_hub::{Repo, RepoType};
    // Fully cached already: no network needed.
    if let Some(dir) = hf_cached(&cache, repo, revision) {
        return Ok(dir);
    }
    let hub_repo = Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string());
    let api = builder
        .with_progress(false)
        .build()
        .map_err(|e| offline_error(repo, e))?;
    let api_repo = api.repo(hub_repo);
    let info = api_repo.info().map_err(|e| offline_error(repo, e))?;
    let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let has = |f: &str| files.iter().any(|x| x == f);
    if !has("config.json") {
        return Err(OpError::Failed(format!(
            "{repo} on the Hugging Face Hub has no config.json"
        )));
    }
    let get = |f: &str| api_repo.get(f).map_err(|e| offline_error(repo, e));
    let config = get("config.json")?;
    if has("model.safetensors") {
        get("model.safetensors")?;
    } else if has("model.safetensors.index.json") {
        let index = get("model.safetensors.index.json")?;
        let text = std::fs::read_to_string(&index).map_err(|e| OpError::Failed(format!("{}: {e}", index.display())))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| OpError::Failed(format!("{}: {e}", index.display())))?;
        let mut shards: Vec<String> = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .map(|m| m.values().filter_map(|f| f.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        shards.sort();
        shards.dedup();
        for s in shards {
            get(&s)?;
        }
    } else if has("pytorch_model.bin") {
        get("pytorch_model.bin")?;
    } else {
        return Err(OpError::Failed(format!(
            "{repo} on the Hugging Face Hub has no model.safetensors or pytorch_model.bin"
        )));
    }
    for f in TOKENIZER_FILES {
        if has(f) {
            get(f)?;
        }
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| OpError::Failed(format!("{repo}: unexpected cache path {}", config.display())))
}

/// The snapshot directory of `repo` at `revision` (a branch the cache knows, or a pinned
/// commit) when its config and weights are in the local Hugging Face cache: what `hf(...)` loads
/// without downloading.
pub fn hf_cached(cache: &hf_hub::Cache, repo: &str, revision: &str) -> Option<PathBuf> {
    let hub_repo = hf_hub::Repo::with_revision(repo.to_string(), hf_hub::RepoType::Model, revision.to_string());
    let dir = crate::data::hub::cached_snapshot(cache, &hub_repo)?;
    let has_weights = ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"]
        .iter()
        .any(|f| dir.join(f).exists());
    (has_weights && dir.join("config.json").exists()).then_some(dir)
}

/// Whether `dir` holds tokenizer files.
pub fn has_tokenizer(dir: &Path) -> bool {
    dir.join("tokenizer.json").is_file() || dir.join("vocab.txt").is_file()
}

/// The tokenizer directory the dataset should use with this model: the checkpoint's own for a
/// BERT checkpoint (an error when it has none), none for architectures (the dataset then builds
/// its vocabulary) and for ViT checkpoints.
pub fn tokenizer_dir(src: &ModelSource) -> Result<Option<PathBuf>, OpError> {
    match src {
        ModelSource::Arch(_) => Ok(None),
        ModelSource::Dir { dir, what } => {
            let config = read_config(dir).map_err(|e| OpError::Failed(format!("{what}: {e}")))?;
            match config {
                ModelConfig::Vit(_) => Ok(None),
                ModelConfig::Bert(_) if has_tokenizer(dir) => Ok(Some(dir.clone())),
                ModelConfig::Bert(_) => Err(OpError::Invalid(format!(
                    "{what} ({}) has no tokenizer (tokenizer.json or vocab.txt): a BERT checkpoint needs the \
                     vocabulary it was trained with",
                    dir.display()
                ))),
            }
        }
    }
}

/// The model configuration an architecture spec describes, sized for `data`: labels from its
/// classes, and (BERT) the vocabulary of its tokenizer. Notes what it adjusted in `log`.
pub fn arch_config(spec: &Spec, data: &Dataset, log: &mut dyn Write) -> Result<ModelConfig, OpError> {
    let p = &spec.params;
    let labels = Labels::from_names(data.classes.iter().cloned());
    match spec.ctor.name {
        "bert" => {
            let DataKind::Text { max_len } = data.kind else {
                return Err(OpError::Invalid(String::from(
                    "a BERT model needs a text dataset, not images",
                )));
            };
            let mut c = BertConfig::new(
                int_param(p, "vocab_size")?,
                int_param(p, "hidden")?,
                int_param(p, "layers")?,
                int_param(p, "heads")?,
                int_param(p, "intermediate")?,
                labels.names.len(),
            );
            c.labels = labels;
            c.max_position_embeddings = int_param(p, "max_position")?;
            c.hidden_dropout_prob = float_param(p, "dropout", 0.1);
            c.attention_probs_dropout_prob = float_param(p, "attention_dropout", 0.1);
            if max_len > c.max_position_embeddings {
                return Err(OpError::Invalid(format!(
                    "the dataset's max_len {max_len} exceeds the model's max_position {}",
                    c.max_position_embeddings
                )));
            }
            if let Some(tok) = &data.tokenizer {
                let n = tok.vocab_size();
                // A size written on purpose is not changed behind its writer's back (`rkd check`
                // refuses it where the data's vocabulary is known before it is read).
                if n != c.vocab_size && spec.differs_from_default("vocab_size") {
                    return Err(OpError::Invalid(format!(
                        "`{}` sets vocab_size {}, but the data's tokenizer has {n} tokens: training sizes \
                         a model's embedding table to its data's tokenizer, so write {}(vocab_size: {n}, ..) \
                         or leave vocab_size out",
                        spec.origin(),
                        c.vocab_size,
                        spec.ctor.name
                    )));
                }
                if n != c.vocab_size {
                    let _ = writeln!(
                        log,
                        "vocab_size: the model's embedding table is sized to the dataset's tokenizer, {n} tokens \
                         ({} by default)",
                        c.vocab_size
                    );
                    c.vocab_size = n;
                }
            }
            c.validate()?;
            Ok(ModelConfig::Bert(c))
        }
        "vit" => {
            let DataKind::Images { image_size, channels } = data.kind else {
                return Err(OpError::Invalid(String::from(
                    "a ViT model needs an image dataset, not text",
                )));
            };
            let size = int_param(p, "image_size")?;
            let ch = int_param(p, "channels")?;
            if size != image_size || ch != channels {
                return Err(OpError::Invalid(format!(
                    "the model expects {size}×{size} images with {ch} channels but the dataset gives \
                     {image_size}×{image_size} with {channels}: make vit(image_size:, channels:) match the dataset"
                )));
            }
            let hidden = int_param(p, "hidden")?;
            let intermediate = match p.get("intermediate") {
                Some(Value::Int(i)) => *i as usize,
                _ => 4 * hidden,
            };
            let mut c = VitConfig::new(
                size,
                int_param(p, "patch")?,
                ch,
                hidden,
                int_param(p, "layers")?,
                int_param(p, "heads")?,
                intermediate,
                labels.names.len(),
            );
            c.labels = labels;
            c.hidden_dropout_prob = float_param(p, "dropout", 0.0);
            c.validate()?;
            Ok(ModelConfig::Vit(c))
        }
        other => Err(OpError::Invalid(format!("`{other}(...)` is not an architecture"))),
    }
}

/// Checks that a model fits a dataset: the family, the number of classes (when `labels` is
/// set), the vocabulary, the image size.
pub fn check_fits(config: &ModelConfig, data: &Dataset, check_labels: bool) -> Result<(), OpError> {
    if check_labels && config.num_labels() != data.classes.len() {
        return Err(OpError::Invalid(format!(
            "the model has {} labels but the dataset has {} classes",
            config.num_labels(),
            data.classes.len()
        )));
    }
    match (config, &data.kind) {
        (ModelConfig::Bert(c), DataKind::Text { max_len }) => {
            if *max_len > c.max_position_embeddings {
                return Err(OpError::Invalid(format!(
                    "the dataset's max_len {max_len} exceeds the model's max_position_embeddings {}",
                    c.max_position_embeddings
                )));
            }
            if let Some(tok) = &data.tokenizer {
                if tok.vocab_size() > c.vocab_size {
                    return Err(OpError::Invalid(format!(
                        "the tokenizer has {} tokens but the model's vocabulary holds {}",
                        tok.vocab_size(),
                        c.vocab_size
                    )));
                }
            }
            Ok(())
        }
        (ModelConfig::Vit(c), DataKind::Images { image_size, channels }) => {
            if c.image_size != *image_size || c.num_channels != *channels {
                return Err(OpError::Invalid(format!(
                    "the model expects {0}×{0} images with {1} channels but the dataset gives {2}×{2} with {3}",
                    c.image_size, c.num_channels, image_size, channels
                )));
            }
            Ok(())
        }
        (ModelConfig::Bert(_), DataKind::Images { .. }) => Err(OpError::Invalid(String::from(
            "a BERT model cannot read an image dataset",
        ))),
        (ModelConfig::Vit(_), DataKind::Text { .. }) => {
            Err(OpError::Invalid(String::from("a ViT model cannot read a text dataset")))
        }
    }
}

/// Builds the model to train: an architecture from the seed, or a checkpoint with the dataset's
/// labels (a new classifier when the class count differs). Says what it did in `log`.
pub fn model_for_training(
    src: &ModelSource,
    data: &Dataset,
    seed: u64,
    device: &Device,
    log: &mut dyn Write,
) -> Result<Pretrained, OpError> {
    match src {
        ModelSource::Arch(spec) => {
            let config = arch_config(spec, data, log)?;
            let _ = writeln!(
                log,
                "model: {} initialised from seed {seed}",
                spec.label.clone().unwrap_or_else(|| spec.ctor.name.to_string())
            );
            Ok(Pretrained::random(&config, seed, device)?)
        }
        ModelSource::Dir { dir, what } => {
            let opts = crate::ml::checkpoint::LoadOptions {
                labels: Some(Labels::from_names(data.classes.iter().cloned())),
                seed,
                device: device.clone(),
                ..Default::default()
            };
            let p = load_pretrained(dir, &opts).map_err(|e| OpError::Failed(format!("{what}: {e}")))?;
            check_fits(&p.model.config(), data, true)?;
            let _ = writeln!(
                log,
                "model: {what} ({}): {} tensors loaded, {} initialised {:?}, {} unused",
                dir.display(),
                p.report.loaded.len(),
                p.report.initialised.len(),
                p.report.initialised,
                p.report.unused.len()
            );
            Ok(p)
        }
    }
}

/// A trained model loaded for inference (no autograd graph is recorded), with what it is and
/// where it came from.
pub struct Frozen {
    /// The model as loaded for inference, with what it holds ([`crate::ml::inference`]).
    pub loaded: crate::ml::inference::Inference,
    /// What it is, for messages.
    pub what: String,
    /// The directory it was loaded from.
    pub dir: PathBuf,
}

/// Loads a trained model (a stage output or a checkpoint) for inference (see
/// [`crate::ml::inference`]: NF4 weights stay 4-bit); with `measure_sizes`, also its sizes.
pub fn load_frozen(src: &ModelSource, purpose: &str, device: &Device, measure_sizes: bool) -> Result<Frozen, OpError> {
    let (dir, what) = match src {
        ModelSource::Dir { dir, what } => (dir.clone(), what.clone()),
        ModelSource::Arch(spec) => {
            return Err(OpError::Failed(format!(
                "{purpose} needs trained weights, not the architecture `{}`: train it first",
                spec.ctor.name
            )))
        }
    };
    let loaded = crate::ml::inference::load_inference(&dir, device, measure_sizes)
        .map_err(|e| OpError::Failed(format!("{what}: {e}")))?;
    Ok(Frozen { loaded, what, dir })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_hub_gives_a_clear_error() {
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = hf_hub::Cache::new(cache_dir.path().to_path_buf());
        // Nothing listens on port 9 (discard) here: the request fails at once.
        let builder = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
            .with_endpoint("http://127.0.0.1:9".into())
            .with_retries(0);
        let e = hf_download_with("google/bert_uncased_L-2_H-128_A-2", "main", cache, builder)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot download google/bert_uncased_L-2_H-128_A-2 from the Hugging Face Hub (offline?): "),
            "{e}"
        );
        assert!(e.ends_with("download it yourself and use pretrained(path: ...)"), "{e}");
    }

    #[test]
    fn a_cached_snapshot_needs_no_network() {
        let cache_dir = tempfile::tempdir().unwrap();
        // hf-hub's cache layout: refs/<revision> names the commit, snapshots/<commit>/ the files.
        let repo_dir = cache_dir.path().join("models--someone--tiny");
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::write(repo_dir.join("refs/main"), "abc123").unwrap();
        let snap = repo_dir.join("snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        std::fs::write(snap.join("model.safetensors"), "").unwrap();
        let cache = hf_hub::Cache::new(cache_dir.path().to_path_buf());
        let builder =
            hf_hub::api::sync::ApiBuilder::from_cache(cache.clone()).with_endpoint("http://127.0.0.1:9".into());
        let dir = hf_download_with("someone/tiny", "main", cache, builder).unwrap();
        assert_eq!(dir, snap);
    }
}

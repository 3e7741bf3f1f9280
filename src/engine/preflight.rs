//! The checks `rkd run` makes before it starts the first stage (and `rkd check` makes too), on what only a checkpoint's
//! config.json can tell: whether a `pretrained(path:)` model, or an `hf(repo:)` model already in
//! the local Hugging Face cache, fits the data of the stages that use it (or are trained from
//! it) — text or images, image size and channels, `max_len` against its positions, vocabulary,
//! classes — by the rules `rkd check` applies to architectures (`crate::compile::compat`); that
//! its config.json can be read; and that a BERT checkpoint brings the tokenizer its text data is
//! read with. An `hf(...)` model that is not in the cache yet is checked when it is downloaded.

use crate::compile::compat::{check_call, Checkpoints, Family, Memo, ModelFacts};
use crate::compile::StageDef;
use crate::diagnostic::{Diag, Kind};
use crate::ml::{ConfigError, ModelConfig};
use crate::source::Span;
use crate::value::{Spec, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Whether any stage reads a checkpoint (`pretrained(path:)` or `hf(repo:)`): without one, the
/// compiler's checks were already complete and [`check`] has nothing to add.
pub fn reads_checkpoints<'a>(mut stages: impl Iterator<Item = &'a StageDef>) -> bool {
    fn any(v: &Value) -> bool {
        match v {
            Value::Spec(s) => matches!(s.ctor.name, "pretrained" | "hf") || s.params.values().any(any),
            Value::List(xs) => xs.iter().any(any),
            Value::Record(r) => r.values().any(any),
            _ => false,
        }
    }
    stages.any(|s| s.params.values().any(any))
}

/// Whether every stage of a pipeline (its compiled stages, in plan order) may start; else the
/// problems its checkpoints show, in source order.
pub fn check(stages: &[StageDef]) -> Result<(), Vec<Diag>> {
    let mut configs = Configs::default();
    let mut diags: Vec<Diag> = Vec::new();
    for stage in stages {
        let has_data = stage.params.contains_key("data");
        for (param, value) in &stage.params {
            let at = stage.arg_spans.get(param).copied().unwrap_or(stage.span);
            let items: Vec<&Value> = match value {
                Value::List(xs) => xs.iter().collect(),
                v => vec![v],
            };
            for v in items {
                let Value::Spec(spec) = v else { continue };
                let Some((dir, what)) = configs.locate(spec) else {
                    continue;
                };
                match configs.read(&dir) {
                    Err(e) => push(
                        Diag::new(Kind::File, at, format!("{what}: {e}"))
                            .label("cannot read its config.json")
                            .help("a checkpoint directory needs a Hugging Face config.json"),
                        &mut diags,
                    ),
                    // The data of a BERT checkpoint is read with its own tokenizer.
                    Ok(ModelConfig::Bert(_)) if has_data && MODEL_ARGS.contains(&param.as_str()) => {
                        if !crate::ops::model_source::has_tokenizer(&dir) {
                            push(
                                Diag::new(
                                    Kind::File,
                                    at,
                                    format!("{what} has no tokenizer (tokenizer.json or vocab.txt)"),
                                )
                                .label("a BERT checkpoint without its vocabulary")
                                .help(format!(
                                    "copy the tokenizer the model was trained with into {}",
                                    dir.display()
                                )),
                                &mut diags,
                            );
                        }
                    }
                    Ok(_) => {}
                }
            }
        }
    }
    let mut memo = Memo::default();
    // A stage after one that does not fit is not checked: its problem is the same one.
    let mut unfit = vec![false; stages.len()];
    for (i, stage) in stages.iter().enumerate() {
        if stage.inputs.iter().any(|id| unfit[id.0 as usize]) {
            unfit[i] = true;
            continue;
        }
        let problems = check_call(
            stage.op,
            &stage.params,
            &stage.arg_spans,
            stage.span,
            stages,
            &mut memo,
            &mut configs,
        );
        unfit[i] = !problems.is_empty();
        for d in problems {
            push(d, &mut diags);
        }
    }
    if diags.is_empty() {
        return Ok(());
    }
    diags.sort_by_key(|d| d.span.map(|s: Span| (s.file, s.start)));
    Err(diags)
}

/// Adds `d` unless the same problem is already reported at the same place (the stages of a
/// sweep share their source).
fn push(d: Diag, diags: &mut Vec<Diag>) {
    if !diags.iter().any(|x| x.span == d.span && x.message == d.message) {
        diags.push(d);
    }
}

/// The parameters whose model reads the stage's data with its tokenizer.
const MODEL_ARGS: [&str; 5] = ["model", "base", "student", "models", "baseline"];

/// The checkpoints' configurations, each read once.
#[derive(Default)]
struct Configs {
    read: HashMap<PathBuf, Result<ModelConfig, Arc<ConfigError>>>,
}

impl Configs {
    /// The directory of a checkpoint spec and how messages name it; `None` for other specs and
    /// for `hf(...)` models not in the cache.
    fn locate(&self, spec: &Spec) -> Option<(PathBuf, String)> {
        let text = |name: &str| match spec.params.get(name) {
            Some(Value::Str(s)) => Some(s.to_string()),
            _ => None,
        };
        match spec.ctor.name {
            "pretrained" => match spec.params.get("path") {
                Some(Value::Path(p)) => Some((p.resolved.clone(), format!("pretrained(path: \"{}\")", p.written))),
                _ => None,
            },
            "hf" => {
                let repo = text("repo")?;
                let revision = text("revision").unwrap_or_else(|| "main".into());
                let dir = hf_cached(&repo, &revision)?;
                Some((dir, format!("hf(repo: \"{repo}\", revision: \"{revision}\")")))
            }
            _ => None,
        }
    }

    fn read(&mut self, dir: &Path) -> Result<ModelConfig, Arc<ConfigError>> {
        self.read
            .entry(dir.to_path_buf())
            .or_insert_with(|| {
                let path = dir.join("config.json");
                if path.is_file() {
                    ModelConfig::from_file(&path).map_err(Arc::new)
                } else {
                    Err(Arc::new(ConfigError::Missing(path)))
                }
            })
            .clone()
    }
}

impl Checkpoints for Configs {
    fn facts(&mut self, spec: &Spec) -> Option<ModelFacts> {
        let (dir, what) = self.locate(spec)?;
        let config = self.read(&dir).ok()?;
        let name = match &spec.label {
            Some(l) => format!("`{l}`"),
            None => format!("`{what}`"),
        };
        let origin = spec.label.clone().unwrap_or(what);
        let facts = ModelFacts {
            labels: Some(config.num_labels()),
            name,
            origin,
            ..ModelFacts::default()
        };
        Some(match config {
            ModelConfig::Bert(c) => ModelFacts {
                family: Some(Family::Bert),
                max_position: Some(c.max_position_embeddings),
                vocab_size: Some(c.vocab_size),
                ..facts
            },
            ModelConfig::Vit(c) => ModelFacts {
                family: Some(Family::Vit),
                image_size: Some(c.image_size),
                channels: Some(c.num_channels),
                ..facts
            },
        })
    }
}

/// The snapshot directory `rkd run` will load `repo` at `revision` from without downloading,
/// when the local Hugging Face cache has it.
fn hf_cached(repo: &str, revision: &str) -> Option<PathBuf> {
    crate::ops::model_source::hf_cached(&hf_hub::Cache::from_env(), repo, revision)
}

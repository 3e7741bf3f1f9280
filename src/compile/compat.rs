//! Whether a stage's models fit its data, checked when the pipeline compiles instead of when
//! the stage starts: a text model on images (or the reverse), the image size and channels, the
//! dataset's `max_len` against the model's positions, its vocabulary, and the number of classes.
//!
//! Each rule is the one the ops apply when they load the model and the data
//! (`src/ops/model_source.rs`: `arch_config` for an architecture that training starts from,
//! `check_fits` for a checkpoint or a trained stage), so nothing that would run is refused. A
//! fact that is not known before running is not checked: a stage's model is followed back to
//! the architecture it was trained from, but what a `pretrained(path:)` or `hf(repo:)`
//! checkpoint is only its config.json can tell, which the preflight of `rkd run`
//! (`src/engine/preflight.rs`) reads through [`Checkpoints`].

use super::{Compiler, StageDef};
use crate::diagnostic::{Diag, Kind};
use crate::registry::OpSchema;
use crate::source::Span;
use crate::value::{Params, Spec, StageId, Value};
use std::collections::{BTreeMap, HashMap};

/// The channels of every dataset's images (RGB; see `crate::data::DataKind::Images`).
const DATA_CHANNELS: usize = 3;

/// A model family: what kind of input it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// BERT: token sequences.
    Bert,
    /// ViT: square images.
    Vit,
}

/// What is known about a model before anything runs; `None` where it is not known.
#[derive(Clone, Debug, Default)]
pub struct ModelFacts {
    /// Text or images.
    pub family: Option<Family>,
    /// An architecture (`bert(...)`, `vit(...)`): training sizes its classifier, and a BERT's
    /// vocabulary, to the data. Otherwise trained weights, whose sizes are fixed.
    pub arch: bool,
    /// BERT: the longest sequence.
    pub max_position: Option<usize>,
    /// BERT: the vocabulary the embedding table holds.
    pub vocab_size: Option<usize>,
    /// An architecture whose `vocab_size` differs from the constructor's default: written on
    /// purpose, so resizing it to the data is worth an error rather than a silent change.
    pub vocab_written: bool,
    /// ViT: the image side.
    pub image_size: Option<usize>,
    /// ViT: the image channels.
    pub channels: Option<usize>,
    /// The classifier's labels.
    pub labels: Option<usize>,
    /// How messages name it: "`vit::l3`", "`teacher` (trained from vit::l3)".
    pub name: String,
    /// What its lineage starts from, as written: "vit::l3", "pretrained(...)".
    pub origin: String,
    /// The constructor at the start of its lineage (`bert`, `vit`, `pretrained`, `hf`).
    pub root: Option<&'static str>,
}

/// What a checkpoint says about itself: read from its config.json by the preflight of `rkd
/// run`; unknown when the pipeline compiles.
pub trait Checkpoints {
    /// The facts of a `pretrained(...)` or `hf(...)` spec, when they are known.
    fn facts(&mut self, spec: &Spec) -> Option<ModelFacts>;
}

/// Knows nothing about checkpoints: what the compiler can check.
pub struct NoCheckpoints;

impl Checkpoints for NoCheckpoints {
    fn facts(&mut self, _spec: &Spec) -> Option<ModelFacts> {
        None
    }
}

/// The facts of the stages seen so far, so that each lineage is followed once.
#[derive(Default)]
pub struct Memo(HashMap<StageId, Option<ModelFacts>>);

/// The shape of a dataset's examples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// Token sequences; `vocab` when the tokenizer's size is known from the arguments alone.
    Text { max_len: usize, vocab: Option<usize> },
    /// Square RGB images.
    Images { image_size: usize },
}

/// What is known about a dataset from its constructor's arguments.
#[derive(Clone, Debug)]
struct DataFacts {
    shape: Shape,
    classes: Option<usize>,
    /// The constructor, for suggestions (`synthetic_images`).
    ctor: &'static str,
    /// How messages name it: "`data`", "`synthetic_images(...)`".
    name: String,
}

/// How a stage uses a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Training starts from it: an architecture is built for the data, a checkpoint gets a new
    /// classifier when the number of classes differs.
    Start,
    /// It is used as trained (evaluated, predicting, teaching, pruned with fine-tuning): its
    /// labels must be the dataset's classes.
    Trained,
}

fn int(params: &Params, name: &str) -> Option<usize> {
    match params.get(name) {
        Some(Value::Int(i)) if *i >= 0 => usize::try_from(*i).ok(),
        _ => None,
    }
}

/// A spec as written, in backticks: its label (`bert::mini`, `data`) or `ctor(...)`.
fn spec_name(spec: &Spec) -> String {
    format!("`{}`", spec.origin())
}

fn data_facts(v: Option<&Value>) -> Option<DataFacts> {
    let Some(Value::Spec(spec)) = v else {
        return None;
    };
    let p = &spec.params;
    let (shape, classes) = match spec.ctor.name {
        "synthetic_text" => (
            Shape::Text {
                max_len: int(p, "max_len")?,
                // Its examples are token ids already: the identity vocabulary of this size.
                vocab: int(p, "vocab_size"),
            },
            int(p, "classes"),
        ),
        // The tokenizer is the model's, or a WordPiece vocabulary of at most `vocab_size`.
        "glue_sst2" => (
            Shape::Text {
                max_len: int(p, "max_len")?,
                vocab: None,
            },
            Some(crate::data::tsv::SST2_CLASSES.len()),
        ),
        "glue" => {
            let task = match p.get("task") {
                Some(Value::Str(t)) => <crate::registry::GlueTask as crate::keyword::Keyword>::from_word(t)?,
                _ => return None,
            };
            let classes = crate::data::glue::classes(task).len();
            (
                Shape::Text {
                    max_len: int(p, "max_len")?,
                    vocab: None,
                },
                (classes > 0).then_some(classes),
            )
        }
        // Its classes are its training labels, known when it is read.
        "text_table" => (
            Shape::Text {
                max_len: int(p, "max_len")?,
                vocab: None,
            },
            None,
        ),
        "synthetic_images" => (
            Shape::Images {
                image_size: int(p, "image_size")?,
            },
            int(p, "classes"),
        ),
        "hf_dataset" if p.contains_key("image") => (
            Shape::Images {
                image_size: int(p, "image_size")?,
            },
            None,
        ),
        "hf_dataset" => (
            Shape::Text {
                max_len: int(p, "max_len")?,
                vocab: None,
            },
            None,
        ),
        // The classes are its folders, or its training labels.
        "image_folder" | "image_table" => (
            Shape::Images {
                image_size: int(p, "image_size")?,
            },
            None,
        ),
        _ => return None,
    };
    Some(DataFacts {
        shape,
        classes,
        ctor: spec.ctor.name,
        name: spec_name(spec),
    })
}

/// Follows model values back to what they are built from.
struct Facts<'a> {
    stages: &'a [StageDef],
    memo: &'a mut Memo,
    checkpoints: &'a mut dyn Checkpoints,
}

impl Facts<'_> {
    fn model(&mut self, v: &Value) -> Option<ModelFacts> {
        match v {
            Value::Spec(spec) => self.spec(spec),
            Value::Stage(id) => self.stage(*id),
            _ => None,
        }
    }

    fn spec(&mut self, spec: &Spec) -> Option<ModelFacts> {
        let p = &spec.params;
        let base = ModelFacts {
            arch: true,
            name: spec_name(spec),
            origin: spec.origin(),
            root: Some(spec.ctor.name),
            ..ModelFacts::default()
        };
        match spec.ctor.name {
            "bert" => Some(ModelFacts {
                family: Some(Family::Bert),
                max_position: int(p, "max_position"),
                vocab_size: int(p, "vocab_size"),
                vocab_written: spec.differs_from_default("vocab_size"),
                ..base
            }),
            "vit" => Some(ModelFacts {
                family: Some(Family::Vit),
                image_size: int(p, "image_size"),
                channels: int(p, "channels"),
                ..base
            }),
            "pretrained" | "hf" => self.checkpoints.facts(spec).map(|f| ModelFacts {
                arch: false,
                name: if f.name.is_empty() { base.name } else { f.name },
                origin: if f.origin.is_empty() { base.origin } else { f.origin },
                root: base.root,
                ..f
            }),
            _ => None,
        }
    }

    /// The model a stage outputs: the model its training started from, with the classes of its
    /// data. Stages are created in dependency order, so the walk ends.
    fn stage(&mut self, id: StageId) -> Option<ModelFacts> {
        if let Some(f) = self.memo.0.get(&id) {
            return f.clone();
        }
        let facts = self.derive(id);
        self.memo.0.insert(id, facts.clone());
        facts
    }

    fn derive(&mut self, id: StageId) -> Option<ModelFacts> {
        let stage = self.stages.get(id.0 as usize)?;
        let (start, relabels) = match stage.op.name {
            "train" => ("model", true),
            "distill" | "fuse" => ("student", true),
            "qlora" => ("base", true),
            "prune" => ("model", false),
            _ => return None,
        };
        let from = stage.params.get(start).and_then(|v| self.model(v)).unwrap_or_default();
        let data = data_facts(stage.params.get("data"));
        let name = match from.origin.as_str() {
            "" => format!("`{}`", stage.name),
            origin => format!("`{}` (trained from {origin})", stage.name),
        };
        let mut f = ModelFacts {
            arch: false,
            name,
            ..from.clone()
        };
        if relabels {
            f.labels = data.as_ref().and_then(|d| d.classes);
        }
        if from.arch && from.family == Some(Family::Bert) {
            // Training sizes the embedding table to the tokenizer the data was read with.
            f.vocab_size = match data.map(|d| d.shape) {
                Some(Shape::Text { vocab, .. }) => vocab,
                _ => None,
            };
        }
        Some(f)
    }
}

/// One model argument of a stage: its value, where it is written, and how it is used.
struct Use<'a> {
    value: &'a Value,
    at: Span,
    role: Role,
}

/// The model arguments of a call of `op` and how each is used; empty for ops without data.
fn uses<'a>(op: &str, params: &'a Params, spans: &BTreeMap<String, Span>, call: Span) -> Vec<Use<'a>> {
    let roles: &[(&str, Role)] = match op {
        "train" => &[("model", Role::Start)],
        "distill" => &[("teacher", Role::Trained), ("student", Role::Start)],
        "fuse" => &[("teachers", Role::Trained), ("student", Role::Start)],
        "qlora" => &[("base", Role::Start)],
        "eval" | "predict" => &[("model", Role::Trained)],
        "report" => &[("models", Role::Trained), ("baseline", Role::Trained)],
        // Pruning reads data only to fine-tune.
        "prune" if params.contains_key("data") => &[("model", Role::Trained)],
        _ => &[],
    };
    let mut out = Vec::new();
    for (name, role) in roles {
        let at = spans.get(*name).copied().unwrap_or(call);
        match params.get(*name) {
            Some(Value::List(xs)) => out.extend(xs.iter().map(|value| Use { value, at, role: *role })),
            Some(value) => out.push(Use { value, at, role: *role }),
            None => {}
        }
    }
    out
}

/// The problems of one call of `op` whose models do not fit its data. `stages` are the stages
/// created so far (a stage argument's index into them); `checkpoints` tells what is known
/// about `pretrained(...)` and `hf(...)` models.
pub fn check_call(
    op: &OpSchema,
    params: &Params,
    spans: &BTreeMap<String, Span>,
    call: Span,
    stages: &[StageDef],
    memo: &mut Memo,
    checkpoints: &mut dyn Checkpoints,
) -> Vec<Diag> {
    let uses = uses(op.name, params, spans, call);
    if uses.is_empty() {
        return Vec::new();
    }
    let Some(data) = data_facts(params.get("data")) else {
        return Vec::new();
    };
    let data_at = spans.get("data").copied();
    let mut facts = Facts {
        stages,
        memo,
        checkpoints,
    };
    let mut diags: Vec<Diag> = Vec::new();
    for u in uses {
        let Some(model) = facts.model(u.value) else {
            continue;
        };
        for d in problems(&model, u.role, &data, u.at, data_at) {
            if !diags.iter().any(|x| x.message == d.message) {
                diags.push(d);
            }
        }
    }
    diags
}

/// Where the data is written, as a secondary label.
fn with_data(d: Diag, data_at: Option<Span>, label: String) -> Diag {
    match data_at {
        Some(s) => d.note(s, label),
        None => d,
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// How the help names a change to the model: a constructor argument, or what to train from.
fn change_model(model: &ModelFacts, ctor: &str, arg: &str) -> Option<String> {
    match (model.arch, model.root) {
        (true, _) => Some(format!("{ctor}({arg}, ..)")),
        (false, Some(r)) if r == ctor => Some(format!("a model trained from {ctor}({arg}, ..)")),
        _ => None,
    }
}

/// What is wrong with using `model` in `role` on `data`.
fn problems(model: &ModelFacts, role: Role, data: &DataFacts, at: Span, data_at: Option<Span>) -> Vec<Diag> {
    let mut out = Vec::new();
    let name = &model.name;
    let dname = &data.name;
    match (model.family, data.shape) {
        (Some(Family::Bert), Shape::Images { .. }) => {
            let d = Diag::new(
                Kind::Invalid,
                at,
                format!("{name} is a text model (BERT), but {dname} is an image dataset"),
            )
            .label("reads text")
            .help("use a vit(...) model with image data, or text data (synthetic_text, glue_sst2)");
            out.push(with_data(d, data_at, "gives images".into()));
            return out;
        }
        (Some(Family::Vit), Shape::Text { .. }) => {
            let d = Diag::new(
                Kind::Invalid,
                at,
                format!("{name} is an image model (ViT), but {dname} is a text dataset"),
            )
            .label("reads images")
            .help("use a bert(...) model with text data, or image data (synthetic_images, image_folder)");
            out.push(with_data(d, data_at, "gives text".into()));
            return out;
        }
        (Some(Family::Vit), Shape::Images { image_size }) => {
            let size = model.image_size.filter(|s| *s != image_size);
            let channels = model.channels.filter(|c| *c != DATA_CHANNELS);
            if size.is_some() || channels.is_some() {
                let want = model.image_size.unwrap_or(image_size);
                let message = match channels {
                    None => format!("{name} expects {want}×{want} images, but {dname} gives {image_size}×{image_size}"),
                    Some(c) => format!(
                        "{name} expects {want}×{want} images with {}, but {dname} gives {image_size}×{image_size} \
                         with {DATA_CHANNELS} (RGB)",
                        plural(c, "channel", "channels")
                    ),
                };
                let mut fixes = Vec::new();
                if let Some(s) = size {
                    fixes.push(format!("{}(image_size: {s}, ..)", data.ctor));
                    fixes.extend(change_model(model, "vit", &format!("image_size: {image_size}")));
                }
                if channels.is_some() {
                    fixes.extend(change_model(model, "vit", &format!("channels: {DATA_CHANNELS}")));
                }
                let help = match fixes.len() {
                    0 => "the model's input size is fixed: use data of its size".to_string(),
                    1 => format!("use {}", fixes[0]),
                    _ => format!(
                        "use {} or {}",
                        fixes[..fixes.len() - 1].join(", "),
                        fixes[fixes.len() - 1]
                    ),
                };
                let label = match channels {
                    None => format!("{want}×{want} images"),
                    Some(c) => format!("{want}×{want} images, {}", plural(c, "channel", "channels")),
                };
                let d = Diag::new(Kind::Invalid, at, message).label(label).help(help);
                out.push(with_data(d, data_at, format!("{image_size}×{image_size} images")));
            }
        }
        (Some(Family::Bert), Shape::Text { max_len, vocab }) => {
            if let Some(max_position) = model.max_position.filter(|m| max_len > *m) {
                let mut help = format!("use {}(max_len: {max_position}, ..)", data.ctor);
                if let Some(m) = change_model(model, "bert", &format!("max_position: {max_len}")) {
                    help = format!("{help} or {m}");
                }
                let d = Diag::new(
                    Kind::Invalid,
                    at,
                    format!("{dname} has max_len {max_len}, but {name} has {max_position} positions (max_position)"),
                )
                .label(format!("at most {max_position} tokens"))
                .help(help);
                out.push(with_data(d, data_at, format!("{max_len} tokens per example")));
            }
            // An architecture's embedding table is sized to the data: a size written on purpose
            // that the data contradicts would be changed behind the writer's back.
            if let (true, true, Some(v), Some(held)) = (model.arch, model.vocab_written, vocab, model.vocab_size) {
                if v != held {
                    let d = Diag::new(
                        Kind::Invalid,
                        at,
                        format!("{name} sets vocab_size {held}, but {dname} has a vocabulary of {v} tokens"),
                    )
                    .label(format!("{held} tokens"))
                    .help(format!(
                        "training sizes a model's embedding table to its data's tokenizer: write bert(vocab_size: {v}, ..) \
                         or leave vocab_size out"
                    ));
                    out.push(with_data(d, data_at, format!("{v} tokens")));
                }
            }
            // Trained weights keep the vocabulary they were trained with.
            if let (false, Some(v), Some(held)) = (model.arch, vocab, model.vocab_size) {
                if v > held {
                    let d = Diag::new(
                        Kind::Invalid,
                        at,
                        format!("{dname} has a vocabulary of {v} tokens, but {name} holds {held}"),
                    )
                    .label(format!("{held} tokens"))
                    .help(format!(
                        "use {}(vocab_size: {held}, ..), the vocabulary the model was trained with",
                        data.ctor
                    ));
                    out.push(with_data(d, data_at, format!("{v} tokens")));
                }
            }
        }
        (None, _) => {}
    }
    if let (Role::Trained, Some(labels), Some(classes)) = (role, model.labels, data.classes) {
        if labels != classes {
            let d = Diag::new(
                Kind::Invalid,
                at,
                format!(
                    "{name} has {}, but {dname} has {}",
                    plural(labels, "label", "labels"),
                    plural(classes, "class", "classes")
                ),
            )
            .label(plural(labels, "label", "labels"))
            .help(format!(
                "use data with the model's {}, or train a model on this dataset first",
                plural(labels, "class", "classes")
            ));
            out.push(with_data(d, data_at, plural(classes, "class", "classes")));
        }
    }
    out
}

impl Compiler {
    /// Whether the models of a checked call of the stage op `op` fit its data; reports the
    /// problems when they do not.
    pub(super) fn models_fit(
        &mut self,
        op: &'static OpSchema,
        params: &Params,
        spans: &BTreeMap<String, Span>,
        call: Span,
    ) -> bool {
        let problems = check_call(
            op,
            params,
            spans,
            call,
            &self.stages,
            &mut self.compat,
            &mut NoCheckpoints,
        );
        let fits = problems.is_empty();
        self.diags.extend(problems);
        fits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile_source, Compiled};

    fn compile(src: &str) -> Compiled {
        compile_source("p.rkd", std::path::Path::new("p.rkd"), src.to_string())
    }

    /// The messages and help lines of compiling `src`.
    fn problems(src: &str) -> Vec<(String, String)> {
        compile(src)
            .diags
            .into_iter()
            .map(|d| (d.message, d.help.unwrap_or_default()))
            .collect()
    }

    fn fits(src: &str) {
        let p = problems(src);
        assert!(p.is_empty(), "{p:?}");
    }

    const TINY_VIT: &str = "let v = vit(layers: 1, hidden: 16, heads: 2, patch: 4, image_size: 32)\n";
    const TINY_BERT: &str = "let b = bert(layers: 1, hidden: 16, heads: 2, intermediate: 32, max_position: 64)\n";

    #[test]
    fn image_size_is_checked_with_both_sizes_and_both_fixes() {
        let p =
            problems("use std::vit\nstage t = train(model: vit::l3, data: synthetic_images(seed: 1, classes: 3))\n");
        assert_eq!(
            p,
            [(
                "`vit::l3` expects 224×224 images, but `synthetic_images(...)` gives 32×32".to_string(),
                "use synthetic_images(image_size: 224, ..) or vit(image_size: 32, ..)".to_string()
            )]
        );
        fits("use std::vit\nstage t = train(model: vit::l3, data: synthetic_images(seed: 1, image_size: 224))\n");
        fits(&format!(
            "{TINY_VIT}stage t = train(model: v, data: image_folder(path: \"imgs\", image_size: 32))\n"
        ));
    }

    #[test]
    fn channels_are_checked() {
        let p = problems(
            "let v = vit(layers: 1, hidden: 16, heads: 2, patch: 4, image_size: 32, channels: 1)\n\
             stage t = train(model: v, data: synthetic_images(seed: 1))\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(
            p[0].0,
            "`v` expects 32×32 images with 1 channel, but `synthetic_images(...)` gives 32×32 with 3 (RGB)"
        );
        assert_eq!(p[0].1, "use vit(channels: 3, ..)");
    }

    #[test]
    fn a_text_model_on_images_and_an_image_model_on_text_are_refused() {
        let p = problems(&format!(
            "{TINY_BERT}{TINY_VIT}let imgs = synthetic_images(seed: 1)\nlet text = synthetic_text(seed: 1)\n\
             stage a = train(model: b, data: imgs)\nstage c = train(model: v, data: text)\n"
        ));
        let messages: Vec<&str> = p.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(
            messages,
            [
                "`b` is a text model (BERT), but `imgs` is an image dataset",
                "`v` is an image model (ViT), but `text` is a text dataset"
            ]
        );
    }

    #[test]
    fn max_len_is_checked_against_the_positions() {
        let p = problems(&format!(
            "{TINY_BERT}stage t = train(model: b, data: glue_sst2(path: \"sst2\", max_len: 128))\n"
        ));
        assert_eq!(
            p,
            [(
                "`glue_sst2(...)` has max_len 128, but `b` has 64 positions (max_position)".to_string(),
                "use glue_sst2(max_len: 64, ..) or bert(max_position: 128, ..)".to_string()
            )]
        );
        fits(&format!(
            "{TINY_BERT}stage t = train(model: b, data: glue_sst2(path: \"sst2\", max_len: 64))\n"
        ));
    }

    #[test]
    fn a_trained_stage_is_followed_back_to_its_architecture() {
        let p = problems(&format!(
            "{TINY_VIT}let d32 = synthetic_images(seed: 1, classes: 2)\n\
             let d64 = synthetic_images(seed: 1, classes: 2, image_size: 64)\n\
             stage t = train(model: v, data: d32)\nstage s = distill(teacher: t, student: v, data: d64)\n"
        ));
        // The student (an architecture) and the teacher (trained from one) both do not fit.
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(
            p[0].0,
            "`t` (trained from v) expects 32×32 images, but `d64` gives 64×64"
        );
        assert_eq!(
            p[0].1,
            "use synthetic_images(image_size: 32, ..) or a model trained from vit(image_size: 64, ..)"
        );
        assert_eq!(p[1].0, "`v` expects 32×32 images, but `d64` gives 64×64");
        // Through a chain: a distilled student keeps its own architecture.
        let p = problems(&format!(
            "{TINY_BERT}let big = bert(layers: 2, hidden: 16, heads: 2, intermediate: 32, max_position: 128)\n\
             let long = synthetic_text(seed: 1, max_len: 100)\n\
             stage t = train(model: big, data: long)\n\
             stage s = distill(teacher: t, student: big, data: long)\n\
             stage e = eval(model: s, data: long)\n\
             stage f = train(model: s, data: long)\n"
        ));
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn classes_matter_where_the_model_is_used_as_trained() {
        let src = format!(
            "{TINY_BERT}let three = synthetic_text(seed: 1, classes: 3)\nlet two = synthetic_text(seed: 1, classes: 2)\n\
             stage t = train(model: b, data: three)\n"
        );
        // Fine-tuning gets a new classifier; evaluating, teaching and pruning with data do not.
        fits(&format!(
            "{src}stage f = train(model: t, data: two)\nstage q = qlora(base: t, data: two)\n"
        ));
        fits(&format!(
            "{src}stage p = prune(model: t, sparsity: 0.5)\nstage e = eval(model: p, data: three)\n"
        ));
        for stage in [
            "stage e = eval(model: t, data: two)",
            "stage s = distill(teacher: t, student: b, data: two)",
            "stage p = prune(model: t, sparsity: 0.5, finetune_epochs: 1, data: two)",
            "stage r = report(models: [t], data: two)",
            "stage u = fuse(teachers: [t], student: b, data: two)",
        ] {
            let p = problems(&format!("{src}{stage}\n"));
            assert_eq!(
                p,
                [(
                    "`t` (trained from b) has 3 labels, but `two` has 2 classes".to_string(),
                    "use data with the model's 3 classes, or train a model on this dataset first".to_string()
                )],
                "{stage}"
            );
        }
        // A model fine-tuned on the two classes has two labels.
        fits(&format!(
            "{src}stage f = train(model: t, data: two)\nstage e = eval(model: f, data: two)\n"
        ));
        // SST-2 has two classes; an image folder's are unknown.
        fits(&format!(
            "{src}stage e = eval(model: t, data: synthetic_text(seed: 2, classes: 3))\n\
             stage g = train(model: b, data: glue_sst2(path: \"sst2\"))\nstage h = eval(model: g, data: two)\n"
        ));
        let p = problems(&format!(
            "{src}stage e = eval(model: t, data: glue_sst2(path: \"sst2\"))\n"
        ));
        assert_eq!(p.len(), 1, "{p:?}");
    }

    #[test]
    fn a_test_split_the_data_never_has_is_refused_before_running() {
        let sst2 = format!("{TINY_BERT}let d = glue_sst2(path: \"sst2\")\nstage t = train(model: b, data: d)\n");
        let p = problems(&format!("{sst2}stage e = eval(model: t, data: d, split: \"test\")\n"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].0
                .contains("`glue_sst2(...)` has no test split (GLUE hides the labels"),
            "{p:?}"
        );
        // Validation, or `auto`, compiles; so does test on data that has one.
        for split in ["validation", "auto"] {
            fits(&format!(
                "{sst2}stage e = eval(model: t, data: d, split: \"{split}\")\n"
            ));
        }
        let train = format!("{TINY_BERT}stage t = train(model: b, data: synthetic_text(seed: 1))\n");
        fits(&format!(
            "{train}stage r = report(models: [t], data: synthetic_text(seed: 1), split: \"test\")\n"
        ));
    }

    #[test]
    fn a_written_vocabulary_the_data_contradicts_is_refused() {
        let b = "let b = bert(layers: 1, hidden: 16, heads: 2, intermediate: 32, max_position: 64, vocab_size: 200)\n";
        assert_eq!(
            problems(&format!(
                "{b}stage t = train(model: b, data: synthetic_text(seed: 1, vocab_size: 1000))\n"
            )),
            [(
                "`b` sets vocab_size 200, but `synthetic_text(...)` has a vocabulary of 1000 tokens".to_string(),
                "training sizes a model's embedding table to its data's tokenizer: write bert(vocab_size: 1000, ..) \
                 or leave vocab_size out"
                    .to_string()
            )]
        );
        // The default (BERT's 30522) is resized without a word; an equal size is fine.
        fits(&format!(
            "{TINY_BERT}stage t = train(model: b, data: synthetic_text(seed: 1, vocab_size: 1000))\n"
        ));
        fits(&format!(
            "{}stage t = train(model: b, data: synthetic_text(seed: 1, vocab_size: 200))\n",
            b
        ));
    }

    #[test]
    fn vocabulary_is_checked_where_both_sides_know_it() {
        let src = format!("{TINY_BERT}stage t = train(model: b, data: synthetic_text(seed: 1, vocab_size: 500))\n");
        // An architecture is sized to the data's vocabulary (b says 30522).
        fits(&src);
        let p = problems(&format!(
            "{src}stage e = eval(model: t, data: synthetic_text(seed: 1, vocab_size: 900))\n"
        ));
        assert_eq!(
            p,
            [(
                "`synthetic_text(...)` has a vocabulary of 900 tokens, but `t` (trained from b) holds 500".to_string(),
                "use synthetic_text(vocab_size: 500, ..), the vocabulary the model was trained with".to_string()
            )]
        );
        // A smaller vocabulary fits; SST-2 is read with the model's own tokenizer.
        fits(&format!(
            "{src}stage e = eval(model: t, data: synthetic_text(seed: 1, vocab_size: 400))\n\
             stage f = eval(model: t, data: glue_sst2(path: \"sst2\"))\n"
        ));
    }

    #[test]
    fn checkpoints_are_unknown_to_the_compiler_but_their_stages_labels_are_not() {
        let src = "let three = synthetic_images(seed: 1, classes: 3)\n\
                   stage t = train(model: pretrained(path: \"ckpt\"), data: three)\n\
                   stage u = train(model: hf(repo: \"a/b\"), data: synthetic_text(seed: 1, max_len: 512))\n";
        fits(src);
        let p = problems(&format!(
            "{src}stage e = eval(model: t, data: synthetic_images(seed: 1, classes: 2))\n"
        ));
        assert_eq!(p[0].0, "`t` has 3 labels, but `synthetic_images(...)` has 2 classes");
    }

    #[test]
    fn a_stage_that_does_not_fit_is_reported_once() {
        let p = problems(
            "use std::vit\nlet d = synthetic_images(seed: 1)\nstage t = train(model: vit::l3, data: d)\n\
             stage e = eval(model: t, data: d)\nsweep s in [1, 2] {\n  stage u = train(model: vit::l3, data: d, seed: s)\n}\n",
        );
        assert_eq!(p.len(), 2, "`t`, and the sweep's stages once: {p:?}");
    }

    /// Knows one checkpoint: a BERT of 16 positions and 2 labels.
    struct OneCheckpoint;

    impl Checkpoints for OneCheckpoint {
        fn facts(&mut self, spec: &Spec) -> Option<ModelFacts> {
            (spec.ctor.name == "pretrained").then(|| ModelFacts {
                family: Some(Family::Bert),
                max_position: Some(16),
                vocab_size: Some(100),
                labels: Some(2),
                ..ModelFacts::default()
            })
        }
    }

    #[test]
    fn what_a_checkpoint_tells_is_checked_like_an_architecture() {
        let c = compile(
            "let d = synthetic_text(seed: 1, max_len: 32, vocab_size: 200)\nlet m = pretrained(path: \"ckpt\")\n\
             stage t = train(model: m, data: d)\nstage e = eval(model: t, data: synthetic_images(seed: 1, classes: 2))\n",
        );
        assert!(c.diags.is_empty(), "{:?}", c.diags);
        let mut memo = Memo::default();
        let mut found = Vec::new();
        for s in &c.stages {
            let diags = check_call(
                s.op,
                &s.params,
                &s.arg_spans,
                s.span,
                &c.stages,
                &mut memo,
                &mut OneCheckpoint,
            );
            found.extend(diags.into_iter().map(|d| d.message));
        }
        assert_eq!(
            found,
            [
                "`d` has max_len 32, but `m` has 16 positions (max_position)",
                "`d` has a vocabulary of 200 tokens, but `m` holds 100",
                "`t` (trained from m) is a text model (BERT), but `synthetic_images(...)` is an image dataset",
            ]
        );
    }
}

//! `predict`: a trained model's logits on every example of the training split, stored once so
//! that every student distilled from it reads them instead of running it again.
//!
//! Writes `predictions.safetensors` (`logits`: f32 `[examples, classes]`, `labels`: u32
//! `[examples]`, in the split's order) and `predictions.json` (the model, the classes, the
//! number of examples, the model's accuracy on them). The model reads the dataset with its own
//! tokenizer; students may tokenise differently, because they look the logits up by example.

use std::io::Write;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::model_source::{self, load_frozen};
use super::train::load_for;
use super::{OpContext, OpError, OpOutput};
use crate::data::{Dataset, SplitName};
use crate::ml::ForwardCtx;
use crate::registry::PredictArgs;

/// The predictions file in a `predict` stage's output.
pub const FILE: &str = "predictions.safetensors";

/// Runs a `predict` stage.
pub fn run(ctx: &mut OpContext) -> Result<OpOutput, OpError> {
    let args = PredictArgs::from_params(ctx.params)?;
    let batch_size = args.batch_size.max(1);
    let device = ctx.device.clone();
    ctx.progress.message("loading the model and data");
    let source = model_source::resolve(ctx, &args.model)?;
    let dataset = load_for(ctx, &args.data, &source)?;
    let frozen = load_frozen(&source, "predict", &device, false)?;
    model_source::check_fits(&frozen.loaded.config, &dataset, true)?;
    if !frozen.loaded.missing.is_empty() {
        return Err(OpError::Failed(format!(
            "{} lacks {:?}: a teacher with random weights has nothing to teach",
            frozen.what, frozen.loaded.missing
        )));
    }
    let n = dataset.len(SplitName::Train);
    if n == 0 {
        return Err(OpError::Failed(String::from(
            "the training split of the dataset is empty",
        )));
    }
    let classes = dataset.classes.len();
    // Length buckets: each batch is padded only to its own longest sentence.
    let batches = dataset.inference_batches(SplitName::Train, batch_size, &device)?;
    let labels = dataset.labels(SplitName::Train);
    let mut logits = vec![0f32; n * classes];
    let mut correct = 0usize;
    for (i, b) in batches.iter().enumerate() {
        if ctx.cancel.is_interrupted() {
            return Err(OpError::Interrupted);
        }
        let out = frozen
            .loaded
            .model
            .forward(&b.input, &mut ForwardCtx::eval().logits_only())
            .and_then(|o| o.logits.to_dtype(DType::F32)?.to_vec2::<f32>())?;
        for (row, &ex) in out.iter().zip(&b.indices) {
            logits[ex * classes..(ex + 1) * classes].copy_from_slice(row);
            if argmax(row) == labels[ex] as usize {
                correct += 1;
            }
        }
        ctx.progress.steps("batch", i as u64 + 1, batches.len() as u64);
    }
    // How well the teacher fits the training split: accuracy, or a regression's Pearson.
    let quality = dataset.score_name();
    let score = if dataset.is_regression() {
        let outputs: Vec<f64> = logits.iter().map(|&x| f64::from(x)).collect();
        let targets: Vec<f64> = dataset
            .targets(SplitName::Train)
            .iter()
            .map(|&x| f64::from(x))
            .collect();
        crate::ml::training::regression::pearson(&outputs, &targets)
    } else {
        correct as f64 / n as f64
    };
    let what = match dataset.is_regression() {
        true => "outputs (a regression)".to_string(),
        false => format!("{classes} classes"),
    };
    let _ = writeln!(
        ctx.log,
        "{}: logits for {n} training examples, {what}; on them {}",
        frozen.what,
        super::train::score_text(&dataset, score)
    );
    let tensors = [
        ("logits", Tensor::from_vec(logits, (n, classes), &device)?),
        ("labels", Tensor::from_slice(labels, n, &device)?),
    ];
    let path = ctx.out_dir.join(FILE);
    candle_core::safetensors::save(&tensors.into_iter().collect(), &path)
        .map_err(|e| OpError::Failed(format!("{}: {e}", path.display())))?;
    let meta = serde_json::json!({
        "model": frozen.what,
        "classes": dataset.classes,
        "examples": n,
        quality: score,
    });
    let meta_path = ctx.out_dir.join("predictions.json");
    std::fs::write(&meta_path, serde_json::to_vec_pretty(&meta).unwrap_or_default())
        .map_err(|e| OpError::Failed(format!("{}: {e}", meta_path.display())))?;
    let mut out = OpOutput::default();
    out.metrics.insert(quality.into(), score);
    out.metrics.insert("examples".into(), n as f64);
    Ok(out)
}

/// The index of the largest value (the first on ties).
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) },
        )
        .0
}

/// Stored predictions, checked against the dataset a student trains on.
pub struct Predictions {
    /// Logits, row-major `[examples, classes]`.
    pub logits: Vec<f32>,
    /// Number of classes.
    pub classes: usize,
}

impl Predictions {
    /// Reads a `predict` stage's output and checks that it describes `data`'s training split:
    /// the same number of examples, classes and labels, in the same order.
    pub fn load(dir: &Path, data: &Dataset) -> Result<Self, OpError> {
        let path = dir.join(FILE);
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| OpError::Failed(format!("{}: {e}", path.display())))?;
        let get = |name: &str| {
            tensors
                .get(name)
                .ok_or_else(|| OpError::Failed(format!("{}: no `{name}` tensor", path.display())))
        };
        let (n, classes) = get("logits")?.dims2()?;
        let labels = get("labels")?.to_vec1::<u32>()?;
        if n != data.len(SplitName::Train) || classes != data.classes.len() || labels != data.labels(SplitName::Train) {
            return Err(OpError::Failed(format!(
                "{}: the stored predictions ({n} examples, {classes} classes) do not match the training split \
                 ({} examples, {} classes) or its labels",
                path.display(),
                data.len(SplitName::Train),
                data.classes.len()
            )));
        }
        let logits = get("logits")?.flatten_all().and_then(|t| t.to_vec1::<f32>())?;
        Ok(Self { logits, classes })
    }

    /// The logits of one example.
    pub fn row(&self, example: usize) -> &[f32] {
        &self.logits[example * self.classes..(example + 1) * self.classes]
    }
}

//! Upper bounds of the size-like parameters (sizes, dimensions, vocabularies, lengths, counts):
//! far above any real experiment, and low enough that nothing sized by them overflows or asks
//! for an absurd allocation. `rkd check` refuses a value above them with an `rkd::range` error.

use super::schema::ArgProblem;
use crate::value::{Params, Value};

/// Examples in one split of a generated data set.
pub const MAX_EXAMPLES: f64 = 10_000_000.0;
/// A model's feed-forward size.
pub const MAX_INTERMEDIATE: f64 = 65_536.0;
/// A model's vocabulary.
pub const MAX_VOCAB: f64 = 1_000_000.0;
/// A model's longest sequence (position embeddings).
pub const MAX_POSITIONS: f64 = 65_536.0;
/// Epochs of one training stage.
pub const MAX_EPOCHS: f64 = 100_000.0;
/// Examples in one batch.
pub const MAX_BATCH: f64 = 1_048_576.0;
/// Optimiser steps of one training stage (and the checkpoint interval).
pub const MAX_OPTIMISER_STEPS: f64 = 1e12;
/// Retries of one stage.
pub const MAX_RETRIES: f64 = 1_000.0;
/// A LoRA rank (at most the largest hidden size).
pub const MAX_RANK: f64 = 8_192.0;
/// Bytes a generated data set (`synthetic_text`, `synthetic_images`) may hold in memory.
pub const MAX_GENERATED_BYTES: u64 = 16 << 30;

/// Parameters of a model built from scratch (`bert`, `vit`): 10 billion, 40 GB of f32 weights
/// before gradients and optimiser state.
pub const MAX_MODEL_PARAMS: u64 = 10_000_000_000;

/// The parameter count of an encoder of `layers` layers of `hidden` × `intermediate`, whose
/// embeddings (and patch projection) hold `embedding_rows` vectors of `hidden`: close to the
/// exact count (the biases and norms are a rounding error), never overflowing.
pub fn encoder_params(layers: u64, hidden: u64, intermediate: u64, embedding_rows: u64) -> u64 {
    let per_layer = hidden
        .saturating_mul(hidden)
        .saturating_mul(4)
        .saturating_add(hidden.saturating_mul(intermediate).saturating_mul(2))
        .saturating_add(hidden.saturating_mul(9))
        .saturating_add(intermediate);
    per_layer
        .saturating_mul(layers)
        .saturating_add(embedding_rows.saturating_mul(hidden))
}

/// `bert` and `vit`: the model fits in [`MAX_MODEL_PARAMS`]; `embedding_rows` as for
/// [`encoder_params`].
pub fn check_model_size(params: &Params, embedding_rows: u64) -> Vec<ArgProblem> {
    let (layers, hidden) = (size(params, "layers"), size(params, "hidden"));
    let count = encoder_params(layers, hidden, size(params, "intermediate"), embedding_rows);
    if count <= MAX_MODEL_PARAMS {
        return Vec::new();
    }
    vec![(
        "hidden",
        format!(
            "this model would have about {:.1} billion parameters ({} GB of f32 weights before gradients \
             and optimiser state), over the limit of {} billion: use fewer layers or a smaller hidden, \
             intermediate or vocabulary size",
            count as f64 / 1e9,
            count.saturating_mul(4) / 1_000_000_000,
            MAX_MODEL_PARAMS / 1_000_000_000
        ),
    )]
}

/// A size argument as `u64` (0 when missing, negative or not an integer: other checks report those).
pub fn size(params: &Params, name: &str) -> u64 {
    match params.get(name) {
        Some(Value::Int(i)) => u64::try_from(*i).unwrap_or(0),
        _ => 0,
    }
}

/// Bytes of memory a generated data set of `examples` items of `per_example` bytes takes.
pub fn generated_bytes(examples: u64, per_example: u64) -> u64 {
    examples.saturating_mul(per_example)
}

/// The examples of a generated data set whose splits have these sizes, and whether they take
/// more than [`MAX_GENERATED_BYTES`] at `per_example` bytes each.
pub fn generated_over_limit(splits: [u64; 3], per_example: u64) -> (u64, bool) {
    let examples = splits.into_iter().fold(0u64, u64::saturating_add);
    (examples, generated_bytes(examples, per_example) > MAX_GENERATED_BYTES)
}

/// An estimate of one generated text example: its token ids, its text ("w123 " per token) and
/// the vectors' headers.
pub fn text_example_bytes(max_len: u64) -> u64 {
    max_len.saturating_mul(4 + 8).saturating_add(96)
}

/// One generated image: its RGB bytes and the vector's header.
pub fn image_example_bytes(side: u64) -> u64 {
    side.saturating_mul(side).saturating_mul(3).saturating_add(24)
}

/// "16 GiB": the generated-data limit as written in messages.
pub fn generated_limit() -> String {
    format!("{} GiB", MAX_GENERATED_BYTES >> 30)
}

/// The problem with a generated data set over [`MAX_GENERATED_BYTES`], if it is.
fn over_budget(params: &Params, per_example: u64, what: &str) -> Vec<ArgProblem> {
    let splits = ["train_size", "val_size", "test_size"].map(|n| size(params, n));
    let (examples, over) = generated_over_limit(splits, per_example);
    if !over {
        return Vec::new();
    }
    let bytes = generated_bytes(examples, per_example);
    vec![(
        "train_size",
        format!(
            "{examples} {what} would take about {} GiB of memory, over the limit of {} for a generated data set: use fewer examples{}",
            bytes >> 30,
            generated_limit(),
            if what == "images" { " or a smaller image_size" } else { " or a shorter max_len" }
        ),
    )]
}

/// `synthetic_text`: its splits together fit in [`MAX_GENERATED_BYTES`].
pub fn check_synthetic_text(params: &Params) -> Vec<ArgProblem> {
    over_budget(params, text_example_bytes(size(params, "max_len")), "examples")
}

/// `synthetic_images`: its splits together fit in [`MAX_GENERATED_BYTES`].
pub fn check_synthetic_images(params: &Params) -> Vec<ArgProblem> {
    over_budget(params, image_example_bytes(size(params, "image_size")), "images")
}

//! Trainable transformer classifiers on candle: BERT for sequence classification and ViT for
//! image classification, with Hugging Face tensor names and config.json layout.
//!
//! candle-transformers' BERT and ViT are inference-only (fused LayerNorm and softmax without
//! backward, no dropout, no per-layer outputs, no BERT head), so the models here are built
//! from [`layers`](models::layers) that are differentiable end to end. Variables live in a
//! [`ParamStore`] (a `candle_nn::VarMap` with a seeded, per-variable initialiser), so the same
//! seed gives bit-identical initial weights and every trainable variable is enumerable.
//!
//! The parts, each importing only the ones above it in this list:
//!
//! ```text
//!   checkpoint.rs          load/save model directories (HF layout, NF4 weights, LoRA adapters)
//!   inference.rs           load one for inference: shared tensors, NF4 weights kept 4-bit
//!        │
//!   compress/   training/  make models smaller │ train and evaluate them
//!        │         │
//!   models/                configs, parameters, layers, BERT, ViT, the linear-layer catalog
//!        │
//!   kernels/               fused CPU ops, matrix products, random numbers, runtime settings
//! ```
//!
//! `tests/layers.rs` fails on an import cycle between files and on an import that points up
//! this list. The old flat paths (`crate::ml::bert`, `crate::ml::train`, …) remain as
//! re-exports below, so code outside `ml` may use either.

pub mod checkpoint;
pub mod compress;
pub mod inference;
pub mod kernels;
pub mod models;
pub mod training;

#[cfg(test)]
pub(crate) mod testutil;

// The flat module paths used before the split into folders.
pub use compress::{lora, nf4, prune, sizes};
pub use kernels::{fused, fused_attention, fused_linear, rng, runtime};
pub use models::{attention, bert, config, layers, model, output, params, vit};
pub use training::{distill, metrics, optim, resume, schedule, student, train};

pub use checkpoint::{load_pretrained, save_pretrained, CheckpointError, LoadOptions};
pub use kernels::device::{DeviceChoice, DeviceError};
pub use kernels::rng::Rng;
pub use models::bert::BertForSequenceClassification;
pub use models::config::{BertConfig, HiddenAct, Labels, ModelConfig, VitConfig};
pub use models::config_error::ConfigError;
pub use models::layers::ForwardCtx;
pub use models::model::{Model, ModelInput, Pretrained};
pub use models::output::ModelOutput;
pub use models::params::{LoadReport, ParamStore};
pub use models::vit::VitForImageClassification;

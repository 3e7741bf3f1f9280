//! Trainable transformer classifiers on candle: BERT for sequence classification and ViT for
//! image classification, with Hugging Face tensor names and config.json layout.
//!
//! candle-transformers' BERT and ViT are inference-only (fused LayerNorm and softmax without
//! backward, no dropout, no per-layer outputs, no BERT head), so the models here are built
//! from [`layers`] that are differentiable end to end. Variables live in a [`ParamStore`]
//! (a `candle_nn::VarMap` with a seeded, per-variable initialiser), so the same seed gives
//! bit-identical initial weights and every trainable variable is enumerable.

pub mod attention;
pub mod bert;
pub mod checkpoint;
pub mod config;
pub mod distill;
pub mod fused;
pub mod fused_attention;
pub mod fused_linear;
pub(crate) mod gemm;
pub mod layers;
pub mod lora;
pub mod metrics;
pub mod model;
pub mod nf4;
pub mod optim;
pub mod output;
pub mod params;
pub mod prune;
pub mod rng;
pub mod runtime;
pub mod schedule;
pub mod sizes;
pub mod student;
pub mod train;
pub mod vit;

pub use bert::BertForSequenceClassification;
pub use checkpoint::{load_pretrained, save_pretrained, CheckpointError, LoadOptions, Pretrained};
pub use config::{BertConfig, HiddenAct, Labels, ModelConfig, VitConfig};
pub use layers::ForwardCtx;
pub use model::{Model, ModelInput};
pub use output::ModelOutput;
pub use params::{LoadReport, ParamStore};
pub use rng::Rng;
pub use vit::VitForImageClassification;

#[cfg(test)]
pub(crate) mod testutil;

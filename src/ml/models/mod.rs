//! Trainable BERT and ViT classifiers: configs, the parameter store, layers, the two model
//! families, the [`Model`] that holds either, and the catalog of a model's linear layers.
//! Builds on [`super::kernels`] only.

/// Multi-head self-attention (query/key/value) shared by BERT and ViT.
pub mod attention;
/// BERT for sequence classification.
pub mod bert;
/// Model configurations in the Hugging Face `config.json` layout.
pub mod config;
/// Why a `config.json` cannot be used.
pub mod config_error;
/// Trainable building blocks (Linear with an optional LoRA branch, LayerNorm, Dropout, …).
pub mod layers;
/// The one catalog of a model's linear layers: names, roles, and mutable access.
pub mod linears;
/// One type for either family ([`Model`]), its input, and a model with its variables ([`Pretrained`]).
pub mod model;
/// What a classifier's forward pass returns (logits, hidden states, attention maps).
pub mod output;
/// The parameter store: every trainable variable of a model, by Hugging Face name.
pub mod params;
/// ViT for image classification.
pub mod vit;

pub use model::{Model, ModelInput, Pretrained};

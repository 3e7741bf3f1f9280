//! One type for either model family, so callers can train and evaluate without matching.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::bert::BertForSequenceClassification;
use super::config::ModelConfig;
use super::layers::ForwardCtx;
use super::output::ModelOutput;
use super::params::{LoadReport, ParamStore};
use super::vit::VitForImageClassification;

/// A batch of model inputs.
#[derive(Debug, Clone)]
pub enum ModelInput {
    /// Token ids `[batch, seq]`, optional token types and 0/1 attention mask of the same shape.
    Text {
        /// Token ids (u32 or i64).
        input_ids: Tensor,
        /// Segment ids (default zeros).
        token_type_ids: Option<Tensor>,
        /// 1 = attend, 0 = padding (default all ones).
        attention_mask: Option<Tensor>,
    },
    /// Normalised pixels `[batch, channels, height, width]`.
    Images {
        /// Pixel values (f32).
        pixel_values: Tensor,
    },
}

/// A sequence or image classifier.
#[derive(Debug, Clone)]
pub enum Model {
    /// BERT for sequence classification.
    Bert(BertForSequenceClassification),
    /// ViT for image classification.
    Vit(VitForImageClassification),
}

impl Model {
    /// Builds the model described by `config`, taking or creating its variables through `vb`.
    pub fn new(config: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Ok(match config {
            ModelConfig::Bert(c) => Model::Bert(BertForSequenceClassification::new(c, vb)?),
            ModelConfig::Vit(c) => Model::Vit(VitForImageClassification::new(c, vb)?),
        })
    }

    /// Runs the model; the input kind must match the family.
    pub fn forward(&self, input: &ModelInput, ctx: &mut ForwardCtx) -> Result<ModelOutput> {
        match (self, input) {
            (
                Model::Bert(m),
                ModelInput::Text {
                    input_ids,
                    token_type_ids,
                    attention_mask,
                },
            ) => m.forward(input_ids, token_type_ids.as_ref(), attention_mask.as_ref(), ctx),
            (Model::Vit(m), ModelInput::Images { pixel_values }) => m.forward(pixel_values, ctx),
            (Model::Bert(_), ModelInput::Images { .. }) => {
                candle_core::bail!("a BERT model takes token ids, not images")
            }
            (Model::Vit(_), ModelInput::Text { .. }) => candle_core::bail!("a ViT model takes images, not token ids"),
        }
    }

    /// The configuration (HF layout).
    pub fn config(&self) -> ModelConfig {
        match self {
            Model::Bert(m) => ModelConfig::Bert(m.config.clone()),
            Model::Vit(m) => ModelConfig::Vit(m.config.clone()),
        }
    }

    /// Number of classes.
    pub fn num_labels(&self) -> usize {
        match self {
            Model::Bert(m) => m.num_labels(),
            Model::Vit(m) => m.num_labels(),
        }
    }

    /// Number of encoder layers.
    pub fn num_layers(&self) -> usize {
        match self {
            Model::Bert(m) => m.layers.len(),
            Model::Vit(m) => m.layers.len(),
        }
    }
}

/// A built model together with its variables and provenance (loaded and saved by
/// [`crate::ml::checkpoint`]).
#[derive(Debug, Clone)]
pub struct Pretrained {
    /// The model.
    pub model: Model,
    /// Its variables (trainable, by HF name).
    pub params: ParamStore,
    /// Which variables were loaded, which initialised, which checkpoint tensors went unused.
    pub report: LoadReport,
}

impl Pretrained {
    /// A freshly initialised model from `config`, every variable drawn from `seed`.
    pub fn random(config: &ModelConfig, seed: u64, device: &Device) -> candle_core::Result<Self> {
        let params = ParamStore::new(seed);
        let model = Model::new(config, params.var_builder(DType::F32, device))?;
        let report = params.report();
        Ok(Self { model, params, report })
    }
}

//! One type for either model family, so callers can train and evaluate without matching.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::bert::BertForSequenceClassification;
use super::config::ModelConfig;
use super::layers::ForwardCtx;
use super::output::ModelOutput;
use super::params::{LoadReport, ParamStore};
use super::vit::VitForImageClassification;
use crate::ml::kernels::memory_ledger;

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

impl ModelInput {
    /// The input with `f` applied to each of its tensors (move to a device, take some rows).
    pub fn map(&self, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> candle_core::Result<ModelInput> {
        Ok(match self {
            ModelInput::Text {
                input_ids,
                token_type_ids,
                attention_mask,
            } => ModelInput::Text {
                input_ids: f(input_ids)?,
                token_type_ids: token_type_ids.as_ref().map(&f).transpose()?,
                attention_mask: attention_mask.as_ref().map(&f).transpose()?,
            },
            ModelInput::Images { pixel_values } => ModelInput::Images {
                pixel_values: f(pixel_values)?,
            },
        })
    }
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
        Self::build(config, ParamStore::new(seed), DType::F32, device)
    }

    /// `config`'s model on new variables of `params` (each copied from its source or
    /// initialised), whose source is released afterwards. On the CPU, weights that cannot fit in
    /// the memory left are an error before any is allocated.
    pub fn build(config: &ModelConfig, params: ParamStore, dtype: DType, device: &Device) -> Result<Self> {
        // Reserved until the weights are made (then the system counts them).
        let _weights = match device.is_cpu() {
            true => {
                let bytes = config.min_weight_count().saturating_mul(dtype.size_in_bytes() as u64);
                Some(
                    memory_ledger::reserve(bytes, "this model's weights", "use a smaller model")
                        .map_err(candle_core::Error::Msg)?,
                )
            }
            false => None,
        };
        let model = Model::new(config, params.var_builder(dtype, device))?;
        let report = params.report();
        params.release_source();
        Ok(Self { model, params, report })
    }
}

#[cfg(test)]
mod device_generic_tests {
    use super::*;
    use crate::ml::kernels::fused::device_generic;
    use crate::ml::testutil::{image_batch, max_abs_diff, rel_err, targets, text_input, tiny_bert, tiny_vit};

    /// Loss and every gradient of one training step (dropout on, seed 7).
    fn step(p: &Pretrained, input: &ModelInput, labels: &Tensor) -> (Tensor, Vec<(String, Tensor)>) {
        crate::ml::training::step_grads::step_grads(&p.model, &p.params, input, labels, 7).unwrap()
    }

    /// The fused CPU kernels and the device-generic path (what a GPU runs) give the same loss and
    /// gradients, within a relative error of 1e-4, on a BERT and a ViT with dropout on.
    #[test]
    fn the_device_generic_path_agrees_with_the_fused_cpu_kernels() {
        let cases = [
            (ModelConfig::Bert(tiny_bert(3)), text_input(), targets(3, 3, 5)),
            (
                ModelConfig::Vit(tiny_vit(4)),
                ModelInput::Images {
                    pixel_values: image_batch(3, 3, 8, 6),
                },
                targets(3, 4, 6),
            ),
        ];
        for (what, (config, input, labels)) in ["bert", "vit"].into_iter().zip(cases) {
            let p = Pretrained::random(&config, 11, &Device::Cpu).unwrap();
            let (fused_loss, fused_grads) = step(&p, &input, &labels);
            let (generic_loss, generic_grads) = device_generic(|| step(&p, &input, &labels));
            let e = rel_err(&generic_loss, &fused_loss);
            assert!(e <= 1e-4, "{what}: loss differs by {e:e}");
            for ((name, f), (_, g)) in fused_grads.iter().zip(&generic_grads) {
                // A key bias shifts every score of a row alike, which softmax ignores: its gradient
                // is zero up to rounding on both paths, where a relative error means nothing.
                let scale = max_abs_diff(f, &f.zeros_like().unwrap());
                if scale < 1e-6 {
                    assert!(
                        max_abs_diff(g, f) < 1e-5,
                        "{what}: gradient of {name} is not zero on both paths"
                    );
                    continue;
                }
                let e = rel_err(g, f);
                assert!(e <= 1e-4, "{what}: gradient of {name} differs by {e:e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::{BertConfig, VitConfig};

    fn weights(config: &ModelConfig) -> u64 {
        let params = ParamStore::new(1);
        Model::new(config, params.var_builder(DType::F32, &Device::Cpu)).unwrap();
        params.named_vars().iter().map(|(_, v)| v.elem_count() as u64).sum()
    }

    #[test]
    fn the_weight_estimate_is_a_close_lower_bound() {
        let mut pruned = ModelConfig::Bert(BertConfig::new(30522, 256, 4, 4, 1024, 2));
        pruned.pruned_heads_mut().insert(1, [0, 2].into());
        for config in [
            ModelConfig::Bert(BertConfig::new(30522, 256, 4, 4, 1024, 2)),
            pruned,
            ModelConfig::Vit(VitConfig::new(224, 16, 3, 192, 6, 3, 768, 3)),
        ] {
            let (estimate, real) = (config.min_weight_count(), weights(&config));
            assert!(
                estimate <= real && estimate as f64 >= 0.97 * real as f64,
                "{estimate} of {real}"
            );
        }
    }

    #[test]
    fn new_weights_too_large_for_the_memory_left_are_an_error_before_allocating() {
        use crate::ml::kernels::host_memory;
        if host_memory::available_bytes().is_none() || std::env::var_os(host_memory::SKIP_VAR).is_some() {
            crate::say!("no memory figure here: nothing to test");
            return;
        }
        // About 4 × 10¹² weights: no machine has the 16 TB.
        let huge = ModelConfig::Bert(BertConfig::new(1000, 65_536, 1000, 64, 65_536, 2));
        let err = Pretrained::random(&huge, 1, &Device::Cpu).unwrap_err();
        assert!(
            err.to_string().contains("this model's weights would take at least"),
            "{err}"
        );
    }
}

//! A batch whose activations cannot fit in memory is a clear error before its forward pass,
//! instead of the kernel's out-of-memory kill in the middle of a step (which ends the process
//! with no message, often after the model and data took minutes to load).
//!
//! Before each batch larger than any before it, a lower bound of the values the step keeps for
//! its backward pass ([`ModelConfig::min_activation_count`]) is checked against the memory the
//! process has left ([`host_memory`]). Only what the larger batch adds counts: the memory the
//! earlier batches' activations took is the process's to reuse. Before the first batch the
//! optimizer's two moments count too: they are allocated as untouched zero pages, which the
//! system does not count as used until the first update writes them.
//!
//! It applies when every weight of the model trains on the CPU (`train`, `distill`, `fuse`,
//! `prune`'s fine-tuning): with frozen layers (QLoRA) much less is kept, and GPU memory is not
//! the host's.

use candle_core::Device;

use crate::ml::kernels::host_memory;
use crate::ml::models::config::ModelConfig;
use crate::ml::models::model::{Model, ModelInput};
use crate::ml::models::params::ParamStore;
use crate::ml::training::train::Precision;

/// Checks each new largest batch of a training run against the memory left.
#[derive(Debug)]
pub struct ActivationCheck {
    /// The model's configuration; `None` when the check does not apply.
    config: Option<ModelConfig>,
    /// Bytes of one kept value (2 under bf16/f16: a lower bound whatever each kernel keeps).
    value_bytes: u64,
    /// The optimizer moments' bytes, still to be written at the first update.
    moments: u64,
    /// The activation bytes of the largest batch checked so far.
    largest: u64,
}

impl ActivationCheck {
    /// The check for `model` training `params` in `precision` on `device`.
    pub fn new(model: &Model, params: &ParamStore, precision: Precision, device: &Device) -> Self {
        let config = model.config();
        let trainable: u64 = params.named_vars().iter().map(|(_, v)| v.elem_count() as u64).sum();
        let applies = device.is_cpu() && trainable >= config.min_weight_count();
        Self {
            config: applies.then_some(config),
            value_bytes: precision.dtype().size_in_bytes() as u64,
            moments: trainable.saturating_mul(2 * 4),
            largest: 0,
        }
    }

    /// `Err` with the figures and a hint when the batch of `input` needs more memory than is left.
    pub fn before(&mut self, input: &ModelInput) -> candle_core::Result<()> {
        let Some(config) = &self.config else {
            return Ok(());
        };
        let (batch, positions) = match input {
            ModelInput::Text { input_ids, .. } => input_ids.dims2()?,
            ModelInput::Images { pixel_values } => {
                let (b, _, h, w) = pixel_values.dims4()?;
                (b, config.image_positions(h, w).unwrap_or(0))
            }
        };
        self.shape(batch, positions)
    }

    /// [`ActivationCheck::before`] for a batch of `batch` examples of `positions` positions.
    fn shape(&mut self, batch: usize, positions: usize) -> candle_core::Result<()> {
        let Some(config) = &self.config else {
            return Ok(());
        };
        let bytes = config
            .min_activation_count(batch, positions)
            .saturating_mul(self.value_bytes);
        if bytes <= self.largest {
            return Ok(());
        }
        let mut needed = bytes - self.largest;
        let mut what = format!("the activations of a training batch of {batch} examples × {positions} positions");
        if self.largest == 0 {
            needed = needed.saturating_add(self.moments);
            what.push_str(" with the optimiser's moments");
        }
        host_memory::ensure_fits(
            needed,
            &what,
            "use a smaller `batch_size` (or shorter sequences, `max_len`)",
        )
        .map_err(candle_core::Error::Msg)?;
        self.largest = bytes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::models::model::Pretrained;
    use crate::ml::{BertConfig, VitConfig};
    use candle_core::{DType, Tensor};

    fn ids(batch: usize, seq: usize) -> ModelInput {
        ModelInput::Text {
            input_ids: Tensor::zeros((batch, seq), DType::U32, &Device::Cpu).unwrap(),
            token_type_ids: None,
            attention_mask: None,
        }
    }

    #[test]
    fn the_activation_estimate_counts_probabilities_and_linear_inputs() {
        let bert = ModelConfig::Bert(BertConfig::new(100, 64, 2, 4, 256, 2));
        // Per example, first layer: 4 heads × 10² probabilities + 10 positions × (6 × 64 + 2 ×
        // 256); last layer: 4 × 10 probabilities + 10 × 3 × 64 + 1 × (3 × 64 + 2 × 256).
        let first = 4 * 100 + 10 * (6 * 64 + 2 * 256);
        let last = 4 * 10 + 10 * 3 * 64 + (3 * 64 + 2 * 256);
        assert_eq!(bert.min_activation_count(3, 10), 3 * (first + last));
        let mut pruned = bert.clone();
        pruned.pruned_heads_mut().insert(0, [0, 1].into());
        assert_eq!(pruned.min_activation_count(1, 10), first - 2 * 100 + last);
        let vit = ModelConfig::Vit(VitConfig::new(224, 16, 3, 192, 6, 3, 768, 3));
        assert_eq!(vit.image_positions(224, 224), Some(197));
        assert_eq!(bert.image_positions(224, 224), None);
    }

    #[test]
    fn a_batch_too_large_for_the_memory_left_is_an_error_naming_batch_size() {
        if host_memory::available_bytes().is_none() || std::env::var_os(host_memory::SKIP_VAR).is_some() {
            crate::say!("no memory figure here: nothing to test");
            return;
        }
        let tiny = Pretrained::random(
            &ModelConfig::Bert(BertConfig::new(50, 16, 1, 2, 32, 2)),
            1,
            &Device::Cpu,
        )
        .unwrap();
        let mut check = ActivationCheck::new(&tiny.model, &tiny.params, Precision::F32, &Device::Cpu);
        check.before(&ids(4, 8)).unwrap();
        check.before(&ids(2, 8)).unwrap();
        // 2 heads × 2²⁶ probabilities for each of 2²⁰ examples: 2⁴⁸ values, far past any machine.
        let err = check.shape(1 << 20, 1 << 13).unwrap_err().to_string();
        assert!(
            err.contains(
                "the activations of a training batch of 1048576 examples × 8192 positions would take at least"
            ) && err.contains("use a smaller `batch_size`"),
            "{err}"
        );
    }

    #[test]
    fn models_with_frozen_weights_are_not_checked() {
        let config = ModelConfig::Bert(BertConfig::new(50, 16, 1, 2, 32, 2));
        let tiny = Pretrained::random(&config, 1, &Device::Cpu).unwrap();
        let only_head = ParamStore::new(1);
        let mut check = ActivationCheck::new(&tiny.model, &only_head, Precision::F32, &Device::Cpu);
        check.shape(1 << 20, 1 << 13).unwrap();
    }
}

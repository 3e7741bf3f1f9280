//! A batch whose activations cannot fit in memory is a clear error before its forward pass,
//! instead of the kernel's out-of-memory kill in the middle of a step (which ends the process
//! with no message, often after the model and data took minutes to load).
//!
//! Before each batch larger than any before it, a lower bound of the values the step keeps for
//! its backward pass ([`ModelConfig::min_activation_count`]) is reserved in the process's memory
//! ledger ([`memory_ledger`]): what the larger batch adds must fit in what the process has left
//! less what the stages beside it reserved (training's gradients and optimizer moments among
//! them, reserved when training starts), and it stays reserved until training ends, so that a
//! stage starting beside this one between two of its steps does not count this step's memory as
//! free.
//!
//! It applies on the CPU when the backward pass reaches every layer: every weight trains
//! (`train`, `distill`, `fuse`, `prune`'s fine-tuning), or the first layer has trainable weights
//! (`qlora`'s adapters in every layer: a step keeps at least as much, measured). A model
//! of which only the head trains keeps little; GPU memory is not the host's.

use candle_core::Device;

use crate::ml::kernels::memory_ledger::{self, Reservation};
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
    /// The activation bytes of the largest batch checked so far, reserved.
    reserved: Option<Reservation>,
}

impl ActivationCheck {
    /// The check for `model` training `params` in `precision` on `device`.
    pub fn new(model: &Model, params: &ParamStore, precision: Precision, device: &Device) -> Self {
        let config = model.config();
        let vars = params.named_vars();
        let trainable: u64 = vars.iter().map(|(_, v)| v.elem_count() as u64).sum();
        // Every layer keeps its activations for the backward pass when every weight trains, or
        // when the first layer has trainable weights (adapters in every layer, as QLoRA's).
        let every_layer = trainable >= config.min_weight_count() || vars.iter().any(|(n, _)| n.contains(".layer.0."));
        let applies = device.is_cpu() && every_layer;
        Self {
            config: applies.then_some(config),
            value_bytes: precision.dtype().size_in_bytes() as u64,
            reserved: None,
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
        let largest = self.reserved.as_ref().map_or(0, Reservation::bytes);
        if bytes <= largest {
            return Ok(());
        }
        let what = format!("the activations of a training batch of {batch} examples × {positions} positions");
        let remedy = "use a smaller `batch_size` (or shorter sequences, `max_len`)";
        match &mut self.reserved {
            Some(r) => r.grow(bytes - largest, &what, remedy),
            None => memory_ledger::reserve(bytes, &what, remedy).map(|r| self.reserved = Some(r)),
        }
        .map_err(candle_core::Error::Msg)
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
        use crate::ml::kernels::host_memory;
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
    fn models_whose_backward_pass_stops_before_the_first_layer_are_not_checked() {
        let config = ModelConfig::Bert(BertConfig::new(50, 16, 1, 2, 32, 2));
        let tiny = Pretrained::random(&config, 1, &Device::Cpu).unwrap();
        let only_head = ParamStore::new(1);
        let mut check = ActivationCheck::new(&tiny.model, &only_head, Precision::F32, &Device::Cpu);
        check.shape(1 << 20, 1 << 13).unwrap();
        // Adapters from the first layer on (QLoRA's): the backward pass reaches every layer.
        let adapters = ParamStore::new(1);
        adapters
            .var_builder(candle_core::DType::F32, &Device::Cpu)
            .get((4, 16), "bert.encoder.layer.0.attention.self.query.lora_A.weight")
            .unwrap();
        let mut check = ActivationCheck::new(&tiny.model, &adapters, Precision::F32, &Device::Cpu);
        if crate::ml::kernels::host_memory::available_bytes().is_some()
            && std::env::var_os("RKD_NO_MEMORY_CHECK").is_none()
        {
            assert!(check.shape(1 << 20, 1 << 13).is_err());
        }
    }
}

//! One training step's loss and every variable's gradient, by name: what the checks of a device
//! or of a kernel path compare (`rkd selftest`, the device-generic tests).

use candle_core::{Device, Result, Tensor};

use crate::ml::models::layers::ForwardCtx;
use crate::ml::models::model::{Model, ModelInput};
use crate::ml::models::params::ParamStore;

/// The cross-entropy loss of `model` on `input` in train mode (dropout from `seed`) and the
/// gradient of each of `params`' variables, in `named_vars` order, both copied to the CPU.
/// A variable without a gradient is an error naming it.
pub fn step_grads(
    model: &Model,
    params: &ParamStore,
    input: &ModelInput,
    labels: &Tensor,
    seed: u64,
) -> Result<(Tensor, Vec<(String, Tensor)>)> {
    let out = model.forward(input, &mut ForwardCtx::train(seed))?;
    let loss = candle_nn::loss::cross_entropy(&out.logits, labels)?;
    let grads = loss.backward()?;
    let mut named = Vec::new();
    for (name, var) in params.named_vars() {
        let g = grads
            .get(var.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg(format!("{name}: no gradient")))?;
        named.push((name, g.to_device(&Device::Cpu)?));
    }
    Ok((loss.to_device(&Device::Cpu)?, named))
}

//! `rkd selftest`: whether a device computes what the CPU's fused kernels compute.
//!
//! The checks the GPU needs, carried in the binary (a GPU machine has no Rust toolchain to run
//! `cargo test` on): NF4 dequantization on the device against the CPU kernel's bits, and one
//! training step (dropout on) of a tiny BERT, a tiny ViT and a QLoRA model with an NF4 base,
//! whose loss and every gradient must agree with the CPU's within a relative error of 1e-4. On
//! the CPU the device side is the device-generic path (candle's ops, what a GPU runs), so the
//! command is tested wherever the tests run.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::ml::checkpoint::Pretrained;
use crate::ml::config::{BertConfig, ModelConfig, VitConfig};
use crate::ml::kernels::fused::device_generic;
use crate::ml::kernels::nf4_device::DeviceNf4;
use crate::ml::kernels::nf4_kernel::PackedNf4;
use crate::ml::kernels::rng::Rng;
use crate::ml::layers::PackedWeight;
use crate::ml::lora::LoraConfig;
use crate::ml::model::ModelInput;
use crate::ml::training::step_grads::step_grads;
use crate::ml::{DeviceChoice, Model, ParamStore};
use crate::ops::qlora::{QloraModel, QloraSettings};

/// The largest relative error a step may show (loss and each gradient).
const LIMIT: f64 = 1e-4;

/// One comparison: what it compared, its largest relative error and the limit.
struct Check {
    name: &'static str,
    error: f64,
    limit: f64,
}

/// `rkd selftest`.
pub fn run(device: DeviceChoice, json: bool) -> ExitCode {
    let dev = match super::open_device(device) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let label = crate::ml::kernels::device::label(&dev);
    let checks = match checks(&dev) {
        Ok(c) => c,
        Err(e) => {
            crate::say!("error: a check could not run on {label}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let failed = checks.iter().filter(|c| c.error > c.limit).count();
    if json {
        let rows: Vec<_> = checks
            .iter()
            .map(|c| serde_json::json!({"check": c.name, "error": c.error, "limit": c.limit, "ok": c.error <= c.limit}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"device": label, "checks": rows, "failed": failed})
        );
    } else {
        let against = if dev.is_cpu() {
            "the device-generic path against the fused CPU kernels"
        } else {
            "against the fused CPU kernels"
        };
        println!("{label}: {against}");
        println!("{:<28}  {:>10}  {:>8}  result", "check", "rel. error", "limit");
        for c in &checks {
            let result = if c.error <= c.limit { "ok" } else { "FAILED" };
            println!("{:<28}  {:>10.2e}  {:>8.0e}  {result}", c.name, c.error, c.limit);
        }
        println!("{} of {} checks passed", checks.len() - failed, checks.len());
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn checks(dev: &Device) -> candle_core::Result<Vec<Check>> {
    let mut bert = BertConfig::new(50, 16, 2, 2, 32, 3);
    bert.max_position_embeddings = 16;
    let mut vit = VitConfig::new(8, 4, 3, 16, 2, 2, 32, 4);
    vit.hidden_dropout_prob = 0.1;
    vit.attention_probs_dropout_prob = 0.1;
    let (text, text_labels) = text_input(3, 6, 50, 5)?;
    let images = ModelInput::Images {
        pixel_values: Tensor::from_vec(
            Rng::new(6).normal_vec(3 * 3 * 8 * 8, 0.0, 1.0),
            (3, 3, 8, 8),
            &Device::Cpu,
        )?,
    };
    let image_labels = Tensor::new(&[0u32, 3, 1], &Device::Cpu)?;
    Ok(vec![
        Check {
            name: "nf4 dequantization (bits)",
            error: nf4_mismatches(dev)? as f64,
            limit: 0.0,
        },
        Check {
            name: "bert training step",
            error: model_step(&ModelConfig::Bert(bert.clone()), &text, &text_labels, dev)?,
            limit: LIMIT,
        },
        Check {
            name: "vit training step",
            error: model_step(&ModelConfig::Vit(vit), &images, &image_labels, dev)?,
            limit: LIMIT,
        },
        Check {
            name: "qlora step (nf4 base)",
            error: qlora_step(&bert, &text, &text_labels, dev)?,
            limit: LIMIT,
        },
    ])
}

/// Elements of an NF4 weight (odd size, padded last block, every byte value) whose device
/// dequantization differs from the CPU kernel's in any bit.
fn nf4_mismatches(dev: &Device) -> candle_core::Result<usize> {
    let (rows, cols, block) = (33, 70, 64);
    let n: usize = rows * cols;
    let packed: Vec<u8> = (0..n.div_ceil(2)).map(|i| (i * 7 % 256) as u8).collect();
    let scales: Vec<f32> = (0..n.div_ceil(block)).map(|b| 0.5 + b as f32 / 16.0).collect();
    let w = PackedNf4::new(packed, scales, block, rows, cols)?;
    let got = DeviceNf4::upload(&w, dev)?
        .dequantize()?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let want = w.dequantize();
    Ok(got
        .iter()
        .zip(&want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count())
}

/// Seeded token ids `[batch, seq]` and labels in `[0, 3)`.
fn text_input(batch: usize, seq: usize, vocab: u64, seed: u64) -> candle_core::Result<(ModelInput, Tensor)> {
    let mut rng = Rng::new(seed);
    let ids: Vec<u32> = (0..batch * seq).map(|_| 1 + rng.below(vocab - 1) as u32).collect();
    let labels: Vec<u32> = (0..batch).map(|_| rng.below(3) as u32).collect();
    let input = ModelInput::Text {
        input_ids: Tensor::from_vec(ids, (batch, seq), &Device::Cpu)?,
        token_type_ids: None,
        attention_mask: None,
    };
    Ok((input, Tensor::from_vec(labels, batch, &Device::Cpu)?))
}

/// Loss and the gradient of each of `params`' variables, by name, of one training step.
fn step(
    model: &Model,
    params: &ParamStore,
    input: &ModelInput,
    labels: &Tensor,
) -> candle_core::Result<(Tensor, HashMap<String, Tensor>)> {
    let (loss, grads) = step_grads(model, params, input, labels, 7)?;
    Ok((loss, grads.into_iter().collect()))
}

/// One step on `dev` (the device-generic path when it is the CPU) against the fused CPU step.
fn compare_steps(
    cpu: impl Fn() -> candle_core::Result<(Tensor, HashMap<String, Tensor>)>,
    device: impl Fn() -> candle_core::Result<(Tensor, HashMap<String, Tensor>)>,
    dev: &Device,
) -> candle_core::Result<f64> {
    let (want_loss, want) = cpu()?;
    let (loss, got) = if dev.is_cpu() {
        device_generic(&device)?
    } else {
        device()?
    };
    let mut worst = rel_err(&loss, &want_loss)?;
    for (name, w) in &want {
        let g = got
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("{name}: no gradient on the device")))?;
        // A gradient that is zero up to rounding on the CPU (a key bias, which softmax ignores)
        // has no relative error to speak of: it must stay near zero.
        let scale = max_abs(w)?;
        let e = if scale < 1e-6 {
            if max_abs(&(g - w)?)? < 1e-5 {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            rel_err(g, w)?
        };
        worst = worst.max(e);
    }
    Ok(worst)
}

fn model_step(config: &ModelConfig, input: &ModelInput, labels: &Tensor, dev: &Device) -> candle_core::Result<f64> {
    let cpu_model = Pretrained::random(config, 11, &Device::Cpu)?;
    let dev_model = Pretrained::random(config, 11, dev)?;
    let (dev_input, dev_labels) = (input.map(|t| t.to_device(dev))?, labels.to_device(dev)?);
    compare_steps(
        || step(&cpu_model.model, &cpu_model.params, input, labels),
        || step(&dev_model.model, &dev_model.params, &dev_input, &dev_labels),
        dev,
    )
}

fn qlora_step(bert: &BertConfig, input: &ModelInput, labels: &Tensor, dev: &Device) -> candle_core::Result<f64> {
    let base = Pretrained::random(&ModelConfig::Bert(bert.clone()), 4, &Device::Cpu)?;
    let settings = QloraSettings {
        lora: LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.1,
            targets: vec!["query".into(), "value".into(), "dense".into()],
        },
        double_quant: true,
        block_size: 64,
        merge: false,
    };
    // `device_form`: the CPU standing in for a device holds the NF4 weights as a GPU does.
    let build = |d: &Device, device_form: bool| -> candle_core::Result<QloraModel> {
        let mut q = QloraModel::build(&base, &settings, 3, d).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        if device_form {
            for (_, l) in crate::ml::lora::linears_mut(&mut q.model) {
                if let Some(PackedWeight::Nf4(p)) = &l.packed {
                    l.packed = Some(PackedWeight::Nf4Device(Arc::new(DeviceNf4::upload(p, d)?)));
                }
            }
        }
        // Nonzero B, so that every adapter has a gradient through the frozen layers above it.
        for (name, v) in q.trainable.named_vars() {
            if name.contains("lora_B") {
                v.set(&(v.as_tensor().ones_like()? * 0.05)?)?;
            }
        }
        Ok(q)
    };
    let (cpu_q, dev_q) = (build(&Device::Cpu, false)?, build(dev, dev.is_cpu())?);
    let (dev_input, dev_labels) = (input.map(|t| t.to_device(dev))?, labels.to_device(dev)?);
    compare_steps(
        || step(&cpu_q.model, &cpu_q.trainable, input, labels),
        || step(&dev_q.model, &dev_q.trainable, &dev_input, &dev_labels),
        dev,
    )
}

fn max_abs(t: &Tensor) -> candle_core::Result<f64> {
    t.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()
}

/// max |a − b| / max |b| (b the reference).
fn rel_err(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
    Ok(max_abs(&(a - b)?)? / max_abs(b)?.max(1e-30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_the_cpu_the_device_generic_path_passes_every_check() {
        let checks = checks(&Device::Cpu).unwrap();
        assert_eq!(checks.len(), 4);
        for c in &checks {
            assert!(c.error <= c.limit, "{}: {:e} > {:e}", c.name, c.error, c.limit);
        }
    }

    #[test]
    fn a_wrong_gradient_fails_its_check() {
        let t = Tensor::new(&[1f32, 2., 4.], &Device::Cpu).unwrap();
        let grads = HashMap::from([("w".to_string(), t.clone())]);
        let off = HashMap::from([("w".to_string(), (&t * 1.001).unwrap())]);
        let e = compare_steps(
            || Ok((t.clone(), grads.clone())),
            || Ok((t.clone(), off.clone())),
            &Device::Cpu,
        )
        .unwrap();
        assert!(e > LIMIT, "{e}");
    }
}

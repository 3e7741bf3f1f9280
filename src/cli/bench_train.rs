//! `rkd bench train`: the training step and the inference forward of BERT-mini and a ViT,
//! timed on seeded random inputs (the configs of ../shared/reference/candle-vs-torch.md, so
//! the numbers compare with PyTorch's on the same machine).
//!
//! Train step = forward in train mode (dropout on) + cross-entropy + backward + global-norm
//! clipping (1.0) + AdamW (lr 1e-4, wd 0.01). Inference = eval-mode forward on detached
//! weights ([`ParamStore::frozen_var_builder`]) with the logits copied out. Both read the
//! logits only, as `train`, `eval` and `predict` do, so the last layer computes the first token
//! alone ([`ForwardCtx::logits_only`]). Each is the median of `steps` timed runs after warm-up.

use std::process::ExitCode;
use std::time::Instant;

use super::bench::stats::median;
use candle_core::{DType, Device, Tensor};

use crate::ml::kernels::device::GpuMemoryPeak;
use crate::ml::optim::{clip_scale, AdamW, AdamWConfig};
use crate::ml::rng::derive_seed;
use crate::ml::train::with_threads;
use crate::ml::{BertConfig, DeviceChoice, ForwardCtx, Model, ModelConfig, ModelInput, ParamStore, Rng, VitConfig};

/// Untimed steps before the timed ones.
const WARMUP: usize = 1;
/// Seed of the weights, the inputs and the dropout streams.
const SEED: u64 = 0;

/// One benchmarked model: a JSON key, a label, its config, sequence length (text) and batch size.
pub struct Case {
    /// Key in the JSON output.
    pub key: &'static str,
    /// Row label of the table.
    pub label: &'static str,
    /// The model.
    pub config: ModelConfig,
    /// Tokens per example (text models only).
    pub seq_len: usize,
    /// Examples per step.
    pub batch: usize,
}

/// Median times of one case, in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    /// Training step.
    pub train_step_s: f64,
    /// Inference forward.
    pub infer_s: f64,
    /// On a GPU, the most GPU memory in use during the case (the whole GPU's, sampled; see
    /// [`GpuMemoryPeak`]).
    pub peak_mem_bytes: Option<u64>,
}

/// BERT-mini (4 layers, hidden 256, 4 heads, intermediate 1024, seq 64, batch 32, 2 classes)
/// and ViT (6 layers, hidden 192, 3 heads, intermediate 768, 224 px, patch 16, batch 32, 3 classes).
pub fn default_cases() -> Vec<Case> {
    vec![
        Case {
            key: "bert_mini",
            label: "BERT-mini",
            config: ModelConfig::Bert(BertConfig::new(30522, 256, 4, 4, 1024, 2)),
            seq_len: 64,
            batch: 32,
        },
        Case {
            key: "vit",
            label: "ViT",
            config: ModelConfig::Vit(VitConfig::new(224, 16, 3, 192, 6, 3, 768, 3)),
            seq_len: 0,
            batch: 32,
        },
    ]
}

/// On a GPU, the study's own sizes as well: BERT-base (seq 128, batch 32, 2 classes) and ViT-B/16
/// (224 px, batch 32, 3 classes).
pub fn gpu_cases() -> Vec<Case> {
    vec![
        Case {
            key: "bert_base",
            label: "BERT-base",
            config: ModelConfig::Bert(BertConfig::new(30522, 768, 12, 12, 3072, 2)),
            seq_len: 128,
            batch: 32,
        },
        Case {
            key: "vit_base",
            label: "ViT-B/16",
            config: ModelConfig::Vit(VitConfig::new(224, 16, 3, 768, 12, 12, 3072, 3)),
            seq_len: 0,
            batch: 32,
        },
    ]
}

/// Seeded random inputs and targets for `case`.
fn inputs(case: &Case, dev: &Device) -> candle_core::Result<(ModelInput, Tensor)> {
    let mut rng = Rng::new(SEED);
    let b = case.batch;
    let (input, classes) = match &case.config {
        ModelConfig::Bert(c) => {
            let ids: Vec<u32> = (0..b * case.seq_len)
                .map(|_| rng.below(c.vocab_size as u64) as u32)
                .collect();
            let input = ModelInput::Text {
                input_ids: Tensor::from_vec(ids, (b, case.seq_len), dev)?,
                token_type_ids: None,
                attention_mask: None,
            };
            (input, c.num_labels())
        }
        ModelConfig::Vit(c) => {
            let n = b * c.num_channels * c.image_size * c.image_size;
            let pixels = Tensor::from_vec(
                rng.normal_vec(n, 0.0, 1.0),
                (b, c.num_channels, c.image_size, c.image_size),
                dev,
            )?;
            (ModelInput::Images { pixel_values: pixels }, c.num_labels())
        }
    };
    let labels: Vec<u32> = (0..b).map(|_| rng.below(classes as u64) as u32).collect();
    Ok((input, Tensor::from_vec(labels, b, dev)?))
}

/// Times `f` `warmup + steps` times; the median of the last `steps`.
fn time(steps: usize, warmup: usize, mut f: impl FnMut(usize) -> candle_core::Result<()>) -> candle_core::Result<f64> {
    let mut samples = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        f(i)?;
        if i >= warmup {
            samples.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(median(samples))
}

/// Times the training step and the inference forward of one case on `dev` (on the current rayon
/// pool; on a GPU each timed step ends when the device has finished it).
pub fn bench_case(case: &Case, steps: usize, warmup: usize, dev: &Device) -> candle_core::Result<Timing> {
    let dev = dev.clone();
    let memory = GpuMemoryPeak::start(&dev);
    let params = ParamStore::new(SEED);
    let model = Model::new(&case.config, params.var_builder(DType::F32, &dev))?;
    let (input, labels) = inputs(case, &dev)?;
    let mut opt = AdamW::new(
        params.named_vars(),
        AdamWConfig {
            lr: 1e-4,
            ..AdamWConfig::default()
        },
    )?;
    let train_step_s = time(steps, warmup, |i| {
        // As `train`'s loss: the logits only, so the last layer computes the first token alone.
        let mut ctx = ForwardCtx::train(derive_seed(SEED, &format!("dropout/step{i}"))).logits_only();
        let out = model.forward(&input, &mut ctx)?;
        let loss = candle_nn::loss::cross_entropy(&out.logits, &labels)?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            candle_core::bail!("the loss is {value}")
        }
        let grads = loss.backward()?;
        let scale = clip_scale(opt.grad_norm(&grads)?, 1.0);
        opt.step(&grads, scale)?;
        dev.synchronize()
    })?;
    drop(model);
    let frozen = Model::new(&case.config, params.frozen_var_builder(DType::F32, &dev))?;
    let infer_s = time(steps, warmup.max(1), |_| {
        let out = frozen.forward(&input, &mut ForwardCtx::eval().logits_only())?;
        out.logits.to_vec2::<f32>().map(drop)
    })?;
    Ok(Timing {
        train_step_s,
        infer_s,
        peak_mem_bytes: memory.finish(),
    })
}

/// Runs every case, in order, on `dev`.
pub fn bench_all(cases: &[Case], steps: usize, warmup: usize, dev: &Device) -> candle_core::Result<Vec<Timing>> {
    cases.iter().map(|c| bench_case(c, steps, warmup, dev)).collect()
}

/// The `--json` form of the results: one object per case, and the device.
pub fn to_json(cases: &[Case], timings: &[Timing], device: &str) -> serde_json::Value {
    let mut map: serde_json::Map<String, serde_json::Value> = cases
        .iter()
        .zip(timings)
        .map(|(c, t)| {
            (
                c.key.to_string(),
                match t.peak_mem_bytes {
                    Some(b) => {
                        serde_json::json!({"train_step_s": t.train_step_s, "infer_s": t.infer_s, "peak_mem_bytes": b})
                    }
                    None => serde_json::json!({"train_step_s": t.train_step_s, "infer_s": t.infer_s}),
                },
            )
        })
        .collect();
    map.insert("device".into(), device.into());
    map.insert("cpu".into(), crate::ml::kernels::isa::machine_json());
    serde_json::Value::Object(map)
}

/// `rkd bench train`.
pub fn run(threads: Option<usize>, steps: usize, json: bool, device: DeviceChoice) -> ExitCode {
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let steps = steps.max(1);
    let dev = match super::open_device(device) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let label = crate::ml::kernels::device::label(&dev);
    let mut cases = default_cases();
    if !dev.is_cpu() {
        cases.extend(gpu_cases());
    }
    let timings = match with_threads(threads, || bench_all(&cases, steps, WARMUP, &dev)) {
        Ok(t) => t,
        Err(e) => {
            crate::say!("error: the benchmark failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!("{}", to_json(&cases, &timings, &label));
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<10}  {:>12}  {:>10}  {:>12}  {:>10}",
        "model", "train step s", "train ex/s", "inference s", "infer ex/s"
    );
    for (c, t) in cases.iter().zip(&timings) {
        println!(
            "{:<10}  {:>12.3}  {:>10.1}  {:>12.3}  {:>10.1}",
            c.label,
            t.train_step_s,
            c.batch as f64 / t.train_step_s,
            t.infer_s,
            c.batch as f64 / t.infer_s
        );
        if let Some(b) = t.peak_mem_bytes {
            println!("{:<10}  peak GPU memory in use {:.0} MiB", "", b as f64 / 1048576.0);
        }
    }
    println!(
        "(f32, batch 32, median of {steps} steps after {WARMUP} warm-up; {threads} threads; on {label}; CPU: {})",
        crate::ml::kernels::isa::machine()
    );
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_configs_give_the_json_shape() {
        let mut bert = BertConfig::new(50, 16, 1, 2, 32, 2);
        bert.max_position_embeddings = 16;
        let cases = vec![
            Case {
                key: "bert_mini",
                label: "BERT",
                config: ModelConfig::Bert(bert),
                seq_len: 8,
                batch: 4,
            },
            Case {
                key: "vit",
                label: "ViT",
                config: ModelConfig::Vit(VitConfig::new(8, 4, 3, 16, 1, 2, 32, 3)),
                seq_len: 0,
                batch: 4,
            },
        ];
        let timings = with_threads(1, || bench_all(&cases, 1, 1, &Device::Cpu)).unwrap();
        let v = to_json(&cases, &timings, "cpu");
        let obj = v.as_object().unwrap();
        assert_eq!(obj.keys().collect::<Vec<_>>(), ["bert_mini", "cpu", "device", "vit"]);
        assert_eq!(obj["device"], "cpu");
        assert_eq!(obj["cpu"]["kernels"], crate::ml::kernels::isa::active().name());
        for m in [&obj["bert_mini"], &obj["vit"]] {
            let m = m.as_object().unwrap();
            assert_eq!(m.len(), 2);
            for k in ["train_step_s", "infer_s"] {
                let s = m[k].as_f64().unwrap();
                assert!(s > 0.0 && s.is_finite(), "{k} = {s}");
            }
        }
    }

    #[test]
    fn gpu_cases_are_the_studys_base_models() {
        let cases = gpu_cases();
        let (ModelConfig::Bert(b), ModelConfig::Vit(v)) = (&cases[0].config, &cases[1].config) else {
            panic!()
        };
        assert_eq!((b.num_hidden_layers, b.hidden_size, cases[0].seq_len), (12, 768, 128));
        assert_eq!(
            (v.num_hidden_layers, v.hidden_size, v.image_size, v.patch_size),
            (12, 768, 224, 16)
        );
        assert!(cases.iter().all(|c| c.batch == 32));
    }

    #[test]
    fn default_cases_are_the_reference_configs() {
        let cases = default_cases();
        let ModelConfig::Bert(b) = &cases[0].config else {
            panic!()
        };
        assert_eq!(
            (
                b.num_hidden_layers,
                b.hidden_size,
                b.num_attention_heads,
                b.intermediate_size
            ),
            (4, 256, 4, 1024)
        );
        let ModelConfig::Vit(v) = &cases[1].config else {
            panic!()
        };
        assert_eq!((v.num_hidden_layers, v.hidden_size, v.num_patches()), (6, 192, 196));
    }
}

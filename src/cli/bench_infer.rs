//! `rkd bench infer`: inference latency and memory of BERT-mini as each compression leaves it —
//! dense f32, NF4 (the 4-bit kernel), NF4 with a LoRA adapter beside it, and pruned 30 % / 50 % —
//! at batch 1 and batch 32 (sequence 64), on seeded random weights and inputs.
//!
//! Each variant is built from the same seeded model the way `eval` holds it: NF4 quantizes the
//! linears QLoRA quantizes (block 64, double quantization) and keeps them packed (4.13 bits per
//! weight on disk, 4.5 in memory: the absmax is decoded to f32 once); the LoRA variant adds
//! rank-8 adapters (alpha 16) on every such linear; the pruned variants zero the smallest |w| of
//! each encoder linear (layer-wise L1, like `prune(method: "l1_unstructured")`) and run on the
//! dense kernel and on the sparse one (compressed sparse rows), to show which pays.
//! Latency is the median of the timed forwards; peak RSS is the process's peak while the variant
//! was built and timed (the benchmark's own baseline included).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::bench::stats::median;
use crate::ml::compress::lora::base_linears;
use crate::ml::compress::prune::{prunable_weights, prune_unstructured, Scope, Zeros};
use crate::ml::models::layers::{Dropout, LoraBranch, PackedWeight};
use crate::ml::models::linears::linears_mut;
use crate::ml::nf4::Nf4Tensor;
use crate::ml::train::with_threads;
use crate::ml::{BertConfig, ForwardCtx, Model, ModelConfig, ModelInput, ParamStore, Rng};
use crate::ops::memory;

/// Seed of the weights and inputs.
const SEED: u64 = 0;
/// Tokens per example.
const SEQ: usize = 64;

/// A compressed form of the model.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Dense,
    Nf4,
    Nf4Lora,
    /// Pruned to this sparsity; run by the sparse kernel (true) or the dense one.
    Pruned(f64, bool),
}

impl Variant {
    fn key(self) -> String {
        match self {
            Variant::Dense => "dense_f32".into(),
            Variant::Nf4 => "nf4".into(),
            Variant::Nf4Lora => "nf4_lora".into(),
            Variant::Pruned(s, false) => format!("pruned_{:.0}_dense", s * 100.0),
            Variant::Pruned(s, true) => format!("pruned_{:.0}_sparse", s * 100.0),
        }
    }

    fn label(self) -> String {
        match self {
            Variant::Dense => "dense f32".into(),
            Variant::Nf4 => "NF4".into(),
            Variant::Nf4Lora => "NF4 + LoRA r8".into(),
            Variant::Pruned(s, false) => format!("pruned {:.0}%, dense kernel", s * 100.0),
            Variant::Pruned(s, true) => format!("pruned {:.0}%, sparse kernel", s * 100.0),
        }
    }
}

/// What one variant measured.
struct Row {
    variant: Variant,
    /// Bytes of all weights held.
    weights: u64,
    /// Bytes of the linear weights QLoRA quantizes, as held.
    linear_weights: u64,
    batch_1_s: f64,
    batch_32_s: f64,
    peak_rss: Option<u64>,
}

fn config() -> ModelConfig {
    ModelConfig::Bert(BertConfig::new(30522, 256, 4, 4, 1024, 2))
}

fn input(batch: usize, vocab: usize) -> candle_core::Result<ModelInput> {
    let mut rng = Rng::new(SEED);
    let ids: Vec<u32> = (0..batch * SEQ).map(|_| rng.below(vocab as u64) as u32).collect();
    Ok(ModelInput::Text {
        input_ids: Tensor::from_vec(ids, (batch, SEQ), &Device::Cpu)?,
        token_type_ids: None,
        attention_mask: None,
    })
}

/// The variant's model, built as `eval` holds it, and its weight bytes (all, linears).
fn build(variant: Variant) -> candle_core::Result<(Model, u64, u64)> {
    let config = config();
    let params = ParamStore::new(SEED);
    Model::new(&config, params.var_builder(DType::F32, &Device::Cpu))?;
    if let Variant::Pruned(s, _) = variant {
        prune_unstructured(
            &params,
            &prunable_weights(&config, Scope::Encoder),
            s,
            false,
            Zeros::Weights,
        )?;
    }
    let mut model = Model::new(&config, params.frozen_var_builder(DType::F32, &Device::Cpu))?;
    let quantized = base_linears(&config);
    let mut weights = 4 * params.num_parameters() as u64;
    let mut linear_weights = 0u64;
    let mut rng = Rng::new(SEED + 1);
    for (name, linear) in linears_mut(&mut model) {
        if !quantized.contains(&name) {
            continue;
        }
        let dense_bytes = linear.weight_bytes();
        if matches!(variant, Variant::Nf4 | Variant::Nf4Lora) {
            let q = Nf4Tensor::from_tensor(&linear.weight, 64, true).map_err(candle_core::Error::wrap)?;
            let packed = q.to_packed().expect("a 2-D f32 weight");
            linear.keep_packed(PackedWeight::Nf4(Arc::new(packed)))?;
            if variant == Variant::Nf4Lora {
                let (out, inp) = linear.weight.dims2()?;
                let rank = 8;
                let a = Tensor::from_vec(rng.normal_vec(rank * inp, 0.0, 0.02), (rank, inp), &Device::Cpu)?;
                let b = Tensor::from_vec(rng.normal_vec(out * rank, 0.0, 0.02), (out, rank), &Device::Cpu)?;
                linear.lora = Some(LoraBranch {
                    a,
                    b,
                    scale: 16.0 / rank as f64,
                    dropout: Dropout::new(0.0),
                });
            }
        } else if matches!(variant, Variant::Pruned(_, true)) && name.contains(".encoder.") {
            linear.keep_sparse_from(0.0)?;
        }
        let held = linear.weight_bytes();
        weights = weights - dense_bytes + held;
        linear_weights += held;
    }
    // The dense copies of quantized weights go with the parameter store.
    drop(params);
    Ok((model, weights, linear_weights))
}

/// Median seconds of a forward pass (logits read back) after one warm-up.
fn time(model: &Model, input: &ModelInput, runs: usize) -> candle_core::Result<f64> {
    let mut samples = Vec::with_capacity(runs);
    for i in 0..=runs {
        let t0 = Instant::now();
        let out = model.forward(input, &mut ForwardCtx::eval().logits_only())?;
        out.logits.to_vec2::<f32>()?;
        if i > 0 {
            samples.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(median(samples))
}

fn measure(variant: Variant, runs: usize) -> candle_core::Result<Row> {
    let (model, weights, linear_weights) = build(variant)?;
    // The peak of running the model as held, not of building it from a dense one here: freed
    // heap memory goes back to the system first.
    crate::ml::kernels::host_memory::release_free_heap();
    let reset = memory::reset_peak_rss();
    let vocab = match model.config() {
        ModelConfig::Bert(c) => c.vocab_size,
        ModelConfig::Vit(_) => unreachable!("a BERT benchmark"),
    };
    let batch_1_s = time(&model, &input(1, vocab)?, runs * 4)?;
    let batch_32_s = time(&model, &input(32, vocab)?, runs)?;
    Ok(Row {
        variant,
        weights,
        linear_weights,
        batch_1_s,
        batch_32_s,
        peak_rss: if reset { memory::peak_rss() } else { None },
    })
}

/// What `rkd bench infer` was asked.
pub struct Options {
    /// Threads [default: all cores].
    pub threads: Option<usize>,
    /// Timed forwards at batch 32 (4× as many at batch 1).
    pub runs: usize,
    /// Rounds over all variants (each variant in its own process per round).
    pub rounds: usize,
    /// Sparsities of the pruned rows.
    pub sparsities: Vec<f64>,
    /// Print JSON.
    pub json: bool,
    /// Measure only this variant, in this process, and print its row as JSON (what the parent
    /// process runs once per variant and round).
    pub variant: Option<String>,
}

impl Row {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "variant": self.variant.key(),
            "weights_bytes": self.weights,
            "linear_weights_bytes": self.linear_weights,
            "batch_1_ms": 1e3 * self.batch_1_s,
            "batch_32_ms": 1e3 * self.batch_32_s,
            "peak_rss_bytes": self.peak_rss,
        })
    }

    fn from_json(variant: Variant, v: &serde_json::Value) -> Option<Row> {
        Some(Row {
            variant,
            weights: v["weights_bytes"].as_u64()?,
            linear_weights: v["linear_weights_bytes"].as_u64()?,
            batch_1_s: v["batch_1_ms"].as_f64()? / 1e3,
            batch_32_s: v["batch_32_ms"].as_f64()? / 1e3,
            peak_rss: v["peak_rss_bytes"].as_u64(),
        })
    }
}

fn variants(sparsities: &[f64]) -> Vec<Variant> {
    let mut v = vec![Variant::Dense, Variant::Nf4, Variant::Nf4Lora];
    for &s in sparsities {
        v.extend([Variant::Pruned(s, false), Variant::Pruned(s, true)]);
    }
    v
}

/// Measures `variant` in a process of its own (so that its peak memory is its own).
fn measure_in_child(variant: Variant, threads: usize, runs: usize, sparsities: &[f64]) -> Result<Row, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find rkd itself: {e}"))?;
    let list: Vec<String> = sparsities.iter().map(|s| s.to_string()).collect();
    let out = std::process::Command::new(exe)
        .args([
            "bench",
            "infer",
            "--variant",
            &variant.key(),
            "--threads",
            &threads.to_string(),
        ])
        .args(["--runs", &runs.to_string(), "--sparsity", &list.join(",")])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run rkd: {e}"))?;
    if !out.status.success() {
        return Err(format!("measuring {} failed ({})", variant.label(), out.status));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("measuring {}: {e}", variant.label()))?;
    Row::from_json(variant, &v).ok_or_else(|| format!("measuring {}: incomplete output", variant.label()))
}

/// `rkd bench infer`.
pub fn run(o: Options) -> ExitCode {
    let threads = o
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let (runs, rounds) = (o.runs.max(1), o.rounds.max(1));
    if let Some(s) = o.sparsities.iter().find(|s| !(0.0..1.0).contains(*s)) {
        crate::say!("error: --sparsity {s} is not in [0, 1)");
        return ExitCode::from(2);
    }
    let all = variants(&o.sparsities);
    if let Some(key) = &o.variant {
        let Some(&variant) = all.iter().find(|v| &v.key() == key) else {
            crate::say!("error: no variant `{key}`");
            return ExitCode::from(2);
        };
        return match with_threads(threads, || measure(variant, runs)) {
            Ok(row) => {
                println!("{}", row.to_json());
                ExitCode::SUCCESS
            }
            Err(e) => {
                crate::say!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // Rounds alternate the variants, so that a slow spell of a shared machine hits them all.
    let mut samples: Vec<Vec<Row>> = all.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (i, &v) in all.iter().enumerate() {
            match measure_in_child(v, threads, runs, &o.sparsities) {
                Ok(row) => samples[i].push(row),
                Err(e) => {
                    crate::say!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let med = |xs: Vec<f64>| median(xs);
    let rows: Vec<Row> = samples
        .into_iter()
        .map(|rs| Row {
            variant: rs[0].variant,
            weights: rs[0].weights,
            linear_weights: rs[0].linear_weights,
            batch_1_s: med(rs.iter().map(|r| r.batch_1_s).collect()),
            batch_32_s: med(rs.iter().map(|r| r.batch_32_s).collect()),
            peak_rss: rs.iter().map(|r| r.peak_rss).collect::<Option<Vec<u64>>>().map(|v| {
                let mut v = v;
                v.sort_unstable();
                v[v.len() / 2]
            }),
        })
        .collect();
    print_rows(&rows, threads, runs, rounds, o.json);
    ExitCode::SUCCESS
}

fn print_rows(rows: &[Row], threads: usize, runs: usize, rounds: usize, json: bool) {
    let cpu = crate::ml::kernels::isa::machine();
    let mib = |b: u64| b as f64 / 1048576.0;
    if json {
        let out: Vec<serde_json::Value> = rows.iter().map(Row::to_json).collect();
        let doc = serde_json::json!({
            "model": "bert_mini", "seq_len": SEQ, "threads": threads, "rounds": rounds, "cpu": crate::ml::kernels::isa::machine_json(), "rows": out,
        });
        println!("{doc}");
        return;
    }
    println!(
        "{:<28} {:>12} {:>13} {:>11} {:>12} {:>13}",
        "BERT-mini, seq 64", "weights MiB", "linears MiB", "batch 1 ms", "batch 32 ms", "peak RSS MiB"
    );
    for r in rows {
        println!(
            "{:<28} {:>12.1} {:>13.2} {:>11.2} {:>12.1} {:>13}",
            r.variant.label(),
            mib(r.weights),
            mib(r.linear_weights),
            1e3 * r.batch_1_s,
            1e3 * r.batch_32_s,
            r.peak_rss.map_or("-".into(), |b| format!("{:.0}", mib(b)))
        );
    }
    println!(
        "(medians: {} forwards at batch 1 and {runs} at batch 32 per process, {rounds} rounds, each variant in its \
         own process; {threads} threads; CPU: {cpu}; linears = the weights QLoRA quantizes: NF4 holds {:.3}× of \
         their dense bytes)",
        runs * 4,
        rows[1].linear_weights as f64 / rows[0].linear_weights as f64
    );
}

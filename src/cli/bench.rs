//! `rkd bench`: benchmarks that print a table.

// Shared by the benchmarks, below them all: `bench_train` and `bench_nf4` import it from here,
// not from this file, which dispatches to them.
pub(super) mod stats;

use crate::compile::compile_source;
use crate::plan::fingerprint::Fingerprinter;
use crate::plan::Plan;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Benchmarks.
#[derive(clap::Subcommand, Debug)]
pub enum Bench {
    /// Time compiling generated sweeps: parse, check, expand and hash.
    ///
    /// The pipeline is a sweep of N/10 points, each a chain of 10 `exec` stages (each depends on
    /// the one before). Reports the median of several runs per size.
    Compile {
        /// Sizes, in stages (multiples of 10).
        #[arg(long, value_delimiter = ',', default_values_t = [1000usize, 10000], value_parser = sweep_size)]
        stages: Vec<usize>,
        /// Runs per size (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Time the training step and the inference forward of BERT-mini and a ViT.
    ///
    /// BERT-mini: 4 layers, hidden 256, 4 heads, intermediate 1024, seq 64, 2 classes. ViT: 6
    /// layers, hidden 192, 3 heads, intermediate 768, 224 px, patch 16, 3 classes. Batch 32, f32,
    /// seeded random inputs. Train step = forward with dropout, cross-entropy, backward, gradient
    /// clipping and AdamW; inference = eval-mode forward on detached weights. Both read the logits
    /// only, as `train` and `eval` do, so the last layer computes the first token alone. Reports
    /// medians.
    Train {
        /// Threads [default: all cores].
        #[arg(long)]
        threads: Option<usize>,
        /// Timed steps per measurement (the median is reported).
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Where to compute: auto, cpu, cuda or cuda:N (on a GPU, BERT-base and ViT-B/16 are
        /// timed as well).
        #[arg(long, value_name = "DEVICE", env = "RKD_DEVICE", default_value = "auto")]
        device: crate::ml::DeviceChoice,
    },
    /// Time NF4 quantization and dequantization of a 4096×4096 f32 matrix.
    ///
    /// Seeded N(0, 0.02) weights, block size 64, without and with double quantization (8-bit
    /// absmax). Quantize includes allocating its output; dequantize writes into a reused buffer.
    /// Reports the median of several runs in ms and in GB/s of f32 (4 bytes per element: read by
    /// quantize, written by dequantize), with the stored bits per parameter.
    Nf4 {
        /// Threads [default: all cores].
        #[arg(long)]
        threads: Option<usize>,
        /// Timed runs per measurement (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Rows and columns of the matrix.
        #[arg(long, default_value_t = 4096)]
        size: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Time inference of BERT-mini as each compression leaves it, and its memory.
    ///
    /// Dense f32, NF4 (linears kept 4-bit and multiplied by the NF4 kernel), NF4 with rank-8 LoRA
    /// adapters beside it, and 30 % / 50 % unstructured pruning (on the dense and on the sparse
    /// kernel), at batch 1 and
    /// batch 32, sequence 64, seeded random weights. Reports median latency, the weights held in
    /// memory and the peak RSS of the variant's own process. `RKD_CPU_ISA=avx2` (or `baseline`) caps
    /// the element-wise and NF4 kernels at that instruction set, to compare paths on one machine.
    Infer {
        /// Threads [default: all cores].
        #[arg(long)]
        threads: Option<usize>,
        /// Timed forwards at batch 32 (4× as many at batch 1; the median is reported).
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Rounds: each runs every variant once, in a process of its own (medians are reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Sparsities of the pruned variants.
        #[arg(long, value_delimiter = ',', default_values_t = [0.3, 0.5])]
        sparsity: Vec<f64>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Measure one variant in this process and print its row as JSON (used by the rounds).
        #[arg(long, hide = true)]
        variant: Option<String>,
    },
}

/// Runs a benchmark.
pub fn run(b: Bench) -> ExitCode {
    match b {
        Bench::Compile { stages, runs, json } => compile(&stages, runs.max(1), json),
        Bench::Train {
            threads,
            steps,
            json,
            device,
        } => super::bench_train::run(threads, steps, json, device),
        Bench::Nf4 {
            threads,
            runs,
            size,
            json,
        } => super::bench_nf4::run(threads, runs, size, json),
        Bench::Infer {
            threads,
            runs,
            rounds,
            sparsity,
            json,
            variant,
        } => super::bench_infer::run(super::bench_infer::Options {
            threads,
            runs,
            rounds,
            sparsities: sparsity,
            json,
            variant,
        }),
    }
}

/// A `--stages` size: a positive multiple of 10 (chains of 10 stages).
fn sweep_size(word: &str) -> Result<usize, String> {
    match word.trim().parse::<usize>() {
        Ok(n) if n > 0 && n % 10 == 0 => Ok(n),
        Ok(n) => Err(format!(
            "{n} is not a positive multiple of 10 (the sweep is made of chains of 10 stages); try {}",
            (n.div_ceil(10) * 10).max(10)
        )),
        Err(e) => Err(format!("`{word}` is not a number of stages: {e}")),
    }
}

/// A sweep of `n / 10` points × chains of 10 exec stages.
pub fn sweep_source(n: usize) -> String {
    let mut src = String::from("# generated by `rkd bench compile`\n");
    src.push_str(&format!("sweep i in range(end: {}) {{\n", n / 10));
    src.push_str("  stage s0 = exec(cmd: \"echo start > $RKD_OUT/out\", params: {i: i})\n");
    for k in 1..10 {
        src.push_str(&format!(
            "  stage s{k} = exec(cmd: \"cat $RKD_INPUTS/out > $RKD_OUT/out; echo {k} >> $RKD_OUT/out\", inputs: [s{}])\n",
            k - 1
        ));
    }
    src.push_str("}\n");
    src
}

struct Timing {
    stages: usize,
    compile: Duration,
    hash: Duration,
}

fn compile(sizes: &[usize], runs: usize, json: bool) -> ExitCode {
    let mut rows = Vec::new();
    for &n in sizes {
        let src = sweep_source(n);
        let mut samples = Vec::new();
        for _ in 0..runs {
            let t0 = Instant::now();
            let compiled = compile_source("bench.rkd", Path::new("bench.rkd"), src.clone());
            let t1 = Instant::now();
            if !compiled.diags.is_empty() {
                crate::say!("error: the generated pipeline does not compile");
                return ExitCode::FAILURE;
            }
            let plan = match Plan::build(&compiled, &mut Fingerprinter::default()) {
                Ok(p) => p,
                Err(_) => return ExitCode::FAILURE,
            };
            let t2 = Instant::now();
            samples.push(Timing {
                stages: plan.len(),
                compile: t1 - t0,
                hash: t2 - t1,
            });
        }
        samples.sort_by_key(|t| t.compile + t.hash);
        rows.push(samples.swap_remove(samples.len() / 2));
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    if json {
        let out: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "stages": r.stages, "compile_ms": ms(r.compile), "hash_ms": ms(r.hash),
                    "total_ms": ms(r.compile + r.hash),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(out));
    } else {
        println!(
            "{:>8}  {:>22}  {:>12}  {:>10}",
            "stages", "parse+check+expand ms", "hash ms", "total ms"
        );
        for r in &rows {
            println!(
                "{:>8}  {:>22.1}  {:>12.1}  {:>10.1}",
                r.stages,
                ms(r.compile),
                ms(r.hash),
                ms(r.compile + r.hash)
            );
        }
        println!(
            "(median of {runs} runs; {} threads available)",
            rayon::current_num_threads()
        );
    }
    ExitCode::SUCCESS
}

//! `rkd bench nf4`: NF4 quantize and dequantize throughput on a seeded square f32 matrix
//! (N(0, 0.02), 4096×4096 by default), with and without double quantization.
//!
//! Quantize = [`Nf4Tensor::quantize`] (absmax, codes, packing, and the 8-bit absmax with double
//! quantization), including its output allocation. Dequantize = [`Nf4Tensor::dequantize_into`]
//! into a reused f32 buffer. Throughput is GB/s of f32 (4 bytes per element: read by quantize,
//! written by dequantize), from the median of `runs` timed runs after one warm-up.

use std::process::ExitCode;
use std::time::Instant;

use super::bench::stats::median;
use crate::ml::nf4::{Nf4Error, Nf4Tensor, DEFAULT_BLOCK_SIZE};
use crate::ml::train::with_threads;
use crate::ml::Rng;

/// Seed of the matrix.
const SEED: u64 = 0;
/// Untimed runs before the timed ones.
const WARMUP: usize = 1;

/// One measured operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `quantize` or `dequantize`.
    pub op: &'static str,
    /// Whether the absmax values are double-quantized.
    pub double_quant: bool,
    /// Median wall time, in milliseconds.
    pub ms: f64,
    /// GB/s of f32 (elements × 4 bytes / median time).
    pub gbps: f64,
    /// Stored bits per parameter of the quantized matrix.
    pub bits_per_parameter: f64,
}

/// Median seconds of `runs` timed calls of `f` after `WARMUP` untimed ones.
fn time<T>(runs: usize, mut f: impl FnMut() -> Result<T, Nf4Error>) -> Result<f64, Nf4Error> {
    let mut samples = Vec::with_capacity(runs);
    for i in 0..WARMUP + runs {
        let t0 = Instant::now();
        std::hint::black_box(f()?);
        if i >= WARMUP {
            samples.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(median(samples))
}

/// Times quantize and dequantize of a seeded `size`×`size` matrix, without then with double quantization.
pub fn bench(size: usize, block_size: usize, runs: usize) -> Result<Vec<Row>, Nf4Error> {
    let n = size * size;
    let x = Rng::new(SEED).normal_vec(n, 0.0, 0.02);
    let gb = (n * 4) as f64 / 1e9;
    let mut out = vec![0.0f32; n];
    let mut rows = Vec::new();
    for double_quant in [false, true] {
        let q = Nf4Tensor::quantize(&x, &[size, size], block_size, double_quant)?;
        let bits = q.bits_per_parameter();
        let tq = time(runs, || {
            Nf4Tensor::quantize(&x, &[size, size], block_size, double_quant)
        })?;
        let td = time(runs, || q.dequantize_into(&mut out))?;
        for (op, t) in [("quantize", tq), ("dequantize", td)] {
            rows.push(Row {
                op,
                double_quant,
                ms: t * 1e3,
                gbps: gb / t,
                bits_per_parameter: bits,
            });
        }
    }
    Ok(rows)
}

/// The `--json` form of the results.
pub fn to_json(size: usize, block_size: usize, runs: usize, threads: usize, rows: &[Row]) -> serde_json::Value {
    let results: Vec<_> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "op": r.op, "double_quant": r.double_quant, "ms": r.ms, "gb_per_s": r.gbps,
                "bits_per_parameter": r.bits_per_parameter,
            })
        })
        .collect();
    serde_json::json!({
        "rows": size, "cols": size, "block_size": block_size, "runs": runs, "threads": threads,
        "results": results,
    })
}

/// `rkd bench nf4`.
pub fn run(threads: Option<usize>, runs: usize, size: usize, json: bool) -> ExitCode {
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runs = runs.max(1);
    let block_size = DEFAULT_BLOCK_SIZE;
    let rows = match with_threads(threads, || bench(size, block_size, runs)) {
        Ok(r) => r,
        Err(e) => {
            crate::say!("error: the benchmark failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!("{}", to_json(size, block_size, runs, threads, &rows));
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<11}  {:>12}  {:>10}  {:>10}  {:>10}",
        "op", "double quant", "ms", "GB/s f32", "bits/param"
    );
    for r in &rows {
        println!(
            "{:<11}  {:>12}  {:>10.2}  {:>10.2}  {:>10.3}",
            r.op,
            if r.double_quant { "yes" } else { "no" },
            r.ms,
            r.gbps,
            r.bits_per_parameter
        );
    }
    println!(
        "({size}x{size} f32, block {block_size}, median of {runs} runs after {WARMUP} warm-up; {threads} threads)"
    );
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_matrix_gives_the_json_shape() {
        let rows = with_threads(2, || bench(64, 64, 1)).unwrap();
        let v = to_json(64, 64, 1, 2, &rows);
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 4);
        let ops: Vec<(&str, bool)> = results
            .iter()
            .map(|r| (r["op"].as_str().unwrap(), r["double_quant"].as_bool().unwrap()))
            .collect();
        assert_eq!(
            ops,
            [
                ("quantize", false),
                ("dequantize", false),
                ("quantize", true),
                ("dequantize", true)
            ]
        );
        for r in results {
            for k in ["ms", "gb_per_s"] {
                let x = r[k].as_f64().unwrap();
                assert!(x > 0.0 && x.is_finite(), "{k} = {x}");
            }
        }
        assert_eq!(results[0]["bits_per_parameter"].as_f64().unwrap(), 4.5);
    }
}

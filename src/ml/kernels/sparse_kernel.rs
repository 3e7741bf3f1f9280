//! Products with pruned (sparse) weights: `y = x·Wᵀ + b` where `W` is held in compressed sparse
//! rows (CSR: each row's nonzero values and their column indices), so that the work and the
//! memory follow the nonzeros.
//!
//! The input is transposed once (`xᵀ`, `[in, rows]`, in tiles of 64 rows), so that each nonzero `w = W[n, k]` adds
//! `w · xᵀ[k, ..]` to a tile of 64 outputs of feature `n` held in registers: one multiply-add
//! per nonzero and input row, over contiguous memory, vectorised by the compiler on each
//! instruction-set path ([`super::isa`]). Tasks take a tile of inputs and a run of features, so
//! their slice of `xᵀ` stays in cache; the tiles of `xᵀ`, and the outputs of eight features at a
//! time, are transposed in registers (the `transpose` module). A dense product (`gemm`) does more
//! multiply-adds but each faster, so this pays only above some sparsity: [`SPARSE_FROM`],
//! measured with `rkd bench infer`. Each output is summed by one task in column order, so results do not depend on the
//! thread count.
//!
//! Inference only (no backward pass): pruning's fine-tuning keeps its masks on dense weights.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::SendPtr;
use super::isa::dispatch;
use super::packed_op::{check_sizes, linear_forward};
use super::transpose::{self, GROUP};

/// The fraction of zeros from which a linear layer runs on this kernel rather than the dense one.
/// Measured on BERT-mini (`rkd bench infer --sparsity 0.7,0.8,0.9`; 2-core AVX2 EPYC, and again
/// on a 2-core AVX-512 Xeon): at 70 % the sparse kernel is faster at batch 1 but slower at
/// batch 32; from 80 % faster at both (README, "Inference speed and memory").
pub const SPARSE_FROM: f64 = 0.8;

/// Outputs per register tile.
const TILE: usize = 64;

/// A `[rows, cols]` weight in compressed sparse rows.
#[derive(Debug, Clone, PartialEq)]
pub struct CsrWeight {
    rows: usize,
    cols: usize,
    /// Where each row's entries start in `cols_of` / `values` (`rows + 1` offsets).
    starts: Vec<usize>,
    cols_of: Vec<u32>,
    values: Vec<f32>,
}

impl CsrWeight {
    /// The nonzeros of a row-major `[rows, cols]` matrix.
    pub fn from_dense(w: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(w.len(), rows * cols, "from_dense: size");
        assert!(u32::try_from(cols).is_ok(), "from_dense: too many columns");
        let mut starts = Vec::with_capacity(rows + 1);
        let (mut cols_of, mut values) = (Vec::new(), Vec::new());
        starts.push(0);
        for row in w.chunks_exact(cols.max(1)).take(rows) {
            for (k, &v) in row.iter().enumerate() {
                if v != 0.0 {
                    cols_of.push(k as u32);
                    values.push(v);
                }
            }
            starts.push(values.len());
        }
        starts.resize(rows + 1, values.len());
        Self {
            rows,
            cols,
            starts,
            cols_of,
            values,
        }
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The fraction of entries that are zero.
    pub fn sparsity(&self) -> f64 {
        let n = self.rows * self.cols;
        if n == 0 {
            0.0
        } else {
            1.0 - self.values.len() as f64 / n as f64
        }
    }

    /// Bytes held: values, column indices and row offsets.
    pub fn bytes(&self) -> usize {
        8 * self.values.len() + 8 * self.starts.len()
    }

    /// The whole matrix, dense (for tests and for devices without this kernel).
    pub fn to_dense(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for j in 0..self.rows {
            for e in self.starts[j]..self.starts[j + 1] {
                out[j * self.cols + self.cols_of[e] as usize] = self.values[e];
            }
        }
        out
    }

    /// `y = x·Wᵀ (+ bias)` for `x` `[m, cols]` row-major; `y` `[m, rows]` is overwritten.
    pub fn matmul_t(&self, x: &[f32], m: usize, bias: Option<&[f32]>, y: &mut [f32]) {
        let (n, k) = (self.rows, self.cols);
        check_sizes("sparse matmul", x, y, bias, (m, n, k));
        if m == 0 || n == 0 {
            return;
        }
        // xᵀ in tiles of 64 inputs: tile t holds `xᵀ[.., 64t..64t + 64]` as `[k, 64]`, contiguous
        // (the last tile padded with zeros).
        let tiles = m.div_ceil(TILE);
        let mut xt = vec![0f32; tiles * k * TILE];
        xt.par_chunks_mut(k * TILE).enumerate().for_each(|(t, tile)| {
            let w = TILE.min(m - t * TILE);
            // Whole groups of 8 inputs transposed in registers, the rest one by one.
            let whole = w / GROUP * GROUP;
            for g in (0..whole).step_by(GROUP) {
                transpose::group(&x[(t * TILE + g) * k..][..GROUP * k], k, &mut tile[g..], TILE);
            }
            for i in whole..w {
                let row = &x[(t * TILE + i) * k..][..k];
                for (kk, v) in row.iter().enumerate() {
                    tile[kk * TILE + i] = *v;
                }
            }
        });
        // Tasks: a tile of up to 64 inputs × a run of features, so that a task's slice of xᵀ
        // (`k × 64` floats) stays in cache while it walks its features' nonzeros.
        let want = 4 * rayon::current_num_threads().max(1);
        let per = n.div_ceil(want.div_ceil(tiles).max(1)).max(1);
        let runs = n.div_ceil(per);
        let out = SendPtr::new(y);
        (0..tiles * runs).into_par_iter().for_each(|task| {
            let (t, r) = (task / runs, task % runs);
            let (m0, w) = (t * TILE, TILE.min(m - t * TILE));
            let tile = &xt[t * k * TILE..][..k * TILE];
            // Features in groups of 8: their tiles of outputs are transposed into the rows of
            // `y` together (a lone feature's 64 outputs would be 64 scattered stores).
            let mut acc = [[0f32; TILE]; GROUP];
            let (j0, j1) = (r * per, ((r + 1) * per).min(n));
            for g0 in (j0..j1).step_by(GROUP) {
                let features = GROUP.min(j1 - g0);
                for (f, acc) in acc.iter_mut().enumerate().take(features) {
                    let j = g0 + f;
                    let (a, b) = (self.starts[j], self.starts[j + 1]);
                    let start = bias.map_or(0.0, |b| b[j]);
                    tile_product(&self.cols_of[a..b], &self.values[a..b], tile, start, acc);
                }
                if features == GROUP && w == TILE {
                    // SAFETY: `y` holds `m × n` floats (n ≥ 8 here); the elements (m0 + i,
                    // g0 + f), i < 64, f < 8, are written by this task only (tasks split the
                    // inputs into tiles and the features into runs), and `y` stays borrowed until
                    // all tasks end.
                    unsafe { transpose::group_raw(acc.as_flattened(), TILE, out.at(m0 * n + g0), n) };
                    continue;
                }
                for (f, acc) in acc.iter().enumerate().take(features) {
                    for (i, v) in acc[..w].iter().enumerate() {
                        // SAFETY: as above, element (m0 + i, g0 + f).
                        unsafe { *out.at((m0 + i) * n + g0 + f) = *v };
                    }
                }
            }
        });
    }
}

dispatch!(tile_product, (cols: &[u32], values: &[f32], xt: &[f32], start: f32, acc: &mut [f32; TILE]), {
    // A local accumulator the compiler keeps in registers (8 AVX2 or 4 AVX-512 vectors).
    let mut sum = [start; TILE];
    for (&c, &v) in cols.iter().zip(values) {
        let x: &[f32; TILE] = xt[c as usize * TILE..][..TILE].try_into().expect("a tile");
        for l in 0..TILE {
            sum[l] += v * x[l];
        }
    }
    *acc = sum;
});

/// `x·Wᵀ (+ b)` for `x` `[.., cols]` (f32, on the CPU) with a sparse weight: `[.., rows]`.
pub fn linear(x: &Tensor, weight: &Arc<CsrWeight>, bias: Option<&Arc<Vec<f32>>>) -> Result<Tensor> {
    let x = x.contiguous()?;
    x.apply_op1_no_bwd(&SparseLinearOp {
        weight: weight.clone(),
        bias: bias.cloned(),
    })
}

/// The candle op of [`linear`] (forward only).
struct SparseLinearOp {
    weight: Arc<CsrWeight>,
    bias: Option<Arc<Vec<f32>>>,
}

impl CustomOp1 for SparseLinearOp {
    fn name(&self) -> &'static str {
        "sparse-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        linear_forward("sparse-linear", s, l, self.weight.dims(), |x, m, y| {
            self.weight.matmul_t(x, m, self.bias.as_deref().map(Vec::as_slice), y)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::kernels::packed_op::check_everywhere;
    use crate::ml::kernels::rng::Rng;

    #[test]
    fn the_product_matches_the_dense_one_on_every_path_and_thread_count() {
        let (n, k) = (37, 53);
        let mut rng = Rng::new(1);
        // Half the entries zero, and one row entirely zero.
        let w: Vec<f32> = rng
            .normal_vec(n * k, 0.0, 1.0)
            .into_iter()
            .enumerate()
            .map(|(i, v)| if i % 2 == 0 || i / k == 5 { 0.0 } else { v })
            .collect();
        let csr = CsrWeight::from_dense(&w, n, k);
        assert_eq!(csr.to_dense(), w);
        assert!((csr.sparsity() - (1.0 - (n * k - k) as f64 / 2.0 / (n * k) as f64)).abs() < 0.02);
        let bias = rng.normal_vec(n, 0.0, 1.0);
        // 150 rows: two whole tiles and a remainder.
        for m in [1, 150] {
            let x = rng.normal_vec(m * k, 0.0, 1.0);
            let want: Vec<f64> = (0..m * n)
                .map(|e| {
                    let (i, j) = (e / n, e % n);
                    f64::from(bias[j])
                        + (0..k)
                            .map(|p| f64::from(x[i * k + p]) * f64::from(w[j * k + p]))
                            .sum::<f64>()
                })
                .collect();
            check_everywhere(&want, |y| csr.matmul_t(&x, m, Some(&bias), y));
        }
    }
}

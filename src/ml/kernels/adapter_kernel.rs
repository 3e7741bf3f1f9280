//! A LoRA adapter's two rank-`r` steps, row by row: `y_i += B·(scale·A·x_i)`, i.e. `t = scale·A·x_i`
//! (`r` dot products over the input) and then `y_i += Σ_q t_q·B[:, q]` — one pass over the rows,
//! each row's input and output in L1, in parallel over blocks of rows.
//!
//! As two matrix products the steps are skinny (`m × k × 8` and `m × 8 × n`) and the matrix
//! kernel handles them poorly: half-empty vectors, packing, and two rounds of waking the
//! threads per layer. BERT-mini NF4 with rank-8 adapters on every base linear took 1.24–1.26×
//! the time of NF4 alone at batch 1 with them.
//!
//! AVX-512 and AVX2 paths use FMA intrinsics, others plain code ([`super::isa`]); each row's sums
//! are taken in a fixed order, so results do not depend on the thread count.

use rayon::prelude::*;

use super::isa::{self, Isa};

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 16;

/// `y_i += Σ_q (scale·A_q·x_i)·bt_q` for every row: `x` `[m, k]`, `a` `[r, k]`, `bt` `[r, n]`
/// (`Bᵀ`), row `i` of `y` at `y[i·rs ..][..n]` (`rs ≥ n`).
pub(crate) fn add_adapter(
    x: &[f32],
    k: usize,
    a: &[f32],
    bt: &[f32],
    scale: f32,
    y: &mut [f32],
    (n, rs): (usize, usize),
) {
    let r = a.len() / k.max(1);
    let m = x.len() / k.max(1);
    assert!(
        k > 0 && a.len() == r * k && bt.len() == r * n && rs >= n && y.len() >= (m.max(1) - 1) * rs + n,
        "adapter: sizes"
    );
    if m == 0 || r == 0 || n == 0 {
        return;
    }
    y.par_chunks_mut(rs)
        .zip(x.par_chunks(k))
        .with_min_len(ROWS_PER_TASK)
        .for_each_init(
            || vec![0f32; r],
            |t, (yr, xr)| {
                let yr = &mut yr[..n];
                #[cfg(target_arch = "x86_64")]
                match isa::active() {
                    // SAFETY (both): the CPU has the instruction set (`active` says so); the
                    // slices' sizes were checked above.
                    Isa::Avx512 => return unsafe { x86::row_avx512(xr, a, bt, scale, t, yr) },
                    Isa::Avx2 => return unsafe { x86::row_avx2(xr, a, bt, scale, t, yr) },
                    Isa::Baseline => {}
                }
                row_plain(xr, a, bt, scale, t, yr);
            },
        );
}

/// One row on plain code: `t = scale·A·x`, then `y += Σ_q t_q·bt_q`.
fn row_plain(x: &[f32], a: &[f32], bt: &[f32], scale: f32, t: &mut [f32], y: &mut [f32]) {
    let (k, n) = (x.len(), y.len());
    for (tq, aq) in t.iter_mut().zip(a.chunks_exact(k)) {
        *tq = scale * super::fused::dot8(x, aq);
    }
    for (&tq, bq) in t.iter().zip(bt.chunks_exact(n)) {
        for (o, b) in y.iter_mut().zip(bq) {
            *o += tq * b;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// One row's kernel for one vector width `W`: four ranks' dot products at a time (four
    /// running vector sums), then `4·W` output columns at a time (four vectors held while every
    /// rank is added), then `W`, then one.
    macro_rules! row_kernel {
        ($(#[$doc:meta])* $name:ident, $features:literal, $w:literal, $zero:ident, $load:ident, $store:ident,
         $fma:ident, $set1:ident, $sum:ident) => {
            $(#[$doc])*
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name(x: &[f32], a: &[f32], bt: &[f32], scale: f32, t: &mut [f32], y: &mut [f32]) {
                const W: usize = $w;
                let (k, n, r) = (x.len(), y.len(), t.len());
                let whole = k / W * W;
                let (px, pa) = (x.as_ptr(), a.as_ptr());
                let mut q = 0;
                while q < r {
                    let count = (r - q).min(4);
                    let mut s = [$zero(); 4];
                    let mut c = 0;
                    while c < whole {
                        // SAFETY: c + W ≤ k, and rows q..q + count of `a` exist.
                        unsafe {
                            let xv = $load(px.add(c));
                            if count == 4 {
                                // Four ranks under constant indices (the usual case), in registers.
                                s[0] = $fma(xv, $load(pa.add(q * k + c)), s[0]);
                                s[1] = $fma(xv, $load(pa.add((q + 1) * k + c)), s[1]);
                                s[2] = $fma(xv, $load(pa.add((q + 2) * k + c)), s[2]);
                                s[3] = $fma(xv, $load(pa.add((q + 3) * k + c)), s[3]);
                            } else {
                                for (j, s) in s.iter_mut().enumerate().take(count) {
                                    *s = $fma(xv, $load(pa.add((q + j) * k + c)), *s);
                                }
                            }
                        }
                        c += W;
                    }
                    for (j, s) in s.iter().enumerate().take(count) {
                        let mut sum = $sum(*s);
                        for c in whole..k {
                            sum += x[c] * a[(q + j) * k + c];
                        }
                        t[q + j] = scale * sum;
                    }
                    q += count;
                }
                let (py, pb) = (y.as_mut_ptr(), bt.as_ptr());
                let mut j = 0;
                while j + 4 * W <= n {
                    // SAFETY: j + 4·W ≤ n, and every rank's row of `bt` has n values.
                    unsafe {
                        let mut acc = [0, W, 2 * W, 3 * W].map(|o| $load(py.add(j + o)));
                        for (q, &tq) in t.iter().enumerate() {
                            let tv = $set1(tq);
                            for (o, acc) in acc.iter_mut().enumerate() {
                                *acc = $fma(tv, $load(pb.add(q * n + j + W * o)), *acc);
                            }
                        }
                        for (o, acc) in acc.iter().enumerate() {
                            $store(py.add(j + W * o), *acc);
                        }
                    }
                    j += 4 * W;
                }
                while j + W <= n {
                    // SAFETY: as above, for W columns.
                    unsafe {
                        let mut acc = $load(py.add(j));
                        for (q, &tq) in t.iter().enumerate() {
                            acc = $fma($set1(tq), $load(pb.add(q * n + j)), acc);
                        }
                        $store(py.add(j), acc);
                    }
                    j += W;
                }
                for j in j..n {
                    for (q, &tq) in t.iter().enumerate() {
                        y[j] = tq.mul_add(bt[q * n + j], y[j]);
                    }
                }
            }
        };
    }

    row_kernel!(
        /// One row on AVX-512 (16-float vectors).
        ///
        /// # Safety
        /// The CPU has AVX-512F, AVX2 and FMA; `a` is `[t.len(), x.len()]`, `bt` `[t.len(), y.len()]`.
        row_avx512, "avx512f,avx2,fma", 16, _mm512_setzero_ps, _mm512_loadu_ps, _mm512_storeu_ps,
        _mm512_fmadd_ps, _mm512_set1_ps, sum512
    );

    row_kernel!(
        /// One row on AVX2 (8-float vectors).
        ///
        /// # Safety
        /// The CPU has AVX2 and FMA; sizes as for [`row_avx512`].
        row_avx2, "avx2,fma", 8, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_storeu_ps,
        _mm256_fmadd_ps, _mm256_set1_ps, sum256
    );

    /// The sum of a vector's 16 lanes.
    #[target_feature(enable = "avx512f")]
    fn sum512(v: __m512) -> f32 {
        _mm512_reduce_add_ps(v)
    }

    /// The sum of a vector's 8 lanes, as a pairwise tree.
    #[target_feature(enable = "avx2")]
    fn sum256(v: __m256) -> f32 {
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::kernels::rng::Rng;

    /// Every path against the definition in f64, on odd sizes (tails of every loop), ranks that
    /// are and are not multiples of four, rows with a stride, on 1 and 3 threads.
    #[test]
    fn every_path_adds_the_adapter_to_each_row() {
        for (m, k, n, r, rs) in [(37, 70, 99, 8, 99), (20, 256, 256, 3, 300), (5, 9, 5, 5, 7)] {
            let mut rng = Rng::new(m as u64);
            let x = rng.normal_vec(m * k, 0.0, 1.0);
            let a = rng.normal_vec(r * k, 0.0, 0.5);
            let bt = rng.normal_vec(r * n, 0.0, 0.5);
            let y0 = rng.normal_vec((m - 1) * rs + n, 0.0, 1.0);
            let mut want = y0.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
            for i in 0..m {
                let t: Vec<f64> = (0..r)
                    .map(|q| {
                        0.5 * (0..k)
                            .map(|c| f64::from(x[i * k + c]) * f64::from(a[q * k + c]))
                            .sum::<f64>()
                    })
                    .collect();
                for j in 0..n {
                    want[i * rs + j] += (0..r).map(|q| t[q] * f64::from(bt[q * n + j])).sum::<f64>();
                }
            }
            let mut first: Option<Vec<f32>> = None;
            isa::on_every_path(|path| {
                for threads in [1, 3] {
                    let mut y = y0.clone();
                    super::super::runtime::with_threads(threads, || add_adapter(&x, k, &a, &bt, 0.5, &mut y, (n, rs)));
                    for (got, want) in y.iter().zip(&want) {
                        let (got, name) = (f64::from(*got), path.name());
                        assert!(
                            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                            "{name} {m}×{k}×{n} r {r}: {got} vs {want}"
                        );
                    }
                    if threads == 1 {
                        first = Some(y);
                    } else {
                        assert_eq!(first.as_ref(), Some(&y), "{} on {threads} threads", path.name());
                    }
                }
            });
        }
    }
}

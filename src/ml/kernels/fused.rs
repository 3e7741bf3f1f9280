//! Fused CPU kernels with analytic backward passes: LayerNorm, softmax over the last dimension,
//! GELU (erf) and dropout, as candle `CustomOp`s.
//!
//! The composite versions in [`crate::ml::models::layers`] build each op from a handful of tensor ops, and
//! candle's autograd allocates a new tensor for every one of them in the backward pass. Here
//! each op is one pass over contiguous `f32` rows forward and one backward, parallel over rows
//! (or fixed element blocks) on the current rayon pool. Every output element is computed by one
//! thread in a fixed order, and the reductions across rows (LayerNorm's weight and bias
//! gradients) sum fixed-size row blocks in block order, so results do not depend on the thread
//! count. Other dtypes and devices take the composite path ([`fusable`]).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// Elements per parallel task of the element-wise kernels.
pub(crate) const ELEM_BLOCK: usize = 8192;
/// Rows per block of LayerNorm's weight/bias gradient partial sums (fixed: the summation order
/// must not depend on the thread count).
const LN_ROW_BLOCK: usize = 32;

thread_local! {
    /// Set while [`device_generic`] runs: the fused kernels are off on this thread.
    static GENERIC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the fused CPU kernels off on the calling thread, so that every layer built and
/// differentiated there takes the device-generic path — the one a GPU runs. For the tests that
/// check both paths agree.
pub fn device_generic<R>(f: impl FnOnce() -> R) -> R {
    let before = GENERIC.with(|g| g.replace(true));
    let out = f();
    GENERIC.with(|g| g.set(before));
    out
}

/// Whether the fused kernels apply to `x`: an `f32` tensor on the CPU (outside [`device_generic`]).
pub fn fusable(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && !GENERIC.with(|g| g.get())
}

/// A read lock on a tensor's storage, with its layout: the tensor's values while it lives.
pub(crate) struct Locked<'a, G: std::ops::Deref<Target = Storage>>(G, &'a Layout);

impl<G: std::ops::Deref<Target = Storage>> Locked<'_, G> {
    /// The values of a contiguous f32 CPU tensor (an error naming `op` otherwise).
    pub(crate) fn values(&self, op: &str) -> Result<&[f32]> {
        match &*self.0 {
            Storage::Cpu(c) => slice(c, self.1, op),
            _ => candle_core::bail!("{op}: expected CPU storage"),
        }
    }
}

/// Locks `t`'s storage for reading (see [`Locked::values`]).
pub(crate) fn locked(t: &Tensor) -> Locked<'_, impl std::ops::Deref<Target = Storage> + '_> {
    let (storage, layout) = t.storage_and_layout();
    Locked(storage, layout)
}

pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: expected f32 storage")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: input is not contiguous"),
    }
}

/// Sum in a fixed order with eight accumulators (vectorisable, deterministic).
#[inline(always)]
pub(crate) fn sum8(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for &v in rest {
        s += v;
    }
    s
}

/// Maximum with eight running maxima (vectorisable; NaNs are skipped, as by `f32::max`);
/// `-inf` for an empty slice.
#[inline(always)]
pub(crate) fn max8(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            if c[i] > acc[i] {
                acc[i] = c[i];
            }
        }
    }
    let mut m = acc.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for &v in rest {
        m = m.max(v);
    }
    m
}

/// Dot product in a fixed order with eight accumulators.
#[inline(always)]
pub(crate) fn dot8(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let cx = x.chunks_exact(8);
    let cy = y.chunks_exact(8);
    let (rx, ry) = (cx.remainder(), cy.remainder());
    for (a, b) in cx.zip(cy) {
        for i in 0..8 {
            acc[i] += a[i] * b[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (a, b) in rx.iter().zip(ry) {
        s += a * b;
    }
    s
}

pub(crate) use super::isa::dispatch;

// ------------------------------------------------------------------------------------------
// Scalar math: exp and erf in f32 with plain multiply-adds (auto-vectorised).

/// `e^x` in f32 (Cephes `expf`: range reduction by ln 2 and a degree-6 polynomial, error about
/// 1 ulp); exactly 0 below -87.3 (where f32 results turn subnormal).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.3, 88.3);
    // Round to nearest with the 1.5·2^23 trick (branch-free, vectorisable).
    let shifted = xc * LOG2E + 12_582_912.0;
    let n = shifted - 12_582_912.0;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n from the bits of `shifted` = 1.5·2^23 + n, whose low mantissa bits hold n (two's
    // complement): (n + 127) << 23 is the exponent field. No float-to-int cast, whose
    // saturating semantics LLVM lowers lane by lane.
    let scale = f32::from_bits(shifted.to_bits().wrapping_add(127) << 23);
    if x < -87.3 {
        0.0
    } else {
        y * scale
    }
}

/// `erf(x)` in f32 (the rational approximation of Eigen / XLA, inputs clamped to [-4, 4],
/// absolute error below 1e-6).
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.954_6e-3;
    p = p * x2 + -1.609_603_3e-2;
    let p = p * x;
    let mut q = -1.456_607_2e-5f32;
    q = q * x2 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329e-3;
    q = q * x2 + -1.426_473_9e-2;
    p / q
}

// ------------------------------------------------------------------------------------------
// LayerNorm.

dispatch!(ln_fwd_rows, (x: &[f32], w: &[f32], b: &[f32], y: &mut [f32], eps: f32), {
    let n = w.len();
    let inv_n = 1.0 / n as f32;
    for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
        let mean = sum8(xr) * inv_n;
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = v - mean;
        }
        let var = dot8(yr, yr) * inv_n;
        let rstd = 1.0 / (var + eps).sqrt();
        for ((o, &g), &bb) in yr.iter_mut().zip(w).zip(b) {
            *o = *o * rstd * g + bb;
        }
    }
});

/// Backward of a block of rows: writes dx, and this block's partial dgamma / dbeta.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn ln_bwd_rows_body(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    xhat: &mut [f32],
    eps: f32,
) {
    let n = w.len();
    let inv_n = 1.0 / n as f32;
    for ((xr, gr), dr) in x.chunks_exact(n).zip(g.chunks_exact(n)).zip(dx.chunks_exact_mut(n)) {
        let mean = sum8(xr) * inv_n;
        for (o, &v) in xhat.iter_mut().zip(xr) {
            *o = v - mean;
        }
        let var = dot8(xhat, xhat) * inv_n;
        let rstd = 1.0 / (var + eps).sqrt();
        for o in xhat.iter_mut() {
            *o *= rstd;
        }
        // dr = g·w (temporarily), then dx = rstd·(g·w − mean(g·w) − x̂·mean(g·w·x̂)).
        for ((o, &gg), &ww) in dr.iter_mut().zip(gr).zip(w) {
            *o = gg * ww;
        }
        let m1 = sum8(dr) * inv_n;
        let m2 = dot8(dr, xhat) * inv_n;
        for (o, &h) in dr.iter_mut().zip(xhat.iter()) {
            *o = rstd * (*o - m1 - h * m2);
        }
        for (((a, c), &gg), &h) in dw.iter_mut().zip(db.iter_mut()).zip(gr).zip(xhat.iter()) {
            *a += gg * h;
            *c += gg;
        }
    }
}

dispatch!(
    ln_bwd_rows,
    (x: &[f32], w: &[f32], g: &[f32], dx: &mut [f32], dw: &mut [f32], db: &mut [f32], xhat: &mut [f32], eps: f32),
    ln_bwd_rows_body(x, w, g, dx, dw, db, xhat, eps)
);

/// LayerNorm forward over the last dim: `(x − mean)/sqrt(var + eps)·weight + bias`.
struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (
            slice(s1, l1, "layer-norm")?,
            slice(s2, l2, "layer-norm")?,
            slice(s3, l3, "layer-norm")?,
        );
        let n = w.len();
        if n == 0 || b.len() != n || l1.dims().last() != Some(&n) {
            candle_core::bail!(
                "layer-norm: shapes do not match ({:?} / {} / {})",
                l1.dims(),
                n,
                b.len()
            )
        }
        let mut y = super::gemm::uninit_vec(x.len());
        let eps = self.eps;
        y.par_chunks_mut(n * LN_ROW_BLOCK)
            .zip(x.par_chunks(n * LN_ROW_BLOCK))
            .for_each(|(yb, xb)| ln_fwd_rows(xb, w, b, yb, eps));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = w.elem_count();
        let rows = x.elem_count() / n;
        let grad = grad.contiguous()?;
        let out = x.apply_op3_no_bwd(w, &grad, &LayerNormBwdOp { eps: self.eps })?;
        let dx = out.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = out.narrow(0, rows, 1)?.reshape(w.shape())?;
        let db = out.narrow(0, rows + 1, 1)?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// LayerNorm backward: `[rows + 2, n]` holding dx, then dweight, then dbias.
struct LayerNormBwdOp {
    eps: f32,
}

impl CustomOp3 for LayerNormBwdOp {
    fn name(&self) -> &'static str {
        "fused-layer-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = "layer-norm-bwd";
        let (x, w, g) = (slice(s1, l1, op)?, slice(s2, l2, op)?, slice(s3, l3, op)?);
        let n = w.len();
        if n == 0 || g.len() != x.len() || l1.dims().last() != Some(&n) {
            candle_core::bail!("{op}: shapes do not match ({:?} / {} / {})", l1.dims(), n, g.len())
        }
        let rows = x.len() / n;
        let blocks = rows.div_ceil(LN_ROW_BLOCK);
        let mut out = vec![0f32; (rows + 2) * n];
        let mut partial = vec![0f32; blocks * 2 * n];
        let eps = self.eps;
        let (dx, tail) = out.split_at_mut(rows * n);
        dx.par_chunks_mut(n * LN_ROW_BLOCK)
            .zip(x.par_chunks(n * LN_ROW_BLOCK))
            .zip(g.par_chunks(n * LN_ROW_BLOCK))
            .zip(partial.par_chunks_mut(2 * n))
            .for_each(|(((dxb, xb), gb), pb)| {
                let (dw, db) = pb.split_at_mut(n);
                let mut xhat = vec![0f32; n];
                ln_bwd_rows(xb, w, gb, dxb, dw, db, &mut xhat, eps);
            });
        let (dw, db) = tail.split_at_mut(n);
        for pb in partial.chunks_exact(2 * n) {
            for (o, &v) in dw.iter_mut().zip(&pb[..n]) {
                *o += v;
            }
            for (o, &v) in db.iter_mut().zip(&pb[n..]) {
                *o += v;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, n))))
    }
}

/// Fused LayerNorm over the last dimension of an f32 CPU tensor (analytic backward for `x`,
/// `weight` and `bias`).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.contiguous()?;
    let (w, b) = (weight.contiguous()?, bias.contiguous()?);
    x.apply_op3(&w, &b, LayerNormOp { eps: eps as f32 })
}

// ------------------------------------------------------------------------------------------
// Softmax over the last dimension.

dispatch!(softmax_rows, (x: &[f32], y: &mut [f32], n: usize), {
    for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
        let max = max8(xr);
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = exp_f32(v - max);
        }
        let inv = 1.0 / sum8(yr);
        for o in yr.iter_mut() {
            *o *= inv;
        }
    }
});

dispatch!(softmax_bwd_rows, (y: &[f32], g: &[f32], dx: &mut [f32], n: usize), {
    for ((yr, gr), dr) in y.chunks_exact(n).zip(g.chunks_exact(n)).zip(dx.chunks_exact_mut(n)) {
        let s = dot8(yr, gr);
        for ((o, &yy), &gg) in dr.iter_mut().zip(yr).zip(gr) {
            *o = yy * (gg - s);
        }
    }
});

/// Rows per parallel task for rows of `n` elements (about [`ELEM_BLOCK`] elements).
pub(crate) fn rows_per_task(n: usize) -> usize {
    (ELEM_BLOCK / n.max(1)).max(1)
}

/// Softmax over the last dim.
struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "softmax")?;
        let n = l.dims().last().copied().unwrap_or(1);
        let mut y = super::gemm::uninit_vec(x.len());
        if n > 0 {
            let k = rows_per_task(n) * n;
            y.par_chunks_mut(k)
                .zip(x.par_chunks(k))
                .for_each(|(yb, xb)| softmax_rows(xb, yb, n));
        }
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(res.apply_op2_no_bwd(&grad, &SoftmaxBwdOp)?))
    }
}

/// Softmax backward from the output `y` and its gradient: `y·(g − Σ y·g)` per row.
struct SoftmaxBwdOp;

impl CustomOp2 for SoftmaxBwdOp {
    fn name(&self) -> &'static str {
        "fused-softmax-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, g) = (slice(s1, l1, "softmax-bwd")?, slice(s2, l2, "softmax-bwd")?);
        let n = l1.dims().last().copied().unwrap_or(1);
        if y.len() != g.len() {
            candle_core::bail!("softmax-bwd: shapes do not match")
        }
        let mut dx = super::gemm::uninit_vec(y.len());
        if n > 0 {
            let k = rows_per_task(n) * n;
            dx.par_chunks_mut(k)
                .zip(y.par_chunks(k))
                .zip(g.par_chunks(k))
                .for_each(|((db, yb), gb)| softmax_bwd_rows(yb, gb, db, n));
        }
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Fused softmax over the last dimension of an f32 CPU tensor (analytic backward).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(SoftmaxOp)
}

// ------------------------------------------------------------------------------------------
// GELU (erf).

const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// GELU (erf) of one value.
#[inline(always)]
fn gelu_f32(v: f32) -> f32 {
    0.5 * v * (1.0 + erf_f32(v * std::f32::consts::FRAC_1_SQRT_2))
}

dispatch!(pub(crate) gelu_block, (x: &[f32], y: &mut [f32]), {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = gelu_f32(v);
    }
});

// Rows of `b.len()`: `x += b` (the pre-activation, kept) and `y = gelu(x)`.
dispatch!(pub(crate) bias_gelu_rows, (x: &mut [f32], b: &[f32], y: &mut [f32]), {
    for (xr, yr) in x.chunks_exact_mut(b.len()).zip(y.chunks_exact_mut(b.len())) {
        for ((v, o), &bb) in xr.iter_mut().zip(yr.iter_mut()).zip(b) {
            *v += bb;
            *o = gelu_f32(*v);
        }
    }
});

// Rows of `b.len()`, in place: `x = gelu(x + b)`.
dispatch!(pub(crate) bias_gelu_rows_in_place, (x: &mut [f32], b: &[f32]), {
    for xr in x.chunks_exact_mut(b.len()) {
        for (v, &bb) in xr.iter_mut().zip(b) {
            *v = gelu_f32(*v + bb);
        }
    }
});

dispatch!(pub(crate) gelu_bwd_block, (x: &[f32], g: &[f32], dx: &mut [f32]), {
    for ((o, &v), &gg) in dx.iter_mut().zip(x).zip(g) {
        let cdf = 0.5 * (1.0 + erf_f32(v * std::f32::consts::FRAC_1_SQRT_2));
        let pdf = FRAC_1_SQRT_2PI * exp_f32(-0.5 * v * v);
        *o = gg * (cdf + v * pdf);
    }
});

/// GELU with the exact (erf) CDF.
struct GeluOp;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "fused-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "gelu")?;
        let mut y = super::gemm::uninit_vec(x.len());
        y.par_chunks_mut(ELEM_BLOCK)
            .zip(x.par_chunks(ELEM_BLOCK))
            .for_each(|(yb, xb)| gelu_block(xb, yb));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(x.apply_op2_no_bwd(&grad, &GeluBwdOp)?))
    }
}

/// GELU backward: `g·(Φ(x) + x·φ(x))`.
struct GeluBwdOp;

impl CustomOp2 for GeluBwdOp {
    fn name(&self) -> &'static str {
        "fused-gelu-erf-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (slice(s1, l1, "gelu-bwd")?, slice(s2, l2, "gelu-bwd")?);
        if x.len() != g.len() {
            candle_core::bail!("gelu-bwd: shapes do not match")
        }
        let mut dx = super::gemm::uninit_vec(x.len());
        dx.par_chunks_mut(ELEM_BLOCK)
            .zip(x.par_chunks(ELEM_BLOCK))
            .zip(g.par_chunks(ELEM_BLOCK))
            .for_each(|((db, xb), gb)| gelu_bwd_block(xb, gb, db));
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Fused GELU (erf) of an f32 CPU tensor (analytic backward).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GeluOp)
}

// ------------------------------------------------------------------------------------------
// Dropout with a precomputed mask.

dispatch!(mask_block, (x: &[f32], m: &[f32], y: &mut [f32]), {
    for ((o, &v), &k) in y.iter_mut().zip(x).zip(m) {
        *o = v * k;
    }
});

/// Multiplication by a fixed `{0, 1/(1-p)}` mask; its backward multiplies by the same mask.
struct DropoutOp {
    mask: Arc<Vec<f32>>,
}

impl DropoutOp {
    fn apply(&self, x: &[f32]) -> Result<Vec<f32>> {
        if x.len() != self.mask.len() {
            candle_core::bail!("dropout: {} elements, mask of {}", x.len(), self.mask.len())
        }
        let mut y = super::gemm::uninit_vec(x.len());
        y.par_chunks_mut(ELEM_BLOCK)
            .zip(x.par_chunks(ELEM_BLOCK))
            .zip(self.mask.par_chunks(ELEM_BLOCK))
            .for_each(|((yb, xb), mb)| mask_block(xb, mb, yb));
        Ok(y)
    }
}

impl CustomOp1 for DropoutOp {
    fn name(&self) -> &'static str {
        "fused-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = self.apply(slice(s, l, "dropout")?)?;
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(grad.apply_op1_no_bwd(&DropoutOp {
            mask: self.mask.clone(),
        })?))
    }
}

/// Multiplies an f32 CPU tensor by `mask` (same element count, row-major), with the backward
/// multiplying the gradient by the same mask: dropout without a mask tensor in the graph.
pub fn mul_mask(x: &Tensor, mask: Vec<f32>) -> Result<Tensor> {
    x.contiguous()?.apply_op1(DropoutOp { mask: Arc::new(mask) })
}

// ------------------------------------------------------------------------------------------
// Residual addition.

dispatch!(add_block, (a: &[f32], b: &[f32], y: &mut [f32]), {
    for ((o, &x), &z) in y.iter_mut().zip(a).zip(b) {
        *o = x + z;
    }
});

/// `a + b` for tensors of the same shape, parallel over element blocks.
struct AddOp;

impl CustomOp2 for AddOp {
    fn name(&self) -> &'static str {
        "fused-add"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (a, b) = (slice(s1, l1, "add")?, slice(s2, l2, "add")?);
        if l1.dims() != l2.dims() {
            candle_core::bail!("add: shapes {:?} and {:?} differ", l1.dims(), l2.dims())
        }
        let mut y = super::gemm::uninit_vec(a.len());
        y.par_chunks_mut(ELEM_BLOCK)
            .zip(a.par_chunks(ELEM_BLOCK))
            .zip(b.par_chunks(ELEM_BLOCK))
            .for_each(|((yb, ab), bb)| add_block(ab, bb, yb));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, _a: &Tensor, _b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), Some(grad.clone())))
    }
}

/// `a + b` (a residual connection): parallel for f32 CPU tensors of the same shape, candle's
/// own addition otherwise.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if fusable(a) && fusable(b) && a.dims() == b.dims() {
        a.contiguous()?.apply_op2(&b.contiguous()?, AddOp)
    } else {
        a + b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::kernels::isa;
    use crate::ml::models::config::HiddenAct;
    use crate::ml::models::layers::{self, LayerNorm};
    use crate::ml::testutil::{randn, rel_err, values_f64 as values};
    use crate::ml::Rng;
    use candle_core::{Device, Module, Var};

    #[test]
    fn layer_norm_refuses_rows_of_another_width() {
        // [2, 512] rows against a 256-wide norm: the element count divides, the rows do not match.
        let dev = Device::Cpu;
        let x = Tensor::ones((2, 512), DType::F32, &dev).unwrap();
        let (w, b) = (
            Tensor::ones(256, DType::F32, &dev).unwrap(),
            Tensor::zeros(256, DType::F32, &dev).unwrap(),
        );
        let err = layer_norm(&x, &w, &b, 1e-5).unwrap_err().to_string();
        assert!(err.contains("shapes do not match"), "{err}");
        assert!(layer_norm(&x.reshape((4, 256)).unwrap(), &w, &b, 1e-5).is_ok());
    }

    /// Output and input gradients (of `sum(f(x)·w)` for random `w`) of `f` at `inputs`, the
    /// inputs as f32 variables; `to` converts them first (f32 for the fused op, f64 for the
    /// composite reference).
    fn run(f: &dyn Fn(&[Tensor]) -> Tensor, inputs: &[Tensor], w: &Tensor, dtype: DType) -> (Tensor, Vec<Tensor>) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts);
        let loss = (&y * w.to_dtype(dtype).unwrap()).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let g = vars.iter().map(|v| grads.get(v).expect("gradient").clone()).collect();
        (y, g)
    }

    /// The fused op against the composite one (in f64): forward and every input gradient.
    fn check(fused: &dyn Fn(&[Tensor]) -> Tensor, composite: &dyn Fn(&[Tensor]) -> Tensor, inputs: &[Tensor]) {
        let y = fused(inputs);
        let mut rng = Rng::new(11);
        let w = randn(&mut rng, y.dims(), 1.0);
        let (yf, gf) = run(fused, inputs, &w, DType::F32);
        let (yc, gc) = run(composite, inputs, &w, DType::F64);
        assert_eq!(yf.dtype(), DType::F32);
        let e = rel_err(&yf, &yc);
        assert!(e <= 1e-4, "forward relative error {e}");
        for (i, (a, b)) in gf.iter().zip(&gc).enumerate() {
            assert_eq!(a.dims(), b.dims());
            let e = rel_err(a, b);
            assert!(e <= 1e-4, "gradient {i}: relative error {e}");
        }
    }

    #[test]
    fn residual_add_matches_candle_and_passes_the_gradient_to_both_sides() {
        let mut rng = Rng::new(12);
        let (a, b) = (randn(&mut rng, &[3, 70, 130], 1.0), randn(&mut rng, &[3, 70, 130], 1.0));
        let add2 = |x: &[Tensor]| add(&x[0], &x[1]).unwrap();
        let composite = |x: &[Tensor]| (&x[0] + &x[1]).unwrap();
        check(&add2, &composite, &[a, b]);
    }

    #[test]
    fn layer_norm_matches_the_composite_forward_and_gradients() {
        let mut rng = Rng::new(1);
        // 70 rows (not a multiple of the row block), 37 features (not a multiple of 8).
        for (dims, n) in [(vec![2usize, 35, 37], 37usize), (vec![4, 16, 64], 64)] {
            let x = (randn(&mut rng, &dims, 2.0) + 0.5).unwrap();
            let w = (randn(&mut rng, &[n], 0.5) + 1.0).unwrap();
            let b = randn(&mut rng, &[n], 0.5);
            check(
                &|t| layer_norm(&t[0], &t[1], &t[2], 1e-12).unwrap(),
                &|t| {
                    let ln = LayerNorm {
                        weight: t[1].clone(),
                        bias: t[2].clone(),
                        eps: 1e-12,
                    };
                    layers::layer_norm_composite(&ln, &t[0]).unwrap()
                },
                &[x, w, b],
            );
        }
    }

    #[test]
    fn softmax_matches_the_composite_forward_and_gradients() {
        let mut rng = Rng::new(2);
        let x = randn(&mut rng, &[3, 2, 9, 13], 3.0);
        check(
            &|t| softmax_last_dim(&t[0]).unwrap(),
            &|t| layers::softmax_composite(&t[0]).unwrap(),
            &[x],
        );
        // Masked positions (f32::MIN added) get exactly zero probability.
        let dev = Device::Cpu;
        let s = Tensor::new(&[[1f32, f32::MIN, 2.0], [f32::MIN, f32::MIN, f32::MIN]], &dev).unwrap();
        let p = softmax_last_dim(&s).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(p[0][1], 0.0);
        assert!((p[0][0] + p[0][2] - 1.0).abs() < 1e-6);
        assert_eq!(p[1], vec![1.0 / 3.0; 3]);
    }

    #[test]
    fn gelu_matches_the_composite_forward_and_gradients() {
        let mut rng = Rng::new(3);
        let x = randn(&mut rng, &[5000], 3.0);
        check(
            &|t| gelu_erf(&t[0]).unwrap(),
            &|t| layers::activation_composite(&t[0], HiddenAct::Gelu).unwrap(),
            &[x],
        );
    }

    #[test]
    fn erf_and_exp_are_accurate() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.005;
            let e = candle_core::cpu::erf::erf_f64(x as f64);
            assert!((erf_f32(x) as f64 - e).abs() < 1e-6, "erf({x})");
        }
        for i in -1000..=1000 {
            let x = i as f32 * 0.087;
            let e = (x as f64).exp();
            assert!(((exp_f32(x) as f64 - e) / e).abs() < 1e-6, "exp({x})");
        }
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(f32::MIN), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn dropout_mask_matches_the_composite_and_its_gradient() {
        let mut rng = Rng::new(4);
        let x = randn(&mut rng, &[6, 50], 1.0);
        let mask: Vec<f32> = (0..300).map(|i| if i % 3 == 0 { 0.0 } else { 1.5 }).collect();
        let m = Tensor::from_vec(mask.clone(), (6, 50), &Device::Cpu).unwrap();
        check(
            &|t| mul_mask(&t[0], mask.clone()).unwrap(),
            &|t| t[0].mul(&m.to_dtype(t[0].dtype()).unwrap()).unwrap(),
            &[x],
        );
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        // A counter-based mask, filled on the pool of the caller.
        let dropout_values = |n: usize| crate::ml::kernels::rng::CounterMask::new(0.2, 7).unwrap().values(n);
        let mut rng = Rng::new(5);
        let x = randn(&mut rng, &[300, 48], 1.0);
        let w = randn(&mut rng, &[48], 1.0);
        let b = randn(&mut rng, &[48], 1.0);
        let gw = randn(&mut rng, &[300, 48], 1.0);
        let all = |threads: usize| {
            crate::ml::kernels::runtime::with_threads(threads, || -> Result<Vec<Vec<f32>>> {
                let xv = Var::from_tensor(&x)?;
                let (wv, bv) = (Var::from_tensor(&w)?, Var::from_tensor(&b)?);
                let h = layer_norm(xv.as_tensor(), wv.as_tensor(), bv.as_tensor(), 1e-5)?;
                let h = add(&h, &mul_mask(&h, dropout_values(h.elem_count()))?)?;
                let y = softmax_last_dim(&gelu_erf(&h)?)?;
                let grads = (y.clone() * &gw)?.sum_all()?.backward()?;
                let mut out = vec![y.flatten_all()?.to_vec1()?];
                for v in [&xv, &wv, &bv] {
                    out.push(grads.get(v).expect("gradient").flatten_all()?.to_vec1()?);
                }
                Ok(out)
            })
            .unwrap()
        };
        assert_eq!(all(1), all(2));
        assert_eq!(all(1), all(3));
        // And not on the instruction set: every path this CPU has gives the same bits (each is
        // checked against the composite ops by the tests above through this equality).
        let widest = all(2);
        isa::on_every_path(|path| assert_eq!(all(2), widest, "the {} path differs", path.name()));
    }

    #[test]
    fn layer_module_uses_the_fused_kernel_for_f32() {
        let mut rng = Rng::new(6);
        let ln = LayerNorm {
            weight: randn(&mut rng, &[16], 1.0),
            bias: randn(&mut rng, &[16], 1.0),
            eps: 1e-12,
        };
        let x = randn(&mut rng, &[3, 16], 1.0);
        let a = ln.forward(&x).unwrap();
        let b = layer_norm(&x, &ln.weight, &ln.bias, 1e-12).unwrap();
        assert_eq!(values(&a), values(&b));
    }
}

//! The fully connected layer `y = x·Wᵀ + b` as one candle op with an analytic backward pass.
//!
//! Built from candle ops, a Linear is a reshape, a transpose, a zero-filled matmul, a
//! broadcast and an add, and candle's autograd allocates and accumulates a gradient for each
//! of them. Here the forward pass writes the bias into the output and lets the matrix kernel
//! add `x·Wᵀ` into it; the backward pass computes `dx = g·W`, `dW = gᵀ·x` (straight into the
//! `[out, in]` layout) and `db = Σ_rows g`, and only for the inputs that need a gradient (a
//! frozen base weight gets none). The bias gradient sums fixed-size row blocks in block order,
//! so results do not depend on the thread count.
//!
//! [`linear_gelu`] adds the feed-forward block's GELU (erf) to the same op: the product is
//! computed without the bias, which is added in the GELU's own pass; the pre-activation is kept
//! inside the op for the backward pass instead of being a separate node whose gradient candle
//! would allocate and accumulate (and without a backward pass to come, GELU overwrites it).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use std::sync::OnceLock;

use rayon::prelude::*;

use super::fused::{
    bias_gelu_rows, bias_gelu_rows_in_place, fusable, gelu_bwd_block, locked, rows_per_task, slice, ELEM_BLOCK,
};
use super::gemm::{matmul, uninit_vec, Mat, MatMut, Threads};
use super::side_by_side;

/// `x·Wᵀ` (`x` `[m, in]`, `w` `[out, in]`) by candle's ops, on any device: the product in
/// `compute` (f32, bf16 or f16), the result in `x`'s dtype. The layers' composite form for
/// packed weights made dense, and for precisions the fused op does not compute.
pub fn product_t(x: &Tensor, w: &Tensor, compute: DType) -> Result<Tensor> {
    if compute == x.dtype() {
        x.matmul(&w.to_dtype(compute)?.t()?)
    } else {
        x.to_dtype(compute)?
            .matmul(&w.to_dtype(compute)?.t()?)?
            .to_dtype(x.dtype())
    }
}

/// Rows per block of the bias gradient's partial sums (fixed, for a thread-count-free order).
const BIAS_ROW_BLOCK: usize = 128;

/// `x·Wᵀ + b` for `x` of shape `[.., in]`, `weight` `[out, in]` and `bias` `[out]`: `[.., out]`.
/// f32 CPU tensors only (see [`applies`]).
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let x = x.contiguous()?;
    let w = weight.contiguous()?;
    match bias {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, LinearOp),
        None => x.apply_op2(&w, LinearOp),
    }
}

/// `gelu(x·Wᵀ + b)` (GELU with the exact erf CDF) as one op; same shapes as [`linear`].
pub fn linear_gelu(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    let w = weight.contiguous()?;
    let keep = x.track_op() || w.track_op() || bias.track_op();
    x.apply_op3(
        &w,
        &bias.contiguous()?,
        LinearGeluOp {
            pre: keep.then(OnceLock::new),
        },
    )
}

/// `residual + x·Wᵀ + b` where nothing needs a gradient (inference): the output starts as the
/// residual plus the bias and the product is added into it, so the residual connection costs no
/// pass of its own (and no buffer). `residual` has the output's shape; all f32 on the CPU (see
/// [`applies`]). Results differ from `linear` followed by an add by rounding only (the sums run
/// in another order).
pub fn linear_residual(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, residual: &Tensor) -> Result<Tensor> {
    if !(applies(x, weight, bias) && fusable(residual)) {
        candle_core::bail!("linear-residual: every input must be an f32 tensor on the CPU")
    }
    let bias = bias.map(|b| b.flatten_all()?.to_vec1::<f32>()).transpose()?;
    x.contiguous()?.apply_op3_no_bwd(
        &weight.contiguous()?,
        &residual.contiguous()?,
        &LinearResidualOp { bias },
    )
}

/// `y = r + bias` row by row (rows of `width`; `y` and `r` equally long), row blocks in parallel:
/// where a residual layer's output starts before its product is added in.
pub(crate) fn residual_plus_bias(y: &mut [f32], r: &[f32], bias: Option<&[f32]>, width: usize) {
    assert_eq!(y.len(), r.len(), "residual plus bias: sizes");
    if y.is_empty() {
        return;
    }
    let block = rows_per_task(width) * width;
    y.par_chunks_mut(block)
        .zip(r.par_chunks(block))
        .for_each(|(yb, rb)| match bias {
            Some(b) => {
                for (yr, rr) in yb.chunks_exact_mut(width).zip(rb.chunks_exact(width)) {
                    for ((o, &v), &bb) in yr.iter_mut().zip(rr).zip(b) {
                        *o = v + bb;
                    }
                }
            }
            None => yb.copy_from_slice(rb),
        });
}

/// The op of [`linear_residual`] on `(x, W, residual)`, the bias inside.
struct LinearResidualOp {
    bias: Option<Vec<f32>>,
}

impl CustomOp3 for LinearResidualOp {
    fn name(&self) -> &'static str {
        "fused-linear-residual"
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
        let op = "linear-residual";
        let (rows, inp, out, shape) = dims(l1, l2)?;
        if l3.dims() != shape.dims() {
            candle_core::bail!("{op}: residual {:?} for an output {:?}", l3.dims(), shape.dims())
        }
        if let Some(b) = &self.bias {
            bias_of_width(b, out, op)?;
        }
        let (x, w, r) = (slice(s1, l1, op)?, slice(s2, l2, op)?, slice(s3, l3, op)?);
        let mut y = uninit_vec(rows * out);
        residual_plus_bias(&mut y, r, self.bias.as_deref(), out);
        matmul(
            MatMut::rows(&mut y, rows, out),
            Mat::rows(x, rows, inp),
            Mat::rows(w, out, inp).t(),
            1.0,
            true,
            Threads::Pool,
        );
        Ok((CpuStorage::F32(y), shape))
    }
}

/// Whether [`linear`] applies: input, weight (and bias) are f32 tensors on the CPU.
pub fn applies(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> bool {
    fusable(x) && fusable(weight) && bias.is_none_or(fusable)
}

struct LinearOp;

/// Rows, input and output widths of `x` against `weight`.
fn dims(x: &Layout, w: &Layout) -> Result<(usize, usize, usize, Shape)> {
    let xd = x.dims();
    let (out, inp) = match w.dims() {
        [o, i] => (*o, *i),
        d => candle_core::bail!("linear: weight must be [out, in], got {d:?}"),
    };
    match xd.last() {
        Some(&last) if last == inp => {}
        _ => candle_core::bail!("linear: input {xd:?} does not end in the weight's width {inp}"),
    }
    let rows = xd[..xd.len() - 1].iter().product();
    let mut shape = xd.to_vec();
    *shape.last_mut().expect("checked above") = out;
    Ok((rows, inp, out, Shape::from(shape)))
}

/// `x·Wᵀ (+ b)`: the bias written into the output, the product added into it (one layer of
/// [`side_by_side`]'s products).
fn forward(x: &[f32], w: &[f32], bias: Option<&[f32]>, rows: usize, inp: usize, out: usize) -> Vec<f32> {
    side_by_side::forward(x, (rows, inp), &[w], &[bias], &[out])
}

/// `b`, or an error unless it has one value per output (`out`).
fn bias_of_width<'a>(b: &'a [f32], out: usize, op: &str) -> Result<&'a [f32]> {
    if b.len() != out {
        candle_core::bail!("{op}: bias has {} values for {out} outputs", b.len())
    }
    Ok(b)
}

/// `x·Wᵀ + b` from the three storages of a `CustomOp3` (shape checks included).
fn forward_biased(
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&CpuStorage, &Layout),
) -> Result<(Vec<f32>, Shape)> {
    let (rows, inp, out, shape) = dims(l1, l2)?;
    let b = bias_of_width(slice(s3, l3, "linear")?, out, "linear")?;
    let (x, w) = (slice(s1, l1, "linear")?, slice(s2, l2, "linear")?);
    Ok((forward(x, w, Some(b), rows, inp, out), shape))
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, inp, out, shape) = dims(l1, l2)?;
        let y = forward(slice(s1, l1, "linear")?, slice(s2, l2, "linear")?, None, rows, inp, out);
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = backward(x, w, None, grad)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "fused-linear"
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
        let (y, shape) = forward_biased((s1, l1), (s2, l2), (s3, l3))?;
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        backward(x, w, Some(b), grad)
    }
}

/// Linear followed by GELU; `pre` keeps the pre-activation for the backward pass (`None` when
/// nothing needs a gradient).
struct LinearGeluOp {
    pre: Option<OnceLock<Vec<f32>>>,
}

impl CustomOp3 for LinearGeluOp {
    fn name(&self) -> &'static str {
        "fused-linear-gelu"
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
        // The product without the bias (the kernel then never reads its output), and the bias
        // added in the GELU's pass over it: one pass less over the largest activation of the
        // layer. Without a backward pass to come, GELU overwrites the pre-activation.
        let (rows, inp, out, shape) = dims(l1, l2)?;
        let b = bias_of_width(slice(s3, l3, "linear-gelu")?, out, "linear-gelu")?;
        let (x, w) = (slice(s1, l1, "linear-gelu")?, slice(s2, l2, "linear-gelu")?);
        let mut pre = forward(x, w, None, rows, inp, out);
        if pre.is_empty() {
            return Ok((CpuStorage::F32(pre), shape));
        }
        let block = rows_per_task(out) * out;
        let Some(keep) = &self.pre else {
            pre.par_chunks_mut(block).for_each(|pb| bias_gelu_rows_in_place(pb, b));
            return Ok((CpuStorage::F32(pre), shape));
        };
        let mut y = uninit_vec(pre.len());
        y.par_chunks_mut(block)
            .zip(pre.par_chunks_mut(block))
            .for_each(|(yb, pb)| bias_gelu_rows(pb, b, yb));
        if keep.set(pre).is_err() {
            candle_core::bail!("linear-gelu: the op ran twice")
        }
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(pre) = self.pre.as_ref().and_then(OnceLock::get) else {
            candle_core::bail!("linear-gelu: no saved pre-activation for the backward pass")
        };
        with_values(grad, |g| {
            if g.len() != pre.len() {
                candle_core::bail!("linear-gelu: gradient of {} values for {}", g.len(), pre.len())
            }
            let mut dpre = uninit_vec(pre.len());
            dpre.par_chunks_mut(ELEM_BLOCK)
                .zip(pre.par_chunks(ELEM_BLOCK))
                .zip(g.par_chunks(ELEM_BLOCK))
                .for_each(|((db, pb), gb)| gelu_bwd_block(pb, gb, db));
            grads_from(x, w, Some(b), &dpre)
        })
    }
}

/// Runs `f` on the contiguous f32 values of a CPU tensor (no copy when already contiguous).
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let guard = locked(&t);
    f(guard.values("linear backward")?)
}

/// `(dx, dW, db)`, each only where that input tracks gradients.
fn backward(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    grad: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    with_values(grad, |g| grads_from(x, w, b, g))
}

/// [`backward`] from the output gradient's values `g` (`[rows, out]`, row-major).
fn grads_from(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    g: &[f32],
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (out, inp) = w.dims2()?;
    let rows = x.elem_count() / inp.max(1);
    if g.len() != rows * out {
        candle_core::bail!("linear: gradient of {} values for {rows}×{out}", g.len())
    }
    let dx = if x.track_op() {
        let mut dx = uninit_vec(rows * inp);
        with_values(w, |w| {
            let (g, w) = (Mat::rows(g, rows, out), Mat::rows(w, out, inp));
            matmul(MatMut::rows(&mut dx, rows, inp), g, w, 1.0, false, Threads::Pool);
            Ok(())
        })?;
        Some(Tensor::from_vec(dx, x.shape(), &Device::Cpu)?)
    } else {
        None
    };
    let dw = if w.track_op() {
        let mut dw = uninit_vec(out * inp);
        with_values(x, |x| {
            let (gt, x) = (Mat::rows(g, rows, out).t(), Mat::rows(x, rows, inp));
            matmul(MatMut::rows(&mut dw, out, inp), gt, x, 1.0, false, Threads::Pool);
            Ok(())
        })?;
        Some(Tensor::from_vec(dw, (out, inp), &Device::Cpu)?)
    } else {
        None
    };
    let db = match b {
        Some(b) if b.track_op() => Some(Tensor::from_vec(column_sums(g, out), out, &Device::Cpu)?),
        _ => None,
    };
    Ok((dx, dw, db))
}

/// Sum over the rows of a row-major `[rows, n]` matrix, in fixed row blocks combined in order.
fn column_sums(g: &[f32], n: usize) -> Vec<f32> {
    if n == 0 {
        return Vec::new();
    }
    let partials: Vec<Vec<f32>> = g
        .par_chunks(BIAS_ROW_BLOCK * n)
        .map(|block| {
            let mut acc = vec![0f32; n];
            for row in block.chunks_exact(n) {
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            }
            acc
        })
        .collect();
    let mut sums = vec![0f32; n];
    for p in partials {
        for (s, v) in sums.iter_mut().zip(p) {
            *s += v;
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::testutil::{self, rel_err};
    use crate::ml::Rng;
    use candle_core::{DType, Var};

    fn randn(rng: &mut Rng, dims: &[usize]) -> Tensor {
        testutil::randn(rng, dims, 1.0)
    }

    /// Output and gradients of `sum(linear(x)·u)` w.r.t. x, W and b (when given).
    fn grads(x: &Tensor, w: &Tensor, b: Option<&Tensor>, u: &Tensor, fused: bool, dtype: DType) -> Vec<Tensor> {
        let var = |t: &Tensor| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap();
        let (xv, wv) = (var(x), var(w));
        let bv = b.map(var);
        let y = if fused {
            linear(&xv, &wv, bv.as_ref().map(|v| v.as_tensor())).unwrap()
        } else {
            // The composite reference: flatten, matmul with the transpose, broadcast the bias.
            let inp = w.dim(1).unwrap();
            let y = xv.reshape(((), inp)).unwrap().matmul(&wv.t().unwrap()).unwrap();
            let y = match &bv {
                Some(b) => y.broadcast_add(b).unwrap(),
                None => y,
            };
            let mut shape = x.dims().to_vec();
            *shape.last_mut().unwrap() = w.dim(0).unwrap();
            y.reshape(shape).unwrap()
        };
        let loss = (&y * u.to_dtype(dtype).unwrap()).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        let mut out = vec![y, g.get(&xv).unwrap().clone(), g.get(&wv).unwrap().clone()];
        if let Some(b) = &bv {
            out.push(g.get(b).unwrap().clone());
        }
        out
    }

    #[test]
    fn forward_and_gradients_match_the_composite_layer() {
        let mut rng = Rng::new(1);
        for (lead, inp, out, bias) in [
            (vec![3, 7], 13, 9, true),
            (vec![300], 64, 40, true),
            (vec![2, 5], 8, 3, false),
        ] {
            let x = randn(&mut rng, &[lead.as_slice(), &[inp]].concat());
            let w = randn(&mut rng, &[out, inp]);
            let b = randn(&mut rng, &[out]);
            let u = randn(&mut rng, &[lead.as_slice(), &[out]].concat());
            let b = bias.then_some(&b);
            let fused = grads(&x, &w, b, &u, true, DType::F32);
            let reference = grads(&x, &w, b, &u, false, DType::F64);
            for (i, (f, r)) in fused.iter().zip(&reference).enumerate() {
                assert_eq!(f.dims(), r.dims(), "output {i}");
                let e = rel_err(f, r);
                assert!(e <= 1e-5, "output {i} (y, dx, dW, db) relative error {e}");
            }
        }
    }

    #[test]
    fn linear_gelu_matches_the_linear_layer_followed_by_gelu() {
        let mut rng = Rng::new(4);
        let (x, w, b, u) = (
            randn(&mut rng, &[2, 9, 12]),
            randn(&mut rng, &[20, 12]),
            randn(&mut rng, &[20]),
            randn(&mut rng, &[2, 9, 20]),
        );
        let run = |fused: bool, dtype: DType| {
            let var = |t: &Tensor| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap();
            let (xv, wv, bv) = (var(&x), var(&w), var(&b));
            let y = if fused {
                linear_gelu(&xv, &wv, &bv).unwrap()
            } else {
                let y = xv.reshape((18, 12)).unwrap().matmul(&wv.t().unwrap()).unwrap();
                y.broadcast_add(&bv)
                    .unwrap()
                    .gelu_erf()
                    .unwrap()
                    .reshape((2, 9, 20))
                    .unwrap()
            };
            let loss = (&y * u.to_dtype(dtype).unwrap()).unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            [
                y,
                g.get(&xv).unwrap().clone(),
                g.get(&wv).unwrap().clone(),
                g.get(&bv).unwrap().clone(),
            ]
        };
        for (i, (f, r)) in run(true, DType::F32).iter().zip(&run(false, DType::F64)).enumerate() {
            assert_eq!(f.dims(), r.dims());
            let e = rel_err(f, r);
            assert!(e <= 1e-4, "output {i} (y, dx, dW, db) relative error {e}");
        }
        // Without anything to differentiate, no pre-activation is kept and the values agree.
        let plain = linear_gelu(&x, &w, &b).unwrap();
        assert!(rel_err(&plain, &run(false, DType::F64)[0]) <= 1e-4);
    }

    #[test]
    fn linear_residual_is_the_layer_plus_the_residual() {
        let mut rng = Rng::new(6);
        let (x, w, b, r) = (
            randn(&mut rng, &[3, 70, 24]),
            randn(&mut rng, &[40, 24]),
            randn(&mut rng, &[40]),
            randn(&mut rng, &[3, 70, 40]),
        );
        for bias in [Some(&b), None] {
            let fused = linear_residual(&x, &w, bias, &r).unwrap();
            let reference = (linear(&x, &w, bias).unwrap() + &r).unwrap();
            assert_eq!(fused.dims(), &[3, 70, 40]);
            let e = rel_err(&fused, &reference);
            assert!(e <= 1e-6, "bias {}: relative error {e}", bias.is_some());
        }
        let e = linear_residual(&x, &w, Some(&b), &randn(&mut rng, &[3, 70, 41])).unwrap_err();
        assert!(
            e.to_string().contains("residual [3, 70, 41] for an output [3, 70, 40]"),
            "{e}"
        );
    }

    #[test]
    fn a_frozen_weight_gets_no_gradient_and_the_input_still_does() {
        let mut rng = Rng::new(2);
        let x = Var::from_tensor(&randn(&mut rng, &[4, 6])).unwrap();
        let w = randn(&mut rng, &[3, 6]);
        let b = randn(&mut rng, &[3]);
        let loss = linear(&x, &w, Some(&b)).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        assert!(g.get(&w).is_none() && g.get(&b).is_none());
        assert_eq!(g.get(&x).unwrap().dims(), &[4, 6]);
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let mut rng = Rng::new(3);
        let (x, w, b, u) = (
            randn(&mut rng, &[1000, 48]),
            randn(&mut rng, &[40, 48]),
            randn(&mut rng, &[40]),
            randn(&mut rng, &[1000, 40]),
        );
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut all = grads(&x, &w, Some(&b), &u, true, DType::F32);
                let (xv, wv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
                let y = linear_gelu(&xv, &wv, &b).unwrap();
                let g = (&y * &u).unwrap().sum_all().unwrap().backward().unwrap();
                all.extend([y, g.get(&xv).unwrap().clone(), g.get(&wv).unwrap().clone()]);
                all.iter()
                    .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(run(1), run(2));
    }

    #[test]
    fn a_weight_of_the_wrong_width_is_an_error() {
        let x = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::zeros((3, 4), DType::F32, &Device::Cpu).unwrap();
        let e = linear(&x, &w, None).unwrap_err().to_string();
        assert!(e.contains("does not end in the weight's width 4"), "{e}");
    }
}

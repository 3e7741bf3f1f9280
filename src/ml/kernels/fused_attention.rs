//! Fused multi-head self-attention core (`softmax(q·kᵀ·scale + mask)·v` per head, with dropout on
//! the probabilities) as one candle `CustomOp3` on `(q, k, v)` with an analytic backward pass.
//!
//! The composite path in [`crate::ml::models::attention`] copies q, k and v into head-major tensors, builds
//! the scores, the masked scores, the probabilities and the dropped probabilities as separate
//! `[b, heads, s, s]` tensors and merges the heads with another copy; candle's autograd then
//! allocates a tensor for every one of those steps again in the backward pass. Here each head's
//! products read q, k and v in place through strided views (`[b, s, heads·head_dim]`, row stride
//! `heads·head_dim`) and write the context straight into its columns of the output; the only
//! `[b, heads, s, s]` buffer is the probabilities before dropout, kept for the backward pass —
//! and only when an input tracks gradients: in inference each task reuses one `s × s` buffer
//! that stays in cache (the ViT's 15 MB of probabilities per layer are never written out).
//!
//! Work is split by batch element on the current rayon pool, and each batch element is computed
//! by one thread in a fixed order (its products on [`Threads::One`]), so results do not depend on
//! the thread count. The dropout mask is counter based (a hash of the seed and the element
//! index), so it is the same whatever the thread count and is regenerated in the backward pass
//! instead of being stored; [`dropout_multipliers`] gives the same mask as a vector.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fused::{dispatch, dot8, exp_f32, fusable, locked, max8, slice, sum8};
use super::gemm::{matmul, uninit_vec, Mat, MatMut, Threads};
use super::rng::CounterMask;

/// Dropout on the attention probabilities: probability `p`, masks from `seed`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionDropout {
    /// Drop probability, in `[0, 1)`.
    pub p: f64,
    /// Seed of the counter-based mask.
    pub seed: u64,
}

// ------------------------------------------------------------------------------------------
// Dropout mask.

/// The mask of `d` (a [`CounterMask`]); `None` when nothing is dropped, an error unless
/// `0 ≤ p < 1`.
fn counter_mask(d: &AttentionDropout) -> Result<Option<CounterMask>> {
    if !(d.p >= 0.0 && d.p < 1.0) {
        candle_core::bail!("attention: dropout probability {} is not in [0, 1)", d.p)
    }
    Ok(CounterMask::new(d.p, d.seed))
}

/// The dropout multipliers the op uses (0 or 1/(1-p)) for probabilities of shape `[b, heads, s, s]`,
/// in that row-major order — for the composite reference in tests and for anyone who needs the
/// same mask. All ones when `p = 0`. Panics unless `0 ≤ p < 1`.
pub fn dropout_multipliers(b: usize, heads: usize, s: usize, d: &AttentionDropout) -> Vec<f32> {
    let keep = counter_mask(d).expect("dropout_multipliers: invalid probability");
    let n = b * heads * s * s;
    match keep {
        Some(keep) => keep.values(n),
        None => vec![1.0; n],
    }
}

// ------------------------------------------------------------------------------------------
// Row kernels.

// Rows of `n` scaled scores → probabilities, in place: add the key mask (`mask` empty: none),
// subtract the row max, exponentiate, normalise.
dispatch!(softmax_rows, (p: &mut [f32], n: usize, mask: &[f32]), {
    for row in p.chunks_exact_mut(n) {
        if !mask.is_empty() {
            for (x, &m) in row.iter_mut().zip(mask) {
                *x += m;
            }
        }
        let max = max8(row);
        for x in row.iter_mut() {
            *x = exp_f32(*x - max);
        }
        let inv = 1.0 / sum8(row);
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
});

// `out = x ⊙ m`.
dispatch!(mul_into, (x: &[f32], m: &[f32], out: &mut [f32]), {
    for ((o, &a), &b) in out.iter_mut().zip(x).zip(m) {
        *o = a * b;
    }
});

// Softmax backward through dropout, rows of `n`, in place on `dp` (= dP', the gradient of the
// dropped probabilities): dS = P ⊙ (dP' ⊙ m − Σ dP'·P'), with `a` = P' = P ⊙ m (`m` empty: no
// dropout, `a` = P).
dispatch!(softmax_bwd_rows, (p: &[f32], a: &[f32], dp: &mut [f32], m: &[f32], n: usize), {
    for (i, (pr, dr)) in p.chunks_exact(n).zip(dp.chunks_exact_mut(n)).enumerate() {
        let ar = &a[i * n..(i + 1) * n];
        let t = dot8(dr, ar);
        if m.is_empty() {
            for (o, &pp) in dr.iter_mut().zip(pr) {
                *o = pp * (*o - t);
            }
        } else {
            let mr = &m[i * n..(i + 1) * n];
            for ((o, &pp), &mm) in dr.iter_mut().zip(pr).zip(mr) {
                *o = pp * (*o * mm - t);
            }
        }
    }
});

// ------------------------------------------------------------------------------------------
// The op.

/// Sizes of one call.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    s: usize,
    heads: usize,
    d: usize,
    /// Row stride of q, k, v and their gradients: `heads·head_dim`, or three times that when
    /// they are packed side by side in one tensor.
    rs: usize,
}

/// Multiply-adds worth a parallel task of their own (below that, waking another thread costs
/// more than the work: tiny models run their whole batch on the calling thread).
const MIN_TASK_WORK: usize = 1 << 18;

impl Dims {
    /// Batch elements per parallel task: at least one, and at least [`MIN_TASK_WORK`] of work.
    fn batches_per_task(&self) -> usize {
        let per_element = self.heads * self.s * self.s * self.d;
        MIN_TASK_WORK.div_ceil(per_element.max(1))
    }

    /// Width of a row of q, k, v and the output (`heads·head_dim`).
    fn hd(&self) -> usize {
        self.heads * self.d
    }

    /// Head `h` of a batch element's `[s, heads·head_dim]` block (the output or its gradient),
    /// as an `s × d` view.
    fn head<'a>(&self, x: &'a [f32], h: usize) -> Mat<'a> {
        Mat::strided(&x[h * self.d..], self.s, self.d, self.hd(), 1)
    }

    fn head_mut<'a>(&self, x: &'a mut [f32], h: usize) -> MatMut<'a> {
        MatMut::strided(&mut x[h * self.d..], self.s, self.d, self.hd(), 1)
    }

    /// Head `h` of one of q, k, v in a batch element's block (rows `rs` apart).
    fn input_head<'a>(&self, x: &'a [f32], h: usize) -> Mat<'a> {
        Mat::strided(&x[h * self.d..], self.s, self.d, self.rs, 1)
    }

    fn input_head_mut<'a>(&self, x: &'a mut [f32], h: usize) -> MatMut<'a> {
        MatMut::strided(&mut x[h * self.d..], self.s, self.d, self.rs, 1)
    }
}

/// Where one batch element's gradients of q, k and v go.
enum GradBlocks<'a> {
    /// Three `[s, heads·head_dim]` blocks.
    Split([&'a mut [f32]; 3]),
    /// One `[s, 3·heads·head_dim]` block: q, k and v side by side in every row.
    Packed(&'a mut [f32]),
}

impl GradBlocks<'_> {
    /// Head `h` of the gradient of input `which` (0: q, 1: k, 2: v).
    fn head_mut(&mut self, dims: Dims, which: usize, h: usize) -> MatMut<'_> {
        match self {
            Self::Split(blocks) => dims.input_head_mut(blocks[which], h),
            Self::Packed(block) => dims.input_head_mut(&mut block[which * dims.hd()..], h),
        }
    }
}

/// Forward of batch element `bi`: probabilities of every head into `p` (`[heads, s, s]`, before
/// dropout; or one `[s, s]` buffer that each head overwrites, when they are not kept), context
/// into `out` (`[s, heads·head_dim]`). `scratch`: `2·s²` floats with dropout.
#[allow(clippy::too_many_arguments)]
fn forward_one(
    dims: Dims,
    bi: usize,
    (q, k, v): (&[f32], &[f32], &[f32]),
    mask: &[f32],
    scale: f32,
    keep: Option<&CounterMask>,
    out: &mut [f32],
    p: &mut [f32],
    scratch: &mut [f32],
) {
    let (s, ss) = (dims.s, dims.s * dims.s);
    let per_head = p.len() == dims.heads * ss;
    for h in 0..dims.heads {
        let at = if per_head { h * ss } else { 0 };
        let ph = &mut p[at..at + ss];
        matmul(
            MatMut::rows(ph, s, s),
            dims.input_head(q, h),
            dims.input_head(k, h).t(),
            scale,
            false,
            Threads::One,
        );
        softmax_rows(ph, s, mask);
        let a: &[f32] = match keep {
            Some(keep) => {
                let (m, a) = scratch.split_at_mut(ss);
                keep.fill(((bi * dims.heads + h) * ss) as u64, m);
                mul_into(ph, m, a);
                a
            }
            None => ph,
        };
        matmul(
            dims.head_mut(out, h),
            Mat::rows(a, s, s),
            dims.input_head(v, h),
            1.0,
            false,
            Threads::One,
        );
    }
}

/// Backward of batch element `bi`: writes its blocks of dq, dk, dv into `grads` from the saved
/// probabilities `p` (`[heads, s, s]`) and the output gradient `g` (`[s, heads·head_dim]`).
/// `scratch`: `s²` floats, `3·s²` with dropout.
#[allow(clippy::too_many_arguments)]
fn backward_one(
    dims: Dims,
    bi: usize,
    (q, k, v, g): (&[f32], &[f32], &[f32], &[f32]),
    p: &[f32],
    scale: f32,
    keep: Option<&CounterMask>,
    grads: &mut GradBlocks,
    [need_q, need_k, need_v]: [bool; 3],
    scratch: &mut [f32],
) {
    let (s, ss) = (dims.s, dims.s * dims.s);
    let (dp, rest) = scratch.split_at_mut(ss);
    let (mbuf, abuf) = rest.split_at_mut(rest.len() / 2);
    for h in 0..dims.heads {
        let ph = &p[h * ss..(h + 1) * ss];
        let (a, m): (&[f32], &[f32]) = match keep {
            Some(keep) => {
                keep.fill(((bi * dims.heads + h) * ss) as u64, mbuf);
                mul_into(ph, mbuf, abuf);
                (abuf, mbuf)
            }
            None => (ph, &[]),
        };
        let gh = dims.head(g, h);
        // dV_h = P'ᵀ·dC_h; dP' = dC_h·v_hᵀ.
        if need_v {
            matmul(
                grads.head_mut(dims, 2, h),
                Mat::rows(a, s, s).t(),
                gh,
                1.0,
                false,
                Threads::One,
            );
        }
        if !(need_q || need_k) {
            continue;
        }
        matmul(
            MatMut::rows(dp, s, s),
            gh,
            dims.input_head(v, h).t(),
            1.0,
            false,
            Threads::One,
        );
        // dS = P ⊙ (dP' ⊙ m − rowsum(dP' ⊙ P')).
        softmax_bwd_rows(ph, a, dp, m, s);
        // dQ_h = scale·dS·k_h; dK_h = scale·dSᵀ·q_h.
        let ds = Mat::rows(dp, s, s);
        if need_q {
            matmul(
                grads.head_mut(dims, 0, h),
                ds,
                dims.input_head(k, h),
                scale,
                false,
                Threads::One,
            );
        }
        if need_k {
            matmul(
                grads.head_mut(dims, 1, h),
                ds.t(),
                dims.input_head(q, h),
                scale,
                false,
                Threads::One,
            );
        }
    }
}

/// The attention core on `(q, k, v)` (a `CustomOp3`) or on one tensor holding them side by side
/// (`packed`, a `CustomOp1`); keeps the probabilities of its forward pass for `bwd`.
struct AttentionOp {
    heads: usize,
    head_dim: usize,
    scale: f32,
    /// Additive key mask, `[b, s]`.
    mask: Option<Vec<f32>>,
    keep: Option<CounterMask>,
    /// q, k and v are one `[b, s, 3·heads·head_dim]` tensor.
    packed: bool,
    /// Keep the probabilities for `bwd` (some input tracks gradients); without, every task
    /// reuses one cache-resident `s × s` buffer (inference).
    keep_probs: bool,
    /// Probabilities before dropout, `[b, heads, s, s]`, set by the forward pass.
    probs: Mutex<Vec<f32>>,
}

impl AttentionOp {
    /// Sizes from the layout of q (or of the packed input).
    fn dims(&self, l: &Layout) -> Result<Dims> {
        let &[b, s, width] = l.dims() else {
            candle_core::bail!("attention: expected [batch, seq, heads·head_dim], got {:?}", l.dims())
        };
        let hd = self.heads * self.head_dim;
        let rs = if self.packed { 3 * hd } else { hd };
        if width != rs {
            candle_core::bail!(
                "attention: width {width} is not {}{} heads × {}",
                if self.packed { "3 × " } else { "" },
                self.heads,
                self.head_dim
            )
        }
        if let Some(m) = &self.mask {
            if m.len() != b * s {
                candle_core::bail!("attention: key mask of {} elements for batch {b} × seq {s}", m.len())
            }
        }
        Ok(Dims {
            b,
            s,
            heads: self.heads,
            d: self.head_dim,
            rs,
        })
    }

    fn mask_row(&self, bi: usize, s: usize) -> &[f32] {
        match &self.mask {
            Some(m) => &m[bi * s..(bi + 1) * s],
            None => &[],
        }
    }

    /// Batch element `bi`'s blocks of q, k and v: `xs` holds the three inputs, or the packed
    /// one three times.
    fn batch_inputs<'a>(&self, dims: Dims, bi: usize, xs: [&'a [f32]; 3]) -> (&'a [f32], &'a [f32], &'a [f32]) {
        let r = bi * dims.s * dims.rs..(bi + 1) * dims.s * dims.rs;
        if self.packed {
            let block = &xs[0][r];
            (block, &block[dims.hd()..], &block[2 * dims.hd()..])
        } else {
            (&xs[0][r.clone()], &xs[1][r.clone()], &xs[2][r])
        }
    }

    /// The context (`[b, s, heads·head_dim]`) of inputs `xs` (see [`Self::batch_inputs`]);
    /// keeps the probabilities.
    fn forward(&self, dims: Dims, xs: [&[f32]; 3]) -> Vec<f32> {
        let (s, hd, ss) = (dims.s, dims.hd(), dims.s * dims.s);
        let mut out = uninit_vec(dims.b * s * hd);
        if out.is_empty() {
            return out;
        }
        let scratch = if self.keep.is_some() { 2 * ss } else { 0 };
        let one = |bi: usize, ob: &mut [f32], pb: &mut [f32], sc: &mut [f32]| {
            let inputs = self.batch_inputs(dims, bi, xs);
            forward_one(
                dims,
                bi,
                inputs,
                self.mask_row(bi, s),
                self.scale,
                self.keep.as_ref(),
                ob,
                pb,
                sc,
            );
        };
        let tasks = out
            .par_chunks_mut(s * hd)
            .enumerate()
            .with_min_len(dims.batches_per_task());
        if self.keep_probs {
            let mut probs = uninit_vec(dims.b * dims.heads * ss);
            tasks
                .zip(probs.par_chunks_mut(dims.heads * ss))
                .for_each_init(|| uninit_vec(scratch), |sc, ((bi, ob), pb)| one(bi, ob, pb, sc));
            *self.probs.lock().unwrap_or_else(|e| e.into_inner()) = probs;
        } else {
            tasks.for_each_init(
                || uninit_vec(ss + scratch),
                |sc, (bi, ob)| {
                    let (pb, sc) = sc.split_at_mut(ss);
                    one(bi, ob, pb, sc)
                },
            );
        }
        out
    }

    /// Gradients of the inputs `inputs` (q, k, v, or the packed one) from the output gradient:
    /// one per input, `None` for an input that does not track gradients.
    fn backward(&self, inputs: &[&Tensor], grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let op = "attention-bwd";
        let grad = grad.contiguous()?;
        let guards: Vec<_> = inputs.iter().chain([&&grad]).map(|t| locked(t)).collect();
        let mut xs = guards.iter().map(|g| g.values(op)).collect::<Result<Vec<_>>>()?;
        let g = xs.pop().expect("the gradient is the last");
        let dims = self.dims(inputs[0].layout())?;
        let (s, hd) = (dims.s, dims.hd());
        if xs.iter().any(|x| x.len() != dims.b * s * dims.rs) || g.len() != dims.b * s * hd {
            candle_core::bail!("{op}: inputs and gradient differ in size")
        }
        let probs = self.probs.lock().unwrap_or_else(|e| e.into_inner());
        if probs.len() != dims.b * dims.heads * s * s {
            candle_core::bail!("{op}: no saved probabilities of the right size")
        }
        let xs3 = if self.packed { [xs[0]; 3] } else { [xs[0], xs[1], xs[2]] };
        // Only the inputs that track gradients get one (e.g. a frozen projection's output does
        // not); the others' buffers are never written nor returned.
        let need: [bool; 3] = if self.packed {
            [inputs[0].track_op(); 3]
        } else {
            [inputs[0].track_op(), inputs[1].track_op(), inputs[2].track_op()]
        };
        let scratch = if self.keep.is_some() { 3 * s * s } else { s * s };
        let one = |bi: usize, grads: &mut GradBlocks, sc: &mut Vec<f32>, pb: &[f32]| {
            let (q, k, v) = self.batch_inputs(dims, bi, xs3);
            let gb = &g[bi * s * hd..(bi + 1) * s * hd];
            backward_one(
                dims,
                bi,
                (q, k, v, gb),
                pb,
                self.scale,
                self.keep.as_ref(),
                grads,
                need,
                sc,
            );
        };
        let per_task = dims.batches_per_task();
        let block = s * dims.rs;
        let shape = |width: usize| (dims.b, s, width);
        let dev = inputs[0].device();
        if self.packed {
            if !need[0] {
                return Ok(vec![None]);
            }
            let mut d = uninit_vec(dims.b * block);
            if !d.is_empty() {
                d.par_chunks_mut(block)
                    .zip(probs.par_chunks(dims.heads * s * s))
                    .enumerate()
                    .with_min_len(per_task)
                    .for_each_init(
                        || uninit_vec(scratch),
                        |sc, (bi, (db, pb))| one(bi, &mut GradBlocks::Packed(db), sc, pb),
                    );
            }
            return Ok(vec![Some(Tensor::from_vec(d, shape(3 * hd), dev)?)]);
        }
        let n = dims.b * block;
        let (mut dq, mut dk, mut dv) = (uninit_vec(n), uninit_vec(n), uninit_vec(n));
        if n > 0 {
            dq.par_chunks_mut(block)
                .zip(dk.par_chunks_mut(block))
                .zip(dv.par_chunks_mut(block))
                .zip(probs.par_chunks(dims.heads * s * s))
                .enumerate()
                .with_min_len(per_task)
                .for_each_init(
                    || uninit_vec(scratch),
                    |sc, (bi, (((dqb, dkb), dvb), pb))| one(bi, &mut GradBlocks::Split([dqb, dkb, dvb]), sc, pb),
                );
        }
        [dq, dk, dv]
            .into_iter()
            .zip(need)
            .map(|(values, needed)| needed.then(|| Tensor::from_vec(values, shape(hd), dev)).transpose())
            .collect()
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "fused-attention"
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
        let op = "attention";
        let (q, k, v) = (slice(s1, l1, op)?, slice(s2, l2, op)?, slice(s3, l3, op)?);
        if l2.dims() != l1.dims() || l3.dims() != l1.dims() {
            candle_core::bail!(
                "{op}: q {:?}, k {:?} and v {:?} differ",
                l1.dims(),
                l2.dims(),
                l3.dims()
            )
        }
        let dims = self.dims(l1)?;
        Ok((CpuStorage::F32(self.forward(dims, [q, k, v])), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut g = self.backward(&[q, k, v], grad)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten(), g.next().flatten()))
    }
}

impl CustomOp1 for AttentionOp {
    fn name(&self) -> &'static str {
        "fused-attention-packed"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = slice(s1, l1, "attention")?;
        let dims = self.dims(l1)?;
        let out = self.forward(dims, [qkv; 3]);
        Ok((CpuStorage::F32(out), Shape::from((dims.b, dims.s, dims.hd()))))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(self.backward(&[qkv], grad)?.pop().flatten())
    }
}

/// The op for `heads × head_dim` on inputs `[b, s, _]`: checks the key mask (`b·s` elements) and
/// the dropout probability.
fn op(
    b: usize,
    s: usize,
    (heads, head_dim, scale): (usize, usize, f32),
    key_mask: Option<&Tensor>,
    dropout: Option<AttentionDropout>,
    packed: bool,
    keep_probs: bool,
) -> Result<AttentionOp> {
    if heads == 0 || head_dim == 0 {
        candle_core::bail!("fused attention: {heads} heads of width {head_dim}")
    }
    let mask = match key_mask {
        Some(m) => {
            if m.elem_count() != b * s || m.dims().first() != Some(&b) || m.dims().last() != Some(&s) {
                candle_core::bail!("fused attention: key mask {:?} for batch {b} × seq {s}", m.dims())
            }
            Some(m.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?)
        }
        None => None,
    };
    let keep = match &dropout {
        Some(d) => counter_mask(d)?,
        None => None,
    };
    Ok(AttentionOp {
        heads,
        head_dim,
        scale,
        mask,
        keep,
        packed,
        keep_probs,
        probs: Mutex::new(Vec::new()),
    })
}

/// Context of multi-head attention: q, k, v are `[b, s, heads·head_dim]` (f32, CPU; made
/// contiguous here if they are not), `key_mask` an optional ADDITIVE mask with the `b·s` elements
/// of a `[b, s]` tensor (`[b, 1, 1, s]` works too: 0 or a large negative number per key; no
/// gradient), `scale` usually `1/√head_dim`. Returns `[b, s, heads·head_dim]` (heads merged,
/// before the output projection). Differentiable w.r.t. q, k and v.
///
/// Errors (the caller can take the composite path) for inputs that are not f32 on the CPU,
/// shapes that disagree, or a dropout probability outside `[0, 1)`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    head_dim: usize,
    scale: f32,
    key_mask: Option<&Tensor>,
    dropout: Option<AttentionDropout>,
) -> Result<Tensor> {
    if !(fusable(q) && fusable(k) && fusable(v)) {
        candle_core::bail!("fused attention: q, k and v must be f32 tensors on the CPU")
    }
    let (b, s, hd) = q.dims3()?;
    if k.dims() != q.dims() || v.dims() != q.dims() || hd != heads * head_dim {
        candle_core::bail!(
            "fused attention: q {:?}, k {:?}, v {:?} for {heads} heads × {head_dim}",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    let tracked = q.track_op() || k.track_op() || v.track_op();
    let op = op(b, s, (heads, head_dim, scale), key_mask, dropout, false, tracked)?;
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

/// [`attention`] on q, k and v side by side in one `[b, s, 3·heads·head_dim]` tensor (the output
/// of one projection with the three weights stacked): no copies to split them, and one gradient
/// tensor in the same layout for the backward pass (so the projection's input gets its gradient
/// from one product instead of the sum of three).
pub fn attention_packed(
    qkv: &Tensor,
    heads: usize,
    head_dim: usize,
    scale: f32,
    key_mask: Option<&Tensor>,
    dropout: Option<AttentionDropout>,
) -> Result<Tensor> {
    if !fusable(qkv) {
        candle_core::bail!("fused attention: the packed q, k, v must be an f32 tensor on the CPU")
    }
    let (b, s, width) = qkv.dims3()?;
    if width != 3 * heads * head_dim {
        candle_core::bail!("fused attention: packed q, k, v of width {width} for 3 × {heads} heads × {head_dim}")
    }
    let op = op(b, s, (heads, head_dim, scale), key_mask, dropout, true, qkv.track_op())?;
    qkv.contiguous()?.apply_op1(op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::models::layers;
    use crate::ml::testutil::{randn, rel_err, values_f64 as values};
    use crate::ml::Rng;
    use candle_core::{DType, Device, Var};

    /// The composite attention of [`crate::ml::models::attention`] from candle ops (differentiable, any
    /// float dtype): `mask` `[b, s]`, `mult` the dropout multipliers `[b, heads, s, s]`.
    fn composite(
        t: &[Tensor],
        heads: usize,
        d: usize,
        scale: f64,
        mask: Option<&Tensor>,
        mult: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, s, hd) = t[0].dims3()?;
        let dtype = t[0].dtype();
        let split = |x: &Tensor| x.reshape((b, s, heads, d))?.transpose(1, 2)?.contiguous();
        let (q, k, v) = (split(&t[0])?, split(&t[1])?, split(&t[2])?);
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(&m.to_dtype(dtype)?.reshape((b, 1, 1, s))?)?,
            None => scores,
        };
        let p = layers::softmax_composite(&scores)?;
        let p = match mult {
            Some(m) => p.mul(&m.to_dtype(dtype)?)?,
            None => p,
        };
        p.matmul(&v)?.transpose(1, 2)?.reshape((b, s, hd))
    }

    /// Output and gradients w.r.t. q, k, v of `sum(f(q, k, v)·w)`, inputs as variables of `dtype`.
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

    struct Case {
        b: usize,
        heads: usize,
        s: usize,
        d: usize,
        mask: Option<Tensor>,
        dropout: Option<AttentionDropout>,
    }

    impl Case {
        fn inputs(&self, seed: u64) -> Vec<Tensor> {
            let mut rng = Rng::new(seed);
            (0..3)
                .map(|_| randn(&mut rng, &[self.b, self.s, self.heads * self.d], 1.0))
                .collect()
        }

        fn fused(&self, t: &[Tensor]) -> Result<Tensor> {
            let scale = 1.0 / (self.d as f32).sqrt();
            attention(
                &t[0],
                &t[1],
                &t[2],
                self.heads,
                self.d,
                scale,
                self.mask.as_ref(),
                self.dropout,
            )
        }

        /// Fused (f32) against composite (f64): output and the three gradients. Returns the
        /// fused gradients.
        fn check(&self, seed: u64) -> Vec<Tensor> {
            let inputs = self.inputs(seed);
            let mult = self.dropout.map(|d| {
                let m = dropout_multipliers(self.b, self.heads, self.s, &d);
                Tensor::from_vec(m, (self.b, self.heads, self.s, self.s), &Device::Cpu).unwrap()
            });
            let mut rng = Rng::new(seed + 100);
            let w = randn(&mut rng, &[self.b, self.s, self.heads * self.d], 1.0);
            let scale = 1.0 / (self.d as f64).sqrt();
            let (yf, gf) = run(&|t| self.fused(t).unwrap(), &inputs, &w, DType::F32);
            let (yc, gc) = run(
                &|t| composite(t, self.heads, self.d, scale, self.mask.as_ref(), mult.as_ref()).unwrap(),
                &inputs,
                &w,
                DType::F64,
            );
            assert_eq!(yf.dtype(), DType::F32);
            assert_eq!(yf.dims(), yc.dims());
            let e = rel_err(&yf, &yc);
            assert!(e <= 1e-4, "forward relative error {e}");
            for (i, (a, b)) in gf.iter().zip(&gc).enumerate() {
                assert_eq!(a.dims(), b.dims());
                let e = rel_err(a, b);
                assert!(e <= 1e-4, "gradient {i}: relative error {e}");
            }
            gf
        }
    }

    /// `[b, s]` additive mask blanking the last `blank` keys of batch element `which`.
    fn key_mask(b: usize, s: usize, which: usize, blank: usize) -> Tensor {
        let m: Vec<f32> = (0..b * s)
            .map(|i| {
                if i / s == which && i % s >= s - blank {
                    f32::MIN
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::from_vec(m, (b, s), &Device::Cpu).unwrap()
    }

    #[test]
    fn only_inputs_that_track_gradients_get_one() {
        let mut rng = Rng::new(21);
        let (q, k) = (randn(&mut rng, &[2, 6, 8], 1.0), randn(&mut rng, &[2, 6, 8], 1.0));
        let v = Var::from_tensor(&randn(&mut rng, &[2, 6, 8], 1.0)).unwrap();
        let y = attention(&q, &k, &v, 2, 4, 0.5, None, None).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(&q).is_none() && g.get(&k).is_none());
        // The value gradient equals the one of the all-tracked op.
        let (qv, kv) = (Var::from_tensor(&q).unwrap(), Var::from_tensor(&k).unwrap());
        let all = attention(&qv, &kv, &v, 2, 4, 0.5, None, None).unwrap();
        let ga = all.sum_all().unwrap().backward().unwrap();
        assert_eq!(rel_err(g.get(&v).unwrap(), ga.get(&v).unwrap()), 0.0);
    }

    #[test]
    fn fused_attention_matches_the_composite_with_a_mask() {
        let case = Case {
            b: 3,
            heads: 2,
            s: 13,
            d: 5,
            mask: Some(key_mask(3, 13, 1, 4)),
            dropout: None,
        };
        case.check(1);
    }

    #[test]
    fn fused_attention_matches_the_composite_with_a_mask_and_dropout() {
        let case = Case {
            b: 3,
            heads: 2,
            s: 13,
            d: 5,
            mask: Some(key_mask(3, 13, 1, 4)),
            dropout: Some(AttentionDropout { p: 0.3, seed: 42 }),
        };
        case.check(2);
    }

    #[test]
    fn fused_attention_matches_the_composite_at_vit_size() {
        let case = Case {
            b: 2,
            heads: 3,
            s: 197,
            d: 64,
            mask: None,
            dropout: None,
        };
        case.check(3);
        let case = Case {
            dropout: Some(AttentionDropout { p: 0.1, seed: 7 }),
            ..case
        };
        case.check(4);
    }

    #[test]
    fn masked_keys_get_no_probability_and_no_gradient() {
        let (b, heads, s, d) = (3, 2, 13, 5);
        for dropout in [None, Some(AttentionDropout { p: 0.3, seed: 9 })] {
            let case = Case {
                b,
                heads,
                s,
                d,
                mask: Some(key_mask(b, s, 1, 4)),
                dropout,
            };
            let g = case.check(5);
            for gt in &g[1..] {
                let v = gt.to_vec3::<f32>().unwrap();
                for (j, row) in v[1].iter().enumerate() {
                    if j >= s - 4 {
                        assert!(row.iter().all(|&x| x == 0.0), "key {j}: {row:?}");
                    }
                }
                // Unmasked keys of the same batch element do get gradient.
                assert!(v[1][0].iter().any(|&x| x != 0.0));
            }
        }
        // A [b, 1, 1, s] mask is accepted and gives the same result as [b, s].
        let case = Case {
            b,
            heads,
            s,
            d,
            mask: Some(key_mask(b, s, 1, 4)),
            dropout: None,
        };
        let t = case.inputs(6);
        let a = case.fused(&t).unwrap();
        let m4 = key_mask(b, s, 1, 4).reshape((b, 1, 1, s)).unwrap();
        let scale = 1.0 / (d as f32).sqrt();
        let c = attention(&t[0], &t[1], &t[2], heads, d, scale, Some(&m4), None).unwrap();
        assert_eq!(values(&a), values(&c));
    }

    /// q, k and v side by side in one tensor give the very numbers of the three inputs: the
    /// context, and a gradient whose three column blocks are dq, dk and dv.
    #[test]
    fn packed_inputs_give_the_same_output_and_gradients() {
        let (b, heads, s, d) = (3, 2, 11, 4);
        let case = Case {
            b,
            heads,
            s,
            d,
            mask: Some(key_mask(b, s, 1, 3)),
            dropout: Some(AttentionDropout { p: 0.3, seed: 9 }),
        };
        let inputs = case.inputs(4);
        let mut rng = Rng::new(5);
        let w = randn(&mut rng, &[b, s, heads * d], 1.0);
        let scale = 1.0 / (d as f32).sqrt();
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let split = case.fused(&ts).unwrap();
        let split_grads = (&split * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let qkv = Var::from_tensor(&Tensor::cat(&inputs, 2).unwrap()).unwrap();
        let packed = attention_packed(qkv.as_tensor(), heads, d, scale, case.mask.as_ref(), case.dropout).unwrap();
        assert_eq!(packed.dims(), &[b, s, heads * d]);
        assert_eq!(values(&packed), values(&split));
        let grads = (&packed * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g = grads.get(qkv.as_tensor()).unwrap();
        assert_eq!(g.dims(), &[b, s, 3 * heads * d]);
        for (i, var) in vars.iter().enumerate() {
            let block = g.narrow(2, i * heads * d, heads * d).unwrap();
            assert_eq!(
                values(&block),
                values(split_grads.get(var).unwrap()),
                "gradient block {i}"
            );
        }
        let frozen = Tensor::cat(&inputs, 2).unwrap();
        assert!(
            attention_packed(&frozen, heads, d + 1, scale, None, None).is_err(),
            "width checked"
        );
    }

    #[test]
    fn inference_gives_the_same_context_and_keeps_no_probabilities() {
        // Several batch elements per task (small heads) and one per task, with mask and dropout.
        for (b, heads, s, d) in [(6, 2, 9, 4), (3, 3, 70, 16)] {
            let mask = key_mask(b, s, 1, 3);
            let dropout = Some(AttentionDropout { p: 0.25, seed: 2 });
            let qkv = Tensor::cat(
                &Case {
                    b,
                    heads,
                    s,
                    d,
                    mask: None,
                    dropout: None,
                }
                .inputs(11),
                2,
            )
            .unwrap();
            let scale = 1.0 / (d as f32).sqrt();
            let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let tracked = Var::from_tensor(&qkv).unwrap();
            let trained = attention_packed(tracked.as_tensor(), heads, d, scale, Some(&mask), dropout).unwrap();
            let inferred = attention_packed(&qkv, heads, d, scale, Some(&mask), dropout).unwrap();
            assert_eq!(values(&inferred), values(&trained), "b {b}, s {s}");
            // The op itself: probabilities kept only when something tracks gradients.
            for keep in [false, true] {
                let op = op(b, s, (heads, d, scale), Some(&mask), dropout, true, keep).unwrap();
                let dims = op.dims(qkv.layout()).unwrap();
                let x = values(&qkv);
                assert_eq!(op.forward(dims, [&x; 3]), values(&trained));
                let kept = op.probs.lock().unwrap().len();
                assert_eq!(kept, if keep { b * heads * s * s } else { 0 });
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let (b, heads, s, d) = (5, 3, 37, 12);
        let case = Case {
            b,
            heads,
            s,
            d,
            mask: Some(key_mask(b, s, 2, 9)),
            dropout: Some(AttentionDropout { p: 0.2, seed: 3 }),
        };
        let inputs = case.inputs(7);
        let mut rng = Rng::new(8);
        let w = randn(&mut rng, &[b, s, heads * d], 1.0);
        let all = |threads: usize| -> Vec<Vec<f32>> {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
                let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
                let y = case.fused(&ts).unwrap();
                let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
                let mut out = vec![y.flatten_all().unwrap().to_vec1().unwrap()];
                for v in &vars {
                    out.push(grads.get(v).unwrap().flatten_all().unwrap().to_vec1().unwrap());
                }
                out
            })
        };
        let one = all(1);
        assert_eq!(one, all(2));
        assert_eq!(one, all(3));
        // Nor on the instruction set (see `fused`'s test of the same name).
        crate::ml::kernels::isa::on_every_path(|path| assert_eq!(all(2), one, "the {} path differs", path.name()));
    }

    #[test]
    fn dropout_mask_keeps_about_one_minus_p_and_follows_the_seed() {
        let d = AttentionDropout { p: 0.1, seed: 1 };
        // 4 · 2 · 112² = 100 352 entries.
        let m = dropout_multipliers(4, 2, 112, &d);
        assert_eq!(m.len(), 100_352);
        let kept = m.iter().filter(|&&x| x != 0.0).count() as f64 / m.len() as f64;
        assert!((kept - 0.9).abs() < 0.01, "kept {kept}");
        assert!(m.iter().all(|&x| x == 0.0 || x == 1.0 / 0.9));
        assert_eq!(m, dropout_multipliers(4, 2, 112, &d));
        let other = dropout_multipliers(4, 2, 112, &AttentionDropout { p: 0.1, seed: 2 });
        let same = m.iter().zip(&other).filter(|(a, b)| a == b).count() as f64 / m.len() as f64;
        // Independent masks agree on about 0.9² + 0.1² = 82% of the entries.
        assert!((same - 0.82).abs() < 0.02, "agreement {same}");
        // Other probabilities.
        for p in [0.5f64, 0.9] {
            let m = dropout_multipliers(1, 1, 300, &AttentionDropout { p, seed: 5 });
            let kept = m.iter().filter(|&&x| x != 0.0).count() as f64 / m.len() as f64;
            assert!((kept - (1.0 - p)).abs() < 0.01, "p {p}: kept {kept}");
        }
        let none = dropout_multipliers(2, 2, 5, &AttentionDropout { p: 0.0, seed: 5 });
        assert!(none.iter().all(|&x| x == 1.0));
        // p = 0 is the same as no dropout.
        let case = Case {
            b: 2,
            heads: 2,
            s: 9,
            d: 4,
            mask: None,
            dropout: Some(AttentionDropout { p: 0.0, seed: 5 }),
        };
        let t = case.inputs(9);
        let a = case.fused(&t).unwrap();
        let b = Case { dropout: None, ..case }.fused(&t).unwrap();
        assert_eq!(values(&a), values(&b));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut rng = Rng::new(10);
        let x = randn(&mut rng, &[2, 5, 8], 1.0);
        let x64 = x.to_dtype(DType::F64).unwrap();
        assert!(!fusable(&x64) && fusable(&x));
        assert!(attention(&x64, &x64, &x64, 2, 4, 0.5, None, None).is_err());
        assert!(attention(&x, &x, &x, 3, 4, 0.5, None, None).is_err());
        for p in [-0.1f64, 1.0, f64::NAN] {
            assert!(attention(&x, &x, &x, 2, 4, 0.5, None, Some(AttentionDropout { p, seed: 0 })).is_err());
        }
        let bad_mask = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(attention(&x, &x, &x, 2, 4, 0.5, Some(&bad_mask), None).is_err());
        // Non-contiguous inputs are made contiguous.
        let xt = randn(&mut rng, &[2, 8, 5], 1.0).transpose(1, 2).unwrap();
        let a = attention(&xt, &x, &x, 2, 4, 0.5, None, None).unwrap();
        let b = attention(&xt.contiguous().unwrap(), &x, &x, 2, 4, 0.5, None, None).unwrap();
        assert_eq!(values(&a), values(&b));
    }

    /// Forward + backward times of the fused and the composite path (2 threads; prints only).
    #[test]
    #[ignore]
    fn timing_fused_against_composite() {
        use std::time::Instant;
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        pool.install(|| {
            for (b, heads, s, d) in [(32usize, 4usize, 64usize, 64usize), (32, 3, 197, 64)] {
                for dropout in [None, Some(AttentionDropout { p: 0.1, seed: 1 })] {
                    let case = Case {
                        b,
                        heads,
                        s,
                        d,
                        mask: None,
                        dropout,
                    };
                    let inputs = case.inputs(1);
                    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
                    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
                    let scale = 1.0 / (d as f64).sqrt();
                    let fused = || case.fused(&ts).unwrap();
                    let comp = || {
                        // As in attention.rs: fused softmax kernel and dropout multiplication.
                        let (bb, ss, hd) = ts[0].dims3().unwrap();
                        let split = |x: &Tensor| x.reshape((bb, ss, heads, d))?.transpose(1, 2)?.contiguous();
                        let (q, k, v) = (split(&ts[0]).unwrap(), split(&ts[1]).unwrap(), split(&ts[2]).unwrap());
                        let scores = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
                        let p = layers::softmax_last_dim(&scores).unwrap();
                        let p = match dropout {
                            Some(dr) => {
                                crate::ml::kernels::fused::mul_mask(&p, dropout_multipliers(bb, heads, ss, &dr))
                                    .unwrap()
                            }
                            None => p,
                        };
                        p.matmul(&v)
                            .unwrap()
                            .transpose(1, 2)
                            .unwrap()
                            .reshape((bb, ss, hd))
                            .unwrap()
                    };
                    for (name, f) in [("fused", &fused as &dyn Fn() -> Tensor), ("composite", &comp)] {
                        // Upstream gradient of ones (`y.backward()`): no loss ops in the timing.
                        let iters = 10;
                        let (mut tf, mut tb) = (Vec::new(), Vec::new());
                        for i in 0..=iters {
                            let t0 = Instant::now();
                            let y = f();
                            let t1 = Instant::now();
                            let g = y.backward().unwrap();
                            let t2 = Instant::now();
                            assert!(g.get(&vars[0]).is_some());
                            if i > 0 {
                                tf.push((t1 - t0).as_secs_f64() * 1e3);
                                tb.push((t2 - t1).as_secs_f64() * 1e3);
                            }
                        }
                        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
                        let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
                        println!(
                            "b={b} heads={heads} s={s} d={d} p={:.1}: {name:9} fwd {:6.2} ms (min {:6.2})  \
                             bwd {:6.2} ms (min {:6.2})  fwd+bwd {:6.2} ms",
                            dropout.map_or(0.0, |x| x.p),
                            mean(&tf),
                            min(&tf),
                            mean(&tb),
                            min(&tb),
                            mean(&tf) + mean(&tb)
                        );
                    }
                }
            }
        });
    }
}

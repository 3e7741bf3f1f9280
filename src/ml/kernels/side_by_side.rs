//! Several linear layers on one input, their outputs side by side in one tensor, for inference:
//! `[x·W₁ᵀ + b₁, x·W₂ᵀ + b₂, …]` along the last dimension (attention's q, k and v, which the
//! fused attention core reads packed).
//!
//! Training stacks the weights into one matrix first (one product, and one gradient for `x`).
//! Where nothing needs a gradient that copy is pure overhead — BERT-mini's three `256 × 256`
//! weights are 768 KiB per layer and forward, a large part of a batch-1 forward — so here each
//! layer's product writes its own columns of the output instead, reading the weights where they
//! are.

use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

use super::fused::{fusable, locked, rows_per_task};
use super::gemm::{matmul, uninit_vec, Mat, MatMut, Threads};

/// One layer: its weight `[out, in]` and optional bias `[out]`.
pub type Layer<'a> = (&'a Tensor, Option<&'a Tensor>);

/// Whether [`linear_side_by_side`] applies: every tensor f32 on the CPU and none tracking
/// gradients (this computes no backward pass).
pub fn applies(x: &Tensor, layers: &[Layer<'_>]) -> bool {
    let all = std::iter::once(x).chain(layers.iter().flat_map(|(w, b)| std::iter::once(*w).chain(*b)));
    let mut all = all.peekable();
    all.peek().is_some() && all.all(|t| fusable(t) && !t.track_op())
}

/// The outputs of `layers` on `x` (`[.., in]`) side by side: `[.., Σ out]`, layer by layer. Each
/// output element is the same sum as [`super::fused_linear::linear`]'s. Errors unless
/// [`applies`] holds and the shapes agree.
pub fn linear_side_by_side(x: &Tensor, layers: &[Layer<'_>]) -> Result<Tensor> {
    if layers.is_empty() || !applies(x, layers) {
        candle_core::bail!("linear side by side: needs layers, and f32 CPU tensors that track no gradient")
    }
    let x = x.contiguous()?;
    let weights = layers.iter().map(|(w, _)| w.contiguous()).collect::<Result<Vec<_>>>()?;
    let biases = layers
        .iter()
        .map(|(_, b)| b.map(|b| b.flatten_all()?.contiguous()).transpose())
        .collect::<Result<Vec<_>>>()?;
    let dims = x.dims();
    let Some((&inp, lead)) = dims.split_last() else {
        candle_core::bail!("linear side by side: the input is a scalar")
    };
    let rows: usize = lead.iter().product();
    let mut outs = Vec::with_capacity(layers.len());
    for (w, b) in weights.iter().zip(&biases) {
        match w.dims() {
            [out, i] if *i == inp => outs.push(*out),
            d => candle_core::bail!("linear side by side: weight {d:?} for an input {dims:?}"),
        }
        if let Some(b) = b {
            if b.elem_count() != *outs.last().expect("pushed") {
                candle_core::bail!(
                    "linear side by side: bias of {} values for a weight {:?}",
                    b.elem_count(),
                    w.dims()
                )
            }
        }
    }
    let total: usize = outs.iter().sum();
    let y = {
        let op = "linear side by side";
        let (xg, wg) = (locked(&x), weights.iter().map(locked).collect::<Vec<_>>());
        let bg: Vec<_> = biases.iter().map(|b| b.as_ref().map(locked)).collect();
        let w = wg.iter().map(|g| g.values(op)).collect::<Result<Vec<_>>>()?;
        let b = bg
            .iter()
            .map(|g| g.as_ref().map(|g| g.values(op)).transpose())
            .collect::<Result<Vec<_>>>()?;
        forward(xg.values(op)?, (rows, inp), &w, &b, &outs)
    };
    let mut shape = dims.to_vec();
    *shape.last_mut().expect("not a scalar") = total;
    Tensor::from_vec(y, shape, &Device::Cpu)
}

/// The products into one `[rows, Σ outs]` buffer: biases first (row blocks in parallel), then
/// each layer's product added into its columns (also [`super::fused_linear`]'s one layer).
pub(crate) fn forward(
    x: &[f32],
    (rows, inp): (usize, usize),
    w: &[&[f32]],
    b: &[Option<&[f32]>],
    outs: &[usize],
) -> Vec<f32> {
    let total: usize = outs.iter().sum();
    let mut y = uninit_vec(rows * total);
    if y.is_empty() {
        return y;
    }
    fill_biases(&mut y, b, outs);
    let mut at = 0;
    for ((&out, w), bias) in outs.iter().zip(w).zip(b) {
        matmul(
            MatMut::strided(&mut y[at..], rows, out, total, 1),
            Mat::rows(x, rows, inp),
            Mat::rows(w, out, inp).t(),
            1.0,
            bias.is_some(),
            Threads::Pool,
        );
        at += out;
    }
    y
}

/// Each row of `y` (rows of `Σ outs`) gets each layer's bias in that layer's columns (columns
/// of layers without one are left as they are), row blocks in parallel.
pub(crate) fn fill_biases(y: &mut [f32], b: &[Option<&[f32]>], outs: &[usize]) {
    let total: usize = outs.iter().sum();
    if y.is_empty() || total == 0 {
        return;
    }
    y.par_chunks_mut(rows_per_task(total) * total).for_each(|block| {
        for row in block.chunks_exact_mut(total) {
            let mut at = 0;
            for (&out, bias) in outs.iter().zip(b) {
                if let Some(bias) = bias {
                    row[at..at + out].copy_from_slice(bias);
                }
                at += out;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::kernels::fused_linear;
    use crate::ml::testutil::randn;
    use crate::ml::Rng;
    use candle_core::Var;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Each block of columns is exactly that layer's own output, with or without a bias, at a
    /// batch-1 size (column panels) and a size that splits into row blocks.
    #[test]
    fn each_block_is_its_layers_output() {
        let mut rng = Rng::new(3);
        for (batch, seq) in [(1, 5), (3, 300)] {
            let x = randn(&mut rng, &[batch, seq, 24], 1.0);
            let ws = [
                randn(&mut rng, &[130, 24], 0.2),
                randn(&mut rng, &[7, 24], 0.2),
                randn(&mut rng, &[64, 24], 0.2),
            ];
            let bs = [
                Some(randn(&mut rng, &[130], 1.0)),
                None,
                Some(randn(&mut rng, &[64], 1.0)),
            ];
            let layers: Vec<Layer> = ws.iter().zip(&bs).map(|(w, b)| (w, b.as_ref())).collect();
            let y = linear_side_by_side(&x, &layers).unwrap();
            assert_eq!(y.dims(), &[batch, seq, 201]);
            let mut at = 0;
            for (w, b) in &layers {
                let own = fused_linear::linear(&x, w, *b).unwrap();
                let block = y.narrow(2, at, w.dims()[0]).unwrap();
                assert_eq!(values(&block), values(&own), "block at column {at}");
                at += w.dims()[0];
            }
        }
    }

    #[test]
    fn tracked_inputs_and_bad_shapes_are_refused() {
        let mut rng = Rng::new(4);
        let x = randn(&mut rng, &[2, 8], 1.0);
        let w = randn(&mut rng, &[4, 8], 1.0);
        let var = Var::from_tensor(&w).unwrap();
        assert!(!applies(&x, &[(var.as_tensor(), None)]));
        assert!(linear_side_by_side(&x, &[(var.as_tensor(), None)]).is_err());
        assert!(linear_side_by_side(&x, &[]).is_err());
        let narrow = randn(&mut rng, &[4, 7], 1.0);
        let e = linear_side_by_side(&x, &[(&w, None), (&narrow, None)]).unwrap_err();
        assert!(e.to_string().contains("weight [4, 7]"), "{e}");
        let short = randn(&mut rng, &[3], 1.0);
        assert!(linear_side_by_side(&x, &[(&w, Some(&short))]).is_err());
        let y = linear_side_by_side(&x, &[(&w, None), (&w, None)]).unwrap();
        assert_eq!(y.dims(), &[2, 8]);
    }
}

//! An NF4 layer as inference runs it — the 4-bit weight, an optional bias and an optional LoRA
//! adapter, `y = x·Wᵀ + b + scale·(x·Aᵀ)·Bᵀ` — and the candle ops on such layers: the plain
//! product (`linear`), bias + GELU in one pass after it (`linear_gelu`), the residual sum starting
//! the output (`linear_residual`) and several layers' outputs side by side (`linear_side_by_side`,
//! attention's q, k and v).
//!
//! The adapter is added inside each op, after the weight's product, row by row
//! ([`super::adapter_kernel`]: `t = scale·A·x_i`, then `y_i += B·t`). So every fused op runs for
//! a QLoRA model with its adapter as it does without one. (Adding `t·Bᵀ` panel by panel inside
//! the NF4 product, or `B` as extra columns of the decoded panels, measured slower on BERT-mini
//! at batch 1, and so did two matrix products after it.)
//!
//! The ops compute the forward pass only (no autograd). Where gradients must reach the input or
//! the adapter (QLoRA training), or the adapter's dropout is active, the layer runs the NF4
//! product on its own (its input's gradient through [`super::frozen_grad`]) and the adapter as
//! separate ops instead.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use rayon::prelude::*;

use super::adapter_kernel::add_adapter;
use super::fused::{bias_gelu_rows_in_place, rows_per_task, slice};
use super::fused_linear::residual_plus_bias;
use super::gemm::MatMut;
use super::nf4_kernel::PackedNf4;
use super::packed_op::linear_forward;
use super::side_by_side::fill_biases;

/// A LoRA adapter beside an NF4 weight: `+ scale · (x·Aᵀ)·Bᵀ`.
#[derive(Debug, Clone)]
pub struct LoraFactors {
    /// `A`, `[rank, cols]`.
    pub a: Vec<f32>,
    /// `Bᵀ`, `[rank, rows]` (`B` is `[rows, rank]`).
    pub bt: Vec<f32>,
    /// The adapter's rank.
    pub rank: usize,
    /// `alpha / rank`.
    pub scale: f32,
}

/// An NF4 layer for the inference ops: `x·Wᵀ (+ b) (+ scale·(x·Aᵀ)·Bᵀ)`.
#[derive(Debug, Clone)]
pub struct Nf4Layer {
    /// The 4-bit weight `W`, `[rows, cols]`.
    pub weight: Arc<PackedNf4>,
    /// The bias, one value per output.
    pub bias: Option<Arc<Vec<f32>>>,
    /// The LoRA adapter.
    pub lora: Option<Arc<LoraFactors>>,
}

impl Nf4Layer {
    /// The weight alone (no bias, no adapter).
    pub fn new(weight: Arc<PackedNf4>) -> Self {
        Self {
            weight,
            bias: None,
            lora: None,
        }
    }

    /// Errors unless the bias has one value per output and the adapter's factors fit the weight.
    fn check(&self, op: &str) -> Result<()> {
        let (n, k) = self.weight.dims();
        if let Some(b) = self.bias.as_ref().filter(|b| b.len() != n) {
            candle_core::bail!("{op}: a bias of {} values for {n} outputs", b.len())
        }
        if let Some(l) = self
            .lora
            .as_ref()
            .filter(|l| (l.a.len(), l.bt.len()) != (l.rank * k, n * l.rank))
        {
            candle_core::bail!(
                "{op}: LoRA factors of {} and {} values for rank {} and a weight [{n}, {k}]",
                l.a.len(),
                l.bt.len(),
                l.rank
            )
        }
        Ok(())
    }

    /// `dst = x·Wᵀ + adapter`, or `dst +=` that with `accumulate` (`x` `[m, cols]`, `dst`
    /// `[m, rows]` with contiguous rows, any row stride); the bias is the caller's.
    fn product(&self, x: &[f32], m: usize, dst: MatMut<'_>, accumulate: bool) {
        let MatMut {
            data,
            rows,
            cols,
            rs,
            cs,
        } = dst;
        self.weight
            .product_t(x, m, MatMut::strided(&mut *data, rows, cols, rs, cs), accumulate);
        let k = self.weight.dims().1;
        let Some(l) = self.lora.as_ref().filter(|l| m > 0 && k > 0 && l.rank > 0) else {
            return;
        };
        // Row by row: both rank-r steps with each row in L1, one pass over the rows. Every op
        // here writes whole rows (`cs = 1`), the layout the row kernel takes.
        assert_eq!(cs, 1, "nf4 layer: output rows must be contiguous");
        add_adapter(x, k, &l.a, &l.bt, l.scale, data, (cols, rs));
    }
}

/// `x·Wᵀ (+ b) (+ LoRA)` for `x` `[.., cols]` (f32, on the CPU): `[.., rows]`.
pub fn linear(x: &Tensor, layer: &Nf4Layer) -> Result<Tensor> {
    layer.check("nf4-linear")?;
    x.contiguous()?.apply_op1_no_bwd(&Nf4LinearOp {
        layer: layer.clone(),
        gelu: false,
    })
}

/// `gelu(x·Wᵀ + b (+ LoRA))` (GELU with the exact erf CDF) as one op: the product without the
/// bias, then the bias and GELU in one pass over it, in place — no bias fill before the product
/// and no second tensor after it (the dense layer's `linear_gelu` does the same). Errors unless
/// the layer has a bias.
pub fn linear_gelu(x: &Tensor, layer: &Nf4Layer) -> Result<Tensor> {
    layer.check("nf4-linear-gelu")?;
    if layer.bias.is_none() {
        candle_core::bail!("nf4-linear-gelu: a layer without a bias")
    }
    x.contiguous()?.apply_op1_no_bwd(&Nf4LinearOp {
        layer: layer.clone(),
        gelu: true,
    })
}

/// `residual + x·Wᵀ + b (+ LoRA)` as one op: the output starts as the residual plus the bias and
/// the product is added into it, so the residual connection costs no op of its own (as the dense
/// [`super::fused_linear::linear_residual`]). `residual` has the output's shape; results differ
/// from [`linear`] followed by an add by rounding only.
pub fn linear_residual(x: &Tensor, layer: &Nf4Layer, residual: &Tensor) -> Result<Tensor> {
    layer.check("nf4-linear-residual")?;
    x.contiguous()?
        .apply_op2_no_bwd(&residual.contiguous()?, &Nf4ResidualOp { layer: layer.clone() })
}

/// Several NF4 layers on one input, their outputs side by side (`[.., Σ rows]`, layer by layer)
/// as one op: each layer's bias, then its product added into its columns — attention's q, k and
/// v for the fused core, which reads them packed (the dense weights' version is
/// [`super::side_by_side`]). Each block of columns is the same sum as that layer's [`linear`].
/// Errors unless the layers share their input width.
pub fn linear_side_by_side(x: &Tensor, layers: &[Nf4Layer]) -> Result<Tensor> {
    let Some(k) = layers.first().map(|l| l.weight.dims().1) else {
        candle_core::bail!("nf4 side by side: no layers")
    };
    for l in layers {
        l.check("nf4 side by side")?;
        if l.weight.dims().1 != k {
            candle_core::bail!("nf4 side by side: layers of different input widths")
        }
    }
    x.contiguous()?.apply_op1_no_bwd(&Nf4SideBySideOp {
        layers: layers.to_vec(),
    })
}

/// The candle op of [`linear`] and [`linear_gelu`].
struct Nf4LinearOp {
    layer: Nf4Layer,
    /// GELU after the bias (the bias is then added in GELU's pass, not before the product).
    gelu: bool,
}

impl CustomOp1 for Nf4LinearOp {
    fn name(&self) -> &'static str {
        "nf4-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, k) = self.layer.weight.dims();
        let bias = self.layer.bias.as_deref().map(Vec::as_slice);
        linear_forward("nf4-linear", s, l, (n, k), |x, m, y| {
            let first = bias.filter(|_| !self.gelu);
            fill_biases(y, &[first], &[n]);
            self.layer.product(x, m, MatMut::rows(y, m, n), first.is_some());
            if let (true, Some(b), false) = (self.gelu, bias, y.is_empty()) {
                y.par_chunks_mut(rows_per_task(n) * n)
                    .for_each(|rows| bias_gelu_rows_in_place(rows, b));
            }
        })
    }
}

/// The candle op of [`linear_residual`] on `(x, residual)`.
struct Nf4ResidualOp {
    layer: Nf4Layer,
}

impl CustomOp2 for Nf4ResidualOp {
    fn name(&self) -> &'static str {
        "nf4-linear-residual"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = "nf4-linear-residual";
        let (n, k) = self.layer.weight.dims();
        let mut want = l1.dims().to_vec();
        if let Some(last) = want.last_mut() {
            *last = n;
        }
        if l2.dims() != want.as_slice() {
            candle_core::bail!("{op}: residual {:?} for an output {want:?}", l2.dims())
        }
        let r = slice(s2, l2, op)?;
        linear_forward(op, s1, l1, (n, k), |x, m, y| {
            residual_plus_bias(y, r, self.layer.bias.as_deref().map(Vec::as_slice), n);
            self.layer.product(x, m, MatMut::rows(y, m, n), true);
        })
    }
}

/// The candle op of [`linear_side_by_side`].
struct Nf4SideBySideOp {
    layers: Vec<Nf4Layer>,
}

impl CustomOp1 for Nf4SideBySideOp {
    fn name(&self) -> &'static str {
        "nf4-side-by-side"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let outs: Vec<usize> = self.layers.iter().map(|l| l.weight.dims().0).collect();
        let total: usize = outs.iter().sum();
        let k = self.layers[0].weight.dims().1;
        linear_forward("nf4-side-by-side", s, l, (total, k), |x, m, y| {
            if y.is_empty() {
                return;
            }
            let biases: Vec<Option<&[f32]>> = self
                .layers
                .iter()
                .map(|l| l.bias.as_deref().map(Vec::as_slice))
                .collect();
            fill_biases(y, &biases, &outs);
            let mut at = 0;
            for (layer, &out) in self.layers.iter().zip(&outs) {
                let dst = MatMut::strided(&mut y[at..], m, out, total, 1);
                layer.product(x, m, dst, layer.bias.is_some());
                at += out;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::kernels::isa;
    use crate::ml::kernels::nf4_kernel::random;
    use crate::ml::kernels::rng::Rng;
    use candle_core::Device;

    /// A layer of `rows × cols` random codes, with a bias and a rank-3 adapter where asked.
    fn layer(rows: usize, cols: usize, block: usize, seed: u64, bias: bool, lora: bool) -> Nf4Layer {
        let mut rng = Rng::new(seed);
        Nf4Layer {
            weight: Arc::new(random(rows, cols, block, seed)),
            bias: bias.then(|| Arc::new(rng.normal_vec(rows, 0.0, 1.0))),
            lora: lora.then(|| {
                Arc::new(LoraFactors {
                    a: rng.normal_vec(3 * cols, 0.0, 0.5),
                    bt: rng.normal_vec(3 * rows, 0.0, 0.5),
                    rank: 3,
                    scale: 0.5,
                })
            }),
        }
    }

    /// What the layer computes, with candle's own ops on its dequantized weight.
    fn composite(x: &Tensor, l: &Nf4Layer) -> Tensor {
        let dev = &Device::Cpu;
        let w = Tensor::from_vec(l.weight.dequantize(), l.weight.dims(), dev).unwrap();
        let mut y = x.broadcast_matmul(&w.t().unwrap()).unwrap();
        if let Some(b) = &l.bias {
            y = y.broadcast_add(&Tensor::new(b.as_slice(), dev).unwrap()).unwrap();
        }
        if let Some(f) = &l.lora {
            let (n, k) = l.weight.dims();
            let a = Tensor::from_vec(f.a.clone(), (f.rank, k), dev).unwrap();
            let b = Tensor::from_vec(f.bt.clone(), (f.rank, n), dev).unwrap().t().unwrap();
            let branch = x
                .broadcast_matmul(&a.t().unwrap())
                .unwrap()
                .broadcast_matmul(&b.t().unwrap())
                .unwrap();
            y = (y + (branch * f64::from(f.scale)).unwrap()).unwrap();
        }
        y
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Panics unless `got` and `want` have the same shape and agree to `tol` relative to the
    /// largest value.
    fn assert_close(got: &Tensor, want: &Tensor, tol: f32, what: &str) {
        assert_eq!(got.dims(), want.dims(), "{what}");
        let (g, w) = (values(got), values(want));
        let scale = w.iter().fold(1f32, |a, v| a.max(v.abs()));
        for (a, b) in g.iter().zip(&w) {
            assert!((a - b).abs() <= tol * scale, "{what}: {a} vs {b}");
        }
    }

    fn input(lead: &[usize], cols: usize, seed: u64) -> Tensor {
        let mut dims = lead.to_vec();
        dims.push(cols);
        let n = dims.iter().product();
        Tensor::from_vec(Rng::new(seed).normal_vec(n, 0.0, 1.0), dims, &Device::Cpu).unwrap()
    }

    /// The product with and without bias and adapter, on every path, with leading dimensions,
    /// over panels of whole vectors and a remainder panel (70 outputs); and with the adapter on
    /// the shapes whose rank-8 products the matrix kernel splits differently: few rows and many
    /// columns (batch 1: column panels) and 512+ rows (row blocks per thread).
    #[test]
    fn linear_computes_the_layer_with_its_adapter_on_every_path() {
        let x = input(&[2, 13], 96, 1);
        isa::on_every_path(|path| {
            for (bias, lora) in [(false, false), (true, false), (false, true), (true, true)] {
                let l = layer(70, 96, 32, 2, bias, lora);
                let what = format!("{} bias {bias} lora {lora}", path.name());
                assert_close(&linear(&x, &l).unwrap(), &composite(&x, &l), 1e-5, &what);
            }
        });
        for (lead, rows) in [(vec![1, 64], 256), (vec![600], 128)] {
            let x = input(&lead, 64, 3);
            let l = layer(rows, 64, 64, 4, true, true);
            for threads in [1, 2] {
                let y = crate::ml::kernels::runtime::with_threads(threads, || linear(&x, &l).unwrap());
                let what = format!("{lead:?} × {rows} on {threads} threads");
                assert_close(&y, &composite(&x, &l), 1e-5, &what);
            }
        }
    }

    /// Bias and GELU in one pass after the product, with and without an adapter, on every path;
    /// a layer without a bias, or with a bias of the wrong width, is an error.
    #[test]
    fn linear_gelu_is_gelu_of_the_biased_product() {
        let x = input(&[3, 5], 64, 3);
        isa::on_every_path(|path| {
            for lora in [false, true] {
                let l = layer(40, 64, 64, 4, true, lora);
                let want = crate::ml::kernels::fused::gelu_erf(&composite(&x, &l)).unwrap();
                let what = format!("{} lora {lora}", path.name());
                assert_close(&linear_gelu(&x, &l).unwrap(), &want, 1e-5, &what);
            }
        });
        let mut l = layer(40, 64, 64, 4, false, false);
        assert!(linear_gelu(&x, &l).is_err());
        l.bias = Some(Arc::new(vec![0.0; 39]));
        assert!(linear_gelu(&x, &l).is_err());
    }

    /// The residual connection inside the op: the product plus bias, adapter and residual, on
    /// every path; a residual of another shape is an error.
    #[test]
    fn linear_residual_adds_the_residual_inside_the_op() {
        let x = input(&[2, 7], 64, 5);
        let r = input(&[2, 7], 48, 6);
        isa::on_every_path(|path| {
            for (bias, lora) in [(false, false), (true, false), (false, true), (true, true)] {
                let l = layer(48, 64, 64, 7, bias, lora);
                let want = (composite(&x, &l) + &r).unwrap();
                let what = format!("{} bias {bias} lora {lora}", path.name());
                assert_close(&linear_residual(&x, &l, &r).unwrap(), &want, 1e-5, &what);
            }
        });
        let mut l = layer(48, 64, 64, 7, true, false);
        let e = linear_residual(&x, &l, &r.reshape((14, 48)).unwrap()).unwrap_err();
        assert!(e.to_string().contains("residual [14, 48]"), "{e}");
        l.bias = Some(Arc::new(vec![0.0; 47]));
        assert!(linear_residual(&x, &l, &r).is_err());
    }

    /// Each block of columns is exactly that layer's own output — with or without a bias and an
    /// adapter — on every path; layers of different input widths, and factors that do not fit
    /// their weight, are refused.
    #[test]
    fn side_by_side_blocks_are_each_layers_output() {
        let x = input(&[3, 5], 64, 8);
        let layers = [
            layer(48, 64, 64, 9, true, true),
            layer(20, 64, 32, 10, false, false),
            layer(64, 64, 64, 11, true, false),
            layer(32, 64, 64, 12, false, true),
        ];
        isa::on_every_path(|path| {
            let y = linear_side_by_side(&x, &layers).unwrap();
            assert_eq!(y.dims(), &[3, 5, 164]);
            let mut at = 0;
            for l in &layers {
                let rows = l.weight.dims().0;
                let block = y.narrow(2, at, rows).unwrap();
                let own = linear(&x, l).unwrap();
                assert_eq!(values(&block), values(&own), "{}: block at column {at}", path.name());
                at += rows;
            }
        });
        // No rows: an empty output, not a panic.
        let empty = input(&[0, 5], 64, 14);
        assert_eq!(linear_side_by_side(&empty, &layers).unwrap().dims(), &[0, 5, 164]);
        let narrow = layer(8, 32, 32, 13, false, false);
        assert!(linear_side_by_side(&x, &[layers[0].clone(), narrow]).is_err());
        assert!(linear_side_by_side(&x, &[]).is_err());
        let mut bad = layers[0].clone();
        bad.lora = Some(Arc::new(LoraFactors {
            a: vec![0.0; 3 * 63],
            bt: vec![0.0; 3 * 48],
            rank: 3,
            scale: 1.0,
        }));
        let e = linear(&x, &bad).unwrap_err();
        assert!(e.to_string().contains("LoRA factors"), "{e}");
        assert!(linear_side_by_side(&x, &[bad]).is_err());
    }
}

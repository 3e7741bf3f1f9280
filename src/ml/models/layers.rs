//! Trainable building blocks, differentiable end to end.
//!
//! candle-nn's fused `LayerNorm` / `layer_norm`, `softmax_last_dim` and `rms_norm` have no
//! backward pass: gradients through them are silently dropped. LayerNorm, softmax, GELU (erf)
//! and dropout here run on f32 CPU tensors as the fused kernels of
//! [`crate::ml::kernels::fused`] (with analytic backward passes), and otherwise as compositions of ops that
//! candle's autograd (`candle_core::backprop`) differentiates (`*_composite`, also the fused
//! kernels' test reference). Dropout draws its masks from the seeded [`Rng`] so that training
//! is reproducible.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use super::config::HiddenAct;
use crate::ml::kernels::frozen_grad;
use crate::ml::kernels::fused;
use crate::ml::kernels::fused_linear;
use crate::ml::kernels::nf4_device::DeviceNf4;
use crate::ml::kernels::nf4_kernel::PackedNf4;
use crate::ml::kernels::nf4_layer::{self, LoraFactors, Nf4Layer};
use crate::ml::kernels::rng::{CounterMask, Rng};
use crate::ml::kernels::sparse_kernel::{self, CsrWeight};
use std::sync::Arc;

/// Forward-pass context: train or eval mode, the dropout random stream, whether the attention
/// maps are wanted, and whether only the logits are read.
#[derive(Debug, Clone)]
pub struct ForwardCtx {
    train: bool,
    rng: Rng,
    attention_maps: bool,
    logits_only: bool,
    compute: DType,
    /// Inside a last layer that computes the first token only: the sequence length of the
    /// tensors it stands for (see [`ForwardCtx::first_token_scope`]).
    first_token_of: Option<usize>,
}

impl ForwardCtx {
    /// Eval mode: dropout is the identity.
    pub fn eval() -> Self {
        Self {
            train: false,
            rng: Rng::new(0),
            attention_maps: false,
            logits_only: false,
            compute: DType::F32,
            first_token_of: None,
        }
    }

    /// Train mode: dropout active, masks drawn from a stream seeded with `seed`.
    pub fn train(seed: u64) -> Self {
        Self {
            train: true,
            rng: Rng::new(seed),
            attention_maps: false,
            logits_only: false,
            compute: DType::F32,
            first_token_of: None,
        }
    }

    /// The same context, asking the model for every layer's attention probabilities and scores
    /// (`ModelOutput::attentions` / `attention_scores`, differentiable). Attention then runs as
    /// separate tensor ops instead of the fused kernel, which keeps no maps.
    pub fn with_attention_maps(mut self) -> Self {
        self.attention_maps = true;
        self
    }

    /// The same context with the linear layers' products computed in `dtype` (bf16 or f16 for
    /// mixed precision; their inputs, weights and outputs stay f32, so gradients reach f32 weights).
    pub fn with_compute(mut self, dtype: DType) -> Self {
        self.compute = dtype;
        self
    }

    /// The same context for a caller that reads only the logits (eval, predict, validation):
    /// the classifiers read the first token of the last layer, so that layer computes that row
    /// alone — its keys and values still come from every token — instead of the whole sequence.
    /// The output's last hidden state (and the last of `hidden_states`) then holds the first
    /// token only (`[batch, 1, hidden]`). Ignored when attention maps are asked for.
    pub fn logits_only(mut self) -> Self {
        self.logits_only = true;
        self
    }

    /// Asks (or stops asking) for the logits only (see [`ForwardCtx::logits_only`]); a training
    /// loss that reads nothing else turns it on.
    pub fn set_logits_only(&mut self, on: bool) {
        self.logits_only = on;
    }

    /// Whether the last layer may compute the first token only (see [`ForwardCtx::logits_only`]).
    pub fn first_token_only(&self) -> bool {
        self.logits_only && !self.attention_maps
    }

    /// Runs `f` as the body of a layer that computes the first token of `seq`-long sequences
    /// only: there a tensor whose next-to-last dimension is 1 holds the first rows of one whose
    /// next-to-last dimension is `seq`, and its dropout takes the multipliers those rows get in
    /// the whole tensor's mask. So in training the first-token layer drops exactly what the full
    /// layer drops in its first rows, and both give the same logits and gradients.
    pub fn first_token_scope<T>(&mut self, seq: usize, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let outer = self.first_token_of.replace(seq);
        let out = f(self);
        self.first_token_of = outer;
        out
    }

    /// Where `x` holds the first rows of a `seq`-long tensor (inside [`Self::first_token_scope`]),
    /// `seq`.
    fn first_rows_of(&self, x: &Tensor) -> Option<usize> {
        let seq = self.first_token_of.filter(|&s| s > 1)?;
        let dims = x.dims();
        (dims.len() >= 2 && dims[dims.len() - 2] == 1).then_some(seq)
    }

    /// Asks (or stops asking) for the attention maps (see [`ForwardCtx::with_attention_maps`]).
    pub fn set_attention_maps(&mut self, on: bool) {
        self.attention_maps = on;
    }

    /// Whether the attention maps are wanted.
    pub fn attention_maps(&self) -> bool {
        self.attention_maps
    }

    /// Whether dropout is active.
    pub fn is_train(&self) -> bool {
        self.train
    }

    /// The dropout random stream (e.g. to derive other training randomness).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }
}

/// Normal initialiser hint with mean 0 and standard deviation `std`.
pub fn normal(std: f64) -> Init {
    Init::Randn { mean: 0.0, stdev: std }
}

/// Fully connected layer `y = x·Wᵀ + b`, weight `[out, in]` as in PyTorch, with an optional
/// LoRA branch added to its output (`+ scale·B·A·dropout(x)`, see [`LoraBranch`]).
#[derive(Debug, Clone)]
pub struct Linear {
    /// Weight, `[out_features, in_features]`.
    pub weight: Tensor,
    /// Optional bias, `[out_features]`.
    pub bias: Option<Tensor>,
    /// Optional low-rank adapter (none unless attached by [`crate::ml::compress::lora::attach`]).
    pub lora: Option<LoraBranch>,
    /// The weight held compressed for inference (NF4 or sparse, see [`PackedWeight`]); `weight`
    /// is then a stand-in of the right shape that holds no memory and that the forward pass never
    /// reads.
    pub packed: Option<PackedWeight>,
}

impl Linear {
    /// Gets or creates `weight` (normal(0, `std`)) and `bias` (zeros) under `vb`.
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, std: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", normal(std))?;
        let bias = if bias {
            Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self::from_tensors(weight, bias))
    }

    /// Builds the layer from existing tensors.
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            lora: None,
            packed: None,
        }
    }

    /// Holds the weight compressed and frozen: `weight` becomes a stand-in without memory.
    pub fn keep_packed(&mut self, packed: PackedWeight) -> Result<()> {
        let (rows, cols) = packed.dims();
        if self.weight.dims() != [rows, cols] {
            candle_core::bail!(
                "a packed weight [{rows}, {cols}] for a layer of shape {:?}",
                self.weight.dims()
            )
        }
        self.weight = stand_in((rows, cols), DType::F32, self.weight.device())?;
        self.packed = Some(packed);
        Ok(())
    }

    /// Holds the dense f32 weight in compressed sparse rows when at least `from` of it is zero;
    /// says whether it did.
    pub fn keep_sparse_from(&mut self, from: f64) -> Result<bool> {
        if self.packed.is_some() || self.weight.dtype() != DType::F32 {
            return Ok(false);
        }
        let (rows, cols) = self.weight.dims2()?;
        let values = self.weight.flatten_all()?.to_vec1::<f32>()?;
        let zeros = values.iter().filter(|v| **v == 0.0).count();
        if values.is_empty() || (zeros as f64) < from * values.len() as f64 {
            return Ok(false);
        }
        let csr = CsrWeight::from_dense(&values, rows, cols);
        self.keep_packed(PackedWeight::Sparse(Arc::new(csr)))?;
        Ok(true)
    }

    /// Bytes its weight holds as it is held (packed or dense), with its adapter's.
    pub fn weight_bytes(&self) -> u64 {
        let dense = |t: &Tensor| (t.elem_count() * t.dtype().size_in_bytes()) as u64;
        let weight = match &self.packed {
            Some(p) => p.bytes() as u64,
            None => dense(&self.weight),
        };
        weight + self.lora.as_ref().map_or(0, |l| dense(&l.a) + dense(&l.b))
    }

    /// Whether the layer runs as one fused f32 product on `x` in `ctx` (dense weight, no LoRA
    /// branch, f32 compute on the CPU): what lets callers stack such layers into one product.
    pub fn fuses(&self, x: &Tensor, ctx: &ForwardCtx) -> bool {
        self.packed.is_none()
            && self.lora.is_none()
            && ctx.compute == DType::F32
            && fused_linear::applies(x, &self.weight, self.bias.as_ref())
    }

    /// `residual + dropout(layer(x))`, the residual connection after a projection. Where that
    /// dropout is the identity (eval, or `p = 0`), nothing needs a gradient and the layer fuses
    /// ([`Linear::fuses`]) or runs on the NF4 inference ops, its adapter included
    /// ([`Linear::nf4_inference`]), one op computes it ([`fused_linear::linear_residual`],
    /// [`nf4_layer::linear_residual`]).
    pub fn forward_residual(
        &self,
        x: &Tensor,
        dropout: &Dropout,
        residual: &Tensor,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let identity = !ctx.train || dropout.p <= 0.0;
        let tracked = [Some(x), Some(&self.weight), self.bias.as_ref(), Some(residual)]
            .into_iter()
            .flatten()
            .any(Tensor::track_op);
        if identity && !tracked && self.fuses(x, ctx) && fused::fusable(residual) {
            return fused_linear::linear_residual(x, &self.weight, self.bias.as_ref(), residual);
        }
        if identity && !tracked && fused::fusable(residual) {
            if let Some(layer) = self.nf4_inference(x, ctx)? {
                return nf4_layer::linear_residual(x, &layer, residual);
            }
        }
        fused::add(&dropout.forward(&self.forward_ctx(x, ctx)?, ctx)?, residual)
    }

    /// The layer in `ctx`'s mode: the LoRA branch's dropout is active in train mode (the base
    /// path has none). Without a LoRA branch this is exactly [`Module::forward`].
    pub fn forward_ctx(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        self.apply(x, Some(ctx))
    }

    /// `act(layer(x))` in `ctx`'s mode; GELU (erf) is fused into the layer for f32 CPU tensors
    /// when there is a bias and either a dense weight without a LoRA branch or the NF4 inference
    /// ops ([`Linear::nf4_inference`], adapter included).
    pub fn forward_act(&self, x: &Tensor, act: HiddenAct, ctx: &mut ForwardCtx) -> Result<Tensor> {
        match (&self.bias, act) {
            (Some(b), HiddenAct::Gelu)
                if self.lora.is_none()
                    && self.packed.is_none()
                    && ctx.compute == DType::F32
                    && fused_linear::applies(x, &self.weight, Some(b)) =>
            {
                fused_linear::linear_gelu(x, &self.weight, b)
            }
            (Some(_), HiddenAct::Gelu) => match self.nf4_gelu(x, ctx)? {
                Some(y) => Ok(y),
                None => activation(&self.forward_ctx(x, ctx)?, act),
            },
            _ => activation(&self.forward_ctx(x, ctx)?, act),
        }
    }

    /// `gelu(x·Wᵀ + b)` as one NF4 op ([`nf4_layer::linear_gelu`]) where the layer runs on the
    /// NF4 kernel without autograd ([`Linear::nf4_inference`]); `None` otherwise.
    fn nf4_gelu(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Option<Tensor>> {
        match self.nf4_inference(x, ctx)? {
            Some(layer) if layer.bias.is_some() => nf4_layer::linear_gelu(x, &layer).map(Some),
            _ => Ok(None),
        }
    }

    /// The layer as the CPU NF4 inference ops take it ([`Nf4Layer`]: weight, f32 bias, LoRA
    /// adapter) where they can run it on `x` in `ctx`: the weight packed NF4 on the CPU, f32
    /// compute, `x` on the CPU, nothing tracking a gradient (`x`, the bias, the adapter) and the
    /// adapter's dropout the identity (eval, or `p = 0`). `None` otherwise.
    pub(crate) fn nf4_inference(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Option<Nf4Layer>> {
        let Some(PackedWeight::Nf4(w)) = &self.packed else {
            return Ok(None);
        };
        let bias_tracked = self.bias.as_ref().is_some_and(Tensor::track_op);
        if ctx.compute != DType::F32 || !fused::fusable(x) || x.track_op() || bias_tracked {
            return Ok(None);
        }
        let lora = match &self.lora {
            None => None,
            Some(l) if l.a.track_op() || l.b.track_op() || (ctx.is_train() && l.dropout.p > 0.0) => return Ok(None),
            Some(l) => Some(Arc::new(l.factors()?)),
        };
        let bias = match &self.bias {
            Some(b) => Some(Arc::new(f32_values(b)?)),
            None => None,
        };
        Ok(Some(Nf4Layer {
            weight: w.clone(),
            bias,
            lora,
        }))
    }

    fn apply(&self, x: &Tensor, ctx: Option<&mut ForwardCtx>) -> Result<Tensor> {
        if let Some(w) = &self.packed {
            let eval = ForwardCtx::eval();
            if let Some(layer) = self.nf4_inference(x, ctx.as_deref().unwrap_or(&eval))? {
                return nf4_layer::linear(x, &layer);
            }
            return self.apply_packed(w, x, ctx);
        }
        let compute = ctx.as_ref().map_or(DType::F32, |c| c.compute);
        let fused = compute == DType::F32 && fused_linear::applies(x, &self.weight, self.bias.as_ref());
        if fused && self.lora.is_none() {
            // One op over any number of leading dims: no reshapes for autograd to undo.
            return fused_linear::linear(x, &self.weight, self.bias.as_ref());
        }
        // Flatten leading dims into one matmul (no broadcast of the weight, whose backward
        // would sum over a broadcast batch).
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().expect("linear input has at least one dim");
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, in_dim))?;
        let y = if fused {
            fused_linear::linear(&x2, &self.weight, self.bias.as_ref())?
        } else {
            // Only a precision asked for (bf16, f16) casts; an input of another dtype keeps its own.
            let y = if compute == DType::F32 || compute == x2.dtype() {
                x2.matmul(&self.weight.t()?)?
            } else {
                // Mixed precision: the product in `compute`, the sum with the bias back in f32.
                x2.to_dtype(compute)?
                    .matmul(&self.weight.to_dtype(compute)?.t()?)?
                    .to_dtype(x2.dtype())?
            };
            match &self.bias {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            }
        };
        self.add_lora_and_shape(y, &x2, ctx, dims)
    }

    /// `y` (`[rows, out]`) plus the LoRA branch of `x2` (the input `[.., in]` as rows), in the
    /// input's dims `dims`.
    fn add_lora_and_shape(
        &self,
        y: Tensor,
        x2: &Tensor,
        ctx: Option<&mut ForwardCtx>,
        dims: Vec<usize>,
    ) -> Result<Tensor> {
        let y = match (&self.lora, ctx) {
            (Some(l), Some(ctx)) => (y + l.forward(&x2.reshape(dims.as_slice())?, ctx)?)?,
            (Some(l), None) => (y + l.forward(x2, &mut ForwardCtx::eval())?)?,
            (None, _) => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("non-empty") = self.weight.dim(0)?;
        y.reshape(out_dims)
    }
}

/// A linear weight held compressed, multiplied by its own kernel: frozen (it gets no gradient,
/// the layer's input does, see [`frozen_grad`]).
#[derive(Debug, Clone)]
pub enum PackedWeight {
    /// 4-bit NF4 codes and block scales in CPU memory ([`crate::ml::kernels::nf4_kernel`]).
    Nf4(Arc<PackedNf4>),
    /// 4-bit NF4 codes and block scales on a device (a GPU), dequantized there per product
    /// ([`DeviceNf4`]).
    Nf4Device(Arc<DeviceNf4>),
    /// The nonzeros of a pruned weight ([`sparse_kernel`]).
    Sparse(Arc<CsrWeight>),
}

impl PackedWeight {
    /// An NF4 weight held where `device` computes: the CPU kernel's packed form on the CPU, the
    /// codes and scales as tensors on any other device.
    pub fn nf4_on(weight: Arc<PackedNf4>, device: &Device) -> Result<Self> {
        if device.is_cpu() {
            Ok(PackedWeight::Nf4(weight))
        } else {
            Ok(PackedWeight::Nf4Device(Arc::new(DeviceNf4::upload(&weight, device)?)))
        }
    }

    /// `[out, in]`.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            PackedWeight::Nf4(w) => w.dims(),
            PackedWeight::Nf4Device(w) => w.dims(),
            PackedWeight::Sparse(w) => w.dims(),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            PackedWeight::Nf4(w) => w.bytes(),
            PackedWeight::Nf4Device(w) => w.bytes(),
            PackedWeight::Sparse(w) => w.bytes(),
        }
    }

    /// The dense f32 weight `[out, in]` on `device` (made for one product, not kept).
    pub fn dense_on(&self, device: &Device) -> Result<Tensor> {
        match self {
            PackedWeight::Nf4(w) => Tensor::from_vec(w.dequantize(), w.dims(), device),
            PackedWeight::Nf4Device(w) => w.dequantize()?.to_device(device),
            PackedWeight::Sparse(w) => Tensor::from_vec(w.to_dense(), w.dims(), device),
        }
    }
}

impl Linear {
    /// The layer with a packed weight. The CPU kernels take f32 CPU inputs; an NF4 weight on a
    /// device is dequantized there for the product; anything else makes the weight dense for the
    /// one product. Where gradients must reach the input, the product is computed from the
    /// detached input and joined to it by [`frozen_grad::attach`], so no dense weight is kept
    /// for the backward pass.
    fn apply_packed(&self, w: &PackedWeight, x: &Tensor, ctx: Option<&mut ForwardCtx>) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = w.dims().1;
        let rows: usize = dims[..dims.len().saturating_sub(1)].iter().product();
        let x2 = x.reshape((rows, in_dim))?;
        let tracked = x2.track_op();
        let input = if tracked { x2.detach() } else { x2.clone() };
        let compute = ctx.as_ref().map_or(DType::F32, |c| c.compute);
        // The CPU kernels compute in f32; a half precision asked for takes the dense product.
        let cpu_kernel = compute == DType::F32 && fused::fusable(&x2) && !matches!(w, PackedWeight::Nf4Device(_));
        // A frozen bias goes inside the kernel; a trained one joins after the frozen product, so
        // that it gets its gradient.
        let frozen_bias = self.bias.as_ref().is_none_or(|b| !b.track_op());
        let (y, bias_done) = if cpu_kernel {
            let bias = match &self.bias {
                Some(b) if frozen_bias => Some(Arc::new(f32_values(b)?)),
                _ => None,
            };
            match w {
                PackedWeight::Nf4(w) => {
                    let layer = Nf4Layer {
                        bias: bias.clone(),
                        ..Nf4Layer::new(w.clone())
                    };
                    (nf4_layer::linear(&input, &layer)?, bias.is_some())
                }
                PackedWeight::Sparse(w) => (sparse_kernel::linear(&input, w, bias.as_ref())?, bias.is_some()),
                PackedWeight::Nf4Device(_) => unreachable!("not a CPU kernel"),
            }
        } else {
            // A device NF4 weight is dequantized on its device (`dense_on`).
            let dense = w.dense_on(input.device())?;
            (fused_linear::product_t(&input, &dense, compute)?, false)
        };
        let y = if tracked {
            let weight = w.clone();
            frozen_grad::attach(&x2, &y, Arc::new(move |d: &Device| weight.dense_on(d)))?
        } else {
            y
        };
        let y = match (&self.bias, bias_done) {
            (Some(b), false) => y.broadcast_add(&b.to_dtype(y.dtype())?)?,
            _ => y,
        };
        self.add_lora_and_shape(y, &x2, ctx, dims)
    }
}

/// A tensor of `shape` that holds no memory (one zero, broadcast): the place of a weight that
/// its layer holds packed.
pub fn stand_in(shape: impl Into<candle_core::Shape>, dtype: DType, device: &Device) -> Result<Tensor> {
    Tensor::zeros(1, dtype, device)?.broadcast_as(shape)
}

/// The low-rank branch of a [`Linear`]: `scale · B·A·dropout(x)` (attached and saved by
/// [`crate::ml::compress::lora`]).
#[derive(Debug, Clone)]
pub struct LoraBranch {
    /// `lora_A.weight`, `[r, in_features]`.
    pub a: Tensor,
    /// `lora_B.weight`, `[out_features, r]`.
    pub b: Tensor,
    /// `alpha / r`.
    pub scale: f64,
    /// Dropout on the branch's input.
    pub dropout: Dropout,
}

impl LoraBranch {
    /// Gets or creates `lora_A.weight` (`[rank, in]`, `U(±1/√in)`) and `lora_B.weight`
    /// (`[out, rank]`, zeros) under `vb`; the branch adds `scale · B·A·dropout(x)`.
    pub fn new(in_dim: usize, out_dim: usize, rank: usize, scale: f64, dropout: f64, vb: VarBuilder) -> Result<Self> {
        let bound = 1.0 / (in_dim.max(1) as f64).sqrt();
        let a = vb.get_with_hints((rank, in_dim), "lora_A.weight", Init::Uniform { lo: -bound, up: bound })?;
        let b = vb.get_with_hints((out_dim, rank), "lora_B.weight", Init::Const(0.0))?;
        Ok(Self {
            a,
            b,
            scale,
            dropout: Dropout::new(dropout),
        })
    }

    /// The branch's output `[rows, out_features]` for `x: [.., in_features]` (its leading dims
    /// flattened into rows), dropout active in train mode. The dropout sees `x` in its own shape,
    /// so that a first-token layer drops what the whole layer drops ([`ForwardCtx::first_token_scope`]).
    pub fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let x = self.dropout.forward(x, ctx)?;
        let in_dim = x.dim(candle_core::D::Minus1)?;
        let x = x.reshape((x.elem_count() / in_dim.max(1), in_dim))?;
        x.matmul(&self.a.t()?)?.matmul(&self.b.t()?)? * self.scale
    }

    /// The update it adds to the weight, `scale · B·A` (`[out, in]`, f32).
    pub fn delta_weight(&self) -> Result<Tensor> {
        Self::delta(&self.a, &self.b, self.scale)
    }

    /// The same branch on detached views of its tensors (no autograd graph; sees updates).
    pub fn detached(&self) -> Self {
        Self {
            a: self.a.detach(),
            b: self.b.detach(),
            ..self.clone()
        }
    }

    /// Its factors in f32 as the NF4 inference ops take them ([`LoraFactors`]).
    pub fn factors(&self) -> Result<LoraFactors> {
        let (rank, b) = (self.a.dim(0)?, f32_values(&self.b)?);
        let rows = b.len() / rank.max(1);
        // `Bᵀ`, so that the kernel reads each rank's column of `B` contiguously.
        let mut bt = vec![0f32; b.len()];
        for (j, row) in b.chunks_exact(rank.max(1)).enumerate() {
            for (q, &v) in row.iter().enumerate() {
                bt[q * rows + j] = v;
            }
        }
        Ok(LoraFactors {
            a: f32_values(&self.a)?,
            bt,
            rank,
            scale: self.scale as f32,
        })
    }

    /// `scale · B·A` in f32, for any `A: [r, in]` and `B: [out, r]`.
    pub fn delta(a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
        b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)? * scale
    }
}

/// A tensor's values in f32, row-major (a bias or a LoRA factor, as the CPU kernels take them).
fn f32_values(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

impl Module for Linear {
    /// The layer in eval mode (a LoRA branch is applied without dropout).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, None)
    }
}

/// Layer normalisation over the last dimension, from mean/variance ops (differentiable).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// Scale (HF `LayerNorm.weight`), `[dim]`.
    pub weight: Tensor,
    /// Shift (HF `LayerNorm.bias`), `[dim]`.
    pub bias: Tensor,
    /// Added to the variance.
    pub eps: f64,
}

impl LayerNorm {
    /// Gets or creates `weight` (ones) and `bias` (zeros) under `vb`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias, eps })
    }
}

impl Module for LayerNorm {
    /// The fused kernel ([`fused::layer_norm`]) for f32 CPU tensors, else the composite.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if fused::fusable(x) && fused::fusable(&self.weight) && fused::fusable(&self.bias) {
            fused::layer_norm(x, &self.weight, &self.bias, self.eps)
        } else {
            layer_norm_composite(self, x)
        }
    }
}

/// `ln` applied to `x` from mean/variance tensor ops (differentiable by candle's autograd; the
/// reference for [`fused::layer_norm`]).
pub fn layer_norm_composite(ln: &LayerNorm, x: &Tensor) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let inv_std = (var + ln.eps)?.sqrt()?.recip()?;
    centered
        .broadcast_mul(&inv_std)?
        .broadcast_mul(&ln.weight)?
        .broadcast_add(&ln.bias)
}

/// Lookup table `[num, dim]` (backward through `index_select`).
#[derive(Debug, Clone)]
pub struct Embedding {
    /// Table, `[num_embeddings, dim]`.
    pub weight: Tensor,
}

impl Embedding {
    /// Gets or creates `weight` (normal(0, `std`)) under `vb`.
    pub fn new(num: usize, dim: usize, std: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints((num, dim), "weight", normal(std))?;
        Ok(Self { weight })
    }

    /// Rows for integer ids of any shape; output shape is `ids.shape + [dim]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut out_dims = ids.dims().to_vec();
        out_dims.push(self.weight.dim(1)?);
        let flat = ids.flatten_all()?;
        self.weight.index_select(&flat, 0)?.reshape(out_dims)
    }
}

/// Inverted dropout with a seeded mask; the identity in eval mode or when `p == 0`.
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    /// Drop probability.
    pub p: f64,
}

impl Dropout {
    /// Dropout with drop probability `p` in [0, 1).
    pub fn new(p: f64) -> Self {
        Self { p }
    }

    /// Zeroes each element with probability `p` and scales the rest by `1/(1-p)` (train only).
    pub fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        if !ctx.train || self.p <= 0.0 {
            return Ok(x.clone());
        }
        let values = match ctx.first_rows_of(x) {
            Some(seq) => first_rows_mask_values(x.elem_count(), x.dims()[x.rank() - 1], seq, self.p, &mut ctx.rng),
            None => dropout_mask_values(x.elem_count(), self.p, &mut ctx.rng),
        };
        if fused::fusable(x) {
            return fused::mul_mask(x, values);
        }
        x.mul(&Tensor::from_vec(values, x.dims(), x.device())?.to_dtype(x.dtype())?)
    }
}

/// The mask values of `n` elements in rows of `len`, each row standing first in a block of
/// `seq` rows: the multipliers those rows get in the whole (`n · seq`-element) mask that
/// [`dropout_mask_values`] would draw with the same `rng`.
fn first_rows_mask_values(n: usize, len: usize, seq: usize, p: f64, rng: &mut Rng) -> Vec<f32> {
    let seed = rng.next_u64();
    let Some(mask) = CounterMask::new(p, seed) else {
        return vec![1.0; n];
    };
    let mut out = vec![0f32; n];
    for (r, row) in out.chunks_mut(len.max(1)).enumerate() {
        mask.fill((r * seq * len) as u64, row);
    }
    out
}

/// `n` mask values in `{0, 1/(1-p)}`: a [`CounterMask`] seeded
/// with one draw from `rng`, filled in parallel (the same on any number of threads).
pub fn dropout_mask_values(n: usize, p: f64, rng: &mut Rng) -> Vec<f32> {
    let seed = rng.next_u64();
    match CounterMask::new(p, seed) {
        Some(mask) => mask.values(n),
        None => vec![1.0; n],
    }
}

/// Applies the configured activation: GELU (erf) through the fused kernel for f32 CPU tensors,
/// otherwise [`activation_composite`].
pub fn activation(x: &Tensor, act: HiddenAct) -> Result<Tensor> {
    match act {
        HiddenAct::Gelu if fused::fusable(x) => fused::gelu_erf(x),
        _ => activation_composite(x, act),
    }
}

/// Applies the configured activation with candle's own ops (all variants have a backward).
pub fn activation_composite(x: &Tensor, act: HiddenAct) -> Result<Tensor> {
    match act {
        HiddenAct::Gelu => x.gelu_erf(),
        HiddenAct::GeluTanh => x.gelu(),
        HiddenAct::Relu => x.relu(),
    }
}

/// Softmax over the last dimension: the fused kernel for f32 CPU tensors, otherwise
/// [`softmax_composite`].
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if fused::fusable(x) {
        fused::softmax_last_dim(x)
    } else {
        softmax_composite(x)
    }
}

/// Softmax over the last dimension as `exp(x - max) / sum`, differentiable.
///
/// The max is detached: it only stabilises the exponent and its gradient cancels exactly.
pub fn softmax_composite(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)
}

/// Converts a `[batch, seq]` 0/1 mask into an additive `[batch, 1, 1, seq]` bias
/// (0 where attended, `f32::MIN` where masked), as transformers does.
pub fn additive_attention_mask(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, s) = mask.dims2()?;
    let m = mask.to_dtype(dtype)?;
    let bias = ((m.ones_like()? - m)? * f32::MIN as f64)?;
    bias.reshape((b, 1, 1, s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    /// The NF4 inference ops take a layer with its adapter exactly where that computes what the
    /// layer's own forward does without autograd: frozen factors whose dropout is the identity.
    #[test]
    fn nf4_inference_takes_the_adapter_only_where_nothing_trains_and_nothing_drops() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(4);
        let w = Tensor::from_vec(rng.normal_vec(16 * 32, 0.0, 0.1), (16, 32), &dev).unwrap();
        let mut layer = Linear::from_tensors(w.clone(), None);
        let packed = crate::ml::compress::nf4::Nf4Tensor::from_tensor(&w, 32, false)
            .unwrap()
            .to_packed()
            .unwrap();
        layer.keep_packed(PackedWeight::Nf4(Arc::new(packed))).unwrap();
        let a = Tensor::from_vec(rng.normal_vec(4 * 32, 0.0, 0.1), (4, 32), &dev).unwrap();
        let b = Tensor::from_vec(rng.normal_vec(16 * 4, 0.0, 0.1), (16, 4), &dev).unwrap();
        let branch = |p: f64, a: &Tensor, b: &Tensor| LoraBranch {
            a: a.clone(),
            b: b.clone(),
            scale: 2.0,
            dropout: Dropout::new(p),
        };
        let x = Tensor::from_vec(rng.normal_vec(3 * 32, 0.0, 1.0), (3, 32), &dev).unwrap();
        let takes = |layer: &Linear, ctx: &ForwardCtx| {
            layer
                .nf4_inference(&x, ctx)
                .unwrap()
                .map(|l| l.lora.map(|f| (f.rank, f.scale, f.a.len(), f.bt.len())))
        };
        let adapter = Some(Some((4, 2.0, 4 * 32, 16 * 4)));
        let (eval, train) = (ForwardCtx::eval(), ForwardCtx::train(0));
        layer.lora = Some(branch(0.1, &a, &b));
        assert_eq!(takes(&layer, &eval), adapter, "eval: dropout is the identity");
        assert_eq!(takes(&layer, &train), None, "train with p > 0: the mask must be drawn");
        layer.lora = Some(branch(0.0, &a, &b));
        assert_eq!(takes(&layer, &train), adapter, "train with p = 0 on frozen factors");
        let (va, vb) = (Var::from_tensor(&a).unwrap(), Var::from_tensor(&b).unwrap());
        layer.lora = Some(branch(0.0, va.as_tensor(), vb.as_tensor()));
        assert_eq!(takes(&layer, &eval), None, "trained factors need their gradients");
        layer.lora = None;
        assert_eq!(takes(&layer, &eval), Some(None));
        // And what the op computes is the layer's own composite forward.
        layer.lora = Some(branch(0.1, &a, &b));
        let fused = layer.forward_ctx(&x, &mut ForwardCtx::eval()).unwrap();
        let dense = Linear {
            packed: None,
            weight: PackedWeight::Nf4(match &layer.packed {
                Some(PackedWeight::Nf4(w)) => w.clone(),
                _ => unreachable!(),
            })
            .dense_on(&dev)
            .unwrap(),
            ..layer.clone()
        };
        let composite = dense.forward_ctx(&x, &mut ForwardCtx::eval()).unwrap();
        let diff = (fused - composite).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }

    /// Central finite differences of `sum(f(x) * w)` against candle's backward, in f64.
    fn grad_check(f: impl Fn(&Tensor) -> Result<Tensor>, dims: &[usize]) {
        let dev = Device::Cpu;
        let mut rng = Rng::new(3);
        let n: usize = dims.iter().product();
        let xv: Vec<f64> = rng.normal_vec(n, 0.0, 1.0).iter().map(|&v| v as f64).collect();
        let x = Var::from_tensor(&Tensor::from_vec(xv.clone(), dims, &dev).unwrap()).unwrap();
        let y0 = f(x.as_tensor()).unwrap();
        let wv: Vec<f64> = rng
            .normal_vec(y0.elem_count(), 0.0, 1.0)
            .iter()
            .map(|&v| v as f64)
            .collect();
        let w = Tensor::from_vec(wv, y0.dims(), &dev).unwrap();
        let loss = |t: &Tensor| -> f64 { (f(t).unwrap() * &w).unwrap().sum_all().unwrap().to_scalar().unwrap() };
        let grads = (f(x.as_tensor()).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g: Vec<f64> = grads
            .get(&x)
            .expect("gradient reaches the input")
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let h = 1e-6;
        for i in 0..n {
            let mut p = xv.clone();
            p[i] += h;
            let mut m = xv.clone();
            m[i] -= h;
            let fp = loss(&Tensor::from_vec(p, dims, &dev).unwrap());
            let fm = loss(&Tensor::from_vec(m, dims, &dev).unwrap());
            let num = (fp - fm) / (2.0 * h);
            assert!(
                (num - g[i]).abs() < 1e-5 * (1.0 + num.abs()),
                "element {i}: numeric {num} vs autograd {}",
                g[i]
            );
        }
    }

    #[test]
    fn layer_norm_softmax_gelu_have_correct_gradients() {
        let dev = Device::Cpu;
        let ln = LayerNorm {
            weight: Tensor::new(&[1.5f64, -0.5, 2.0, 1.0], &dev).unwrap(),
            bias: Tensor::new(&[0.1f64, 0.2, -0.3, 0.0], &dev).unwrap(),
            eps: 1e-5,
        };
        grad_check(|x| ln.forward(x), &[3, 4]);
        grad_check(softmax_last_dim, &[2, 5]);
        // candle's gelu_erf backward uses 1/sqrt(2π) ≈ 0.398942 (6 digits): loose but fine.
        grad_check(|x| activation(x, HiddenAct::Relu), &[7]);
        grad_check(|x| activation(x, HiddenAct::Gelu), &[6]);
    }

    #[test]
    fn layers_match_reference_values() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1f32, 2., 3., 4.], [-1., 0., 1., 10.]], &dev).unwrap();
        // LayerNorm matches candle-nn's fused (forward-only) kernel.
        let ln = LayerNorm {
            weight: Tensor::new(&[1f32, 2., 0.5, 1.], &dev).unwrap(),
            bias: Tensor::new(&[0f32, 1., 0., -1.], &dev).unwrap(),
            eps: 1e-12,
        };
        let ours = ln.forward(&x).unwrap();
        let fused = candle_nn::ops::layer_norm(&x, &ln.weight, &ln.bias, 1e-12).unwrap();
        let diff = crate::ml::testutil::max_abs_diff(&ours, &fused);
        assert!(diff < 1e-5, "{diff}");
        let sm = softmax_last_dim(&x).unwrap();
        let fused = candle_nn::ops::softmax_last_dim(&x).unwrap();
        let diff = crate::ml::testutil::max_abs_diff(&sm, &fused);
        assert!(diff < 1e-6, "{diff}");
        // Linear on 3-D input equals a per-row matmul.
        let lin = Linear::from_tensors(
            Tensor::new(&[[1f32, 0., 0., 1.], [0., 1., 1., 0.]], &dev).unwrap(),
            Some(Tensor::new(&[0.5f32, -0.5], &dev).unwrap()),
        );
        let y = lin.forward(&x.unsqueeze(0).unwrap()).unwrap();
        assert_eq!(y.dims(), &[1, 2, 2]);
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![5.5, 4.5, 9.5, 0.5]
        );
        let mask = additive_attention_mask(&Tensor::new(&[[1u32, 0]], &dev).unwrap(), DType::F32).unwrap();
        assert_eq!(mask.dims(), &[1, 1, 1, 2]);
        assert_eq!(
            mask.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![0.0, f32::MIN]
        );
    }

    #[test]
    fn dropout_is_seeded_scaled_and_off_in_eval() {
        let dev = Device::Cpu;
        let x = Tensor::ones((64, 64), DType::F32, &dev).unwrap();
        let d = Dropout::new(0.25);
        let a = d.forward(&x, &mut ForwardCtx::train(5)).unwrap();
        let b = d.forward(&x, &mut ForwardCtx::train(5)).unwrap();
        let c = d.forward(&x, &mut ForwardCtx::train(6)).unwrap();
        let av: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(av, b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_ne!(av, c.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let zeros = av.iter().filter(|&&v| v == 0.0).count() as f64 / av.len() as f64;
        assert!((zeros - 0.25).abs() < 0.03, "drop rate {zeros}");
        assert!(av.iter().all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-6));
        let e = d.forward(&x, &mut ForwardCtx::eval()).unwrap();
        assert_eq!(e.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![1.0; 64 * 64]);
    }
}

#[cfg(test)]
mod mixed_precision_tests {
    use super::*;
    use crate::ml::testutil::{randn, rel_err};

    /// A linear layer computing in bf16 or f16 stays close to f32, returns f32, and passes
    /// gradients back to its f32 weight.
    #[test]
    fn a_linear_layer_in_half_precision_stays_close_and_f32_outside() {
        let mut rng = Rng::new(3);
        let w = candle_core::Var::from_tensor(&randn(&mut rng, &[8, 16], 0.2)).unwrap();
        let b = candle_core::Var::from_tensor(&randn(&mut rng, &[8], 0.1)).unwrap();
        let layer = Linear::from_tensors(w.as_tensor().clone(), Some(b.as_tensor().clone()));
        let x = randn(&mut rng, &[2, 5, 16], 1.0);
        let reference = layer.forward_ctx(&x, &mut ForwardCtx::train(1)).unwrap();
        for (dtype, tolerance) in [(DType::BF16, 2e-2), (DType::F16, 2e-3)] {
            let mut ctx = ForwardCtx::train(1).with_compute(dtype);
            let y = layer.forward_ctx(&x, &mut ctx).unwrap();
            assert_eq!((y.dtype(), y.dims()), (DType::F32, reference.dims()));
            let e = rel_err(&y, &reference);
            assert!(e < tolerance, "{dtype:?}: relative error {e}");
            let grads = y.sum_all().unwrap().backward().unwrap();
            let g = grads.get(w.as_tensor()).expect("a gradient for the f32 weight");
            assert_eq!(g.dtype(), DType::F32);
        }
    }
}

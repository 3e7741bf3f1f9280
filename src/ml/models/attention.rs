//! Multi-head self-attention (the `query`/`key`/`value` part shared by BERT and ViT).
//!
//! A layer whose heads were pruned (HF `pruned_heads`) has fewer heads of the same width: its
//! projections map `hidden → heads × head_dim` and the context it returns is that wide, which
//! is what the output projection (`attention.output.dense`, `[hidden, heads × head_dim]`) reads.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::layers::{softmax_last_dim, Dropout, ForwardCtx, Linear};
use crate::ml::kernels::fused_attention::{self, AttentionDropout};
use crate::ml::kernels::{fused, fused_linear, nf4_layer, side_by_side};

/// Scaled dot-product self-attention with `heads` heads of `head_dim`; weights under `query`,
/// `key`, `value`, each `[heads × head_dim, hidden]`.
#[derive(Debug, Clone)]
pub struct SelfAttention {
    /// Query projection.
    pub query: Linear,
    /// Key projection.
    pub key: Linear,
    /// Value projection.
    pub value: Linear,
    /// Number of heads.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Dropout on the attention probabilities.
    pub dropout: Dropout,
}

impl SelfAttention {
    /// Gets or creates the three projections under `vb` (HF names `query`, `key`, `value`),
    /// `heads` heads of width `hidden / heads`.
    pub fn new(hidden: usize, heads: usize, bias: bool, std: f64, dropout: f64, vb: VarBuilder) -> Result<Self> {
        Self::with_head_dim(hidden, heads, hidden / heads, bias, std, dropout, vb)
    }

    /// Like [`SelfAttention::new`] with an explicit head width: `heads` may be fewer than
    /// `hidden / head_dim` (a head-pruned layer).
    pub fn with_head_dim(
        hidden: usize,
        heads: usize,
        head_dim: usize,
        bias: bool,
        std: f64,
        dropout: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let all = heads * head_dim;
        Ok(Self {
            query: Linear::new(hidden, all, bias, std, vb.pp("query"))?,
            key: Linear::new(hidden, all, bias, std, vb.pp("key"))?,
            value: Linear::new(hidden, all, bias, std, vb.pp("value"))?,
            heads,
            head_dim,
            dropout: Dropout::new(dropout),
        })
    }

    /// Width of the context it returns (`heads × head_dim`; `hidden` unless heads were pruned).
    pub fn all_head_size(&self) -> usize {
        self.heads * self.head_dim
    }

    /// The three projections' weights (and biases) stacked into one `[3·heads·head_dim, hidden]`
    /// layer, when all three run fused on `x` in `ctx` ([`Linear::fuses`]): then q, k and v come
    /// from one product, and in the backward pass `x` gets its gradient from one product too.
    /// `None` otherwise (a LoRA branch, a packed weight, another precision).
    fn stacked(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Option<(Tensor, Option<Tensor>)>> {
        let layers = [&self.query, &self.key, &self.value];
        if !layers.iter().all(|l| l.fuses(x, ctx)) {
            return Ok(None);
        }
        let bias = match layers.map(|l| l.bias.as_ref()) {
            [Some(q), Some(k), Some(v)] => Some(Tensor::cat(&[q, k, v], 0)?),
            [None, None, None] => None,
            _ => return Ok(None),
        };
        Ok(Some((Tensor::cat(&layers.map(|l| &l.weight), 0)?, bias)))
    }

    /// q, k and v side by side in one `[b, s, 3·heads·head_dim]` tensor when all three
    /// projections run fused: in inference each product writes its columns
    /// ([`side_by_side`], or [`nf4_layer::linear_side_by_side`] for NF4 weights), in training
    /// one product of the stacked weights ([`Self::stacked`]).
    fn packed_qkv(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Option<Tensor>> {
        let layers = [&self.query, &self.key, &self.value];
        // NF4 weights in inference: the three NF4 products as one op.
        let nf4 = layers
            .iter()
            .map(|l| l.nf4_inference(x, ctx))
            .collect::<Result<Vec<_>>>()?;
        if let Some(nf4) = nf4.into_iter().collect::<Option<Vec<_>>>() {
            return nf4_layer::linear_side_by_side(x, &nf4).map(Some);
        }
        let parts = layers.map(|l| (&l.weight, l.bias.as_ref()));
        if layers.iter().all(|l| l.fuses(x, ctx)) && side_by_side::applies(x, &parts) {
            return side_by_side::linear_side_by_side(x, &parts).map(Some);
        }
        match self.stacked(x, ctx)? {
            Some((w, bias)) => fused_linear::linear(x, &w, bias.as_ref()).map(Some),
            None => Ok(None),
        }
    }

    /// Dropout of the fused core in `ctx`'s mode (one draw from its stream in train mode).
    fn core_dropout(&self, ctx: &mut ForwardCtx) -> Option<AttentionDropout> {
        (ctx.is_train() && self.dropout.p > 0.0).then(|| AttentionDropout {
            p: self.dropout.p,
            seed: ctx.rng().next_u64(),
        })
    }

    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        x.reshape((b, s, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Attends over `x` (`[batch, seq, hidden]`) with an optional additive mask: per key
    /// (`[batch, seq]`) or broadcastable to `[batch, heads, seq, seq]` (BERT's
    /// `[batch, 1, 1, seq]`). Returns the context
    /// (`[batch, seq, heads × head_dim]`, before the output projection) and, when `ctx` asks for
    /// them ([`ForwardCtx::with_attention_maps`]), the attention probabilities
    /// (`[batch, heads, seq, seq]`, before dropout) and the scaled scores `q·kᵀ/√d` before the
    /// mask and the softmax (what TinyBERT's attention loss compares).
    ///
    /// Without maps, f32 CPU tensors go through the fused kernel ([`fused_attention`]), whose
    /// dropout mask comes from one draw of `ctx`'s stream.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>, ctx: &mut ForwardCtx) -> Result<(Tensor, Option<Maps>)> {
        let (b, s, _) = x.dims3()?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        // The fused kernel takes a per-key mask: `[b, s]` or BERT's `[b, 1, 1, s]`.
        let key_mask = mask.filter(|m| m.dims() == [b, 1, 1, s] || m.dims() == [b, s]);
        let fused_core = !ctx.attention_maps() && key_mask.is_some() == mask.is_some();
        if fused_core {
            if let Some(qkv) = self.packed_qkv(x, ctx)? {
                let dropout = self.core_dropout(ctx);
                let context = fused_attention::attention_packed(
                    &qkv,
                    self.heads,
                    self.head_dim,
                    scale as f32,
                    key_mask,
                    dropout,
                )?;
                return Ok((context, None));
            }
        }
        let q = self.query.forward_ctx(x, ctx)?;
        let k = self.key.forward_ctx(x, ctx)?;
        let v = self.value.forward_ctx(x, ctx)?;
        if fused_core && fused::fusable(&q) {
            let dropout = self.core_dropout(ctx);
            let context =
                fused_attention::attention(&q, &k, &v, self.heads, self.head_dim, scale as f32, key_mask, dropout)?;
            return Ok((context, None));
        }
        let (q, k, v) = (self.split_heads(&q)?, self.split_heads(&k)?, self.split_heads(&v)?);
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let masked = match mask {
            // A per-key mask, as the fused kernel reads it (broadcast as it stands, `[b, s]`
            // would line up with the scores' last two dims).
            Some(m) if m.dims() == [b, s] => scores.broadcast_add(&m.reshape((b, 1, 1, s))?)?,
            Some(m) => scores.broadcast_add(m)?,
            None => scores.clone(),
        };
        let probs = softmax_last_dim(&masked)?;
        let dropped = self.dropout.forward(&probs, ctx)?;
        let context = dropped
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, s, self.all_head_size()))?;
        Ok((context, Some(Maps { probs, scores })))
    }

    /// The context of the first token only (`[batch, 1, heads × head_dim]`): its query against
    /// the keys and values of the whole sequence, `mask` as in [`SelfAttention::forward`]. What
    /// a classifier's last layer needs (see [`ForwardCtx::logits_only`]); one query row, so
    /// plain tensor ops.
    pub fn forward_first(&self, x: &Tensor, mask: Option<&Tensor>, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let q = self.query.forward_ctx(&x.narrow(1, 0, 1)?, ctx)?;
        let k = self.key.forward_ctx(x, ctx)?;
        let v = self.value.forward_ctx(x, ctx)?;
        let (q, k, v) = (self.split_heads(&q)?, self.split_heads(&k)?, self.split_heads(&v)?);
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let masked = match mask {
            Some(m) if m.dims() == [b, s] => scores.broadcast_add(&m.reshape((b, 1, 1, s))?)?,
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = self.dropout.forward(&softmax_last_dim(&masked)?, ctx)?;
        probs.matmul(&v)?.transpose(1, 2)?.reshape((b, 1, self.all_head_size()))
    }
}

/// One layer's attention maps, `[batch, heads, seq, seq]` each.
#[derive(Debug, Clone)]
pub struct Maps {
    /// Attention probabilities, before dropout.
    pub probs: Tensor,
    /// Scaled scores `q·kᵀ/√d`, before the mask and the softmax.
    pub scores: Tensor,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::models::params::ParamStore;
    use crate::ml::testutil::randn;
    use crate::ml::Rng;
    use candle_core::{DType, Device};

    fn layer(seed: u64) -> SelfAttention {
        let params = ParamStore::new(seed);
        SelfAttention::new(12, 3, true, 0.02, 0.1, params.var_builder(DType::F32, &Device::Cpu)).unwrap()
    }

    /// Plain f32 projections are stacked into one (q, k, v rows in that order); a LoRA branch on
    /// one of them or another compute precision keeps them apart.
    #[test]
    fn plain_projections_stack_into_one() {
        let att = layer(1);
        let x = randn(&mut Rng::new(2), &[2, 5, 12], 1.0);
        let (w, b) = att.stacked(&x, &ForwardCtx::eval()).unwrap().expect("stacked");
        assert_eq!(w.dims(), &[36, 12]);
        let rows = |t: &Tensor, i: usize| {
            t.narrow(0, i * 12, 12)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let whole = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, l) in [&att.query, &att.key, &att.value].into_iter().enumerate() {
            assert_eq!(rows(&w, i), whole(&l.weight), "weight block {i}");
            assert_eq!(
                rows(&b.clone().unwrap(), i),
                whole(l.bias.as_ref().unwrap()),
                "bias block {i}"
            );
        }
        let bf16 = ForwardCtx::eval().with_compute(DType::BF16);
        assert!(att.stacked(&x, &bf16).unwrap().is_none());
        let mut lora = layer(1);
        let params = ParamStore::new(3);
        lora.value.lora = Some(
            crate::ml::models::layers::LoraBranch::new(
                12,
                12,
                2,
                1.0,
                0.0,
                params.var_builder(DType::F32, &Device::Cpu),
            )
            .unwrap(),
        );
        assert!(lora.stacked(&x, &ForwardCtx::eval()).unwrap().is_none());
    }

    /// A per-key `[batch, seq]` mask means the same on the fused path and on the composite one
    /// (attention maps asked for), also where batch = seq and broadcasting it as it stands would
    /// mask by query instead of by key.
    #[test]
    fn a_per_key_mask_masks_keys_on_every_path() {
        let att = layer(7);
        let x = randn(&mut Rng::new(8), &[3, 3, 12], 1.0);
        let mut keep = vec![0f32; 9];
        keep[2] = -1e9; // example 0 ignores its last key; examples 1 and 2 see every key
        let dev = Device::Cpu;
        let flat = Tensor::from_vec(keep, (3, 3), &dev).unwrap();
        let bert = flat.reshape((3, 1, 1, 3)).unwrap();
        let run = |mask: &Tensor, maps: bool| {
            let mut ctx = ForwardCtx::eval();
            if maps {
                ctx = ctx.with_attention_maps();
            }
            att.forward(&x, Some(mask), &mut ctx).unwrap().0
        };
        let want = run(&bert, true);
        for (mask, maps) in [(&flat, true), (&flat, false), (&bert, false)] {
            let e = crate::ml::testutil::rel_err(&run(mask, maps), &want);
            assert!(
                e <= 1e-5,
                "mask {:?}, maps {maps}: relative difference {e}",
                mask.dims()
            );
        }
    }

    /// On frozen weights (eval, predict) q, k and v are computed side by side without stacking
    /// the weights; the context is the one the trainable layer computes from the stacked product.
    #[test]
    fn frozen_layers_compute_the_same_context_without_stacking() {
        let params = ParamStore::new(5);
        let trainable =
            SelfAttention::new(48, 3, true, 0.2, 0.1, params.var_builder(DType::F32, &Device::Cpu)).unwrap();
        let frozen = SelfAttention::new(
            48,
            3,
            true,
            0.2,
            0.1,
            params.frozen_var_builder(DType::F32, &Device::Cpu),
        )
        .unwrap();
        let x = randn(&mut Rng::new(6), &[2, 9, 48], 1.0);
        let mut ctx = ForwardCtx::eval();
        let parts = [&frozen.query, &frozen.key, &frozen.value].map(|l| (&l.weight, l.bias.as_ref()));
        assert!(side_by_side::applies(&x, &parts));
        let trainable_parts =
            [&trainable.query, &trainable.key, &trainable.value].map(|l| (&l.weight, l.bias.as_ref()));
        assert!(!side_by_side::applies(&x, &trainable_parts), "Vars track gradients");
        let (want, _) = trainable.forward(&x, None, &mut ctx).unwrap();
        let (got, _) = frozen.forward(&x, None, &mut ctx).unwrap();
        let e = crate::ml::testutil::rel_err(&got, &want);
        assert!(e <= 1e-6, "relative difference {e}");
    }
}

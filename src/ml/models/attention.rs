//! Multi-head self-attention (the `query`/`key`/`value` part shared by BERT and ViT).
//!
//! A layer whose heads were pruned (HF `pruned_heads`) has fewer heads of the same width: its
//! projections map `hidden → heads × head_dim` and the context it returns is that wide, which
//! is what the output projection (`attention.output.dense`, `[hidden, heads × head_dim]`) reads.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::layers::{softmax_last_dim, Dropout, ForwardCtx, Linear};
use crate::ml::kernels::fused;
use crate::ml::kernels::fused_attention::{self, AttentionDropout};

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

    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        x.reshape((b, s, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Attends over `x` (`[batch, seq, hidden]`) with an optional additive mask broadcastable
    /// to `[batch, heads, seq, seq]` (BERT's `[batch, 1, 1, seq]`). Returns the context
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
        let q = self.query.forward_ctx(x, ctx)?;
        let k = self.key.forward_ctx(x, ctx)?;
        let v = self.value.forward_ctx(x, ctx)?;
        // The fused kernel takes a per-key mask: `[b, s]` or BERT's `[b, 1, 1, s]`.
        let key_mask = mask.filter(|m| m.dims() == [b, 1, 1, s] || m.dims() == [b, s]);
        if !ctx.attention_maps() && fused::fusable(&q) && key_mask.is_some() == mask.is_some() {
            let dropout = (ctx.is_train() && self.dropout.p > 0.0).then(|| AttentionDropout {
                p: self.dropout.p,
                seed: ctx.rng().next_u64(),
            });
            let context =
                fused_attention::attention(&q, &k, &v, self.heads, self.head_dim, scale as f32, key_mask, dropout)?;
            return Ok((context, None));
        }
        let (q, k, v) = (self.split_heads(&q)?, self.split_heads(&k)?, self.split_heads(&v)?);
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let masked = match mask {
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
}

/// One layer's attention maps, `[batch, heads, seq, seq]` each.
#[derive(Debug, Clone)]
pub struct Maps {
    /// Attention probabilities, before dropout.
    pub probs: Tensor,
    /// Scaled scores `q·kᵀ/√d`, before the mask and the softmax.
    pub scores: Tensor,
}

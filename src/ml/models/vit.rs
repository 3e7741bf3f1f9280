//! Trainable ViT for image classification (`ViTForImageClassification`).
//!
//! Pre-LN encoder over non-overlapping patches plus a CLS token, with transformers' tensor
//! names (`vit.embeddings.patch_embeddings.projection.weight`, `vit.embeddings.cls_token`,
//! `vit.encoder.layer.N.attention.attention.query.weight`, `vit.layernorm.weight`,
//! `classifier.weight`, …). The patch projection keeps the Conv2d weight layout
//! `[hidden, channels, patch, patch]` but runs as patchify + matmul, which is the same
//! stride-`patch` convolution and much cheaper to differentiate in candle.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::attention::{Maps, SelfAttention};
use super::config::{HiddenAct, VitConfig};
use super::layers::{normal, Dropout, ForwardCtx, LayerNorm, Linear};
use super::output::{ModelOutput, Trace};
use crate::ml::kernels::fused;

/// CLS token, patch projection and position embeddings (`vit.embeddings`).
#[derive(Debug, Clone)]
pub struct VitEmbeddings {
    /// `cls_token`, `[1, 1, hidden]`.
    pub cls_token: Tensor,
    /// `position_embeddings`, `[1, patches + 1, hidden]`.
    pub position_embeddings: Tensor,
    /// `patch_embeddings.projection.weight`, `[hidden, channels, patch, patch]`.
    pub projection_weight: Tensor,
    /// `patch_embeddings.projection.bias`, `[hidden]`.
    pub projection_bias: Tensor,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Expected image side in pixels.
    pub image_size: usize,
    /// Dropout after adding position embeddings.
    pub dropout: Dropout,
}

impl VitEmbeddings {
    /// Gets or creates the embedding weights under `vb` (`vit.embeddings`).
    pub fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let (h, std, p) = (cfg.hidden_size, cfg.initializer_range, cfg.patch_size);
        let proj = vb.pp("patch_embeddings").pp("projection");
        Ok(Self {
            cls_token: vb.get_with_hints((1, 1, h), "cls_token", normal(std))?,
            position_embeddings: vb.get_with_hints(
                (1, cfg.num_patches() + 1, h),
                "position_embeddings",
                normal(std),
            )?,
            projection_weight: proj.get_with_hints((h, cfg.num_channels, p, p), "weight", normal(std))?,
            projection_bias: proj.get_with_hints(h, "bias", candle_nn::Init::Const(0.0))?,
            patch_size: p,
            image_size: cfg.image_size,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
        })
    }

    /// `[batch, channels, H, W]` pixels → `[batch, patches + 1, hidden]` tokens.
    pub fn forward(&self, pixel_values: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let (b, c, height, width) = pixel_values.dims4()?;
        let (hidden, wc, p, _) = self.projection_weight.dims4()?;
        if c != wc || height != self.image_size || width != self.image_size {
            candle_core::bail!(
                "ViT expects images of shape [batch, {wc}, {s}, {s}], got [{b}, {c}, {height}, {width}]",
                s = self.image_size
            )
        }
        let patches = patches(pixel_values, p)?;
        let proj = Linear::from_tensors(
            self.projection_weight.reshape((hidden, c * p * p))?,
            Some(self.projection_bias.clone()),
        );
        let tokens = proj.forward(&patches)?;
        let cls = self.cls_token.broadcast_as((b, 1, hidden))?;
        let x = Tensor::cat(&[&cls, &tokens], 1)?.broadcast_add(&self.position_embeddings)?;
        self.dropout.forward(&x, ctx)
    }
}

/// `[b, c, H, W]` pixels → `[b, (H/p)·(W/p), c·p·p]`: row-major patches, each flattened in the
/// Conv2d weight's (channel, row, column) order. Pixels without a gradient (always, in
/// training) are copied in parallel; otherwise a permutation that autograd can follow.
fn patches(pixel_values: &Tensor, p: usize) -> Result<Tensor> {
    let (b, c, height, width) = pixel_values.dims4()?;
    let (gh, gw) = (height / p, width / p);
    if pixel_values.track_op() || !fused::fusable(pixel_values) || gh * p != height || gw * p != width {
        // [b, c, gh, p, gw, p] → [b, gh, gw, c, p, p] → [b, gh·gw, c·p·p].
        return pixel_values
            .reshape((b, c, gh, p, gw, p))?
            .permute([0, 2, 4, 1, 3, 5])?
            .reshape((b, gh * gw, c * p * p));
    }
    let x = pixel_values.contiguous()?;
    let locked = fused::locked(&x);
    let src = locked.values("patches")?;
    let row = gw * c * p * p;
    let mut out = crate::ml::kernels::gemm::uninit_vec(b * gh * row);
    out.par_chunks_mut(row).enumerate().for_each(|(i, dst)| {
        let (bi, gy) = (i / gh, i % gh);
        for gx in 0..gw {
            for ch in 0..c {
                for py in 0..p {
                    let from = ((bi * c + ch) * height + gy * p + py) * width + gx * p;
                    let to = (gx * c + ch) * p * p + py * p;
                    dst[to..to + p].copy_from_slice(&src[from..from + p]);
                }
            }
        }
    });
    Tensor::from_vec(out, (b, gh * gw, c * p * p), x.device())
}

/// One pre-LN encoder layer (`vit.encoder.layer.N`).
#[derive(Debug, Clone)]
pub struct VitLayer {
    /// `layernorm_before`.
    pub layernorm_before: LayerNorm,
    /// `attention.attention`.
    pub attention: SelfAttention,
    /// `attention.output.dense`.
    pub attention_output: Linear,
    /// `layernorm_after`.
    pub layernorm_after: LayerNorm,
    /// `intermediate.dense`.
    pub intermediate: Linear,
    /// `output.dense`.
    pub output: Linear,
    /// Feed-forward activation.
    pub act: HiddenAct,
    /// Dropout on both sub-layer outputs.
    pub dropout: Dropout,
}

impl VitLayer {
    /// Gets or creates the weights of encoder layer `index` under `vb` (`vit.encoder.layer.N`),
    /// with the heads the config keeps for that layer (`pruned_heads`).
    pub fn new(cfg: &VitConfig, index: usize, vb: VarBuilder) -> Result<Self> {
        let (h, std, eps) = (cfg.hidden_size, cfg.initializer_range, cfg.layer_norm_eps);
        let att = vb.pp("attention");
        let layernorm_before = LayerNorm::new(h, eps, vb.pp("layernorm_before"))?;
        let attention = SelfAttention::with_head_dim(
            h,
            cfg.heads_in_layer(index),
            cfg.head_dim(),
            cfg.qkv_bias,
            std,
            cfg.attention_probs_dropout_prob,
            att.pp("attention"),
        )?;
        let all_heads = attention.all_head_size();
        Ok(Self {
            layernorm_before,
            attention,
            attention_output: Linear::new(all_heads, h, true, std, att.pp("output").pp("dense"))?,
            layernorm_after: LayerNorm::new(h, eps, vb.pp("layernorm_after"))?,
            intermediate: Linear::new(h, cfg.intermediate_size, true, std, vb.pp("intermediate").pp("dense"))?,
            output: Linear::new(cfg.intermediate_size, h, true, std, vb.pp("output").pp("dense"))?,
            act: cfg.hidden_act,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
        })
    }

    /// Returns the layer output and, when `ctx` asks for them, its attention maps.
    pub fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<(Tensor, Option<Maps>)> {
        let (context, maps) = self.attention.forward(&self.layernorm_before.forward(x)?, None, ctx)?;
        let x = self
            .attention_output
            .forward_residual(&context, &self.dropout, x, ctx)?;
        let h = self
            .intermediate
            .forward_act(&self.layernorm_after.forward(&x)?, self.act, ctx)?;
        Ok((self.output.forward_residual(&h, &self.dropout, &x, ctx)?, maps))
    }

    /// The layer's output for the first (CLS) token only, `[batch, 1, hidden]` (its attention
    /// reads every token); see [`ForwardCtx::logits_only`].
    /// In training its dropout drops what the full layer drops in the first rows
    /// ([`ForwardCtx::first_token_scope`]).
    pub fn forward_first(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        ctx.first_token_scope(x.dim(1)?, |ctx| {
            let context = self
                .attention
                .forward_first(&self.layernorm_before.forward(x)?, None, ctx)?;
            let first = x.narrow(1, 0, 1)?.contiguous()?;
            let x = self
                .attention_output
                .forward_residual(&context, &self.dropout, &first, ctx)?;
            let h = self
                .intermediate
                .forward_act(&self.layernorm_after.forward(&x)?, self.act, ctx)?;
            self.output.forward_residual(&h, &self.dropout, &x, ctx)
        })
    }
}

/// ViT encoder + final LayerNorm + classifier on the CLS token (`ViTForImageClassification`).
#[derive(Debug, Clone)]
pub struct VitForImageClassification {
    /// The configuration it was built from.
    pub config: VitConfig,
    /// `vit.embeddings`.
    pub embeddings: VitEmbeddings,
    /// `vit.encoder.layer.*`.
    pub layers: Vec<VitLayer>,
    /// `vit.layernorm`.
    pub layernorm: LayerNorm,
    /// `classifier`, `[num_labels, hidden]`.
    pub classifier: Linear,
}

impl VitForImageClassification {
    /// Gets or creates every weight under `vb` (the root: names start with `vit.` / `classifier.`).
    pub fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let vit = vb.pp("vit");
        let embeddings = VitEmbeddings::new(cfg, vit.pp("embeddings"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| VitLayer::new(cfg, i, vit.pp("encoder").pp("layer").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let layernorm = LayerNorm::new(cfg.hidden_size, cfg.layer_norm_eps, vit.pp("layernorm"))?;
        let classifier = Linear::new(
            cfg.hidden_size,
            cfg.num_labels(),
            true,
            cfg.initializer_range,
            vb.pp("classifier"),
        )?;
        Ok(Self {
            config: cfg.clone(),
            embeddings,
            layers,
            layernorm,
            classifier,
        })
    }

    /// Runs the model on `[batch, channels, image_size, image_size]` normalised pixels.
    pub fn forward(&self, pixel_values: &Tensor, ctx: &mut ForwardCtx) -> Result<ModelOutput> {
        let mut x = self.embeddings.forward(pixel_values, ctx)?;
        let mut trace = Trace::start(&x, self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let (y, maps) = if i + 1 == self.layers.len() && ctx.first_token_only() {
                (layer.forward_first(&x, ctx)?, None)
            } else {
                layer.forward(&x, ctx)?
            };
            trace.layer(&y, maps);
            x = y;
        }
        let last_hidden_state = self.layernorm.forward(&x)?;
        let pooled = last_hidden_state.narrow(1, 0, 1)?.squeeze(1)?;
        let logits = self.classifier.forward_ctx(&pooled, ctx)?;
        Ok(trace.finish(logits, last_hidden_state, pooled))
    }

    /// Number of classes.
    pub fn num_labels(&self) -> usize {
        self.config.num_labels()
    }

    /// The dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.classifier.weight.dtype()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::checkpoint::Pretrained;
    use crate::ml::models::config::ModelConfig;
    use crate::ml::models::model::Model;
    use crate::ml::models::params::ParamStore;
    use crate::ml::testutil::*;
    use candle_core::Device;
    use candle_transformers::models::vit as oracle;

    #[test]
    fn parallel_patches_equal_the_differentiable_permutation() {
        let x = Tensor::arange(0f32, (2 * 3 * 8 * 12) as f32, &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 8, 12))
            .unwrap();
        let fast = patches(&x, 4).unwrap();
        let var = candle_core::Var::from_tensor(&x).unwrap();
        let tracked = patches(var.as_tensor(), 4).unwrap();
        assert_eq!(fast.dims(), &[2, 6, 48]);
        assert_eq!(
            fast.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            tracked.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn one_training_step_gives_every_variable_a_gradient() {
        let cfg = tiny_vit(3);
        let params = ParamStore::new(4);
        let model = VitForImageClassification::new(&cfg, params.var_builder(DType::F32, &Device::Cpu)).unwrap();
        let x = image_batch(4, 3, 8, 1);
        let out = model.forward(&x, &mut ForwardCtx::train(2)).unwrap();
        assert_eq!(out.logits.dims(), &[4, 3]);
        assert_eq!(out.hidden_states.len(), 3);
        assert_eq!(out.hidden_states[0].dims(), &[4, 5, 16]);
        assert!(out.attentions.is_empty(), "no maps unless asked for");
        let maps = model
            .forward(&x, &mut ForwardCtx::eval().with_attention_maps())
            .unwrap();
        assert_eq!(maps.attentions[1].dims(), &[4, 2, 5, 5]);
        assert_eq!(maps.attention_scores[1].dims(), &[4, 2, 5, 5]);
        let loss = candle_nn::loss::cross_entropy(&out.logits, &targets(4, 3, 5)).unwrap();
        let grads = loss.backward().unwrap();
        let n = assert_every_var_has_gradient(&params, &grads);
        // cls, position, projection weight + bias; 16 per layer; final LN (2); classifier (2).
        assert_eq!(n, 4 + 16 * cfg.num_hidden_layers + 4);
    }

    /// A training step whose loss reads the logits only (the last layer computes the CLS token
    /// alone, dropping what the whole layer drops there) is the full step: the same loss and
    /// gradients, with dropout on.
    #[test]
    fn first_token_training_step_is_the_full_step() {
        let cfg = tiny_vit(3);
        let params = ParamStore::new(4);
        let model = VitForImageClassification::new(&cfg, params.var_builder(DType::F32, &Device::Cpu)).unwrap();
        let x = image_batch(4, 3, 8, 1);
        let labels = targets(4, 3, 5);
        let run = |ctx: &mut ForwardCtx| loss_and_gradients(&params, &model.forward(&x, ctx).unwrap().logits, &labels);
        let full = run(&mut ForwardCtx::train(2));
        let first = run(&mut ForwardCtx::train(2).logits_only());
        let err = max_rel_diff(&first, &full);
        assert!(err < 1e-4, "relative difference {err}");
        assert_ne!(full, run(&mut ForwardCtx::train(3)), "dropout is on");
    }

    /// Reading only the logits, the last layer computes the CLS token alone: the same logits and
    /// CLS state as the whole forward, on trainable and on frozen weights.
    #[test]
    fn logits_only_forward_gives_the_same_logits() {
        let mut cfg = tiny_vit(3);
        cfg.initializer_range = 0.3;
        let params = ParamStore::new(8);
        let trainable = VitForImageClassification::new(&cfg, params.var_builder(DType::F32, &Device::Cpu)).unwrap();
        let frozen = VitForImageClassification::new(&cfg, params.frozen_var_builder(DType::F32, &Device::Cpu)).unwrap();
        let x = image_batch(4, 3, 8, 2);
        for m in [&trainable, &frozen] {
            let full = m.forward(&x, &mut ForwardCtx::eval()).unwrap();
            let fast = m.forward(&x, &mut ForwardCtx::eval().logits_only()).unwrap();
            let e = rel_diff(&fast.logits, &full.logits);
            assert!(e < 1e-5, "logits differ: {e}");
            assert_eq!(fast.last_hidden_state.dims(), &[4, 1, 16]);
            let cls = full.last_hidden_state.narrow(1, 0, 1).unwrap();
            assert!(rel_diff(&fast.last_hidden_state, &cls) < 1e-5);
            assert!(rel_diff(&fast.pooled, &full.pooled) < 1e-5);
        }
    }

    #[test]
    fn patch_embedding_equals_strided_conv2d() {
        let cfg = tiny_vit(2);
        let params = ParamStore::new(6);
        let emb = VitEmbeddings::new(&cfg, params.var_builder(DType::F32, &Device::Cpu)).unwrap();
        let x = image_batch(2, 3, 8, 3);
        let ours = emb
            .forward(&x, &mut ForwardCtx::eval())
            .unwrap()
            .narrow(1, 1, 4)
            .unwrap();
        let conv = x
            .conv2d(&emb.projection_weight, 0, 4, 1, 1)
            .unwrap()
            .broadcast_add(&emb.projection_bias.reshape((1, 16, 1, 1)).unwrap())
            .unwrap()
            .flatten_from(2)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .broadcast_add(&emb.position_embeddings.narrow(1, 1, 4).unwrap())
            .unwrap();
        let rel = rel_diff(&ours, &conv);
        assert!(rel < 1e-5, "{rel}");
        let err = emb
            .forward(&image_batch(1, 3, 12, 0), &mut ForwardCtx::eval())
            .unwrap_err();
        assert!(err.to_string().contains("[batch, 3, 8, 8]"), "{err}");
    }

    #[test]
    fn same_seed_gives_bit_identical_weights() {
        let cfg = ModelConfig::Vit(tiny_vit(2));
        let a = Pretrained::random(&cfg, 1, &Device::Cpu)
            .unwrap()
            .params
            .tensors()
            .unwrap();
        let b = Pretrained::random(&cfg, 1, &Device::Cpu)
            .unwrap()
            .params
            .tensors()
            .unwrap();
        for (k, t) in &a {
            let (x, y) = (t.flatten_all().unwrap(), b[k].flatten_all().unwrap());
            assert_eq!(x.to_vec1::<f32>().unwrap(), y.to_vec1::<f32>().unwrap(), "{k}");
        }
    }

    /// Same checkpoint, eval mode: our ViT's logits agree with candle-transformers' vit::Model.
    #[test]
    fn agrees_with_candle_transformers_vit() {
        let mut cfg = tiny_vit(3);
        cfg.initializer_range = 0.3;
        let p = Pretrained::random(&ModelConfig::Vit(cfg.clone()), 12, &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        p.save(dir.path()).unwrap();
        let x = image_batch(3, 3, 8, 7);
        let Model::Vit(m) = &p.model else { unreachable!() };
        let ours = m.forward(&x, &mut ForwardCtx::eval()).unwrap();

        let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        let ocfg: oracle::Config = serde_json::from_str(&text).unwrap();
        let weights = dir.path().join("model.safetensors");
        let vb =
            unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &Device::Cpu).unwrap() };
        let theirs = oracle::Model::new(&ocfg, 3, vb).unwrap().forward(&x).unwrap();
        let rel = rel_diff(&ours.logits, &theirs);
        crate::say!("vit oracle: logits rel diff {rel:e}");
        assert!(rel < 1e-4, "logits differ: {rel}");
    }
}

//! Trainable BERT for sequence classification (`BertForSequenceClassification`).
//!
//! Post-LN encoder with absolute position embeddings, the tanh pooler on the first token,
//! dropout and a linear classifier, with transformers' tensor names
//! (`bert.embeddings.word_embeddings.weight`, `bert.encoder.layer.N.attention.self.query.weight`,
//! `bert.pooler.dense.weight`, `classifier.weight`, …).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{Maps, SelfAttention};
use super::config::{BertConfig, HiddenAct};
use super::layers::{additive_attention_mask, Dropout, Embedding, ForwardCtx, LayerNorm, Linear};
use super::output::{ModelOutput, Trace};

/// Word + position + token-type embeddings, LayerNorm and dropout (`bert.embeddings`).
#[derive(Debug, Clone)]
pub struct BertEmbeddings {
    /// `word_embeddings`, `[vocab, hidden]`.
    pub word_embeddings: Embedding,
    /// `position_embeddings`, `[max_positions, hidden]`.
    pub position_embeddings: Embedding,
    /// `token_type_embeddings`, `[type_vocab, hidden]`.
    pub token_type_embeddings: Embedding,
    /// `LayerNorm`.
    pub layer_norm: LayerNorm,
    /// Dropout after the LayerNorm.
    pub dropout: Dropout,
}

impl BertEmbeddings {
    /// Gets or creates the embedding tables under `vb` (`bert.embeddings`).
    pub fn new(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let std = cfg.initializer_range;
        Ok(Self {
            word_embeddings: Embedding::new(cfg.vocab_size, cfg.hidden_size, std, vb.pp("word_embeddings"))?,
            position_embeddings: Embedding::new(
                cfg.max_position_embeddings,
                cfg.hidden_size,
                std,
                vb.pp("position_embeddings"),
            )?,
            token_type_embeddings: Embedding::new(
                cfg.type_vocab_size,
                cfg.hidden_size,
                std,
                vb.pp("token_type_embeddings"),
            )?,
            layer_norm: LayerNorm::new(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
        })
    }

    /// Embeds `[batch, seq]` ids; token types default to zeros.
    pub fn forward(&self, input_ids: &Tensor, token_type_ids: Option<&Tensor>, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let (_b, s) = input_ids.dims2()?;
        let max = self.position_embeddings.weight.dim(0)?;
        if s > max {
            candle_core::bail!("sequence length {s} exceeds max_position_embeddings {max}")
        }
        let words = self.word_embeddings.forward(input_ids)?;
        let positions = self.position_embeddings.weight.narrow(0, 0, s)?;
        let types = match token_type_ids {
            Some(t) => self.token_type_embeddings.forward(t)?,
            None => self
                .token_type_embeddings
                .weight
                .narrow(0, 0, 1)?
                .unsqueeze(0)?
                .broadcast_as(words.dims())?,
        };
        let x = words.broadcast_add(&positions)?.add(&types)?;
        let x = self.layer_norm.forward(&x)?;
        self.dropout.forward(&x, ctx)
    }
}

/// One post-LN encoder layer (`bert.encoder.layer.N`).
#[derive(Debug, Clone)]
pub struct BertLayer {
    /// `attention.self`.
    pub attention: SelfAttention,
    /// `attention.output.dense`.
    pub attention_output: Linear,
    /// `attention.output.LayerNorm`.
    pub attention_norm: LayerNorm,
    /// `intermediate.dense`.
    pub intermediate: Linear,
    /// `output.dense`.
    pub output: Linear,
    /// `output.LayerNorm`.
    pub output_norm: LayerNorm,
    /// Feed-forward activation.
    pub act: HiddenAct,
    /// Dropout on both sub-layer outputs.
    pub dropout: Dropout,
}

impl BertLayer {
    /// Gets or creates the weights of encoder layer `index` under `vb` (`bert.encoder.layer.N`),
    /// with the heads the config keeps for that layer (`pruned_heads`).
    pub fn new(cfg: &BertConfig, index: usize, vb: VarBuilder) -> Result<Self> {
        let (h, std, eps) = (cfg.hidden_size, cfg.initializer_range, cfg.layer_norm_eps);
        let att = vb.pp("attention");
        let attention = SelfAttention::with_head_dim(
            h,
            cfg.heads_in_layer(index),
            cfg.head_dim(),
            true,
            std,
            cfg.attention_probs_dropout_prob,
            att.pp("self"),
        )?;
        let all_heads = attention.all_head_size();
        Ok(Self {
            attention,
            attention_output: Linear::new(all_heads, h, true, std, att.pp("output").pp("dense"))?,
            attention_norm: LayerNorm::new(h, eps, att.pp("output").pp("LayerNorm"))?,
            intermediate: Linear::new(h, cfg.intermediate_size, true, std, vb.pp("intermediate").pp("dense"))?,
            output: Linear::new(cfg.intermediate_size, h, true, std, vb.pp("output").pp("dense"))?,
            output_norm: LayerNorm::new(h, eps, vb.pp("output").pp("LayerNorm"))?,
            act: cfg.hidden_act,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
        })
    }

    /// Returns the layer output and, when `ctx` asks for them, its attention maps.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>, ctx: &mut ForwardCtx) -> Result<(Tensor, Option<Maps>)> {
        let (context, maps) = self.attention.forward(x, mask, ctx)?;
        let a = self
            .attention_output
            .forward_residual(&context, &self.dropout, x, ctx)?;
        let x = self.attention_norm.forward(&a)?;
        let h = self.intermediate.forward_act(&x, self.act, ctx)?;
        let out = self
            .output_norm
            .forward(&self.output.forward_residual(&h, &self.dropout, &x, ctx)?)?;
        Ok((out, maps))
    }

    /// The layer's output for the first token only, `[batch, 1, hidden]` (its attention reads
    /// every token); see [`ForwardCtx::logits_only`].
    /// In training its dropout drops what the full layer drops in the first rows
    /// ([`ForwardCtx::first_token_scope`]).
    pub fn forward_first(&self, x: &Tensor, mask: Option<&Tensor>, ctx: &mut ForwardCtx) -> Result<Tensor> {
        ctx.first_token_scope(x.dim(1)?, |ctx| {
            let context = self.attention.forward_first(x, mask, ctx)?;
            let first = x.narrow(1, 0, 1)?.contiguous()?;
            let a = self
                .attention_output
                .forward_residual(&context, &self.dropout, &first, ctx)?;
            let x = self.attention_norm.forward(&a)?;
            let h = self.intermediate.forward_act(&x, self.act, ctx)?;
            self.output_norm
                .forward(&self.output.forward_residual(&h, &self.dropout, &x, ctx)?)
        })
    }
}

/// BERT encoder + pooler + classifier, as transformers' `BertForSequenceClassification`.
#[derive(Debug, Clone)]
pub struct BertForSequenceClassification {
    /// The configuration it was built from.
    pub config: BertConfig,
    /// `bert.embeddings`.
    pub embeddings: BertEmbeddings,
    /// `bert.encoder.layer.*`.
    pub layers: Vec<BertLayer>,
    /// `bert.pooler.dense` (tanh on the first token).
    pub pooler: Linear,
    /// Dropout before the classifier.
    pub classifier_dropout: Dropout,
    /// `classifier`, `[num_labels, hidden]`.
    pub classifier: Linear,
}

impl BertForSequenceClassification {
    /// Gets or creates every weight under `vb` (the root: names start with `bert.` / `classifier.`).
    pub fn new(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let bert = vb.pp("bert");
        let embeddings = BertEmbeddings::new(cfg, bert.pp("embeddings"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| BertLayer::new(cfg, i, bert.pp("encoder").pp("layer").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let std = cfg.initializer_range;
        let pooler = Linear::new(
            cfg.hidden_size,
            cfg.hidden_size,
            true,
            std,
            bert.pp("pooler").pp("dense"),
        )?;
        let classifier = Linear::new(cfg.hidden_size, cfg.num_labels(), true, std, vb.pp("classifier"))?;
        Ok(Self {
            config: cfg.clone(),
            embeddings,
            layers,
            pooler,
            classifier_dropout: Dropout::new(cfg.classifier_dropout.unwrap_or(cfg.hidden_dropout_prob)),
            classifier,
        })
    }

    /// Runs the model on `[batch, seq]` token ids (u32 or i64). `token_type_ids` default to
    /// zeros; `attention_mask` (1 = attend, 0 = padding) defaults to all ones.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        ctx: &mut ForwardCtx,
    ) -> Result<ModelOutput> {
        let mut x = self.embeddings.forward(input_ids, token_type_ids, ctx)?;
        let mask = match attention_mask {
            Some(m) => Some(additive_attention_mask(m, x.dtype())?),
            None => None,
        };
        let mut trace = Trace::start(&x, self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let (y, maps) = if i + 1 == self.layers.len() && ctx.first_token_only() {
                (layer.forward_first(&x, mask.as_ref(), ctx)?, None)
            } else {
                layer.forward(&x, mask.as_ref(), ctx)?
            };
            trace.layer(&y, maps);
            x = y;
        }
        let cls = x.narrow(1, 0, 1)?.squeeze(1)?;
        let pooled = self.pooler.forward_ctx(&cls, ctx)?.tanh()?;
        let logits = self
            .classifier
            .forward_ctx(&self.classifier_dropout.forward(&pooled, ctx)?, ctx)?;
        Ok(trace.finish(logits, x, pooled))
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
    use crate::ml::checkpoint::{load_pretrained, LoadOptions, Pretrained};
    use crate::ml::models::config::ModelConfig;
    use crate::ml::models::model::Model;
    use crate::ml::models::params::ParamStore;
    use crate::ml::testutil::*;
    use candle_core::Device;
    use candle_transformers::models::bert as oracle;

    fn bert(p: &Pretrained) -> &BertForSequenceClassification {
        match &p.model {
            Model::Bert(m) => m,
            Model::Vit(_) => unreachable!(),
        }
    }

    /// The fused attention inside the whole model, in train mode with dropout and padding,
    /// against the unfused attention (what `with_attention_maps` runs): the same dropout draw
    /// gives the same mask, so loss and every gradient agree to rounding.
    #[test]
    fn fused_and_unfused_attention_train_the_same_way() {
        let cfg = tiny_bert(3);
        let params = ParamStore::new(11);
        let model = BertForSequenceClassification::new(&cfg, params.var_builder(DType::F32, &Device::Cpu)).unwrap();
        let (ids, mask, types) = text_batch(4, 8, cfg.vocab_size, 1);
        assert!(
            mask.sum_all().unwrap().to_scalar::<u32>().unwrap() < 32,
            "the batch has padding"
        );
        let labels = Tensor::new(&[0u32, 2, 1, 2], &Device::Cpu).unwrap();
        let run = |ctx: &mut ForwardCtx| {
            let out = model.forward(&ids, Some(&types), Some(&mask), ctx).unwrap();
            loss_and_gradients(&params, &out.logits, &labels)
        };
        let fused = run(&mut ForwardCtx::train(5));
        let unfused = run(&mut ForwardCtx::train(5).with_attention_maps());
        let err = max_rel_diff(&fused, &unfused);
        assert!(err < 1e-4, "relative difference {err}");
        assert_ne!(
            fused,
            run(&mut ForwardCtx::train(6)),
            "another dropout seed changes the step"
        );
        // A loss that reads the logits only: the last layer computes the first token alone and
        // drops what the whole layer drops there, so the step is the same.
        let first = run(&mut ForwardCtx::train(5).logits_only());
        let err = max_rel_diff(&first, &fused);
        assert!(err < 1e-4, "first-token step: relative difference {err}");
    }

    #[test]
    fn one_training_step_gives_every_variable_a_gradient() {
        let cfg = tiny_bert(3);
        let params = ParamStore::new(11);
        let model = BertForSequenceClassification::new(&cfg, params.var_builder(DType::F32, &Device::Cpu)).unwrap();
        let (ids, mask, types) = text_batch(4, 8, cfg.vocab_size, 1);
        let out = model
            .forward(
                &ids,
                Some(&types),
                Some(&mask),
                &mut ForwardCtx::train(3).with_attention_maps(),
            )
            .unwrap();
        assert_eq!(out.logits.dims(), &[4, 3]);
        assert_eq!(out.hidden_states.len(), 3);
        assert_eq!(out.attentions.len(), 2);
        assert_eq!(out.attentions[0].dims(), &[4, 2, 8, 8]);
        assert_eq!(out.hidden_states[2].dims(), &[4, 8, 16]);
        let loss = candle_nn::loss::cross_entropy(&out.logits, &targets(4, 3, 2)).unwrap();
        let grads = loss.backward().unwrap();
        let n = assert_every_var_has_gradient(&params, &grads);
        // 5 embedding vars + 16 per layer + pooler (2) + classifier (2).
        assert_eq!(n, 5 + 16 * cfg.num_hidden_layers + 4);
    }

    #[test]
    fn dropout_only_in_train_mode() {
        let cfg = tiny_bert(2);
        let p = Pretrained::random(&ModelConfig::Bert(cfg.clone()), 5, &Device::Cpu).unwrap();
        let (ids, mask, _) = text_batch(2, 6, cfg.vocab_size, 4);
        let run = |ctx: &mut ForwardCtx| {
            bert(&p)
                .forward(&ids, None, Some(&mask), ctx)
                .unwrap()
                .logits
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let e1 = run(&mut ForwardCtx::eval());
        assert_eq!(e1, run(&mut ForwardCtx::eval()));
        let t1 = run(&mut ForwardCtx::train(1));
        assert_eq!(t1, run(&mut ForwardCtx::train(1)), "same dropout seed, same output");
        assert_ne!(t1, e1);
        assert_ne!(t1, run(&mut ForwardCtx::train(2)));
    }

    #[test]
    fn same_seed_gives_bit_identical_weights() {
        let cfg = ModelConfig::Bert(tiny_bert(2));
        let a = Pretrained::random(&cfg, 42, &Device::Cpu)
            .unwrap()
            .params
            .tensors()
            .unwrap();
        let b = Pretrained::random(&cfg, 42, &Device::Cpu)
            .unwrap()
            .params
            .tensors()
            .unwrap();
        let c = Pretrained::random(&cfg, 43, &Device::Cpu)
            .unwrap()
            .params
            .tensors()
            .unwrap();
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (k, t) in &a {
            assert_eq!(bits(t), bits(&b[k]), "{k}");
        }
        let w = "bert.encoder.layer.0.attention.self.query.weight";
        assert_ne!(bits(&a[w]), bits(&c[w]));
        // HF-style init: normal(0, 0.02) weights, zero biases, unit LayerNorm scales.
        let std: f32 = a[w]
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .sqrt()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!((std - 0.02).abs() < 0.005, "init std {std}");
        assert_eq!(bits(&a["bert.pooler.dense.bias"]), vec![0; 16]);
        assert_eq!(
            a["bert.embeddings.LayerNorm.weight"].to_vec1::<f32>().unwrap(),
            vec![1.0; 16]
        );
    }

    /// Reading only the logits, the last layer computes the first token alone (its attention over
    /// every token, padding masked): the same logits and first-token state as the whole forward,
    /// on trainable and on frozen weights; with attention maps asked for, the whole sequence.
    #[test]
    fn logits_only_forward_gives_the_same_logits() {
        let mut cfg = tiny_bert(3);
        cfg.initializer_range = 0.3;
        let p = Pretrained::random(&ModelConfig::Bert(cfg.clone()), 9, &Device::Cpu).unwrap();
        let frozen =
            BertForSequenceClassification::new(&cfg, p.params.frozen_var_builder(DType::F32, &Device::Cpu)).unwrap();
        let (ids, mask, types) = text_batch(3, 7, cfg.vocab_size, 8);
        for m in [bert(&p), &frozen] {
            let run = |ctx: ForwardCtx| m.forward(&ids, Some(&types), Some(&mask), &mut { ctx }).unwrap();
            let full = run(ForwardCtx::eval());
            let fast = run(ForwardCtx::eval().logits_only());
            let e = rel_diff(&fast.logits, &full.logits);
            assert!(e < 1e-5, "logits differ: {e}");
            assert_eq!(fast.last_hidden_state.dims(), &[3, 1, 16]);
            let first = full.last_hidden_state.narrow(1, 0, 1).unwrap();
            assert!(rel_diff(&fast.last_hidden_state, &first) < 1e-5);
            assert_eq!(fast.hidden_states.len(), full.hidden_states.len());
            let maps = run(ForwardCtx::eval().logits_only().with_attention_maps());
            assert_eq!(maps.last_hidden_state.dims(), &[3, 7, 16]);
        }
        // The padding mask reaches the first-token attention: without it the padded row differs.
        let unmasked = frozen
            .forward(&ids, Some(&types), None, &mut ForwardCtx::eval().logits_only())
            .unwrap();
        let masked = frozen
            .forward(&ids, Some(&types), Some(&mask), &mut ForwardCtx::eval().logits_only())
            .unwrap();
        let last = |t: &Tensor| t.narrow(0, 2, 1).unwrap();
        assert!(max_abs_diff(&last(&unmasked.logits), &last(&masked.logits)) > 1e-6);
    }

    /// Same checkpoint, eval mode: our BERT agrees with candle-transformers' BertModel.
    #[test]
    fn agrees_with_candle_transformers_bert() {
        let mut cfg = tiny_bert(3);
        // Larger weights than the default 0.02 so attention is far from uniform.
        cfg.initializer_range = 0.3;
        let p = Pretrained::random(&ModelConfig::Bert(cfg.clone()), 9, &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        p.save(dir.path()).unwrap();

        let (ids, mask, types) = text_batch(3, 7, cfg.vocab_size, 8);
        let ours = bert(&p)
            .forward(&ids, Some(&types), Some(&mask), &mut ForwardCtx::eval())
            .unwrap();

        let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        let ocfg: oracle::Config = serde_json::from_str(&text).unwrap();
        let weights = dir.path().join("model.safetensors");
        let vb =
            unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &Device::Cpu).unwrap() };
        let theirs = oracle::BertModel::load(vb.clone(), &ocfg).unwrap();
        let hidden = theirs.forward(&ids, &types, Some(&mask)).unwrap();
        let rel = rel_diff(&ours.last_hidden_state, &hidden);
        crate::say!("bert oracle: last hidden state rel diff {rel:e}");
        assert!(rel < 1e-4, "last hidden state differs: {rel}");

        // The pooled path on top of their hidden state, with candle-nn's (fused) layers.
        let pooler = candle_nn::linear(16, 16, vb.pp("bert.pooler.dense")).unwrap();
        let classifier = candle_nn::linear(16, 3, vb.pp("classifier")).unwrap();
        let cls = hidden.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
        let logits = classifier
            .forward(&pooler.forward(&cls).unwrap().tanh().unwrap())
            .unwrap();
        let rel = rel_diff(&ours.logits, &logits);
        crate::say!("bert oracle: logits rel diff {rel:e}");
        assert!(rel < 1e-4, "logits differ: {rel}");
    }

    /// The real all-MiniLM-L6-v2 checkpoint (no `bert.` prefix, no head) against the oracle.
    #[test]
    fn loads_real_minilm_checkpoint_like_candle_transformers() {
        let Some(dir) = minilm_dir() else { return };
        let p = load_pretrained(&dir, &LoadOptions::default()).unwrap();
        assert_eq!(p.report.initialised, vec!["classifier.bias", "classifier.weight"]);
        assert!(p.report.unused.is_empty(), "unused: {:?}", p.report.unused);
        assert_eq!(p.report.loaded.len(), 5 + 16 * 6 + 2);
        assert_eq!(p.params.num_parameters(), 22_713_216 + 384 * 2 + 2);

        // [CLS] the movie was great [SEP] [PAD], and a second row without padding.
        let ids = Tensor::new(
            &[
                [101u32, 1996, 3185, 2001, 2307, 102, 0],
                [101, 2023, 2003, 6659, 999, 2204, 102],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]], &Device::Cpu).unwrap();
        let types = ids.zeros_like().unwrap();
        let ours = bert(&p)
            .forward(&ids, None, Some(&mask), &mut ForwardCtx::eval())
            .unwrap();

        let ocfg: oracle::Config =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        let vb = unsafe {
            candle_nn::VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &Device::Cpu)
                .unwrap()
        };
        let theirs = oracle::BertModel::load(vb, &ocfg)
            .unwrap()
            .forward(&ids, &types, Some(&mask))
            .unwrap();
        let rel = rel_diff(&ours.last_hidden_state, &theirs);
        crate::say!("MiniLM oracle: last hidden state rel diff {rel:e}");
        assert!(rel < 1e-4, "MiniLM last hidden state differs: {rel}");
    }
}

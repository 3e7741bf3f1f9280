//! What a classifier's forward pass returns.

use candle_core::Tensor;

use super::attention::Maps;

/// Logits plus every intermediate representation (for intermediate-layer distillation).
#[derive(Debug, Clone)]
pub struct ModelOutput {
    /// Class scores, `[batch, num_labels]`.
    pub logits: Tensor,
    /// Embedding output followed by each encoder layer's output: `num_layers + 1` tensors of
    /// `[batch, seq, hidden]` (as `output_hidden_states=True` in transformers); with
    /// `ForwardCtx::logits_only` the last is `[batch, 1, hidden]` (the first token).
    pub hidden_states: Vec<Tensor>,
    /// Each layer's attention probabilities, `[batch, heads, seq, seq]`, before dropout; empty
    /// unless the forward context asked for them (`ForwardCtx::with_attention_maps`).
    pub attentions: Vec<Tensor>,
    /// Each layer's scaled attention scores `q·kᵀ/√d` before the mask and the softmax,
    /// `[batch, heads, seq, seq]` (TinyBERT's attention loss compares these); empty unless asked
    /// for, as `attentions`.
    pub attention_scores: Vec<Tensor>,
    /// Final sequence representation, `[batch, seq, hidden]` (ViT: after the final LayerNorm);
    /// `[batch, 1, hidden]` with `ForwardCtx::logits_only`.
    pub last_hidden_state: Tensor,
    /// The vector the classifier reads, `[batch, hidden]` (BERT: the tanh pooler; ViT: the
    /// normalised CLS token), before classifier dropout.
    pub pooled: Tensor,
}

/// Every layer's outputs, collected while an encoder runs (shared by BERT and ViT).
pub(crate) struct Trace {
    hidden_states: Vec<Tensor>,
    attentions: Vec<Tensor>,
    attention_scores: Vec<Tensor>,
}

impl Trace {
    /// Starts with the embedding output, for an encoder of `layers` layers.
    pub(crate) fn start(embeddings: &Tensor, layers: usize) -> Self {
        let mut hidden_states = Vec::with_capacity(layers + 1);
        hidden_states.push(embeddings.clone());
        Self {
            hidden_states,
            attentions: Vec::with_capacity(layers),
            attention_scores: Vec::with_capacity(layers),
        }
    }

    /// Records one layer's output and, when computed, its attention maps.
    pub(crate) fn layer(&mut self, output: &Tensor, maps: Option<Maps>) {
        self.hidden_states.push(output.clone());
        if let Some(m) = maps {
            self.attentions.push(m.probs);
            self.attention_scores.push(m.scores);
        }
    }

    /// The model's output, with what was recorded.
    pub(crate) fn finish(self, logits: Tensor, last_hidden_state: Tensor, pooled: Tensor) -> ModelOutput {
        ModelOutput {
            logits,
            hidden_states: self.hidden_states,
            attentions: self.attentions,
            attention_scores: self.attention_scores,
            last_hidden_state,
            pooled,
        }
    }
}

//! What a classifier's forward pass returns.

use candle_core::Tensor;

/// Logits plus every intermediate representation (for intermediate-layer distillation).
#[derive(Debug, Clone)]
pub struct ModelOutput {
    /// Class scores, `[batch, num_labels]`.
    pub logits: Tensor,
    /// Embedding output followed by each encoder layer's output: `num_layers + 1` tensors of
    /// `[batch, seq, hidden]` (as `output_hidden_states=True` in transformers).
    pub hidden_states: Vec<Tensor>,
    /// Each layer's attention probabilities, `[batch, heads, seq, seq]`, before dropout.
    pub attentions: Vec<Tensor>,
    /// Each layer's scaled attention scores `q·kᵀ/√d` before the mask and the softmax,
    /// `[batch, heads, seq, seq]` (TinyBERT's attention loss compares these).
    pub attention_scores: Vec<Tensor>,
    /// Final sequence representation, `[batch, seq, hidden]` (ViT: after the final LayerNorm).
    pub last_hidden_state: Tensor,
    /// The vector the classifier reads, `[batch, hidden]` (BERT: the tanh pooler; ViT: the
    /// normalised CLS token), before classifier dropout.
    pub pooled: Tensor,
}

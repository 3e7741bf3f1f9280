//! Making models smaller: NF4 quantization, LoRA adapters, magnitude pruning, and honest size
//! measurement. Builds on [`super::models`] and [`super::kernels`].

/// LoRA adapters on linear layers, as Hugging Face PEFT attaches, merges and saves them.
pub mod lora;
/// Why LoRA adapters cannot be attached, merged, saved or read.
pub mod lora_error;
/// NF4 4-bit blockwise quantization, bit-compatible with bitsandbytes.
pub mod nf4;
/// L1 magnitude pruning (per tensor, global) and attention-head removal.
pub mod prune;
/// A model's size in bytes in the formats a researcher compares (dense, NF4, sparse).
pub mod sizes;

//! The bottom of `ml`: CPU kernels and process-wide runtime settings that the model layers call.
//! Nothing here knows about models, configs or training; it imports nothing else from `ml`.

/// A LoRA adapter's two rank-r steps row by row (`y += B·(scale·A·x)`), on AVX-512, AVX2 or plain code.
pub(crate) mod adapter_kernel;
/// The device the ops compute on (`--device`): choice, resolution, labels.
pub mod device;
/// The input's gradient through a frozen weight held outside autograd (packed NF4 or sparse).
pub mod frozen_grad;
/// Fused CPU kernels with analytic backward passes (LayerNorm, softmax, GELU, dropout masks).
pub mod fused;
/// Fused multi-head self-attention core with dropout on the probabilities.
pub mod fused_attention;
/// The fully connected layer `y = x·Wᵀ + b` as one candle op with an analytic backward pass.
pub mod fused_linear;
/// Matrix products on strided f32 views through the `gemm` crate.
pub(crate) mod gemm;
/// How much more memory the process may take (RAM, swap, cgroup limits), checked before a model is built.
pub mod host_memory;
/// The vector instruction set the kernels run (AVX-512, AVX2, baseline), chosen at run time.
pub mod isa;
/// Memory reserved by the stages running side by side in this process; checks that wait or fail.
pub mod memory_ledger;
/// What other rkd processes of this user on the machine reserved, through a shared folder.
pub mod memory_peers;
/// NF4 weights held 4-bit on any device as tensors, dequantized there by tensor ops.
pub mod nf4_device;
/// Products with NF4 weights dequantized panel by panel inside the CPU kernel.
pub mod nf4_kernel;
/// An NF4 layer (weight, bias, LoRA adapter) and the inference ops on it (GELU, residual, side by side).
pub mod nf4_layer;
/// What the NF4 and sparse inference ops share (their forward pass and size checks).
pub(crate) mod packed_op;
/// Seeded, portable random numbers, derived seeds and counter-based dropout masks.
pub mod rng;
/// Process-wide settings (heap, thread pools) applied once at start-up; rayon pools of a given size.
pub mod runtime;
/// Several linear layers on one input, outputs side by side, without stacking the weights (inference).
pub mod side_by_side;
/// Products with pruned weights held in compressed sparse rows (inference).
pub mod sparse_kernel;
/// Transposes of 8-row groups between row-major data and column-major panels.
pub(crate) mod transpose;

//! Training and evaluating models: the training loop, optimizer, schedule, distillation losses,
//! metrics and student initialisation. Builds on [`super::models`] and [`super::kernels`].

/// A training batch whose activations cannot fit in memory is an error before its forward pass.
pub mod activations;
/// Knowledge-distillation losses and multi-teacher fusion.
pub mod distill;
/// Why a training run stopped early.
pub mod error;
/// Dynamic loss scaling for f16 training.
pub mod loss_scale;
/// Classification metrics: predictions, confusion counts, accuracy, loss.
pub mod metrics;
/// AdamW and global-norm gradient clipping.
pub mod optim;
/// Regression: the loss against f32 targets, Pearson and Spearman correlation.
pub mod regression;
/// What a training run did: loss curve, epochs, kept epoch.
pub mod report;
/// Training checkpoints: what the loop saves and resumes from.
pub mod resume;
/// Learning-rate schedule: linear warm-up then linear decay.
pub mod schedule;
/// One training step's loss and gradients by name, for comparing devices and kernel paths.
pub mod step_grads;
/// Student initialisation from a teacher's weights (DistilBERT-style layer selection).
pub mod student;
/// The training loop: batches, AdamW, schedule, evaluation each epoch, best checkpoint.
pub mod train;

//! Training and evaluating models: the training loop, optimizer, schedule, distillation losses,
//! metrics and student initialisation. Builds on [`super::models`] and [`super::kernels`].

/// Knowledge-distillation losses and multi-teacher fusion.
pub mod distill;
/// Classification metrics: predictions, confusion counts, accuracy, loss.
pub mod metrics;
/// AdamW and global-norm gradient clipping.
pub mod optim;
/// Learning-rate schedule: linear warm-up then linear decay.
pub mod schedule;
/// Student initialisation from a teacher's weights (DistilBERT-style layer selection).
pub mod student;
/// The training loop: batches, AdamW, schedule, evaluation each epoch, best checkpoint.
pub mod train;

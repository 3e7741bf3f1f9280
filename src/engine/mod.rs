//! The engine: deciding what runs and why, running stages in parallel with progress, and
//! recording runs; locally, or as Slurm jobs.

pub mod compare;
pub mod data_check;
pub mod explain;
pub mod preflight;
pub mod record;
pub mod run;
pub mod scheduler;
pub mod select;
pub mod slurm;
pub mod sync;

// Cancellation and progress belong to the ops' context (ops never import the engine); the
// engine uses them through these paths.
pub use crate::ops::{cancel, progress};

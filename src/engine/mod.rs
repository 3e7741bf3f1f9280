//! The engine: deciding what runs and why, running stages in parallel with progress, and
//! recording runs; locally, or as Slurm jobs.

pub mod cancel;
pub mod explain;
pub mod preflight;
pub mod progress;
pub mod record;
pub mod run;
pub mod scheduler;
pub mod slurm;

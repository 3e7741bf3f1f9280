//! The engine: deciding what runs and why, running stages in parallel with progress, and
//! recording runs.

pub mod cancel;
pub mod explain;
pub mod progress;
pub mod record;
pub mod run;
pub mod scheduler;

//! The Plan: the DAG of stages with their keys, and how it is rendered and explained.

mod build;
pub mod fingerprint;
pub mod graph;
pub mod key;

pub use build::{for_each_keyed_path, ParamsJson, Plan, PlanStage};

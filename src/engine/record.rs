//! Building the record of a plan stage (for run records, the index, and explanations).

use crate::plan::{Plan, PlanStage};
use crate::store::key::hex;
use crate::store::records::{Outcome, StageRecord};
use std::collections::BTreeMap;

/// The record of a stage as the current plan defines it.
pub fn stage_record(plan: &Plan, stage: &PlanStage, status: Outcome) -> StageRecord {
    StageRecord {
        name: stage.def.name.clone(),
        aliases: stage.def.aliases.clone(),
        op: stage.def.op.name.to_string(),
        op_version: stage.def.op.version,
        key: hex(&stage.key),
        status,
        time_s: 0.0,
        metrics: BTreeMap::new(),
        params: plan.params_json(stage),
        inputs: stage
            .def
            .inputs
            .iter()
            .map(|id| (plan.name(*id).to_string(), hex(&plan.stage(*id).key)))
            .collect(),
        files: stage.files.iter().map(|(p, k)| (p.clone(), hex(k))).collect(),
        resumed_from: None,
        attempts: 1,
        gpu_memory_peak_bytes: None,
        error: None,
    }
}

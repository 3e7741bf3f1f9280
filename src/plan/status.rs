//! Whether each stage of a plan would run, and why.

use super::{Plan, PlanStage};
use crate::store::Store;
use serde::Serialize;

/// What `plan` says about one stage.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Its result is in the store.
    Cached,
    /// It must run.
    Run,
}

/// A stage's status and the reasons for it.
#[derive(Clone, Debug, Serialize)]
pub struct StageStatus {
    /// Cached or run.
    pub status: Status,
    /// Why it runs (empty when cached).
    pub reasons: Vec<String>,
}

/// The status of every stage, in plan order.
pub fn statuses(plan: &Plan, store: &Store) -> Vec<StageStatus> {
    plan.stages().map(|s| status_of(s, store)).collect()
}

fn status_of(stage: &PlanStage, store: &Store) -> StageStatus {
    if store.contains(&stage.key) {
        StageStatus {
            status: Status::Cached,
            reasons: Vec::new(),
        }
    } else {
        StageStatus {
            status: Status::Run,
            reasons: vec!["new: no stored result for this key".into()],
        }
    }
}

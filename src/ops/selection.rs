//! Which splits chose a result: every stage leaves `selection.json` beside its output, naming
//! the splits that model selection (the best epoch) looked at, its own and its inputs'. `eval`
//! and `report` refuse to report a number on such a split: it would be biased upwards, and
//! more so the more epochs and sweep points were tried.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{OpContext, OpError};
use crate::data::{Dataset, SplitName};
use crate::registry::SplitChoice;
use crate::value::Value;

/// The file beside a stage's output.
pub const FILE: &str = "selection.json";

/// The splits that selected a result, and how, in words.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// Split names (`validation`, `holdout`, …) some selection looked at.
    pub selected_on: BTreeSet<String>,
    /// One sentence per selection ("epochs selected on the validation split").
    pub how: BTreeSet<String>,
}

impl Selection {
    /// What selection on `split` of `dataset` is called in reports.
    pub fn on(split: SplitName, dataset: &Dataset) -> Selection {
        let how = match split {
            SplitName::Holdout => format!(
                "epochs selected on {} held-out training examples",
                dataset.len(SplitName::Holdout)
            ),
            other => format!("epochs selected on the {other} split"),
        };
        Selection {
            selected_on: BTreeSet::from([split.as_str().to_string()]),
            how: BTreeSet::from([how]),
        }
    }

    /// Adds another selection.
    pub fn merge(&mut self, other: Selection) {
        self.selected_on.extend(other.selected_on);
        self.how.extend(other.how);
    }

    /// Reads `dir/selection.json`; a directory without one (a checkpoint from outside) was
    /// selected on nothing rkd knows of.
    pub fn read(dir: &Path) -> Result<Selection, OpError> {
        let path = dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| OpError::Failed(format!("{}: {e}", path.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Selection::default()),
            Err(e) => Err(OpError::Failed(format!("{}: {e}", path.display()))),
        }
    }

    /// The selections of every upstream stage the op's arguments name.
    pub fn inherited(ctx: &OpContext) -> Result<Selection, OpError> {
        let mut ids = Vec::new();
        for v in ctx.params.values() {
            stages(v, &mut ids);
        }
        let mut out = Selection::default();
        for id in ids {
            out.merge(Selection::read(&(ctx.input_dir)(id))?);
        }
        Ok(out)
    }

    /// Writes `dir/selection.json`.
    pub fn write(&self, dir: &Path) -> Result<(), OpError> {
        let path = dir.join(FILE);
        std::fs::write(&path, serde_json::to_vec_pretty(self).unwrap_or_default())
            .map_err(|e| OpError::Failed(format!("{}: {e}", path.display())))
    }

    /// `Err` when `split` selected this result: reporting on it would be biased.
    pub fn check_reportable(&self, split: SplitName, what: &str) -> Result<(), OpError> {
        if !self.selected_on.contains(split.as_str()) {
            return Ok(());
        }
        Err(OpError::Failed(format!(
            "{what} was selected on the {split} split (its epochs, or those of a model it was made from), \
             so its accuracy there is biased upwards and is not reported. Report another split \
             (`split: \"test\"`), or keep the {split} split unseen: add `holdout: 0.1` to the dataset (epochs \
             are then selected on 10% of train held out), or train with `select: \"last\"`"
        )))
    }
}

/// The split `eval` and `report` measure on: `auto` is the test split when the dataset has
/// one with examples, else the validation split.
pub fn report_split(split: SplitChoice, dataset: &Dataset) -> SplitName {
    match split {
        SplitChoice::Auto if dataset.len(SplitName::Test) > 0 => SplitName::Test,
        SplitChoice::Auto | SplitChoice::Validation => SplitName::Validation,
        SplitChoice::Test => SplitName::Test,
        SplitChoice::Train => SplitName::Train,
    }
}

fn stages(v: &Value, out: &mut Vec<crate::value::StageId>) {
    match v {
        Value::Stage(id) => out.push(*id),
        Value::List(xs) => xs.iter().for_each(|x| stages(x, out)),
        Value::Record(r) => r.values().for_each(|x| stages(x, out)),
        _ => {}
    }
}

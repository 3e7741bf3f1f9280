//! Comparing two results of a pipeline, stage by stage (`rkd compare A B`): which parameters
//! changed, how each recorded metric moved, and — where both sides evaluated a model on the same
//! examples — whether the difference in per-example correctness is more than chance (McNemar's
//! exact test).
//!
//! A side is a run record (the stages as that run saw them, their parameters read from the
//! entries' `spec.yaml`) or a pipeline's current plan (its metrics read from the entries the
//! store holds). Stages are matched by name.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Serialize;
use statrs::distribution::{Binomial, DiscreteCDF};

use super::explain::reasons;
use super::record::stage_record;
use crate::plan::Plan;
use crate::store::records::{Outcome, RunRecord, StageRecord};
use crate::store::Store;

/// One stage as a side saw it.
#[derive(Debug, Clone)]
pub struct SideStage {
    /// Its record: name, op, key, parameters (empty when the entry is gone), metrics.
    pub record: StageRecord,
    /// Its output folder in the store, when the store holds it.
    pub out: Option<PathBuf>,
}

/// One side of a comparison.
#[derive(Debug, Clone)]
pub struct Side {
    /// What it is, for the reader (`run 2026-12-06T13:13:31Z of p.rkd`, `p.rkd now`).
    pub label: String,
    /// Its stages, in plan order.
    pub stages: Vec<SideStage>,
}

impl Side {
    /// The stages of a run record, with their parameters (and the metrics of the stored results
    /// it used) from the store's entries.
    pub fn of_record(store: &Store, record: &RunRecord, label: String) -> Side {
        let stages = record
            .stages
            .iter()
            .map(|s| {
                let key = crate::store::key::parse(&s.key);
                let mut r = s.clone();
                if let Some(spec) = key.and_then(|k| store.stage_spec(&k)) {
                    r.params = spec.params;
                    r.inputs = spec.inputs;
                    r.files = spec.files;
                }
                // A run records the metrics of what it ran; those of the stored results it used
                // (cached, pulled) are the entries'.
                if r.metrics.is_empty() && matches!(r.status, Outcome::Cached | Outcome::Pulled) {
                    r.metrics = key.and_then(|k| store.stage_metrics(&k)).unwrap_or_default();
                }
                SideStage {
                    out: key.filter(|k| store.contains(k)).map(|k| store.out_dir(&k)),
                    record: r,
                }
            })
            .collect();
        Side { label, stages }
    }

    /// The stages of a plan, with the metrics of those the store holds.
    pub fn of_plan(plan: &Plan, store: &Store, label: String) -> Side {
        let stages = plan
            .stages()
            .map(|s| {
                let stored = store.contains(&s.key);
                let mut r = stage_record(plan, s, if stored { Outcome::Cached } else { Outcome::Skipped });
                if stored {
                    r.metrics = store.stage_metrics(&s.key).unwrap_or_default();
                }
                SideStage {
                    out: stored.then(|| store.out_dir(&s.key)),
                    record: r,
                }
            })
            .collect();
        Side { label, stages }
    }
}

/// How one metric moved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricDelta {
    /// Its name in metrics.json.
    pub name: String,
    /// Side A's value.
    pub a: Option<f64>,
    /// Side B's value.
    pub b: Option<f64>,
    /// B − A, where both have it.
    pub delta: Option<f64>,
}

/// McNemar's exact test on two evaluations of the same examples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct McNemar {
    /// Examples evaluated.
    pub examples: u64,
    /// Examples A got right and B wrong.
    pub only_a_correct: u64,
    /// Examples B got right and A wrong.
    pub only_b_correct: u64,
    /// Two-sided p-value: the probability of a split at least this uneven if A and B were
    /// equally good (binomial, p = 1/2, over the examples they disagree on).
    pub p_value: f64,
}

/// One stage compared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageDiff {
    /// Its name.
    pub name: String,
    /// Its op.
    pub op: String,
    /// `same` (one key), `changed`, `only_a` or `only_b`.
    pub status: &'static str,
    /// Side A's key (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_a: Option<String>,
    /// Side B's key (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_b: Option<String>,
    /// What differs ("parameter changed: temperature 2.0 → 4.0").
    pub changes: Vec<String>,
    /// Every metric either side recorded, by name.
    pub metrics: Vec<MetricDelta>,
    /// For two evaluations of the same examples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcnemar: Option<McNemar>,
}

/// The whole comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// Side A, in words.
    pub a: String,
    /// Side B, in words.
    pub b: String,
    /// Every stage of either side: A's order, then those only B has.
    pub stages: Vec<StageDiff>,
}

/// Compares two sides stage by stage.
pub fn compare(a: &Side, b: &Side) -> Comparison {
    let by_name = |side: &Side| -> HashMap<String, usize> {
        side.stages
            .iter()
            .enumerate()
            .map(|(i, s)| (s.record.name.clone(), i))
            .collect()
    };
    let (in_a, in_b) = (by_name(a), by_name(b));
    let mut stages: Vec<StageDiff> = a
        .stages
        .iter()
        .map(|sa| diff(Some(sa), in_b.get(&sa.record.name).map(|&i| &b.stages[i])))
        .collect();
    stages.extend(
        b.stages
            .iter()
            .filter(|sb| !in_a.contains_key(&sb.record.name))
            .map(|sb| diff(None, Some(sb))),
    );
    Comparison {
        a: a.label.clone(),
        b: b.label.clone(),
        stages,
    }
}

fn diff(a: Option<&SideStage>, b: Option<&SideStage>) -> StageDiff {
    let either = a.or(b).expect("a stage of one side at least");
    let (status, changes) = match (a, b) {
        (Some(x), Some(y)) if x.record.key == y.record.key => ("same", Vec::new()),
        (Some(x), Some(y)) => {
            let changes = if x.record.params.is_null() || y.record.params.is_null() {
                vec!["key changed (the parameters of one side are no longer in the store)".to_string()]
            } else {
                reasons(&y.record, &x.record)
            };
            ("changed", changes)
        }
        (Some(_), None) => ("only_a", Vec::new()),
        _ => ("only_b", Vec::new()),
    };
    let mut names: Vec<&String> = a.iter().chain(b.iter()).flat_map(|s| s.record.metrics.keys()).collect();
    names.sort();
    names.dedup();
    let metrics = names
        .into_iter()
        .map(|n| {
            let va = a.and_then(|s| s.record.metrics.get(n).copied());
            let vb = b.and_then(|s| s.record.metrics.get(n).copied());
            MetricDelta {
                name: n.clone(),
                a: va,
                b: vb,
                delta: va.zip(vb).map(|(x, y)| y - x),
            }
        })
        .collect();
    let mcnemar = match (a, b) {
        (Some(x), Some(y)) if status == "changed" => x
            .out
            .as_deref()
            .zip(y.out.as_deref())
            .and_then(|(da, db)| mcnemar(da, db)),
        _ => None,
    };
    StageDiff {
        name: either.record.name.clone(),
        op: either.record.op.clone(),
        status,
        key_a: a.map(|s| s.record.key.clone()),
        key_b: b.map(|s| s.record.key.clone()),
        changes,
        metrics,
        mcnemar,
    }
}

/// Per-example correctness from a classification eval's `predictions.csv`
/// (`index,label,predicted,correct`), by index and with its label; `None` without one, or for a
/// regression (its file has no `correct` column).
fn correctness(out: &Path) -> Option<BTreeMap<u64, (u64, bool)>> {
    let text = std::fs::read_to_string(out.join(crate::ops::eval::PREDICTIONS_CSV)).ok()?;
    let mut lines = text.lines();
    if lines.next()? != "index,label,predicted,correct" {
        return None;
    }
    lines
        .map(|line| {
            let mut cells = line.split(',');
            let index = cells.next()?.parse().ok()?;
            let label: u64 = cells.next()?.parse().ok()?;
            let _predicted = cells.next()?;
            let correct = cells.next()? == "1";
            Some((index, (label, correct)))
        })
        .collect()
}

/// McNemar's exact test between two evaluations of the same examples (the same indices and
/// labels), `None` unless both wrote class predictions for the same examples.
pub fn mcnemar(a: &Path, b: &Path) -> Option<McNemar> {
    let (ca, cb) = (correctness(a)?, correctness(b)?);
    // The same examples: the same indices with the same labels.
    let same = ca.len() == cb.len() && ca.iter().zip(&cb).all(|((i, (l, _)), (j, (m, _)))| i == j && l == m);
    if !same || ca.is_empty() {
        return None;
    }
    let (mut only_a, mut only_b) = (0u64, 0u64);
    for (i, (_, right_a)) in &ca {
        match (right_a, cb[i].1) {
            (true, false) => only_a += 1,
            (false, true) => only_b += 1,
            _ => {}
        }
    }
    Some(McNemar {
        examples: ca.len() as u64,
        only_a_correct: only_a,
        only_b_correct: only_b,
        p_value: exact_p(only_a, only_b),
    })
}

/// The two-sided exact McNemar p-value: 2 · P(X ≤ min(b, c)) for X ~ Binomial(b + c, 1/2),
/// at most 1; 1 when the two never disagree.
fn exact_p(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let binomial = Binomial::new(0.5, n).expect("p = 1/2 is a probability");
    (2.0 * binomial.cdf(b.min(c))).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_by_hand() {
        // 10 disagreements split 8–2: 2 · P(X ≤ 2), X ~ B(10, 1/2) = 2 · (1 + 10 + 45) / 1024.
        assert!((exact_p(8, 2) - 112.0 / 1024.0).abs() < 1e-12);
        assert!((exact_p(2, 8) - 112.0 / 1024.0).abs() < 1e-12);
        assert_eq!(exact_p(5, 5), 1.0);
        assert_eq!(exact_p(0, 0), 1.0);
    }

    #[test]
    fn predictions_of_the_same_examples_are_paired_by_index() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let file = crate::ops::eval::PREDICTIONS_CSV;
        let header = "index,label,predicted,correct\n";
        let write = |dir: &tempfile::TempDir, rows: &str| {
            std::fs::write(dir.path().join(file), format!("{header}{rows}")).unwrap()
        };
        write(&a, "0,1,1,1\n1,0,0,1\n2,1,0,0\n3,0,1,0\n");
        write(&b, "0,1,0,0\n1,0,0,1\n2,1,1,1\n3,0,0,1\n");
        let m = mcnemar(a.path(), b.path()).unwrap();
        assert_eq!((m.examples, m.only_a_correct, m.only_b_correct), (4, 1, 2));
        // Other examples (other labels, or fewer), or a regression's scores: no test.
        write(&b, "0,0,0,1\n1,0,0,1\n2,1,1,1\n3,0,0,1\n");
        assert!(mcnemar(a.path(), b.path()).is_none());
        write(&b, "0,1,0,0\n");
        assert!(mcnemar(a.path(), b.path()).is_none());
        std::fs::write(b.path().join(file), "index,label,predicted\n0,1.5,0.3\n").unwrap();
        assert!(mcnemar(a.path(), b.path()).is_none());
    }
}

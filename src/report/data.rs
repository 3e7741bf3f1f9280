//! The report's input rows and the derived columns (compression ratios, retention of the
//! quality figure: accuracy, or Pearson's r for a regression).

use super::curves::Curve;
use super::error::ReportError;
use super::seeds::{seed_groups, SeedGroup};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;

/// What the `report` op measured: one row per model, plus the context a reader needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportData {
    /// Title of the report (the markdown heading and the plots' captions).
    pub title: String,
    /// Dataset name (`sst2`, `beans`).
    pub dataset: String,
    /// Split the accuracies were measured on (`validation`, `test`).
    pub split: String,
    /// How the models' epochs were selected, one sentence each (never on `split`).
    #[serde(default)]
    pub selection: Vec<String>,
    /// Examples in the split (what "within noise of chance" is judged by), when known.
    #[serde(default)]
    pub examples: Option<u64>,
    /// Majority-class accuracy on that split, as a fraction in [0, 1] (0 for a regression: no
    /// correlation).
    pub chance_level: f64,
    /// What each row's `quality` is: `accuracy`, or `pearson` for a regression (STS-B).
    #[serde(default = "accuracy")]
    pub quality_name: String,
    /// The task's own metric besides the quality (`MCC` for CoLA, `F1` for MRPC and QQP,
    /// `Spearman` for STS-B), when it has one; each row's value is its `score`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_name: Option<String>,
    /// Name of the row the ratios and retention are relative to (the teacher).
    pub baseline: String,
    /// The models, in the order they are shown.
    pub rows: Vec<ReportRow>,
    /// The training curves of the models that were trained, in the same order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub curves: Vec<Curve>,
}

/// One model's measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    /// Stage name (`teacher`, `mini[t=2.0,a=0.5]`).
    pub name: String,
    /// The stage's key (hex), when the model is a stage: `rkd report` relabels the row with the
    /// stage's current name, so a rename shows without rerunning anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Role or strategy that produced it (`teacher`, `successive`, `multi_agent`, `qlora`, `prune`).
    #[serde(alias = "role")]
    pub strategy: String,
    /// Op of the stage (`train`, `distill`, `fuse`, `qlora`, `prune`).
    pub op: String,
    /// Accuracy on the split, as a fraction in [0, 1]; for a regression Pearson's r, in [-1, 1]
    /// (see [`ReportData::quality_name`]).
    #[serde(alias = "accuracy")]
    pub quality: f64,
    /// The task's own metric on the split (see [`ReportData::score_name`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Number of parameters.
    pub parameters: u64,
    /// Number of nonzero parameters.
    pub nonzeros: u64,
    /// Bytes of the weights stored densely as f32.
    pub dense_bytes: u64,
    /// Bytes of the NF4-packed weights (4-bit codes + scales); `None` where not quantized.
    pub nf4_bytes: Option<u64>,
    /// Bytes of the sparse format (bitmask + nonzero values).
    pub sparse_bytes: u64,
    /// Bytes of the stage's artifact on disk.
    pub disk_bytes: u64,
    /// Inference latency per example, in milliseconds.
    pub latency_ms: f64,
}

/// Columns computed from a row and the baseline row; `None` where the baseline quantity is zero.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Derived {
    /// Baseline bytes on disk / this row's bytes on disk.
    pub compression_disk: Option<f64>,
    /// Baseline parameters / this row's parameters.
    pub compression_params: Option<f64>,
    /// This row's quality / the baseline's quality.
    pub retention: Option<f64>,
}

/// A row with its derived columns (flattened into one JSON object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportEntry {
    /// The measured columns.
    #[serde(flatten)]
    pub row: ReportRow,
    /// The derived columns.
    #[serde(flatten)]
    pub derived: Derived,
}

/// A validated report: the input's context plus every row with its derived columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Title of the report.
    pub title: String,
    /// Dataset name.
    pub dataset: String,
    /// Split the accuracies were measured on.
    pub split: String,
    /// How the models' epochs were selected, one sentence each.
    #[serde(default)]
    pub selection: Vec<String>,
    /// Examples in the split, when known.
    #[serde(default)]
    pub examples: Option<u64>,
    /// Majority-class accuracy, as a fraction (0 for a regression).
    pub chance_level: f64,
    /// What each row's `quality` is: `accuracy` or `pearson`.
    #[serde(default = "accuracy")]
    pub quality_name: String,
    /// The task's own metric besides the quality, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_name: Option<String>,
    /// Name of the baseline row.
    pub baseline: String,
    /// The rows, in input order.
    pub rows: Vec<ReportEntry>,
    /// The training curves of the models that were trained.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub curves: Vec<Curve>,
    /// Rows that differ only in their seed, summarised (mean, sample std, 95% CI).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seed_groups: Vec<SeedGroup>,
}

impl ReportData {
    /// Reads report data from JSON: the op's input, or a `report.json` written by [`super::write_report`].
    pub fn from_json(text: &str) -> Result<ReportData, ReportError> {
        serde_json::from_str(text).map_err(|e| ReportError::Parse(e.to_string()))
    }

    /// Checks the data and computes the derived columns.
    pub fn derive(&self) -> Result<Report, ReportError> {
        self.validate()?;
        let base = self
            .rows
            .iter()
            .find(|r| r.name == self.baseline)
            .expect("validated: baseline exists");
        let rows: Vec<ReportEntry> = self
            .rows
            .iter()
            .map(|row| ReportEntry {
                row: row.clone(),
                derived: derive_row(row, base),
            })
            .collect();
        let floor = if self.quality_name == "pearson" { -1.0 } else { 0.0 };
        let seed_rows: Vec<_> = rows
            .iter()
            .map(|e| (e.row.name.as_str(), e.row.quality, e.row.score))
            .collect();
        let seed_groups = seed_groups(&seed_rows, floor);
        Ok(Report {
            title: self.title.clone(),
            dataset: self.dataset.clone(),
            split: self.split.clone(),
            selection: self.selection.clone(),
            examples: self.examples,
            chance_level: self.chance_level,
            quality_name: self.quality_name.clone(),
            score_name: self.score_name.clone(),
            baseline: self.baseline.clone(),
            rows,
            curves: self.curves.clone(),
            seed_groups,
        })
    }

    fn validate(&self) -> Result<(), ReportError> {
        if self.rows.is_empty() {
            return Err(ReportError::NoRows);
        }
        let mut seen = BTreeSet::new();
        for row in &self.rows {
            if !seen.insert(row.name.as_str()) {
                return Err(ReportError::DuplicateRow(row.name.clone()));
            }
            match self.quality_name.as_str() {
                "accuracy" => check_range(&row.name, "accuracy", row.quality, FRACTION)?,
                "pearson" => check_range(&row.name, "pearson", row.quality, CORRELATION)?,
                other => return Err(ReportError::UnknownQuality(other.to_string())),
            }
            if !row.latency_ms.is_finite() || row.latency_ms < 0.0 {
                return Err(ReportError::InvalidValue {
                    row: row.name.clone(),
                    field: "latency_ms",
                    value: row.latency_ms,
                    expected: "a finite number of milliseconds >= 0",
                });
            }
        }
        check_range("(report)", "chance_level", self.chance_level, FRACTION)?;
        if !seen.contains(self.baseline.as_str()) {
            return Err(ReportError::UnknownBaseline {
                baseline: self.baseline.clone(),
                rows: self.rows.iter().map(|r| r.name.clone()).collect(),
            });
        }
        Ok(())
    }
}

/// A fraction in [0, 1].
const FRACTION: (f64, f64, &str) = (0.0, 1.0, "a fraction in [0, 1]");
/// A correlation in [-1, 1].
const CORRELATION: (f64, f64, &str) = (-1.0, 1.0, "a correlation in [-1, 1]");

fn check_range(
    row: &str,
    field: &'static str,
    value: f64,
    (lo, hi, expected): (f64, f64, &'static str),
) -> Result<(), ReportError> {
    if value.is_finite() && (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(ReportError::InvalidValue {
            row: row.to_string(),
            field,
            value,
            expected,
        })
    }
}

/// The default quality: accuracy.
fn accuracy() -> String {
    "accuracy".to_string()
}

fn ratio(numerator: f64, denominator: f64) -> Option<f64> {
    (denominator > 0.0).then(|| numerator / denominator)
}

fn derive_row(row: &ReportRow, base: &ReportRow) -> Derived {
    Derived {
        compression_disk: ratio(base.disk_bytes as f64, row.disk_bytes as f64),
        compression_params: ratio(base.parameters as f64, row.parameters as f64),
        retention: ratio(row.quality, base.quality),
    }
}

impl Report {
    /// Gives each row whose stage key `current` knows that stage's name now (the baseline
    /// follows its row), so a stage renamed since the report ran shows under its new name.
    /// Returns how many rows were renamed.
    pub fn relabel(&mut self, current: &dyn Fn(&str) -> Option<String>) -> usize {
        let mut renamed = 0;
        for e in &mut self.rows {
            let Some(now) = e.row.key.as_deref().and_then(current) else {
                continue;
            };
            if now != e.row.name {
                if e.row.name == self.baseline {
                    self.baseline = now.clone();
                }
                for c in &mut self.curves {
                    if c.key.is_some() && c.key == e.row.key {
                        c.name = now.clone();
                    }
                }
                e.row.name = now;
                renamed += 1;
            }
        }
        renamed
    }

    /// The baseline row (validated to exist).
    pub fn baseline_entry(&self) -> &ReportEntry {
        self.rows
            .iter()
            .find(|e| e.row.name == self.baseline)
            .expect("a Report's baseline row exists")
    }

    /// Reads a JSON file of [`ReportData`] (or a `report.json`) and derives the report.
    pub fn load(path: &Path) -> Result<Report, ReportError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReportError::Io {
            path: path.into(),
            source,
        })?;
        ReportData::from_json(&text)?.derive()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testdata::sample;
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-12)
    }

    #[test]
    fn relabel_gives_rows_their_current_names_and_the_baseline_follows() {
        let mut report = sample().derive().unwrap();
        let renamed = report.relabel(&|key| match key {
            "key-of-teacher" => Some("bert_base".into()),
            "key-of-q" => Some("q".into()),
            _ => None,
        });
        assert_eq!(renamed, 1);
        assert_eq!(report.baseline, "bert_base");
        assert_eq!(report.baseline_entry().row.name, "bert_base");
        assert!(report.rows.iter().any(|e| e.row.name == "q"));
    }

    #[test]
    fn derived_columns_are_relative_to_the_baseline() {
        let report = sample().derive().unwrap();
        let by = |name: &str| report.rows.iter().find(|e| e.row.name == name).unwrap().derived;
        let teacher = by("teacher");
        assert!(close(teacher.compression_disk, 1.0));
        assert!(close(teacher.compression_params, 1.0));
        assert!(close(teacher.retention, 1.0));
        let mini = by("mini");
        // 440_000_000 / 44_800_000 bytes, 110_000_000 / 11_200_000 params, 0.851 / 0.917.
        assert!(close(mini.compression_disk, 440_000_000.0 / 44_800_000.0));
        assert!(close(mini.compression_params, 110_000_000.0 / 11_200_000.0));
        assert!(close(mini.retention, 0.851 / 0.917));
        let q = by("q");
        assert!(close(q.compression_disk, 440_000_000.0 / 6_100_000.0));
    }

    #[test]
    fn zero_baseline_quantities_give_no_ratio() {
        let mut data = sample();
        data.rows[0].quality = 0.0;
        data.rows[1].disk_bytes = 0;
        let report = data.derive().unwrap();
        assert_eq!(report.rows[0].derived.retention, None);
        assert_eq!(report.rows[1].derived.compression_disk, None);
    }

    #[test]
    fn empty_rows_are_an_error() {
        let mut data = sample();
        data.rows.clear();
        let err = data.derive().unwrap_err();
        assert!(matches!(err, ReportError::NoRows));
        assert!(err.to_string().contains("no rows"), "{err}");
    }

    #[test]
    fn unknown_baseline_and_bad_values_are_errors() {
        let mut data = sample();
        data.baseline = "techer".into();
        let err = data.derive().unwrap_err().to_string();
        assert!(err.contains("techer") && err.contains("teacher"), "{err}");

        let mut data = sample();
        data.rows[2].quality = 85.1;
        let err = data.derive().unwrap_err().to_string();
        assert!(err.contains("accuracy") && err.contains("[0, 1]"), "{err}");

        let mut data = sample();
        data.rows[1].latency_ms = f64::NAN;
        assert!(data.derive().is_err());

        let mut data = sample();
        data.rows[2].name = "teacher".into();
        assert!(matches!(data.derive(), Err(ReportError::DuplicateRow(_))));
    }

    #[test]
    fn report_json_reads_back_as_data() {
        let data = sample();
        let json = serde_json::to_string(&data.derive().unwrap()).unwrap();
        assert_eq!(ReportData::from_json(&json).unwrap(), data);
    }
}

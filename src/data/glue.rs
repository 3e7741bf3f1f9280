//! `glue(task:, path:)`: the GLUE tasks with their metrics, read from the GLUE download's TSV
//! files (`train.tsv`, `dev.tsv`; MNLI's `dev_matched.tsv`/`dev_mismatched.tsv`) or from the
//! Hub's Parquet copy (`nyu-mll/glue`, one folder per task: `train-*.parquet`, `validation-*`),
//! or fetched from the Hub when no `path:` is given.
//!
//! GLUE hides its test labels (the TSV test files have none, the Hub's are -1), so no test split
//! is read. Labels are the class ids of the Hub's `ClassLabel` names, in that order; the TSV
//! files' string labels (MNLI, QNLI, RTE) map to the same ids.

use std::path::{Path, PathBuf};

use crate::keyword::Keyword;

use super::error::DataError;
use super::table::rows::{Cell, Flow};
use super::table::{self, Format, TableSplit};
use super::SplitName;
pub use crate::registry::GlueTask as Task;

/// The number a task is scored by (besides accuracy, which every classification task reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Accuracy alone (SST-2, MNLI, QNLI, RTE, WNLI).
    Accuracy,
    /// F1 of the positive class, with accuracy (MRPC, QQP).
    F1,
    /// Matthews correlation coefficient (CoLA).
    Matthews,
    /// Pearson and Spearman correlation of a regression (STS-B).
    Correlation,
}

/// Where a task's columns are, in each layout.
struct Layout {
    /// The Hub's column names: text, second text, label.
    hub: (&'static str, Option<&'static str>, &'static str),
    /// The TSV files' header names (text, second text, label), or for a file without a header
    /// (CoLA) the field positions.
    tsv: TsvColumns,
    /// Class names, by id (empty for regression).
    classes: &'static [&'static str],
    metric: Metric,
}

enum TsvColumns {
    Named(&'static str, Option<&'static str>, &'static str),
    /// No header: (text index, label index, fields per row).
    Positions(usize, usize),
}

fn layout(task: Task) -> Layout {
    use TsvColumns::Named;
    const NLI: &[&str] = &["entailment", "not_entailment"];
    let (hub, tsv, classes, metric) = match task {
        Task::Cola => (
            ("sentence", None, "label"),
            TsvColumns::Positions(3, 1),
            &["unacceptable", "acceptable"][..],
            Metric::Matthews,
        ),
        Task::Sst2 => (
            ("sentence", None, "label"),
            Named("sentence", None, "label"),
            &["negative", "positive"][..],
            Metric::Accuracy,
        ),
        Task::Mrpc => (
            ("sentence1", Some("sentence2"), "label"),
            Named("#1 String", Some("#2 String"), "Quality"),
            &["not_equivalent", "equivalent"][..],
            Metric::F1,
        ),
        Task::Qqp => (
            ("question1", Some("question2"), "label"),
            Named("question1", Some("question2"), "is_duplicate"),
            &["not_duplicate", "duplicate"][..],
            Metric::F1,
        ),
        Task::Stsb => (
            ("sentence1", Some("sentence2"), "label"),
            Named("sentence1", Some("sentence2"), "score"),
            &[][..],
            Metric::Correlation,
        ),
        Task::Mnli | Task::MnliMismatched => (
            ("premise", Some("hypothesis"), "label"),
            Named("sentence1", Some("sentence2"), "gold_label"),
            &["entailment", "neutral", "contradiction"][..],
            Metric::Accuracy,
        ),
        Task::Qnli => (
            ("question", Some("sentence"), "label"),
            Named("question", Some("sentence"), "label"),
            NLI,
            Metric::Accuracy,
        ),
        Task::Rte => (
            ("sentence1", Some("sentence2"), "label"),
            Named("sentence1", Some("sentence2"), "label"),
            NLI,
            Metric::Accuracy,
        ),
        Task::Wnli => (
            ("sentence1", Some("sentence2"), "label"),
            Named("sentence1", Some("sentence2"), "label"),
            &["not_entailment", "entailment"][..],
            Metric::Accuracy,
        ),
    };
    Layout {
        hub,
        tsv,
        classes,
        metric,
    }
}

/// A task's class names, by id; for STS-B, a regression, its one output: `score`.
pub fn classes(task: Task) -> &'static [&'static str] {
    match layout(task).classes {
        [] => &["score"],
        c => c,
    }
}

/// A task's metric.
pub fn metric(task: Task) -> Metric {
    layout(task).metric
}

/// The Hub's repository of the GLUE tasks, and the configuration (folder) of a task.
pub fn hub_config(task: Task) -> (&'static str, &'static str) {
    let config = match task {
        Task::MnliMismatched => "mnli",
        t => t.word(),
    };
    ("nyu-mll/glue", config)
}

/// One read split of a task.
#[derive(Debug)]
pub struct GlueSplit {
    /// Which split.
    pub name: SplitName,
    /// Texts and second texts (empty for single sentences).
    pub rows: TableSplit,
    /// Class ids (classification; all 0 for regression).
    pub labels: Vec<u32>,
    /// Regression targets (STS-B's scores; empty for classification).
    pub targets: Vec<f32>,
}

/// A read task: its training and validation splits.
#[derive(Debug)]
pub struct GlueData {
    /// Training, then validation.
    pub splits: Vec<GlueSplit>,
}

/// The validation file stems of a task: GLUE's `dev`, the Hub's `validation`; MNLI's matched
/// or mismatched set.
fn validation_stems(task: Task) -> &'static [&'static str] {
    match task {
        Task::Mnli => &["dev_matched", "validation_matched"],
        Task::MnliMismatched => &["dev_mismatched", "validation_mismatched"],
        _ => &["dev", "validation"],
    }
}

/// The splits a task reads and the file stems of each.
fn split_stems(task: Task) -> [(SplitName, &'static [&'static str]); 2] {
    [
        (SplitName::Train, &["train"][..]),
        (SplitName::Validation, validation_stems(task)),
    ]
}

/// The table files in `dir` (or its `data/`) whose split name is one of `stems`, in name order.
fn files_of(dir: &Path, stems: &[&str]) -> Vec<PathBuf> {
    table::table_files(dir)
        .into_iter()
        .filter(|f| table::split_stem(f).is_some_and(|s| stems.contains(&s)))
        .collect()
}

/// Every file [`read`] reads for `task` in `dir` (training, then validation), in name order.
pub fn task_files(task: Task, dir: &Path) -> Vec<PathBuf> {
    split_stems(task)
        .iter()
        .flat_map(|(_, stems)| files_of(dir, stems))
        .collect()
}

/// Reads a GLUE task from `dir`.
pub fn read(task: Task, dir: &Path) -> Result<GlueData, DataError> {
    DataError::unless_dir(
        dir,
        &format!(
            "glue(task: \"{}\") reads train.tsv and dev.tsv as GLUE ships them, or the Hub's train-*.parquet and validation-*.parquet",
            task.word()
        ),
    )?;
    let lay = layout(task);
    let mut splits = Vec::new();
    for (split, stems) in split_stems(task) {
        let files = files_of(dir, stems);
        if files.is_empty() {
            return Err(DataError::file(
                dir,
                format!(
                    "no {split} file for {}: expected {}.tsv (GLUE) or {}-*.parquet (the Hub)",
                    task.word(),
                    stems[0],
                    stems[stems.len() - 1]
                ),
            ));
        }
        let mut read = GlueSplit {
            name: split,
            rows: TableSplit::default(),
            labels: Vec::new(),
            targets: Vec::new(),
        };
        for f in &files {
            read_file(&lay, f, &mut read)?;
        }
        if read.rows.texts.is_empty() {
            return Err(table::empty_split(&files));
        }
        splits.push(read);
    }
    Ok(GlueData { splits })
}

/// A label cell as a class id: an id in range, or one of the class names.
fn class_id(cell: Cell, classes: &[&str]) -> Result<u32, String> {
    let named = |s: &str| classes.iter().position(|c| *c == s).map(|i| i as u32);
    let id = match &cell {
        Cell::Int(i) => u32::try_from(*i).ok().filter(|&i| (i as usize) < classes.len()),
        Cell::Text(s) => match s.trim().parse::<i64>() {
            Ok(i) => u32::try_from(i).ok().filter(|&i| (i as usize) < classes.len()),
            Err(_) => named(s.trim()),
        },
        _ => None,
    };
    id.ok_or_else(|| {
        format!(
            "label {} is not one of the task's classes ({} to {}, or {})",
            cell.describe(),
            0,
            classes.len().saturating_sub(1),
            classes.join(", ")
        )
    })
}

/// A regression target: a number (STS-B's score).
fn target(cell: Cell) -> Result<f32, String> {
    let x = match &cell {
        Cell::Float(x) => Some(*x),
        Cell::Int(i) => Some(*i as f64),
        Cell::Text(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    x.filter(|x| x.is_finite())
        .map(|x| x as f32)
        .ok_or_else(|| format!("the score must be a number, got {}", cell.describe()))
}

fn read_file(lay: &Layout, path: &Path, out: &mut GlueSplit) -> Result<(), DataError> {
    let format = Format::for_file(path, None);
    let regression = lay.classes.is_empty();
    let mut add = |place: super::table::rows::Place, cells: Vec<Cell>, pair: bool| -> Result<Flow, DataError> {
        let mut cells = cells.into_iter();
        let mut next = || cells.next().unwrap_or(Cell::Null);
        let text = table::text_of(next()).map_err(|e| place.error(path, format!("the text: {e}")))?;
        if regression {
            out.targets.push(target(next()).map_err(|e| place.error(path, e))?);
            out.labels.push(0);
        } else {
            out.labels
                .push(class_id(next(), lay.classes).map_err(|e| place.error(path, e))?);
        }
        out.rows.texts.push(text);
        if pair {
            let second = table::text_of(next()).map_err(|e| place.error(path, format!("the second text: {e}")))?;
            out.rows.pairs.push(second);
        }
        Ok(Flow::Continue(()))
    };
    match (format, &lay.tsv) {
        (Format::Tsv, TsvColumns::Positions(text, label)) => {
            read_headerless(path, *text, *label, &mut |p, c| add(p, c, false))
        }
        (Format::Tsv, TsvColumns::Named(text, pair, label)) => {
            let mut columns = vec![*text, *label];
            columns.extend(pair);
            read_glue_tsv(path, &columns, &mut |p, c| add(p, c, pair.is_some()))
        }
        (_, _) => {
            let (text, pair, label) = lay.hub;
            let mut columns = vec![text, label];
            columns.extend(pair);
            super::table::rows::read_rows(path, format, &columns, &mut |p, c| add(p, c, pair.is_some()))
        }
    }
}

type RowFn<'a> = dyn FnMut(super::table::rows::Place, Vec<Cell>) -> Result<Flow, DataError> + 'a;

fn glue_reader(path: &Path, headers: bool) -> Result<csv::Reader<std::fs::File>, DataError> {
    // GLUE's TSV files are not quoted: a quote is part of the text.
    csv::ReaderBuilder::new()
        .delimiter(b'\t')
        .quoting(false)
        .has_headers(headers)
        .flexible(true)
        .from_path(path)
        .map_err(|e| DataError::file(path, format!("cannot read it: {e}")))
}

/// A GLUE TSV file with a header row: the named columns of every row.
fn read_glue_tsv(path: &Path, columns: &[&str], row: &mut RowFn) -> Result<(), DataError> {
    let mut reader = glue_reader(path, true)?;
    let headers = reader
        .headers()
        .map_err(|e| DataError::file(path, format!("cannot read its header: {e}")))?
        .clone();
    let have: Vec<&str> = headers.iter().map(str::trim).collect();
    let index = super::table::rows::column_positions(path, &have, columns)?;
    for_each_record(path, reader, &index, row)
}

/// A GLUE TSV file without a header (CoLA): fields by position.
fn read_headerless(path: &Path, text: usize, label: usize, row: &mut RowFn) -> Result<(), DataError> {
    for_each_record(path, glue_reader(path, false)?, &[text, label], row)
}

fn for_each_record(
    path: &Path,
    mut reader: csv::Reader<std::fs::File>,
    index: &[usize],
    row: &mut RowFn,
) -> Result<(), DataError> {
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line() as usize);
                return Err(DataError::at(path, line, format!("cannot read the row: {e}")));
            }
        }
        let line = record.position().map_or(0, |p| p.line() as usize);
        let place = super::table::rows::Place::Line(line);
        let mut cells = Vec::with_capacity(index.len());
        for &i in index {
            let field = record.get(i).ok_or_else(|| {
                place.error(
                    path,
                    format!(
                        "a row with {} field{}, where field {} is read",
                        record.len(),
                        if record.len() == 1 { "" } else { "s" },
                        i + 1
                    ),
                )
            })?;
            cells.push(Cell::Text(field.trim().to_string()));
        }
        if row(place, cells)?.is_break() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn cola_has_no_header_and_reads_fields_by_position() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "train.tsv",
            "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\ngj04\t0\t*\tThe more we study verbs, the crazier they get get.\n",
        );
        write(tmp.path(), "dev.tsv", "gj04\t1\t\tHe said \"so\".\n");
        let d = read(Task::Cola, tmp.path()).unwrap();
        let train = &d.splits[0];
        assert_eq!(train.name, SplitName::Train);
        assert_eq!(
            train.rows.texts[1],
            "The more we study verbs, the crazier they get get."
        );
        assert_eq!(train.labels, [1, 0]);
        assert!(train.targets.is_empty());
        assert_eq!(d.splits[1].rows.texts, ["He said \"so\"."]);
    }

    #[test]
    fn nli_string_labels_map_to_the_hubs_class_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n";
        write(
            tmp.path(),
            "train.tsv",
            &format!("{header}0\t1\t1e\tgov\tA man.\tA person.\tentailment\tentailment\n1\t2\t2c\tgov\tA cat.\tNo cat.\tcontradiction\tcontradiction\n"),
        );
        write(
            tmp.path(),
            "dev_matched.tsv",
            &format!("{header}0\t1\t1n\tgov\tA.\tB.\tneutral\tneutral\n"),
        );
        write(
            tmp.path(),
            "dev_mismatched.tsv",
            &format!("{header}0\t1\t1n\tgov\tC.\tD.\tentailment\tentailment\n"),
        );
        let m = read(Task::Mnli, tmp.path()).unwrap();
        assert_eq!(m.splits[0].labels, [0, 2]);
        assert_eq!(m.splits[0].rows.pairs, ["A person.", "No cat."]);
        assert_eq!(m.splits[1].labels, [1]);
        let mm = read(Task::MnliMismatched, tmp.path()).unwrap();
        assert_eq!(mm.splits[1].rows.texts, ["C."]);
        assert_eq!(mm.splits[1].labels, [0]);
    }

    #[test]
    fn a_label_outside_the_classes_names_the_line() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "train.tsv",
            "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n",
        );
        write(
            tmp.path(),
            "dev.tsv",
            "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n",
        );
        let e = read(Task::Rte, tmp.path()).unwrap_err().to_string();
        assert!(e.contains("train.tsv:2: label text (\"maybe\") is not one of the task's classes (0 to 1, or entailment, not_entailment)"), "{e}");
        let e = read(Task::Wnli, &tmp.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains("missing directory"), "{e}");
        let e = read(Task::Qqp, tmp.path()).unwrap_err().to_string();
        assert!(e.contains("no column `question1`"), "{e}");
    }

    #[test]
    fn stsb_reads_scores_as_regression_targets() {
        let tmp = tempfile::tempdir().unwrap();
        let header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n";
        write(
            tmp.path(),
            "train.tsv",
            &format!("{header}0\tmain\tx\t2012\t1\tnone\tnone\tA plane.\tAn airplane.\t5.000\n"),
        );
        write(
            tmp.path(),
            "dev.tsv",
            &format!("{header}0\tmain\tx\t2012\t1\tnone\tnone\tA.\tB.\t0.5\n"),
        );
        let d = read(Task::Stsb, tmp.path()).unwrap();
        assert_eq!(d.splits[0].targets, [5.0]);
        assert_eq!(d.splits[1].targets, [0.5]);
        assert_eq!(classes(Task::Stsb), ["score"]);
        write(
            tmp.path(),
            "dev.tsv",
            &format!("{header}0\tmain\tx\t2012\t1\tnone\tnone\tA.\tB.\thigh\n"),
        );
        let e = read(Task::Stsb, tmp.path()).unwrap_err().to_string();
        assert!(
            e.contains("dev.tsv:2: the score must be a number, got text (\"high\")"),
            "{e}"
        );
    }

    #[test]
    fn every_task_has_its_classes_and_metric() {
        assert_eq!(classes(Task::Mnli).len(), 3);
        assert_eq!(metric(Task::Cola), Metric::Matthews);
        assert_eq!(metric(Task::Mrpc), Metric::F1);
        assert_eq!(metric(Task::Qqp), Metric::F1);
        assert_eq!(metric(Task::Stsb), Metric::Correlation);
        assert_eq!(hub_config(Task::MnliMismatched), ("nyu-mll/glue", "mnli"));
        assert_eq!(hub_config(Task::Rte), ("nyu-mll/glue", "rte"));
    }
}

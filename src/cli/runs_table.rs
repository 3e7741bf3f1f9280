//! `rkd results`: every recorded run's metrics in one table — one row per stage that ran, one
//! column per metric — filterable by stage name and sortable by a metric, as `dvc exp show`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;

use crate::store::records::Outcome;
use crate::store::Store;

/// Metric columns shown when none are asked for.
const DEFAULT_COLUMNS: usize = 6;

/// One stage that ran in one run.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// When the run started.
    pub run: String,
    /// The run's pipeline file.
    pub pipeline: String,
    /// The stage's name.
    pub stage: String,
    /// Its other names (a sweep point's when it is a chain's step, `tuned[t=4.0]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Its op.
    pub op: String,
    /// Its key (hex).
    pub key: String,
    /// What it recorded, each under the name it is shown with ([`shown_name`]).
    pub metrics: BTreeMap<String, f64>,
}

/// The name a metric is shown under, so that accuracies on different splits are not ranked
/// together: a training op's `accuracy` (or `pearson`) is on the split that selected its epochs
/// (`selection_accuracy`), predict's on the training split (`train_accuracy`).
pub fn shown_name(op: &str, metric: &str) -> String {
    match metric {
        "accuracy" | "pearson" if crate::registry::trains(op) => format!("selection_{metric}"),
        "accuracy" | "pearson" if op == "predict" => format!("train_{metric}"),
        _ => metric.to_string(),
    }
}

/// What to show.
pub struct Query<'a> {
    /// Only stages whose name contains this.
    pub stage: Option<&'a str>,
    /// These metric columns (default: the most common ones).
    pub metrics: &'a [String],
    /// Sort by this metric, highest first (rows without it last).
    pub sort: Option<&'a str>,
    /// Print JSON.
    pub json: bool,
}

/// The rows of every run recorded in `store`, oldest first: each stage that ran in it.
pub fn rows(store: &Store) -> Vec<Row> {
    let mut out = Vec::new();
    for path in store.record_paths() {
        let Ok(record) = Store::read_record(&path) else {
            continue;
        };
        for s in record.stages.iter().filter(|s| s.status == Outcome::Ran) {
            out.push(Row {
                run: record.started.clone(),
                pipeline: record.pipeline.clone(),
                stage: s.name.clone(),
                aliases: s.aliases.clone(),
                op: s.op.clone(),
                key: s.key.clone(),
                metrics: s.metrics.iter().map(|(k, v)| (shown_name(&s.op, k), *v)).collect(),
            });
        }
    }
    out
}

/// Warns about each metric asked for (`--sort`, `--metric`) that no listed stage recorded, a
/// likely typo that would otherwise leave the rows unsorted or a column of dashes.
fn warn_unrecorded<'a>(rows: &[Row], asked: impl Iterator<Item = &'a str>) {
    let recorded: std::collections::BTreeSet<&str> =
        rows.iter().flat_map(|r| r.metrics.keys().map(String::as_str)).collect();
    for metric in asked.filter(|m| !recorded.contains(m)) {
        let hint = crate::diagnostic::suggestion(metric, recorded.iter().copied())
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        crate::say!("warning: no stage listed here recorded the metric `{metric}`{hint}");
    }
}

/// The metric columns: those asked for, else the most common (ties by name).
fn columns(rows: &[Row], asked: &[String]) -> (Vec<String>, usize) {
    if !asked.is_empty() {
        return (asked.to_vec(), 0);
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in rows {
        for k in r.metrics.keys() {
            *counts.entry(k).or_default() += 1;
        }
    }
    let mut names: Vec<(&str, usize)> = counts.into_iter().collect();
    names.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let more = names.len().saturating_sub(DEFAULT_COLUMNS);
    (
        names
            .into_iter()
            .take(DEFAULT_COLUMNS)
            .map(|(n, _)| n.to_string())
            .collect(),
        more,
    )
}

/// Runs `rkd results`.
pub fn run(file: Option<&Path>, store: Option<&Path>, q: &Query) -> ExitCode {
    let store = match super::store_cmds::store_of(file, store) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut rows: Vec<Row> = rows(&store)
        .into_iter()
        .filter_map(|mut r| match q.stage {
            None => Some(r),
            Some(s) if r.stage.contains(s) => Some(r),
            // Found under another name: shown under that one.
            Some(s) => {
                let alias = r.aliases.iter().find(|a| a.contains(s))?.clone();
                r.stage = alias;
                Some(r)
            }
        })
        .collect();
    // `--metric ,` or a trailing comma names no column.
    let asked: Vec<String> = q.metrics.iter().filter(|m| !m.is_empty()).cloned().collect();
    if !rows.is_empty() {
        warn_unrecorded(&rows, q.sort.into_iter().chain(asked.iter().map(String::as_str)));
    }
    if let Some(metric) = q.sort {
        // Highest first; rows without the metric last, in run order.
        rows.sort_by(|a, b| match (a.metrics.get(metric), b.metrics.get(metric)) {
            (Some(x), Some(y)) => y.total_cmp(x),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
    }
    if q.json {
        println!("{}", serde_json::to_string_pretty(&rows).expect("rows serialize"));
        return ExitCode::SUCCESS;
    }
    if rows.is_empty() {
        println!(
            "no recorded stage{} in {}",
            q.stage.map(|s| format!(" named like `{s}`")).unwrap_or_default(),
            store.runs_dir().display()
        );
        return ExitCode::SUCCESS;
    }
    let (metrics, more) = columns(&rows, &asked);
    let mut grid: Vec<Vec<String>> = vec![["RUN", "STAGE", "OP"]
        .iter()
        .map(|s| s.to_string())
        .chain(metrics.iter().map(|m| m.to_uppercase()))
        .collect()];
    for r in &rows {
        let mut line = vec![r.run.clone(), crate::text::cell(&r.stage), r.op.clone()];
        line.extend(metrics.iter().map(|m| {
            r.metrics
                .get(m)
                .map_or("—".to_string(), |v| crate::text::metric_value(*v))
        }));
        grid.push(line);
    }
    let widths: Vec<usize> = (0..grid[0].len())
        .map(|i| grid.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for line in &grid {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| if i < 3 { format!("{c:w$}") } else { format!("{c:>w$}") })
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    println!(
        "({} stage run{}{}; records in {})",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
        if more > 0 {
            format!(
                "; {more} more metric{}: --metric NAME,...",
                if more == 1 { "" } else { "s" }
            )
        } else {
            String::new()
        },
        store.runs_dir().display()
    );
    ExitCode::SUCCESS
}

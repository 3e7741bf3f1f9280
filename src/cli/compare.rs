//! `rkd compare A B`: two results of a pipeline, stage by stage — what changed and how the
//! metrics moved — as a table, markdown or JSON.

use super::runs_table::shown_name;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::engine::compare::{compare, Comparison, Side};
use crate::store::records::RunRecord;
use crate::store::Store;

/// How to print the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned text for the terminal.
    Text,
    /// A markdown table.
    Markdown,
    /// JSON.
    Json,
}

/// The runs of `pipeline` recorded in `store`, oldest first.
fn runs_of(store: &Store, pipeline: &Path) -> Result<Vec<(PathBuf, RunRecord)>, String> {
    let wanted = RunRecord::pipeline_name(pipeline);
    let mut out = Vec::new();
    for path in store.record_paths() {
        let record = Store::read_record(&path).map_err(|e| e.to_string())?;
        if record.pipeline == wanted {
            out.push((path, record));
        }
    }
    Ok(out)
}

fn record_side(store: &Store, record: &RunRecord) -> Side {
    let label = format!("run {} of {}", record.started, record.pipeline);
    Side::of_record(store, record, label)
}

/// A side from its argument: a run record file, a record's name in the store's runs/, a
/// pipeline file (its current plan and stored results), or `FILE@REV` (the file at a git
/// revision, planned against today's store).
fn side(arg: &str, store: Option<&Path>) -> Result<Side, String> {
    let path = Path::new(arg);
    if path.extension().is_some_and(|e| e == "json") && path.is_file() {
        let record = Store::read_record(path).map_err(|e| e.to_string())?;
        // A record in `<store>/runs/` belongs to that store.
        let own = path.parent().and_then(Path::parent).map(Store::at);
        let store = store.map(Store::at).or(own).unwrap_or_else(|| Store::for_cwd(None));
        return Ok(record_side(&store, &record));
    }
    if let Some((file, rev)) = arg.rsplit_once('@').filter(|(f, _)| f.ends_with(".rkd")) {
        return revision_side(Path::new(file), rev, store);
    }
    if path.extension().is_some_and(|e| e == "rkd") {
        let Some((_, plan, st)) = super::load_plan(path, store) else {
            return Err(format!("{arg} does not plan (see above)"));
        };
        return Ok(Side::of_plan(&plan, &st, format!("{arg} now")));
    }
    let st = Store::for_cwd(store);
    let file = st.runs_dir().join(format!("{arg}.json"));
    if file.is_file() {
        let record = Store::read_record(&file).map_err(|e| e.to_string())?;
        return Ok(record_side(&st, &record));
    }
    Err(format!(
        "`{arg}` is no run record, pipeline file or FILE@REV\n  help: give a record file (`.rkd/runs/*.json`), its name as `rkd log` lists them, a pipeline file, or `p.rkd@HEAD~1`"
    ))
}

/// The pipeline as it was at a git revision, planned with today's store.
fn revision_side(file: &Path, rev: &str, store: Option<&Path>) -> Result<Side, String> {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = file.file_name().ok_or("no file name")?.to_string_lossy().into_owned();
    let shown = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .arg("show")
        .arg(format!("{rev}:./{name}"))
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !shown.status.success() {
        return Err(format!(
            "git cannot show {name} at {rev}: {}",
            String::from_utf8_lossy(&shown.stderr).trim()
        ));
    }
    // Beside the file, so that its relative paths and its store are the same.
    let old = tempfile::Builder::new()
        .prefix(".rkd-compare-")
        .suffix(".rkd")
        .tempfile_in(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::write(old.path(), &shown.stdout).map_err(|e| e.to_string())?;
    let store = store
        .map(Path::to_path_buf)
        .or_else(|| Some(Store::for_pipeline(file, None).root));
    let Some((_, plan, st)) = super::load_plan(old.path(), store.as_deref()) else {
        return Err(format!("{name} at {rev} does not plan (see above)"));
    };
    Ok(Side::of_plan(&plan, &st, format!("{} at {rev}", file.display())))
}

/// Draws the report stages both sides have (by name) into one pair of plots each, under `dir`
/// (in a folder per report when there are several); returns the files written.
fn plot_reports(a: &Side, b: &Side, dir: &Path) -> Result<Vec<PathBuf>, String> {
    let reports = |side: &Side| -> Vec<(String, PathBuf)> {
        side.stages
            .iter()
            .filter(|s| s.record.op == "report")
            .filter_map(|s| Some((s.record.name.clone(), s.out.clone()?)))
            .collect()
    };
    let (ra, rb) = (reports(a), reports(b));
    let common: Vec<(&String, &PathBuf, &PathBuf)> = rb
        .iter()
        .filter_map(|(name, out_b)| {
            ra.iter()
                .find(|(n, _)| n == name)
                .map(|(_, out_a)| (name, out_a, out_b))
        })
        .collect();
    if common.is_empty() {
        return Err(
            "--plot: no `report` stage whose results both sides hold (run the pipeline so that each side has one)"
                .into(),
        );
    }
    let mut written = Vec::new();
    for (name, out_a, out_b) in &common {
        let load = |out: &Path| crate::report::Report::load(&out.join("report.json")).map_err(|e| e.to_string());
        let target = if common.len() == 1 {
            dir.to_path_buf()
        } else {
            dir.join(name.replace(|c: char| !(c.is_ascii_alphanumeric() || "_.-".contains(c)), "_"))
        };
        written.extend(
            crate::report::write_overlay(&load(out_a)?, &load(out_b)?, &target).map_err(|e| format!("{name}: {e}"))?,
        );
    }
    Ok(written)
}

/// Runs `rkd compare`: with one argument, a pipeline file, its last two runs; with `plot`, the
/// reports of both sides overlaid in plots written there.
pub fn run(a: &str, b: Option<&str>, store: Option<&Path>, format: Format, plot: Option<&Path>) -> ExitCode {
    let sides = match b {
        Some(b) => side(a, store).and_then(|x| Ok((x, side(b, store)?))),
        None => last_two(a, store),
    };
    let (a, b) = match sides {
        Ok(s) => s,
        Err(e) => {
            crate::say!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let c = compare(&a, &b);
    if let Some(dir) = plot {
        match plot_reports(&a, &b, dir) {
            Ok(files) => {
                for f in files {
                    crate::say!("wrote {}", f.display());
                }
            }
            Err(e) => {
                crate::say!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&c).expect("a comparison serializes")),
        Format::Markdown => print!("{}", markdown(&c)),
        Format::Text => print!("{}", text(&c)),
    }
    ExitCode::SUCCESS
}

/// The last two recorded runs of a pipeline file.
fn last_two(file: &str, store: Option<&Path>) -> Result<(Side, Side), String> {
    let path = Path::new(file);
    if path.extension().is_none_or(|e| e != "rkd") {
        return Err(format!(
            "with one argument, compare takes a pipeline file (its last two runs), not `{file}`"
        ));
    }
    let st = Store::for_pipeline(path, store);
    let runs = runs_of(&st, path)?;
    match runs.as_slice() {
        [.., (_, a), (_, b)] => Ok((record_side(&st, a), record_side(&st, b))),
        _ => Err(format!(
            "{file} has {} recorded run{} in {}: compare needs two (or give two sides: `rkd compare A B`)",
            runs.len(),
            if runs.len() == 1 { "" } else { "s" },
            st.root.display()
        )),
    }
}

/// A metric's A, B and B − A: counts (whole numbers, not all within [0, 1] as a fraction would
/// be) without decimals, anything else with four.
fn cells(m: &crate::engine::compare::MetricDelta) -> [String; 3] {
    let values = || m.a.iter().chain(&m.b);
    let count = values().all(|x| x.fract() == 0.0 && x.abs() < 1e15) && values().any(|x| x.abs() > 1.0);
    let d = if count { 0 } else { 4 };
    let number = |v: Option<f64>| v.map_or("—".to_string(), |x| format!("{x:.d$}"));
    [
        number(m.a),
        number(m.b),
        m.delta.map_or(String::new(), |x| format!("{x:+.d$}")),
    ]
}

/// One line on a McNemar test.
fn mcnemar_line(m: &crate::engine::compare::McNemar) -> String {
    format!(
        "McNemar on the same {} examples: only A right on {}, only B right on {}, p = {:.4}{}",
        m.examples,
        m.only_a_correct,
        m.only_b_correct,
        m.p_value,
        if m.p_value < 0.05 {
            " (a difference beyond chance at 5%)"
        } else {
            " (not distinguishable from chance at 5%)"
        }
    )
}

/// The comparison as text: each stage that differs with its changes and metrics, then the
/// stages that are the same.
pub fn text(c: &Comparison) -> String {
    let mut out = format!("A: {}\nB: {}\n", c.a, c.b);
    let mut same = Vec::new();
    for s in &c.stages {
        match s.status {
            "same" => {
                same.push(s.name.as_str());
                continue;
            }
            "only_a" => out.push_str(&format!("\n{} ({}): only in A\n", s.name, s.op)),
            "only_b" => out.push_str(&format!("\n{} ({}): only in B\n", s.name, s.op)),
            _ => out.push_str(&format!("\n{} ({}): changed\n", s.name, s.op)),
        }
        for change in &s.changes {
            out.push_str(&format!("  {change}\n"));
        }
        if !s.metrics.is_empty() {
            let names: Vec<String> = s.metrics.iter().map(|m| shown_name(&s.op, &m.name)).collect();
            let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(6).max(6);
            out.push_str(&format!(
                "  {:width$}  {:>10}  {:>10}  {:>10}\n",
                "METRIC", "A", "B", "B − A"
            ));
            for (m, shown) in s.metrics.iter().zip(&names) {
                let [a, b, d] = cells(m);
                out.push_str(&format!("  {shown:width$}  {a:>10}  {b:>10}  {d:>10}\n"));
            }
        }
        if let Some(m) = &s.mcnemar {
            out.push_str(&format!("  {}\n", mcnemar_line(m)));
        }
    }
    if !same.is_empty() {
        out.push_str(&format!("\nthe same in both (one key): {}\n", same.join(", ")));
    }
    out
}

/// The comparison as a markdown table: one row per metric of every stage that differs.
pub fn markdown(c: &Comparison) -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    let mut out = format!(
        "A: {}  \nB: {}\n\n| Stage | Change | Metric | A | B | B − A |\n|---|---|---|---:|---:|---:|\n",
        cell(&c.a),
        cell(&c.b)
    );
    for s in c.stages.iter().filter(|s| s.status != "same") {
        let change = match s.status {
            "only_a" => "only in A".to_string(),
            "only_b" => "only in B".to_string(),
            _ => s.changes.join("; "),
        };
        if s.metrics.is_empty() {
            out.push_str(&format!("| {} | {} | | | | |\n", cell(&s.name), cell(&change)));
        }
        for (i, m) in s.metrics.iter().enumerate() {
            let (name, change) = if i == 0 {
                (cell(&s.name), cell(&change))
            } else {
                (String::new(), String::new())
            };
            let [a, b, d] = cells(m);
            out.push_str(&format!(
                "| {name} | {change} | {} | {a} | {b} | {d} |\n",
                cell(&shown_name(&s.op, &m.name))
            ));
        }
    }
    let notes: Vec<String> = c
        .stages
        .iter()
        .filter_map(|s| s.mcnemar.as_ref().map(|m| format!("{}: {}", s.name, mcnemar_line(m))))
        .collect();
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            out.push_str(&format!("{}\n\n", cell(&n)));
        }
    }
    let same: Vec<&str> = c
        .stages
        .iter()
        .filter(|s| s.status == "same")
        .map(|s| s.name.as_str())
        .collect();
    if !same.is_empty() {
        out.push_str(&format!("\nThe same in both (one key): {}.\n", cell(&same.join(", "))));
    }
    out
}

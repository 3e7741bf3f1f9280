//! The report table, rendered as markdown (`report.md`) and as plain text for the terminal.

use super::sweeps::sweep_tables;
use super::units::{self, MISSING};
use super::{Report, ReportEntry};

/// Marks an accuracy within noise of the chance level (or below it).
const AT_CHANCE: &str = "†";

/// One column: its markdown header, its terminal header, and how a row fills it.
struct Column {
    markdown: &'static str,
    text: &'static str,
    numeric: bool,
    in_text: bool,
    cell: fn(&Report, &ReportEntry) -> String,
}

/// The header that stands for the task's own metric (`MCC`, `F1`): a column shown only when the
/// report has one.
const SCORE: &str = "{score}";

/// The header that stands for the quality: `Accuracy`, or `Pearson` for a regression.
const QUALITY: &str = "{quality}";

impl Column {
    /// Whether this report shows the column.
    fn shown(&self, report: &Report) -> bool {
        self.markdown != SCORE || report.score_name.is_some()
    }

    /// The header, in markdown or for the terminal.
    fn header<'a>(&'a self, report: &'a Report, markdown: bool) -> &'a str {
        match (self.markdown, &report.score_name) {
            (SCORE, Some(name)) => name,
            (QUALITY, _) if markdown || report.is_regression() => report.quality_header(),
            (QUALITY, _) => "Acc",
            _ if markdown => self.markdown,
            _ => self.text,
        }
    }
}

/// The columns this report shows.
fn columns(report: &Report) -> impl Iterator<Item = &'static Column> + '_ {
    COLUMNS.iter().filter(|c| c.shown(report))
}

const COLUMNS: &[Column] = &[
    Column {
        markdown: "Stage",
        text: "Stage",
        numeric: false,
        in_text: true,
        cell: |_, e| e.row.name.clone(),
    },
    Column {
        markdown: "Strategy",
        text: "Strategy",
        numeric: false,
        in_text: true,
        cell: |_, e| e.row.strategy.clone(),
    },
    Column {
        markdown: "Op",
        text: "Op",
        numeric: false,
        in_text: false,
        cell: |_, e| e.row.op.clone(),
    },
    Column {
        markdown: QUALITY,
        text: QUALITY,
        numeric: true,
        in_text: true,
        cell: quality,
    },
    Column {
        markdown: SCORE,
        text: SCORE,
        numeric: true,
        in_text: true,
        cell: |_, e| e.row.score.map_or(MISSING.to_string(), |v| format!("{v:.3}")),
    },
    Column {
        markdown: "Retention",
        text: "Ret",
        numeric: true,
        in_text: true,
        cell: |_, e| units::opt_percent(e.derived.retention),
    },
    Column {
        markdown: "Params",
        text: "Params",
        numeric: true,
        in_text: true,
        cell: |_, e| units::count(e.row.parameters),
    },
    Column {
        markdown: "Nonzeros",
        text: "NNZ",
        numeric: true,
        in_text: true,
        cell: |_, e| units::count(e.row.nonzeros),
    },
    Column {
        markdown: "Dense f32",
        text: "Dense",
        numeric: true,
        in_text: true,
        cell: |_, e| units::bytes(e.row.dense_bytes),
    },
    Column {
        markdown: "NF4",
        text: "NF4",
        numeric: true,
        in_text: true,
        cell: |_, e| units::opt_bytes(e.row.nf4_bytes),
    },
    Column {
        markdown: "Sparse",
        text: "Sparse",
        numeric: true,
        in_text: true,
        cell: |_, e| units::bytes(e.row.sparse_bytes),
    },
    Column {
        markdown: "On disk",
        text: "Disk",
        numeric: true,
        in_text: true,
        cell: |_, e| units::bytes(e.row.disk_bytes),
    },
    Column {
        markdown: "Compression (disk)",
        text: "×Disk",
        numeric: true,
        in_text: true,
        cell: |_, e| units::ratio(e.derived.compression_disk),
    },
    Column {
        markdown: "Compression (params)",
        text: "×Params",
        numeric: true,
        in_text: true,
        cell: |_, e| units::ratio(e.derived.compression_params),
    },
    Column {
        markdown: "Latency / example",
        text: "Latency",
        numeric: true,
        in_text: true,
        cell: |_, e| units::millis(e.row.latency_ms),
    },
];

fn at_chance(report: &Report, entry: &ReportEntry) -> bool {
    entry.row.quality <= chance_bound(report)
}

/// The highest quality a model that learned nothing would plausibly reach: the chance level
/// plus two standard errors on the split's examples — of a proportion for accuracy, of Pearson's
/// r under no correlation (1/√n) for a regression — or the chance level itself when their
/// number is unknown.
fn chance_bound(report: &Report) -> f64 {
    let p = report.chance_level;
    match report.examples {
        Some(n) if n > 0 && report.is_regression() => 2.0 / (n as f64).sqrt(),
        Some(n) if n > 0 => p + 2.0 * (p * (1.0 - p) / n as f64).sqrt(),
        _ => p,
    }
}

fn quality(report: &Report, entry: &ReportEntry) -> String {
    let mark = if at_chance(report, entry) { AT_CHANCE } else { "" };
    format!("{}{mark}", report.show_quality(entry.row.quality))
}

/// The one-line context shared by both renderings.
fn context(report: &Report) -> String {
    let base = report.baseline_entry();
    let selection = if report.selection.is_empty() {
        "no epoch selected on a split".to_string()
    } else {
        report.selection.join("; ")
    };
    format!(
        "Dataset: {} · {} on the {} split ({selection}) · {} · baseline: {} ({}, {} params, {} on disk)",
        report.dataset,
        report.quality_name,
        report.split,
        if report.is_regression() {
            "chance level: no correlation (0)".to_string()
        } else {
            format!("chance level (majority class): {}", units::percent(report.chance_level))
        },
        report.baseline,
        report.show_quality(base.row.quality),
        units::count(base.row.parameters),
        units::bytes(base.row.disk_bytes),
    )
}

/// The notes under the table: how the derived columns are defined, and the chance mark if used.
fn notes(report: &Report) -> Vec<String> {
    let quality = report.quality_name.as_str();
    let mut notes = vec![
        format!(
            "Retention = {quality} / baseline {quality}. Compression = baseline size / model size, by bytes on disk \
             and by parameter count."
        ),
        format!(
            "Sizes in decimal units (1 MB = 10^6 bytes). Dense f32 = 4 bytes per parameter; NF4 = 4-bit codes + \
             scales ({MISSING} where not quantized); Sparse = bitmask + nonzero values; On disk = the artifact's files."
        ),
    ];
    match report.score_name.as_deref() {
        Some("MCC") => notes.push(
            "MCC = Matthews correlation coefficient of the predictions (the task's metric): 1 perfect, 0 no better \
             than chance."
                .to_string(),
        ),
        Some("F1") => notes.push("F1 = F1 score of the positive class (the task's metric).".to_string()),
        Some("Spearman") => notes.push(
            "Pearson = Pearson correlation of the predicted and true scores; Spearman = the correlation of their ranks \
             (the task's metrics: 1 perfect, 0 none)."
                .to_string(),
        ),
        Some(other) => notes.push(format!("{other} = the task's metric.")),
        None => {}
    }
    if report.rows.iter().any(|e| at_chance(report, e)) {
        notes.push(match report.examples {
            Some(n) if n > 0 && report.is_regression() => format!(
                "{AT_CHANCE} Within noise of no correlation: r at most {:.3} (two standard errors on {n} examples) — \
                 did it learn?",
                chance_bound(report)
            ),
            Some(n) if n > 0 => format!(
                "{AT_CHANCE} Within noise of the chance level: at most {} ({} plus two standard errors on {n} \
                 examples) — did it learn?",
                units::percent(chance_bound(report)),
                units::percent(report.chance_level)
            ),
            _ => format!(
                "{AT_CHANCE} At or below the chance level ({}) — did it learn?",
                units::percent(report.chance_level)
            ),
        });
    }
    notes
}

/// Rows of cells (header first) as a markdown table: the first `text` columns left-aligned, the
/// rest (numbers) right-aligned; a blank line after it.
fn markdown_grid(grid: &[Vec<String>], text: usize) -> String {
    let mut out = String::new();
    for (i, row) in grid.iter().enumerate() {
        let cells: Vec<String> = row.iter().map(|c| escape_markdown(c)).collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
        if i == 0 {
            let rule: Vec<&str> = (0..row.len()).map(|c| if c < text { "---" } else { "---:" }).collect();
            out.push_str(&format!("|{}|\n", rule.join("|")));
        }
    }
    out.push('\n');
    out
}

fn escape_markdown(cell: &str) -> String {
    cell.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// The whole `report.md`: heading, context, table, notes and the plots.
pub fn render_markdown(report: &Report) -> String {
    let mut out = format!("# {}\n\n{}\n\n", escape_markdown(&report.title), context(report));
    let header: Vec<&str> = columns(report).map(|c| c.header(report, true)).collect();
    out.push_str(&format!("| {} |\n", header.join(" | ")));
    let rule: Vec<&str> = columns(report)
        .map(|c| if c.numeric { "---:" } else { "---" })
        .collect();
    out.push_str(&format!("|{}|\n", rule.join("|")));
    for entry in &report.rows {
        let cells: Vec<String> = columns(report)
            .map(|c| escape_markdown(&(c.cell)(report, entry)))
            .collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out.push('\n');
    for note in notes(report) {
        out.push_str(&note);
        out.push_str("\n\n");
    }
    if let Some(grid) = seed_grid(report) {
        out.push_str(&format!("### Seeds\n\n{}\n\n", seed_note(report)));
        out.push_str(&markdown_grid(&grid, 2));
    }
    for sweep in sweep_tables(report) {
        let grid = sweep.grid(report, &|e| quality(report, e));
        out.push_str(&format!("### Sweep {}\n\n", escape_markdown(&sweep.title(report))));
        out.push_str(&markdown_grid(&grid, 1));
    }
    for kind in super::PlotKind::ALL {
        out.push_str(&format!("![{}]({}.svg)\n\n", kind.caption(report), kind.file_stem()));
    }
    if !report.curves.is_empty() {
        out.push_str("![training curves](training_curves.svg)\n\n");
        out.push_str("The curves as numbers: training_curves.csv.\n\n");
    }
    out.pop();
    out
}

/// A cell of the terminal table: names on one line and cut to a sane width.
fn text_cell(column: &Column, report: &Report, entry: &ReportEntry) -> String {
    let text = (column.cell)(report, entry);
    if column.numeric {
        text
    } else {
        crate::text::cell(&text)
    }
}

/// The table as aligned plain text for the terminal (`rkd report FILE`).
pub fn render_text(report: &Report) -> String {
    let columns: Vec<&Column> = columns(report).filter(|c| c.in_text).collect();
    let grid: Vec<Vec<String>> = std::iter::once(columns.iter().map(|c| c.header(report, false).to_string()).collect())
        .chain(
            report
                .rows
                .iter()
                .map(|e| columns.iter().map(|c| text_cell(c, report, e)).collect()),
        )
        .collect();
    let mut out = format!("{}\n{}\n\n", report.title, context(report));
    out.push_str(&aligned(&grid, |i| !columns[i].numeric, true));
    out.push('\n');
    for note in notes(report) {
        out.push_str(&note);
        out.push('\n');
    }
    if let Some(grid) = seed_grid(report) {
        out.push_str(&format!("\nSeeds. {}\n", seed_note(report)));
        out.push_str(&aligned(&grid, |i| i < 2, true));
    }
    for sweep in sweep_tables(report) {
        out.push_str(&format!("\nSweep {}\n", sweep.title(report)));
        out.push_str(&aligned(
            &sweep.grid(report, &|e| quality(report, e)),
            |i| i == 0,
            false,
        ));
    }
    out
}

/// What the seeds table says, in one sentence.
fn seed_note(report: &Report) -> String {
    if report.seed_groups.iter().all(|g| g.quality.n < 2) {
        "One seed per model, so no spread is measured: train each with several (`sweep seed in [1, 2, 3]`) \
         to see how much a result moves between runs."
            .to_string()
    } else {
        "Mean ± sample standard deviation over the seeds (n), and the 95% confidence interval of the mean \
         (Student's t, n − 1 degrees of freedom)."
            .to_string()
    }
}

/// A figure over seeds: `84.0% ± 2.0 (n=3)` (points of accuracy), `0.840 ± 0.020 (n=3)`, or for
/// one seed `84.0% (one seed)`.
fn show_spread(spread: &super::Spread, percent: bool) -> String {
    let value = |v: f64| {
        if percent {
            units::percent(v)
        } else {
            format!("{v:.3}")
        }
    };
    match spread.std {
        Some(std) if percent => format!("{} ± {:.1} (n={})", value(spread.mean), 100.0 * std, spread.n),
        Some(std) => format!("{} ± {std:.3} (n={})", value(spread.mean), spread.n),
        None => format!("{} (one seed)", value(spread.mean)),
    }
}

/// The seeds table (header first), when some row is a seed sweep point.
fn seed_grid(report: &Report) -> Option<Vec<Vec<String>>> {
    if report.seed_groups.is_empty() {
        return None;
    }
    let percent = !report.is_regression();
    let score = report.score_name.as_deref();
    let mut header = vec![
        "Model".to_string(),
        "Seeds".to_string(),
        report.quality_header().to_string(),
        "95% CI".to_string(),
    ];
    header.extend(score.map(str::to_string));
    let mut grid = vec![header];
    for g in &report.seed_groups {
        let mut row = vec![
            g.name.clone(),
            g.seeds.join(", "),
            show_spread(&g.quality, percent),
            match g.quality.ci95 {
                Some([lo, hi]) if percent => format!("{}–{}", units::percent(lo), units::percent(hi)),
                Some([lo, hi]) => format!("{lo:.3}–{hi:.3}"),
                None => MISSING.to_string(),
            },
        ];
        if score.is_some() {
            row.push(
                g.score
                    .as_ref()
                    .map_or(MISSING.to_string(), |s| show_spread(s, score == Some("F1"))),
            );
        }
        grid.push(row);
    }
    Some(grid)
}

/// Rows of cells as aligned text, two spaces apart: columns for which `left(i)` holds padded on the
/// right, the others (numbers) on the left; with `rule`, a line of dashes under the first row.
fn aligned(grid: &[Vec<String>], left: impl Fn(usize) -> bool, rule: bool) -> String {
    let columns = grid.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            grid.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = " ".repeat(widths[i] - c.chars().count());
                if left(i) {
                    format!("{c}{pad}")
                } else {
                    format!("{pad}{c}")
                }
            })
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = String::new();
    for (i, row) in grid.iter().enumerate() {
        out.push_str(&line(row));
        if rule && i == 0 {
            out.push_str(&line(&widths.iter().map(|&w| "-".repeat(w)).collect::<Vec<_>>()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testdata::sample;
    use super::*;

    #[test]
    fn seeds_are_summarised_and_a_single_seed_says_so() {
        let mut data = sample();
        // Three seeds of `tuned[t=2.0]` with an MCC each, and one seed of `solo`.
        data.score_name = Some("MCC".into());
        for (row, name, acc) in [
            (1, "tuned[t=2.0,seed=1]", 0.80),
            (2, "tuned[t=2.0,seed=2]", 0.84),
            (3, "tuned[t=2.0,seed=3]", 0.88),
            (4, "solo[seed=7]", 0.7),
        ] {
            data.rows[row].name = name.into();
            data.rows[row].quality = acc;
        }
        for (i, row) in data.rows.iter_mut().enumerate() {
            row.score = Some(0.1 * i as f64);
        }
        let report = data.derive().unwrap();
        let md = render_markdown(&report);
        assert!(md.contains("| Model | Seeds | Accuracy | 95% CI | MCC |"), "{md}");
        // mean 0.84, sample std 0.04; t(0.975, 2) · 0.04 / √3 = 0.0994.
        assert!(
            md.contains("| tuned[t=2.0] | 1, 2, 3 | 84.0% ± 4.0 (n=3) | 74.1%–93.9% | 0.200 ± 0.100 (n=3) |"),
            "{md}"
        );
        assert!(
            md.contains("| solo | 7 | 70.0% (one seed) | — | 0.400 (one seed) |"),
            "{md}"
        );
        let text = render_text(&report);
        assert!(text.contains("Seeds. Mean ± sample standard deviation"), "{text}");

        let mut single = sample();
        single.rows[1].name = "only[seed=1]".into();
        let md = render_markdown(&single.derive().unwrap());
        assert!(md.contains("One seed per model, so no spread is measured"), "{md}");
    }

    #[test]
    fn markdown_table() {
        insta::assert_snapshot!(render_markdown(&sample().derive().unwrap()));
    }

    #[test]
    fn text_table() {
        insta::assert_snapshot!(render_text(&sample().derive().unwrap()));
    }

    #[test]
    fn a_task_metric_gets_its_own_column_and_note() {
        let mut data = sample();
        data.score_name = Some("MCC".into());
        for (i, r) in data.rows.iter_mut().enumerate() {
            r.score = (i != 1).then_some(0.5 - i as f64 / 20.0);
        }
        let report = data.derive().unwrap();
        let md = render_markdown(&report);
        assert!(
            md.contains("| Stage | Strategy | Op | Accuracy | MCC | Retention |"),
            "{md}"
        );
        assert!(md.contains("MCC = Matthews correlation coefficient"), "{md}");
        let text = render_text(&report);
        assert!(text.lines().nth(3).unwrap().contains(" MCC "), "{text}");
        assert!(!render_markdown(&sample().derive().unwrap()).contains("MCC"));
        let csv = super::super::csv::render_csv(&report);
        assert!(csv.starts_with("name,strategy,op,accuracy,score,"), "{csv}");
    }

    #[test]
    fn missing_nf4_renders_a_dash() {
        let md = render_markdown(&sample().derive().unwrap());
        let teacher = md.lines().find(|l| l.starts_with("| teacher |")).unwrap();
        assert!(teacher.contains("| — |"), "{teacher}");
        let q = md.lines().find(|l| l.starts_with("| q |")).unwrap();
        assert!(q.contains("| 5.8 MB |"), "{q}");
    }

    #[test]
    fn names_in_the_text_table_stay_on_one_line() {
        let mut data = sample();
        data.rows[1].name = format!("a\nb{}", "x".repeat(100));
        let text = render_text(&data.derive().unwrap());
        let plain = render_text(&sample().derive().unwrap());
        assert_eq!(text.lines().count(), plain.lines().count(), "{text}");
        let row = text.lines().find(|l| l.starts_with("a\\nb")).expect("the row, escaped");
        assert!(row.contains("x…  "), "{row}");
    }

    #[test]
    fn a_sweep_gets_a_pivot_table_in_both_renderings() {
        let mut data = sample();
        let mut other = data.rows.iter().find(|r| r.name.starts_with("mini[")).unwrap().clone();
        other.name = "mini[t=8.0,a=0.5]".into();
        other.quality = 0.5;
        data.rows.push(other);
        let report = data.derive().unwrap();
        let md = render_markdown(&report);
        assert!(
            md.contains("### Sweep mini: accuracy by t × a\n\n| t \\ a | 0.5 |\n|---|---:|\n| 2.0 | "),
            "{md}"
        );
        assert!(md.contains("| 8.0 | 50.0%† |"), "{md}");
        let text = render_text(&report);
        assert!(
            text.contains("Sweep mini: accuracy by t × a\nt \\ a     0.5\n"),
            "{text}"
        );
    }

    #[test]
    fn pipes_in_names_are_escaped() {
        let mut data = sample();
        data.rows[1].name = "a|b".into();
        let md = render_markdown(&data.derive().unwrap());
        assert!(md.contains("| a\\|b |"), "{md}");
    }
}

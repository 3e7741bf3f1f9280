//! What the report measures models by: the quality column (accuracy, or Pearson's r for a
//! regression such as STS-B), and the figure its plots show (the task's own metric where it has
//! one — MCC for CoLA, F1 for MRPC and QQP — else the quality).

use super::units;
use super::{Report, ReportEntry};

impl Report {
    /// Whether the rows' quality is a regression's Pearson r (else it is accuracy).
    pub fn is_regression(&self) -> bool {
        self.quality_name == "pearson"
    }

    /// The quality as the table shows it: `84.2%`, or for a regression `0.812`.
    pub fn show_quality(&self, quality: f64) -> String {
        if self.is_regression() {
            format!("{quality:.3}")
        } else {
            units::percent(quality)
        }
    }

    /// The quality column's header: `Accuracy` or `Pearson`.
    pub fn quality_header(&self) -> &'static str {
        if self.is_regression() {
            "Pearson"
        } else {
            "Accuracy"
        }
    }
}

/// The plots' y axis: which figure, how it is labelled, and its reference line for a model that
/// learned nothing. Values are in points (× 100), as GLUE reports every metric.
pub struct Axis {
    /// The figure's short name, for captions: `accuracy`, `MCC`, `F1`, `Pearson`.
    pub name: String,
    /// The axis title.
    pub title: String,
    /// Whether values are percentages (accuracy, F1).
    pub percent: bool,
    /// The lowest value the figure can take (0, or −100 for a correlation).
    pub floor: f64,
    /// The chance line: where, and its label; `None` where the figure has no simple one (F1).
    pub chance: Option<(f64, String)>,
    score: bool,
}

impl Axis {
    /// The axis for `report`: its task's metric when every row has it, else its quality.
    pub fn of(report: &Report) -> Axis {
        let score = report
            .score_name
            .as_deref()
            .filter(|_| report.rows.iter().all(|e| e.row.score.is_some()));
        match (report.is_regression(), score) {
            (true, _) => Axis {
                name: "Pearson".into(),
                title: "Pearson r (× 100)".into(),
                percent: false,
                floor: -100.0,
                chance: Some((0.0, "no correlation (0)".into())),
                score: false,
            },
            (false, Some("MCC")) => Axis {
                name: "MCC".into(),
                title: "Matthews correlation (× 100)".into(),
                percent: false,
                floor: -100.0,
                chance: Some((0.0, "chance level, MCC 0".into())),
                score: true,
            },
            (false, Some(name)) => Axis {
                name: name.to_string(),
                title: format!("{name} (%)"),
                percent: true,
                floor: 0.0,
                chance: None,
                score: true,
            },
            (false, None) => Axis {
                name: "accuracy".into(),
                title: "Accuracy (%)".into(),
                percent: true,
                floor: 0.0,
                chance: Some((
                    report.chance_level * 100.0,
                    format!("chance level, majority class ({})", units::percent(report.chance_level)),
                )),
                score: false,
            },
        }
    }

    /// A row's value on the axis, in points.
    pub fn value(&self, entry: &ReportEntry) -> f64 {
        let v = if self.score {
            entry.row.score.unwrap_or(f64::NAN)
        } else {
            entry.row.quality
        };
        v * 100.0
    }

    /// A value in points as the axis and its labels write it.
    pub fn show(&self, points: f64, decimals: usize) -> String {
        if self.percent {
            format!("{points:.decimals$}%")
        } else {
            format!("{points:.decimals$}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testdata::sample;
    use super::super::{plot_svg, render_csv, render_markdown, PlotKind, ReportData};
    use super::*;

    /// The sample run as a regression: Pearson's r as quality (one model anti-correlated),
    /// Spearman as the task's score.
    fn regression() -> ReportData {
        let mut data = sample();
        data.quality_name = "pearson".into();
        data.score_name = Some("Spearman".into());
        data.chance_level = 0.0;
        for (i, row) in data.rows.iter_mut().enumerate() {
            row.quality = 0.9 - 0.1 * i as f64;
            row.score = Some(0.88 - 0.1 * i as f64);
        }
        data.rows.last_mut().expect("rows").quality = -0.1;
        data
    }

    #[test]
    fn a_regression_report_compares_pearson_and_shows_spearman() {
        let report = regression().derive().unwrap();
        let md = render_markdown(&report);
        assert!(
            md.contains("| Stage | Strategy | Op | Pearson | Spearman | Retention |"),
            "{md}"
        );
        assert!(md.contains("pearson on the validation split"), "{md}");
        assert!(md.contains("chance level: no correlation (0)"), "{md}");
        // Within two standard errors of no correlation (2/√872 = 0.068): marked.
        assert!(md.contains("| -0.100† |"), "{md}");
        assert!(md.contains("| 0.300 |"), "{md}");
        assert!(md.contains("Within noise of no correlation: r at most 0.068"), "{md}");
        assert!(render_csv(&report).starts_with("name,strategy,op,pearson,score,"));
        let svg = plot_svg(&report, PlotKind::SizeVsAccuracy).unwrap();
        assert!(svg.contains("size on disk vs Pearson"), "the caption names the figure");
        assert!(svg.contains("Pearson r (× 100)"));
        // The axis reaches below zero for the anti-correlated model, and the labels are points.
        let texts: Vec<&str> = svg.lines().map(str::trim).collect();
        assert!(texts.contains(&"-20"), "a negative tick");
        assert!(
            texts.contains(&"80") && !texts.iter().any(|t| t.ends_with('%')),
            "ticks in points, not percent"
        );
    }

    #[test]
    fn a_correlation_outside_minus_one_to_one_is_refused() {
        let mut data = regression();
        data.rows[0].quality = 1.5;
        let e = data.derive().unwrap_err().to_string();
        assert!(e.contains("a correlation in [-1, 1]"), "{e}");
        data.quality_name = "auc".into();
        assert!(data.derive().is_err());
    }

    #[test]
    fn a_classification_report_plots_its_tasks_metric_when_every_row_has_it() {
        let mut data = sample();
        let axis = |d: &ReportData| Axis::of(&d.derive().unwrap()).title;
        assert_eq!(axis(&data), "Accuracy (%)");
        data.score_name = Some("MCC".into());
        for row in &mut data.rows {
            row.score = Some(row.quality - 0.4);
        }
        assert_eq!(axis(&data), "Matthews correlation (× 100)");
        data.rows[0].score = None;
        assert_eq!(axis(&data), "Accuracy (%)", "a row without the metric: accuracy");
    }
}

//! Training curves of the reported models: training loss per step and accuracy on the selection split
//! per epoch, one line per model, as `training_curves.svg`/`.png` and `training_curves.csv`.

use super::canvas::{plot_err, render_png, render_svg, PLOT_SIZE};
use super::error::ReportError;
use super::font::FAMILY;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One trained model's curves, as its training stage wrote them (`steps.csv`, `epochs.csv`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// The model's row name in the report.
    pub name: String,
    /// The stage's key (hex), so that `rkd report` can relabel it like the rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The split the per-epoch accuracy was measured on (`validation`, `holdout`).
    pub split: String,
    /// (optimizer step, training loss).
    pub steps: Vec<(u64, f64)>,
    /// (epoch, accuracy on `split` as a fraction); empty when the run evaluated nothing.
    pub epochs: Vec<(u64, f64)>,
}

/// The per-step training curve a training stage leaves beside its model (step, epoch, loss, lr,
/// grad_norm).
pub const STEPS_CSV: &str = "steps.csv";
/// The per-epoch training curve beside the model (epoch, steps, train loss, and loss and accuracy
/// on the selection split as `<split>_loss`, `<split>_accuracy`).
pub const EPOCHS_CSV: &str = "epochs.csv";

/// A CSV of numbers: its header, and its rows (empty cells as `None`).
type Table = (Vec<String>, Vec<Vec<Option<f64>>>);

/// The CSV a training stage wrote; `None` when there is no such file.
fn read_csv(path: &Path) -> Result<Option<Table>, ReportError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ReportError::Io {
                path: path.into(),
                source,
            })
        }
    };
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap_or("").split(',').map(str::to_string).collect();
    let rows = lines
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').map(|c| c.parse::<f64>().ok()).collect())
        .collect();
    Ok(Some((header, rows)))
}

impl Curve {
    /// Reads the curves a training op left in `dir`; `None` when it has none (an untrained or pruned model).
    pub fn read(name: &str, key: Option<String>, dir: &Path) -> Result<Option<Curve>, ReportError> {
        let Some((header, rows)) = read_csv(&dir.join(STEPS_CSV))? else {
            return Ok(None);
        };
        let col = |header: &[String], name: &str| header.iter().position(|h| h == name);
        let (Some(step), Some(loss)) = (col(&header, "step"), col(&header, "loss")) else {
            return Err(ReportError::Parse(format!(
                "{}: no `step` and `loss` columns",
                dir.join(STEPS_CSV).display()
            )));
        };
        let steps = rows
            .iter()
            .filter_map(|r| Some((r.get(step).copied()?? as u64, r.get(loss).copied()??)))
            .collect();
        let (mut split, mut epochs) = (String::from("validation"), Vec::new());
        if let Some((header, rows)) = read_csv(&dir.join(EPOCHS_CSV))? {
            let accuracy = header
                .iter()
                .position(|h| h.ends_with("_accuracy") && !h.starts_with("train"));
            if let (Some(e), Some(a)) = (col(&header, "epoch"), accuracy) {
                split = header[a].trim_end_matches("_accuracy").to_string();
                epochs = rows
                    .iter()
                    .filter_map(|r| Some((r.get(e).copied()?? as u64, r.get(a).copied()??)))
                    .collect();
            }
        }
        Ok(Some(Curve {
            name: name.to_string(),
            key,
            split,
            steps,
            epochs,
        }))
    }

    /// The loss smoothed as TensorBoard does (exponential moving average, debiased), weight `w`.
    fn smoothed_loss(&self, w: f64) -> Vec<(f64, f64)> {
        let mut avg = 0.0;
        self.steps
            .iter()
            .enumerate()
            .map(|(i, &(step, loss))| {
                avg = w * avg + (1.0 - w) * loss;
                (step as f64, avg / (1.0 - w.powi(i as i32 + 1)))
            })
            .collect()
    }
}

/// Every curve in one long table: `model,series,x,value` (series `train_loss` by step, `<split>_accuracy`
/// by epoch), for spreadsheets and plotting scripts.
pub fn render_curves_csv(curves: &[Curve]) -> String {
    let mut out = String::from("model,series,x,value\n");
    let quote = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    for c in curves {
        for (step, loss) in &c.steps {
            out.push_str(&format!("{},train_loss,{step},{loss}\n", quote(&c.name)));
        }
        for (epoch, acc) in &c.epochs {
            out.push_str(&format!("{},{}_accuracy,{epoch},{acc}\n", quote(&c.name), c.split));
        }
    }
    out
}

/// Line colours (Okabe–Ito, then darker tones); past them, lines repeat the colours dashed.
const COLORS: [RGBColor; 10] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
    RGBColor(121, 85, 72),
    RGBColor(148, 103, 189),
    RGBColor(110, 110, 110),
];

fn line_style(i: usize) -> (RGBColor, bool) {
    (COLORS[i % COLORS.len()], (i / COLORS.len()) % 2 == 1)
}

/// The curves as an SVG document.
pub fn curves_svg(curves: &[Curve], title: &str) -> Result<String, ReportError> {
    render_svg(|root| draw(root, curves, title))
}

/// The curves as a PNG file ([`PLOT_SIZE`]).
pub fn curves_png(curves: &[Curve], title: &str) -> Result<Vec<u8>, ReportError> {
    render_png(|root| draw(root, curves, title))
}

/// The `i`-th model's line through `points`: its colour, dashed past the palette.
fn draw_line<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    points: &[(f64, f64)],
    i: usize,
) -> Result<(), ReportError> {
    let (color, dashed) = line_style(i);
    let style = color.stroke_width(2);
    if dashed {
        chart
            .draw_series(DashedLineSeries::new(points.to_vec(), 8, 5, style))
            .map_err(plot_err)?;
    } else {
        chart
            .draw_series(LineSeries::new(points.to_vec(), style))
            .map_err(plot_err)?;
    }
    Ok(())
}

/// Text of the curves' labels at `size` pixels.
fn text(size: i32) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(&RGBColor(40, 40, 40))
}

/// How an axis writes its tick labels.
type Format<'a> = &'a dyn Fn(&f64) -> String;

/// A panel's axes: the x description, label count and format; the y description and format.
struct Axes<'a> {
    x: (String, usize, Format<'a>),
    y: (String, Format<'a>),
}

/// A chart on `area` over `x` × `y` with its grid and labelled axes drawn.
fn panel<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    axes: &Axes,
) -> Result<ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>, ReportError> {
    let mut chart = ChartBuilder::on(area)
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc(axes.x.0.as_str())
        .x_labels(axes.x.1)
        .x_label_formatter(axes.x.2)
        .y_desc(axes.y.0.as_str())
        .y_label_formatter(axes.y.1)
        .label_style(text(14))
        .axis_desc_style(text(15))
        .bold_line_style(RGBColor(225, 225, 225))
        .light_line_style(RGBColor(245, 245, 245))
        .draw()
        .map_err(plot_err)?;
    Ok(chart)
}

/// The right end of an x axis over these series (each ordered by x): the largest last x, at least 2.
fn x_end<'a>(series: impl Iterator<Item = &'a [(u64, f64)]>) -> f64 {
    series.filter_map(|s| s.last()).map(|p| p.0).max().unwrap_or(1).max(2) as f64
}

/// Smoothing weight of the loss lines.
const SMOOTHING: f64 = 0.8;

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, curves: &[Curve], title: &str) -> Result<(), ReportError> {
    root.fill(&WHITE).map_err(plot_err)?;
    let body = root
        .margin(10, 0, 0, 0)
        .titled(title, (FAMILY, 24).into_font().color(&RGBColor(30, 30, 30)))
        .map_err(plot_err)?;
    let (panels, legend) = body.split_horizontally(PLOT_SIZE.0 - 290);
    let (top, bottom) = panels.split_vertically(panels.dim_in_pixel().1 / 2);

    // Loss by step.
    let max_step = x_end(curves.iter().map(|c| c.steps.as_slice()));
    let losses: Vec<Vec<(f64, f64)>> = curves.iter().map(|c| c.smoothed_loss(SMOOTHING)).collect();
    let max_loss = losses.iter().flatten().map(|p| p.1).fold(0.0f64, f64::max).max(1e-3) * 1.05;
    let loss_axes = Axes {
        x: ("Optimizer step".into(), 10, &|v| format!("{v:.0}")),
        y: (format!("Training loss (smoothed, EMA {SMOOTHING})"), &|v| {
            format!("{v:.2}")
        }),
    };
    let mut chart = panel(&top, 1.0..max_step, 0.0..max_loss, &loss_axes)?;
    for (i, points) in losses.iter().enumerate() {
        draw_line(&mut chart, points, i)?;
    }

    // Selection accuracy by epoch.
    let split = curves.iter().map(|c| c.split.as_str()).next().unwrap_or("validation");
    let accs = || curves.iter().flat_map(|c| c.epochs.iter()).map(|e| e.1 * 100.0);
    let (lo, hi) = accs().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), a| (lo.min(a), hi.max(a)));
    let (lo, hi) = if lo.is_finite() {
        (((lo - 2.0) / 5.0).floor() * 5.0, ((hi + 2.0) / 5.0).ceil() * 5.0)
    } else {
        (0.0, 100.0)
    };
    let (lo, hi) = (lo.max(0.0), hi.min(100.0).max(lo.max(0.0) + 5.0));
    let max_epoch = x_end(curves.iter().map(|c| c.epochs.as_slice()));
    let whole = |v: &f64| {
        if v.fract().abs() < 1e-9 {
            format!("{v:.0}")
        } else {
            String::new()
        }
    };
    let accuracy_axes = Axes {
        x: ("Epoch".into(), max_epoch as usize + 1, &whole),
        y: (format!("Accuracy on {split} (%)"), &|v| format!("{v:.0}%")),
    };
    let mut chart = panel(&bottom, 0.8..max_epoch + 0.2, lo..hi, &accuracy_axes)?;
    for (i, c) in curves.iter().enumerate() {
        let (color, _) = line_style(i);
        let points: Vec<(f64, f64)> = c.epochs.iter().map(|&(e, a)| (e as f64, a * 100.0)).collect();
        draw_line(&mut chart, &points, i)?;
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(plot_err)?;
    }

    // Legend: one line per model, in the report's order.
    let room = (legend.dim_in_pixel().1 as usize).saturating_sub(60) / 22;
    let shown = if curves.len() > room {
        room.saturating_sub(1)
    } else {
        curves.len()
    };
    let mut y = 40;
    for (i, c) in curves.iter().take(shown).enumerate() {
        let (color, dashed) = line_style(i);
        let style = color.stroke_width(3);
        if dashed {
            legend
                .draw(&plotters::element::DashedPathElement::new(
                    [(10, y), (40, y)],
                    6,
                    4,
                    style,
                ))
                .map_err(plot_err)?;
        } else {
            legend
                .draw(&PathElement::new([(10, y), (40, y)], style))
                .map_err(plot_err)?;
        }
        legend
            .draw(&Text::new(crate::text::cell(&c.name), (48, y - 9), text(14)))
            .map_err(plot_err)?;
        y += 22;
    }
    if shown < curves.len() {
        let more = format!("… and {} more (training_curves.csv)", curves.len() - shown);
        legend.draw(&Text::new(more, (10, y - 9), text(14))).map_err(plot_err)?;
    }
    Ok(())
}

/// The files `training_curves.csv`, `.svg` and `.png` (name, bytes); none when no model has curves.
pub fn curve_files(curves: &[Curve], title: &str) -> Result<Vec<(String, Vec<u8>)>, ReportError> {
    if curves.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![
        ("training_curves.csv".into(), render_curves_csv(curves).into_bytes()),
        ("training_curves.svg".into(), curves_svg(curves, title)?.into_bytes()),
        ("training_curves.png".into(), curves_png(curves, title)?),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(name: &str, n: u64) -> Curve {
        Curve {
            name: name.into(),
            key: None,
            split: "holdout".into(),
            steps: (1..=n).map(|s| (s, 1.0 / s as f64)).collect(),
            epochs: vec![(1, 0.6), (2, 0.7), (3, 0.75)],
        }
    }

    #[test]
    fn reads_what_the_training_ops_write() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("steps.csv"),
            "step,epoch,loss,lr,grad_norm\n1,1,0.7,0,1.0\n2,1,0.5,0.001,0.9\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("epochs.csv"),
            "epoch,steps,train_loss,holdout_loss,holdout_accuracy\n1,2,0.6,0.55,0.71\n2,4,0.4,,\n",
        )
        .unwrap();
        let c = Curve::read("teacher", Some("k".into()), dir.path()).unwrap().unwrap();
        assert_eq!(c.steps, [(1, 0.7), (2, 0.5)]);
        assert_eq!(c.split, "holdout");
        assert_eq!(c.epochs, [(1, 0.71)], "an epoch without evaluation is left out");
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(Curve::read("p", None, empty.path()).unwrap(), None);
    }

    #[test]
    fn smoothing_starts_at_the_first_loss_and_follows_a_constant() {
        let c = Curve {
            steps: vec![(1, 2.0), (2, 2.0), (3, 2.0)],
            ..curve("x", 0)
        };
        for (_, v) in c.smoothed_loss(0.8) {
            assert!((v - 2.0).abs() < 1e-12);
        }
    }

    #[test]
    fn csv_has_one_row_per_point() {
        let csv = render_curves_csv(&[curve("a,b", 3)]);
        assert_eq!(csv.lines().count(), 1 + 3 + 3);
        assert!(csv.contains("\"a,b\",train_loss,2,0.5\n"), "{csv}");
        assert!(csv.contains("\"a,b\",holdout_accuracy,3,0.75\n"), "{csv}");
    }

    #[test]
    fn plots_many_models_as_three_files() {
        let curves: Vec<Curve> = (0..30).map(|i| curve(&format!("model{i}"), 20 + i)).collect();
        let svg = curves_svg(&curves, "Training curves").unwrap();
        assert!(svg.contains("model0") && svg.contains("more (training_curves.csv)"));
        let png = curves_png(&curves[..3], "Training curves").unwrap();
        let image = image::load_from_memory_with_format(&png, image::ImageFormat::Png).unwrap();
        assert_eq!((image.width(), image.height()), PLOT_SIZE);
        let names: Vec<String> = curve_files(&curves, "t").unwrap().into_iter().map(|f| f.0).collect();
        assert_eq!(
            names,
            ["training_curves.csv", "training_curves.svg", "training_curves.png"]
        );
        assert!(curve_files(&[], "t").unwrap().is_empty());
    }
}

//! The two scatter plots (parameters vs accuracy, size on disk vs accuracy), as SVG and PNG.

use super::error::ReportError;
use super::font::{self, FAMILY};
use super::marks::{self, Mark};
use super::{units, Report, ReportEntry};
use image::ImageEncoder;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

/// Width and height of every plot, in pixels (SVG user units too).
pub const PLOT_SIZE: (u32, u32) = (1200, 750);

/// Which quantity goes on the (logarithmic) x axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlotKind {
    /// Number of parameters.
    ParamsVsAccuracy,
    /// Bytes of the artifact on disk.
    SizeVsAccuracy,
}

impl PlotKind {
    /// Both plots, in the order the report shows them.
    pub const ALL: [PlotKind; 2] = [PlotKind::ParamsVsAccuracy, PlotKind::SizeVsAccuracy];

    /// File name without extension.
    pub fn file_stem(self) -> &'static str {
        match self {
            PlotKind::ParamsVsAccuracy => "params_vs_accuracy",
            PlotKind::SizeVsAccuracy => "size_vs_accuracy",
        }
    }

    /// Short description, used in captions and alt texts.
    pub fn caption(self) -> &'static str {
        match self {
            PlotKind::ParamsVsAccuracy => "parameters vs accuracy",
            PlotKind::SizeVsAccuracy => "size on disk vs accuracy",
        }
    }

    fn x_desc(self) -> &'static str {
        match self {
            PlotKind::ParamsVsAccuracy => "Parameters (log scale)",
            PlotKind::SizeVsAccuracy => "Size on disk (log scale)",
        }
    }

    fn x_value(self, entry: &ReportEntry) -> u64 {
        match self {
            PlotKind::ParamsVsAccuracy => entry.row.parameters,
            PlotKind::SizeVsAccuracy => entry.row.disk_bytes,
        }
    }

    fn x_label(self, value: f64) -> String {
        let n = value.round().max(0.0) as u64;
        match self {
            PlotKind::ParamsVsAccuracy => units::count(n),
            PlotKind::SizeVsAccuracy => units::bytes(n),
        }
    }
}

fn plot_err(e: impl std::fmt::Display) -> ReportError {
    ReportError::Plot(e.to_string())
}

/// The plot as an SVG document (text as `<text>` elements in the `sans-serif` family).
pub fn plot_svg(report: &Report, kind: PlotKind) -> Result<String, ReportError> {
    font::ensure_registered()?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, PLOT_SIZE).into_drawing_area();
        draw(&root, report, kind)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// The plot as a PNG file (RGB, [`PLOT_SIZE`]), text drawn with the embedded font.
pub fn plot_png(report: &Report, kind: PlotKind) -> Result<Vec<u8>, ReportError> {
    font::ensure_registered()?;
    let (w, h) = PLOT_SIZE;
    let mut pixels = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, PLOT_SIZE).into_drawing_area();
        draw(&root, report, kind)?;
        root.present().map_err(plot_err)?;
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&pixels, w, h, image::ExtendedColorType::Rgb8)
        .map_err(plot_err)?;
    Ok(png)
}

/// A point to draw: where, what mark, what label.
struct Point<'a> {
    x: f64,
    y: f64,
    name: &'a str,
    baseline: bool,
}

/// One legend entry and its points: the baseline first, then each strategy in order of first appearance.
fn groups(report: &Report, kind: PlotKind) -> Vec<(String, Mark, Vec<Point<'_>>)> {
    let mut groups: Vec<(String, Mark, Vec<Point>)> = Vec::new();
    let mut unknown = 0;
    for entry in &report.rows {
        let baseline = entry.row.name == report.baseline;
        let x = kind.x_value(entry);
        // A log axis cannot show 0; such a row stays in the tables.
        let point = (x > 0).then(|| Point {
            x: x as f64,
            y: entry.row.accuracy * 100.0,
            name: &entry.row.name,
            baseline,
        });
        let legend = if baseline {
            format!("{} (baseline)", entry.row.name)
        } else {
            entry.row.strategy.replace('_', "-")
        };
        let group = match groups.iter_mut().position(|g| g.0 == legend) {
            Some(i) => &mut groups[i],
            None => {
                let mark = if baseline {
                    marks::BASELINE
                } else {
                    marks::known(&entry.row.strategy).unwrap_or_else(|| {
                        unknown += 1;
                        marks::other(unknown - 1)
                    })
                };
                groups.push((legend, mark, Vec::new()));
                groups.last_mut().expect("just pushed")
            }
        };
        group.2.extend(point);
    }
    groups.sort_by_key(|g| !g.2.iter().any(|p| p.baseline));
    groups
}

/// The x range in log space: padded, wider on the right where the labels go; one point still gets a range.
fn x_range(xs: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = xs.fold((f64::INFINITY, 0.0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
    if !lo.is_finite() {
        return (1.0, 10.0);
    }
    let decades = (hi / lo).log10();
    (
        lo / 10f64.powf((0.08 * decades).max(0.15)),
        hi * 10f64.powf((0.22 * decades).max(0.35)),
    )
}

/// Ticks for a log axis over `[lo, hi]`: bold at 1×, 1-2-5× or 1…9× powers of ten (the first giving at least
/// three), light at the remaining 1…9× multiples.
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let all: Vec<(u32, f64)> = (lo.log10().floor() as i32..=hi.log10().ceil() as i32)
        .flat_map(|k| (1..=9u32).map(move |m| (m, m as f64 * 10f64.powi(k))))
        .filter(|&(_, v)| v >= lo && v <= hi)
        .collect();
    for set in [&[1][..], &[1, 2, 5][..]] {
        let pick = |bold: bool| {
            all.iter()
                .filter(|(m, _)| set.contains(m) == bold)
                .map(|t| t.1)
                .collect::<Vec<f64>>()
        };
        let bold = pick(true);
        if bold.len() >= 3 {
            return (bold, pick(false));
        }
    }
    (all.iter().map(|t| t.1).collect(), Vec::new())
}

/// The y range in percent, in steps of 5, holding every accuracy and the chance line.
fn y_range(ys: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let lo = (((lo - 3.0) / 5.0).floor() * 5.0).clamp(0.0, 95.0);
    let hi = (((hi + 3.0) / 5.0).ceil() * 5.0).clamp(lo + 5.0, 100.0);
    (lo, hi)
}

type Boxes = Vec<(i32, i32, i32, i32)>;

fn overlaps(a: (i32, i32, i32, i32), b: (i32, i32, i32, i32)) -> bool {
    a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3
}

/// Where to put a `w`×`h` label beside a point at `p`: the first candidate that stays inside `area` and
/// overlaps no marker and no earlier label; up-right if none does.
fn place_label(p: (i32, i32), (w, h): (i32, i32), r: i32, area: (i32, i32, i32, i32), taken: &Boxes) -> (i32, i32) {
    let gap = r + 3;
    let candidates = [
        (gap, -h - 1),
        (gap, 1),
        (-gap - w, -h - 1),
        (-gap - w, 1),
        (-w / 2, -h - gap),
        (-w / 2, gap),
    ];
    candidates
        .iter()
        .map(|&(dx, dy)| (p.0 + dx, p.1 + dy))
        .find(|&(x, y)| {
            let b = (x, y, x + w, y + h);
            b.0 >= area.0 && b.1 >= area.1 && b.2 <= area.2 && b.3 <= area.3 && !taken.iter().any(|&t| overlaps(b, t))
        })
        .unwrap_or((p.0 + candidates[0].0, p.1 + candidates[0].1))
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, report: &Report, kind: PlotKind) -> Result<(), ReportError> {
    let groups = groups(report, kind);
    let points = || groups.iter().flat_map(|g| g.2.iter());
    let teacher = report.baseline_entry().row.accuracy * 100.0;
    let chance = report.chance_level * 100.0;
    let (x_lo, x_hi) = x_range(points().map(|p| p.x));
    let (y_lo, y_hi) = y_range(points().map(|p| p.y).chain([teacher, chance]));

    let (bold, light) = log_ticks(x_lo, x_hi);

    root.fill(&WHITE).map_err(plot_err)?;
    let caption = format!(
        "{}: {} ({}, {})",
        report.title,
        kind.caption(),
        report.dataset,
        report.split
    );
    let mut chart = ChartBuilder::on(root)
        .caption(caption, (FAMILY, 24))
        .margin(20)
        .x_label_area_size(56)
        .y_label_area_size(72)
        .build_cartesian_2d(
            (x_lo..x_hi).log_scale().with_key_points(bold).with_light_points(light),
            y_lo..y_hi,
        )
        .map_err(plot_err)?;
    let x_label = |v: &f64| kind.x_label(*v).replace(".0 ", " ");
    chart
        .configure_mesh()
        .x_desc(kind.x_desc())
        .y_desc("Accuracy (%)")
        .x_label_formatter(&x_label)
        .y_label_formatter(&|v| format!("{v:.0}%"))
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 17))
        .bold_line_style(RGBColor(220, 220, 220))
        .light_line_style(RGBColor(242, 242, 242))
        .y_max_light_lines(0)
        .draw()
        .map_err(plot_err)?;

    // Reference lines; their labels are placed with the stage names, away from the markers.
    let lines = [
        (
            teacher,
            RGBColor(0, 0, 0),
            format!("baseline {} ({})", report.baseline, units::percent(teacher / 100.0)),
        ),
        (
            chance,
            RGBColor(190, 30, 45),
            format!("chance level, majority class ({})", units::percent(chance / 100.0)),
        ),
    ];
    for (y, color, label) in &lines {
        let style = color.stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new([(x_lo, *y), (x_hi, *y)], 10, 6, style))
            .map_err(plot_err)?
            .label(label.clone())
            .legend(move |(x, y)| DashedPathElement::new([(x - 12, y), (x + 12, y)], 5, 3, style));
    }

    // Markers, one legend entry per group.
    for (legend, mark, group) in &groups {
        let (mark, fill) = (*mark, mark.color.filled());
        let outline = mark.outline();
        let closed: Vec<(i32, i32)> = outline.iter().chain(outline.first()).copied().collect();
        chart
            .draw_series(group.iter().map(|p| {
                EmptyElement::at((p.x, p.y))
                    + Polygon::new(outline.clone(), fill)
                    + PathElement::new(closed.clone(), WHITE.stroke_width(1))
            }))
            .map_err(plot_err)?
            .label(legend.clone())
            .legend(move |c| Polygon::new(mark.outline_at(c), fill));
    }

    // Stage names beside their markers, avoiding markers and each other.
    let (xr, yr) = chart.plotting_area().get_pixel_range();
    let area = (xr.start, yr.start, xr.end, yr.end);
    let centers: Vec<((i32, i32), i32, &Point)> = groups
        .iter()
        .flat_map(|(_, mark, g)| g.iter().map(move |p| (mark.radius, p)))
        .map(|(r, p)| (chart.backend_coord(&(p.x, p.y)), r, p))
        .collect();
    let mut taken: Boxes = centers
        .iter()
        .map(|&((x, y), r, _)| (x - r, y - r, x + r, y + r))
        .collect();
    let line_ys: Vec<i32> = lines.iter().map(|l| chart.backend_coord(&(x_lo, l.0)).1).collect();
    taken.extend(line_ys.iter().map(|&y| (area.0, y - 1, area.2, y + 1)));
    // Reference line labels at either end, above or below the line, wherever no marker is.
    for ((_, color, label), &line_y) in lines.iter().zip(&line_ys) {
        let style = TextStyle::from((FAMILY, 14).into_font()).color(color);
        let (w, h) = root.estimate_text_size(label, &style).map_err(plot_err)?;
        let (w, h) = (w as i32, h as i32);
        let (left, right) = (area.0 + 8, area.2 - 8 - w);
        let candidates = [
            (left, line_y - h - 4),
            (right, line_y - h - 4),
            (left, line_y + 4),
            (right, line_y + 4),
        ];
        let at = candidates
            .into_iter()
            .find(|&(x, y)| !taken.iter().any(|&t| overlaps((x, y, x + w, y + h), t)))
            .unwrap_or(candidates[0]);
        taken.push((at.0, at.1, at.0 + w, at.1 + h));
        root.draw(&Text::new(label.clone(), at, style)).map_err(plot_err)?;
    }
    for &(c, r, p) in &centers {
        let font = if p.baseline {
            (FAMILY, 15).into_font().style(FontStyle::Bold)
        } else {
            (FAMILY, 14).into_font()
        };
        let style = TextStyle::from(font).color(&RGBColor(40, 40, 40));
        let (w, h) = root.estimate_text_size(p.name, &style).map_err(plot_err)?;
        let (w, h) = (w as i32, h as i32);
        let at = place_label(c, (w, h), r, area, &taken);
        taken.push((at.0, at.1, at.0 + w, at.1 + h));
        root.draw(&Text::new(p.name.to_string(), at, style)).map_err(plot_err)?;
    }

    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(180, 180, 180))
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testdata::sample;
    use super::*;

    #[test]
    fn ranges_handle_one_point_equal_values_and_none() {
        let (lo, hi) = x_range([5.0e6].into_iter());
        assert!(lo < 5.0e6 && hi > 5.0e6 && lo > 0.0);
        let (lo, hi) = x_range([7.0, 7.0, 7.0].into_iter());
        assert!(lo < 7.0 && hi > 7.0);
        assert_eq!(x_range(std::iter::empty()), (1.0, 10.0));
        assert_eq!(y_range([85.1, 85.1].into_iter()), (80.0, 90.0));
        assert_eq!(y_range([100.0, 100.0].into_iter()), (95.0, 100.0));
        assert_eq!(y_range([0.0, 1.0].into_iter()), (0.0, 5.0));
    }

    #[test]
    fn log_ticks_are_sparse_and_inside_the_range() {
        let (bold, light) = log_ticks(2.0e6, 3.0e8);
        assert_eq!(bold, [2.0e6, 5.0e6, 1.0e7, 2.0e7, 5.0e7, 1.0e8, 2.0e8]);
        assert!(light.contains(&3.0e6) && !light.contains(&2.0e6));
        let (bold, light) = log_ticks(1.0, 1.0e6);
        assert_eq!(bold, [1.0, 10.0, 100.0, 1000.0, 10_000.0, 100_000.0, 1_000_000.0]);
        assert_eq!(light.len(), 6 * 8);
        let (bold, light) = log_ticks(3.5e6, 1.1e7);
        assert_eq!(bold.len(), 7);
        assert!(light.is_empty());
    }

    #[test]
    fn labels_move_away_from_taken_places() {
        let area = (0, 0, 1000, 1000);
        let first = place_label((500, 500), (40, 10), 6, area, &vec![]);
        assert_eq!(first, (509, 489));
        let second = place_label(
            (500, 500),
            (40, 10),
            6,
            area,
            &vec![(first.0, first.1, first.0 + 40, first.1 + 10)],
        );
        assert_eq!(second, (509, 501));
        // At the right edge the label goes left.
        assert_eq!(place_label((990, 500), (40, 10), 6, area, &vec![]).0, 990 - 9 - 40);
    }

    #[test]
    fn svg_names_every_stage_and_the_chance_line() {
        let report = sample().derive().unwrap();
        for kind in PlotKind::ALL {
            let svg = plot_svg(&report, kind).unwrap();
            for entry in &report.rows {
                assert!(svg.contains(&entry.row.name), "{}", entry.row.name);
            }
            assert!(svg.contains("chance level"), "no chance line label");
            assert!(svg.contains("(baseline)"));
        }
    }

    #[test]
    fn png_decodes_with_the_plot_size() {
        let png = plot_png(&sample().derive().unwrap(), PlotKind::ParamsVsAccuracy).unwrap();
        let image = image::load_from_memory_with_format(&png, image::ImageFormat::Png).unwrap();
        assert_eq!((image.width(), image.height()), PLOT_SIZE);
    }

    #[test]
    fn one_row_equal_values_and_zero_sizes_do_not_panic() {
        let mut one = sample();
        one.rows.truncate(1);
        let mut equal = sample();
        for row in &mut equal.rows {
            row.parameters = 1_000;
            row.disk_bytes = 4_000;
            row.accuracy = 0.5;
        }
        let mut zero = sample();
        for row in &mut zero.rows {
            row.disk_bytes = 0;
        }
        for data in [one, equal, zero] {
            let report = data.derive().unwrap();
            for kind in PlotKind::ALL {
                assert!(plot_svg(&report, kind).unwrap().starts_with("<svg"));
                assert!(!plot_png(&report, kind).unwrap().is_empty());
            }
        }
    }

    #[test]
    fn plots_are_deterministic() {
        let report = sample().derive().unwrap();
        assert_eq!(
            plot_svg(&report, PlotKind::SizeVsAccuracy).unwrap(),
            plot_svg(&report, PlotKind::SizeVsAccuracy).unwrap()
        );
        assert_eq!(
            plot_png(&report, PlotKind::SizeVsAccuracy).unwrap(),
            plot_png(&report, PlotKind::SizeVsAccuracy).unwrap()
        );
    }
}

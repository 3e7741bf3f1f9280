//! The two scatter plots (parameters vs accuracy, size on disk vs accuracy), as SVG and PNG.

use super::canvas::{plot_err, render_png, render_svg, PLOT_SIZE};
use super::error::ReportError;
use super::font::FAMILY;
use super::marks::{self, Mark};
use super::measure::Axis;
use super::{units, Report, ReportEntry};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

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

    /// Short description, used in captions and alt texts: what is plotted against what.
    pub fn caption(self, report: &Report) -> String {
        let x = match self {
            PlotKind::ParamsVsAccuracy => "parameters",
            PlotKind::SizeVsAccuracy => "size on disk",
        };
        format!("{x} vs {}", Axis::of(report).name)
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

/// The plot as an SVG document (text as `<text>` elements in the `sans-serif` family).
pub fn plot_svg(report: &Report, kind: PlotKind) -> Result<String, ReportError> {
    render_svg(|root| draw(root, report, kind).map(drop))
}

/// The plot as a PNG file (RGB, [`PLOT_SIZE`]), text drawn with the embedded font.
pub fn plot_png(report: &Report, kind: PlotKind) -> Result<Vec<u8>, ReportError> {
    render_png(|root| draw(root, report, kind).map(drop))
}

/// A point to draw: where, what mark, what label.
struct Point<'a> {
    x: f64,
    y: f64,
    name: &'a str,
    baseline: bool,
}

/// One legend entry and its points: the baseline first, then each strategy in order of first appearance.
fn groups<'a>(report: &'a Report, kind: PlotKind, axis: &Axis) -> Vec<(String, Mark, Vec<Point<'a>>)> {
    let mut groups: Vec<(String, Mark, Vec<Point>)> = Vec::new();
    let mut unknown = 0;
    for entry in &report.rows {
        let baseline = entry.row.name == report.baseline;
        let x = kind.x_value(entry);
        // A log axis cannot show 0; such a row stays in the tables.
        let point = (x > 0).then(|| Point {
            x: x as f64,
            y: axis.value(entry),
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

/// The y axis in points (percent for accuracy): the models' values with some room, in round
/// steps, so that differences of a point stay visible, never below `floor` nor above 100. The
/// chance line is inside when it is near the data; `false` when it lies below (or there is none).
fn y_range(ys: impl Iterator<Item = f64>, chance: Option<f64>, floor: f64) -> (f64, f64, f64, bool) {
    let (lo, hi) = ys
        .filter(|y| y.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let anchor = chance.unwrap_or(floor.max(0.0));
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (anchor, anchor) };
    let span = (hi - lo).max(2.0);
    // The chance line joins the axis when that at most doubles the span the data needs.
    let chance_inside = chance.is_some_and(|c| c >= lo - span - 2.0);
    let (lo, hi) = match chance {
        Some(c) if chance_inside => (lo.min(c), hi.max(c)),
        _ => (lo, hi),
    };
    let pad = ((hi - lo) * 0.12).max(1.0);
    let step = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0]
        .into_iter()
        .find(|s| (hi - lo + 2.0 * pad) / s <= 10.0)
        .unwrap_or(20.0);
    let y_lo = (((lo - pad) / step).floor() * step).max(floor);
    let y_hi = (((hi + pad) / step).ceil() * step).min(100.0).max(y_lo + step);
    (y_lo, y_hi, step, chance_inside)
}

type Boxes = Vec<(i32, i32, i32, i32)>;

fn overlaps(a: (i32, i32, i32, i32), b: (i32, i32, i32, i32)) -> bool {
    a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3
}

/// Where to put a `w`×`h` label for a point at `p`: beside it if a place there stays inside `area` and
/// overlaps no marker and no earlier label, else on rings further out (drawn with a leader line); `None`
/// when the plot is too crowded for it.
fn place_label(
    p: (i32, i32),
    (w, h): (i32, i32),
    r: i32,
    area: (i32, i32, i32, i32),
    taken: &Boxes,
) -> Option<(i32, i32)> {
    (0..10).find_map(|ring| {
        let gap = r + 3 + ring * (h + 4);
        let candidates = [
            (gap, -h / 2 - ring * 2),
            (gap, -h - 1),
            (gap, 1),
            (-gap - w, -h - 1),
            (-gap - w, 1),
            (-w / 2, -h - gap),
            (-w / 2, gap),
            (gap, -h - gap),
            (gap, gap),
            (-gap - w, -h - gap),
            (-gap - w, gap),
        ];
        candidates.iter().map(|&(dx, dy)| (p.0 + dx, p.1 + dy)).find(|&(x, y)| {
            let b = (x, y, x + w, y + h);
            b.0 >= area.0 && b.1 >= area.1 && b.2 <= area.2 && b.3 <= area.3 && !taken.iter().any(|&t| overlaps(b, t))
        })
    })
}

/// The bars of the models trained with several seeds: (x, mean, mean − std, mean + std, colour)
/// on the axis, for each seed group of two or more whose rows are drawn.
fn seed_bars(
    report: &Report,
    kind: PlotKind,
    axis: &Axis,
    groups: &[(String, Mark, Vec<Point<'_>>)],
) -> Vec<(f64, f64, f64, f64, RGBColor)> {
    let mut bars = Vec::new();
    for seeds in report.seed_groups.iter().filter(|g| g.quality.n >= 2) {
        let entries: Vec<&ReportEntry> = seeds
            .rows
            .iter()
            .filter_map(|name| report.rows.iter().find(|e| &e.row.name == name))
            .collect();
        let ys: Vec<f64> = entries.iter().map(|e| axis.value(e)).collect();
        let spread = super::Spread::of(&ys);
        let (Some(std), Some(first)) = (spread.std, entries.first()) else {
            continue;
        };
        let color = groups
            .iter()
            .find(|g| g.2.iter().any(|p| p.name == first.row.name))
            .map(|g| g.1.color);
        // A log axis cannot show 0 (such rows are not drawn either).
        let x = kind.x_value(first) as f64;
        if let (Some(color), true) = (color, std.is_finite() && x > 0.0) {
            bars.push((x, spread.mean, spread.mean - std, spread.mean + std, color));
        }
    }
    bars
}

/// Width of the legend column, right of the plot.
const LEGEND_WIDTH: u32 = 290;

/// Draws the plot; returns the boxes of the text labels drawn in the plotting area (stage names and the
/// reference lines' labels), for the test that they never overlap.
fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    report: &Report,
    kind: PlotKind,
) -> Result<Boxes, ReportError> {
    let axis = Axis::of(report);
    let groups = groups(report, kind, &axis);
    let points = || groups.iter().flat_map(|g| g.2.iter());
    let teacher = axis.value(report.baseline_entry());
    let chance = axis.chance.as_ref().map(|c| c.0);
    let bars = seed_bars(report, kind, &axis, &groups);
    let (x_lo, x_hi) = x_range(points().map(|p| p.x));
    let bar_ends = bars.iter().flat_map(|b| [b.2, b.3]).map(|y| y.clamp(axis.floor, 100.0));
    let (y_lo, y_hi, y_step, chance_inside) = y_range(
        points().map(|p| p.y).chain([teacher]).chain(bar_ends),
        chance,
        axis.floor,
    );
    let y_ticks = ((y_hi - y_lo) / y_step).round() as usize + 1;
    let y_decimals = usize::from(y_step < 1.0);

    let (bold, light) = log_ticks(x_lo, x_hi);

    root.fill(&WHITE).map_err(plot_err)?;
    let caption = format!(
        "{}: {} ({}, {} split)",
        report.title,
        kind.caption(report),
        report.dataset,
        report.split
    );
    let body = root
        .margin(10, 0, 0, 0)
        .titled(&caption, (FAMILY, 24).into_font().color(&RGBColor(30, 30, 30)))
        .map_err(plot_err)?;
    let (plot_side, legend_side) = body.split_horizontally(PLOT_SIZE.0 - LEGEND_WIDTH);
    let mut chart = ChartBuilder::on(&plot_side)
        .margin(20)
        .margin_right(8)
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
        .y_desc(axis.title.as_str())
        .x_label_formatter(&x_label)
        .y_labels(y_ticks)
        .y_label_formatter(&|v| axis.show(*v, y_decimals))
        .label_style((FAMILY, 15).into_font().color(&RGBColor(60, 60, 60)))
        .axis_desc_style((FAMILY, 17).into_font().color(&RGBColor(30, 30, 30)))
        .bold_line_style(RGBColor(220, 220, 220))
        .light_line_style(RGBColor(242, 242, 242))
        .y_max_light_lines(0)
        .draw()
        .map_err(plot_err)?;

    // Reference lines; their labels are placed with the stage names, away from the markers.
    let baseline_color = RGBColor(0, 0, 0);
    let chance_color = RGBColor(190, 30, 45);
    let mut lines = vec![(
        teacher,
        baseline_color,
        format!("baseline {} ({})", report.baseline, axis.show(teacher, 1)),
    )];
    if let (Some((at, label)), true) = (&axis.chance, chance_inside) {
        lines.push((*at, chance_color, label.clone()));
    }
    for (y, color, _) in &lines {
        chart
            .draw_series(DashedLineSeries::new(
                [(x_lo, *y), (x_hi, *y)],
                10,
                6,
                color.stroke_width(2),
            ))
            .map_err(plot_err)?;
    }

    // A model trained with several seeds: a bar of ± one sample standard deviation around the
    // mean of its seeds, with a tick at the mean, in its strategy's colour.
    for &(x, mean, lo, hi, color) in &bars {
        let cap = |y: f64| PathElement::new([(x / 1.04, y), (x * 1.04, y)], color.stroke_width(2));
        chart
            .draw_series([
                PathElement::new([(x, lo.max(y_lo)), (x, hi.min(y_hi))], color.stroke_width(2)),
                PathElement::new([(x / 1.08, mean), (x * 1.08, mean)], color.stroke_width(3)),
            ])
            .map_err(plot_err)?;
        // A cap marks where the bar ends; none where the axis cut it.
        chart
            .draw_series([lo, hi].into_iter().filter(|y| (y_lo..=y_hi).contains(y)).map(cap))
            .map_err(plot_err)?;
    }

    // Markers.
    for (_, mark, group) in &groups {
        let fill = mark.color.filled();
        let outline = mark.outline();
        let closed: Vec<(i32, i32)> = outline.iter().chain(outline.first()).copied().collect();
        chart
            .draw_series(group.iter().map(|p| {
                EmptyElement::at((p.x, p.y))
                    + Polygon::new(outline.clone(), fill)
                    + PathElement::new(closed.clone(), WHITE.stroke_width(1))
            }))
            .map_err(plot_err)?;
    }

    // Stage names beside their markers, avoiding markers, lines and each other.
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
    let mut labels: Boxes = Vec::new();
    let mut texts: Vec<(String, (i32, i32), TextStyle)> = Vec::new();
    // Reference line labels at either end, above or below the line, wherever nothing else is.
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
        if let Some(at) = candidates.into_iter().find(|&(x, y)| {
            let b = (x, y, x + w, y + h);
            b.1 >= area.1 && b.3 <= area.3 && !taken.iter().any(|&t| overlaps(b, t))
        }) {
            taken.push((at.0, at.1, at.0 + w, at.1 + h));
            labels.push((at.0, at.1, at.0 + w, at.1 + h));
            texts.push((label.clone(), at, style));
        }
    }
    let mut unplaced: Vec<&str> = Vec::new();
    let mut leaders: Vec<[(i32, i32); 2]> = Vec::new();
    for &(c, r, p) in &centers {
        let font = if p.baseline {
            (FAMILY, 15).into_font().style(FontStyle::Bold)
        } else {
            (FAMILY, 14).into_font()
        };
        let style = TextStyle::from(font).color(&RGBColor(40, 40, 40));
        let (w, h) = root.estimate_text_size(p.name, &style).map_err(plot_err)?;
        let (w, h) = (w as i32, h as i32);
        let Some(at) = place_label(c, (w, h), r, area, &taken) else {
            unplaced.push(p.name);
            continue;
        };
        let b = (at.0, at.1, at.0 + w, at.1 + h);
        // A label away from its marker gets a thin line to it, ending at the label's nearest edge.
        let near = (c.0.clamp(b.0, b.2), c.1.clamp(b.1, b.3));
        if (near.0 - c.0).abs().max((near.1 - c.1).abs()) > r + 8 {
            leaders.push([c, near]);
        }
        taken.push(b);
        labels.push(b);
        texts.push((p.name.to_string(), at, style));
    }
    for leader in leaders {
        root.draw(&PathElement::new(leader, RGBColor(150, 150, 150).stroke_width(1)))
            .map_err(plot_err)?;
    }
    for (text, at, style) in texts {
        root.draw(&Text::new(text, at, style)).map_err(plot_err)?;
    }

    draw_legend(
        &legend_side,
        area.1,
        &groups,
        &lines,
        axis.chance.as_ref().filter(|_| !chance_inside),
        !bars.is_empty(),
        &unplaced,
    )?;
    Ok(labels)
}

/// The legend, in its own column right of the plot: one entry per group, the reference lines, what
/// the seed bars are (when drawn), and what the plot could not show (a chance line below the axis,
/// labels with no room).
fn draw_legend<DB: DrawingBackend>(
    side: &DrawingArea<DB, Shift>,
    top: i32,
    groups: &[(String, Mark, Vec<Point<'_>>)],
    lines: &[(f64, RGBColor, String)],
    chance_below: Option<&(f64, String)>,
    bars: bool,
    unplaced: &[&str],
) -> Result<(), ReportError> {
    fn style(color: &RGBColor) -> TextStyle<'_> {
        TextStyle::from((FAMILY, 14).into_font()).color(color)
    }
    let text_color = RGBColor(40, 40, 40);
    // The side's own coordinates: its top-left corner is (0, 0); `top` is in the root's.
    let (mark_x, text_x) = (22, 42);
    let mut y = top - side.get_base_pixel().1 + 10;
    let row = 24;
    for (legend, mark, _) in groups {
        side.draw(&Polygon::new(mark.outline_at((mark_x, y)), mark.color.filled()))
            .map_err(plot_err)?;
        side.draw(&Text::new(legend.clone(), (text_x, y - 10), style(&text_color)))
            .map_err(plot_err)?;
        y += row;
    }
    for (_, color, label) in lines {
        side.draw(&DashedPathElement::new(
            [(mark_x - 12, y), (mark_x + 12, y)],
            5,
            3,
            color.stroke_width(2),
        ))
        .map_err(plot_err)?;
        let short = label.split(" (").next().unwrap_or(label).to_string();
        side.draw(&Text::new(short, (text_x, y - 10), style(color)))
            .map_err(plot_err)?;
        y += row;
    }
    let note = |text: String, color: RGBColor, y: &mut i32| -> Result<(), ReportError> {
        for line in wrap(&text, 34) {
            side.draw(&Text::new(line, (10, *y), style(&color))).map_err(plot_err)?;
            *y += 18;
        }
        *y += 6;
        Ok(())
    };
    y += 8;
    if let Some((_, label)) = chance_below {
        let mut text = format!("{label} lies below the axis.");
        if let Some(first) = text.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        note(text, RGBColor(190, 30, 45), &mut y)?;
    }
    if bars {
        note(
            "Bars: the mean over seeds (tick) ± one sample standard deviation.".to_string(),
            text_color,
            &mut y,
        )?;
    }
    if !unplaced.is_empty() {
        note(
            format!("Not labelled (no room): {}.", unplaced.join(", ")),
            text_color,
            &mut y,
        )?;
    }
    Ok(())
}

/// Words of `text` in lines of at most `width` characters (a longer word gets a line of its own).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + word.chars().count() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::super::testdata::sample;
    use super::super::ReportData;
    use super::*;

    #[test]
    fn ranges_handle_one_point_equal_values_and_none() {
        let (lo, hi) = x_range([5.0e6].into_iter());
        assert!(lo < 5.0e6 && hi > 5.0e6 && lo > 0.0);
        let (lo, hi) = x_range([7.0, 7.0, 7.0].into_iter());
        assert!(lo < 7.0 && hi > 7.0);
        assert_eq!(x_range(std::iter::empty()), (1.0, 10.0));
        // Close accuracies get a zoomed axis; a far chance level stays off it.
        let (lo, hi, step, chance) = y_range([77.0, 78.4, 79.0].into_iter(), Some(52.0), 0.0);
        assert!(
            (74.0..77.0).contains(&lo) && (79.0..=82.0).contains(&hi) && step <= 1.0,
            "{lo} {hi} {step}"
        );
        assert!(!chance);
        // A near one joins it.
        let (lo, _, _, chance) = y_range([58.0, 62.0].into_iter(), Some(52.0), 0.0);
        assert!(chance && lo <= 52.0);
        assert_eq!(y_range([100.0, 100.0].into_iter(), Some(50.0), 0.0).1, 100.0);
        let (lo, hi, _, _) = y_range([0.0, 1.0].into_iter(), Some(0.5), 0.0);
        assert!(lo == 0.0 && hi > 1.0);
        let (lo, hi, _, _) = y_range(std::iter::empty(), Some(0.5), 0.0);
        assert!(lo < hi);
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
        let first = place_label((500, 500), (40, 10), 6, area, &vec![]).unwrap();
        assert_eq!(first, (509, 495));
        let taken = vec![(first.0, first.1, first.0 + 40, first.1 + 10)];
        let second = place_label((500, 500), (40, 10), 6, area, &taken).unwrap();
        assert!(!overlaps((second.0, second.1, second.0 + 40, second.1 + 10), taken[0]));
        // At the right edge the label goes left.
        assert_eq!(
            place_label((990, 500), (40, 10), 6, area, &vec![]).unwrap().0,
            990 - 9 - 40
        );
        // No room anywhere: none.
        assert_eq!(place_label((5, 5), (40, 10), 6, (0, 0, 10, 10), &vec![]), None);
    }

    /// The boxes of every label in the plot of `data`.
    fn label_boxes(data: &ReportData, kind: PlotKind) -> Boxes {
        super::super::font::ensure_registered().unwrap();
        let report = data.derive().unwrap();
        let mut svg = String::new();
        let root = SVGBackend::with_string(&mut svg, PLOT_SIZE).into_drawing_area();
        draw(&root, &report, kind).unwrap()
    }

    #[test]
    fn labels_never_overlap_even_for_a_sweep_of_equal_sizes() {
        // The sample, and a sweep: nine students of one size with accuracies a tenth of a point apart.
        let mut sweep = sample();
        let template = sweep.rows[1].clone();
        for (i, t) in ["2.0", "4.0", "8.0"].iter().enumerate() {
            for (j, a) in ["0.5", "0.7", "0.9"].iter().enumerate() {
                let mut row = template.clone();
                row.name = format!("tuned[t={t},a={a}]");
                row.quality = 0.85 + 0.001 * (3 * i + j) as f64;
                sweep.rows.push(row);
            }
        }
        for data in [sample(), sweep] {
            for kind in PlotKind::ALL {
                let boxes = label_boxes(&data, kind);
                assert!(boxes.len() >= data.rows.len().min(8), "{} labels", boxes.len());
                for (i, a) in boxes.iter().enumerate() {
                    for b in &boxes[i + 1..] {
                        assert!(!overlaps(*a, *b), "{kind:?}: {a:?} overlaps {b:?}");
                    }
                }
            }
        }
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
            row.quality = 0.5;
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

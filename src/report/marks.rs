//! How each strategy is drawn in the plots: a colour and a marker shape, fixed per strategy name.

use plotters::style::RGBColor;
use std::f64::consts::PI;

/// A marker's outline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A disc (a 16-gon).
    Circle,
    /// A triangle pointing up.
    Triangle,
    /// A triangle pointing down.
    InvertedTriangle,
    /// An axis-aligned square.
    Square,
    /// A square on its corner.
    Diamond,
    /// A plus sign.
    Plus,
    /// A five-pointed star (reserved for the baseline).
    Star,
}

/// A colour, a shape and a radius in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Fill colour.
    pub color: RGBColor,
    /// Outline.
    pub shape: Shape,
    /// Radius in pixels.
    pub radius: i32,
}

/// The baseline (teacher) row: a large black star, whatever its strategy.
pub const BASELINE: Mark = Mark {
    color: RGBColor(0, 0, 0),
    shape: Shape::Star,
    radius: 10,
};

// Okabe–Ito colours (distinguishable with colour-vision deficiencies).
const BLUE: RGBColor = RGBColor(0, 114, 178);
const VERMILLION: RGBColor = RGBColor(213, 94, 0);
const GREEN: RGBColor = RGBColor(0, 158, 115);
const PURPLE: RGBColor = RGBColor(204, 121, 167);
const ORANGE: RGBColor = RGBColor(230, 159, 0);
const SKY: RGBColor = RGBColor(86, 180, 233);
const GREY: RGBColor = RGBColor(110, 110, 110);

/// Marks for strategies this module does not know, cycled in order of first appearance.
const OTHERS: &[Mark] = &[
    Mark {
        color: RGBColor(121, 85, 72),
        shape: Shape::Circle,
        radius: 6,
    },
    Mark {
        color: RGBColor(148, 103, 189),
        shape: Shape::Triangle,
        radius: 7,
    },
    Mark {
        color: RGBColor(23, 150, 170),
        shape: Shape::Square,
        radius: 6,
    },
    Mark {
        color: RGBColor(64, 64, 64),
        shape: Shape::Diamond,
        radius: 7,
    },
    Mark {
        color: RGBColor(188, 150, 34),
        shape: Shape::InvertedTriangle,
        radius: 7,
    },
];

/// The mark of a known strategy (`successive`, `multi-agent` and `Multi_Agent` are the same), else `None`.
pub fn known(strategy: &str) -> Option<Mark> {
    let (color, shape, radius) = match strategy.to_ascii_lowercase().replace('-', "_").as_str() {
        "teacher" => (GREY, Shape::Circle, 6),
        "straightforward" => (BLUE, Shape::Circle, 6),
        "successive" => (VERMILLION, Shape::Triangle, 7),
        "multi_agent" => (GREEN, Shape::Square, 6),
        "qlora" => (PURPLE, Shape::Diamond, 7),
        "prune" => (ORANGE, Shape::InvertedTriangle, 7),
        "train" => (SKY, Shape::Plus, 7),
        _ => return None,
    };
    Some(Mark { color, shape, radius })
}

/// The mark for the `index`-th unknown strategy.
pub fn other(index: usize) -> Mark {
    OTHERS[index % OTHERS.len()]
}

fn polygon(corners: usize, radius: f64, start: f64) -> Vec<(f64, f64)> {
    (0..corners)
        .map(|i| {
            let a = start + 2.0 * PI * i as f64 / corners as f64;
            (radius * a.cos(), radius * a.sin())
        })
        .collect()
}

impl Mark {
    /// The outline's corners in pixels, relative to the point, y pointing down.
    pub fn outline(&self) -> Vec<(i32, i32)> {
        let r = self.radius as f64;
        let up = -PI / 2.0;
        let points = match self.shape {
            Shape::Circle => polygon(16, r, 0.0),
            Shape::Triangle => polygon(3, r * 1.15, up),
            Shape::InvertedTriangle => polygon(3, r * 1.15, PI / 2.0),
            Shape::Square => polygon(4, r * 1.2, PI / 4.0),
            Shape::Diamond => polygon(4, r * 1.2, 0.0),
            Shape::Plus => {
                let (a, b) = (r, r * 0.35);
                vec![
                    (-b, -a),
                    (b, -a),
                    (b, -b),
                    (a, -b),
                    (a, b),
                    (b, b),
                    (b, a),
                    (-b, a),
                    (-b, b),
                    (-a, b),
                    (-a, -b),
                    (-b, -b),
                ]
            }
            Shape::Star => {
                let outer = polygon(5, r, up);
                let inner = polygon(5, r * 0.42, up + PI / 5.0);
                outer.into_iter().zip(inner).flat_map(|(o, i)| [o, i]).collect()
            }
        };
        points
            .into_iter()
            .map(|(x, y)| (x.round() as i32, y.round() as i32))
            .collect()
    }

    /// The outline moved to `(x, y)`.
    pub fn outline_at(&self, (x, y): (i32, i32)) -> Vec<(i32, i32)> {
        self.outline().into_iter().map(|(dx, dy)| (x + dx, y + dy)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_have_distinct_marks() {
        let names = [
            "teacher",
            "straightforward",
            "successive",
            "multi_agent",
            "qlora",
            "prune",
            "train",
        ];
        let marks: Vec<Mark> = names.iter().map(|n| known(n).unwrap()).collect();
        for (i, a) in marks.iter().enumerate() {
            assert_ne!(*a, BASELINE);
            for b in &marks[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(known("Multi-Agent"), known("multi_agent"));
        assert_eq!(known("mystery"), None);
        assert_eq!(other(0), other(OTHERS.len()));
    }

    #[test]
    fn outlines_fit_the_radius() {
        for shape in [
            Shape::Circle,
            Shape::Triangle,
            Shape::Square,
            Shape::Diamond,
            Shape::Plus,
            Shape::Star,
        ] {
            let mark = Mark {
                color: BLUE,
                shape,
                radius: 6,
            };
            let outline = mark.outline();
            assert!(outline.len() >= 3);
            assert!(
                outline.iter().all(|&(x, y)| x.abs() <= 8 && y.abs() <= 8),
                "{shape:?}: {outline:?}"
            );
        }
    }
}

//! Sweeps as pivot tables: rows named `tuned[t=2.0,a=0.5]`, `tuned[t=4.0,a=0.5]`, … become one table of
//! accuracy with one axis per sweep variable (the last variable across, the others down).
//!
//! Works from the names alone (a stage's sweep point is in its name, aliases included: `chain/step[2]
//! (= tuned[t=4.0,a=0.5])`), so a report shown under current names pivots by current names.

use super::{Report, ReportEntry};

/// One sweep: its stage name, its variables, and the accuracy at each point.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepTable {
    /// The name before the brackets (`tuned`).
    pub name: String,
    /// The variables, in the order the names give them.
    pub vars: Vec<String>,
    /// Values down the side: one label per combination of every variable but the last.
    pub row_labels: Vec<String>,
    /// Values across the top: the last variable's values, in order of first appearance.
    pub col_labels: Vec<String>,
    /// `cells[r][c]`: the entry at that point (an index into the report's rows), if measured.
    pub cells: Vec<Vec<Option<usize>>>,
}

/// The sweep points a displayed name holds: `base[k=v,…]` for itself and each alias.
fn points(name: &str) -> Vec<(String, Vec<(String, String)>)> {
    let (first, aliases) = match name.split_once(" (= ") {
        Some((first, rest)) => (first, rest.strip_suffix(')').unwrap_or(rest)),
        None => (name, ""),
    };
    std::iter::once(first)
        .chain(aliases.split(", ").filter(|a| !a.is_empty()))
        .filter_map(point)
        .collect()
}

/// `tuned[t=2.0,a=0.5]` → (`tuned`, [(t, 2.0), (a, 0.5)]), owned; anything else → none.
fn point(name: &str) -> Option<(String, Vec<(String, String)>)> {
    let (base, coords) = crate::text::sweep_point(name)?;
    Some((
        base.to_string(),
        coords
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    ))
}

/// Every sweep with at least two measured points, in order of first appearance.
pub fn sweep_tables(report: &Report) -> Vec<SweepTable> {
    type Found = (String, Vec<String>, Vec<(Vec<String>, usize)>);
    let mut found: Vec<Found> = Vec::new();
    for (i, entry) in report.rows.iter().enumerate() {
        for (base, coords) in points(&entry.row.name) {
            let vars: Vec<String> = coords.iter().map(|c| c.0.clone()).collect();
            let values: Vec<String> = coords.into_iter().map(|c| c.1).collect();
            match found.iter_mut().find(|f| f.0 == base && f.1 == vars) {
                Some(f) => f.2.push((values, i)),
                None => found.push((base, vars, vec![(values, i)])),
            }
        }
    }
    found
        .into_iter()
        .filter(|f| f.2.len() >= 2)
        .map(|(name, vars, at)| {
            let side = |values: &[String]| values[..values.len() - 1].join(", ");
            let mut row_labels: Vec<String> = Vec::new();
            let mut col_labels: Vec<String> = Vec::new();
            for (values, _) in &at {
                let (r, c) = (side(values), values[values.len() - 1].clone());
                if !row_labels.contains(&r) {
                    row_labels.push(r);
                }
                if !col_labels.contains(&c) {
                    col_labels.push(c);
                }
            }
            sort_values(&mut row_labels);
            sort_values(&mut col_labels);
            let mut cells = vec![vec![None; col_labels.len()]; row_labels.len()];
            for (values, i) in &at {
                let r = row_labels.iter().position(|l| *l == side(values)).expect("collected");
                let c = col_labels
                    .iter()
                    .position(|l| l == &values[values.len() - 1])
                    .expect("collected");
                cells[r][c] = Some(*i);
            }
            SweepTable {
                name,
                vars,
                row_labels,
                col_labels,
                cells,
            }
        })
        .collect()
}

/// Sorts numbers by value (`2.0` before `10.0`); labels that are not all numbers keep their order.
fn sort_values(labels: &mut [String]) {
    let numbers: Option<Vec<f64>> = labels
        .iter()
        .map(|l| {
            l.split(", ")
                .map(|v| v.parse::<f64>().ok())
                .collect::<Option<Vec<f64>>>()
        })
        .map(|v| v.and_then(|v| (v.len() == 1).then(|| v[0])))
        .collect();
    if let Some(numbers) = numbers {
        let mut pairs: Vec<(f64, String)> = numbers.into_iter().zip(labels.iter().cloned()).collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (slot, (_, label)) in labels.iter_mut().zip(pairs) {
            *slot = label;
        }
    }
}

impl SweepTable {
    /// The heading: `tuned: accuracy by t × a` (`pearson by` for a regression).
    pub fn title(&self, report: &Report) -> String {
        format!("{}: {} by {}", self.name, report.quality_name, self.vars.join(" × "))
    }

    /// The table as rows of cells (header first), each cell filled by `cell` for a measured point.
    pub fn grid(&self, report: &Report, cell: &dyn Fn(&ReportEntry) -> String) -> Vec<Vec<String>> {
        let (side, last) = self.vars.split_at(self.vars.len() - 1);
        let corner = if side.is_empty() {
            String::new()
        } else {
            format!("{} \\ {}", side.join(", "), last[0])
        };
        let header = std::iter::once(corner)
            .chain(self.col_labels.iter().map(|c| {
                if side.is_empty() {
                    format!("{}={c}", last[0])
                } else {
                    c.clone()
                }
            }))
            .collect();
        let mut grid = vec![header];
        for (label, cells) in self.row_labels.iter().zip(&self.cells) {
            let mut row = vec![if side.is_empty() {
                report.quality_name.clone()
            } else {
                label.clone()
            }];
            row.extend(
                cells
                    .iter()
                    .map(|c| c.map_or_else(|| super::units::MISSING.to_string(), |i| cell(&report.rows[i]))),
            );
            grid.push(row);
        }
        grid
    }
}

#[cfg(test)]
mod tests {
    use super::super::testdata::sample;
    use super::*;

    #[test]
    fn names_parse_into_sweep_points_aliases_included() {
        assert_eq!(
            points("tuned[t=2.0,a=0.5]"),
            [(
                "tuned".to_string(),
                vec![
                    ("t".to_string(), "2.0".to_string()),
                    ("a".to_string(), "0.5".to_string())
                ]
            )]
        );
        assert!(points("chain/step[1]").is_empty());
        assert!(points("teacher").is_empty());
        assert!(points("[x=1]").is_empty());
        let both = points("chain/step[2] (= tuned[t=4.0,a=0.5], other[s=1])");
        assert_eq!(both.len(), 2);
        assert_eq!(both[1].0, "other");
    }

    #[test]
    fn a_two_variable_sweep_becomes_a_grid() {
        let mut data = sample();
        let template = data.rows[1].clone();
        data.rows.truncate(1);
        for (t, a, acc) in [("8.0", "0.5", 0.82), ("2.0", "0.5", 0.80), ("2.0", "0.9", 0.81)] {
            let mut row = template.clone();
            row.name = format!("tuned[t={t},a={a}]");
            row.quality = acc;
            data.rows.push(row);
        }
        data.rows[1].name = format!("chain/step[2] (= {})", data.rows[1].name);
        let report = data.derive().unwrap();
        let tables = sweep_tables(&report);
        assert_eq!(tables.len(), 1);
        let t = &tables[0];
        assert_eq!(t.title(&report), "tuned: accuracy by t × a");
        assert_eq!(
            (t.row_labels.clone(), t.col_labels.clone()),
            (vec!["2.0".into(), "8.0".into()], vec!["0.5".into(), "0.9".into()])
        );
        let grid = t.grid(&report, &|e| format!("{:.2}", e.row.quality));
        assert_eq!(
            grid,
            [
                vec!["t \\ a", "0.5", "0.9"],
                vec!["2.0", "0.80", "0.81"],
                vec!["8.0", "0.82", "—"]
            ]
        );
    }

    #[test]
    fn one_point_is_not_a_sweep_and_one_variable_is_one_row() {
        let mut data = sample();
        data.rows.truncate(2);
        data.rows[1].name = "s[lr=0.001]".into();
        assert!(sweep_tables(&data.clone().derive().unwrap()).is_empty());
        let mut extra = data.rows[1].clone();
        extra.name = "s[lr=0.01]".into();
        data.rows.push(extra);
        let report = data.derive().unwrap();
        let grid = sweep_tables(&report)[0].grid(&report, &|_| "x".into());
        assert_eq!(grid, [vec!["", "lr=0.001", "lr=0.01"], vec!["accuracy", "x", "x"]]);
    }
}

//! The results report: a markdown table, CSV, JSON and two plots (SVG + PNG) from measured rows.
//!
//! [`ReportData`] holds what the `report` op measured; [`ReportData::derive`] checks it and adds the
//! columns relative to the baseline; [`write_report`] writes every file; [`render_text`] prints the
//! table for the terminal. Same data, same bytes: nothing here reads the clock, the machine or its fonts.

mod canvas;
mod csv;
mod curves;
mod data;
mod font;
mod marks;
mod measure;
mod overlay;
mod plots;
mod seeds;
mod sweeps;
mod table;
pub mod units;

#[cfg(test)]
mod testdata;

mod error;

pub use canvas::PLOT_SIZE;
pub use csv::{render_csv, CSV_HEADER};
pub use curves::{render_curves_csv, Curve, EPOCHS_CSV, STEPS_CSV};
pub use data::{Derived, Report, ReportData, ReportEntry, ReportRow};
pub use error::ReportError;
pub use overlay::{overlay, write_overlay};
pub use plots::{plot_png, plot_svg, PlotKind};
pub use seeds::{SeedGroup, Spread};
pub use sweeps::{sweep_tables, SweepTable};
pub use table::{render_markdown, render_text};

use std::path::{Path, PathBuf};

/// The files [`write_report`] wrote, in the order written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFiles {
    /// `report.md`, `report.csv`, `report.json`, then each plot as `.svg` and `.png`.
    pub paths: Vec<PathBuf>,
}

/// The whole `report.json`: the data with the derived columns, pretty-printed, ending in a newline.
pub fn render_json(report: &Report) -> String {
    let mut json = serde_json::to_string_pretty(report).expect("a Report always serializes (no maps, finite floats)");
    json.push('\n');
    json
}

/// Checks `data`, then writes `report.md`, `report.csv`, `report.json`, every plot as SVG and PNG, and the
/// training curves (`training_curves.csv`/`.svg`/`.png`, when some model has them) into `dir` (created if missing).
pub fn write_report(data: &ReportData, dir: &Path) -> Result<ReportFiles, ReportError> {
    let report = data.derive()?;
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.into(),
        source,
    })?;
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("report.md".into(), render_markdown(&report).into_bytes()),
        ("report.csv".into(), render_csv(&report).into_bytes()),
        ("report.json".into(), render_json(&report).into_bytes()),
    ];
    for kind in PlotKind::ALL {
        files.push((
            format!("{}.svg", kind.file_stem()),
            plot_svg(&report, kind)?.into_bytes(),
        ));
        files.push((format!("{}.png", kind.file_stem()), plot_png(&report, kind)?));
    }
    let title = format!("{}: training curves ({})", report.title, report.dataset);
    files.extend(curves::curve_files(&report.curves, &title)?);
    let mut paths = Vec::with_capacity(files.len());
    for (name, bytes) in files {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|source| ReportError::Io {
            path: path.clone(),
            source,
        })?;
        paths.push(path);
    }
    Ok(ReportFiles { paths })
}

#[cfg(test)]
mod tests {
    use super::testdata::sample;
    use super::*;

    #[test]
    fn json_holds_data_and_derived_columns() {
        insta::assert_snapshot!(render_json(&sample().derive().unwrap()));
    }

    #[test]
    fn writes_all_files_identically_twice() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let written = write_report(&sample(), a.path()).unwrap();
        write_report(&sample(), b.path()).unwrap();
        let names: Vec<String> = written
            .paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "report.md",
                "report.csv",
                "report.json",
                "params_vs_accuracy.svg",
                "params_vs_accuracy.png",
                "size_vs_accuracy.svg",
                "size_vs_accuracy.png"
            ]
        );
        for name in &names {
            let first = std::fs::read(a.path().join(name)).unwrap();
            assert!(!first.is_empty(), "{name} is empty");
            assert_eq!(
                first,
                std::fs::read(b.path().join(name)).unwrap(),
                "{name} differs between runs"
            );
        }
        if let Ok(dir) = std::env::var("RKD_REPORT_EXAMPLE_DIR") {
            write_report(&sample(), Path::new(&dir)).unwrap();
        }
    }

    #[test]
    fn empty_rows_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = sample();
        data.rows.clear();
        let err = write_report(&data, &dir.path().join("out")).unwrap_err();
        assert!(matches!(err, ReportError::NoRows), "{err}");
        assert!(!dir.path().join("out").exists());
    }

    #[test]
    fn load_reads_a_written_report() {
        let dir = tempfile::tempdir().unwrap();
        write_report(&sample(), dir.path()).unwrap();
        let report = Report::load(&dir.path().join("report.json")).unwrap();
        assert_eq!(report, sample().derive().unwrap());
        assert!(render_text(&report).contains("mini[t=2.0,a=0.5]"));
    }
}

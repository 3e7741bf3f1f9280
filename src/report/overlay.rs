//! Two runs' reports in one pair of plots (`rkd compare A B --plot DIR`): B's models as B's
//! report draws them, A's beside them as one more legend entry, so a change that moved a model
//! shows as two markers of it.

use std::path::{Path, PathBuf};

use super::error::ReportError;
use super::{plot_png, plot_svg, PlotKind, Report};

/// The legend entry (strategy) of A's models in an overlay.
pub const RUN_A: &str = "run A";

/// B with A's rows added, named `NAME (A)` under the strategy [`RUN_A`]. Refused when the two
/// measure models by different figures (accuracy against a regression's Pearson r).
pub fn overlay(a: &Report, b: &Report) -> Result<Report, ReportError> {
    if a.quality_name != b.quality_name || a.score_name != b.score_name {
        return Err(ReportError::Parse(format!(
            "the two reports measure different things (A: {} {}, B: {} {}), so one plot cannot show both",
            a.quality_name,
            a.score_name.as_deref().unwrap_or(""),
            b.quality_name,
            b.score_name.as_deref().unwrap_or("")
        )));
    }
    let mut both = b.clone();
    both.title = format!("{} (B) against run A", b.title);
    for entry in &a.rows {
        let mut e = entry.clone();
        e.row.name = format!("{} (A)", e.row.name);
        e.row.strategy = RUN_A.to_string();
        e.row.key = None;
        both.rows.push(e);
    }
    // Seeds are summarised per run; the overlay draws the points.
    both.seed_groups.clear();
    Ok(both)
}

/// Writes both plots of the overlay into `dir` (created) as SVG and PNG; returns the files.
pub fn write_overlay(a: &Report, b: &Report, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let both = overlay(a, b)?;
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.into(),
        source,
    })?;
    let mut written = Vec::new();
    for kind in PlotKind::ALL {
        for (ext, bytes) in [
            ("svg", plot_svg(&both, kind)?.into_bytes()),
            ("png", plot_png(&both, kind)?),
        ] {
            let path = dir.join(format!("{}.{ext}", kind.file_stem()));
            std::fs::write(&path, bytes).map_err(|source| ReportError::Io {
                path: path.clone(),
                source,
            })?;
            written.push(path);
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::super::testdata::sample;
    use super::*;

    #[test]
    fn a_models_are_drawn_beside_b_under_their_own_legend_entry() {
        let b = sample().derive().unwrap();
        let mut data = sample();
        data.rows[1].quality = 0.7;
        let a = data.derive().unwrap();
        let both = overlay(&a, &b).unwrap();
        assert_eq!(both.rows.len(), 2 * b.rows.len());
        assert_eq!(
            both.rows[b.rows.len() + 1].row.name,
            format!("{} (A)", a.rows[1].row.name)
        );
        let svg = plot_svg(&both, PlotKind::ParamsVsAccuracy).unwrap();
        assert!(
            svg.contains("run A") && svg.contains("(B) against run A"),
            "legend and caption"
        );
        let mut regression = sample();
        regression.quality_name = "pearson".into();
        assert!(overlay(&regression.derive().unwrap(), &b).is_err());
    }
}

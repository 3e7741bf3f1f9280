//! The font that PNG text is drawn with: DejaVu Sans compiled into the binary, never a system font.

use super::error::ReportError;
use plotters::style::{register_font, FontStyle};
use std::sync::OnceLock;

/// The family every plot asks for; SVG files name it and leave the choice of font to the viewer.
pub const FAMILY: &str = "sans-serif";

/// Registers DejaVu Sans (regular and bold) as [`FAMILY`] with plotters, once per process.
pub fn ensure_registered() -> Result<(), ReportError> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            for (style, bytes) in [
                (FontStyle::Normal, dejavu::sans::regular()),
                (FontStyle::Bold, dejavu::sans::bold()),
            ] {
                register_font(FAMILY, style, bytes)
                    .map_err(|_| "the embedded DejaVu Sans font did not load".to_string())?;
            }
            Ok(())
        })
        .clone()
        .map_err(ReportError::Plot)
}

//! The canvas every plot is drawn on: its size, and a drawing rendered as SVG or as PNG.

use super::error::ReportError;
use super::font;
use image::ImageEncoder;
use plotters::coord::Shift;
use plotters::prelude::*;

/// Width and height of every plot, in pixels (SVG user units too).
pub const PLOT_SIZE: (u32, u32) = (1200, 750);

/// A plotting or encoding failure as a report error.
pub fn plot_err(e: impl std::fmt::Display) -> ReportError {
    ReportError::Plot(e.to_string())
}

/// `draw` on an SVG document of [`PLOT_SIZE`] (text as `<text>` elements in the `sans-serif` family).
pub fn render_svg(
    draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<(), ReportError>,
) -> Result<String, ReportError> {
    font::ensure_registered()?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, PLOT_SIZE).into_drawing_area();
        draw(&root)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// `draw` on an RGB bitmap of [`PLOT_SIZE`], encoded as PNG; text drawn with the embedded font.
pub fn render_png(
    draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<(), ReportError>,
) -> Result<Vec<u8>, ReportError> {
    font::ensure_registered()?;
    let (w, h) = PLOT_SIZE;
    let mut pixels = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, PLOT_SIZE).into_drawing_area();
        draw(&root)?;
        root.present().map_err(plot_err)?;
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&pixels, w, h, image::ExtendedColorType::Rgb8)
        .map_err(plot_err)?;
    Ok(png)
}

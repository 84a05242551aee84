//! The dashboard's charts: line charts drawn as SVG on the server with plotters
//! (no script, no hand-written SVG). Axes and text are drawn black and the
//! stylesheet turns them into the page's text colour (`.chart`), so a chart reads
//! in light and dark colour schemes; the series colours are mid-tones that stand
//! out on both. Every chart has its numbers in a table beside it.

use plotters::prelude::*;

/// One line: its legend label, its values (one per x label) and its colour.
pub struct Series<'a> {
    /// The legend's label.
    pub label: &'a str,
    /// One value per x label.
    pub values: Vec<i64>,
    /// The line's colour.
    pub color: RGBColor,
}

/// Colours that read on white and on near-black.
pub const BLUE: RGBColor = RGBColor(59, 130, 246);
/// See [`BLUE`].
pub const AMBER: RGBColor = RGBColor(217, 119, 6);
/// See [`BLUE`].
pub const GREEN: RGBColor = RGBColor(16, 163, 110);
/// See [`BLUE`].
pub const RED: RGBColor = RGBColor(220, 38, 38);

/// A line chart of `series` over `labels`, as an SVG document; an empty string
/// when drawing fails (the table still has the numbers).
pub fn line_chart(labels: &[String], series: &[Series<'_>]) -> String {
    let mut svg = String::new();
    if let Err(e) = draw(&mut svg, labels, series) {
        tracing::warn!(error = %e, "drawing a chart failed");
        return String::new();
    }
    svg
}

fn draw<'s>(
    svg: &'s mut String,
    labels: &[String],
    series: &[Series<'_>],
) -> Result<(), Box<dyn std::error::Error + 's>> {
    let root = SVGBackend::with_string(svg, (720, 260)).into_drawing_area();
    let top = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let last = i32::try_from(labels.len().saturating_sub(1))
        .unwrap_or(0)
        .max(1);
    let mut chart = ChartBuilder::on(&root)
        .margin(10)
        .x_label_area_size(28)
        .y_label_area_size(44)
        .build_cartesian_2d(0..last, 0..top + top / 10 + 1)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(8)
        .y_labels(5)
        .x_label_formatter(&|i| {
            usize::try_from(*i)
                .ok()
                .and_then(|i| labels.get(i))
                .cloned()
                .unwrap_or_default()
        })
        .draw()?;
    for s in series {
        let points = s
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| (i32::try_from(i).unwrap_or(0), *v));
        let color = s.color;
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(s.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

//! The cutover plot: delivered lines per second per colour over time, one panel per
//! contender, flips marked. A small PNG; text is drawn with DejaVu Sans read at run time
//! (Debian's fonts-dejavu-core), so no fontconfig and no font in the repository.

use std::path::Path;

use anyhow::{anyhow, Context as _, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use serde_json::Value;

const FONT_FILE: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT: &str = "sans-serif";
const GREEN_LINE: RGBColor = RGBColor(0, 150, 60);
const BLUE_LINE: RGBColor = RGBColor(30, 90, 220);

pub struct Panel {
    pub title: String,
    pub bucket_s: f64,
    pub blue: Vec<f64>,
    pub green: Vec<f64>,
    pub flips_s: Vec<f64>,
}

impl Panel {
    /// From one contender's row of the cutover results.
    pub fn from_cutover(row: &Value) -> Result<Panel> {
        let s = &row["series"];
        let nums = |k: &str| -> Result<Vec<f64>> {
            s[k].as_array()
                .with_context(|| format!("cutover series has no {k}"))?
                .iter()
                .map(|x| x.as_f64().with_context(|| format!("bad number in {k}")))
                .collect()
        };
        Ok(Panel {
            title: format!(
                "{}: {}",
                row["label"].as_str().unwrap_or("?"),
                row["flip_method"].as_str().unwrap_or("?")
            ),
            bucket_s: s["bucket_ms"].as_f64().context("no bucket_ms")? / 1000.0,
            blue: nums("blue_lines_per_s")?,
            green: nums("green_lines_per_s")?,
            flips_s: nums("flips_s")?,
        })
    }
}

fn load_font() -> Result<()> {
    let bytes = std::fs::read(FONT_FILE).with_context(|| {
        format!("reading {FONT_FILE} for the plot's text (Debian package fonts-dejavu-core)")
    })?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font(FONT, FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{FONT_FILE} is no usable font"))
}

/// A part of a PNG being drawn.
type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// A white 900-pixel-wide picture at `path` split into `panels` stacked areas of `height`
/// pixels each (the font loaded for their text).
fn stacked(path: &Path, panels: usize, height: u32) -> Result<(Area<'_>, Vec<Area<'_>>)> {
    load_font()?;
    let root = BitMapBackend::new(path, (900, height * panels.max(1) as u32)).into_drawing_area();
    root.fill(&WHITE)
        .map_err(|e| anyhow!("drawing {}: {e:?}", path.display()))?;
    let areas = root.split_evenly((panels.max(1), 1));
    Ok((root, areas))
}

/// Draws `panels` stacked into `path`.
pub fn cutover(path: &Path, panels: &[Panel]) -> Result<()> {
    let e = |e| anyhow!("drawing {}: {e:?}", path.display());
    let (root, areas) = stacked(path, panels.len(), 230)?;
    for (area, p) in areas.iter().zip(panels) {
        let n = p.blue.len().max(p.green.len());
        let x_max = (n as f64 * p.bucket_s).max(1.0);
        let y_max = p
            .blue
            .iter()
            .chain(&p.green)
            .fold(0.0f64, |m, &v| m.max(v))
            .max(1.0)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(&p.title, (FONT, 15))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(e)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("seconds")
            .y_desc("lines/s delivered")
            .label_style((FONT, 12))
            .x_label_formatter(&|v| format!("{v:.1}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(e)?;
        for &f in &p.flips_s {
            chart
                .draw_series(LineSeries::new(
                    [(f, 0.0), (f, y_max)],
                    RGBColor(190, 190, 190),
                ))
                .map_err(e)?;
        }
        for (data, color, name) in [
            (&p.blue, BLUE_LINE, "blue"),
            (&p.green, GREEN_LINE, "green"),
        ] {
            // Each point at the middle of its bucket.
            let pts = data
                .iter()
                .enumerate()
                .map(|(i, &v)| ((i as f64 + 0.5) * p.bucket_s, v));
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(e)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        legend(&mut chart, path)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

/// The series' labels in a box in the upper right corner.
fn legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>,
    path: &Path,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT, 12))
        .draw()
        .map_err(|e| anyhow!("drawing {}: {e:?}", path.display()))
}

/// One bar: a median with its range over rounds.
pub struct Bar {
    pub label: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// A panel of bars sharing one axis.
pub struct BarPanel {
    pub title: String,
    pub y_desc: String,
    pub bars: Vec<Bar>,
    /// A horizontal reference line (e.g. the floor) and its label.
    pub reference: Option<(f64, String)>,
}

/// Bars with min–max whiskers, panels stacked, into `path`.
pub fn bars(path: &Path, panels: &[BarPanel]) -> Result<()> {
    let e = |e| anyhow!("drawing {}: {e:?}", path.display());
    let (root, areas) = stacked(path, panels.len(), 300)?;
    for (area, p) in areas.iter().zip(panels) {
        let n = p.bars.len();
        let top = p
            .bars
            .iter()
            .map(|b| b.max.max(b.median))
            .chain(p.reference.as_ref().map(|r| r.0))
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.2;
        let bottom = p
            .bars
            .iter()
            .map(|b| b.min.min(b.median))
            .fold(0.0f64, f64::min)
            * 1.2;
        let mut chart = ChartBuilder::on(area)
            .caption(&p.title, (FONT, 15))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(60)
            .build_cartesian_2d((0..n).into_segmented(), bottom..top)
            .map_err(e)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => {
                    p.bars.get(*i).map_or(String::new(), |b| b.label.clone())
                }
                _ => String::new(),
            })
            .y_desc(p.y_desc.as_str())
            .label_style((FONT, 12))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(e)?;
        for (i, b) in p.bars.iter().enumerate() {
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), b.median),
                ],
                BLUE_LINE.mix(0.5).filled(),
            );
            bar.set_margin(0, 0, 25, 25);
            chart.draw_series([bar]).map_err(e)?;
            chart
                .draw_series([ErrorBar::new_vertical(
                    SegmentValue::CenterOf(i),
                    b.min,
                    b.median,
                    b.max,
                    BLACK.stroke_width(1),
                    8,
                )])
                .map_err(e)?;
            chart
                .draw_series([Text::new(
                    format!("{:.0} ({:.0}–{:.0})", b.median, b.min, b.max),
                    (SegmentValue::Exact(i), b.max.max(b.median) + top * 0.08),
                    (FONT, 12),
                )])
                .map_err(e)?;
        }
        if let Some((y, label)) = &p.reference {
            chart
                .draw_series(LineSeries::new(
                    [(SegmentValue::Exact(0), *y), (SegmentValue::Last, *y)],
                    GREEN_LINE.stroke_width(2),
                ))
                .map_err(e)?
                .label(label.as_str())
                .legend(|(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], GREEN_LINE.stroke_width(2))
                });
            legend(&mut chart, path)?;
        }
    }
    root.present().map_err(e)?;
    Ok(())
}

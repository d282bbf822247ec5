//! PNG plots of a comparison (as `fedpurel demo` writes them):
//!
//! * [`per_class_png`] — each class's accuracy against its long-tailed training count
//!   (log x), one colour per model, dots per class and a moving-average trend line; dashed
//!   lines mark the Few (≤ 20) / Medium / Many (> 100) thresholds.
//! * [`rounds_png`] — four panels per round: GM and PM accuracy (All), GM and PM
//!   balancedness (mean of the worst 10 % of classes); one line per algorithm, a model
//!   that does not train (zero-shot) as a dashed level; [`line_panels_png`] draws any
//!   such per-round panels (the gradient angles).
//! * [`scatter_png`] — point clouds side by side (TKL and KL against balancedness).
//! * [`image_grid_png`] — rows of labelled example images (the world's two domains).
//!
//! Text is drawn with the bundled DejaVu Sans subset (`assets/fonts/`, plotters'
//! `ab_glyph` backend), so plots look the same on every machine, with or without system
//! fonts. Each function returns PNG bytes; the caller writes them atomically.

use std::sync::OnceLock;

use anyhow::{anyhow, bail, Result};
use image::RgbImage;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

/// DejaVu Sans reduced to ASCII and a few symbols (see `assets/fonts/LICENSE.md`).
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-ascii.ttf");
/// The family name the bundled font is registered under.
pub(crate) const FAMILY: &str = "sans-serif";

/// Registers the bundled font with plotters (once per process).
pub(crate) fn font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok =
        *REGISTERED.get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if !ok {
        bail!("the bundled plot font (assets/fonts/DejaVuSans-ascii.ttf) does not parse");
    }
    Ok(())
}

/// The plot colour of an algorithm: fixed for the demo's four, a palette colour else.
pub fn colour_of(algorithm: &str, index: usize) -> RGBColor {
    match algorithm {
        "zeroshot" => RGBColor(110, 110, 110),
        "promptfl" => RGBColor(31, 119, 180),
        "promptfolio" => RGBColor(255, 127, 14),
        "fedpurel" => RGBColor(214, 39, 40),
        _ => {
            const MORE: [RGBColor; 6] = [
                RGBColor(44, 160, 44),
                RGBColor(148, 103, 189),
                RGBColor(140, 86, 75),
                RGBColor(227, 119, 194),
                RGBColor(188, 189, 34),
                RGBColor(23, 190, 207),
            ];
            MORE[index % MORE.len()]
        }
    }
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plot drawing failed: {e:?}")
}

fn png(buf: Vec<u8>, w: u32, h: u32) -> Result<Vec<u8>> {
    let img = RgbImage::from_raw(w, h, buf).ok_or_else(|| anyhow!("plot buffer size"))?;
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)?;
    Ok(out)
}

/// One model's per-class accuracies (%, None where a class has no test sample).
pub struct ClassSeries {
    /// Legend label.
    pub label: String,
    /// Line and dot colour.
    pub colour: RGBColor,
    /// Accuracy per class, in label order.
    pub accuracy: Vec<Option<f64>>,
}

/// Moving average of `ys` over a centred window of `w` points (shorter at the ends).
fn moving_average(ys: &[f64], w: usize) -> Vec<f64> {
    let h = w / 2;
    (0..ys.len())
        .map(|i| {
            let (a, b) = (i.saturating_sub(h), (i + h + 1).min(ys.len()));
            ys[a..b].iter().sum::<f64>() / (b - a) as f64
        })
        .collect()
}

/// Per-class accuracy against the training count of the class (`counts`, label order).
pub fn per_class_png(counts: &[usize], series: &[ClassSeries], title: &str) -> Result<Vec<u8>> {
    font()?;
    if counts.is_empty() || series.iter().any(|s| s.accuracy.len() != counts.len()) {
        bail!(
            "per-class plot: {} class counts but series of lengths {:?}",
            counts.len(),
            series.iter().map(|s| s.accuracy.len()).collect::<Vec<_>>()
        );
    }
    let (w, h) = (1000u32, 620u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let max = *counts.iter().max().unwrap_or(&1) as f64;
        let min = (*counts.iter().min().unwrap_or(&1)).max(1) as f64;
        let x_range = ((min * 0.7).min(max * 0.5)..max * 1.25).log_scale();
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FAMILY, 22))
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(56)
            .build_cartesian_2d(x_range, 0f64..100f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("training images of the class (log scale)")
            .y_desc("test accuracy of the class (%)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 16))
            .draw()
            .map_err(err)?;
        for (edge, left, right) in [(20.5, "Few", "Medium"), (100.5, "", "Many")] {
            if edge > min * 0.7 && edge < max * 1.25 {
                chart
                    .draw_series(std::iter::once(DashedPathElement::new(
                        vec![(edge, 0.0), (edge, 100.0)],
                        6,
                        4,
                        RGBColor(150, 150, 150).stroke_width(1),
                    )))
                    .map_err(err)?;
                let style = (FAMILY, 14).into_font().color(&RGBColor(90, 90, 90));
                if !left.is_empty() {
                    chart
                        .draw_series(std::iter::once(Text::new(
                            left,
                            (edge * 0.62, 98.0),
                            style.clone(),
                        )))
                        .map_err(err)?;
                }
                chart
                    .draw_series(std::iter::once(Text::new(right, (edge * 1.08, 98.0), style)))
                    .map_err(err)?;
            }
        }
        for s in series {
            let colour = s.colour;
            let pts: Vec<(f64, f64)> = counts
                .iter()
                .zip(&s.accuracy)
                .filter_map(|(&n, a)| a.map(|a| (n.max(1) as f64, a)))
                .collect();
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, colour.mix(0.55).filled())))
                .map_err(err)?
                .label(s.label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3)));
            let mut sorted = pts.clone();
            sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
            let trend = moving_average(&sorted.iter().map(|p| p.1).collect::<Vec<_>>(), 9);
            chart
                .draw_series(std::iter::once(PathElement::new(
                    sorted
                        .iter()
                        .zip(trend)
                        .map(|(p, t)| (p.0, t))
                        .collect::<Vec<_>>(),
                    colour.stroke_width(3),
                )))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .label_font((FAMILY, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    png(buf, w, h)
}

/// One algorithm's metrics per round (all four of the same length, one per round).
pub struct RoundSeries {
    /// Legend label.
    pub label: String,
    /// Line colour.
    pub colour: RGBColor,
    /// GM accuracy (All, %).
    pub gm_all: Vec<f64>,
    /// PM accuracy (All, %).
    pub pm_all: Vec<f64>,
    /// GM balancedness (mean of the worst 10 % of classes, %).
    pub gm_balancedness: Vec<f64>,
    /// PM balancedness (the same, per-class accuracy pooled over clients, %).
    pub pm_balancedness: Vec<f64>,
    /// Draw as a dashed level over all rounds (a model that does not train).
    pub level: bool,
}

/// GM/PM accuracy and balancedness per round, four panels.
pub fn rounds_png(series: &[RoundSeries], title: &str) -> Result<Vec<u8>> {
    type Pick = fn(&RoundSeries) -> &[f64];
    let metrics: [(&str, Pick); 4] = [
        ("GM accuracy, All (%)", |s| &s.gm_all),
        ("PM accuracy, All (%)", |s| &s.pm_all),
        ("GM balancedness: mean of the worst 10 % of classes (%)", |s| {
            &s.gm_balancedness
        }),
        ("PM balancedness: mean of the worst 10 % of classes (%)", |s| {
            &s.pm_balancedness
        }),
    ];
    let panels: Vec<LinePanel> = metrics
        .iter()
        .map(|(name, pick)| LinePanel {
            title: name.to_string(),
            bounds: (0.0, 100.0),
            lines: series
                .iter()
                .map(|s| Line {
                    label: s.label.clone(),
                    colour: s.colour,
                    ys: pick(s).to_vec(),
                    level: s.level,
                })
                .collect(),
        })
        .collect();
    line_panels_png(&panels, (2, 2), title)
}

/// One line of a [`LinePanel`]: a value per round.
#[derive(Debug, Clone)]
pub struct Line {
    /// Legend label.
    pub label: String,
    /// Colour.
    pub colour: RGBColor,
    /// Value per round.
    pub ys: Vec<f64>,
    /// Draw the mean as a dashed level over all rounds (a model that does not train).
    pub level: bool,
}

/// A panel of per-round lines.
#[derive(Debug, Clone)]
pub struct LinePanel {
    /// Caption.
    pub title: String,
    /// The y axis never extends beyond these bounds (e.g. 0–100 for percentages).
    pub bounds: (f64, f64),
    /// The lines.
    pub lines: Vec<Line>,
}

/// Panels of per-round lines on a `grid` (rows, columns), x = round.
pub fn line_panels_png(panels: &[LinePanel], grid: (usize, usize), title: &str) -> Result<Vec<u8>> {
    font()?;
    let rounds = panels
        .iter()
        .flat_map(|p| p.lines.iter().filter(|l| !l.level).map(|l| l.ys.len()))
        .max()
        .unwrap_or(1)
        .max(2);
    let (w, h) = (600 * grid.1 as u32, 430 * grid.0 as u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(title, (FAMILY, 22)).map_err(err)?;
        let areas = root.split_evenly(grid);
        for (area, panel) in areas.iter().zip(panels) {
            let values: Vec<f64> = panel
                .lines
                .iter()
                .flat_map(|l| l.ys.iter().copied())
                .filter(|v| v.is_finite())
                .collect();
            let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let (lo, hi) = if lo.is_finite() && hi.is_finite() {
                let pad = ((hi - lo) * 0.1).max(1.0);
                ((lo - pad).max(panel.bounds.0), (hi + pad).min(panel.bounds.1))
            } else {
                panel.bounds
            };
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, (FAMILY, 16))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(48)
                .build_cartesian_2d(0f64..(rounds - 1) as f64, lo..hi.max(lo + 1.0))
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc("round")
                .x_labels(rounds.min(11))
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| format!("{y:.1}"))
                .label_style((FAMILY, 13))
                .axis_desc_style((FAMILY, 14))
                .draw()
                .map_err(err)?;
            for l in &panel.lines {
                let colour = l.colour;
                let finite: Vec<(f64, f64)> =
                    l.ys.iter()
                        .enumerate()
                        .filter(|(_, y)| y.is_finite())
                        .map(|(t, &y)| (t as f64, y))
                        .collect();
                if finite.is_empty() {
                    continue;
                }
                let drawn = if l.level {
                    let y = finite.iter().map(|p| p.1).sum::<f64>() / finite.len() as f64;
                    chart
                        .draw_series(std::iter::once(DashedPathElement::new(
                            vec![(0.0, y), ((rounds - 1) as f64, y)],
                            8,
                            5,
                            colour.stroke_width(2),
                        )))
                        .map_err(err)?
                } else {
                    chart
                        .draw_series(std::iter::once(PathElement::new(finite, colour.stroke_width(2))))
                        .map_err(err)?
                };
                drawn.label(l.label.as_str()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3))
                });
            }
            chart
                .configure_series_labels()
                .label_font((FAMILY, 13))
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(180, 180, 180))
                .position(legend_corner(panel, (lo, hi)))
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    png(buf, w, h)
}

/// Where a panel's legend hides the least: the lower right when the lines end in the
/// upper half of the y range, the upper right otherwise.
fn legend_corner(panel: &LinePanel, (lo, hi): (f64, f64)) -> SeriesLabelPosition {
    let ends: Vec<f64> = panel
        .lines
        .iter()
        .filter(|l| !l.level)
        .filter_map(|l| l.ys.iter().rev().copied().find(|y| y.is_finite()))
        .collect();
    let mid = (lo + hi) / 2.0;
    if ends.is_empty() || ends.iter().sum::<f64>() / ends.len() as f64 >= mid {
        SeriesLabelPosition::LowerRight
    } else {
        SeriesLabelPosition::UpperRight
    }
}

/// One group of points of a [`ScatterPanel`].
#[derive(Debug, Clone)]
pub struct PointGroup {
    /// Legend label.
    pub label: String,
    /// Colour.
    pub colour: RGBColor,
    /// (x, y) points.
    pub points: Vec<(f64, f64)>,
}

/// A scatter panel.
#[derive(Debug, Clone)]
pub struct ScatterPanel {
    /// Caption.
    pub title: String,
    /// x axis description.
    pub x_desc: String,
    /// y axis description.
    pub y_desc: String,
    /// The groups of points.
    pub groups: Vec<PointGroup>,
}

/// Scatter panels side by side.
pub fn scatter_png(panels: &[ScatterPanel], title: &str) -> Result<Vec<u8>> {
    font()?;
    let (w, h) = (620 * panels.len().max(1) as u32, 520u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(title, (FAMILY, 20)).map_err(err)?;
        let areas = root.split_evenly((1, panels.len().max(1)));
        for (area, panel) in areas.iter().zip(panels) {
            let pts: Vec<(f64, f64)> = panel
                .groups
                .iter()
                .flat_map(|g| g.points.iter().copied())
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            let range = |v: &mut dyn Iterator<Item = f64>| {
                let (lo, hi) = v.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), x| {
                    (l.min(x), h.max(x))
                });
                if lo.is_finite() {
                    let pad = ((hi - lo) * 0.08).max(1e-6);
                    (lo - pad, hi + pad)
                } else {
                    (0.0, 1.0)
                }
            };
            let (x0, x1) = range(&mut pts.iter().map(|p| p.0));
            let (y0, y1) = range(&mut pts.iter().map(|p| p.1));
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, (FAMILY, 16))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(56)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc(panel.x_desc.as_str())
                .y_desc(panel.y_desc.as_str())
                .x_label_formatter(&|x| format!("{x:.3}"))
                .y_label_formatter(&|y| format!("{y:.1}"))
                .label_style((FAMILY, 13))
                .axis_desc_style((FAMILY, 14))
                .draw()
                .map_err(err)?;
            for g in &panel.groups {
                let colour = g.colour;
                chart
                    .draw_series(
                        g.points
                            .iter()
                            .filter(|(x, y)| x.is_finite() && y.is_finite())
                            .map(|&p| Circle::new(p, 3, colour.filled())),
                    )
                    .map_err(err)?
                    .label(g.label.as_str())
                    .legend(move |(x, y)| Circle::new((x + 10, y), 4, colour.filled()));
            }
            chart
                .configure_series_labels()
                .label_font((FAMILY, 13))
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(180, 180, 180))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    png(buf, w, h)
}

/// Rows of images, each row with a heading and each image with a caption below it;
/// images are scaled up by `scale` (nearest neighbour) and must share one size.
pub fn image_grid_png(rows: &[(String, Vec<(RgbImage, String)>)], scale: u32) -> Result<Vec<u8>> {
    font()?;
    let (iw, ih) = rows
        .iter()
        .flat_map(|r| r.1.first())
        .map(|(img, _)| img.dimensions())
        .next()
        .ok_or_else(|| anyhow!("image grid: no images"))?;
    let cols = rows.iter().map(|r| r.1.len()).max().unwrap_or(1) as u32;
    let (cell_w, cell_h) = (iw * scale + 16, ih * scale + 36);
    let heading = 30u32;
    let (w, h) = (cols * cell_w + 16, rows.len() as u32 * (cell_h + heading) + 8);
    let mut canvas = RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    for (r, (_, items)) in rows.iter().enumerate() {
        let y0 = r as u32 * (cell_h + heading) + heading;
        for (c, (img, _)) in items.iter().enumerate() {
            if img.dimensions() != (iw, ih) {
                bail!("image grid: images of different sizes");
            }
            let x0 = 8 + c as u32 * cell_w;
            for (x, y, p) in img.enumerate_pixels() {
                for dy in 0..scale {
                    for dx in 0..scale {
                        canvas.put_pixel(x0 + x * scale + dx, y0 + y * scale + dy, *p);
                    }
                }
            }
        }
    }
    let mut buf = canvas.into_raw();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        for (r, (title, items)) in rows.iter().enumerate() {
            let y0 = (r as u32 * (cell_h + heading)) as i32;
            root.draw(&Text::new(title.as_str(), (10, y0 + 6), (FAMILY, 18).into_font()))
                .map_err(err)?;
            for (c, (_, caption)) in items.iter().enumerate() {
                let x = 8 + (c as u32 * cell_w) as i32;
                let y = y0 + heading as i32 + (ih * scale) as i32 + 4;
                for (l, line) in caption.split('\n').enumerate() {
                    root.draw(&Text::new(line, (x, y + 14 * l as i32), (FAMILY, 12).into_font()))
                        .map_err(err)?;
                }
            }
        }
        root.present().map_err(err)?;
    }
    png(buf, w, h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(png: &[u8]) -> RgbImage {
        image::load_from_memory(png).unwrap().to_rgb8()
    }

    /// Pixels of exactly `c` in the image.
    fn count(img: &RgbImage, c: RGBColor) -> usize {
        img.pixels().filter(|p| p.0 == [c.0, c.1, c.2]).count()
    }

    #[test]
    fn per_class_plot_draws_every_series_and_text() {
        let counts = vec![500, 200, 80, 30, 10, 5];
        let red = colour_of("fedpurel", 0);
        let blue = colour_of("promptfl", 0);
        let series = vec![
            ClassSeries {
                label: "FedPuReL".into(),
                colour: red,
                accuracy: vec![Some(90.0), Some(80.0), Some(70.0), Some(60.0), Some(50.0), None],
            },
            ClassSeries {
                label: "PromptFL".into(),
                colour: blue,
                accuracy: vec![
                    Some(95.0),
                    Some(85.0),
                    Some(60.0),
                    Some(40.0),
                    Some(10.0),
                    Some(0.0),
                ],
            },
        ];
        let img = decode(&per_class_png(&counts, &series, "per-class accuracy").unwrap());
        assert_eq!(img.dimensions(), (1000, 620));
        assert!(count(&img, red) > 100 && count(&img, blue) > 100);
        // Text is rendered: anti-aliased glyph pixels are grey levels of black.
        let dark = img.pixels().filter(|p| p.0.iter().all(|&v| v < 60)).count();
        assert!(dark > 500, "{dark} dark pixels");
        let bad = per_class_png(&counts[..3], &series, "x").unwrap_err().to_string();
        assert!(bad.contains("3 class counts"), "{bad}");
    }

    #[test]
    fn rounds_plot_and_image_grid_render() {
        let s = |label: &str, level: bool, v: f64| RoundSeries {
            label: label.into(),
            colour: colour_of(label, 0),
            gm_all: vec![v, v + 1.0, v + 2.0],
            pm_all: vec![v; 3],
            gm_balancedness: vec![v / 2.0; 3],
            pm_balancedness: vec![v / 3.0; 3],
            level,
        };
        let series = [s("zeroshot", true, 40.0), s("fedpurel", false, 50.0)];
        let img = decode(&rounds_png(&series, "per round").unwrap());
        assert_eq!(img.dimensions(), (1200, 860));
        assert!(count(&img, colour_of("fedpurel", 0)) > 100);
        assert!(count(&img, colour_of("zeroshot", 0)) > 50);
        let cloud = |label: &str, dx: f64| PointGroup {
            label: label.into(),
            colour: colour_of(label, 0),
            points: (0..20).map(|i| (i as f64 * 0.01 + dx, 50.0 - i as f64)).collect(),
        };
        let panel = ScatterPanel {
            title: "TKL".into(),
            x_desc: "TKL".into(),
            y_desc: "balancedness (%)".into(),
            groups: vec![cloud("promptfl", 0.0), cloud("fedpurel", 0.05)],
        };
        let img = decode(&scatter_png(&[panel.clone(), panel], "scatter").unwrap());
        assert_eq!(img.dimensions(), (1240, 520));
        assert!(count(&img, colour_of("fedpurel", 0)) > 100 && count(&img, colour_of("promptfl", 0)) > 100);
        let tile = RgbImage::from_pixel(4, 4, image::Rgb([10, 200, 30]));
        let rows = vec![(
            "row".to_string(),
            vec![(tile.clone(), "a".to_string()), (tile, "b".to_string())],
        )];
        let grid = decode(&image_grid_png(&rows, 8).unwrap());
        assert_eq!(count(&grid, RGBColor(10, 200, 30)), 2 * 32 * 32);
        assert!(image_grid_png(&[], 8).is_err());
    }

    #[test]
    fn moving_average_is_centred_and_shrinks_at_the_ends() {
        assert_eq!(moving_average(&[0.0, 3.0, 6.0, 9.0], 3), vec![1.5, 3.0, 6.0, 7.5]);
    }
}

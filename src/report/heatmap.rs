//! Clients × classes heatmap of a partition's training data, as a PNG.
//!
//! Rows are clients (client 0 at the top); columns are classes sorted by their global
//! long-tailed training count, head on the left, with white lines and labels at the
//! Many / Medium / Few bounds (> 100, 21–100, ≤ 20 images). A cell's colour is the number
//! of that client's training images of that class on a log(1 + n) viridis scale, read off
//! the labelled colour bar on the right. Text uses the bundled font ([`super::plots`]).

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::plots::{font, FAMILY};

/// Viridis at 9 evenly spaced stops.
const VIRIDIS: [(u8, u8, u8); 9] = [
    (68, 1, 84),
    (71, 44, 122),
    (59, 81, 139),
    (44, 113, 142),
    (33, 144, 141),
    (39, 173, 129),
    (92, 200, 99),
    (170, 220, 50),
    (253, 231, 37),
];

/// Viridis colour of `t` in [0, 1].
fn viridis(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0) * (VIRIDIS.len() - 1) as f64;
    let i = (t.floor() as usize).min(VIRIDIS.len() - 2);
    let f = t - i as f64;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let mix = |x: u8, y: u8| (x as f64 + (y as f64 - x as f64) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// The frame around the cells: left (client labels), top (title, group names), bottom
/// (class axis), right (colour bar and its labels).
const LEFT: u32 = 70;
const TOP: u32 = 52;
const BOTTOM: u32 = 44;
const BAR_GAP: u32 = 14;
const BAR: u32 = 20;
const RIGHT: u32 = 110;

/// Class indices by decreasing `class_counts` (ties: lower index first): the columns.
pub fn column_order(class_counts: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..class_counts.len()).collect();
    order.sort_by(|&a, &b| class_counts[b].cmp(&class_counts[a]).then(a.cmp(&b)));
    order
}

/// Renders `counts[client][class]` to PNG bytes, titled `title`. Columns follow
/// [`column_order`] of `class_counts` (the global long-tailed training counts), and
/// `groups` = (Many, Medium, Few) class counts places the group bounds.
pub fn render_png(
    counts: &[Vec<usize>],
    class_counts: &[usize],
    groups: [usize; 3],
    title: &str,
) -> Result<Vec<u8>> {
    font()?;
    let k = counts.len().max(1) as u32;
    let c = class_counts.len().max(1) as u32;
    let order = column_order(class_counts);
    let cell_w = (1200 / c).clamp(1, 16);
    let cell_h = (600 / k).clamp(2, 24);
    let (grid_w, grid_h) = (c * cell_w, k * cell_h);
    let (w, h) = (LEFT + grid_w + BAR_GAP + BAR + RIGHT, TOP + grid_h + BOTTOM);
    let max = counts.iter().flatten().copied().max().unwrap_or(0);
    let norm = ((max as f64) + 1.0).ln().max(f64::MIN_POSITIVE);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let area = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let err = |e| anyhow!("heatmap drawing failed: {e:?}");
        let text = |size: u32| (FAMILY, size).into_font().color(&RGBColor(40, 40, 40));
        area.fill(&WHITE).map_err(err)?;
        let (x0, y0) = (LEFT as i32, TOP as i32);
        area.draw(&Text::new(title, (8, 6), text(16))).map_err(err)?;
        for (row, r) in counts.iter().enumerate() {
            for (col, &class) in order.iter().enumerate() {
                let n = r.get(class).copied().unwrap_or(0);
                let x = x0 + (col as u32 * cell_w) as i32;
                let y = y0 + (row as u32 * cell_h) as i32;
                let colour = viridis(((n as f64) + 1.0).ln() / norm);
                area.draw(&Rectangle::new(
                    [(x, y), (x + cell_w as i32, y + cell_h as i32)],
                    colour.filled(),
                ))
                .map_err(err)?;
            }
        }
        // Group bounds and names.
        let mut start = 0usize;
        for (size, name) in groups
            .iter()
            .zip(["Many (>100)", "Medium (21-100)", "Few (<=20)"])
        {
            let end = (start + size).min(c as usize);
            if end > start {
                let (xa, xb) = (
                    x0 + (start as u32 * cell_w) as i32,
                    x0 + (end as u32 * cell_w) as i32,
                );
                if start > 0 {
                    area.draw(&PathElement::new(
                        vec![(xa, y0 - 6), (xa, y0 + grid_h as i32)],
                        WHITE.stroke_width(2),
                    ))
                    .map_err(err)?;
                    area.draw(&PathElement::new(
                        vec![(xa, y0 - 18), (xa, y0)],
                        BLACK.stroke_width(1),
                    ))
                    .map_err(err)?;
                }
                if xb - xa >= 40 {
                    area.draw(&Text::new(name, (xa + 4, y0 - 18), text(12)))
                        .map_err(err)?;
                }
            }
            start = end;
        }
        // Client axis.
        area.draw(&Text::new("client", (6, y0 + grid_h as i32 / 2 - 6), text(13)))
            .map_err(err)?;
        let step = (k as usize).div_ceil(12).max(1);
        for row in (0..k as usize).step_by(step) {
            let y = y0 + (row as u32 * cell_h) as i32 + cell_h as i32 / 2 - 5;
            area.draw(&Text::new(row.to_string(), (LEFT as i32 - 22, y), text(11)))
                .map_err(err)?;
        }
        // Class axis.
        let axis = format!(
            "classes, by long-tailed training count ({} ... {} images)",
            class_counts.iter().max().unwrap_or(&0),
            class_counts.iter().min().unwrap_or(&0)
        );
        area.draw(&Text::new(axis, (x0, y0 + grid_h as i32 + 14), text(13)))
            .map_err(err)?;
        // Colour bar with its scale.
        let bx = x0 + (grid_w + BAR_GAP) as i32;
        let span = grid_h as i32;
        for y in 0..span {
            let t = 1.0 - y as f64 / (span - 1).max(1) as f64;
            area.draw(&Rectangle::new(
                [(bx, y0 + y), (bx + BAR as i32, y0 + y + 1)],
                viridis(t).filled(),
            ))
            .map_err(err)?;
        }
        let lx = bx + BAR as i32 + 6;
        for (value, y) in [(max, y0 - 2), (0, y0 + span - 12)] {
            area.draw(&Text::new(value.to_string(), (lx, y), text(12)))
                .map_err(err)?;
        }
        if max >= 9 {
            // The log scale's middle.
            let mid = ((max as f64 + 1.0).sqrt() - 1.0).round() as usize;
            let t = ((mid as f64) + 1.0).ln() / norm;
            let y = y0 + ((1.0 - t) * (span - 1) as f64) as i32 - 6;
            area.draw(&Text::new(mid.to_string(), (lx, y), text(12)))
                .map_err(err)?;
        }
        for (i, line) in ["images per", "client and", "class (log)"].iter().enumerate() {
            let y = y0 + span / 2 - 20 + 14 * i as i32;
            area.draw(&Text::new(*line, (lx + 22, y), text(11)))
                .map_err(err)?;
        }
        area.present().map_err(err)?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| anyhow!("heatmap buffer size"))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Columns are sorted by training count (class 2, the largest, comes first), cells
    /// take the scale's end colours, and the frame carries text.
    #[test]
    fn renders_sorted_columns_a_colour_scale_and_labels() {
        let counts = vec![vec![0, 5, 100], vec![3, 0, 0]];
        let class_counts = [3, 5, 100];
        assert_eq!(column_order(&class_counts), vec![2, 1, 0]);
        let png = render_png(&counts, &class_counts, [1, 0, 2], "a title").unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        let cell_w = (1200u32 / 3).clamp(1, 16);
        let at = |col: u32, row: u32| {
            img.get_pixel(LEFT + col * cell_w + cell_w / 2, TOP + row * 24 + 12)
                .0
        };
        // Row 0: class 2 (the maximum) first, class 0 (count 0) last.
        assert_eq!(at(0, 0), [253, 231, 37]);
        assert_eq!(at(2, 0), [68, 1, 84]);
        // Dark text pixels in the title line and left of the grid (client labels).
        let dark = |x0: u32, x1: u32, y0: u32, y1: u32| {
            (x0..x1)
                .flat_map(|x| (y0..y1).map(move |y| (x, y)))
                .any(|(x, y)| img.get_pixel(x, y).0[0] < 100)
        };
        assert!(dark(0, 120, 0, 24), "title");
        assert!(dark(0, LEFT, TOP, TOP + 48), "client axis");
        assert!(dark(LEFT, img.width(), TOP + 48, img.height()), "class axis");
    }
}

//! Clients × classes heatmap of a partition, as a PNG.
//!
//! Rows are clients (client 0 at the top), columns classes (class 0 at the left, i.e. the
//! head of the long tail); a cell's colour is log(1 + count) on a viridis scale (dark
//! purple = 0, yellow = the largest count). Thin white lines separate the Many, Medium
//! and Few class groups; a colour bar on the right runs from 0 (bottom) to the maximum
//! (top). There is no text: plotters' text needs system fonts or a bundled font file, and
//! the tool prints the legend instead.

use anyhow::{anyhow, Result};
use plotters::prelude::*;

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

/// Renders `counts[client][class]` to PNG bytes. `group_edges` are the class indices
/// where a new group starts (drawn as separators).
pub fn render_png(counts: &[Vec<usize>], group_edges: &[usize]) -> Result<Vec<u8>> {
    let k = counts.len().max(1) as u32;
    let c = counts.first().map_or(1, |r| r.len()).max(1) as u32;
    let cell_w = (1200 / c).clamp(1, 16);
    let cell_h = (600 / k).clamp(2, 24);
    let margin = 10u32;
    let bar = 24u32;
    let (w, h) = (2 * margin + c * cell_w + margin + bar, 2 * margin + k * cell_h);
    let max = counts.iter().flatten().copied().max().unwrap_or(0);
    let norm = ((max as f64) + 1.0).ln().max(f64::MIN_POSITIVE);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let area = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let err = |e| anyhow!("heatmap drawing failed: {e:?}");
        area.fill(&WHITE).map_err(err)?;
        let m = margin as i32;
        for (row, r) in counts.iter().enumerate() {
            for (col, &n) in r.iter().enumerate() {
                let x0 = m + (col as u32 * cell_w) as i32;
                let y0 = m + (row as u32 * cell_h) as i32;
                let colour = viridis(((n as f64) + 1.0).ln() / norm);
                area.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell_w as i32, y0 + cell_h as i32)],
                    colour.filled(),
                ))
                .map_err(err)?;
            }
        }
        for &e in group_edges {
            if e > 0 && (e as u32) < c {
                let x = m + (e as u32 * cell_w) as i32;
                area.draw(&PathElement::new(
                    vec![(x, m), (x, m + (k * cell_h) as i32)],
                    WHITE.stroke_width(1),
                ))
                .map_err(err)?;
            }
        }
        let bx = (2 * margin + c * cell_w) as i32;
        let span = (k * cell_h) as i32;
        for y in 0..span {
            let t = 1.0 - y as f64 / (span - 1).max(1) as f64;
            area.draw(&Rectangle::new(
                [(bx, m + y), (bx + bar as i32, m + y + 1)],
                viridis(t).filled(),
            ))
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

    #[test]
    fn renders_a_decodable_png() {
        let counts = vec![vec![0, 5, 100], vec![3, 0, 0]];
        let png = render_png(&counts, &[1, 2]).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        // Top-left cell (count 0) is viridis(0); cell (0, 2) holds the maximum: viridis(1).
        assert_eq!(img.get_pixel(12, 12).0, [68, 1, 84]);
        let cell_w = 1200 / 3;
        let cell_w = cell_w.clamp(1, 16);
        assert_eq!(img.get_pixel(10 + 2 * cell_w + 3, 12).0, [253, 231, 37]);
    }
}

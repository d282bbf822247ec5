//! Drawing one image of the world: an object of a class (shape, colour, texture) on a
//! background, with the nuisance factors of a [`Look`] — position, size, rotation,
//! texture phase and angle, colour jitter, lighting, clutter, pixel noise.
//!
//! Everything is drawn from the image's own random stream, so an image is a pure
//! function of its key (seed, domain, split, index) and images can be rendered in any
//! order or in parallel. Coverage of the object's edge is 2 × 2 supersampled.

use std::f64::consts::{PI, TAU};

use image::RgbImage;
use rand::Rng;
use rand_distr::{Distribution, Normal};

use super::classes::{Class, Shape, Texture};
use crate::rng::StreamRng;

/// Side length of every world image in pixels.
pub const IMAGE_SIZE: u32 = 32;

/// Period of stripes and spacing of dots, in pixels.
const PATTERN_PERIOD: f64 = 4.2;
/// Radius of a dot, in pixels.
const DOT_RADIUS: f64 = 1.15;
/// Brightness of stripes and dots relative to the object's colour.
const PATTERN_DARKNESS: f64 = 0.3;

/// What the background behind the object looks like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Background {
    /// A light grey, flat or a soft vertical gradient (a photo studio).
    Studio,
    /// A two-colour low-frequency pattern in soft random hues, about as light as the
    /// studio but patterned across the image (the outdoors); never seen in pretraining.
    Field,
}

/// The nuisance factors of a domain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Look {
    /// Range of the object's radius in pixels.
    pub radius: (f64, f64),
    /// Background kind.
    pub background: Background,
    /// Standard deviation of the per-channel object colour jitter (0–255 scale).
    pub colour_jitter: f64,
    /// Largest per-channel lighting change, as a fraction (colour cast of the scene).
    pub tint: f64,
    /// Largest number of distractor strokes drawn behind the object.
    pub clutter: usize,
    /// Standard deviation of the Gaussian pixel noise (0–255 scale).
    pub noise_std: f64,
}

/// Draws the image of `class` under `look` from the stream `r`.
pub fn draw(class: Class, look: &Look, r: &mut StreamRng) -> RgbImage {
    let s = IMAGE_SIZE as usize;
    let size = IMAGE_SIZE as f64;
    let mut px = vec![[0f64; 3]; s * s];
    background(look.background, r, &mut px);
    let strokes = if look.clutter > 0 {
        r.random_range(0..=look.clutter)
    } else {
        0
    };
    for _ in 0..strokes {
        stroke(r, &mut px);
    }
    // The object.
    let radius = r.random_range(look.radius.0..=look.radius.1);
    let margin = 0.8 * radius;
    let (cx, cy) = (
        r.random_range(margin..=size - margin),
        r.random_range(margin..=size - margin),
    );
    let rotation = r.random_range(0.0..TAU);
    let (pattern_angle, phase_u, phase_v) = (
        r.random_range(0.0..PI),
        r.random_range(0.0..1.0),
        r.random_range(0.0..1.0),
    );
    let base = class.colour.rgb();
    let jitter = Normal::new(0.0, look.colour_jitter.max(1e-9)).expect("finite std");
    let colour: [f64; 3] = std::array::from_fn(|ch| (base[ch] + jitter.sample(r)).clamp(0.0, 255.0));
    let shade = r.random_range(-0.08..0.08);
    let (sin_r, cos_r) = rotation.sin_cos();
    let (sin_p, cos_p) = pattern_angle.sin_cos();
    // Every outline lies within 1.1 radii of the centre.
    let reach = (1.2 * radius + 1.0).powi(2);
    for y in 0..s {
        for x in 0..s {
            if (x as f64 + 0.5 - cx).powi(2) + (y as f64 + 0.5 - cy).powi(2) > reach {
                continue;
            }
            let mut cover = 0.0;
            for (ox, oy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                let (dx, dy) = (x as f64 + ox - cx, y as f64 + oy - cy);
                let (u, v) = (
                    (cos_r * dx + sin_r * dy) / radius,
                    (-sin_r * dx + cos_r * dy) / radius,
                );
                if inside(class.shape, u, v) {
                    cover += 0.25;
                }
            }
            if cover == 0.0 {
                continue;
            }
            let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
            let (pu, pv) = (cos_p * dx + sin_p * dy, -sin_p * dx + cos_p * dy);
            let dark = match class.texture {
                Texture::Plain => false,
                Texture::Striped => (pu / PATTERN_PERIOD + phase_u).rem_euclid(1.0) < 0.5,
                Texture::Dotted => {
                    let fu = (pu / PATTERN_PERIOD + phase_u).rem_euclid(1.0) - 0.5;
                    let fv = (pv / PATTERN_PERIOD + phase_v).rem_euclid(1.0) - 0.5;
                    (fu * fu + fv * fv).sqrt() * PATTERN_PERIOD < DOT_RADIUS
                }
            };
            let light = 1.0 + shade * (dy / radius);
            let f = if dark { PATTERN_DARKNESS } else { 1.0 } * light;
            let p = &mut px[y * s + x];
            for ch in 0..3 {
                p[ch] = (1.0 - cover) * p[ch] + cover * colour[ch] * f;
            }
        }
    }
    // Lighting and sensor noise.
    let cast: [f64; 3] = std::array::from_fn(|_| {
        if look.tint > 0.0 {
            1.0 + r.random_range(-look.tint..=look.tint)
        } else {
            1.0
        }
    });
    let noise = Normal::new(0.0, look.noise_std.max(1e-9)).expect("finite std");
    let mut img = RgbImage::new(IMAGE_SIZE, IMAGE_SIZE);
    for (i, p) in px.iter().enumerate() {
        let rgb: [u8; 3] =
            std::array::from_fn(|ch| (p[ch] * cast[ch] + noise.sample(r)).round().clamp(0.0, 255.0) as u8);
        img.put_pixel((i % s) as u32, (i / s) as u32, image::Rgb(rgb));
    }
    img
}

/// Whether the point (u, v), in units of the object's radius around its centre, is
/// inside `shape`. The outlines have comparable areas (0.7–3.1 r²).
fn inside(shape: Shape, u: f64, v: f64) -> bool {
    match shape {
        Shape::Circle => u * u + v * v <= 0.85,
        Shape::Square => u.abs() <= 0.78 && v.abs() <= 0.78,
        Shape::Triangle => {
            // Equilateral, circumradius 1.1, inradius 0.55; outward edge normals at
            // 90°, 210° and 330°.
            [PI / 2.0, 7.0 * PI / 6.0, 11.0 * PI / 6.0]
                .iter()
                .all(|a| a.cos() * u + a.sin() * v <= 0.55)
        }
        Shape::Cross => {
            let (a, b) = (u.abs(), v.abs());
            (a <= 0.32 && b <= 0.95) || (b <= 0.32 && a <= 0.95)
        }
        Shape::Star => {
            let rho = (u * u + v * v).sqrt();
            let sector = TAU / 5.0;
            let k = (v.atan2(u) + PI / 2.0).rem_euclid(sector) / sector;
            let t = (2.0 * k - 1.0).abs();
            rho <= 0.45 + (1.1 - 0.45) * t
        }
    }
}

fn background(kind: Background, r: &mut StreamRng, px: &mut [[f64; 3]]) {
    let s = IMAGE_SIZE as usize;
    match kind {
        Background::Studio => {
            let top = r.random_range(150.0..240.0);
            let bottom = if r.random_bool(0.5) {
                top
            } else {
                r.random_range(150.0..240.0)
            };
            let warm = r.random_range(-6.0..6.0);
            for (i, p) in px.iter_mut().enumerate() {
                let t = (i / s) as f64 / (s - 1) as f64;
                let g = top * (1.0 - t) + bottom * t;
                *p = [g + warm, g, g - warm];
            }
        }
        Background::Field => {
            let muted = |r: &mut StreamRng| -> [f64; 3] {
                let level: f64 = r.random_range(140.0..230.0);
                std::array::from_fn(|_| (level + r.random_range(-20.0..20.0f64)).clamp(0.0, 255.0))
            };
            let (a, b) = (muted(r), muted(r));
            // Sum of three random plane waves, 0.5–2 periods across the image.
            let waves: Vec<(f64, f64, f64)> = (0..3)
                .map(|_| {
                    let angle = r.random_range(0.0..TAU);
                    let freq = r.random_range(0.5..2.0) * TAU / s as f64;
                    (freq * angle.cos(), freq * angle.sin(), r.random_range(0.0..TAU))
                })
                .collect();
            for (i, p) in px.iter_mut().enumerate() {
                let (x, y) = ((i % s) as f64, (i / s) as f64);
                let w: f64 = waves
                    .iter()
                    .map(|(fx, fy, ph)| (fx * x + fy * y + ph).sin())
                    .sum();
                let t = (0.5 + w / 6.0).clamp(0.0, 1.0);
                *p = std::array::from_fn(|ch| a[ch] * (1.0 - t) + b[ch] * t);
            }
        }
    }
}

/// A thin straight stroke in a random colour across part of the image (clutter).
fn stroke(r: &mut StreamRng, px: &mut [[f64; 3]]) {
    let s = IMAGE_SIZE as usize;
    let size = IMAGE_SIZE as f64;
    let (x0, y0) = (r.random_range(0.0..size), r.random_range(0.0..size));
    let angle = r.random_range(0.0..PI);
    let len = r.random_range(6.0..20.0);
    let (dx, dy) = (angle.cos(), angle.sin());
    let colour: [f64; 3] = std::array::from_fn(|_| r.random_range(20.0..235.0));
    for (i, p) in px.iter_mut().enumerate() {
        let (x, y) = ((i % s) as f64 + 0.5 - x0, (i / s) as f64 + 0.5 - y0);
        let along = x * dx + y * dy;
        let across = (-x * dy + y * dx).abs();
        if across < 0.6 && along.abs() < len / 2.0 {
            *p = colour;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean over 60 backgrounds of (mean level, mean spread of each row along x).
    fn stats(kind: Background) -> (f64, f64) {
        let s = IMAGE_SIZE as usize;
        let (mut level, mut spread) = (0.0, 0.0);
        for i in 0..60 {
            let mut r = crate::rng::substream(3, "background-test", &[i]);
            let mut px = vec![[0f64; 3]; s * s];
            background(kind, &mut r, &mut px);
            level += px.iter().flatten().sum::<f64>() / (3 * s * s) as f64;
            for row in px.chunks(s) {
                for ch in 0..3 {
                    let (lo, hi) = row
                        .iter()
                        .fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p[ch]), hi.max(p[ch])));
                    spread += (hi - lo) / (3 * s) as f64;
                }
            }
        }
        (level / 60.0, spread / 60.0)
    }

    #[test]
    fn the_field_is_as_light_as_the_studio_but_patterned() {
        let (studio_level, studio_spread) = stats(Background::Studio);
        let (field_level, field_spread) = stats(Background::Field);
        // Both light; the studio's rows are flat (a vertical gradient), the field's are not.
        assert!(
            studio_level > 150.0 && field_level > 140.0,
            "{studio_level} {field_level}"
        );
        assert!(studio_spread < 1e-9, "studio rows vary by {studio_spread}");
        assert!(field_spread > 10.0, "field rows vary by only {field_spread}");
    }
}

//! A seeded synthetic dataset for tests and the demo: coloured patterns plus noise.
//!
//! Class c has two colours and a pattern (stripes in one of four orientations,
//! checkerboard, rings or a blob; frequency 1–5 periods across the image), fixed by the
//! seed's `"synthetic-class"` stream for c; each image gets its own phase and offset,
//! a brightness jitter and Gaussian pixel noise from the `"synthetic-image"` stream (the
//! same recipe as the reference harness's `make_cifar_like.py`, not the same pixels).
//! Superclass of c is ⌊c / 5⌋, so the `labeldir100` split works on it too.
//! Everything is a pure function of the arguments.

use anyhow::{bail, Result};
use rand::Rng;
use rand_distr::{Distribution, Normal};

use super::dataset::{Dataset, Images, Split};
use crate::rng;

/// Shape of a synthetic dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyntheticSpec {
    /// Number of classes.
    pub classes: usize,
    /// Training images per class.
    pub train_per_class: usize,
    /// Test images per class.
    pub test_per_class: usize,
    /// Width and height in pixels.
    pub size: u32,
    /// Standard deviation of the pixel noise (0–255 scale).
    pub noise_std: f64,
    /// Seed.
    pub seed: u64,
}

impl Default for SyntheticSpec {
    /// CIFAR-100-shaped: 100 classes, 500 / 100 images per class, 32 × 32, noise 24.
    fn default() -> Self {
        SyntheticSpec {
            classes: 100,
            train_per_class: 500,
            test_per_class: 100,
            size: 32,
            noise_std: 24.0,
            seed: 0,
        }
    }
}

struct ClassLook {
    a: [f64; 3],
    b: [f64; 3],
    kind: usize,
    freq: f64,
}

fn look(seed: u64, c: usize) -> ClassLook {
    let mut r = rng::substream(seed, "synthetic-class", &[c as u64]);
    let mut col = || [0; 3].map(|_: i32| r.random_range(30.0..225.0));
    let (a, b) = (col(), col());
    ClassLook {
        a,
        b,
        kind: c % 7,
        freq: 1.0 + ((c / 7) % 5) as f64,
    }
}

fn render(look: &ClassLook, size: u32, noise: &Normal<f64>, r: &mut rng::StreamRng, out: &mut Vec<u8>) {
    let s = size as f64;
    let w = 2.0 * std::f64::consts::PI * look.freq / s;
    let phase = r.random_range(0.0..2.0 * std::f64::consts::PI);
    let (cy, cx) = (r.random_range(0.3 * s..0.7 * s), r.random_range(0.3 * s..0.7 * s));
    let jitter = r.random_range(-20.0..20.0);
    let plane = (size * size) as usize;
    let start = out.len();
    out.resize(start + 3 * plane, 0);
    for y in 0..size {
        for x in 0..size {
            let (xf, yf) = (x as f64, y as f64);
            let m = match look.kind {
                0 => (w * yf + phase).sin(),
                1 => (w * xf + phase).sin(),
                2 => (w * (xf + yf) / 2f64.sqrt() + phase).sin(),
                3 => (w * (xf - yf) / 2f64.sqrt() + phase).sin(),
                4 => (w * xf + phase).sin() * (w * yf + phase).sin(),
                5 => (w * ((xf - cx).powi(2) + (yf - cy).powi(2)).sqrt() + phase).sin(),
                _ => {
                    let rad = s * (4.0 + 2.0 * look.freq) / 32.0;
                    2.0 * (-((xf - cx).powi(2) + (yf - cy).powi(2)) / (2.0 * rad * rad)).exp() - 1.0
                }
            };
            let m = (m + 1.0) * 0.5;
            let p = (y * size + x) as usize;
            for ch in 0..3 {
                let v = look.a[ch] * (1.0 - m) + look.b[ch] * m + jitter + noise.sample(r);
                out[start + ch * plane + p] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// Generates the dataset described by `spec`.
pub fn generate(spec: &SyntheticSpec) -> Result<Dataset> {
    if spec.classes == 0 || spec.size == 0 || spec.train_per_class == 0 {
        bail!("synthetic dataset needs ≥ 1 class, ≥ 1 training image per class and size ≥ 1");
    }
    if !(spec.noise_std >= 0.0 && spec.noise_std.is_finite()) {
        bail!("synthetic noise must be a finite number ≥ 0");
    }
    let noise = Normal::new(0.0, spec.noise_std)?;
    let looks: Vec<ClassLook> = (0..spec.classes).map(|c| look(spec.seed, c)).collect();
    let make = |per: usize, which: u64| {
        let mut r = rng::substream(spec.seed, "synthetic-image", &[which]);
        let n = per * spec.classes;
        let mut data = Vec::with_capacity(n * 3 * (spec.size * spec.size) as usize);
        let labels: Vec<u32> = (0..n).map(|i| (i % spec.classes) as u32).collect();
        for &y in &labels {
            render(&looks[y as usize], spec.size, &noise, &mut r, &mut data);
        }
        Split {
            coarse: Some(labels.iter().map(|&y| y / 5).collect()),
            labels,
            images: Images::Planes {
                width: spec.size,
                height: spec.size,
                data,
            },
        }
    };
    let ds = Dataset {
        name: "synthetic".into(),
        classes: (0..spec.classes).map(|c| format!("pattern_{c}")).collect(),
        coarse_classes: Some(
            (0..spec.classes.div_ceil(5))
                .map(|g| format!("group_{g}"))
                .collect(),
        ),
        train: make(spec.train_per_class, 0),
        test: make(spec.test_per_class, 1),
    };
    ds.validate()?;
    Ok(ds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_class_structured() {
        let spec = SyntheticSpec {
            classes: 7,
            train_per_class: 3,
            test_per_class: 2,
            size: 16,
            noise_std: 5.0,
            seed: 3,
        };
        let a = generate(&spec).unwrap();
        let b = generate(&spec).unwrap();
        let (Images::Planes { data: da, .. }, Images::Planes { data: db, .. }) =
            (&a.train.images, &b.train.images)
        else {
            panic!()
        };
        assert_eq!(da, db);
        assert_eq!(a.train.len(), 21);
        assert_eq!(a.test.len(), 14);
        assert_eq!(a.fine_to_coarse().unwrap(), vec![0, 0, 0, 0, 0, 1, 1]);
        let c = generate(&SyntheticSpec { seed: 4, ..spec }).unwrap();
        let Images::Planes { data: dc, .. } = &c.train.images else {
            panic!()
        };
        assert_ne!(da, dc);
    }
}

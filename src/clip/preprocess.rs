//! CLIP's image preprocessing, bit-compatible with the Python pipeline
//! (`Resize(n, BICUBIC)` → `CenterCrop(n)` → RGB → `ToTensor` → `Normalize`):
//!
//! * the bicubic resize follows Pillow's `Resample.c`: filter a = −0.5 with support 2,
//!   widened by the scale factor when shrinking (antialiasing), coefficients normalized
//!   and rounded to 22-bit fixed point, a horizontal then a vertical pass, each rounding
//!   and clamping to 8 bits;
//! * the short side goes to n and the long side to ⌊n · long / short⌋ (torchvision);
//! * the crop offset is round((size − n)/2) with Python's round-half-to-even.
//!
//! Getting the filter wrong moves CLIP's accuracy by about half a point, so it is matched
//! exactly and tested against pixels produced by the reference pipeline.

use std::path::Path;

use anyhow::{anyhow, Result};
use image::RgbImage;

/// CLIP's per-channel mean.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel standard deviation (written as published; f32 rounds the last digit).
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Decodes an image file to 8-bit RGB.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let img = image::ImageReader::open(path)
        .map_err(|e| anyhow!("{}: cannot open image: {e}", path.display()))?
        .with_guessed_format()
        .map_err(|e| anyhow!("{}: cannot read image: {e}", path.display()))?
        .decode()
        .map_err(|e| anyhow!("{}: not a decodable image: {e}", path.display()))?;
    Ok(img.to_rgb8())
}

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point filter taps for resampling `in_size` samples to `out_size`: per output
/// sample the first input index and its integer weights.
struct Taps {
    start: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

fn taps(in_size: usize, out_size: usize) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = 2.0 * filter_scale;
    let mut start = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let w: Vec<f64> = (xmin..xmax)
            .map(|x| bicubic((x as f64 - center + 0.5) / filter_scale))
            .collect();
        let total: f64 = w.iter().sum();
        let fixed = w
            .iter()
            .map(|&v| {
                let v = if total != 0.0 { v / total } else { v };
                let s = v * (1u32 << PRECISION_BITS) as f64;
                (if s < 0.0 { s - 0.5 } else { s + 0.5 }) as i32
            })
            .collect();
        start.push(xmin);
        weights.push(fixed);
    }
    Taps { start, weights }
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow-exact bicubic resize of an RGB image.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w0, h0) = (img.width() as usize, img.height() as usize);
    let (w1, h1) = (width as usize, height as usize);
    if (w0, h0) == (w1, h1) || w1 == 0 || h1 == 0 || w0 == 0 || h0 == 0 {
        return if w1 == 0 || h1 == 0 {
            RgbImage::new(width, height)
        } else {
            img.clone()
        };
    }
    let src = img.as_raw();
    let half = 1i64 << (PRECISION_BITS - 1);
    // Horizontal pass (skipped when the width is unchanged, as Pillow does).
    let horizontal: Vec<u8> = if w1 != w0 {
        let t = taps(w0, w1);
        let mut out = vec![0u8; w1 * h0 * 3];
        for y in 0..h0 {
            let row = &src[y * w0 * 3..(y + 1) * w0 * 3];
            for x in 0..w1 {
                for c in 0..3 {
                    let mut acc = half;
                    for (i, &k) in t.weights[x].iter().enumerate() {
                        acc += row[(t.start[x] + i) * 3 + c] as i64 * k as i64;
                    }
                    out[(y * w1 + x) * 3 + c] = clip8(acc);
                }
            }
        }
        out
    } else {
        src.to_vec()
    };
    if h1 == h0 {
        return RgbImage::from_raw(width, height, horizontal).expect("sized buffer");
    }
    let t = taps(h0, h1);
    let mut out = vec![0u8; w1 * h1 * 3];
    for y in 0..h1 {
        for x in 0..w1 {
            for c in 0..3 {
                let mut acc = half;
                for (i, &k) in t.weights[y].iter().enumerate() {
                    acc += horizontal[((t.start[y] + i) * w1 + x) * 3 + c] as i64 * k as i64;
                }
                out[(y * w1 + x) * 3 + c] = clip8(acc);
            }
        }
    }
    RgbImage::from_raw(width, height, out).expect("sized buffer")
}

/// torchvision's `Resize(size)`: short side to `size`, long side ⌊size · long / short⌋.
pub fn resize_short_side(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let (short, long) = (w.min(h), w.max(h));
    if short == 0 {
        return img.clone();
    }
    let new_long = (size as u64 * long as u64 / short as u64) as u32;
    let (nw, nh) = if w <= h {
        (size, new_long)
    } else {
        (new_long, size)
    };
    resize_bicubic(img, nw, nh)
}

/// Python's `round` (half to even) of a non-negative half-integer or integer.
fn round_half_even(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 {
        (r - x.signum()) as i64
    } else {
        r as i64
    }
}

/// torchvision's `CenterCrop(size)`, zero-padding an image smaller than the crop.
pub fn center_crop(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let s = size as i64;
    let top = round_half_even((h - s) as f64 / 2.0);
    let left = round_half_even((w - s) as f64 / 2.0);
    let mut out = RgbImage::new(size, size);
    for y in 0..s {
        for x in 0..s {
            let (sy, sx) = (y + top, x + left);
            if (0..h).contains(&sy) && (0..w).contains(&sx) {
                out.put_pixel(x as u32, y as u32, *img.get_pixel(sx as u32, sy as u32));
            }
        }
    }
    out
}

/// `ToTensor` + `Normalize(mean, std)` as CHW f32, computed in f32 as torchvision does.
pub fn normalize_chw(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.as_raw();
    let mut out = vec![0f32; 3 * w * h];
    for c in 0..3 {
        for i in 0..w * h {
            out[c * w * h + i] = (raw[i * 3 + c] as f32 / 255.0 - mean[c]) / std[c];
        }
    }
    out
}

/// The whole CLIP transform at `resolution`: CHW f32 of length 3·res².
pub fn clip_preprocess(img: &RgbImage, resolution: u32) -> Vec<f32> {
    let resized = resize_short_side(img, resolution);
    normalize_chw(&center_crop(&resized, resolution), CLIP_MEAN, CLIP_STD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn fixtures() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    /// Every fixture image (224², 320×240, 200×300, 64² upscaled, 500×333) gives the
    /// reference pipeline's pixel values.
    #[test]
    fn matches_reference_pixels() {
        let meta: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join("zeroshot_expected.json")).unwrap(),
        )
        .unwrap();
        let t =
            candle_core::safetensors::load(fixtures().join("zeroshot_expected.safetensors"), &Device::Cpu)
                .unwrap();
        let expected = &t["pixel_values"];
        for (i, name) in meta["images"].as_array().unwrap().iter().enumerate() {
            let img = load_rgb(&fixtures().join("images").join(name.as_str().unwrap())).unwrap();
            let ours = clip_preprocess(&img, 224);
            let theirs: Vec<f32> = expected.get(i).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let diff = ours
                .iter()
                .zip(&theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            println!("{name}: max abs diff {diff:e}");
            assert!(diff < 1e-6, "{name}: max abs diff {diff:e}");
        }
    }

    #[test]
    fn crop_offsets_round_half_to_even() {
        assert_eq!(round_half_even(0.5), 0);
        assert_eq!(round_half_even(1.5), 2);
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(3.0), 3);
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let c = center_crop(&img, 2);
        // (5−2)/2 = 1.5 → 2 ; (4−2)/2 = 1
        assert_eq!(c.get_pixel(0, 0).0, [2, 1, 0]);
        let padded = center_crop(&img, 6);
        assert_eq!(padded.get_pixel(0, 0).0, [0, 0, 0]);
    }

    #[test]
    fn identity_and_constant_images() {
        let img = RgbImage::from_fn(7, 9, |x, y| image::Rgb([(x * 30) as u8, (y * 20) as u8, 77]));
        assert_eq!(resize_bicubic(&img, 7, 9), img);
        let flat = RgbImage::from_pixel(10, 13, image::Rgb([200, 100, 3]));
        for (w, h) in [(3, 4), (25, 31), (10, 5)] {
            let r = resize_bicubic(&flat, w, h);
            assert!(r.pixels().all(|p| p.0 == [200, 100, 3]), "{w}×{h}");
        }
    }

    #[test]
    fn unreadable_image_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("bad.png");
        std::fs::write(&p, b"not an image").unwrap();
        let e = format!("{:#}", load_rgb(&p).unwrap_err());
        assert!(e.contains("bad.png"), "{e}");
    }
}

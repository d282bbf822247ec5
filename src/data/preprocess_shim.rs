//! Stand-in for `crate::clip::preprocess` until that module lands on this branch.
//!
//! Same names and signatures as the lead's `src/clip/preprocess.rs` (`resize_bicubic`,
//! `resize_short_side`, `center_crop`, `normalize_chw`, `CLIP_MEAN`, `CLIP_STD`), so the
//! switch is a one-line `use` change in `transforms.rs` and the deletion of this file.
//! The bicubic resize here is the `image` crate's Catmull-Rom filter (a = −0.5, support
//! widened when downscaling, like PIL) computed in f32 — close to, **not bit-identical
//! with**, PIL's fixed-point bicubic. CLIP-pipeline numbers computed through this shim
//! are therefore not yet parity-grade; the CIFAR pipeline does not use it.

use image::imageops::{self, FilterType};
use image::RgbImage;

/// CLIP's normalization mean (RGB).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's normalization standard deviation (RGB), digits as OpenAI publishes them.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Bicubic resize to exactly `width` × `height`.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    if img.dimensions() == (width, height) {
        return img.clone();
    }
    imageops::resize(img, width, height, FilterType::CatmullRom)
}

/// Bicubic resize so that the short side is `size`, the long side
/// ⌊size · long / short⌋ (torchvision's `Resize(int)`).
pub fn resize_short_side(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (size as u64 * long as u64 / short.max(1) as u64) as u32;
    let (nw, nh) = if w <= h {
        (size, new_long)
    } else {
        (new_long, size)
    };
    resize_bicubic(img, nw, nh)
}

/// Central `size` × `size` crop; offsets round((dim − size) / 2) as torchvision's
/// `CenterCrop`. The image must be at least `size` on both sides.
pub fn center_crop(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let left = ((w.saturating_sub(size)) as f64 / 2.0).round_ties_even() as u32;
    let top = ((h.saturating_sub(size)) as f64 / 2.0).round_ties_even() as u32;
    imageops::crop_imm(img, left, top, size.min(w), size.min(h)).to_image()
}

/// `[3, H, W]` floats: (pixel / 255 − mean) / std per channel.
pub fn normalize_chw(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let plane = (w * h) as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (p.0[c] as f32 / 255.0 - mean[c]) / std[c];
        }
    }
    out
}

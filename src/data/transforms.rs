//! Image → `[3, R, R]` f32 pipelines, as the reference applies them.
//!
//! * [`TransformKind::Cifar`] (reference `DatasetCifar100.__getitem__`), train and test
//!   alike, no augmentation: `ToTensor` (u8 / 255) → `Normalize` with the CIFAR statistics
//!   → bilinear resize to R × R on the float tensor (align_corners = false). Deterministic,
//!   so its image features can be cached exactly.
//! * [`TransformKind::Clip`] (Dassl): test = bicubic resize of the short side to R +
//!   center crop; train = `RandomResizedCrop(R, scale 0.08–1, ratio 3/4–4/3, bicubic)`
//!   (torchvision's 10-try algorithm with its central fallback) + horizontal flip with
//!   probability ½; both normalized with CLIP's mean and std.
//! * [`TransformKind::Native`] (the synthetic world, `--dataset world`), train and test
//!   alike, no augmentation: `ToTensor` → `Normalize` with CLIP's mean and std (the
//!   statistics the demo CLIP was pretrained with) → bilinear resize to R × R only when
//!   the image is not already R × R (the demo CLIP takes the world's 32 × 32 images as
//!   they are). Deterministic, so cacheable.
//!
//! The batch iterator is in [`super::loader`].

use image::RgbImage;
use rand::Rng;

use crate::clip::preprocess;
use crate::rng::StreamRng;

/// CIFAR-100 per-channel mean used by the reference.
pub const CIFAR_MEAN: [f32; 3] = [0.5071, 0.4865, 0.4409];
/// CIFAR-100 per-channel standard deviation used by the reference.
pub const CIFAR_STD: [f32; 3] = [0.2673, 0.2564, 0.2762];
/// Input resolution of CLIP ViT-B/16.
pub const RESOLUTION: u32 = 224;
/// `RandomResizedCrop` area range.
pub const CROP_SCALE: (f64, f64) = (0.08, 1.0);
/// `RandomResizedCrop` aspect-ratio range.
pub const CROP_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

/// Which pipeline (`--transform`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransformKind {
    /// The reference's CIFAR pipeline (CIFAR stats, bilinear upsampling, no augmentation).
    Cifar,
    /// CLIP/Dassl pipeline (bicubic, center crop for test, random resized crop + flip for
    /// train).
    Clip,
    /// The image at its own size with CLIP's normalization, bilinear resize only when
    /// its size differs from the model's; no augmentation.
    Native,
}

/// Train (augmenting) or test (deterministic) behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Training: random augmentation where the pipeline has one.
    Train,
    /// Evaluation: deterministic.
    Test,
}

/// A pipeline at a resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transform {
    /// Which pipeline.
    pub kind: TransformKind,
    /// Output side length R.
    pub resolution: u32,
}

impl Transform {
    /// `kind` at CLIP's 224 × 224.
    pub fn new(kind: TransformKind) -> Self {
        Self::at(kind, RESOLUTION)
    }

    /// `kind` at `resolution` × `resolution` (the model's input size).
    pub fn at(kind: TransformKind, resolution: u32) -> Self {
        Transform { kind, resolution }
    }

    /// Whether the output for `mode` depends on nothing but the image (so can be cached).
    pub fn is_deterministic(&self, mode: Mode) -> bool {
        matches!(self.kind, TransformKind::Cifar | TransformKind::Native) || mode == Mode::Test
    }

    /// Floats per output image (3 · R · R).
    pub fn output_len(&self) -> usize {
        3 * (self.resolution as usize).pow(2)
    }

    /// Applies the pipeline; `rng` drives the augmentation (unused when deterministic).
    pub fn apply(&self, img: &RgbImage, mode: Mode, rng: &mut StreamRng) -> Vec<f32> {
        let mut out = vec![0f32; self.output_len()];
        self.apply_into(img, mode, rng, &mut out);
        out
    }

    /// [`apply`](Self::apply) into `out` ([`output_len`](Self::output_len) cells, every
    /// one written): the loader's batch, so that an image is written once where the
    /// model reads it (the CIFAR pipeline's resize writes straight there).
    pub fn apply_into(&self, img: &RgbImage, mode: Mode, rng: &mut StreamRng, out: &mut [f32]) {
        assert_eq!(out.len(), self.output_len(), "apply_into: output length");
        let r = self.resolution;
        let image = match (self.kind, mode) {
            (TransformKind::Cifar, _) => return cifar_into(img, r, out),
            (TransformKind::Native, _) => native(img, r),
            (TransformKind::Clip, Mode::Test) => {
                let img = preprocess::center_crop(&preprocess::resize_short_side(img, r), r);
                preprocess::normalize_chw(&img, preprocess::CLIP_MEAN, preprocess::CLIP_STD)
            }
            (TransformKind::Clip, Mode::Train) => {
                let (w, h) = img.dimensions();
                let c = random_resized_crop_params(w, h, CROP_SCALE, CROP_RATIO, rng);
                let crop = image::imageops::crop_imm(img, c.left, c.top, c.width, c.height).to_image();
                let mut out = preprocess::resize_bicubic(&crop, r, r);
                if rng.random::<f64>() < 0.5 {
                    image::imageops::flip_horizontal_in_place(&mut out);
                }
                preprocess::normalize_chw(&out, preprocess::CLIP_MEAN, preprocess::CLIP_STD)
            }
        };
        out.copy_from_slice(&image);
    }
}

/// The reference CIFAR pipeline: to [0, 1], normalize with CIFAR statistics, bilinear
/// resize to `size` × `size` (align_corners = false) on the float tensor.
pub fn cifar(img: &RgbImage, size: u32) -> Vec<f32> {
    let mut out = vec![0f32; 3 * (size as usize).pow(2)];
    cifar_into(img, size, &mut out);
    out
}

/// [`cifar`] into `out` (3 · size² cells).
fn cifar_into(img: &RgbImage, size: u32, out: &mut [f32]) {
    let (w, h) = img.dimensions();
    let plane = (w * h) as usize;
    let mut chw = vec![0f32; 3 * plane];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = (p.0[c] as f32 / 255.0 - CIFAR_MEAN[c]) / CIFAR_STD[c];
        }
    }
    let size = size as usize;
    bilinear_resize_chw_into(&chw, 3, (h as usize, w as usize), (size, size), out);
}

/// The world's pipeline: to [0, 1], normalize with CLIP's statistics, and bilinear
/// resize (align_corners = false) to `size` × `size` only when the image has another size.
pub fn native(img: &RgbImage, size: u32) -> Vec<f32> {
    let chw = preprocess::normalize_chw(img, preprocess::CLIP_MEAN, preprocess::CLIP_STD);
    let (w, h) = img.dimensions();
    if (w, h) == (size, size) {
        return chw;
    }
    bilinear_resize_chw(&chw, 3, h as usize, w as usize, size as usize, size as usize)
}

/// Source index and weights along one axis, PyTorch's `upsample_bilinear2d` with
/// align_corners = false: src = max(scale · (dst + ½) − ½, 0), scale = in / out (f32).
fn axis_weights(in_len: usize, out_len: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = in_len as f32 / out_len as f32;
    (0..out_len)
        .map(|d| {
            let src = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(in_len - 1);
            let i1 = if i0 < in_len - 1 { i0 + 1 } else { i0 };
            let l1 = (src - i0 as f32).clamp(0.0, 1.0);
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// Bilinear resize of a `[channels, in_h, in_w]` tensor to `[channels, out_h, out_w]`
/// (align_corners = false, no antialiasing: meant for upsampling, as in the reference).
pub fn bilinear_resize_chw(
    src: &[f32],
    channels: usize,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; channels * out_h * out_w];
    bilinear_resize_chw_into(src, channels, (in_h, in_w), (out_h, out_w), &mut out);
    out
}

/// [`bilinear_resize_chw`] into `out` (`channels · out_h · out_w` cells, every one written).
fn bilinear_resize_chw_into(
    src: &[f32],
    channels: usize,
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
    out: &mut [f32],
) {
    assert_eq!(
        src.len(),
        channels * in_h * in_w,
        "bilinear_resize_chw: bad input length"
    );
    assert_eq!(
        out.len(),
        channels * out_h * out_w,
        "bilinear_resize_chw: bad output length"
    );
    let wy = axis_weights(in_h, out_h);
    let wx = axis_weights(in_w, out_w);
    // Separable: every source row is interpolated across once, then output rows mix two
    // of those. Each output is h0·(w0·a + w1·b) + h1·(w0·c + w1·d) evaluated in exactly
    // that order, so the bits are the direct formula's (test `separable_equals_direct`).
    let mut across = vec![0f32; in_h * out_w];
    for c in 0..channels {
        let s = &src[c * in_h * in_w..(c + 1) * in_h * in_w];
        for (row, a) in s.chunks_exact(in_w).zip(across.chunks_exact_mut(out_w)) {
            for (v, &(x0, x1, w0, w1)) in a.iter_mut().zip(&wx) {
                *v = w0 * row[x0] + w1 * row[x1];
            }
        }
        let o = &mut out[c * out_h * out_w..(c + 1) * out_h * out_w];
        for (orow, &(y0, y1, h0, h1)) in o.chunks_exact_mut(out_w).zip(&wy) {
            let (r0, r1) = (&across[y0 * out_w..][..out_w], &across[y1 * out_w..][..out_w]);
            for ((v, &a), &b) in orow.iter_mut().zip(r0).zip(r1) {
                *v = h0 * a + h1 * b;
            }
        }
    }
}

/// A crop rectangle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropParams {
    /// Top row.
    pub top: u32,
    /// Left column.
    pub left: u32,
    /// Height.
    pub height: u32,
    /// Width.
    pub width: u32,
}

/// torchvision's `RandomResizedCrop.get_params`: up to 10 tries of a random area fraction
/// in `scale` and a log-uniform aspect ratio in `ratio`; if none fits, the central crop
/// with the ratio clamped to the range.
pub fn random_resized_crop_params(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut StreamRng,
) -> CropParams {
    let area = width as f64 * height as f64;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale.0..=scale.1);
        let aspect = rng.random_range(lr0..=lr1).exp();
        let w = (target * aspect).sqrt().round_ties_even();
        let h = (target / aspect).sqrt().round_ties_even();
        if w > 0.0 && h > 0.0 && w <= width as f64 && h <= height as f64 {
            let (w, h) = (w as u32, h as u32);
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return CropParams {
                top,
                left,
                height: h,
                width: w,
            };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio.0 {
        (
            width,
            ((width as f64 / ratio.0).round_ties_even() as u32).min(height),
        )
    } else if in_ratio > ratio.1 {
        (
            ((height as f64 * ratio.1).round_ties_even() as u32).min(width),
            height,
        )
    } else {
        (width, height)
    };
    let (w, h) = (w.max(1), h.max(1));
    CropParams {
        top: (height - h) / 2,
        left: (width - w) / 2,
        height: h,
        width: w,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng;

    #[test]
    fn separable_equals_direct() {
        let direct = |src: &[f32], c: usize, ih: usize, iw: usize, oh: usize, ow: usize| {
            let (wy, wx) = (axis_weights(ih, oh), axis_weights(iw, ow));
            let mut out = Vec::with_capacity(c * oh * ow);
            for ch in 0..c {
                let s = &src[ch * ih * iw..];
                for &(y0, y1, h0, h1) in &wy {
                    for &(x0, x1, w0, w1) in &wx {
                        out.push(
                            h0 * (w0 * s[y0 * iw + x0] + w1 * s[y0 * iw + x1])
                                + h1 * (w0 * s[y1 * iw + x0] + w1 * s[y1 * iw + x1]),
                        );
                    }
                }
            }
            out
        };
        for (c, ih, iw, oh, ow) in [(3, 32, 32, 224, 224), (2, 5, 9, 7, 4), (1, 40, 30, 13, 17)] {
            let src: Vec<f32> = (0..c * ih * iw)
                .map(|i| ((i * 7919) % 997) as f32 / 97.0 - 3.0)
                .collect();
            let fast = bilinear_resize_chw(&src, c, ih, iw, oh, ow);
            let slow = direct(&src, c, ih, iw, oh, ow);
            let same = fast.iter().zip(&slow).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same && fast.len() == slow.len(), "{c}×{ih}×{iw} → {oh}×{ow}");
        }
    }

    #[test]
    fn bilinear_matches_hand_computed_align_corners_false() {
        // 1 × 2 → 1 × 4 along x: scale ½, src = ½(d + ½) − ½ = −¼ → 0, ¼, ¾, 1¼ → 1.
        let out = bilinear_resize_chw(&[0.0, 8.0], 1, 1, 2, 1, 4);
        assert_eq!(out, vec![0.0, 2.0, 6.0, 8.0]);
        // 2 × 2 → 4 × 4: separable, corners preserved.
        let out = bilinear_resize_chw(&[0.0, 4.0, 8.0, 12.0], 1, 2, 2, 4, 4);
        assert_eq!(&out[..4], &[0.0, 1.0, 3.0, 4.0]);
        assert_eq!(&out[4..8], &[2.0, 3.0, 5.0, 6.0]);
        assert_eq!(&out[12..], &[8.0, 9.0, 11.0, 12.0]);
        // 3 → 7: src = 3/7 (d + ½) − ½; d = 3 → 1.0 exactly, d = 1 → 1/7.
        let out = bilinear_resize_chw(&[0.0, 7.0, 14.0], 1, 1, 3, 1, 7);
        assert!(
            (out[3] - 7.0).abs() < 1e-5 && (out[1] - 1.0).abs() < 1e-5,
            "{out:?}"
        );
    }

    #[test]
    fn cifar_pipeline_normalizes_then_upsamples() {
        let img = RgbImage::from_fn(32, 32, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, 128]));
        let out = cifar(&img, 224);
        assert_eq!(out.len(), 3 * 224 * 224);
        // Output (0, 0) samples source (0, 0) exactly (src clamps to 0).
        let want = (0.0 - CIFAR_MEAN[0]) / CIFAR_STD[0];
        assert_eq!(out[0], want);
        let b = (128.0 / 255.0 - CIFAR_MEAN[2]) / CIFAR_STD[2];
        assert!(out[2 * 224 * 224..].iter().all(|v| (v - b).abs() < 1e-6));
        let t = Transform::new(TransformKind::Cifar);
        assert!(t.is_deterministic(Mode::Train));
        assert_eq!(t.apply(&img, Mode::Train, &mut rng::stream(0, "a")), out);
    }

    #[test]
    fn native_pipeline_keeps_the_size_when_it_fits_and_is_deterministic() {
        let img = RgbImage::from_fn(32, 32, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, 200]));
        let t = Transform::at(TransformKind::Native, 32);
        assert!(t.is_deterministic(Mode::Train));
        let out = t.apply(&img, Mode::Train, &mut rng::stream(0, "a"));
        assert_eq!(out.len(), 3 * 32 * 32);
        // Pixel (x = 3, y = 2) of the R plane: (24 / 255 − mean) / std, exactly CLIP's.
        let want = (24.0 / 255.0 - preprocess::CLIP_MEAN[0]) / preprocess::CLIP_STD[0];
        assert!((out[2 * 32 + 3] - want).abs() < 1e-6);
        assert_eq!(out, t.apply(&img, Mode::Test, &mut rng::stream(1, "b")));
        // At another resolution: the same values, bilinearly resized.
        let big = Transform::at(TransformKind::Native, 224).apply(&img, Mode::Test, &mut rng::stream(0, "a"));
        assert_eq!(big, bilinear_resize_chw(&out, 3, 32, 32, 224, 224));
    }

    #[test]
    fn random_resized_crop_stays_in_bounds() {
        let mut r = rng::stream(5, "augment");
        for &(w, h) in &[
            (224, 224),
            (500, 333),
            (32, 32),
            (1000, 10),
            (10, 1000),
            (1, 1),
            (3, 700),
        ] {
            for _ in 0..200 {
                let c = random_resized_crop_params(w, h, CROP_SCALE, CROP_RATIO, &mut r);
                assert!(c.width >= 1 && c.height >= 1, "{c:?}");
                assert!(c.left + c.width <= w && c.top + c.height <= h, "{w}×{h}: {c:?}");
            }
        }
        // Elongated images fall back to the central crop at the ratio bound.
        let c = random_resized_crop_params(1000, 10, CROP_SCALE, CROP_RATIO, &mut r);
        assert_eq!((c.width, c.height), (13, 10));
        assert_eq!(c.left, (1000 - 13) / 2);
    }

    #[test]
    fn clip_pipelines_have_the_right_shape() {
        let img = RgbImage::from_fn(300, 200, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let t = Transform::new(TransformKind::Clip);
        let a = t.apply(&img, Mode::Test, &mut rng::stream(0, "a"));
        let b = t.apply(&img, Mode::Test, &mut rng::stream(1, "a"));
        assert_eq!(a.len(), t.output_len());
        assert_eq!(a, b);
        let c = t.apply(&img, Mode::Train, &mut rng::stream(0, "a"));
        let d = t.apply(&img, Mode::Train, &mut rng::stream(0, "a"));
        let e = t.apply(&img, Mode::Train, &mut rng::stream(1, "a"));
        assert_eq!(c.len(), t.output_len());
        assert_eq!(c, d);
        assert_ne!(c, e);
        assert!(!t.is_deterministic(Mode::Train));
    }
}

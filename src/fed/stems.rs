//! Cached image-tower stems for LoRA on the vision tower.
//!
//! Vision LoRA trains the image tower, so every step and every evaluation runs it; but
//! its first adapter sits in block 0, and everything before — decoding and resizing the
//! image, the patch embedding, the class token, the positions and `pre_norm` — is frozen.
//! For a deterministic transform (the CIFAR and native pipelines, and every test
//! transform) that stem is the same for an image every time it is seen, so it is
//! computed once here and the tower runs from block 0
//! ([`crate::clip::vision::VisionEncoder::forward_from_stem`]). The numbers are the same
//! as on live pixels, to the bit: the vision test
//! `the_forward_from_cached_stems_equals_the_forward_from_pixels` and, for whole runs,
//! `tests/golden_metrics.rs` `the_stem_cache_changes_no_number`.
//!
//! A stem is `tokens × width` values per image (tiny fixture CLIP: 50 × 128 f32, 25 KiB;
//! ViT-B/16: 197 × 768, 591 KiB), so the cache is bounded by
//! [`TrainSettings::stem_cache_mib`](super::federation::TrainSettings::stem_cache_mib):
//! the test split first (every evaluation reads all of it), then the training rows; what
//! does not fit is computed live as before.

use std::time::Instant;

use anyhow::Result;
use candle_core::Tensor;

use crate::clip::Clip;
use crate::data::dataset::SplitKind;
use crate::data::transforms::Mode;

/// Stems `[N, T·D]` of the test split and of the long-tailed training rows, where they
/// fit in the budget.
#[derive(Debug, Default)]
pub(super) struct StemBank {
    /// One row per long-tailed training row, in the feature bank's row order.
    pub(super) train: Option<Tensor>,
    /// One row per test image.
    pub(super) test: Option<Tensor>,
}

/// What [`StemBank::build`] caches and how it gets pixels.
pub(super) struct StemSources<'s> {
    /// Test images (all are cached, or none).
    pub(super) n_test: usize,
    /// The long-tailed training rows, when their transform is deterministic.
    pub(super) train_rows: Option<&'s [usize]>,
    /// Memory budget in MiB.
    pub(super) budget_mib: usize,
    /// Images per stem batch.
    pub(super) batch: usize,
}

impl StemBank {
    /// Computes the stems of `sources` that fit its budget, with `pixels` giving the
    /// normalized images of (split, indices, mode).
    pub(super) fn build(
        clip: &Clip,
        sources: StemSources<'_>,
        pixels: impl Fn(SplitKind, &[usize], Mode) -> Result<Tensor>,
    ) -> Result<Self> {
        let mut bank = StemBank::default();
        let v = &clip.config.vision;
        let per_image = (v.tokens() * v.width * clip.vision.patch.dtype().size_in_bytes()) as u64;
        let mut budget = sources.budget_mib as u64 * (1 << 20);
        let mut take = |n: usize| {
            let bytes = n as u64 * per_image;
            let fits = bytes <= budget;
            if fits {
                budget -= bytes;
            }
            fits
        };
        let stems = |split: SplitKind, idx: &[usize], mode: Mode| -> Result<Tensor> {
            let mut out = Vec::new();
            for chunk in idx.chunks(sources.batch.max(1)) {
                let px = pixels(split, chunk, mode)?.to_device(clip.device())?;
                out.push(clip.vision.stem(&px)?);
            }
            Ok(Tensor::cat(&out, 0)?)
        };
        let t0 = Instant::now();
        if take(sources.n_test) {
            let all: Vec<usize> = (0..sources.n_test).collect();
            bank.test = Some(stems(SplitKind::Test, &all, Mode::Test)?);
        }
        if let Some(rows) = sources.train_rows.filter(|r| take(r.len())) {
            bank.train = Some(stems(SplitKind::Train, rows, Mode::Train)?);
        }
        tracing::info!(
            test = bank.test.is_some(),
            train = bank.train.is_some(),
            mib_per_1000_images = per_image as f64 * 1000.0 / (1 << 20) as f64,
            seconds = t0.elapsed().as_secs_f64(),
            "image-tower stems cached"
        );
        Ok(bank)
    }
}

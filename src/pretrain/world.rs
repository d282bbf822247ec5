//! Pretraining data from the synthetic world ([`crate::data::world`]) and the zero-shot
//! check of a model trained on it.
//!
//! [`WorldPairs`] is a [`BatchSource`] of (image, caption) pairs from the world's
//! **pretraining** domain, balanced over the 60 classes: the run's pairs are numbered
//! p = 0, 1, 2, …; block q = ⌊p / 60⌋ holds every class once, in the order of a
//! permutation drawn from the stream `"pretrain-classes"`/[q] of the pretraining seed;
//! pair p is world training image `60·q + class` (so every pair is a distinct image, of
//! the class it is labelled with) with its caption. A batch of B pairs is pairs
//! step·B … step·B + B − 1, so over any 60 consecutive pairs each class appears exactly
//! once. Pixels go through [`transforms::native`] at the model's resolution; captions
//! through the world's tokenizer. Since some captions name only part of a class ("a red
//! shape."), the batch marks as positives every (image, caption) pair whose caption is
//! true of the image's class ([`Caption::describes`]), not only the drawn pairs.
//!
//! [`zero_shot_accuracy`] classifies a balanced test split of either domain with the
//! prompt template filled with the 60 class names.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::step::Batch;
use super::trainer::BatchSource;
use crate::clip::tokenizer::ClipTokenizer;
use crate::clip::zeroshot::ZeroShotHead;
use crate::clip::Clip;
use crate::data::dataset::SplitKind;
use crate::data::transforms;
use crate::data::world::captions::Caption;
use crate::data::world::{self, Class, Domain, NUM_CLASSES};
use crate::rng;

/// Balanced (image, caption) batches from the world's pretraining domain.
pub struct WorldPairs {
    /// Seed of the class order (the pretraining seed).
    pub seed: u64,
    /// Seed of the world (which images and captions exist).
    pub world_seed: u64,
    /// Pairs per batch.
    pub batch: usize,
    /// Side of the model's input in pixels.
    pub image_size: u32,
    /// Longest token row the model takes (its context length).
    pub context_length: usize,
    /// Mark every caption that is true of an image as its positive (else only the drawn
    /// pairs).
    pub multi_positive: bool,
    tokenizer: ClipTokenizer,
}

impl WorldPairs {
    /// A source of `batch`-pair batches for a model with `image_size` input and
    /// `context_length` text positions, reading text with `tokenizer` (the world's).
    pub fn new(
        seed: u64,
        world_seed: u64,
        batch: usize,
        image_size: u32,
        context_length: usize,
        tokenizer: ClipTokenizer,
    ) -> Result<Self> {
        if batch < 2 {
            bail!("pretraining batch size {batch}: a contrastive batch needs at least 2 pairs");
        }
        Ok(WorldPairs {
            seed,
            world_seed,
            batch,
            image_size,
            context_length,
            multi_positive: true,
            tokenizer,
        })
    }

    /// The world training-image index of every pair of step `step` (see the module
    /// documentation).
    pub fn indices(&self, step: usize) -> Vec<usize> {
        let mut perms: HashMap<usize, Vec<usize>> = HashMap::new();
        (step * self.batch..(step + 1) * self.batch)
            .map(|p| {
                let (block, slot) = (p / NUM_CLASSES, p % NUM_CLASSES);
                let perm = perms.entry(block).or_insert_with(|| {
                    let mut classes: Vec<usize> = (0..NUM_CLASSES).collect();
                    let mut r = rng::substream(self.seed, "pretrain-classes", &[block as u64]);
                    rng::shuffle(&mut r, &mut classes);
                    classes
                });
                block * NUM_CLASSES + perm[slot]
            })
            .collect()
    }

    /// The batch of step `step`, with the captions it was built from.
    pub fn batch_with_captions(&self, step: usize) -> Result<(Batch, Vec<Caption>)> {
        let indices = self.indices(step);
        let size = self.image_size;
        let pixels: Vec<f32> = indices
            .par_iter()
            .flat_map_iter(|&i| {
                transforms::native(
                    &world::render(self.world_seed, Domain::Pretrain, SplitKind::Train, i),
                    size,
                )
            })
            .collect();
        let captions: Vec<Caption> = indices
            .iter()
            .map(|&i| world::caption_of(self.world_seed, Domain::Pretrain, SplitKind::Train, i))
            .collect();
        let mut tokens = Vec::with_capacity(indices.len());
        for c in &captions {
            let ids = self.tokenizer.encode(&c.text)?;
            if ids.len() > self.context_length {
                bail!(
                    "caption `{}` is {} tokens, longer than the model's context of {}",
                    c.text,
                    ids.len(),
                    self.context_length
                );
            }
            tokens.push(ids);
        }
        let eot: Vec<usize> = tokens.iter().map(|r| r.len() - 1).collect();
        let width = tokens.iter().map(Vec::len).max().unwrap_or(0);
        for row in &mut tokens {
            row.resize(width, 0);
        }
        let positives = self.multi_positive.then(|| {
            captions
                .iter()
                .map(|image| captions.iter().map(|text| text.describes(image.class)).collect())
                .collect()
        });
        let n = indices.len();
        let s = size as usize;
        let batch = Batch {
            pixels: Tensor::from_vec(pixels, (n, 3, s, s), &Device::Cpu)?,
            tokens,
            eot,
            positives,
        };
        Ok((batch, captions))
    }
}

impl BatchSource for WorldPairs {
    fn next_batch(&mut self, step: usize) -> Result<Batch> {
        Ok(self.batch_with_captions(step)?.0)
    }
}

/// A balanced test split of one domain, rendered and normalized once.
pub struct WorldTestSet {
    /// The domain.
    pub domain: Domain,
    /// Normalized pixels `[N, 3, R, R]`.
    pub pixels: Tensor,
    /// Class of each image.
    pub labels: Vec<usize>,
}

impl WorldTestSet {
    /// The first `per_class` · 60 test images of `domain` in the world of `world_seed`
    /// (the same images `--dataset world --world-test-per-class per_class` tests on), at
    /// `image_size` pixels.
    pub fn new(world_seed: u64, domain: Domain, per_class: usize, image_size: u32) -> Result<Self> {
        if per_class == 0 {
            bail!("a zero-shot test set needs at least one image per class");
        }
        let n = per_class * NUM_CLASSES;
        let pixels: Vec<f32> = (0..n)
            .into_par_iter()
            .flat_map_iter(|i| {
                transforms::native(&world::render(world_seed, domain, SplitKind::Test, i), image_size)
            })
            .collect();
        let s = image_size as usize;
        Ok(WorldTestSet {
            domain,
            pixels: Tensor::from_vec(pixels, (n, 3, s, s), &Device::Cpu)?,
            labels: (0..n).map(world::class_of).collect(),
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the set has no image (never, by construction).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Zero-shot result on a test set.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ZeroShotScore {
    /// Top-1 accuracy, %.
    pub accuracy: f64,
    /// Accuracy of each attribute of the predicted class (shape, colour, texture), %.
    pub attribute_accuracy: [f64; 3],
    /// Test images.
    pub images: usize,
}

/// Images encoded per vision-tower call.
const EVAL_CHUNK: usize = 500;

/// Zero-shot top-1 accuracy of `clip` on `test` with `template` (e.g. "a photo of a
/// {}.") filled with each class's prompt name.
pub fn zero_shot_accuracy(
    clip: &Clip,
    tokenizer: &ClipTokenizer,
    test: &WorldTestSet,
    template: &str,
) -> Result<ZeroShotScore> {
    let head = ZeroShotHead::build(clip, tokenizer, &world::class_names(), template)
        .context("zero-shot head for the world's classes")?;
    let mut predicted = Vec::with_capacity(test.len());
    for start in (0..test.len()).step_by(EVAL_CHUNK) {
        let len = EVAL_CHUNK.min(test.len() - start);
        let feats = clip.encode_images(&test.pixels.narrow(0, start, len)?)?;
        let top: Vec<u32> = head.logits(&feats)?.argmax(1)?.to_vec1()?;
        predicted.extend(top.into_iter().map(|c| c as usize));
    }
    let n = test.len() as f64;
    let hits = |same: &dyn Fn(Class, Class) -> bool| {
        100.0
            * predicted
                .iter()
                .zip(&test.labels)
                .filter(|(&p, &y)| same(Class::of(p), Class::of(y)))
                .count() as f64
            / n
    };
    Ok(ZeroShotScore {
        accuracy: hits(&|a, b| a == b),
        attribute_accuracy: [
            hits(&|a, b| a.shape == b.shape),
            hits(&|a, b| a.colour == b.colour),
            hits(&|a, b| a.texture == b.texture),
        ],
        images: test.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::world::vocab;

    fn tokenizer() -> ClipTokenizer {
        let dir = tempfile::tempdir().unwrap();
        vocab::write_tokenizer_files(dir.path()).unwrap();
        ClipTokenizer::from_dir(dir.path()).unwrap()
    }

    #[test]
    fn batches_are_balanced_distinct_and_seeded() {
        let pairs = WorldPairs::new(3, 0, 50, 32, 77, tokenizer()).unwrap();
        // 6 batches of 50 = 300 pairs = 5 blocks: each class exactly 5 times, no image twice.
        let all: Vec<usize> = (0..6).flat_map(|s| pairs.indices(s)).collect();
        let mut counts = [0usize; NUM_CLASSES];
        for &i in &all {
            counts[world::class_of(i)] += 1;
        }
        assert!(counts.iter().all(|&n| n == 5), "{counts:?}");
        let mut unique = all.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), all.len());
        // Any 60 consecutive pairs starting at a block boundary hold every class.
        assert_eq!(pairs.indices(0), pairs.indices(0));
        let other = WorldPairs::new(4, 0, 50, 32, 77, tokenizer()).unwrap();
        assert_ne!(pairs.indices(0), other.indices(0));

        let (sot, eot) = (tokenizer().sot_id(), tokenizer().eot_id());
        let (b, captions) = pairs.batch_with_captions(1).unwrap();
        assert_eq!(b.pixels.dims(), [50, 3, 32, 32]);
        assert_eq!(b.tokens.len(), 50);
        let width = b.tokens[0].len();
        for (k, (row, &e)) in b.tokens.iter().zip(&b.eot).enumerate() {
            assert_eq!(row.len(), width);
            assert_eq!(row[0], sot);
            assert_eq!(row[e], eot);
            assert_eq!(&row[e + 1..], &vec![0; width - e - 1][..], "row {k}");
            assert!(captions[k].describes(Class::of(world::class_of(pairs.indices(1)[k]))));
        }
        let p = b.positives.as_ref().unwrap();
        for i in 0..50 {
            assert!(p[i][i]);
            for j in 0..50 {
                assert_eq!(p[i][j], captions[j].describes(captions[i].class));
            }
        }
        // Partial captions make some off-diagonal positives; full ones of other classes none.
        assert!(p.iter().flatten().filter(|&&x| x).count() > 50);
        // The pixels are the native transform of the world's images.
        let i0 = pairs.indices(1)[0];
        let want = transforms::native(&world::render(0, Domain::Pretrain, SplitKind::Train, i0), 32);
        let got: Vec<f32> = b.pixels.get(0).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got, want);
        assert!(WorldPairs::new(3, 0, 1, 32, 77, tokenizer()).is_err());
        let short = WorldPairs::new(3, 0, 8, 32, 4, tokenizer()).unwrap();
        let e = short.batch_with_captions(0).unwrap_err().to_string();
        assert!(e.contains("context of 4"), "{e}");
    }

    #[test]
    fn test_sets_match_the_world_dataset() {
        let t = WorldTestSet::new(0, Domain::Downstream, 2, 32).unwrap();
        assert_eq!(t.len(), 120);
        assert_eq!(t.labels[61], 1);
        let ds = world::generate(&world::WorldSpec {
            train_per_class: 1,
            test_per_class: 2,
            ..Default::default()
        })
        .unwrap();
        let img = ds.test.decode(61).unwrap();
        let got: Vec<f32> = t
            .pixels
            .get(61)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(got, transforms::native(&img, 32));
        assert!(WorldTestSet::new(0, Domain::Downstream, 0, 32).is_err());
    }
}

//! A synthetic image–text world: a seeded stand-in for CLIP's pretraining data and for a
//! long-tailed downstream task, with nothing to download.
//!
//! * [`classes`] — 60 compositional, nameable classes: shape × colour × texture
//!   ("striped red circle").
//! * [`render`](mod@render) — 32 × 32 RGB images of a class: position, size, rotation, texture
//!   phase, colour jitter, lighting, background, clutter and noise vary per image.
//! * [`captions`] — captions from varied templates, some naming only part of the class.
//! * [`vocab`] — the world's words as a CLIP-BPE tokenizer (`tokenizer.json`,
//!   `vocab.json`, `merges.txt`) that [`crate::clip::tokenizer::ClipTokenizer`] reads.
//! * [`dataset`] — a domain as a [`crate::data::Dataset`] (`--dataset world`).
//!
//! Two [`Domain`]s share the classes and differ in their nuisance factors: **pretrain**
//! (balanced, light studio backgrounds, mild noise — what the demo CLIP is trained on
//! with captions) and **downstream** (unseen field backgrounds, clutter strokes, a colour
//! cast, stronger noise, slightly smaller objects — the federated task), so zero-shot
//! transfer works but not perfectly.
//!
//! Everything is a pure function of (seed, domain, split, index): image `index` of a
//! split has class `index mod 60` and draws its pixels from the stream
//! `"world-image"`/[domain, split, index] and its caption from `"world-caption"`/[domain,
//! split, index] of the seed ([`crate::rng`]).
//!
//! A model meant for the world sees its pixels through
//! [`crate::data::transforms::native`] (CLIP's normalization at the image's own 32 × 32),
//! the transform `--dataset world` uses, and reads text with the tokenizer files of
//! [`vocab::write_tokenizer_files`] (vocabulary size [`vocab::Vocabulary::len`]; prompts
//! are padded to CLIP's context of 77 tokens).

pub mod captions;
pub mod classes;
pub mod dataset;
pub mod render;
pub mod vocab;

use image::RgbImage;

pub use classes::{Class, NUM_CLASSES};
pub use dataset::{generate, WorldSpec};
pub use render::{Background, Look, IMAGE_SIZE};

use crate::data::dataset::SplitKind;
use crate::rng;

/// Which distribution images come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Domain {
    /// The pretraining distribution: studio backgrounds, mild noise.
    Pretrain,
    /// The shifted downstream distribution: field backgrounds, clutter, colour cast,
    /// stronger noise.
    Downstream,
}

impl Domain {
    /// The domain's nuisance factors.
    pub fn look(self) -> Look {
        match self {
            Domain::Pretrain => Look {
                radius: (7.0, 11.0),
                background: Background::Studio,
                colour_jitter: 15.0,
                tint: 0.05,
                clutter: 0,
                noise_std: 6.0,
            },
            Domain::Downstream => Look {
                radius: (6.0, 10.0),
                background: Background::Field,
                colour_jitter: 22.0,
                tint: 0.15,
                clutter: 1,
                noise_std: 12.0,
            },
        }
    }

    /// Short name (`pretrain`, `downstream`).
    pub fn name(self) -> &'static str {
        match self {
            Domain::Pretrain => "pretrain",
            Domain::Downstream => "downstream",
        }
    }

    fn key(self) -> u64 {
        match self {
            Domain::Pretrain => 0,
            Domain::Downstream => 1,
        }
    }
}

fn split_key(split: SplitKind) -> u64 {
    match split {
        SplitKind::Train => 0,
        SplitKind::Test => 1,
    }
}

/// The class of image `index` of any split: `index mod 60` (balanced, interleaved).
pub fn class_of(index: usize) -> usize {
    index % NUM_CLASSES
}

/// Image `index` of `split` of `domain` in the world of `seed`.
pub fn render(seed: u64, domain: Domain, split: SplitKind, index: usize) -> RgbImage {
    let mut r = rng::substream(
        seed,
        "world-image",
        &[domain.key(), split_key(split), index as u64],
    );
    render::draw(Class::of(class_of(index)), &domain.look(), &mut r)
}

/// The caption of image `index` of `split` of `domain` in the world of `seed` (a draw
/// from the templates of [`captions`]).
pub fn caption(seed: u64, domain: Domain, split: SplitKind, index: usize) -> String {
    caption_of(seed, domain, split, index).text
}

/// [`caption`] with the attributes it names (the same text).
pub fn caption_of(seed: u64, domain: Domain, split: SplitKind, index: usize) -> captions::Caption {
    let mut r = rng::substream(
        seed,
        "world-caption",
        &[domain.key(), split_key(split), index as u64],
    );
    captions::draw_caption(Class::of(class_of(index)), &mut r)
}

/// One image with its class and caption.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The 32 × 32 image.
    pub image: RgbImage,
    /// Its class label.
    pub class: usize,
    /// Its caption.
    pub caption: String,
}

/// Image, class and caption of `index` (see [`render()`], [`class_of`], [`caption`]).
pub fn sample(seed: u64, domain: Domain, split: SplitKind, index: usize) -> Sample {
    Sample {
        image: render(seed, domain, split, index),
        class: class_of(index),
        caption: caption(seed, domain, split, index),
    }
}

/// Every class's prompt name in label order ("plain red circle", …).
pub fn class_names() -> Vec<String> {
    classes::prompt_names()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_pure_functions_of_their_key() {
        let a = sample(3, Domain::Pretrain, SplitKind::Train, 17);
        let b = sample(3, Domain::Pretrain, SplitKind::Train, 17);
        assert_eq!(a.image, b.image);
        assert_eq!(a.caption, b.caption);
        assert_eq!(a.class, 17);
        assert_eq!(a.image.dimensions(), (IMAGE_SIZE, IMAGE_SIZE));
        // Every part of the key matters.
        for other in [
            sample(4, Domain::Pretrain, SplitKind::Train, 17),
            sample(3, Domain::Downstream, SplitKind::Train, 17),
            sample(3, Domain::Pretrain, SplitKind::Test, 17),
            sample(3, Domain::Pretrain, SplitKind::Train, 77),
        ] {
            assert_ne!(a.image, other.image);
        }
        assert_eq!(class_of(77), 17);
    }

    /// Mean colour of the object region is closest to the class's colour: the pixels carry
    /// the class. Measured as the mean over pixels far from the background's grey.
    #[test]
    fn images_show_their_class_colour_in_the_pretraining_domain() {
        for index in 0..120 {
            let s = sample(1, Domain::Pretrain, SplitKind::Train, index);
            let class = Class::of(s.class);
            let mut sum = [0f64; 3];
            let mut n = 0.0;
            for p in s.image.pixels() {
                let [r, g, b] = p.0.map(f64::from);
                let sat = r.max(g).max(b) - r.min(g).min(b);
                if sat > 60.0 {
                    sum[0] += r;
                    sum[1] += g;
                    sum[2] += b;
                    n += 1.0;
                }
            }
            assert!(n >= 10.0, "image {index}: only {n} saturated pixels");
            let mean = sum.map(|x| x / n);
            let nearest = classes::COLOURS
                .iter()
                .min_by(|a, b| {
                    let d = |c: &classes::Colour| {
                        let q = c.rgb();
                        (0..3).map(|i| (q[i] - mean[i]).powi(2)).sum::<f64>()
                    };
                    d(a).total_cmp(&d(b))
                })
                .unwrap();
            assert_eq!(
                *nearest, class.colour,
                "image {index}: mean object colour {mean:?}"
            );
        }
    }

    #[test]
    fn domains_differ_in_their_nuisance_factors() {
        let (p, d) = (Domain::Pretrain.look(), Domain::Downstream.look());
        assert_eq!(
            (p.background, d.background),
            (Background::Studio, Background::Field)
        );
        assert!(d.noise_std > p.noise_std && d.clutter > p.clutter && d.tint > p.tint);
        // Rendered images differ: the downstream corner pixels vary more between images.
        let corner_spread = |domain| {
            let v: Vec<f64> = (0..60)
                .map(|i| render(1, domain, SplitKind::Train, i).get_pixel(0, 0).0[0] as f64)
                .collect();
            let mean = v.iter().sum::<f64>() / 60.0;
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 59.0).sqrt()
        };
        let (studio, field) = (corner_spread(Domain::Pretrain), corner_spread(Domain::Downstream));
        assert!(field > studio, "corner spread: studio {studio}, field {field}");
    }
}

//! A domain of the world as a [`Dataset`] (`--dataset world`): a balanced training pool
//! and a balanced test split of 32 × 32 images in label-interleaved order, classes named
//! `texture_colour_shape` (prompt name "texture colour shape"). The long-tail cut, the
//! client split and the transform are the run's, as for every dataset.
//!
//! Images are rendered in parallel (each from its own stream, so the result does not
//! depend on scheduling) straight into the in-memory channel-plane layout.

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::{classes, render, Domain, IMAGE_SIZE, NUM_CLASSES};
use crate::data::dataset::{Dataset, Images, Split, SplitKind};

/// Which images of the world a dataset holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorldSpec {
    /// Training images per class before any long-tail cut (n_max of the profile).
    pub train_per_class: usize,
    /// Test images per class.
    pub test_per_class: usize,
    /// Which domain the images come from.
    pub domain: Domain,
    /// The world's seed (fixed by default, so run seeds vary split and initialization,
    /// not the images).
    pub seed: u64,
}

impl Default for WorldSpec {
    /// `--dataset world` by default: the downstream domain, 500 training (before the
    /// long-tail cut) and 50 test images per class.
    fn default() -> Self {
        WorldSpec {
            train_per_class: 500,
            test_per_class: 50,
            domain: Domain::Downstream,
            seed: 0,
        }
    }
}

fn split(spec: &WorldSpec, kind: SplitKind, per_class: usize) -> Split {
    let n = per_class * NUM_CLASSES;
    let plane = (IMAGE_SIZE * IMAGE_SIZE) as usize;
    let mut data = vec![0u8; n * 3 * plane];
    data.par_chunks_mut(3 * plane).enumerate().for_each(|(i, out)| {
        let img = super::render(spec.seed, spec.domain, kind, i);
        for (p, px) in img.pixels().enumerate() {
            for ch in 0..3 {
                out[ch * plane + p] = px.0[ch];
            }
        }
    });
    Split {
        labels: (0..n).map(|i| super::class_of(i) as u32).collect(),
        coarse: None,
        images: Images::Planes {
            width: render::IMAGE_SIZE,
            height: render::IMAGE_SIZE,
            data,
        },
    }
}

/// Renders the dataset described by `spec`.
pub fn generate(spec: &WorldSpec) -> Result<Dataset> {
    if spec.train_per_class == 0 || spec.test_per_class == 0 {
        bail!(
            "--dataset world needs at least 1 training and 1 test image per class \
             (--world-train-per-class {}, --world-test-per-class {})",
            spec.train_per_class,
            spec.test_per_class
        );
    }
    let ds = Dataset {
        name: match spec.domain {
            Domain::Downstream => "world".to_string(),
            d => format!("world-{}", d.name()),
        },
        classes: classes::prompt_names()
            .iter()
            .map(|n| n.replace(' ', "_"))
            .collect(),
        coarse_classes: None,
        train: split(spec, SplitKind::Train, spec.train_per_class),
        test: split(spec, SplitKind::Test, spec.test_per_class),
    };
    ds.validate()?;
    Ok(ds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::longtail::{ClassGroups, LongTail};
    use crate::rng;

    #[test]
    fn splits_are_balanced_and_decode_to_the_rendered_images() {
        let spec = WorldSpec {
            train_per_class: 3,
            test_per_class: 2,
            ..WorldSpec::default()
        };
        let ds = generate(&spec).unwrap();
        assert_eq!(ds.num_classes(), 60);
        assert_eq!(ds.train.len(), 180);
        assert_eq!(ds.test.len(), 120);
        assert!(ds.train.class_counts(60).iter().all(|&n| n == 3));
        assert_eq!(ds.prompt_name(7), "striped yellow triangle");
        assert_eq!(ds.classes[7], "striped_yellow_triangle");
        for i in [0, 61, 179] {
            assert_eq!(
                ds.train.decode(i).unwrap(),
                super::super::render(0, Domain::Downstream, SplitKind::Train, i)
            );
        }
        assert_eq!(
            ds.test.decode(5).unwrap(),
            super::super::render(0, Domain::Downstream, SplitKind::Test, 5)
        );
        let again = generate(&spec).unwrap();
        let (Images::Planes { data: a, .. }, Images::Planes { data: b, .. }) =
            (&ds.train.images, &again.train.images)
        else {
            panic!("world images are in memory")
        };
        assert_eq!(a, b);
        assert!(generate(&WorldSpec {
            test_per_class: 0,
            ..spec
        })
        .unwrap_err()
        .to_string()
        .contains("--world-test-per-class 0"));
    }

    /// At the demo's sizes the long tail at IF 100 has classes in every group, and the
    /// quick demo's too.
    #[test]
    fn the_demo_sizes_populate_many_medium_and_few() {
        for (per_class, want, total) in [
            (500, (21, 20, 19), 6567),
            (300, (14, 21, 25), 3931),
            (200, (9, 20, 31), 2614),
        ] {
            let labels: Vec<u32> = (0..per_class * NUM_CLASSES)
                .map(|i| super::super::class_of(i) as u32)
                .collect();
            let train = Split {
                labels,
                coarse: None,
                images: Images::Files(vec![]),
            };
            let lt =
                LongTail::subsample(&train, NUM_CLASSES, 100.0, &mut rng::stream(1, "longtail")).unwrap();
            let g = ClassGroups::from_counts(&lt.class_counts);
            assert_eq!(
                (g.many.len(), g.medium.len(), g.few.len()),
                want,
                "n_max {per_class}"
            );
            assert_eq!(lt.len(), total);
            assert_eq!(lt.class_counts[0], per_class);
            assert_eq!(*lt.class_counts.last().unwrap(), per_class / 100);
        }
    }
}

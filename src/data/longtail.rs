//! The long-tail profile and sub-sampling, and the Many / Medium / Few class groups.
//!
//! Profile (reference `datasets/long_tail.py`): with n_max = N_train / C (the mean class
//! size, a float) and imbalance factor IF ≥ 1, class c keeps
//! n_c = ⌊n_max · (1/IF)^(c/(C−1))⌋ images, classes in label order. Each class's indices
//! are shuffled with a seeded stream and the first n_c kept (a class with fewer images
//! keeps all of them). The reference shuffles with numpy seeded 1; we use the run's
//! `"longtail"` stream, so the *counts* match the reference exactly and the chosen images
//! are equal in distribution (import a reference split file for the exact images).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::dataset::Split;
use crate::rng::{self, StreamRng};

/// Per-class image counts of the exponential profile for `n_train` images over
/// `num_classes` classes at imbalance factor `imb_factor` (n_max / n_min, ≥ 1).
pub fn profile(n_train: usize, num_classes: usize, imb_factor: f64) -> Result<Vec<usize>> {
    if !(imb_factor >= 1.0 && imb_factor.is_finite()) {
        bail!(
            "--imb-factor must be a finite number ≥ 1 (n_max / n_min), got {imb_factor}; \
             the reference's --imb_factor 0.01 is an imbalance factor of 100"
        );
    }
    if num_classes == 0 {
        bail!("the dataset has no classes");
    }
    let n_max = n_train as f64 / num_classes as f64;
    // Same operations, same order as the reference: img_max * imb ** (c / (C - 1.0)).
    let imb = 1.0 / imb_factor;
    Ok((0..num_classes)
        .map(|c| {
            if num_classes == 1 {
                n_max as usize
            } else {
                (n_max * imb.powf(c as f64 / (num_classes as f64 - 1.0))) as usize
            }
        })
        .collect())
}

/// The long-tailed training subset: which training samples are kept, and how many per
/// class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LongTail {
    /// Kept indices into the dataset's original training split, class by class (class 0's
    /// kept samples first, in their shuffled order).
    pub indices: Vec<usize>,
    /// Kept images per class.
    pub class_counts: Vec<usize>,
}

impl LongTail {
    /// The whole training split, unsampled (for datasets whose lists are already
    /// long-tailed, like ImageNet-LT and Places-LT).
    pub fn identity(train: &Split, num_classes: usize) -> Result<Self> {
        let class_counts = train.class_counts(num_classes);
        check_nonempty(&class_counts, None)?;
        let by_class = train.indices_by_class(num_classes);
        Ok(LongTail {
            indices: by_class.into_iter().flatten().collect(),
            class_counts,
        })
    }

    /// Sub-samples `train` to the profile of `imb_factor`, shuffling each class with `rng`.
    pub fn subsample(
        train: &Split,
        num_classes: usize,
        imb_factor: f64,
        rng: &mut StreamRng,
    ) -> Result<Self> {
        let target = profile(train.len(), num_classes, imb_factor)?;
        let mut indices = Vec::new();
        let mut class_counts = Vec::with_capacity(num_classes);
        for (mut idx, &n_c) in train.indices_by_class(num_classes).into_iter().zip(&target) {
            rng::shuffle(rng, &mut idx);
            idx.truncate(n_c);
            class_counts.push(idx.len());
            indices.extend(idx);
        }
        check_nonempty(&class_counts, Some(imb_factor))?;
        Ok(LongTail {
            indices,
            class_counts,
        })
    }

    /// Total kept images.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

fn check_nonempty(counts: &[usize], imb_factor: Option<f64>) -> Result<()> {
    let empty: Vec<usize> = (0..counts.len()).filter(|&c| counts[c] == 0).collect();
    if empty.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = empty.iter().take(10).map(|c| c.to_string()).collect();
    let more = if empty.len() > 10 { ", …" } else { "" };
    match imb_factor {
        Some(f) => bail!(
            "{} class(es) have no training image after the long-tail cut at --imb-factor {f} \
             (classes {}{more}); lower the imbalance factor or check the dataset",
            empty.len(),
            shown.join(", ")
        ),
        None => bail!(
            "{} class(es) have no training image (classes {}{more})",
            empty.len(),
            shown.join(", ")
        ),
    }
}

/// A class's group by its global long-tailed training count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// More than 100 training images.
    Many,
    /// 21 to 100 training images.
    Medium,
    /// 20 or fewer training images.
    Few,
}

impl Group {
    /// The group of a class with `n` training images (> 100 Many, 20 < n ≤ 100 Medium,
    /// ≤ 20 Few — the reference's thresholds).
    pub fn of_count(n: usize) -> Self {
        if n > 100 {
            Group::Many
        } else if n > 20 {
            Group::Medium
        } else {
            Group::Few
        }
    }
}

/// The Many / Medium / Few class lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassGroups {
    /// Classes with more than 100 training images.
    pub many: Vec<usize>,
    /// Classes with 21–100 training images.
    pub medium: Vec<usize>,
    /// Classes with at most 20 training images.
    pub few: Vec<usize>,
}

impl ClassGroups {
    /// Groups classes by their long-tailed training counts.
    pub fn from_counts(counts: &[usize]) -> Self {
        let mut g = ClassGroups {
            many: Vec::new(),
            medium: Vec::new(),
            few: Vec::new(),
        };
        for (c, &n) in counts.iter().enumerate() {
            match Group::of_count(n) {
                Group::Many => g.many.push(c),
                Group::Medium => g.medium.push(c),
                Group::Few => g.few.push(c),
            }
        }
        g
    }

    /// The group of class `c`, if it is listed.
    pub fn group_of(&self, c: usize) -> Option<Group> {
        if self.many.contains(&c) {
            Some(Group::Many)
        } else if self.medium.contains(&c) {
            Some(Group::Medium)
        } else if self.few.contains(&c) {
            Some(Group::Few)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::dataset::Images;
    use super::*;
    use std::collections::HashMap;

    fn fixture_counts() -> HashMap<String, Vec<usize>> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/lt_counts.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn profile_matches_the_reference_exactly() {
        let fx = fixture_counts();
        for (if_, key, total) in [
            (100.0, "cifar100_imb_0.01", 10_847),
            (50.0, "cifar100_imb_0.02", 12_608),
            (10.0, "cifar100_imb_0.1", 19_573),
        ] {
            let p = profile(50_000, 100, if_).unwrap();
            assert_eq!(p, fx[key], "IF {if_}");
            assert_eq!(p.iter().sum::<usize>(), total);
        }
    }

    #[test]
    fn groups_match_the_reference_sizes() {
        for (if_, sizes) in [(100.0, (35, 34, 31)), (50.0, (41, 40, 19)), (10.0, (69, 31, 0))] {
            let g = ClassGroups::from_counts(&profile(50_000, 100, if_).unwrap());
            assert_eq!((g.many.len(), g.medium.len(), g.few.len()), sizes, "IF {if_}");
        }
        assert_eq!(Group::of_count(101), Group::Many);
        assert_eq!(Group::of_count(100), Group::Medium);
        assert_eq!(Group::of_count(21), Group::Medium);
        assert_eq!(Group::of_count(20), Group::Few);
    }

    fn split(per_class: usize, classes: usize) -> Split {
        Split {
            labels: (0..per_class * classes).map(|i| (i % classes) as u32).collect(),
            coarse: None,
            images: Images::Files(vec![]),
        }
    }

    #[test]
    fn subsample_keeps_the_profile_and_is_seeded() {
        let train = split(500, 100);
        let a = LongTail::subsample(&train, 100, 100.0, &mut rng::stream(1, "longtail")).unwrap();
        let b = LongTail::subsample(&train, 100, 100.0, &mut rng::stream(1, "longtail")).unwrap();
        let c = LongTail::subsample(&train, 100, 100.0, &mut rng::stream(2, "longtail")).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.indices, c.indices);
        assert_eq!(a.class_counts, fixture_counts()["cifar100_imb_0.01"]);
        assert_eq!(a.len(), 10_847);
        let mut seen = a.indices.clone();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), a.len());
        for (k, &i) in a.indices.iter().enumerate() {
            let c = train.labels[i] as usize;
            let start: usize = a.class_counts[..c].iter().sum();
            assert!((start..start + a.class_counts[c]).contains(&k));
        }
    }

    #[test]
    fn bad_parameters_are_named() {
        let err = profile(100, 10, 0.01).unwrap_err().to_string();
        assert!(err.contains("--imb-factor"), "{err}");
        assert!(profile(100, 10, f64::NAN).is_err());
        let train = split(3, 10);
        let err = LongTail::subsample(&train, 10, 100.0, &mut rng::stream(1, "x"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no training image") && err.contains("--imb-factor 100"),
            "{err}"
        );
    }
}

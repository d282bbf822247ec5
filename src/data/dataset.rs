//! The [`Dataset`] type every reader produces: class names, a train and a test [`Split`]
//! of labelled images, optional superclass (coarse) labels.
//!
//! A split stores its images either in memory as channel planes (CIFAR and the synthetic
//! set: `3 × H × W` bytes per image, R plane then G then B, each row-major) or as file
//! paths (list files, image folders), decoded on demand by [`Split::decode`].

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use image::RgbImage;

/// Which of a dataset's two splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitKind {
    /// The training split (before any long-tail sub-sampling).
    Train,
    /// The test split.
    Test,
}

impl std::fmt::Display for SplitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SplitKind::Train => "train",
            SplitKind::Test => "test",
        })
    }
}

/// Where a split's images are.
#[derive(Debug, Clone)]
pub enum Images {
    /// In memory, `3 · width · height` bytes per image as channel planes (CIFAR layout).
    Planes {
        /// Image width in pixels.
        width: u32,
        /// Image height in pixels.
        height: u32,
        /// All images back to back.
        data: Vec<u8>,
    },
    /// One image file per sample (any format the `image` crate decodes).
    Files(Vec<PathBuf>),
}

/// One split of a dataset: a label per sample and the samples' images.
#[derive(Debug, Clone)]
pub struct Split {
    /// Class label of each sample, in `0..num_classes`.
    pub labels: Vec<u32>,
    /// Superclass label of each sample, when the dataset has them (CIFAR-100).
    pub coarse: Option<Vec<u32>>,
    /// The images, in the same order as `labels`.
    pub images: Images,
}

impl Split {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split has no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Sample indices of each class, ascending, for classes `0..num_classes`.
    pub fn indices_by_class(&self, num_classes: usize) -> Vec<Vec<usize>> {
        let mut by_class = vec![Vec::new(); num_classes];
        for (i, &y) in self.labels.iter().enumerate() {
            by_class[y as usize].push(i);
        }
        by_class
    }

    /// Number of samples of each class.
    pub fn class_counts(&self, num_classes: usize) -> Vec<usize> {
        let mut counts = vec![0; num_classes];
        for &y in &self.labels {
            counts[y as usize] += 1;
        }
        counts
    }

    /// Decodes sample `i` to an RGB image.
    pub fn decode(&self, i: usize) -> Result<RgbImage> {
        if i >= self.len() {
            bail!("sample index {i} out of range (split has {} samples)", self.len());
        }
        match &self.images {
            Images::Planes { width, height, data } => {
                let plane = (*width as usize) * (*height as usize);
                let img = &data[3 * plane * i..3 * plane * (i + 1)];
                Ok(RgbImage::from_fn(*width, *height, |x, y| {
                    let p = y as usize * *width as usize + x as usize;
                    image::Rgb([img[p], img[plane + p], img[2 * plane + p]])
                }))
            }
            Images::Files(paths) => {
                let path = &paths[i];
                let img =
                    image::open(path).with_context(|| format!("cannot decode image {}", path.display()))?;
                Ok(img.to_rgb8())
            }
        }
    }
}

/// A labelled image dataset with a train and a test split.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Short name (`cifar100`, `imagenet-lt`, `places-lt`, the folder's name, `synthetic`).
    pub name: String,
    /// Class names as the dataset spells them (may contain underscores).
    pub classes: Vec<String>,
    /// Superclass names, when the dataset has superclasses (CIFAR-100's 20).
    pub coarse_classes: Option<Vec<String>>,
    /// The training split.
    pub train: Split,
    /// The test split.
    pub test: Split,
}

impl Dataset {
    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// The split `kind`.
    pub fn split(&self, kind: SplitKind) -> &Split {
        match kind {
            SplitKind::Train => &self.train,
            SplitKind::Test => &self.test,
        }
    }

    /// Class `c`'s name as used in prompts: underscores become spaces
    /// (`aquarium_fish` → `aquarium fish`), as the reference's prompt builder does.
    pub fn prompt_name(&self, c: usize) -> String {
        self.classes[c].replace('_', " ")
    }

    /// Every class's prompt name, in label order.
    pub fn prompt_names(&self) -> Vec<String> {
        (0..self.num_classes()).map(|c| self.prompt_name(c)).collect()
    }

    /// Checks the invariants every reader guarantees: labels in range, one image per
    /// label, coarse labels (if any) consistent with one superclass per class.
    pub fn validate(&self) -> Result<()> {
        let c = self.num_classes();
        if c == 0 {
            bail!("dataset {}: no classes", self.name);
        }
        for kind in [SplitKind::Train, SplitKind::Test] {
            let split = self.split(kind);
            if let Some(pos) = split.labels.iter().position(|&y| y as usize >= c) {
                bail!(
                    "dataset {}: {kind} sample {pos} has label {} but there are {c} classes",
                    self.name,
                    split.labels[pos]
                );
            }
            let n_images = match &split.images {
                Images::Planes { width, height, data } => {
                    let per = 3 * *width as usize * *height as usize;
                    if per == 0 || data.len() % per != 0 {
                        bail!("dataset {}: {kind} image buffer is not a whole number of {width}×{height} images", self.name);
                    }
                    data.len() / per
                }
                Images::Files(paths) => paths.len(),
            };
            if n_images != split.len() {
                bail!(
                    "dataset {}: {kind} split has {} labels but {n_images} images",
                    self.name,
                    split.len()
                );
            }
            if let Some(coarse) = &split.coarse {
                if coarse.len() != split.len() {
                    bail!(
                        "dataset {}: {kind} split has {} labels but {} coarse labels",
                        self.name,
                        split.len(),
                        coarse.len()
                    );
                }
            }
        }
        if self.train.coarse.is_some() {
            self.fine_to_coarse()?;
        }
        Ok(())
    }

    /// The superclass of every class, read off the train (then test) coarse labels, with
    /// a check that each class always has the same superclass. Errors when the dataset has
    /// no superclasses.
    pub fn fine_to_coarse(&self) -> Result<Vec<u32>> {
        let n_coarse = self
            .coarse_classes
            .as_ref()
            .map(|v| v.len())
            .context("this dataset has no superclass (coarse) labels")?;
        let mut map: Vec<Option<u32>> = vec![None; self.num_classes()];
        for kind in [SplitKind::Train, SplitKind::Test] {
            let split = self.split(kind);
            let coarse = split
                .coarse
                .as_ref()
                .with_context(|| format!("{kind} split has no coarse labels"))?;
            for (i, (&f, &g)) in split.labels.iter().zip(coarse).enumerate() {
                if g as usize >= n_coarse {
                    bail!("{kind} sample {i}: coarse label {g} out of range (there are {n_coarse} superclasses)");
                }
                match map[f as usize] {
                    None => map[f as usize] = Some(g),
                    Some(prev) if prev != g => {
                        bail!("{kind} sample {i}: class {f} has superclass {g}, earlier samples say {prev}")
                    }
                    Some(_) => {}
                }
            }
        }
        map.iter()
            .enumerate()
            .map(|(c, g)| g.with_context(|| format!("class {c} has no samples, so no superclass")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Dataset {
        // Two 2×1 images: sample 0 is red/green, sample 1 blue/white.
        let data = vec![
            255, 0, 0, 255, 0, 0, //
            0, 255, 0, 255, 255, 255,
        ];
        Dataset {
            name: "tiny".into(),
            classes: vec!["aquarium_fish".into(), "b".into()],
            coarse_classes: None,
            train: Split {
                labels: vec![0, 1],
                coarse: None,
                images: Images::Planes {
                    width: 2,
                    height: 1,
                    data,
                },
            },
            test: Split {
                labels: vec![],
                coarse: None,
                images: Images::Files(vec![]),
            },
        }
    }

    #[test]
    fn decodes_channel_planes() {
        let ds = tiny();
        ds.validate().unwrap();
        let img = ds.train.decode(0).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [255, 0, 0]);
        assert_eq!(img.get_pixel(1, 0).0, [0, 255, 0]);
        let img = ds.train.decode(1).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 255]);
        assert_eq!(img.get_pixel(1, 0).0, [255, 255, 255]);
        assert!(ds.train.decode(2).is_err());
    }

    #[test]
    fn prompt_names_replace_underscores() {
        assert_eq!(tiny().prompt_names(), vec!["aquarium fish", "b"]);
    }

    #[test]
    fn validate_rejects_bad_labels() {
        let mut ds = tiny();
        ds.train.labels[1] = 7;
        let err = ds.validate().unwrap_err().to_string();
        assert!(err.contains("label 7"), "{err}");
    }
}

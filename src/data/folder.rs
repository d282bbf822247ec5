//! Image folders: `root/<class>/<image>` (Food101, DTD, Aircraft, Dogs, Pets, user data).
//!
//! Classes are the sub-folders, sorted by name; their index is the label. Images are the
//! files with an image extension (`jpg`, `jpeg`, `png`, `bmp`, `webp`, any case), sorted;
//! hidden entries are skipped.
//!
//! Split rule:
//! * if `root/train/` and `root/test/` both exist, they are the splits (classes come from
//!   `train/`; every `test/` class must also be in `train/`);
//! * otherwise each class's sorted images are shuffled with the `"folder-split"` stream of
//!   the seed and the first ⌊n · test_fraction⌉ go to test, the rest to train (the
//!   reference splits Food101 and DTD 50/50 per class this way).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::dataset::{Dataset, Images, Split};
use crate::rng;

const EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "bmp", "webp"];

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        out.push(entry.path());
    }
    out.sort();
    Ok(out)
}

fn class_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(sorted_entries(dir)?.into_iter().filter(|p| p.is_dir()).collect())
}

fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(sorted_entries(dir)?
        .into_iter()
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect())
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Loads an image folder; see the module documentation for the split rule.
pub fn load(root: &Path, test_fraction: f64, seed: u64) -> Result<Dataset> {
    if !root.is_dir() {
        bail!("image folder {} does not exist", root.display());
    }
    let name = name_of(root);
    let (train_dir, test_dir) = (root.join("train"), root.join("test"));
    let (classes, train, test) = if train_dir.is_dir() && test_dir.is_dir() {
        let dirs = class_dirs(&train_dir)?;
        let classes: Vec<String> = dirs.iter().map(|d| name_of(d)).collect();
        let mut train = (Vec::new(), Vec::new());
        for (c, d) in dirs.iter().enumerate() {
            for p in images_in(d)? {
                train.0.push(c as u32);
                train.1.push(p);
            }
        }
        let mut test = (Vec::new(), Vec::new());
        for d in class_dirs(&test_dir)? {
            let n = name_of(&d);
            let Some(c) = classes.iter().position(|x| *x == n) else {
                bail!(
                    "{}: class folder {n:?} has no counterpart in {}",
                    test_dir.display(),
                    train_dir.display()
                );
            };
            for p in images_in(&d)? {
                test.0.push(c as u32);
                test.1.push(p);
            }
        }
        (classes, train, test)
    } else {
        if !(0.0..1.0).contains(&test_fraction) {
            bail!("--test-fraction must be in [0, 1), got {test_fraction}");
        }
        let dirs = class_dirs(root)?;
        let classes: Vec<String> = dirs.iter().map(|d| name_of(d)).collect();
        let mut rng = rng::stream(seed, "folder-split");
        let (mut train, mut test) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        for (c, d) in dirs.iter().enumerate() {
            let mut imgs = images_in(d)?;
            rng::shuffle(&mut rng, &mut imgs);
            let n_test = (imgs.len() as f64 * test_fraction).round() as usize;
            for (k, p) in imgs.into_iter().enumerate() {
                let dst = if k < n_test { &mut test } else { &mut train };
                dst.0.push(c as u32);
                dst.1.push(p);
            }
        }
        (classes, train, test)
    };
    if classes.is_empty() {
        bail!(
            "{}: no class folders (expected root/<class>/<image> or root/train/<class>/…)",
            root.display()
        );
    }
    let ds = Dataset {
        name,
        classes,
        coarse_classes: None,
        train: Split {
            labels: train.0,
            coarse: None,
            images: Images::Files(train.1),
        },
        test: Split {
            labels: test.0,
            coarse: None,
            images: Images::Files(test.1),
        },
    };
    ds.validate()?;
    Ok(ds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        image::RgbImage::new(2, 2).save(p).unwrap();
    }

    #[test]
    fn seeded_split_of_a_flat_folder() {
        let d = tempfile::tempdir().unwrap();
        for c in ["b_class", "a_class"] {
            for i in 0..10 {
                touch(&d.path().join(c).join(format!("{i}.png")));
            }
        }
        std::fs::write(d.path().join("a_class/notes.txt"), "x").unwrap();
        let a = load(d.path(), 0.3, 1).unwrap();
        let b = load(d.path(), 0.3, 1).unwrap();
        assert_eq!(a.classes, vec!["a_class", "b_class"]);
        assert_eq!(a.train.len(), 14);
        assert_eq!(a.test.len(), 6);
        let Images::Files(fa) = &a.test.images else {
            panic!()
        };
        let Images::Files(fb) = &b.test.images else {
            panic!()
        };
        assert_eq!(fa, fb);
        assert!(load(d.path(), 1.0, 1).is_err());
    }

    #[test]
    fn train_test_subfolders_are_used_as_is() {
        let d = tempfile::tempdir().unwrap();
        touch(&d.path().join("train/cat/1.png"));
        touch(&d.path().join("train/dog/1.jpg"));
        touch(&d.path().join("test/dog/2.png"));
        let ds = load(d.path(), 0.5, 0).unwrap();
        assert_eq!(ds.classes, vec!["cat", "dog"]);
        assert_eq!(ds.test.labels, vec![1]);
        touch(&d.path().join("test/cow/3.png"));
        let err = load(d.path(), 0.5, 0).unwrap_err().to_string();
        assert!(err.contains("\"cow\""), "{err}");
    }
}

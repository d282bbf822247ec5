//! ImageNet-LT and Places-LT: list files (`<relative path> <label>` per line) and their
//! class-name files, with the known sizes checked and missing images reported.
//!
//! Layouts (the list and class-name files may also sit in an `ImageNet_LT/` or
//! `Places_LT/` subfolder of the root; image paths are relative to the root):
//! * ImageNet-LT: `ImageNet_LT_train.txt` (`train/<wnid>/<file> <label>`),
//!   `ImageNet_LT_test.txt`, `classnames.txt` (`<wnid> <name words…>`). The name of label
//!   l is the name of the wnid folder holding label l's training images (as the
//!   reference's `get_lab2cname`), falling back to line l of `classnames.txt`.
//! * Places-LT: `Places_LT_train.txt`, `Places_LT_test.txt`, `class_name_list.txt`
//!   (`<label> <name>`).
//!
//! The lists are already long-tailed; no sub-sampling is applied to them. Sizes other
//! than the published ones (ImageNet-LT 115 846 / 50 000, 1000 classes; Places-LT 62 500 /
//! 36 500, 365 classes) are warned about, not refused, so subsets can be used.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::dataset::{Dataset, Images, Split};

/// Which list-file dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListDataset {
    /// ImageNet-LT.
    ImageNetLt,
    /// Places-LT.
    PlacesLt,
}

impl ListDataset {
    /// `(train list, test list, class-name file, subfolder)` file names.
    fn files(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            ListDataset::ImageNetLt => (
                "ImageNet_LT_train.txt",
                "ImageNet_LT_test.txt",
                "classnames.txt",
                "ImageNet_LT",
            ),
            ListDataset::PlacesLt => (
                "Places_LT_train.txt",
                "Places_LT_test.txt",
                "class_name_list.txt",
                "Places_LT",
            ),
        }
    }

    /// Published `(train, test, classes)` sizes.
    pub fn known_sizes(self) -> (usize, usize, usize) {
        match self {
            ListDataset::ImageNetLt => (115_846, 50_000, 1000),
            ListDataset::PlacesLt => (62_500, 36_500, 365),
        }
    }

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            ListDataset::ImageNetLt => "imagenet-lt",
            ListDataset::PlacesLt => "places-lt",
        }
    }

    fn archive_hint(self, top: &str) -> String {
        match (self, top) {
            (ListDataset::ImageNetLt, "train") => {
                "ILSVRC2012_img_train.tar (ImageNet-1k training images, train/<wnid>/…)".into()
            }
            (ListDataset::ImageNetLt, "val") => {
                "ILSVRC2012_img_val.tar (ImageNet-1k validation images, sorted into val/<wnid>/…)".into()
            }
            (ListDataset::ImageNetLt, _) => format!("the ImageNet-1k archive that provides {top}/"),
            (ListDataset::PlacesLt, _) => {
                format!("the Places365-Standard image archive that provides {top}/")
            }
        }
    }
}

/// One line of a list file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// Path relative to the dataset root.
    pub path: String,
    /// Class label.
    pub label: u32,
    /// 1-based line number.
    pub line: usize,
}

/// Parses a list file (`<relative path> <label>` per line; blank lines ignored).
pub fn parse_list(bytes: &[u8], file: &str) -> Result<Vec<ListEntry>> {
    let text = std::str::from_utf8(bytes).with_context(|| format!("{file}: not UTF-8 text"))?;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() {
            continue;
        }
        let mut parts = l.split_whitespace();
        let (Some(path), Some(label), None) = (parts.next(), parts.next(), parts.next()) else {
            bail!("{file}:{line}: expected `<relative path> <label>`, found {l:?}");
        };
        let label: u32 = label
            .parse()
            .with_context(|| format!("{file}:{line}: label {label:?} is not a non-negative integer"))?;
        if Path::new(path).is_absolute() || path.split('/').any(|c| c == "..") {
            bail!("{file}:{line}: path {path:?} must be relative to the dataset root");
        }
        out.push(ListEntry {
            path: path.to_string(),
            label,
            line,
        });
    }
    if out.is_empty() {
        bail!("{file}: no entries");
    }
    Ok(out)
}

/// Parses ImageNet's `classnames.txt`: `<wnid> <name words…>` per line.
pub fn parse_wnid_names(bytes: &[u8], file: &str) -> Result<Vec<(String, String)>> {
    let text = std::str::from_utf8(bytes).with_context(|| format!("{file}: not UTF-8 text"))?;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if l.is_empty() {
            continue;
        }
        match l.split_once(char::is_whitespace) {
            Some((wnid, name)) if !name.trim().is_empty() => {
                out.push((wnid.to_string(), name.trim().to_string()))
            }
            _ => bail!("{file}:{}: expected `<wnid> <class name>`, found {l:?}", i + 1),
        }
    }
    if out.is_empty() {
        bail!("{file}: no class names");
    }
    Ok(out)
}

/// Parses Places-LT's `class_name_list.txt`: `<label> <name>` per line, labels 0..n once each.
pub fn parse_label_names(bytes: &[u8], file: &str) -> Result<Vec<String>> {
    let text = std::str::from_utf8(bytes).with_context(|| format!("{file}: not UTF-8 text"))?;
    let mut named: Vec<(usize, String, usize)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if l.is_empty() {
            continue;
        }
        let Some((label, name)) = l.split_once(char::is_whitespace) else {
            bail!("{file}:{}: expected `<label> <class name>`, found {l:?}", i + 1);
        };
        let label: usize = label
            .parse()
            .with_context(|| format!("{file}:{}: label {label:?} is not a non-negative integer", i + 1))?;
        named.push((label, name.trim().to_string(), i + 1));
    }
    if named.is_empty() {
        bail!("{file}: no class names");
    }
    let n = named.len();
    let mut names: Vec<Option<String>> = vec![None; n];
    for (label, name, line) in named {
        if label >= n {
            bail!("{file}:{line}: label {label} but the file names {n} classes (labels must be 0..{n})");
        }
        if names[label].is_some() {
            bail!("{file}:{line}: label {label} named twice");
        }
        names[label] = Some(name);
    }
    Ok(names.into_iter().map(|n| n.unwrap_or_default()).collect())
}

fn find(root: &Path, sub: &str, name: &str) -> Result<PathBuf> {
    let candidates = [root.join(name), root.join(sub).join(name)];
    candidates.iter().find(|p| p.is_file()).cloned().with_context(|| {
        format!(
            "{name} not found (looked at {} and {})",
            candidates[0].display(),
            candidates[1].display()
        )
    })
}

/// Loads an ImageNet-LT or Places-LT root. With `check_images`, every listed image must
/// exist; the error names the list file and line of the first missing one and the archive
/// that provides it.
pub fn load(kind: ListDataset, root: &Path, check_images: bool) -> Result<Dataset> {
    let (train_name, test_name, names_name, sub) = kind.files();
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let train_path = find(root, sub, train_name)?;
    let test_path = find(root, sub, test_name)?;
    let names_path = find(root, sub, names_name)?;
    let train = parse_list(&read(&train_path)?, &train_path.display().to_string())?;
    let test = parse_list(&read(&test_path)?, &test_path.display().to_string())?;
    let names_file = names_path.display().to_string();
    let classes = match kind {
        ListDataset::PlacesLt => parse_label_names(&read(&names_path)?, &names_file)?,
        ListDataset::ImageNetLt => {
            let wnids = parse_wnid_names(&read(&names_path)?, &names_file)?;
            imagenet_names(&wnids, &train)?
        }
    };
    let n_classes = classes.len();
    for (entries, path) in [(&train, &train_path), (&test, &test_path)] {
        if let Some(e) = entries.iter().find(|e| e.label as usize >= n_classes) {
            bail!(
                "{}:{}: label {} out of range ({} names {n_classes} classes)",
                path.display(),
                e.line,
                e.label,
                names_file
            );
        }
    }
    let (k_train, k_test, k_classes) = kind.known_sizes();
    if (train.len(), test.len(), n_classes) != (k_train, k_test, k_classes) {
        tracing::warn!(
            "{}: {} train / {} test images, {n_classes} classes; the published {} has \
             {k_train} / {k_test}, {k_classes} classes",
            root.display(),
            train.len(),
            test.len(),
            kind.name()
        );
    }
    if check_images {
        for (entries, path) in [(&train, &train_path), (&test, &test_path)] {
            check_exist(kind, root, entries, path)?;
        }
    }
    let split = |entries: Vec<ListEntry>| Split {
        labels: entries.iter().map(|e| e.label).collect(),
        coarse: None,
        images: Images::Files(entries.iter().map(|e| root.join(&e.path)).collect()),
    };
    let ds = Dataset {
        name: kind.name().into(),
        classes,
        coarse_classes: None,
        train: split(train),
        test: split(test),
    };
    ds.validate()?;
    Ok(ds)
}

fn imagenet_names(wnids: &[(String, String)], train: &[ListEntry]) -> Result<Vec<String>> {
    let by_wnid: HashMap<&str, &str> = wnids.iter().map(|(w, n)| (w.as_str(), n.as_str())).collect();
    let n = wnids.len();
    let mut names: Vec<Option<String>> = vec![None; n];
    for e in train {
        let l = e.label as usize;
        if l < n && names[l].is_none() {
            if let Some(name) = e.path.split('/').find_map(|c| by_wnid.get(c)) {
                names[l] = Some(name.to_string());
            }
        }
    }
    // Labels whose images name no wnid folder take the class-name file's line order.
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(l, n)| n.unwrap_or_else(|| wnids[l].1.clone()))
        .collect())
}

fn check_exist(kind: ListDataset, root: &Path, entries: &[ListEntry], list: &Path) -> Result<()> {
    let missing: Vec<&ListEntry> = entries.iter().filter(|e| !root.join(&e.path).is_file()).collect();
    let Some(first) = missing.first() else {
        return Ok(());
    };
    let top = first.path.split('/').next().unwrap_or("");
    let top_dir = root.join(top);
    let why = if !top_dir.exists() {
        format!(
            "{} does not exist: extract {} under {}",
            top_dir.display(),
            kind.archive_hint(top),
            root.display()
        )
    } else {
        format!(
            "{} exists but is incomplete: re-extract {}",
            top_dir.display(),
            kind.archive_hint(top)
        )
    };
    bail!(
        "{} of {} images listed in {} are missing; the first is {} ({}:{}). {why}",
        missing.len(),
        entries.len(),
        list.display(),
        root.join(&first.path).display(),
        list.display(),
        first.line
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn write_places(root: &Path, with_images: bool) {
        std::fs::write(
            root.join("class_name_list.txt"),
            "0 airfield\n1 alley\n2 art_gallery\n",
        )
        .unwrap();
        std::fs::write(
            root.join("Places_LT_train.txt"),
            "data_256/a/airfield/1.jpg 0\ndata_256/a/airfield/2.jpg 0\ndata_256/a/alley/1.jpg 1\ndata_256/a/art/1.jpg 2\n",
        )
        .unwrap();
        std::fs::write(
            root.join("Places_LT_test.txt"),
            "val_256/1.jpg 1\nval_256/2.jpg 2\n\n",
        )
        .unwrap();
        if with_images {
            for p in [
                "data_256/a/airfield/1.jpg",
                "data_256/a/airfield/2.jpg",
                "data_256/a/alley/1.jpg",
                "data_256/a/art/1.jpg",
                "val_256/1.jpg",
                "val_256/2.jpg",
            ] {
                let f = root.join(p);
                std::fs::create_dir_all(f.parent().unwrap()).unwrap();
                image::RgbImage::new(4, 4)
                    .save_with_format(&f, image::ImageFormat::Jpeg)
                    .unwrap();
            }
        }
    }

    #[test]
    fn loads_places_layout() {
        let d = tempfile::tempdir().unwrap();
        write_places(d.path(), true);
        let ds = load(ListDataset::PlacesLt, d.path(), true).unwrap();
        assert_eq!(ds.classes, vec!["airfield", "alley", "art_gallery"]);
        assert_eq!(ds.prompt_name(2), "art gallery");
        assert_eq!(ds.train.labels, vec![0, 0, 1, 2]);
        assert_eq!(ds.test.len(), 2);
        assert_eq!(ds.train.decode(0).unwrap().dimensions(), (4, 4));
    }

    #[test]
    fn missing_images_name_list_line_and_archive() {
        let d = tempfile::tempdir().unwrap();
        write_places(d.path(), false);
        let err = load(ListDataset::PlacesLt, d.path(), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("4 of 4 images"), "{err}");
        assert!(err.contains("Places_LT_train.txt:1"), "{err}");
        assert!(err.contains("data_256 does not exist"), "{err}");
        assert!(load(ListDataset::PlacesLt, d.path(), false).is_ok());
    }

    #[test]
    fn imagenet_names_come_from_the_wnid_folders() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("ImageNet_LT");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(
            sub.join("classnames.txt"),
            "n01 tench\nn02 goldfish\nn03 great white shark\n",
        )
        .unwrap();
        // Label 0 is stored under n02's folder: the wnid decides the name.
        std::fs::write(
            sub.join("ImageNet_LT_train.txt"),
            "train/n02/a.JPEG 0\ntrain/n01/b.JPEG 1\ntrain/x/c.JPEG 2\n",
        )
        .unwrap();
        std::fs::write(sub.join("ImageNet_LT_test.txt"), "val/n01/a.JPEG 1\n").unwrap();
        let ds = load(ListDataset::ImageNetLt, d.path(), false).unwrap();
        assert_eq!(ds.classes, vec!["goldfish", "tench", "great white shark"]);
        let err = load(ListDataset::ImageNetLt, d.path(), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ILSVRC2012_img_train.tar"), "{err}");
    }

    #[test]
    fn bad_lines_are_named() {
        let err = parse_list(b"a.jpg 1\nb.jpg\n", "L.txt").unwrap_err().to_string();
        assert!(err.contains("L.txt:2"), "{err}");
        let err = format!("{:#}", parse_list(b"a.jpg -1\n", "L.txt").unwrap_err());
        assert!(err.contains("L.txt:1") && err.contains("\"-1\""), "{err}");
        let err = parse_list(b"/etc/passwd 1\n", "L.txt").unwrap_err().to_string();
        assert!(err.contains("relative"), "{err}");
        let d = tempfile::tempdir().unwrap();
        write_places(d.path(), false);
        std::fs::write(d.path().join("Places_LT_test.txt"), "val_256/1.jpg 9\n").unwrap();
        let err = load(ListDataset::PlacesLt, d.path(), false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Places_LT_test.txt:1: label 9 out of range"),
            "{err}"
        );
        let err = parse_label_names(b"0 a\n0 b\n", "N.txt").unwrap_err().to_string();
        assert!(err.contains("N.txt:2") && err.contains("twice"), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_list(&bytes, "f");
            let _ = parse_wnid_names(&bytes, "f");
            let _ = parse_label_names(&bytes, "f");
        }

        #[test]
        fn parsers_never_panic_on_text(text in "[a-z0-9_/ .\\-\n]{0,200}") {
            if let Ok(v) = parse_list(text.as_bytes(), "f") {
                prop_assert!(v.iter().all(|e| e.line >= 1));
            }
            let _ = parse_label_names(text.as_bytes(), "f");
            let _ = parse_wnid_names(text.as_bytes(), "f");
        }
    }
}

//! CIFAR-100 in both distributed formats, fully validated.
//!
//! * Python version, `cifar-100-python/{train,test,meta}`: pickles (Python 2 `cPickle` in
//!   the official archive, any protocol 2–5 accepted) holding a dict with `data` (a numpy
//!   `uint8` array N × 3072, channel planes R, G, B of 32 × 32 each), `fine_labels` and
//!   `coarse_labels` (lists of N ints); `meta` holds `fine_label_names` and
//!   `coarse_label_names`.
//! * Binary version, `cifar-100-binary/{train,test}.bin`: records of
//!   `[coarse u8][fine u8][3072 u8]`, with `fine_label_names.txt` and
//!   `coarse_label_names.txt` (one name a line).
//!
//! [`load`] accepts the folder holding `cifar-100-python/` or `cifar-100-binary/` (or a
//! `cifar-100/` folder with them, the reference's layout), or either folder itself. Every
//! error names the file and the field.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::dataset::{Dataset, Images, Split};
use super::pickle::{self, Value};

/// Bytes of one CIFAR image (3 planes of 32 × 32).
pub const IMAGE_BYTES: usize = 3 * 32 * 32;

/// Which on-disk format a CIFAR-100 folder uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `cifar-100-python/` pickles.
    Python,
    /// `cifar-100-binary/` records.
    Binary,
}

/// Finds the CIFAR-100 folder under `root`: returns the folder and its format.
pub fn locate(root: &Path) -> Result<(PathBuf, Format)> {
    let mut tried = Vec::new();
    for base in [root.to_path_buf(), root.join("cifar-100")] {
        for (name, format) in [
            ("cifar-100-python", Format::Python),
            ("cifar-100-binary", Format::Binary),
        ] {
            let dir = base.join(name);
            if dir.is_dir() {
                return Ok((dir, format));
            }
            tried.push(dir);
        }
    }
    if root.join("meta").is_file() && root.join("train").is_file() {
        return Ok((root.to_path_buf(), Format::Python));
    }
    if root.join("train.bin").is_file() {
        return Ok((root.to_path_buf(), Format::Binary));
    }
    bail!(
        "no CIFAR-100 data under {}: looked for {} (extract cifar-100-python.tar.gz or \
         cifar-100-binary.tar.gz there)",
        root.display(),
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Loads CIFAR-100 (train 50 000 / test 10 000 images in the official files; any size is
/// accepted) from `root`; see [`locate`].
pub fn load(root: &Path) -> Result<Dataset> {
    let (dir, format) = locate(root)?;
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    let label = |name: &str| dir.join(name).display().to_string();
    let (classes, coarse_classes, train, test) = match format {
        Format::Python => {
            let (fine, coarse) = parse_pickle_meta(&read("meta")?, &label("meta"))?;
            let train = parse_pickle_split(&read("train")?, &label("train"), fine.len(), coarse.len())?;
            let test = parse_pickle_split(&read("test")?, &label("test"), fine.len(), coarse.len())?;
            (fine, coarse, train, test)
        }
        Format::Binary => {
            let fine = parse_names(&read("fine_label_names.txt")?, &label("fine_label_names.txt"))?;
            let coarse = parse_names(&read("coarse_label_names.txt")?, &label("coarse_label_names.txt"))?;
            let train =
                parse_binary_split(&read("train.bin")?, &label("train.bin"), fine.len(), coarse.len())?;
            let test = parse_binary_split(&read("test.bin")?, &label("test.bin"), fine.len(), coarse.len())?;
            (fine, coarse, train, test)
        }
    };
    let ds = Dataset {
        name: "cifar100".into(),
        classes,
        coarse_classes: Some(coarse_classes),
        train,
        test,
    };
    ds.validate()?;
    if ds.train.len() != 50_000 || ds.test.len() != 10_000 {
        tracing::info!(
            "{}: {} train / {} test images (the official CIFAR-100 has 50000 / 10000)",
            dir.display(),
            ds.train.len(),
            ds.test.len()
        );
    }
    Ok(ds)
}

fn field<'a>(dict: &'a Value, file: &str, name: &str) -> Result<&'a Value> {
    dict.get(name)
        .with_context(|| format!("{file}: field `{name}` is missing"))
}

fn string_list(v: &Value, file: &str, name: &str) -> Result<Vec<String>> {
    let items = v
        .as_seq()
        .with_context(|| format!("{file}: field `{name}` is {}, expected a list", pickle::kind(v)))?;
    let names = items
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.to_string_lossless().with_context(|| {
                format!(
                    "{file}: field `{name}` entry {i} is {}, expected a string",
                    pickle::kind(s)
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if names.is_empty() {
        bail!("{file}: field `{name}` is empty");
    }
    Ok(names)
}

fn label_list(v: &Value, file: &str, name: &str, n_classes: usize) -> Result<Vec<u32>> {
    let items = v
        .as_seq()
        .with_context(|| format!("{file}: field `{name}` is {}, expected a list", pickle::kind(v)))?;
    items
        .iter()
        .enumerate()
        .map(|(i, x)| match x {
            Value::Int(y) if (0..n_classes as i64).contains(y) => Ok(*y as u32),
            Value::Int(y) => {
                bail!("{file}: field `{name}` entry {i} is {y}, expected a label in 0..{n_classes}")
            }
            other => bail!(
                "{file}: field `{name}` entry {i} is {}, expected an int",
                pickle::kind(other)
            ),
        })
        .collect()
}

/// Parses `cifar-100-python/meta`: the fine and coarse class names.
pub fn parse_pickle_meta(bytes: &[u8], file: &str) -> Result<(Vec<String>, Vec<String>)> {
    let v = pickle::parse(bytes).with_context(|| format!("{file}: not a valid pickle"))?;
    if !matches!(v, Value::Dict(_)) {
        bail!("{file}: holds {}, expected a dict", pickle::kind(&v));
    }
    let fine = string_list(field(&v, file, "fine_label_names")?, file, "fine_label_names")?;
    let coarse = string_list(field(&v, file, "coarse_label_names")?, file, "coarse_label_names")?;
    Ok((fine, coarse))
}

/// Parses `cifar-100-python/train` or `test`, checking shapes, lengths and label ranges.
pub fn parse_pickle_split(bytes: &[u8], file: &str, n_fine: usize, n_coarse: usize) -> Result<Split> {
    let v = pickle::parse(bytes).with_context(|| format!("{file}: not a valid pickle"))?;
    if !matches!(v, Value::Dict(_)) {
        bail!("{file}: holds {}, expected a dict", pickle::kind(&v));
    }
    let arr =
        pickle::ndarray_u8(field(&v, file, "data")?).with_context(|| format!("{file}: field `data`"))?;
    if arr.shape.len() != 2 || arr.shape[1] != IMAGE_BYTES {
        bail!(
            "{file}: field `data` has shape {:?}, expected (N, {IMAGE_BYTES})",
            arr.shape
        );
    }
    let n = arr.shape[0];
    let labels = label_list(field(&v, file, "fine_labels")?, file, "fine_labels", n_fine)?;
    let coarse = label_list(field(&v, file, "coarse_labels")?, file, "coarse_labels", n_coarse)?;
    for (name, len) in [("fine_labels", labels.len()), ("coarse_labels", coarse.len())] {
        if len != n {
            bail!("{file}: field `{name}` has {len} entries but `data` has {n} images");
        }
    }
    Ok(Split {
        labels,
        coarse: Some(coarse),
        images: Images::Planes {
            width: 32,
            height: 32,
            data: arr.data.to_vec(),
        },
    })
}

/// Parses `cifar-100-binary/train.bin` or `test.bin`.
pub fn parse_binary_split(bytes: &[u8], file: &str, n_fine: usize, n_coarse: usize) -> Result<Split> {
    const RECORD: usize = 2 + IMAGE_BYTES;
    if bytes.is_empty() {
        bail!("{file}: empty file");
    }
    if !bytes.len().is_multiple_of(RECORD) {
        bail!(
            "{file}: {} bytes is not a whole number of {RECORD}-byte records \
             (truncated? the last record has {} bytes)",
            bytes.len(),
            bytes.len() % RECORD
        );
    }
    let n = bytes.len() / RECORD;
    let mut labels = Vec::with_capacity(n);
    let mut coarse = Vec::with_capacity(n);
    let mut data = Vec::with_capacity(n * IMAGE_BYTES);
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        let (c, f) = (rec[0] as usize, rec[1] as usize);
        if c >= n_coarse {
            bail!(
                "{file}: record {i} (byte {}): coarse label {c}, expected 0..{n_coarse}",
                i * RECORD
            );
        }
        if f >= n_fine {
            bail!(
                "{file}: record {i} (byte {}): fine label {f}, expected 0..{n_fine}",
                i * RECORD + 1
            );
        }
        coarse.push(c as u32);
        labels.push(f as u32);
        data.extend_from_slice(&rec[2..]);
    }
    Ok(Split {
        labels,
        coarse: Some(coarse),
        images: Images::Planes {
            width: 32,
            height: 32,
            data,
        },
    })
}

/// Parses a label-name file (one name a line; blank lines ignored).
pub fn parse_names(bytes: &[u8], file: &str) -> Result<Vec<String>> {
    let text = std::str::from_utf8(bytes).with_context(|| format!("{file}: not UTF-8 text"))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.is_empty() {
        bail!("{file}: no class names");
    }
    Ok(names)
}

#[cfg(test)]
pub(crate) mod fixture {
    //! Tiny CIFAR-100 folders written from Rust, in both formats.

    use super::super::pickle::writer::{Flavour, W};
    use std::path::Path;

    /// A deterministic tiny split: `n` images with labels `i % n_fine`, coarse `f % n_coarse`.
    pub fn split(n: usize, n_fine: usize, n_coarse: usize, salt: u8) -> (Vec<i64>, Vec<i64>, Vec<u8>) {
        let fine: Vec<i64> = (0..n).map(|i| (i % n_fine) as i64).collect();
        let coarse: Vec<i64> = fine.iter().map(|&f| f % n_coarse as i64).collect();
        let data: Vec<u8> = (0..n * super::IMAGE_BYTES)
            .map(|k| (k as u32).wrapping_mul(2654435761).wrapping_add(salt as u32) as u8 >> 1)
            .collect();
        (fine, coarse, data)
    }

    /// Pickle bytes of a split.
    pub fn pickle_split(flavour: Flavour, fine: &[i64], coarse: &[i64], data: &[u8]) -> Vec<u8> {
        let mut w = W::new(flavour);
        let n = data.len() / super::IMAGE_BYTES;
        w.dict(vec![
            (
                "filenames",
                Box::new(move |w: &mut W| w.list_of(&vec!["x.png"; n], |w, s| w.text(s))),
            ),
            (
                "batch_label",
                Box::new(|w: &mut W| w.text("training batch 1 of 1")),
            ),
            (
                "fine_labels",
                Box::new(|w: &mut W| w.list_of(fine, |w, &v| w.int(v))),
            ),
            (
                "coarse_labels",
                Box::new(|w: &mut W| w.list_of(coarse, |w, &v| w.int(v))),
            ),
            (
                "data",
                Box::new(move |w: &mut W| w.ndarray_u8(&[n, super::IMAGE_BYTES], data)),
            ),
        ]);
        w.finish()
    }

    /// Pickle bytes of `meta`.
    pub fn pickle_meta(flavour: Flavour, fine: &[String], coarse: &[String]) -> Vec<u8> {
        let mut w = W::new(flavour);
        w.dict(vec![
            (
                "fine_label_names",
                Box::new(|w: &mut W| w.list_of(fine, |w, s| w.text(s))),
            ),
            (
                "coarse_label_names",
                Box::new(|w: &mut W| w.list_of(coarse, |w, s| w.text(s))),
            ),
        ]);
        w.finish()
    }

    /// Binary records of a split.
    pub fn binary_split(fine: &[i64], coarse: &[i64], data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (f, c)) in fine.iter().zip(coarse).enumerate() {
            out.push(*c as u8);
            out.push(*f as u8);
            out.extend_from_slice(&data[i * super::IMAGE_BYTES..(i + 1) * super::IMAGE_BYTES]);
        }
        out
    }

    /// Class names `class_0`, `class_1`, … (the first has an underscore-bearing name).
    pub fn names(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}_{i}")).collect()
    }

    /// Writes a tiny CIFAR-100-like folder (`n_train`, `n_test` images) in the reference's
    /// layout `root/cifar-100/cifar-100-{python,binary}`.
    pub fn write(root: &Path, python: bool, n_fine: usize, n_coarse: usize, n_train: usize, n_test: usize) {
        let fine_names = names("fine", n_fine);
        let coarse_names = names("coarse", n_coarse);
        let (trf, trc, trd) = split(n_train, n_fine, n_coarse, 1);
        let (tef, tec, ted) = split(n_test, n_fine, n_coarse, 2);
        if python {
            let dir = root.join("cifar-100/cifar-100-python");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("meta"),
                pickle_meta(Flavour::Py2, &fine_names, &coarse_names),
            )
            .unwrap();
            std::fs::write(dir.join("train"), pickle_split(Flavour::Py2, &trf, &trc, &trd)).unwrap();
            std::fs::write(dir.join("test"), pickle_split(Flavour::Py3, &tef, &tec, &ted)).unwrap();
        } else {
            let dir = root.join("cifar-100/cifar-100-binary");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("fine_label_names.txt"), fine_names.join("\n") + "\n").unwrap();
            std::fs::write(dir.join("coarse_label_names.txt"), coarse_names.join("\n")).unwrap();
            std::fs::write(dir.join("train.bin"), binary_split(&trf, &trc, &trd)).unwrap();
            std::fs::write(dir.join("test.bin"), binary_split(&tef, &tec, &ted)).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::pickle::writer::Flavour;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn both_formats_load_the_same_dataset() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        fixture::write(a.path(), true, 10, 5, 30, 20);
        fixture::write(b.path(), false, 10, 5, 30, 20);
        let pa = load(a.path()).unwrap();
        let pb = load(b.path()).unwrap();
        assert_eq!(pa.classes, pb.classes);
        assert_eq!(pa.coarse_classes, pb.coarse_classes);
        assert_eq!(pa.train.labels, pb.train.labels);
        assert_eq!(pa.test.coarse, pb.test.coarse);
        assert_eq!(pa.train.len(), 30);
        assert_eq!(pa.test.len(), 20);
        let (Images::Planes { data: da, .. }, Images::Planes { data: db, .. }) =
            (&pa.train.images, &pb.train.images)
        else {
            panic!()
        };
        assert_eq!(da, db);
        assert_eq!(pa.train.decode(3).unwrap(), pb.train.decode(3).unwrap());
        assert_eq!(
            pa.fine_to_coarse().unwrap(),
            (0..10).map(|f| f % 5).collect::<Vec<u32>>()
        );
        // Pointing at the format folder itself works too.
        assert!(load(&a.path().join("cifar-100/cifar-100-python")).is_ok());
    }

    #[test]
    fn missing_folder_names_the_archives() {
        let d = tempfile::tempdir().unwrap();
        let err = format!("{:#}", load(d.path()).unwrap_err());
        assert!(err.contains("cifar-100-python.tar.gz"), "{err}");
    }

    #[test]
    fn truncated_binary_names_file_and_size() {
        let (f, c, d) = fixture::split(3, 10, 5, 0);
        let bytes = binary_split_prefix(&f, &c, &d, 100);
        let err = parse_binary_split(&bytes, "train.bin", 10, 5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("train.bin") && err.contains("truncated"), "{err}");
    }

    fn binary_split_prefix(f: &[i64], c: &[i64], d: &[u8], cut: usize) -> Vec<u8> {
        let mut b = fixture::binary_split(f, c, d);
        b.truncate(b.len() - cut);
        b
    }

    #[test]
    fn label_out_of_range_names_field_and_entry() {
        let (mut f, c, d) = fixture::split(4, 10, 5, 0);
        f[2] = 10;
        let bytes = fixture::pickle_split(Flavour::Py3, &f, &c, &d);
        let err = parse_pickle_split(&bytes, "train", 10, 5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`fine_labels` entry 2 is 10"), "{err}");
        let bytes = fixture::binary_split(&f, &c, &d);
        let err = parse_binary_split(&bytes, "train.bin", 10, 5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("record 2") && err.contains("fine label 10"), "{err}");
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let (f, c, d) = fixture::split(4, 10, 5, 0);
        let bytes = fixture::pickle_split(Flavour::Py2, &f[..3], &c, &d);
        let err = format!("{:#}", parse_pickle_split(&bytes, "test", 10, 5).unwrap_err());
        assert!(err.contains("`fine_labels` has 3 entries"), "{err}");
        let err = format!(
            "{:#}",
            parse_pickle_split(&bytes[..bytes.len() / 2], "test", 10, 5).unwrap_err()
        );
        assert!(
            err.contains("test: not a valid pickle") && err.contains("truncated"),
            "{err}"
        );
    }

    #[test]
    fn missing_field_is_named() {
        let bytes = fixture::pickle_meta(Flavour::Py3, &fixture::names("a", 3), &fixture::names("b", 2));
        let err = parse_pickle_split(&bytes, "train", 10, 5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("field `data` is missing"), "{err}");
    }

    fn valid_pickle() -> Vec<u8> {
        let (f, c, d) = fixture::split(2, 10, 5, 0);
        fixture::pickle_split(Flavour::Py2, &f, &c, &d)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn pickle_parser_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_pickle_split(&bytes, "f", 100, 20);
            let _ = parse_pickle_meta(&bytes, "f");
        }

        #[test]
        fn pickle_parser_never_panics_on_mutations(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = valid_pickle();
            for (at, b) in edits {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            let _ = parse_pickle_split(&bytes, "f", 10, 5);
            let n = cut.index(bytes.len());
            prop_assert!(parse_pickle_split(&valid_pickle()[..n], "f", 10, 5).is_err());
        }

        #[test]
        fn binary_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..8000)) {
            if let Ok(s) = parse_binary_split(&bytes, "f", 100, 20) {
                prop_assert_eq!(s.len() * 3074, bytes.len());
            }
            let _ = parse_names(&bytes, "f");
        }
    }
}

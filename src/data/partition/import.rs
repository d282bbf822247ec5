//! `--split-file`: a partition read from JSON, for exact parity with a reference run.
//!
//! Two layouts are accepted:
//! * the reference export (`tests/fixtures/reference-run-prompt/partition.json`):
//!   `lt_train_rows`, `cls_num_list`, `head_classes` / `mid_classes` / `tail_classes`,
//!   `clients: [{train_rows, test_rows}]`;
//! * our own `partition.json` (`class_counts`, `groups`, `lt_train`, `clients: [{train,
//!   test}]`; `lt_train` and `groups` may be left out and are then derived).
//!
//! The file is checked for shape here; [`Partition::check`] then checks it against the
//! dataset (index ranges, counts equal to the dataset's labels).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::{ClientSplit, Partition, PartitionMeta};
use crate::data::longtail::ClassGroups;

#[derive(Deserialize)]
struct RefClient {
    train_rows: Vec<usize>,
    test_rows: Vec<usize>,
}

#[derive(Deserialize)]
struct RefFile {
    lt_train_rows: Vec<usize>,
    cls_num_list: Vec<usize>,
    head_classes: Vec<usize>,
    mid_classes: Vec<usize>,
    tail_classes: Vec<usize>,
    clients: Vec<RefClient>,
}

#[derive(Deserialize)]
struct OwnFile {
    #[serde(default)]
    meta: Option<PartitionMeta>,
    class_counts: Vec<usize>,
    #[serde(default)]
    groups: Option<ClassGroups>,
    #[serde(default)]
    lt_train: Option<Vec<usize>>,
    clients: Vec<ClientSplit>,
}

/// Reads a split file (either layout) from `path`.
pub fn read(path: &Path) -> Result<Partition> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read split file {}", path.display()))?;
    parse(&text, &path.display().to_string())
}

/// Parses split-file text; `source` names it in errors and in the partition's metadata.
pub fn parse(text: &str, source: &str) -> Result<Partition> {
    let value: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("{source}: not valid JSON"))?;
    let p = if value.get("lt_train_rows").is_some() {
        let f: RefFile = serde_json::from_value(value)
            .with_context(|| format!("{source}: not a reference split export"))?;
        let groups = ClassGroups {
            many: f.head_classes,
            medium: f.mid_classes,
            few: f.tail_classes,
        };
        if groups != ClassGroups::from_counts(&f.cls_num_list) {
            bail!("{source}: head/mid/tail classes disagree with cls_num_list (> 100, 21–100, ≤ 20)");
        }
        Partition {
            meta: PartitionMeta {
                scheme: "imported".into(),
                source: Some(source.into()),
                ..PartitionMeta::default()
            },
            class_counts: f.cls_num_list,
            groups,
            lt_train: f.lt_train_rows,
            clients: f
                .clients
                .into_iter()
                .map(|c| ClientSplit {
                    train: c.train_rows,
                    test: c.test_rows,
                })
                .collect(),
        }
    } else {
        let f: OwnFile = serde_json::from_value(value).with_context(|| {
            format!("{source}: expected `class_counts` and `clients: [{{train, test}}]` (or a reference export with `lt_train_rows`)")
        })?;
        let groups = ClassGroups::from_counts(&f.class_counts);
        if let Some(g) = &f.groups {
            if *g != groups {
                bail!("{source}: `groups` disagree with `class_counts` (> 100, 21–100, ≤ 20)");
            }
        }
        let lt_train = f.lt_train.unwrap_or_else(|| {
            let mut v: Vec<usize> = f.clients.iter().flat_map(|c| c.train.iter().copied()).collect();
            v.sort_unstable();
            v
        });
        let mut meta = f.meta.unwrap_or_default();
        meta.source = Some(source.into());
        Partition {
            meta,
            class_counts: f.class_counts,
            groups,
            lt_train,
            clients: f.clients,
        }
    };
    if p.clients.is_empty() {
        bail!("{source}: no clients");
    }
    let total: usize = p.class_counts.iter().sum();
    if total != p.lt_train.len() {
        bail!(
            "{source}: class counts add up to {total}, but the long-tailed train list has {} entries",
            p.lt_train.len()
        );
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/reference-run-prompt/partition.json"
    );

    #[test]
    fn reference_fixture_imports_and_round_trips() {
        let p = read(Path::new(FIXTURE)).unwrap();
        assert_eq!(p.clients.len(), 20);
        assert_eq!(p.lt_train.len(), 10_847);
        assert_eq!(p.class_counts.iter().sum::<usize>(), 10_847);
        assert_eq!(
            (p.groups.many.len(), p.groups.medium.len(), p.groups.few.len()),
            (35, 34, 31)
        );
        // ⌊20 847 / 20⌋ pooled samples per client, as labeldir100 draws them.
        assert!(p.clients.iter().all(|c| c.train.len() + c.test.len() == 1042));
        assert_eq!(p.clients[0].train.len(), 558);
        assert_eq!(p.clients[0].test.len(), 484);
        // Export in our layout and read back: identical.
        let json = p.to_json().unwrap();
        let q = parse(&json, FIXTURE).unwrap();
        assert_eq!(p, q);
        // The raw fixture and our export agree index for index.
        let raw: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap();
        let first: Vec<usize> = serde_json::from_value(raw["clients"][3]["train_rows"].clone()).unwrap();
        assert_eq!(q.clients[3].train, first);
    }

    #[test]
    fn bad_files_are_named() {
        let err = format!("{:#}", parse("{", "s.json").unwrap_err());
        assert!(err.contains("s.json: not valid JSON"), "{err}");
        let err = format!("{:#}", parse(r#"{"clients": []}"#, "s.json").unwrap_err());
        assert!(err.contains("class_counts"), "{err}");
        let err = format!(
            "{:#}",
            parse(
                r#"{"class_counts": [2], "lt_train": [0], "clients": [{"train": [0], "test": []}]}"#,
                "s.json"
            )
            .unwrap_err()
        );
        assert!(err.contains("add up to 2"), "{err}");
    }
}

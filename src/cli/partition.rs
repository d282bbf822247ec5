//! `fedpurel partition`: load a dataset, cut the long tail, split it over clients, print
//! the profile and a per-client summary, write `partition.json` and `partition.png`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use crate::data::partition::ClientStats;
use crate::data::{ClassGroups, Partition};
use crate::report;
use crate::setup::data::DataArgs;

/// Arguments of `fedpurel partition`.
#[derive(Debug, clap::Args)]
pub struct PartitionArgs {
    /// Dataset, long-tail cut and split.
    #[command(flatten)]
    pub data: DataArgs,
    /// Output folder for partition.json and partition.png.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Print the summary as JSON on stdout instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Runs `fedpurel partition`.
pub fn run(args: PartitionArgs) -> Result<()> {
    let t0 = Instant::now();
    let (ds, partition) = args.data.load()?;
    let elapsed = t0.elapsed();
    let c = ds.num_classes();

    let stats = partition.client_stats(&ds.train.labels, &ds.test.labels, c);
    let matrix = partition.train_class_matrix(&ds.train.labels, c);
    let g = &partition.groups;
    let title = format!(
        "Training images per client and class: {}, {} clients, {} classes",
        ds.name,
        partition.clients.len(),
        c
    );
    let json_path = args.out.join("partition.json");
    let png_path = args.out.join("partition.png");
    report::atomic::write(&json_path, partition.to_json()?.as_bytes())?;
    report::atomic::write(
        &png_path,
        &report::heatmap::render_png(
            &matrix,
            &partition.class_counts,
            [g.many.len(), g.medium.len(), g.few.len()],
            &title,
        )?,
    )?;

    if args.json {
        let summary = json!({
            "dataset": ds.name,
            "meta": partition.meta,
            "lt_train": partition.lt_train.len(),
            "class_counts": partition.class_counts,
            "groups": partition.groups,
            "clients": stats,
            "files": { "partition": json_path, "heatmap": png_path },
            "seconds": { "load_and_split": elapsed.as_secs_f64() },
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_profile(&partition, &ds.classes);
        print_clients(&stats);
        println!(
            "\nwrote {} and {} (rows = clients 0–{} top to bottom, columns = the {} classes by \
             long-tailed training count, head on the left, split at Many | Medium | Few; colour = \
             images per client and class, log scale)",
            json_path.display(),
            png_path.display(),
            stats.len().saturating_sub(1),
            c
        );
        println!("load + long tail + split {:.2} s", elapsed.as_secs_f64());
    }
    Ok(())
}

/// `0–34, 40, 42–43` style list of sorted class indices.
fn ranges(classes: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < classes.len() {
        let mut j = i;
        while j + 1 < classes.len() && classes[j + 1] == classes[j] + 1 {
            j += 1;
        }
        out.push(if j == i {
            classes[i].to_string()
        } else {
            format!("{}–{}", classes[i], classes[j])
        });
        i = j + 1;
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(", ")
    }
}

fn print_profile(p: &Partition, names: &[String]) {
    let counts = &p.class_counts;
    let total: usize = counts.iter().sum();
    let (max, min) = (
        counts.iter().max().copied().unwrap_or(0),
        counts.iter().min().copied().unwrap_or(0),
    );
    println!(
        "Long-tail profile: {total} training images over {} classes (max {max}, min {min}, ratio {:.1})",
        counts.len(),
        max as f64 / min.max(1) as f64
    );
    for (row, chunk) in counts.chunks(10).enumerate() {
        let cells: Vec<String> = chunk.iter().map(|n| format!("{n:>5}")).collect();
        println!(
            "  {:>4}–{:<4}{}",
            row * 10,
            row * 10 + chunk.len() - 1,
            cells.join("")
        );
    }
    let ClassGroups { many, medium, few } = &p.groups;
    let show = |v: &[usize]| -> String {
        if v.len() <= 8 {
            v.iter()
                .map(|&c| names.get(c).map_or("?", |s| s.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            ranges(v)
        }
    };
    println!("Many   (> 100):     {:>4} classes: {}", many.len(), show(many));
    println!(
        "Medium (21–100):    {:>4} classes: {}",
        medium.len(),
        show(medium)
    );
    println!("Few    (≤ 20):      {:>4} classes: {}", few.len(), show(few));
}

fn print_clients(stats: &[ClientStats]) {
    println!("\nclient  train   test  train-classes  test-classes   many  medium    few");
    for (k, s) in stats.iter().enumerate() {
        println!(
            "{k:>6} {:>6} {:>6} {:>14} {:>13} {:>6} {:>7} {:>6}",
            s.train, s.test, s.train_classes, s.test_classes, s.many, s.medium, s.few
        );
    }
    let n = stats.len().max(1) as f64;
    let mean = |f: fn(&ClientStats) -> usize| stats.iter().map(|s| f(s) as f64).sum::<f64>() / n;
    println!(
        "  mean {:>6.1} {:>6.1} {:>14.1} {:>13.1} {:>6.1} {:>7.1} {:>6.1}",
        mean(|s| s.train),
        mean(|s| s.test),
        mean(|s| s.train_classes),
        mean(|s| s.test_classes),
        mean(|s| s.many),
        mean(|s| s.medium),
        mean(|s| s.few)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::partition::import;
    use crate::data::source::DatasetName;

    fn args(out: &std::path::Path) -> PartitionArgs {
        PartitionArgs {
            data: DataArgs {
                dataset: DatasetName::Synthetic,
                root: None,
                imb_factor: Some(10.0),
                clients: 5,
                alpha: 0.5,
                seed: 3,
                split: None,
                client_test: None,
                split_file: None,
                test_fraction: 0.5,
                no_image_check: false,
                synthetic_classes: 10,
                synthetic_train_per_class: 40,
                synthetic_test_per_class: 10,
                world_train_per_class: 500,
                world_test_per_class: 50,
                world_domain: crate::data::world::Domain::Downstream,
                world_seed: 0,
            },
            out: out.to_path_buf(),
            json: true,
        }
    }

    #[test]
    fn writes_a_partition_that_reimports_identically() {
        let d = tempfile::tempdir().unwrap();
        run(args(d.path())).unwrap();
        let json = std::fs::read_to_string(d.path().join("partition.json")).unwrap();
        let p = import::parse(&json, "p").unwrap();
        assert_eq!(p.clients.len(), 5);
        assert_eq!(p.meta.scheme, "labeldir100");
        assert!(image::open(d.path().join("partition.png")).is_ok());
        // Same seed, same bytes; and the file imports back through --split-file.
        let e = tempfile::tempdir().unwrap();
        run(args(e.path())).unwrap();
        assert_eq!(
            json,
            std::fs::read_to_string(e.path().join("partition.json")).unwrap()
        );
        let mut again = args(e.path());
        again.data.imb_factor = None;
        again.data.split_file = Some(d.path().join("partition.json"));
        run(again).unwrap();
    }

    #[test]
    fn ranges_compress_runs() {
        assert_eq!(ranges(&[0, 1, 2, 5, 7, 8]), "0–2, 5, 7–8");
        assert_eq!(ranges(&[]), "none");
    }
}

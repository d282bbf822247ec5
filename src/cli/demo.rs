//! `fedpurel demo`: the whole setting on a CPU in minutes, with nothing to download.
//! Zero-shot CLIP, PromptFL, PromptFolio and FedPuReL (prompt tuning) on the synthetic
//! world's long-tailed federated task (`--preset demo`, or `demo-quick` with `--quick`),
//! through the same grid runner as `fedpurel compare` — one resumable run directory per
//! algorithm and seed under the output folder — then the paper-style table (GM/PM ×
//! All/Many/Med/Few/balancedness) and the plots under `<out>/plots/`:
//!
//! * `per-class-accuracy.png` — each class's GM accuracy against its training count:
//!   zero-shot, PromptFL (plain federated fine-tuning) and FedPuReL;
//! * `rounds.png` — GM/PM accuracy and balancedness per round, every algorithm;
//! * `partition.png` — the clients × classes heatmap of the training split;
//! * `world-samples.png` — example images of the pretraining and the downstream domain.
//!
//! Plots show the first seed; the table is over all seeds (mean ± std from two on).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;

use super::compare::{cell_dir, parse_seeds, rows, run_grid, write_tables};
use crate::clip::Checkpoint;
use crate::data::dataset::SplitKind;
use crate::data::world::{self, Domain};
use crate::fed::record::RoundRecord;
use crate::pretrain::WorldPretrainSettings;
use crate::report::plots::{self, ClassSeries, RoundSeries};
use crate::report::run_dir::{RunDir, Summary};
use crate::report::{atomic, heatmap};
use crate::setup::presets::{demo_preset, DEMO_MODEL};
use crate::setup::RunConfig;

/// The algorithms the demo compares, in table order.
pub const ALGORITHMS: [&str; 4] = ["zeroshot", "promptfl", "promptfolio", "fedpurel"];

/// Arguments of `fedpurel demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The reduced size (10 clients, 200 training images per class before the long-tail
    /// cut, 20 test images per class, 6 rounds) instead of the full demo (20 clients,
    /// 300, 50, 25 rounds).
    #[arg(long)]
    pub quick: bool,
    /// CLIP checkpoint directory (the demo CLIP pretrained on the world ships in
    /// assets/demo-clip).
    #[arg(long, default_value = DEMO_MODEL)]
    pub model: PathBuf,
    /// Output folder (default runs/demo, runs/demo-quick with --quick).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Image-feature cache directory.
    #[arg(long, default_value = "runs/feature-cache")]
    pub cache_dir: PathBuf,
    /// Seeds, comma-separated (two or more: mean ± std in the table); default 1,2,3, or 1
    /// with --quick.
    #[arg(long)]
    pub seeds: Option<String>,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// What a demo produced.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// The Markdown table (also in `<out>/compare.md`).
    pub table: String,
    /// The plots written.
    pub plots: Vec<PathBuf>,
    /// Zero-shot GM accuracy on the downstream task (%, mean over seeds).
    pub zero_shot_gm: f64,
    /// The paper's claim checked against this run, in words ([`effect_lines`]).
    pub effect: Vec<String>,
    /// Wall time of the whole demo, seconds.
    pub seconds: f64,
}

/// Refuses a model directory that is not a readable checkpoint, naming it (before any
/// work).
fn check_model(model: &Path) -> Result<()> {
    Checkpoint::open(model).map(|_| ()).map_err(|e| {
        e.context(format!(
            "no usable CLIP checkpoint at {} (expected a directory with model.safetensors, \
             config.json and the tokenizer files); the demo's model is the demo CLIP shipped in \
             {DEMO_MODEL} — recreate it with `fedpurel pretrain --out {DEMO_MODEL}` (its defaults \
             are the shipped recipe: `{}`), or pass --model DIR",
            model.display(),
            WorldPretrainSettings::default().command_line(Path::new(DEMO_MODEL))
        ))
    })
}

/// Runs `fedpurel demo`.
pub fn run(args: DemoArgs) -> Result<()> {
    let default_seeds = if args.quick { "1" } else { "1,2,3" };
    let seeds = parse_seeds(args.seeds.as_deref().unwrap_or(default_seeds))?;
    check_model(&args.model)?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(if args.quick {
            "runs/demo-quick"
        } else {
            "runs/demo"
        })
    });
    let mut base = demo_preset(args.quick, &args.model, &out, &args.cache_dir);
    base.device = args.device.clone();
    let report = execute(&base, &out, &seeds)?;
    println!("{}", report.table);
    println!(
        "wrote {} and {}",
        out.join("compare.md").display(),
        out.join("compare.csv").display()
    );
    println!(
        "zero-shot accuracy of {} on the downstream task: {:.2} % (chance: {:.2} %)",
        args.model.display(),
        report.zero_shot_gm,
        100.0 / world::NUM_CLASSES as f64
    );
    for line in &report.effect {
        println!("{line}");
    }
    println!("plots:");
    for p in &report.plots {
        println!("  {}", p.display());
    }
    println!("demo finished in {:.1} s", report.seconds);
    Ok(())
}

/// The demo's title line.
fn title(base: &RunConfig, seeds: &[u64]) -> String {
    format!(
        "fedpurel demo: synthetic world ({} classes), IF {}, {} clients, Dirichlet α = {}, prompt tuning, {} rounds, seeds {}",
        world::NUM_CLASSES,
        base.data.imb_factor.unwrap_or(100.0),
        base.data.clients,
        base.data.alpha,
        base.train.rounds,
        seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
    )
}

/// Runs the demo's grid on `base` into `root`, writes the tables and the plots.
pub fn execute(base: &RunConfig, root: &Path, seeds: &[u64]) -> Result<DemoReport> {
    let started = Instant::now();
    let algorithms: Vec<String> = ALGORITHMS.iter().map(|a| a.to_string()).collect();
    let summaries = run_grid(base, root, &algorithms, seeds)?;
    let table = write_tables(root, &rows(&algorithms, &summaries), &title(base, seeds))?;
    let plots = write_plots(base, root, &algorithms, seeds[0])?;
    let zs = &summaries[0];
    Ok(DemoReport {
        table,
        plots,
        zero_shot_gm: zs.iter().map(|s| s.gm.all).sum::<f64>() / zs.len() as f64,
        effect: effect_lines(&algorithms, &summaries),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The paper's claim — plain federated fine-tuning lowers the global model's Few-class
/// accuracy and balancedness below zero-shot CLIP's, FedPuReL keeps them — checked on
/// this run's means over seeds, in words, whichever way it comes out.
pub fn effect_lines(algorithms: &[String], summaries: &[Vec<Summary>]) -> Vec<String> {
    let mean = |algorithm: &str, pick: &dyn Fn(&Summary) -> Option<f64>| -> Option<f64> {
        let i = algorithms.iter().position(|a| a == algorithm)?;
        let v: Vec<f64> = summaries.get(i)?.iter().filter_map(pick).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let mut lines = Vec::new();
    type Pick = dyn Fn(&Summary) -> Option<f64>;
    let measures: [(&str, &Pick); 2] = [
        ("Few-class accuracy", &|s: &Summary| s.gm.few),
        ("balancedness (worst class)", &|s: &Summary| {
            Some(s.gm.balancedness)
        }),
    ];
    for (what, pick) in measures {
        let (Some(zs), Some(ft), Some(ours)) = (
            mean("zeroshot", pick),
            mean("promptfl", pick),
            mean("fedpurel", pick),
        ) else {
            continue;
        };
        let verdict = |x: f64, who: &str| {
            if x < zs {
                format!("{who} lowers it below zero-shot")
            } else {
                format!("{who} keeps it at or above zero-shot")
            }
        };
        lines.push(format!(
            "GM {what}: zero-shot {zs:.2} %, PromptFL {ft:.2} % ({:+.2}), FedPuReL {ours:.2} % \
             ({:+.2}) — on this run {}; {}",
            ft - zs,
            ours - zs,
            verdict(ft, "plain fine-tuning (PromptFL)"),
            verdict(ours, "FedPuReL")
        ));
    }
    lines
}

/// Mean per-class accuracy over the last ≤ 10 rounds (None where no round has a value).
fn last_rounds_per_class(records: &[RoundRecord]) -> Vec<Option<f64>> {
    let tail = &records[records.len().saturating_sub(10)..];
    let classes = tail.first().map_or(0, |r| r.gm.per_class.len());
    (0..classes)
        .map(|c| {
            let v: Vec<f64> = tail.iter().filter_map(|r| r.gm.per_class[c]).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        })
        .collect()
}

/// Writes the four plots of the first seed's runs under `root/plots/`.
fn write_plots(base: &RunConfig, root: &Path, algorithms: &[String], seed: u64) -> Result<Vec<PathBuf>> {
    let dir = root.join("plots");
    let mut records = Vec::new();
    for a in algorithms {
        let cell = cell_dir(root, a, seed);
        let r = RunDir::new(&cell).read_records(usize::MAX)?;
        if r.is_empty() {
            bail!("{}: no completed round to plot", cell.display());
        }
        records.push(r);
    }
    let mut data = base.data.clone();
    data.seed = seed;
    let (ds, partition) = data.load()?;
    let label = |a: &str| match a {
        "zeroshot" => "zero-shot CLIP".to_string(),
        "promptfl" => "PromptFL (fine-tuned)".to_string(),
        "promptfolio" => "PromptFolio".to_string(),
        "fedpurel" => "FedPuReL".to_string(),
        other => other.to_string(),
    };
    let mut written = Vec::new();
    let mut put = |name: &str, png: Vec<u8>| -> Result<()> {
        let path = dir.join(name);
        atomic::write(&path, &png)?;
        written.push(path);
        Ok(())
    };
    // Per-class accuracy against training count: zero-shot vs fine-tuned vs FedPuReL.
    let class_series: Vec<ClassSeries> = algorithms
        .iter()
        .enumerate()
        .filter(|(_, a)| matches!(a.as_str(), "zeroshot" | "promptfl" | "fedpurel"))
        .map(|(i, a)| ClassSeries {
            label: format!("{} GM", label(a)),
            colour: plots::colour_of(a, i),
            accuracy: last_rounds_per_class(&records[i]),
        })
        .collect();
    put(
        "per-class-accuracy.png",
        plots::per_class_png(
            &partition.class_counts,
            &class_series,
            &format!(
                "Per-class GM test accuracy vs training images (seed {seed}, mean of the last 10 rounds)"
            ),
        )?,
    )?;
    // Metrics per round.
    let round_series: Vec<RoundSeries> = algorithms
        .iter()
        .zip(&records)
        .enumerate()
        .map(|(i, (a, r))| RoundSeries {
            label: label(a),
            colour: plots::colour_of(a, i),
            gm_all: r.iter().map(|x| x.gm.accuracy.all).collect(),
            pm_all: r.iter().map(|x| x.pm.accuracy.all).collect(),
            gm_balancedness: r.iter().map(|x| x.gm.balancedness.worst_class).collect(),
            pm_balancedness: r.iter().map(|x| x.pm.balancedness.worst_class).collect(),
            level: a == "zeroshot",
        })
        .collect();
    put(
        "rounds.png",
        plots::rounds_png(
            &round_series,
            &format!("Accuracy and balancedness per round (seed {seed})"),
        )?,
    )?;
    // Clients × classes.
    let g = &partition.groups;
    put(
        "partition.png",
        heatmap::render_png(
            &partition.train_class_matrix(&ds.train.labels, ds.num_classes()),
            &partition.class_counts,
            [g.many.len(), g.medium.len(), g.few.len()],
            &format!(
                "Training images per client and class: {} clients, {} classes (seed {})",
                partition.clients.len(),
                ds.num_classes(),
                data.seed
            ),
        )?,
    )?;
    // The two domains.
    let samples = |domain: Domain| -> Vec<(image::RgbImage, String)> {
        (0..10)
            .map(|i| {
                let s = world::sample(data.world_seed, domain, SplitKind::Train, i);
                let name = world::Class::of(s.class).prompt_name();
                let caption = match name.rsplit_once(' ') {
                    Some((attrs, shape)) => format!("{attrs}\n{shape}"),
                    None => name,
                };
                (s.image, caption)
            })
            .collect()
    };
    put(
        "world-samples.png",
        plots::image_grid_png(
            &[
                (
                    "pretraining domain (the demo CLIP is trained on it, with captions)".to_string(),
                    samples(Domain::Pretrain),
                ),
                (
                    "downstream domain (the federated long-tailed task)".to_string(),
                    samples(Domain::Downstream),
                ),
            ],
            4,
        )?,
    )?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo end to end at a test-only size on the tiny fixture model (random
    /// weights, 224 × 224 input, CLIP's vocabulary): every run finishes, every number is
    /// in range, the table names every algorithm, the plots are PNGs of the right size,
    /// and a second call finds every cell finished.
    fn summary(few: f64, balancedness: f64) -> Summary {
        let m = serde_json::json!({
            "all": 50.0, "many": null, "medium": null, "few": few,
            "balancedness": balancedness, "tkl": 0.0, "best_all": 50.0
        });
        serde_json::from_value(serde_json::json!({
            "rounds_completed": 1, "gm": m, "pm": m, "zeroshot": m, "definitions": ""
        }))
        .unwrap()
    }

    #[test]
    fn the_effect_is_reported_whichever_way_it_comes_out() {
        let algorithms: Vec<String> = ALGORITHMS.iter().map(|a| a.to_string()).collect();
        let grid = |ft: f64, ours: f64| {
            vec![
                vec![summary(40.0, 10.0)],
                vec![summary(ft, ft / 4.0), summary(ft + 2.0, ft / 4.0)],
                vec![summary(0.0, 0.0)],
                vec![summary(ours, ours / 4.0)],
            ]
        };
        let seen = effect_lines(&algorithms, &grid(30.0, 41.0));
        assert_eq!(seen.len(), 2);
        assert!(
            seen[0].contains("zero-shot 40.00 %, PromptFL 31.00 % (-9.00), FedPuReL 41.00 % (+1.00)"),
            "{}",
            seen[0]
        );
        assert!(
            seen[0].contains("PromptFL) lowers it below zero-shot; FedPuReL keeps it"),
            "{}",
            seen[0]
        );
        let not_seen = effect_lines(&algorithms, &grid(45.0, 35.0));
        assert!(
            not_seen[0].contains("PromptFL) keeps it at or above zero-shot; FedPuReL lowers it"),
            "{}",
            not_seen[0]
        );
        assert!(not_seen[1].starts_with("GM balancedness (worst class): zero-shot 10.00 %"));
        // An algorithm missing from the grid: nothing claimed.
        assert!(effect_lines(&algorithms[..2], &grid(30.0, 41.0)[..2]).is_empty());
    }

    #[test]
    fn demo_runs_every_algorithm_and_writes_table_and_plots() {
        let tmp = tempfile::tempdir().unwrap();
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip/hf");
        let root = tmp.path().join("demo");
        let mut base = demo_preset(true, &model, &root, &tmp.path().join("cache"));
        base.data.clients = 3;
        base.data.imb_factor = Some(10.0);
        base.data.world_train_per_class = 30;
        base.data.world_test_per_class = 2;
        base.train.rounds = 2;
        base.train.batch_size = 16;
        check_model(&base.model).unwrap();
        let report = execute(&base, &root, &[1]).unwrap();
        for a in ALGORITHMS {
            assert!(report.table.contains(&format!("| {a} | 1 |")), "{}", report.table);
            let path = cell_dir(&root, a, 1).join("summary.json");
            let s: Summary = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let rounds = if a == "zeroshot" { 1 } else { 2 };
            assert_eq!(s.rounds_completed, rounds, "{a}");
            for m in [&s.gm, &s.pm, &s.zeroshot] {
                let xs = [
                    Some(m.all),
                    m.many,
                    m.medium,
                    m.few,
                    Some(m.balancedness),
                    Some(m.best_all),
                ];
                for x in xs.into_iter().flatten() {
                    assert!((0.0..=100.0).contains(&x), "{a}: {x}");
                }
                assert!(m.tkl >= 0.0 && m.tkl.is_finite());
            }
        }
        assert!(root.join("compare.md").is_file() && root.join("compare.csv").is_file());
        assert_eq!(report.effect.len(), 2, "{:?}", report.effect);
        assert!(report.effect[0].starts_with("GM Few-class accuracy: zero-shot "));
        let names: Vec<String> = report
            .plots
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "per-class-accuracy.png",
                "rounds.png",
                "partition.png",
                "world-samples.png"
            ]
        );
        for p in &report.plots {
            assert!(p.starts_with(root.join("plots")));
            let img = image::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(img.width() >= 200 && img.height() >= 50, "{}", p.display());
        }
        assert!((0.0..=100.0).contains(&report.zero_shot_gm));
        // Resumable: nothing runs again.
        let again = execute(&base, &root, &[1]).unwrap();
        assert_eq!(again.table, report.table);
    }

    #[test]
    fn a_missing_model_is_named() {
        let e = check_model(Path::new("no/such/demo-clip"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no/such/demo-clip") && e.contains("--model"), "{e}");
        assert!(
            e.contains("fedpurel pretrain --out assets/demo-clip --seed"),
            "{e}"
        );
    }
}

//! `fedpurel compare`: runs a grid of algorithms × seeds under one protocol (same data,
//! split per seed, model, PEFT and evaluation), resuming finished cells, and writes
//! `compare.md` / `compare.csv` in the layout of the paper's main table. `--quick` picks a
//! preset's reduced size (`--preset demo --quick` = `demo-quick`). [`run_grid`] is the
//! grid runner `fedpurel demo` shares.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::Args;

use super::progress::Terminal;
use super::run_args::{resolve, RunArgs};
use crate::fed::registry;
use crate::pools::on_own_pools;
use crate::report::atomic;
use crate::report::compare::{check_same_splits, csv, markdown, Row};
use crate::report::run_dir::{RunDir, Summary};
use crate::setup::presets::preset_names;
use crate::setup::{execute, PeftKind, RunConfig};
use crate::setup::{Progress, Quiet};

/// Arguments of `fedpurel compare`: the grid, plus every `run` flag as the base
/// configuration (`--preset`, `--config`, data, model, PEFT, rounds, …).
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Algorithms, comma-separated (see `fedpurel run --help`); `NAME@lambda=X` runs NAME
    /// with stage 2's λ = X as a row of its own (e.g. `fedpurel@lambda=0.5`).
    #[arg(long, default_value = "zeroshot,promptfl,promptfolio,fedpurel")]
    pub algorithms: String,
    /// Seeds, comma-separated: each seed draws its own split and initialization.
    #[arg(long, default_value = "1,2")]
    pub seeds: String,
    /// The preset's reduced size (`--preset demo --quick` is `--preset demo-quick`).
    #[arg(long)]
    pub quick: bool,
    /// Cells run at once, each on its share of the cores; the numbers are the same for
    /// any value. More than 1 helps small models (the demo CLIP, the tiny fixture) and
    /// costs one run's memory per job.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub jobs: u64,
    /// The base configuration and overrides; `--out` is the comparison directory
    /// (default runs/compare), each cell a run directory `<out>/<algorithm>/seed-<s>`.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Parses a comma-separated seed list.
pub fn parse_seeds(text: &str) -> Result<Vec<u64>> {
    let mut seeds = Vec::new();
    for part in text.split(',') {
        let p = part.trim();
        let s: u64 = p.parse().map_err(|_| {
            anyhow::anyhow!("--seeds `{text}`: `{p}` is not a seed (expected comma-separated non-negative integers, e.g. 1,2,3)")
        })?;
        if seeds.contains(&s) {
            bail!("--seeds `{text}`: seed {s} appears twice");
        }
        seeds.push(s);
    }
    Ok(seeds)
}

/// One row of a grid: an algorithm, optionally with stage 2's λ changed
/// (`fedpurel@lambda=0.5`, for the λ ablation); the label names the row in the tables
/// and its run directories.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// The row's name as written (`promptfl`, `fedpurel@lambda=0.5`).
    pub label: String,
    /// The algorithm it runs.
    pub algorithm: String,
    /// λ of stage 2 instead of the base configuration's.
    pub lambda: Option<f64>,
}

impl Variant {
    /// The algorithm `name` with the base configuration's settings.
    pub fn plain(name: &str) -> Self {
        Variant {
            label: name.to_string(),
            algorithm: name.to_string(),
            lambda: None,
        }
    }

    /// Parses `ALGORITHM` or `ALGORITHM@lambda=X` (X in [0, 1]).
    pub fn parse(text: &str) -> Result<Self> {
        let Some((algorithm, setting)) = text.split_once('@') else {
            return Ok(Variant::plain(text));
        };
        let value = setting.strip_prefix("lambda=").ok_or_else(|| {
            anyhow::anyhow!("`{text}`: after `@` expected `lambda=X` (stage 2's λ), found `{setting}`")
        })?;
        let lambda: f64 = value
            .parse()
            .ok()
            .filter(|l| (0.0..=1.0).contains(l))
            .ok_or_else(|| anyhow::anyhow!("`{text}`: λ must be a number in [0, 1], found `{value}`"))?;
        Ok(Variant {
            label: text.to_string(),
            algorithm: algorithm.to_string(),
            lambda: Some(lambda),
        })
    }

    /// The labels of `variants`.
    pub fn labels(variants: &[Variant]) -> Vec<String> {
        variants.iter().map(|v| v.label.clone()).collect()
    }
}

/// Parses and checks a comma-separated list of grid rows ([`Variant`]) against the PEFT
/// kind.
pub fn parse_algorithms(text: &str, peft: PeftKind) -> Result<Vec<Variant>> {
    let mut out: Vec<Variant> = Vec::new();
    for part in text.split(',') {
        let v = Variant::parse(part.trim()).map_err(|e| anyhow::anyhow!("--algorithms: {e}"))?;
        registry::find_for(&v.algorithm, peft).map_err(|e| anyhow::anyhow!("--algorithms: {e}"))?;
        if out.iter().any(|o| o.label == v.label) {
            bail!("--algorithms: `{}` appears twice", v.label);
        }
        out.push(v);
    }
    Ok(out)
}

/// The configuration of one cell.
fn cell_config(base: &RunConfig, root: &Path, variant: &Variant, seed: u64) -> RunConfig {
    let mut c = base.clone();
    let algorithm = variant.algorithm.as_str();
    c.algorithm = algorithm.to_string();
    if let Some(l) = variant.lambda {
        c.train.lambda = l;
    }
    c.data.seed = seed;
    c.train.seed = seed;
    if registry::find(algorithm).is_ok_and(|e| !(e.build)(&c.baselines).trains()) {
        // Nothing trains (zero-shot): every round would record the same numbers.
        c.train.rounds = 1;
    }
    c.out = cell_dir(root, &variant.label, seed);
    c
}

/// A finished cell's summary, if its directory holds a complete run of this config.
fn finished(cfg: &RunConfig) -> Result<Option<Summary>> {
    let path = cfg.out.join("summary.json");
    if !path.is_file() {
        return Ok(None);
    }
    RunDir::new(&cfg.out).check_config(cfg)?;
    let s: Summary = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("{}: not a run summary", path.display()))?;
    Ok((s.rounds_completed >= cfg.train.rounds).then_some(s))
}

/// Runs every cell of `variants` × `seeds` on `base` into `root/<label>/seed-<s>`
/// (finished cells are read back, unfinished ones resume), printing one line per cell;
/// returns each row's summaries in seed order, checked to share one split per seed.
///
/// With `jobs` > 1, that many cells run at once, each on its own thread pool with an
/// equal share of the cores (at least one thread). A run's numbers do not depend on how
/// many threads compute it (`jobs_change_no_number`), so this changes only the wall
/// time: it helps small models, whose matrix products are too small to keep several
/// cores busy, and costs memory (one run's data and model per job).
pub fn run_grid(
    base: &RunConfig,
    root: &Path,
    variants: &[Variant],
    seeds: &[u64],
    jobs: usize,
) -> Result<Vec<Vec<Summary>>> {
    let cells: Vec<(usize, u64, RunConfig)> = variants
        .iter()
        .enumerate()
        .flat_map(|(row, v)| {
            seeds
                .iter()
                .map(move |&seed| (row, seed, cell_config(base, root, v, seed)))
        })
        .collect();
    let total = cells.len();
    let run_cell = |n: usize, progress: &dyn Progress| -> Result<Summary> {
        let (row, seed, cfg) = &cells[n];
        let started = Instant::now();
        let (summary, status) = match finished(cfg)? {
            Some(s) => (s, "finished earlier"),
            None => (execute(cfg.clone(), progress)?.0, "ran"),
        };
        eprintln!(
            "[{}/{total}] {} seed {seed}: GM {:.2} PM {:.2} ({status}, {:.1} s) → {}",
            n + 1,
            variants[*row].label,
            summary.gm.all,
            summary.pm.all,
            started.elapsed().as_secs_f64(),
            cfg.out.display()
        );
        Ok(summary)
    };
    let done: Vec<Summary> = if jobs <= 1 {
        (0..total)
            .map(|n| run_cell(n, &Terminal::default()))
            .collect::<Result<_>>()?
    } else {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        on_own_pools(total, jobs, (cores / jobs).max(1), &|n| run_cell(n, &Quiet))?
    };
    let mut done = done.into_iter();
    let summaries: Vec<Vec<Summary>> = variants
        .iter()
        .map(|_| done.by_ref().take(seeds.len()).collect())
        .collect();
    check_same_splits(&rows(&Variant::labels(variants), &summaries))?;
    Ok(summaries)
}

/// Table rows of a grid's summaries.
pub fn rows<'a>(algorithms: &[String], summaries: &'a [Vec<Summary>]) -> Vec<Row<'a>> {
    algorithms
        .iter()
        .zip(summaries)
        .map(|(a, runs)| Row {
            algorithm: a.clone(),
            runs: runs.iter().collect(),
        })
        .collect()
}

/// The run directory of one cell (row `label`) of a grid rooted at `root`.
pub fn cell_dir(root: &Path, label: &str, seed: u64) -> PathBuf {
    root.join(label).join(format!("seed-{seed}"))
}

/// Writes `compare.md` and `compare.csv` into `root`; returns the Markdown.
pub fn write_tables(root: &Path, rows: &[Row], title: &str) -> Result<String> {
    let md = markdown(rows, title);
    std::fs::create_dir_all(root).with_context(|| format!("{}: cannot create", root.display()))?;
    atomic::write(&root.join("compare.md"), md.as_bytes())?;
    atomic::write(&root.join("compare.csv"), csv(rows).as_bytes())?;
    Ok(md)
}

/// The grid's title line.
pub fn title(base: &RunConfig, seeds: &[u64]) -> String {
    format!(
        "Comparison on {} ({} PEFT, {} rounds, seeds {})",
        format!("{:?}", base.data.dataset).to_lowercase(),
        format!("{:?}", base.peft).to_lowercase(),
        base.train.rounds,
        seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
    )
}

/// Runs `fedpurel compare`.
pub fn run(mut args: CompareArgs, matches: Option<&clap::ArgMatches>) -> Result<()> {
    let seeds = parse_seeds(&args.seeds)?;
    let out_given = matches.is_some_and(|m| m.value_source("out") == Some(ValueSource::CommandLine));
    let root: PathBuf = if out_given {
        args.run.out.clone()
    } else {
        PathBuf::from("runs/compare")
    };
    if args.quick {
        let Some(name) = args.run.preset.as_deref() else {
            bail!("--quick selects a preset's reduced size: use it with --preset demo");
        };
        let quick = format!("{name}-quick");
        if !preset_names().contains(&quick) {
            bail!(
                "--quick selects the reduced size of a preset that has one (--preset demo); \
                 `{name}` has none"
            );
        }
        args.run.preset = Some(quick);
    }
    let base = resolve(&args.run, matches)?;
    let algorithms = parse_algorithms(&args.algorithms, base.peft)?;
    let summaries = run_grid(&base, &root, &algorithms, &seeds, args.jobs as usize)?;
    let md = write_tables(
        &root,
        &rows(&Variant::labels(&algorithms), &summaries),
        &title(&base, &seeds),
    )?;
    println!("{md}");
    println!(
        "wrote {} and {}",
        root.join("compare.md").display(),
        root.join("compare.csv").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fed::record::without_timings;
    use crate::setup::presets::demo_for_tests;

    /// A `metrics.jsonl` line without its wall times (`seconds`, `*_seconds`).
    /// `--jobs 2` runs cells at once on one thread each (on a 2-core machine) and must
    /// record exactly what one job on every core records: LoRA (the image tower's own
    /// forward and backward) and prompt tuning (the text tower), two algorithms at once.
    #[test]
    fn jobs_change_no_number() {
        let tmp = tempfile::tempdir().unwrap();
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip/hf");
        let variants = parse_algorithms("promptfl,fedpurel", PeftKind::Lora).unwrap();
        for peft in [PeftKind::Lora, PeftKind::Prompt] {
            let metrics = |jobs: usize| {
                let root = tmp.path().join(format!("{peft:?}-jobs-{jobs}"));
                let mut base = demo_for_tests(peft, &model, &root, &tmp.path().join("cache"), 20);
                // One round: it trains and evaluates every client; a second adds time only.
                base.train.rounds = 1;
                run_grid(&base, &root, &variants, &[1], jobs).unwrap();
                let mut all = Vec::new();
                for v in &variants {
                    let text =
                        std::fs::read_to_string(cell_dir(&root, &v.label, 1).join("metrics.jsonl")).unwrap();
                    for line in text.lines() {
                        all.push(without_timings(serde_json::from_str(line).unwrap()));
                    }
                }
                all
            };
            let one = metrics(1);
            assert_eq!(one.len(), 2, "{peft:?}: 2 rows × 1 round");
            assert_eq!(one, metrics(2), "{peft:?}: --jobs 2 changed a number");
        }
    }

    #[test]
    fn seed_lists_parse_or_say_what_is_wrong() {
        assert_eq!(parse_seeds("1,2, 3").unwrap(), vec![1, 2, 3]);
        let e = parse_seeds("1,x").unwrap_err().to_string();
        assert!(e.contains("`x` is not a seed"), "{e}");
        assert!(parse_seeds("1,1").unwrap_err().to_string().contains("twice"));
        assert!(parse_seeds("").is_err());
    }

    #[test]
    fn algorithm_lists_are_checked_against_the_peft() {
        assert_eq!(
            Variant::labels(&parse_algorithms("zeroshot, fedpurel", PeftKind::Lora).unwrap()),
            vec!["zeroshot", "fedpurel"]
        );
        let v = parse_algorithms("fedpurel,fedpurel@lambda=0.5", PeftKind::Adapter).unwrap();
        assert_eq!((v[1].algorithm.as_str(), v[1].lambda), ("fedpurel", Some(0.5)));
        assert_eq!(v[1].label, "fedpurel@lambda=0.5");
        for (bad, says) in [
            ("fedpurel@lambda=2", "in [0, 1]"),
            ("fedpurel@tau=1", "expected `lambda=X`"),
            ("fedpurel@lambda=0.5,fedpurel@lambda=0.5", "appears twice"),
        ] {
            let e = parse_algorithms(bad, PeftKind::Prompt).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let e = parse_algorithms("promptfolio", PeftKind::Lora)
            .unwrap_err()
            .to_string();
        assert!(e.contains("prompt learning only"), "{e}");
        let e = parse_algorithms("fedavg", PeftKind::Prompt)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown algorithm `fedavg`") && e.contains("promptfl"),
            "{e}"
        );
    }
}

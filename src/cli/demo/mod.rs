//! `fedpurel demo`: the paper's experiment in miniature on a CPU, with nothing to
//! download. The demo CLIP (pretrained on the synthetic world) is fine-tuned federatedly
//! on the world's long-tailed task in its pretraining domain — a foundation model that is
//! already good and balanced on the classes, the paper's regime (docs/demo-regime.md says
//! how the task and learning rates were chosen without looking at FedPuReL). For each
//! PEFT kind ([`DEMO_REGIME`]; the first [`DEMO_DEFAULT_KINDS`], or all with
//! `--all-peft`) it runs, over 3 seeds, through the grid runner of `fedpurel compare`:
//! zero-shot CLIP, PromptFL, PromptFL + Fed-GraB, PromptFolio (prompt only) and
//! FedPuReL, and with `--ablations` FedPuReL's ablations (KL instead of TKL, no
//! purification, fusion personalization, λ ∈ {0, 0.5, 0.99} except for the adapter, whose
//! stage 2 has no λ). Then it writes, under the
//! output folder:
//!
//! * `<kind>/compare.md`, `.csv` — the paper-style table per kind, and `compare.md` with
//!   all of them;
//! * `evidence.json` — the numbers with their seed spread, the analysis and the verdict
//!   ([`crate::report::evidence`]);
//! * `plots/<kind>-*.png` — [`plots`].
//!
//! Each cell is a resumable run directory `<out>/<kind>/<row>/seed-<s>`.

mod plots;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use super::compare::{cell_dir, parse_seeds, rows, run_grid, write_tables, Variant};
use crate::clip::Checkpoint;
use crate::fed::record::RoundRecord;
use crate::pretrain::WorldPretrainSettings;
use crate::report::atomic;
use crate::report::evidence::KindEvidence;
use crate::report::run_dir::{RunDir, Summary};
use crate::setup::presets::{demo_for, DEMO_DEFAULT_KINDS, DEMO_MODEL, DEMO_REGIME};
use crate::setup::{PeftKind, RunConfig};

/// Arguments of `fedpurel demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The reduced size (10 clients, 200 training images per class before the long-tail
    /// cut, 20 test images per class, 6 rounds, one seed) instead of the full demo (20
    /// clients, 300, 50, 25 rounds, seeds 1,2,3).
    #[arg(long)]
    pub quick: bool,
    /// Add FedPuReL's ablations as rows: KL instead of TKL, no purification, fusion
    /// instead of residual personalization, and stage 2's λ ∈ {0, 0.5, 0.99} (not for the
    /// adapter, whose stage 2 has no λ).
    #[arg(long)]
    pub ablations: bool,
    /// Every PEFT kind (adapter, LoRA, prompt), each at its chosen learning rate, instead
    /// of the default kinds that fit the demo's few minutes.
    #[arg(long)]
    pub all_peft: bool,
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
    /// Runs (row × seed) at once, each on its share of the cores; the numbers are the
    /// same for any value (see `fedpurel compare --jobs`). Default 2: on 2 cores the
    /// adapter demo took 55 s with 2 and 83 s with 1 (docs/perf-notes.md).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub jobs: u64,
}

/// What a demo produced.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// The Markdown tables of every kind (also in `<out>/compare.md`).
    pub table: String,
    /// The plots written.
    pub plots: Vec<PathBuf>,
    /// Per kind, the evidence (also in `<out>/evidence.json`).
    pub evidence: Vec<KindEvidence>,
    /// Wall time of the whole demo, seconds.
    pub seconds: f64,
}

/// `evidence.json`.
#[derive(Debug, Clone, serde::Serialize)]
struct EvidenceFile<'a> {
    /// What the file holds.
    about: &'static str,
    /// The demo's task.
    task: String,
    /// One entry per PEFT kind.
    kinds: &'a [KindEvidence],
}

const ABOUT: &str = "fedpurel demo evidence: per PEFT kind and row, last-10-round means over seeds (mean, sample std, n); accuracies and balancedness in %; balancedness_worst_decile is the mean accuracy of the worst 10 % of classes (the primary balancedness), worst_class the single worst class; gm_all_std_last_10_rounds is per-round stability; angle_mean_deg / obtuse_fraction / removed_norm_fraction describe stage-1 gradients (FedPuReL: before purification; PromptFL: probed, not applied); pearson_r_* correlate GM TKL (or plain KL) with GM balancedness over every (round, seed). See the README's evidence.json section.";

/// Refuses a model directory that is not a readable checkpoint, naming it (before any
/// work).
fn check_model(model: &Path) -> Result<()> {
    let dir = crate::setup::demo_model::resolve(model)?;
    Checkpoint::open(&dir).map(|_| ()).map_err(|e| {
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

/// The rows the demo runs for `peft`: the compared algorithms, then (with `ablations`)
/// FedPuReL's ablations.
pub fn demo_rows(peft: PeftKind, ablations: bool) -> Vec<Variant> {
    let mut names = vec!["zeroshot", "promptfl", "promptfl+fedgrab"];
    if peft == PeftKind::Prompt {
        names.push("promptfolio");
    }
    names.push("fedpurel");
    if ablations {
        names.extend(["fedpurel-kl", "fedpurel-nopurify", "fedpurel-fusion"]);
        // The adapter's private branch learns through the fused logits only (λ = 0,
        // docs/method.md §5): λ has nothing to vary there.
        if peft != PeftKind::Adapter {
            names.extend(["fedpurel@lambda=0", "fedpurel@lambda=0.5", "fedpurel@lambda=0.99"]);
        }
    }
    names
        .into_iter()
        .map(|n| Variant::parse(n).expect("the demo's rows parse"))
        .collect()
}

/// The PEFT kinds a demo runs.
pub fn demo_kinds(all_peft: bool) -> Vec<PeftKind> {
    let n = if all_peft {
        DEMO_REGIME.len()
    } else {
        DEMO_DEFAULT_KINDS
    };
    DEMO_REGIME[..n].iter().map(|&(k, _)| k).collect()
}

/// Short name of a PEFT kind (`adapter`, `lora`, `prompt`).
pub fn kind_name(peft: PeftKind) -> String {
    format!("{peft:?}").to_lowercase()
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
    let kinds = demo_kinds(args.all_peft);
    let configure = |peft: PeftKind, root: &Path| {
        let mut c = demo_for(args.quick, peft, &args.model, root, &args.cache_dir);
        c.device = args.device.clone();
        c
    };
    let report = execute(
        &configure,
        &kinds,
        args.ablations,
        &out,
        &seeds,
        args.jobs as usize,
    )?;
    println!("{}", report.table);
    if let Some(zs) = report.evidence[0].row("zeroshot").and_then(|r| r.gm.all) {
        println!(
            "zero-shot accuracy of {} on the demo's task: {:.2} % (chance: {:.2} %)",
            args.model.display(),
            zs.mean,
            100.0 / crate::data::world::NUM_CLASSES as f64
        );
    }
    for e in &report.evidence {
        for line in &e.verdict {
            println!("{line}");
        }
    }
    println!(
        "wrote {}, {} and the plots:",
        out.join("compare.md").display(),
        out.join("evidence.json").display()
    );
    for p in &report.plots {
        println!("  {}", p.display());
    }
    println!("demo finished in {:.1} s", report.seconds);
    Ok(())
}

/// The title line of one kind's table.
fn title(base: &RunConfig, seeds: &[u64]) -> String {
    format!(
        "fedpurel demo, {} (lr {}): synthetic world ({} classes, {} domain), IF {}, {} clients, Dirichlet α = {}, {} rounds, seeds {}",
        kind_name(base.peft),
        base.train.stage1.lr,
        crate::data::world::NUM_CLASSES,
        base.data.world_domain.name(),
        base.data.imb_factor.unwrap_or(100.0),
        base.data.clients,
        base.data.alpha,
        base.train.rounds,
        seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
    )
}

/// Reads every cell's `metrics.jsonl`: `records[row][seed]`.
fn read_records(root: &Path, variants: &[Variant], seeds: &[u64]) -> Result<Vec<Vec<Vec<RoundRecord>>>> {
    variants
        .iter()
        .map(|v| {
            seeds
                .iter()
                .map(|&s| RunDir::new(&cell_dir(root, &v.label, s)).read_records(usize::MAX))
                .collect()
        })
        .collect()
}

/// Runs the demo's grid for each of `kinds` (`configure(kind, root)` gives the base
/// configuration; [`demo_rows`] with `ablations`; `jobs` runs at once), writes the
/// tables, `evidence.json` and the plots under `out`.
pub fn execute(
    configure: &dyn Fn(PeftKind, &Path) -> RunConfig,
    kinds: &[PeftKind],
    ablations: bool,
    out: &Path,
    seeds: &[u64],
    jobs: usize,
) -> Result<DemoReport> {
    let started = Instant::now();
    let mut tables = Vec::new();
    let mut evidence = Vec::new();
    let mut written = Vec::new();
    for &peft in kinds {
        let root = out.join(kind_name(peft));
        let mut base = configure(peft, &root);
        // Record PromptFL's (not applied) alignment-gradient angles beside FedPuReL's.
        base.train.probe_alignment = true;
        let variants = demo_rows(peft, ablations);
        let labels = Variant::labels(&variants);
        let summaries: Vec<Vec<Summary>> = run_grid(&base, &root, &variants, seeds, jobs)?;
        tables.push(write_tables(
            &root,
            &rows(&labels, &summaries),
            &title(&base, seeds),
        )?);
        let records = read_records(&root, &variants, seeds)?;
        let e = KindEvidence::of(
            &kind_name(peft),
            base.train.stage1.lr,
            base.train.rounds,
            seeds,
            &labels,
            &summaries,
            &records,
        );
        written.extend(plots::write(&base, out, &labels, &records, &e)?);
        evidence.push(e);
    }
    let table = tables.join("\n");
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    atomic::write(&out.join("compare.md"), table.as_bytes())?;
    let base = configure(kinds[0], out);
    let file = EvidenceFile {
        about: ABOUT,
        task: format!(
            "world ({} domain, world seed {}), IF {}, {} clients, Dirichlet α = {}, frac {}, {} rounds, demo CLIP {}",
            base.data.world_domain.name(),
            base.data.world_seed,
            base.data.imb_factor.unwrap_or(100.0),
            base.data.clients,
            base.data.alpha,
            base.train.frac,
            base.train.rounds,
            base.model.display()
        ),
        kinds: &evidence,
    };
    atomic::write(
        &out.join("evidence.json"),
        serde_json::to_string_pretty(&file)?.as_bytes(),
    )?;
    Ok(DemoReport {
        table,
        plots: written,
        evidence,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::presets::demo_for_tests;

    #[test]
    fn the_rows_are_the_compared_methods_then_the_ablations() {
        let labels = |k, a| Variant::labels(&demo_rows(k, a));
        assert_eq!(
            labels(PeftKind::Prompt, false),
            [
                "zeroshot",
                "promptfl",
                "promptfl+fedgrab",
                "promptfolio",
                "fedpurel"
            ]
        );
        let full = labels(PeftKind::Lora, true);
        assert!(!full.contains(&"promptfolio".to_string()), "{full:?}");
        assert_eq!(full.len(), 10);
        assert_eq!(
            full[4..7],
            ["fedpurel-kl", "fedpurel-nopurify", "fedpurel-fusion"]
        );
        assert_eq!(
            labels(PeftKind::Adapter, true).len(),
            7,
            "no λ rows for the adapter"
        );
        assert_eq!(demo_kinds(true).len(), 3);
        assert_eq!(demo_kinds(false).len(), DEMO_DEFAULT_KINDS);
    }

    /// The demo end to end at a test-only size on the tiny fixture model (random
    /// weights, CLIP's vocabulary): every run finishes, every number is in range, the
    /// tables name every row, evidence.json holds every kind and row, the plots are
    /// PNGs, and a second call finds every cell finished.
    #[test]
    fn demo_runs_every_row_and_writes_tables_evidence_and_plots() {
        let tmp = tempfile::tempdir().unwrap();
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip/hf");
        let cache = tmp.path().join("cache");
        let root = tmp.path().join("demo");
        let configure = |peft: PeftKind, r: &Path| demo_for_tests(peft, &model, r, &cache, 30);
        check_model(&model).unwrap();
        let kinds = [PeftKind::Prompt, PeftKind::Adapter];
        let report = execute(&configure, &kinds, false, &root, &[1, 2], 1).unwrap();
        for &k in &kinds {
            for v in demo_rows(k, false) {
                let a = &v.label;
                assert!(
                    report.table.contains(&format!("| {a} | 1,2 |")),
                    "{}",
                    report.table
                );
                let path = cell_dir(&root.join(kind_name(k)), a, 1).join("summary.json");
                let s: Summary = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                assert_eq!(s.rounds_completed, if a == "zeroshot" { 1 } else { 2 }, "{a}");
                for m in [&s.gm, &s.pm, &s.zeroshot] {
                    let xs = [
                        Some(m.all),
                        m.many,
                        m.medium,
                        m.few,
                        m.worst_decile,
                        Some(m.worst_class),
                    ];
                    for x in xs.into_iter().flatten() {
                        assert!((0.0..=100.0).contains(&x), "{a}: {x}");
                    }
                }
            }
        }
        let evidence: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(root.join("evidence.json")).unwrap()).unwrap();
        let kinds_json = evidence["kinds"].as_array().unwrap();
        assert_eq!(kinds_json.len(), 2);
        let rows = kinds_json[0]["rows"].as_array().unwrap();
        assert_eq!(rows.len(), demo_rows(PeftKind::Prompt, false).len());
        let fedpurel = &rows[4];
        assert_eq!(fedpurel["label"], "fedpurel");
        assert_eq!(fedpurel["gm"]["all"]["n"], 2);
        assert_eq!(fedpurel["points"], 4);
        // FedPuReL always records its stage-1 angles; PromptFL's are probed.
        assert!(fedpurel["angle_mean_deg"]["mean"].as_f64().is_some());
        assert!(rows[1]["angle_mean_deg"]["mean"].as_f64().is_some());
        assert!(report.evidence[0]
            .verdict
            .iter()
            .any(|l| l.contains("GM Few-class accuracy")));
        assert!(root.join("compare.md").is_file() && root.join("prompt/compare.csv").is_file());
        for p in &report.plots {
            assert!(p.starts_with(root.join("plots")));
            let img = image::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(img.width() >= 200 && img.height() >= 50, "{}", p.display());
        }
        // Resumable: nothing runs again.
        let again = execute(&configure, &kinds, false, &root, &[1, 2], 1).unwrap();
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

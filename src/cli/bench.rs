//! `fedpurel bench`: measured speed of the standard workloads.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::bench::image_encoder::ImageBenchSettings;
use crate::bench::pretrain::PretrainBenchSettings;
use crate::bench::round::{project, read_reference, round_rows, ReferenceRound};
use crate::bench::text_encoder::TextBenchSettings;
use crate::bench::{image_encoder, matmul, mem, pretrain, text_encoder, timed, BenchResult};
use crate::clip::tokenizer::ClipTokenizer;
use crate::data::source::DatasetName;
use crate::fed::federation::{KeyedSchedule, Schedule};
use crate::setup::presets::preset;
use crate::setup::{algorithm, federation, load, PeftKind};
use std::path::Path;
use std::time::Instant;

/// `fedpurel bench …`
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which workload.
    #[command(subcommand)]
    pub workload: Workload,
    /// Print one JSON object per line per workload.
    #[arg(long, global = true)]
    pub json: bool,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, global = true, default_value = "cpu")]
    pub device: String,
    /// Side of the square matmul that measures the machine's peak.
    #[arg(long, global = true, default_value_t = 2048)]
    pub peak_size: usize,
}

/// The federated-round workload's settings.
#[derive(Debug, Clone, Args)]
pub struct RoundWorkload {
    /// PEFT kind.
    #[arg(long, value_enum, default_value = "prompt")]
    pub peft: PeftKind,
    /// CLIP checkpoint directory, or random:vit-b16 (random weights and random frozen
    /// image features at ViT-B/16 size).
    #[arg(long, default_value = "tests/fixtures/tiny-clip/hf")]
    pub model: PathBuf,
    /// CIFAR-100 root (e.g. the reference harness's synthetic CIFAR-format data); default:
    /// the built-in synthetic dataset of CIFAR-100's shape (100 classes, 500/100 images).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Rounds to time (round 0 trains every client, later rounds 40 %).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Cap on local steps per client and stage (0: full epochs); stage times are then
    /// extrapolated to full epochs and marked so.
    #[arg(long, default_value_t = 0)]
    pub max_steps: usize,
    /// Cap on the clients trained per round (0: every sampled client): the first N of the
    /// round's sample train; stage times are then extrapolated by steps to the whole sample.
    #[arg(long, default_value_t = 0)]
    pub clients: usize,
    /// Write the raw measurements (setup seconds, every round's record, per-client train
    /// and test sizes, peak memory) as one JSON object here, for extrapolations such as
    /// `tools/reference/bench-vit-b16.sh`.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Synthetic test images per class (the global test set's size).
    #[arg(long, default_value_t = 100)]
    pub test_per_class: usize,
    /// The reference harness's `timings.jsonl` of the same work, for ratios.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Memory (MiB) for cached image-tower stems with vision LoRA (0: every image
    /// through the live pixel path, as `run --stem-cache-mib 0`).
    #[arg(long, default_value_t = crate::fed::federation::DEFAULT_STEM_CACHE_MIB)]
    pub stem_cache_mib: usize,
    /// Train each round's clients, and the rounds, one after another (as `run
    /// --one-client-at-a-time`).
    #[arg(long)]
    pub one_client_at_a_time: bool,
}

/// Benchmark workloads.
#[derive(Debug, Subcommand)]
pub enum Workload {
    /// One federated round by phase (CIFAR-100-LT setting, reference-code preset: 20
    /// clients, 8 sampled after round 0, batch 32), next to the reference's timings.
    Round(RoundWorkload),
    /// The standard suite: matmul, text encoder (100 and 1000 classes), image encoder,
    /// rounds on the tiny fixture CLIP for prompt / LoRA / adapter; writes bench.json.
    Suite {
        /// Where to write the results.
        #[arg(long, default_value = "bench.json")]
        out: PathBuf,
        /// An earlier bench.json to print ratios against.
        #[arg(long)]
        compare: Option<PathBuf>,
        /// Also time ViT-B/16-sized rounds (random weights) for prompt and adapter, and
        /// LoRA with local steps capped at 2 (slow on a CPU).
        #[arg(long)]
        full: bool,
        /// CIFAR-100 root for the round workloads (as `round --root`).
        #[arg(long)]
        root: Option<PathBuf>,
        /// The reference harness's `timings.jsonl` (prompt) for the headline ratio.
        #[arg(long)]
        reference: Option<PathBuf>,
    },
    /// f32 matmul rate only.
    Matmul,
    /// ViT-B/16-sized text encoder, forward + backward for two cotangents, plain vs fast path.
    TextEncoder {
        /// Prompts (classes); names cycle through CIFAR-100's.
        #[arg(long, default_value_t = 100)]
        classes: usize,
        /// Shared context vectors.
        #[arg(long, default_value_t = 4)]
        n_ctx: usize,
        /// Timed repetitions after a warm-up (the best is reported).
        #[arg(long, default_value_t = 1)]
        reps: usize,
        /// Cotangents per backward.
        #[arg(long, default_value_t = 2)]
        cotangents: usize,
        /// Directory with CLIP's tokenizer files (tokenizer.json or vocab.json + merges.txt);
        /// default: CLIP's own vocabulary, compiled in.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Skip the plain 77-position path (≈ 30 GB of activations at 1000 classes).
        #[arg(long)]
        fast_only: bool,
    },
    /// ViT-B/16-sized image encoder: forward, and forward + LoRA backward for two cotangents.
    ImageEncoder {
        /// Images per batch.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// LoRA rank.
        #[arg(long, default_value_t = 8)]
        rank: usize,
        /// Timed repetitions after a warm-up (the best is reported).
        #[arg(long, default_value_t = 1)]
        reps: usize,
        /// Cotangents per backward.
        #[arg(long, default_value_t = 2)]
        cotangents: usize,
    },
    /// One contrastive pretraining step of a small fresh CLIP (all weights, both towers,
    /// explicit backward, AdamW) on a random batch; images/s and GFLOP/s.
    PretrainStep {
        /// Image–text pairs per batch.
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Image side in pixels.
        #[arg(long, default_value_t = 32)]
        image_size: usize,
        /// Patch side in pixels.
        #[arg(long, default_value_t = 4)]
        patch_size: usize,
        /// Vision width (heads: width / 32; MLP: 4 × width).
        #[arg(long, default_value_t = 128)]
        vision_width: usize,
        /// Vision layers.
        #[arg(long, default_value_t = 4)]
        vision_layers: usize,
        /// Text width (heads: width / 32; MLP: 4 × width).
        #[arg(long, default_value_t = 128)]
        text_width: usize,
        /// Text layers.
        #[arg(long, default_value_t = 4)]
        text_layers: usize,
        /// Text context length (EOT positions drawn in [context/2, context)).
        #[arg(long, default_value_t = 32)]
        context: usize,
        /// Vocabulary size.
        #[arg(long, default_value_t = 1000)]
        vocab: usize,
        /// Joint embedding width.
        #[arg(long, default_value_t = 128)]
        embed_dim: usize,
        /// Timed steps after one warm-up step.
        #[arg(long, default_value_t = 3)]
        steps: usize,
    },
}

fn print(results: &[BenchResult], json: bool) -> Result<()> {
    for r in results {
        if json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            let mem = r.peak_mib.map_or(String::new(), |m| format!("{m:>7.0} MiB peak"));
            if r.gflop > 0.0 {
                println!(
                    "{:<58} {:>9.3} s {:>9.1} GFLOP {:>8.1} GFLOP/s {:>6.1}% of matmul peak {mem}  {}",
                    r.name,
                    r.seconds,
                    r.gflop,
                    r.gflops_per_s,
                    100.0 * r.peak_fraction,
                    r.detail
                );
            } else {
                println!(
                    "{:<58} {:>9.3} s {:>52} {mem}  {}",
                    r.name, r.seconds, "", r.detail
                );
            }
        }
    }
    Ok(())
}

/// Times the round workload: setup (data, model, feature extraction into a fresh cache,
/// zero-shot text features) and each round by phase; with a reference, the ratios.
pub fn round_workload(w: &RoundWorkload, device: &str) -> Result<Vec<BenchResult>> {
    let peft = format!("{:?}", w.peft).to_lowercase();
    let cache = std::env::temp_dir().join(format!("fedpurel-bench-cache-{}", std::process::id()));
    let mut cfg = preset(
        &format!("cifar100-lt-{peft}-reference-code"),
        &w.model,
        Path::new("unused"),
        &cache,
    )?;
    match &w.root {
        Some(root) => cfg.data.root = Some(root.clone()),
        None => {
            cfg.data.dataset = DatasetName::Synthetic;
            cfg.data.synthetic_test_per_class = w.test_per_class;
        }
    }
    cfg.train.rounds = w.rounds;
    cfg.train.stem_cache_mib = w.stem_cache_mib;
    cfg.train.one_client_at_a_time = w.one_client_at_a_time;
    cfg.device = device.to_string();
    let model_name = w
        .model
        .to_string_lossy()
        .replace("tests/fixtures/", "")
        .replace('/', "-");
    let prefix = format!("round/{model_name}/{peft}");
    mem::reset_peak();
    let t0 = Instant::now();
    let result = (|| -> Result<Vec<BenchResult>> {
        let loaded = load(cfg)?;
        let mut fed = federation(&loaded, &super::progress::Terminal::default())?;
        let setup = t0.elapsed().as_secs_f64();
        let algo = algorithm(&loaded.cfg, &fed)?;
        let n_train = loaded.partition.lt_train.len();
        let n_test = loaded.ds.test.len();
        let mut rows = vec![timed(
            format!("{prefix}/setup"),
            setup,
            if loaded.ck.is_some() {
                format!("load + encode {n_train} train and {n_test} test images into a fresh feature cache")
            } else {
                format!("load; random frozen features for {n_train} train and {n_test} test images (random model)")
            },
        )];
        let full = KeyedSchedule {
            seed: loaded.cfg.train.seed,
            frac: loaded.cfg.train.frac,
            clients: loaded.partition.clients.len(),
            batch_size: loaded.cfg.train.batch_size,
        };
        let capped = w.max_steps > 0 || w.clients > 0;
        if capped {
            fed.set_schedule(Box::new(CappedSchedule {
                inner: full.clone(),
                max_steps: w.max_steps,
                max_clients: w.clients,
            }));
        }
        let mut state = fed.initial_state()?;
        // Capped rounds are extrapolated phase by phase, so their phases must not share
        // the cores with the next round's (`fed::overlap`); full rounds may overlap and
        // are timed by the wall clock between their ends.
        let overlapped = !capped && fed.rounds_overlap(algo.as_ref(), 0);
        let mut totals = Vec::new();
        let mut phase_sums = Vec::new();
        let mut records = Vec::new();
        let mut last_end = Instant::now();
        mem::reset_peak();
        fed.run_rounds(
            &mut state,
            algo.as_ref(),
            w.rounds,
            !capped,
            &|_, _| {},
            &mut |rec, _| {
                let t = rec.round;
                let wall = last_end.elapsed().as_secs_f64();
                last_end = Instant::now();
                let scale = if capped {
                    let clients = full.clients(t)?;
                    let all: usize = clients
                        .iter()
                        .map(|&k| {
                            full.batches(t, k, 1, &loaded.partition.clients[k].train)
                                .map(|b| b.len())
                        })
                        .sum::<Result<usize>>()?;
                    all as f64 / rec.stage1.steps.max(1) as f64
                } else {
                    1.0
                };
                let r = round_rows(&prefix, &rec, scale, (!capped).then_some(wall));
                // Every row but the last (the round's total) is a phase.
                phase_sums.push(r[..r.len() - 1].iter().map(|x| x.seconds).sum::<f64>());
                let total = r.last().map_or(0.0, |x| x.seconds);
                totals.push(total);
                rows.extend(r);
                // total_s: the round's total row (full rounds: the wall time since the
                // last round ended, overlap included; capped ones: extrapolated phases).
                records
                    .push(serde_json::json!({"record": rec, "peak_mib": mem::peak_mib(), "total_s": total}));
                mem::reset_peak();
                Ok(())
            },
        )?;
        if let Some(path) = &w.record {
            let raw = serde_json::json!({
                "peft": peft,
                "model": w.model,
                "setup_s": setup,
                "batch_size": loaded.cfg.train.batch_size,
                "max_steps": w.max_steps,
                "max_clients": w.clients,
                "client_train_sizes": loaded.partition.clients.iter().map(|c| c.train.len()).collect::<Vec<_>>(),
                "client_test_sizes": loaded.partition.clients.iter().map(|c| c.test.len()).collect::<Vec<_>>(),
                "global_test_size": n_test,
                "overlapped": overlapped,
                "rounds": records,
            });
            crate::report::atomic::write(path, serde_json::to_string_pretty(&raw)?.as_bytes())?;
        }
        let (ours, how) = project(setup, &totals, &phase_sums, 100, overlapped);
        rows.push(timed(format!("{prefix}/projected-100-rounds"), ours, how));
        if let Some(path) = &w.reference {
            let reference = read_reference(path)?;
            let ref_totals: Vec<f64> = reference.rounds.iter().map(|r| r.1).collect();
            let (theirs, _) = project(reference.setup, &ref_totals, &[], 100, false);
            for (t, ReferenceRound(n, secs, _)) in reference.rounds.iter().enumerate() {
                let ratio = totals
                    .get(t)
                    .map_or(String::new(), |o| format!("; {:.1}× ours", secs / o));
                rows.push(timed(
                    format!("{prefix}/reference-round{t}/total"),
                    *secs,
                    format!("the reference, {n} clients{ratio}"),
                ));
            }
            rows.push(timed(
                format!("{prefix}/reference-projected-100-rounds"),
                theirs,
                format!("headline: ours {:.0}× faster end to end", theirs / ours),
            ));
        }
        Ok(rows)
    })();
    let _ = std::fs::remove_dir_all(&cache);
    result
}

/// A schedule that trains only the first `max_clients` of each round's sample and keeps
/// at most `max_steps` batches of each client's epoch (0: no cap).
struct CappedSchedule {
    inner: KeyedSchedule,
    max_steps: usize,
    max_clients: usize,
}

impl Schedule for CappedSchedule {
    fn clients(&self, round: usize) -> Result<Vec<usize>> {
        let mut c = self.inner.clients(round)?;
        if self.max_clients > 0 {
            c.truncate(self.max_clients);
        }
        Ok(c)
    }

    fn batches(&self, round: usize, client: usize, stage: u8, indices: &[usize]) -> Result<Vec<Vec<usize>>> {
        let mut b = self.inner.batches(round, client, stage, indices)?;
        if self.max_steps > 0 {
            b.truncate(self.max_steps);
        }
        Ok(b)
    }
}

/// Ratios of `now` against an earlier bench.json, by workload name.
fn compare(now: &[BenchResult], earlier: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(earlier).with_context(|| format!("{}: cannot read", earlier.display()))?;
    let old: Vec<BenchResult> = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a bench.json (a list of results)", earlier.display()))?;
    println!(
        "\nagainst {} (ratio = earlier time / now: > 1 is faster now)",
        earlier.display()
    );
    for r in now {
        match old.iter().find(|o| o.name == r.name) {
            Some(o) if r.seconds > 0.0 => {
                println!(
                    "{:<58} {:>8.2}×  ({:.3} s → {:.3} s)",
                    r.name,
                    o.seconds / r.seconds,
                    o.seconds,
                    r.seconds
                )
            }
            _ => println!("{:<58} {:>9}", r.name, "new"),
        }
    }
    Ok(())
}

/// The tiny fixture CLIP of the source checkout (the suite's tiny workload).
fn tiny_fixture_clip() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip/hf")
}

/// The tokenizer in `dir`, or CLIP's own (compiled in).
fn tokenizer(dir: Option<PathBuf>) -> Result<ClipTokenizer> {
    match dir {
        Some(dir) => ClipTokenizer::from_dir(&dir)
            .with_context(|| format!("loading CLIP's tokenizer from {} (--tokenizer)", dir.display())),
        None => ClipTokenizer::clip_bpe(),
    }
}

/// Runs `fedpurel bench …`.
pub fn run(args: BenchArgs) -> Result<()> {
    let device = crate::device::parse_device(&args.device)?;
    let peak = matmul::measure_peak(&device, args.peak_size, 3)?;
    let peak_rate = peak.gflops_per_s;
    let mut results = vec![peak];
    let text_bench = |classes: usize, dir: Option<PathBuf>| -> Result<Vec<BenchResult>> {
        let tok = tokenizer(dir)?;
        mem::reset_peak();
        let settings = TextBenchSettings {
            classes,
            n_ctx: 4,
            reps: 1,
            cotangents: 2,
            plain: classes <= 100,
        };
        text_encoder::run(&settings, &tok, &device, peak_rate)
    };
    match args.workload {
        Workload::Matmul => {}
        Workload::Round(w) => results.extend(round_workload(&w, &args.device)?),
        Workload::Suite {
            out,
            compare: earlier,
            full,
            root,
            reference,
        } => {
            results.extend(text_bench(100, None)?);
            results.extend(text_bench(1000, None)?);
            mem::reset_peak();
            let image = ImageBenchSettings {
                batch: 32,
                rank: 8,
                reps: 1,
                cotangents: 2,
            };
            results.extend(image_encoder::run(&image, &device, peak_rate)?);
            for peft in [PeftKind::Prompt, PeftKind::Lora, PeftKind::Adapter] {
                let w = RoundWorkload {
                    peft,
                    model: tiny_fixture_clip(),
                    root: root.clone(),
                    rounds: 2,
                    max_steps: 0,
                    clients: 0,
                    record: None,
                    test_per_class: 100,
                    reference: reference.clone().filter(|_| peft == PeftKind::Prompt),
                    stem_cache_mib: crate::fed::federation::DEFAULT_STEM_CACHE_MIB,
                    one_client_at_a_time: false,
                };
                results.extend(round_workload(&w, &args.device)?);
            }
            if full {
                for (peft, max_steps) in [(PeftKind::Prompt, 0), (PeftKind::Adapter, 0), (PeftKind::Lora, 2)]
                {
                    let w = RoundWorkload {
                        peft,
                        model: PathBuf::from("random:vit-b16"),
                        root: root.clone(),
                        rounds: 2,
                        max_steps,
                        clients: 0,
                        record: None,
                        test_per_class: 100,
                        reference: None,
                        stem_cache_mib: crate::fed::federation::DEFAULT_STEM_CACHE_MIB,
                        one_client_at_a_time: false,
                    };
                    results.extend(round_workload(&w, &args.device)?);
                }
            }
            print(&results, args.json)?;
            crate::report::atomic::write(&out, serde_json::to_string_pretty(&results)?.as_bytes())?;
            println!("wrote {}", out.display());
            if let Some(e) = earlier {
                compare(&results, &e)?;
            }
            return Ok(());
        }
        Workload::TextEncoder {
            classes,
            n_ctx,
            reps,
            cotangents,
            tokenizer,
            fast_only,
        } => {
            let tok = self::tokenizer(tokenizer)?;
            let settings = TextBenchSettings {
                classes,
                n_ctx,
                reps,
                cotangents,
                plain: !fast_only,
            };
            results.extend(text_encoder::run(&settings, &tok, &device, peak_rate)?);
        }
        Workload::ImageEncoder {
            batch,
            rank,
            reps,
            cotangents,
        } => {
            let settings = ImageBenchSettings {
                batch,
                rank,
                reps,
                cotangents,
            };
            results.extend(image_encoder::run(&settings, &device, peak_rate)?);
        }
        Workload::PretrainStep {
            batch,
            image_size,
            patch_size,
            vision_width,
            vision_layers,
            text_width,
            text_layers,
            context,
            vocab,
            embed_dim,
            steps,
        } => {
            if !device.is_cpu() {
                anyhow::bail!("bench pretrain-step runs on the CPU only (pretraining is CPU-only for now)");
            }
            mem::reset_peak();
            let settings = PretrainBenchSettings {
                batch,
                image_size,
                patch_size,
                vision_width,
                vision_layers,
                text_width,
                text_layers,
                context,
                vocab,
                embed_dim,
                steps,
            };
            results.extend(pretrain::run(&settings, peak_rate)?);
        }
    }
    print(&results, args.json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed() -> KeyedSchedule {
        KeyedSchedule {
            seed: 1,
            frac: 0.4,
            clients: 20,
            batch_size: 4,
        }
    }

    fn capped(max_steps: usize, max_clients: usize) -> CappedSchedule {
        CappedSchedule {
            inner: keyed(),
            max_steps,
            max_clients,
        }
    }

    #[test]
    fn capped_schedule_keeps_the_first_clients_and_steps_of_the_full_schedule() {
        let full = keyed();
        let capped = capped(2, 3);
        let indices: Vec<usize> = (0..37).collect();
        for round in [0, 1, 5] {
            let all = full.clients(round).unwrap();
            assert_eq!(capped.clients(round).unwrap(), all[..3].to_vec());
            let b = full.batches(round, all[0], 1, &indices).unwrap();
            assert_eq!(
                capped.batches(round, all[0], 1, &indices).unwrap(),
                b[..2].to_vec()
            );
        }
    }

    #[test]
    fn a_zero_cap_keeps_everything() {
        let full = keyed();
        let uncapped = capped(0, 0);
        let indices: Vec<usize> = (0..37).collect();
        assert_eq!(uncapped.clients(1).unwrap(), full.clients(1).unwrap());
        assert_eq!(
            uncapped.batches(1, 4, 2, &indices).unwrap(),
            full.batches(1, 4, 2, &indices).unwrap()
        );
    }
}

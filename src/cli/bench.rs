//! `fedpurel bench`: measured speed of the standard workloads.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::bench::image_encoder::ImageBenchSettings;
use crate::bench::text_encoder::TextBenchSettings;
use crate::bench::{image_encoder, matmul, text_encoder, BenchResult};
use crate::clip::tokenizer::ClipTokenizer;

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

/// Benchmark workloads.
#[derive(Debug, Subcommand)]
pub enum Workload {
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
        /// Directory with CLIP's tokenizer files (tokenizer.json or vocab.json + merges.txt).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
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
}

fn print(results: &[BenchResult], json: bool) -> Result<()> {
    for r in results {
        if json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            println!(
                "{:<58} {:>9.3} s {:>9.1} GFLOP {:>8.1} GFLOP/s {:>6.1}% of matmul peak  {}",
                r.name,
                r.seconds,
                r.gflop,
                r.gflops_per_s,
                100.0 * r.peak_fraction,
                r.detail
            );
        }
    }
    Ok(())
}

/// The tokenizer shipped with the repository's test fixtures (CLIP's real vocabulary).
fn default_tokenizer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip/hf")
}

/// Runs `fedpurel bench …`.
pub fn run(args: BenchArgs) -> Result<()> {
    let device = crate::device::parse_device(&args.device)?;
    let peak = matmul::measure_peak(&device, args.peak_size, 3)?;
    let peak_rate = peak.gflops_per_s;
    let mut results = vec![peak];
    match args.workload {
        Workload::Matmul => {}
        Workload::TextEncoder {
            classes,
            n_ctx,
            reps,
            cotangents,
            tokenizer,
        } => {
            let dir = tokenizer.unwrap_or_else(default_tokenizer_dir);
            let tok = ClipTokenizer::from_dir(&dir).with_context(|| {
                format!(
                    "loading CLIP's tokenizer from {} (pass --tokenizer DIR)",
                    dir.display()
                )
            })?;
            let settings = TextBenchSettings {
                classes,
                n_ctx,
                reps,
                cotangents,
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
    }
    print(&results, args.json)
}

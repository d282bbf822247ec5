//! Subcommands of the `fedpurel` tool. Each subcommand lives in its own file with its
//! `clap` arguments and a `run` function; this module only dispatches.

use anyhow::Result;
use clap::{Parser, Subcommand};

pub mod bench;
pub mod compare;
pub mod config;
pub mod demo;
pub mod eval;
pub mod export;
pub mod model;
pub mod partition;
pub mod pretrain;
pub mod progress;
pub mod run;
pub mod run_args;
pub mod zeroshot;

/// Federated, long-tailed, personalized fine-tuning of CLIP.
#[derive(Debug, Parser)]
#[command(name = "fedpurel", version, about)]
pub struct Cli {
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Classify images zero-shot with a CLIP checkpoint and a prompt template.
    Zeroshot(zeroshot::ZeroshotArgs),
    /// Inspect a checkpoint.
    Model(model::ModelArgs),
    /// Measure speed: wall time, GFLOP/s, fraction of the matmul peak.
    Bench(bench::BenchArgs),
    /// Cut the long tail, split a dataset over clients, write partition.json + a heatmap.
    Partition(partition::PartitionArgs),
    /// Train and evaluate FedPuReL or a baseline; leaves a run directory (resumable).
    Run(Box<run_args::RunArgs>),
    /// Print the resolved configuration of `run`'s flags as TOML (absolute paths), e.g.
    /// for the server and clients of a Flower run.
    Config(Box<run_args::RunArgs>),
    /// Re-evaluate a saved run from its checkpoints.
    Eval(eval::EvalArgs),
    /// Run a grid of algorithms × seeds and write the paper-style comparison table.
    Compare(Box<compare::CompareArgs>),
    /// Zero-shot, PromptFL, PromptFolio and FedPuReL on the synthetic world's long-tailed
    /// federated task: table and plots, on a CPU in minutes, nothing to download.
    Demo(demo::DemoArgs),
    /// Pretrain the small demo CLIP on the synthetic world (contrastive, both towers) and
    /// write its model directory with a model card; the defaults reproduce
    /// assets/demo-clip.
    Pretrain(Box<pretrain::PretrainArgs>),
    /// Write a task and its model in files the authors' code reads (`export world`: the
    /// demo's world task and the demo CLIP in OpenAI's layout).
    Export(export::ExportArgs),
}

/// Runs the parsed command line.
pub fn run(cli: Cli, matches: &clap::ArgMatches) -> Result<()> {
    match cli.command {
        Command::Zeroshot(a) => zeroshot::run(a),
        Command::Model(a) => model::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Partition(args) => partition::run(args),
        Command::Run(args) => run::run(*args, matches.subcommand_matches("run")),
        Command::Config(args) => config::run(*args, matches.subcommand_matches("config")),
        Command::Eval(args) => eval::run(args),
        Command::Compare(args) => compare::run(*args, matches.subcommand_matches("compare")),
        Command::Demo(args) => demo::run(args),
        Command::Pretrain(args) => pretrain::run(*args),
        Command::Export(args) => export::run(args),
    }
}

/// Sends `tracing` output to stderr, filtered by `RUST_LOG` (default: warnings).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

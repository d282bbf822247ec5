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

/// Threads for candle's element-wise pool when the command runs several cells at once
/// (`compare`/`demo` with `--jobs` > 1 on `cores` cores): each cell's share of the cores.
/// `None` when it runs one thing at a time; candle then sizes the pool itself.
///
/// candle runs every element-wise op of 64 Ki elements or more on one process-wide pool
/// of spinning workers. Cells running at once queue for that pool, and on two cores its
/// worker competes with the cells' own threads, so callers spin waiting for a descheduled
/// worker: 36 % of a two-cell LoRA demo's samples (perf). A pool of one thread runs each op
/// on its caller (docs/perf-notes.md). Element-wise results do not depend on the split.
pub fn elementwise_threads(matches: &clap::ArgMatches, cores: usize) -> Option<usize> {
    let (_, sub) = matches.subcommand()?;
    let jobs = *sub.try_get_one::<u64>("jobs").ok().flatten()?;
    (jobs > 1).then(|| (cores / jobs as usize).max(1))
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn threads(args: &[&str], cores: usize) -> Option<usize> {
        let matches = Cli::command().get_matches_from(args);
        elementwise_threads(&matches, cores)
    }

    #[test]
    fn elementwise_threads_are_each_cells_share_when_cells_run_at_once() {
        assert_eq!(
            threads(&["fedpurel", "demo"], 2),
            Some(1),
            "demo's default --jobs 2"
        );
        assert_eq!(threads(&["fedpurel", "demo", "--jobs", "1"], 2), None);
        assert_eq!(threads(&["fedpurel", "compare", "--jobs", "2"], 16), Some(8));
        assert_eq!(threads(&["fedpurel", "compare", "--jobs", "4"], 2), Some(1));
        assert_eq!(
            threads(&["fedpurel", "compare"], 2),
            None,
            "compare's default --jobs 1"
        );
        assert_eq!(threads(&["fedpurel", "run"], 2), None, "run has no --jobs");
    }
}

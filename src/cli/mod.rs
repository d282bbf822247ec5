//! Subcommands of the `fedpurel` tool. Each subcommand lives in its own file with its
//! `clap` arguments and a `run` function; this module only dispatches.

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::peft::{LoraEncoder, PeftKind};

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

/// Threads for candle's element-wise pool when the command runs several things at once:
/// cells (`compare`/`demo` with `--jobs` > 1 on `cores` cores) get each cell's share of
/// the cores, the clients of one run that train at once (`run`, `bench round`) one each.
/// `None` otherwise; candle then sizes the pool itself.
///
/// candle runs every element-wise op of 64 Ki elements or more on one process-wide pool
/// of spinning workers. Cells running at once queue for that pool, and on two cores its
/// worker competes with the cells' own threads, so callers spin waiting for a descheduled
/// worker: 36 % of a two-cell LoRA demo's samples (perf). A pool of one thread runs each op
/// on its caller (docs/perf-notes.md). Element-wise results do not depend on the split.
pub fn elementwise_threads(matches: &clap::ArgMatches, cores: usize) -> Option<usize> {
    let (name, sub) = matches.subcommand()?;
    if let Some(&jobs) = sub.try_get_one::<u64>("jobs").ok().flatten() {
        if jobs > 1 {
            return Some((cores / jobs as usize).max(1));
        }
    }
    clients_at_once(name, sub).then_some(1)
}

/// Whether the command is one run whose clients train at once (`fed::at_once`: banked
/// features on the CPU). Each client then runs its element-wise ops on its own thread;
/// through candle's pool, they queued for it, and clients at once gained nothing (tiny
/// CLIP, prompt: stage 1 of an 8-client round 0.8–1.06 s through the pool, 0.57–0.71 s
/// without it; docs/perf-notes.md). A configuration that does not resolve is left to the
/// command to report.
fn clients_at_once(name: &str, sub: &clap::ArgMatches) -> bool {
    use clap::FromArgMatches;
    match name {
        "run" => run_args::RunArgs::from_arg_matches(sub)
            .ok()
            .and_then(|a| run_args::resolve(&a, Some(sub)).ok())
            .is_some_and(|c| {
                let pixels = c.peft == PeftKind::Lora && c.lora_encoder != LoraEncoder::Text;
                c.device == "cpu" && !pixels && !c.train.one_client_at_a_time
            }),
        "bench" => sub.subcommand().is_some_and(|(what, w)| {
            what == "round"
                && sub
                    .try_get_one::<String>("device")
                    .ok()
                    .flatten()
                    .is_none_or(|d| d == "cpu")
                && w.try_get_one::<PeftKind>("peft").ok().flatten() != Some(&PeftKind::Lora)
                && w.try_get_one::<bool>("one_client_at_a_time").ok().flatten() != Some(&true)
        }),
        _ => false,
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
        assert_eq!(
            threads(&["fedpurel", "run"], 2),
            None,
            "incomplete: the run reports it"
        );
    }

    #[test]
    fn a_run_whose_clients_train_at_once_runs_elementwise_ops_on_its_clients_threads() {
        let run = |extra: &[&str]| {
            let mut a = vec![
                "fedpurel",
                "run",
                "--preset",
                "cifar100-lt-prompt",
                "--model",
                "m",
            ];
            a.extend(extra);
            threads(&a, 2)
        };
        assert_eq!(run(&[]), Some(1), "prompt on the CPU");
        assert_eq!(run(&["--peft", "adapter"]), Some(1));
        assert_eq!(run(&["--peft", "lora", "--lora-encoder", "text"]), Some(1));
        assert_eq!(
            run(&["--peft", "lora"]),
            None,
            "vision LoRA trains one client at a time"
        );
        assert_eq!(run(&["--one-client-at-a-time"]), None);
        assert_eq!(run(&["--device", "cuda"]), None);
        let bench = |extra: &[&str]| {
            let mut a = vec!["fedpurel", "bench"];
            a.extend(extra);
            threads(&a, 2)
        };
        assert_eq!(bench(&["round", "--peft", "prompt"]), Some(1));
        assert_eq!(bench(&["round", "--peft", "lora"]), None);
        assert_eq!(
            bench(&["round", "--peft", "prompt", "--one-client-at-a-time"]),
            None
        );
        assert_eq!(bench(&["--device", "cuda", "round", "--peft", "prompt"]), None);
        assert_eq!(bench(&["text-encoder"]), None);
    }
}

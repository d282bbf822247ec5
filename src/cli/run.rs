//! `fedpurel run`: train and evaluate FedPuReL (or a baseline, `--algorithm`) on a
//! federated long-tailed split, leaving a run directory (config.toml, metrics.jsonl,
//! summary.json/.md, checkpoints/). Re-running the same command on the same `--out`
//! resumes after the last completed round. The work is the library's
//! ([`crate::setup::execute`]); this file resolves the flags and draws the progress.

use anyhow::Result;

use super::progress::Terminal;
use super::run_args::{resolve, RunArgs};
use crate::report::run_dir::summary_markdown;
use crate::setup::execute;

/// Runs `fedpurel run`; `matches` tells which flags were typed (for preset overrides).
pub fn run(args: RunArgs, matches: Option<&clap::ArgMatches>) -> Result<()> {
    let cfg = resolve(&args, matches)?;
    let out = cfg.out.clone();
    let (summary, zeroshot_pm) = execute(cfg, &Terminal::default())?;
    println!("{}", summary_markdown(&summary, &zeroshot_pm));
    println!("run directory: {}", out.display());
    Ok(())
}

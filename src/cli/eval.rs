//! `fedpurel eval`: re-evaluates a saved run from its checkpoints — the GM of any round,
//! and the PM of the last completed round (private parameters are kept for the latest
//! round only) — and says whether the numbers equal the ones recorded in metrics.jsonl.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use serde_json::json;

use crate::fed::record::Evaluation;
use crate::peft::params::ParamSet;
use crate::report::run_dir::RunDir;
use crate::setup::{algorithm, federation, load, read_config};

/// Arguments of `fedpurel eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Run directory (holding config.toml and checkpoints/).
    #[arg(long)]
    pub run: PathBuf,
    /// Round to evaluate (default: the last completed one).
    #[arg(long)]
    pub round: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn same(a: &Evaluation, b: &Evaluation) -> bool {
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * x.abs().max(1.0) || (x.is_nan() && y.is_nan());
    close(a.accuracy.all, b.accuracy.all)
        && close(a.tkl, b.tkl)
        && close(a.balancedness.worst_class, b.balancedness.worst_class)
}

/// Runs `fedpurel eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    let dir = RunDir::new(&args.run);
    let cfg = read_config(&args.run.join("config.toml"))?;
    let loaded = load(cfg)?;
    let fed = federation(&loaded, &super::progress::Terminal::default())?;
    let algo = algorithm(&loaded.cfg, &fed)?;
    let mut state = dir
        .load_state(loaded.clip.device())?
        .ok_or_else(|| anyhow!("{}: no checkpoint (run it first)", args.run.display()))?;
    if state.rounds_done == 0 {
        bail!("{}: no completed round", args.run.display());
    }
    let last = state.rounds_done - 1;
    let round = args.round.unwrap_or(last);
    if round > last {
        bail!("--round {round}: the run has completed rounds 0–{last}");
    }
    state.global = ParamSet::load(&dir.round_global(round), loaded.clip.device())?;
    let (gm, pm) = fed.evaluate(&state, algo.as_ref())?;
    let records = dir.read_records(state.rounds_done)?;
    let rec = records.get(round);
    let gm_same = rec.map(|r| same(&gm, &r.gm));
    let pm_same = (round == last).then(|| rec.map(|r| same(&pm, &r.pm))).flatten();
    if args.json {
        let v = json!({ "round": round, "gm": gm, "pm": (round == last).then_some(&pm), "matches_record": { "gm": gm_same, "pm": pm_same } });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let line = |name: &str, e: &Evaluation| {
        let c = |v: Option<f64>| v.map_or("–".into(), |x| format!("{x:.2}"));
        println!(
            "{name:<3} All {:>6.2}  Many {:>6}  Medium {:>6}  Few {:>6}  worst class {:>6.2}  TKL {:.4}",
            e.accuracy.all,
            c(e.accuracy.many),
            c(e.accuracy.medium),
            c(e.accuracy.few),
            e.balancedness.worst_class,
            e.tkl
        )
    };
    println!("round {round} of {}", args.run.display());
    line("GM", &gm);
    if round == last {
        line("PM", &pm);
    } else {
        println!("PM  (private parameters are kept for the last round only)");
    }
    let say = |m: Option<bool>| match m {
        Some(true) => "equal to metrics.jsonl",
        Some(false) => "DIFFERENT from metrics.jsonl",
        None => "no record to compare",
    };
    println!(
        "GM {}; PM {}",
        say(gm_same),
        if round == last {
            say(pm_same)
        } else {
            "not evaluated"
        }
    );
    Ok(())
}

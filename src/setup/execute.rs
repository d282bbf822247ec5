//! One run from its configuration to its summary, in its run directory: load, build the
//! federation, resume from the last checkpoint if there is one, train round after round
//! (metrics and checkpoint written after each; consecutive rounds may overlap,
//! `fed::overlap`), summarize.

use anyhow::Result;

use super::config::RunConfig;
use super::federation::{algorithm, federation, identity};
use super::load::load;
use super::progress::{Event, Progress};
use crate::report::run_dir::{summarize, ModelSummary, RunDir, Summary};

/// Trains and evaluates a resolved configuration in its run directory, resuming after
/// the last completed round (`progress` hears every phase); returns the summary and the
/// zero-shot PM line.
pub fn execute(cfg: RunConfig, progress: &dyn Progress) -> Result<(Summary, ModelSummary)> {
    let dir = RunDir::new(&cfg.out);
    let _lock = dir.lock()?;
    dir.check_config(&cfg)?;
    let loaded = load(cfg)?;
    let cfg = &loaded.cfg;
    let fed = federation(&loaded, progress)?;
    let algo = algorithm(cfg, &fed)?;
    // Only a configuration that loads is recorded, so a corrected command is not
    // refused as "another run" because of a failed attempt.
    dir.write_config(cfg, true)?;
    let zeroshot = fed.evaluate_zero_shot()?;
    crate::faults::point("setup-done");
    let fresh = fed.initial_state()?;
    let mut state = match dir.load_state(loaded.clip.device())? {
        Some(s) => {
            s.global.check_compatible(&fresh.global).map_err(|e| {
                e.context(format!(
                    "{}: the checkpoint does not fit this model and data",
                    cfg.out.display()
                ))
            })?;
            if s.private.len() != fresh.private.len() {
                anyhow::bail!(
                    "{}: the checkpoint has {} clients, the split {}",
                    cfg.out.display(),
                    s.private.len(),
                    fresh.private.len()
                );
            }
            progress.report(Event::Resuming {
                run: &cfg.out,
                rounds_done: s.rounds_done,
            });
            s
        }
        None => fresh,
    };
    let mut records = dir.read_records(state.rounds_done)?;
    if records.len() != state.rounds_done {
        anyhow::bail!(
            "{}: metrics.jsonl has {} rounds, the checkpoint {}",
            cfg.out.display(),
            records.len(),
            state.rounds_done
        );
    }
    progress.report(Event::Training {
        algorithm: &algo.name(),
        rounds_done: state.rounds_done,
        rounds: cfg.train.rounds,
    });
    // Consecutive rounds may overlap (`fed::overlap`); `done` still sees them in order,
    // each with the state a run without overlap has after it.
    fed.run_rounds(
        &mut state,
        algo.as_ref(),
        cfg.train.rounds,
        true,
        &|round, phase| progress.report(Event::Phase { round, phase }),
        &mut |rec, state| {
            let (round, gm_all, pm_all) = (rec.round, rec.gm.accuracy.all, rec.pm.accuracy.all);
            records.push(rec);
            dir.write_records(&records)?;
            crate::faults::point("metrics-written");
            dir.save_state(state)?;
            progress.report(Event::RoundDone {
                round,
                gm_all,
                pm_all,
            });
            Ok(())
        },
    )?;
    progress.report(Event::Finished);
    crate::faults::point("training-done");
    let summary = dir.write_summary(&identity(&loaded, algo.as_ref()), &records, &zeroshot)?;
    Ok((summary, summarize(&[&zeroshot.1])))
}

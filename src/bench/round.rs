//! The federated-round workload: one configured run timed phase by phase (image-feature
//! extraction, then per round stage 1, aggregation, stage 2, GM and PM evaluation), and
//! the reference harness's timings of the same work read for side-by-side ratios.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde_json::Value;

use super::{timed, BenchResult};
use crate::fed::record::RoundRecord;

/// Phase rows of one round record, names prefixed with `prefix`; `scale` multiplies the
/// stage times (a run with capped local steps, extrapolated to full epochs). The round's
/// `total` is `wall` when given (the wall time since the previous round ended: with
/// overlapped rounds the phases run partly at once, `fed::overlap`), else the sum of the
/// phases.
pub fn round_rows(prefix: &str, r: &RoundRecord, scale: f64, wall: Option<f64>) -> Vec<BenchResult> {
    let note = |n: usize| {
        if scale != 1.0 {
            format!(
                "{n} clients timed; extrapolated ×{scale:.1} by steps to the whole sample and full epochs"
            )
        } else {
            format!("{n} clients")
        }
    };
    let n = r.clients.len();
    let rows = [
        (
            "stage1",
            r.stage1.seconds * scale,
            format!("{}; {} steps", note(n), r.stage1.steps),
        ),
        ("aggregation", r.aggregate_seconds, String::new()),
        (
            "stage2",
            r.stage2.seconds * scale,
            format!("{}; {} steps", note(n), r.stage2.steps),
        ),
        ("gm-eval", r.gm_seconds, "global test set".into()),
        ("pm-eval", r.pm_seconds, "every client's test set".into()),
    ];
    let phases: f64 = rows.iter().map(|(_, s, _)| s).sum();
    let mut out: Vec<BenchResult> = rows
        .into_iter()
        .map(|(name, s, d)| timed(format!("{prefix}/round{}/{name}", r.round), s, d))
        .collect();
    let (total, how) = match wall {
        Some(w) => (w, format!("{}; wall time since the last round ended", note(n))),
        None => (phases, note(n)),
    };
    out.push(timed(format!("{prefix}/round{}/total", r.round), total, how));
    out
}

/// One round of the reference: clients, wall seconds, seconds per phase.
#[derive(Debug, Clone)]
pub struct ReferenceRound(pub usize, pub f64, pub Vec<(String, f64)>);

/// The reference harness's per-round timings (`timings.jsonl` of `run_reference.sh`).
#[derive(Debug, Clone)]
pub struct ReferenceTimings {
    /// Setup before round 0 (data, models).
    pub setup: f64,
    /// Rounds in order.
    pub rounds: Vec<ReferenceRound>,
}

/// Reads a harness `timings.jsonl`.
pub fn read_reference(path: &Path) -> Result<ReferenceTimings> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut setup = 0.0;
    let mut rounds = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line)
            .map_err(|e| anyhow!("{}: line {}: not JSON ({e})", path.display(), i + 1))?;
        match v["event"].as_str() {
            Some("setup") => setup = v["setup_s"].as_f64().unwrap_or(0.0),
            Some("round") => {
                let phases = v["phases"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, p)| (k.clone(), p["wall_s"].as_f64().unwrap_or(0.0)))
                            .collect()
                    })
                    .unwrap_or_default();
                rounds.push(ReferenceRound(
                    v["n_clients"].as_u64().unwrap_or(0) as usize,
                    v["round_wall_s"].as_f64().unwrap_or(0.0),
                    phases,
                ));
            }
            _ => {}
        }
    }
    if rounds.is_empty() {
        return Err(anyhow!(
            "{}: no `round` record (expected a timings.jsonl of the reference harness)",
            path.display()
        ));
    }
    Ok(ReferenceTimings { setup, rounds })
}

/// Wall time of an R-round run from `setup` and the measured rounds' times, with how it
/// was obtained. All R rounds measured: their sum. Else, one after the other: setup +
/// round 0 + (R − 1) × the mean of the later rounds (round 0 trains every client; later
/// rounds a sample). With overlapped rounds (`fed::overlap`) each round's time is the wall
/// time between round ends: round t's personalization and evaluation beside round t + 1's
/// local training, except the last round's, which overlapped nothing; so the measured
/// rounds count once and the missing ones at the mean of rounds 1 … N − 2, which needs
/// N ≥ 3 rounds; with fewer, each missing round costs its local training and the rest
/// one after the other (`phase_sums`: the sum of each round's phases), an upper bound.
pub fn project(
    setup: f64,
    round_seconds: &[f64],
    phase_sums: &[f64],
    rounds: usize,
    overlapped: bool,
) -> (f64, String) {
    let n = round_seconds.len();
    if n >= rounds {
        let total = setup + round_seconds[..rounds].iter().sum::<f64>();
        return (total, format!("measured: setup + all {rounds} rounds"));
    }
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let missing = (rounds - n) as f64;
    let measured = setup + round_seconds.iter().sum::<f64>();
    if !overlapped {
        let first = round_seconds.first().copied().unwrap_or(0.0);
        let later = &round_seconds[1.min(n)..];
        let steady = if later.is_empty() { first } else { mean(later) };
        return (
            setup + first + steady * rounds.saturating_sub(1) as f64,
            format!(
                "setup + round 0 + {} × mean of later rounds",
                rounds.saturating_sub(1)
            ),
        );
    }
    if n >= 3 {
        return (
            measured + missing * mean(&round_seconds[1..n - 1]),
            format!(
                "setup + {n} measured rounds + {} × mean of rounds 1–{} (overlapped with the next)",
                rounds - n,
                n - 2
            ),
        );
    }
    let later = &phase_sums[1.min(phase_sums.len())..];
    let steady = if later.is_empty() {
        phase_sums.first().copied().unwrap_or(0.0)
    } else {
        mean(later)
    };
    (
        measured + missing * steady,
        format!(
            "setup + {n} measured rounds + {} × the later rounds' phases one after the other \
             (an upper bound: run ≥ 3 rounds to measure the overlap)",
            rounds - n
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_uses_round_zero_once_and_the_steady_mean_after() {
        let p = |s, r: &[f64], n, o| project(s, r, &[], n, o).0;
        assert_eq!(
            p(10.0, &[100.0, 70.0, 80.0], 100, false),
            10.0 + 100.0 + 75.0 * 99.0
        );
        assert_eq!(p(0.0, &[5.0], 3, false), 15.0);
        // Every round measured: their sum, overlapped or not.
        assert_eq!(p(1.0, &[5.0, 2.0, 3.0], 3, true), 11.0);
        // Overlapped: the last round overlapped nothing and counts once; the missing
        // rounds cost the mean of the middle ones.
        assert_eq!(
            p(10.0, &[100.0, 70.0, 80.0, 40.0], 100, true),
            10.0 + 290.0 + 96.0 * 75.0
        );
    }

    #[test]
    fn two_overlapped_rounds_project_from_their_phases_one_after_the_other() {
        let (t, how) = project(10.0, &[100.0, 30.0], &[120.0, 60.0], 100, true);
        assert_eq!(t, 10.0 + 130.0 + 98.0 * 60.0);
        assert!(how.contains("upper bound"), "{how}");
    }

    #[test]
    fn reference_timings_parse_and_refuse_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("timings.jsonl");
        std::fs::write(
            &p,
            "{\"event\":\"setup\",\"setup_s\":12.5}\n{\"event\":\"round\",\"round\":0,\"n_clients\":20,\"round_wall_s\":150.0,\"phases\":{\"stage1_train\":{\"wall_s\":40.0}}}\n",
        )
        .unwrap();
        let r = read_reference(&p).unwrap();
        assert_eq!(r.setup, 12.5);
        assert_eq!(r.rounds[0].0, 20);
        assert_eq!(r.rounds[0].2[0], ("stage1_train".to_string(), 40.0));
        std::fs::write(&p, "{\"event\":\"end\"}\n").unwrap();
        assert!(read_reference(&p)
            .unwrap_err()
            .to_string()
            .contains("no `round` record"));
    }
}

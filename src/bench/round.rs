//! The federated-round workload: one configured run timed phase by phase (image-feature
//! extraction, then per round stage 1, aggregation, stage 2, GM and PM evaluation), and
//! the reference harness's timings of the same work read for side-by-side ratios.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde_json::Value;

use super::{timed, BenchResult};
use crate::fed::record::RoundRecord;

/// Phase rows of one round record, names prefixed with `prefix`; `scale` multiplies the
/// stage times (a run with capped local steps, extrapolated to full epochs).
pub fn round_rows(prefix: &str, r: &RoundRecord, scale: f64) -> Vec<BenchResult> {
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
    let total: f64 = rows.iter().map(|(_, s, _)| s).sum();
    let mut out: Vec<BenchResult> = rows
        .into_iter()
        .map(|(name, s, d)| timed(format!("{prefix}/round{}/{name}", r.round), s, d))
        .collect();
    out.push(timed(format!("{prefix}/round{}/total", r.round), total, note(n)));
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

/// Projected wall time of an R-round run: setup + round 0 + (R − 1) × the mean of the
/// later rounds (round 0 trains every client; later rounds a sample).
pub fn project(setup: f64, round_seconds: &[f64], rounds: usize) -> f64 {
    let first = round_seconds.first().copied().unwrap_or(0.0);
    let later = &round_seconds[1.min(round_seconds.len())..];
    let steady = if later.is_empty() {
        first
    } else {
        later.iter().sum::<f64>() / later.len() as f64
    };
    setup + first + steady * rounds.saturating_sub(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_uses_round_zero_once_and_the_steady_mean_after() {
        assert_eq!(
            project(10.0, &[100.0, 70.0, 80.0], 100),
            10.0 + 100.0 + 75.0 * 99.0
        );
        assert_eq!(project(0.0, &[5.0], 3), 15.0);
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

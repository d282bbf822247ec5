//! `evidence.json`: what a demo (or any grid of runs) shows about the paper's claims, as
//! numbers with their seed spread — per PEFT kind and row, the GM/PM accuracies and
//! balancedness (mean, sample std, n seeds), the per-round stability, the gradient angles
//! of stage 1, and how well TKL and plain KL to the zero-shot model track balancedness
//! (Pearson r over rounds × seeds) — and the verdict lines derived from them.
//!
//! Every field name says what it holds; the README's "evidence.json" section explains
//! each. Nothing here runs a model: it reads summaries and `metrics.jsonl` records.

use serde::Serialize;

use super::compare::mean_std;
use super::run_dir::{ModelSummary, Summary};
use crate::fed::record::RoundRecord;
use crate::metrics::worst_decile;

/// Mean, sample standard deviation (n − 1; None for one value) and count over seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (None with one value).
    pub std: Option<f64>,
    /// Number of values (seeds).
    pub n: usize,
}

impl Stat {
    /// The statistic of `xs` (None when empty).
    pub fn of(xs: &[f64]) -> Option<Stat> {
        mean_std(xs).map(|(mean, std)| Stat {
            mean,
            std,
            n: xs.len(),
        })
    }

    fn sd(&self) -> f64 {
        self.std.unwrap_or(0.0)
    }
}

/// One model's last-10-round numbers over seeds.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStats {
    /// Accuracy, All (%).
    pub all: Option<Stat>,
    /// Many-class accuracy (%).
    pub many: Option<Stat>,
    /// Medium-class accuracy (%).
    pub medium: Option<Stat>,
    /// Few-class accuracy (%).
    pub few: Option<Stat>,
    /// The primary balancedness: mean accuracy of the worst 10 % of classes (%).
    pub balancedness_worst_decile: Option<Stat>,
    /// Worst-class accuracy (%).
    pub worst_class: Option<Stat>,
    /// TKL to the zero-shot model.
    pub tkl: Option<Stat>,
}

impl ModelStats {
    fn of(models: &[&ModelSummary]) -> Self {
        let pick = |f: &dyn Fn(&ModelSummary) -> Option<f64>| {
            Stat::of(&models.iter().filter_map(|m| f(m)).collect::<Vec<_>>())
        };
        ModelStats {
            all: pick(&|m| Some(m.all)),
            many: pick(&|m| m.many),
            medium: pick(&|m| m.medium),
            few: pick(&|m| m.few),
            balancedness_worst_decile: pick(&|m| m.worst_decile),
            worst_class: pick(&|m| Some(m.worst_class)),
            tkl: pick(&|m| Some(m.tkl)),
        }
    }
}

/// One row of a grid (an algorithm or ablation) over its seeds.
#[derive(Debug, Clone, Serialize)]
pub struct RowEvidence {
    /// The row's label (`promptfl`, `fedpurel@lambda=0.5`).
    pub label: String,
    /// Global model on the global test set.
    pub gm: ModelStats,
    /// Personalized models on their clients' test sets.
    pub pm: ModelStats,
    /// Per-round stability: the std of GM accuracy (All) over the last 10 rounds, per
    /// seed, then over seeds.
    pub gm_all_std_last_10_rounds: Option<Stat>,
    /// Stage 1: mean angle (degrees) between the task and the alignment gradient, the mean
    /// over rounds per seed (FedPuReL: applied and purified; PromptFL: probed, not applied).
    pub angle_mean_deg: Option<Stat>,
    /// Stage 1: fraction of (tensor, step) angles that are obtuse.
    pub obtuse_fraction: Option<Stat>,
    /// Stage 1: share of the task gradient's norm that purification removed.
    pub removed_norm_fraction: Option<Stat>,
    /// Pearson r between GM TKL and GM balancedness over every round of every seed.
    pub pearson_r_tkl_balancedness: Option<f64>,
    /// The same for plain KL (τ = 1).
    pub pearson_r_kl_balancedness: Option<f64>,
    /// (round, seed) points behind the two r.
    pub points: usize,
}

/// GM balancedness (worst decile) of a round.
fn balancedness(r: &RoundRecord) -> Option<f64> {
    worst_decile(&r.gm.per_class)
}

/// Pearson's correlation coefficient (None with fewer than 3 points or no spread).
pub fn pearson(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len();
    if n < 3 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n as f64;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for &(x, y) in points {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
        syy += (y - my) * (y - my);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// (x, y) points of a scatter.
pub type Points = Vec<(f64, f64)>;

/// (TKL, balancedness) and (KL, balancedness) of every round of `runs`.
pub fn divergence_points(runs: &[Vec<RoundRecord>]) -> (Points, Points) {
    let mut tkl = Vec::new();
    let mut kl = Vec::new();
    for r in runs.iter().flatten() {
        if let Some(b) = balancedness(r) {
            tkl.push((r.gm.tkl, b));
            kl.push((r.gm.kl, b));
        }
    }
    (tkl, kl)
}

/// The std (population) of GM accuracy over the last ≤ 10 rounds (None for one round).
fn tail_std(records: &[RoundRecord]) -> Option<f64> {
    let tail = &records[records.len().saturating_sub(10)..];
    if tail.len() < 2 {
        return None;
    }
    let xs: Vec<f64> = tail.iter().map(|r| r.gm.accuracy.all).collect();
    let m = xs.iter().sum::<f64>() / xs.len() as f64;
    Some((xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64).sqrt())
}

/// Per seed, the mean over rounds of a stage-1 statistic (seeds without it skipped).
fn per_seed_mean(runs: &[Vec<RoundRecord>], pick: impl Fn(&RoundRecord) -> Option<f64>) -> Option<Stat> {
    let per_seed: Vec<f64> = runs
        .iter()
        .filter_map(|rs| {
            let v: Vec<f64> = rs.iter().filter_map(&pick).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        })
        .collect();
    Stat::of(&per_seed)
}

impl RowEvidence {
    /// The evidence of one row from its seeds' summaries and records.
    pub fn of(label: &str, summaries: &[Summary], runs: &[Vec<RoundRecord>]) -> Self {
        let (tkl, kl) = divergence_points(runs);
        let tails: Vec<f64> = runs.iter().filter_map(|r| tail_std(r)).collect();
        RowEvidence {
            label: label.to_string(),
            gm: ModelStats::of(&summaries.iter().map(|s| &s.gm).collect::<Vec<_>>()),
            pm: ModelStats::of(&summaries.iter().map(|s| &s.pm).collect::<Vec<_>>()),
            gm_all_std_last_10_rounds: Stat::of(&tails),
            angle_mean_deg: per_seed_mean(runs, |r| r.stage1.angle_mean_deg),
            obtuse_fraction: per_seed_mean(runs, |r| r.stage1.obtuse_fraction),
            removed_norm_fraction: per_seed_mean(runs, |r| r.stage1.removed_norm_fraction),
            pearson_r_tkl_balancedness: pearson(&tkl),
            pearson_r_kl_balancedness: pearson(&kl),
            points: tkl.len(),
        }
    }
}

/// Everything one PEFT kind's grid shows.
#[derive(Debug, Clone, Serialize)]
pub struct KindEvidence {
    /// PEFT kind.
    pub peft: String,
    /// Learning rate of both stages.
    pub lr: f64,
    /// Rounds per run.
    pub rounds: usize,
    /// Seeds.
    pub seeds: Vec<u64>,
    /// One entry per row, in table order (zero-shot first).
    pub rows: Vec<RowEvidence>,
    /// Pearson r of GM TKL vs GM balancedness pooled over every row, round and seed.
    pub pooled_pearson_r_tkl_balancedness: Option<f64>,
    /// The same for plain KL.
    pub pooled_pearson_r_kl_balancedness: Option<f64>,
    /// Points behind the pooled r.
    pub pooled_points: usize,
    /// The verdict in words ([`verdict`]).
    pub verdict: Vec<String>,
}

impl KindEvidence {
    /// The evidence of a grid: `labels[i]` ran `summaries[i]` (one per seed) with
    /// records `records[i][seed]`.
    pub fn of(
        peft: &str,
        lr: f64,
        rounds: usize,
        seeds: &[u64],
        labels: &[String],
        summaries: &[Vec<Summary>],
        records: &[Vec<Vec<RoundRecord>>],
    ) -> Self {
        let rows: Vec<RowEvidence> = labels
            .iter()
            .zip(summaries)
            .zip(records)
            .map(|((l, s), r)| RowEvidence::of(l, s, r))
            .collect();
        let all: Vec<Vec<RoundRecord>> = records.iter().flatten().cloned().collect();
        let (tkl, kl) = divergence_points(&all);
        let mut e = KindEvidence {
            peft: peft.to_string(),
            lr,
            rounds,
            seeds: seeds.to_vec(),
            rows,
            pooled_pearson_r_tkl_balancedness: pearson(&tkl),
            pooled_pearson_r_kl_balancedness: pearson(&kl),
            pooled_points: tkl.len(),
            verdict: Vec::new(),
        };
        e.verdict = verdict(&e);
        e
    }

    /// The row labelled `label`.
    pub fn row(&self, label: &str) -> Option<&RowEvidence> {
        self.rows.iter().find(|r| r.label == label)
    }
}

/// Two Pearson r whose magnitudes differ by less than this are reported as equal.
const SAME_R: f64 = 0.05;

/// How two seed statistics compare: apart when the means differ by more than twice the
/// larger seed std (the rule docs/demo-regime.md fixed for the premise).
fn compare(a: &Stat, b: &Stat) -> (&'static str, f64) {
    let d = a.mean - b.mean;
    let word = if d.abs() <= 2.0 * a.sd().max(b.sd()) {
        "within 2 seed std of"
    } else if d > 0.0 {
        "above"
    } else {
        "below"
    };
    (word, d)
}

fn show(s: &Stat) -> String {
    match s.std {
        Some(sd) => format!("{:.2} ± {sd:.2}", s.mean),
        None => format!("{:.2}", s.mean),
    }
}

/// The verdict lines: whether plain fine-tuning (PromptFL) lowered GM Few and
/// balancedness below zero-shot, whether FedPuReL kept them and how it compares with
/// PromptFL, whether TKL tracks balancedness better than KL, and the stability and
/// gradient angles — each with its numbers, whichever way it comes out.
pub fn verdict(e: &KindEvidence) -> Vec<String> {
    let mut lines = Vec::new();
    let (Some(zs), Some(pf)) = (e.row("zeroshot"), e.row("promptfl")) else {
        return lines;
    };
    let ours = e.row("fedpurel");
    type Pick = fn(&ModelStats) -> Option<Stat>;
    let measures: [(&str, Pick); 3] = [
        ("GM Few-class accuracy", |m| m.few),
        ("GM balancedness (worst-decile mean)", |m| {
            m.balancedness_worst_decile
        }),
        ("GM accuracy (All)", |m| m.all),
    ];
    for (what, pick) in measures {
        let (Some(z), Some(p)) = (pick(&zs.gm), pick(&pf.gm)) else {
            continue;
        };
        let (w, d) = compare(&p, &z);
        let mut line = format!(
            "[{}] {what}: zero-shot {}, PromptFL {} — fine-tuning is {w} zero-shot ({d:+.2})",
            e.peft,
            show(&z),
            show(&p)
        );
        if let Some(o) = ours.and_then(|o| pick(&o.gm)) {
            let (wz, dz) = compare(&o, &z);
            let (wp, dp) = compare(&o, &p);
            line.push_str(&format!(
                "; FedPuReL {} is {wz} zero-shot ({dz:+.2}) and {wp} PromptFL ({dp:+.2})",
                show(&o)
            ));
        }
        lines.push(line);
    }
    if let (Some(t), Some(k)) = (
        e.pooled_pearson_r_tkl_balancedness,
        e.pooled_pearson_r_kl_balancedness,
    ) {
        let how = if (t.abs() - k.abs()).abs() < SAME_R {
            "about as closely as"
        } else if t.abs() > k.abs() {
            "more closely than"
        } else {
            "less closely than"
        };
        lines.push(format!(
            "[{}] GM TKL vs GM balancedness over {} (round, seed) points of all rows: Pearson r = {t:+.3}; plain KL: r = {k:+.3} — TKL tracks balancedness {how} KL here (|r| within {SAME_R} counts as equal)",
            e.peft, e.pooled_points
        ));
    }
    if let (Some(ps), Some(os)) = (
        pf.gm_all_std_last_10_rounds,
        ours.and_then(|o| o.gm_all_std_last_10_rounds),
    ) {
        let how = match compare(&os, &ps).0 {
            "above" => "FedPuReL is more volatile",
            "below" => "FedPuReL is steadier",
            _ => "no difference beyond 2 seed std",
        };
        lines.push(format!(
            "[{}] round-to-round std of GM accuracy over the last 10 rounds: PromptFL {}, FedPuReL {} ({how})",
            e.peft,
            show(&ps),
            show(&os),
        ));
    }
    let angle = |r: Option<&RowEvidence>| r.and_then(|r| r.angle_mean_deg.map(|a| (a, r.obtuse_fraction)));
    let pct = |s: Option<Stat>| s.map_or("–".into(), |s| format!("{:.0} %", 100.0 * s.mean));
    if let (Some((oa, oo)), Some((pa, po))) = (angle(ours), angle(Some(pf))) {
        lines.push(format!(
            "[{}] stage-1 angle between task and alignment gradients: FedPuReL {}° ({} obtuse, before purification, which removed {} of the task gradient's norm), PromptFL {}° ({} obtuse, probed, not applied)",
            e.peft,
            show(&oa),
            pct(oo),
            pct(ours.and_then(|o| o.removed_norm_fraction)),
            show(&pa),
            pct(po),
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pearson_is_one_on_a_line_and_undefined_without_spread() {
        let line: Vec<(f64, f64)> = (0..5).map(|i| (i as f64, 3.0 - 2.0 * i as f64)).collect();
        assert!((pearson(&line).unwrap() + 1.0).abs() < 1e-12);
        assert_eq!(pearson(&[(1.0, 2.0), (1.0, 3.0), (1.0, 4.0)]), None);
        assert_eq!(pearson(&line[..2]), None);
        let noisy = [(0.0, 0.0), (1.0, 2.0), (2.0, 1.0), (3.0, 3.0)];
        assert!((pearson(&noisy).unwrap() - 0.8).abs() < 1e-12);
    }

    fn stat(mean: f64, std: f64) -> Stat {
        Stat {
            mean,
            std: Some(std),
            n: 3,
        }
    }

    #[test]
    fn differences_within_two_seed_std_are_not_called_a_win() {
        assert_eq!(
            compare(&stat(50.0, 1.0), &stat(48.5, 0.5)).0,
            "within 2 seed std of"
        );
        assert_eq!(compare(&stat(50.0, 0.5), &stat(48.5, 0.5)).0, "above");
        assert_eq!(compare(&stat(47.0, 0.5), &stat(48.5, 0.5)).0, "below");
        assert_eq!(Stat::of(&[1.0]).unwrap().std, None);
        assert!(Stat::of(&[]).is_none());
    }
}

//! What a round records (a line of `metrics.jsonl`): per-stage statistics, the GM and PM
//! evaluations, a client's share of an evaluation, and the running sums that become a
//! stage's statistics. Plain data: no model, no algorithm.

use serde::{Deserialize, Serialize};

use super::local::{AngleStats, StepStats};
use crate::metrics::{Balancedness, GroupAccuracy};

/// Accuracy, balancedness and TKL of one model on one evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evaluation {
    /// All / Many / Medium / Few accuracy (%).
    pub accuracy: GroupAccuracy,
    /// Worst-class accuracy, per-class std, Few/Many.
    pub balancedness: Balancedness,
    /// Mean temperature-aligned KL to the zero-shot model over test samples.
    pub tkl: f64,
    /// Mean plain KL(zero-shot ‖ model) at τ = 1 over test samples, to check that TKL
    /// tracks balancedness better than KL (absent in records of earlier versions: 0).
    #[serde(default)]
    pub kl: f64,
    /// Per-class accuracy (%), null for classes without test samples.
    pub per_class: Vec<Option<f64>>,
    /// Micro accuracy over all evaluated samples (%); for PM, the client accuracies
    /// weighted by test-set size (the unweighted client mean is `accuracy.all`).
    pub weighted_all: f64,
}

/// Mean statistics of one stage over a round.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageStats {
    /// Local steps taken.
    pub steps: usize,
    /// Mean task (stage 2: total) loss.
    pub loss: f64,
    /// Mean alignment loss (stage 1).
    pub align_loss: f64,
    /// Fraction of parameter tensors whose gradient was purified.
    pub projected_fraction: f64,
    /// Training accuracy of the trained branch (%).
    pub train_accuracy: f64,
    /// Seconds.
    pub seconds: f64,
    /// Mean angle (degrees) between the applied task gradient and the alignment gradient
    /// over parameter tensors and steps (FedPuReL's stage 1; other algorithms' with
    /// `--probe-alignment`); absent where not computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub angle_mean_deg: Option<f64>,
    /// Fraction of those angles that are obtuse (the gradients conflict).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obtuse_fraction: Option<f64>,
    /// √(Σ‖removed‖² / Σ‖task gradient‖²): how much of the task gradient's norm
    /// purification removed (0 for a probe, which applies nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_norm_fraction: Option<f64>,
}

/// One round's record (a line of `metrics.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundRecord {
    /// Round index.
    pub round: usize,
    /// Clients trained this round, in training order.
    pub clients: Vec<usize>,
    /// Stage 1.
    pub stage1: StageStats,
    /// Stage 2.
    pub stage2: StageStats,
    /// Global model on the global test set.
    pub gm: Evaluation,
    /// Personalized models on their clients' test sets.
    pub pm: Evaluation,
    /// Seconds spent evaluating (GM and PM).
    pub eval_seconds: f64,
    /// Seconds of the server step (averaging and the algorithm's server update).
    #[serde(default)]
    pub aggregate_seconds: f64,
    /// Seconds of the GM evaluation.
    #[serde(default)]
    pub gm_seconds: f64,
    /// Seconds of the PM evaluation.
    #[serde(default)]
    pub pm_seconds: f64,
}

/// One model on one client's test set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientScore {
    /// Micro accuracy (%), None without test samples.
    pub accuracy: Option<f64>,
    /// Micro accuracy over the client's test samples of Many classes (None: it has none).
    pub many: Option<f64>,
    /// The same over Medium classes.
    pub medium: Option<f64>,
    /// The same over Few classes.
    pub few: Option<f64>,
    /// Mean TKL to the zero-shot model over the client's test samples.
    pub tkl: f64,
    /// Correct predictions.
    pub correct: usize,
}

/// A client's share of the GM/PM evaluation ([`Federation::evaluate_client`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientEvaluation {
    /// Test samples of the client.
    pub test_samples: usize,
    /// The global model on the client's test set.
    pub gm: ClientScore,
    /// The client's personalized model on its test set.
    pub pm: ClientScore,
}

/// Running sums of step statistics (means on [`Accum::finish`]).
#[derive(Debug, Clone, Default)]
pub struct Accum {
    steps: usize,
    loss: f64,
    align: f64,
    projected: usize,
    tensors: usize,
    correct: usize,
    seen: usize,
    angles: Option<AngleStats>,
}

impl Accum {
    /// Adds one step on a batch of `batch` samples.
    pub fn add(&mut self, s: &StepStats, batch: usize) {
        self.steps += 1;
        self.loss += s.task_loss as f64;
        self.align += s.align_loss as f64;
        self.projected += s.projected;
        self.tensors += s.tensors;
        self.correct += s.correct;
        self.seen += batch;
        self.add_angles(s.angles.as_ref());
    }

    fn add_angles(&mut self, a: Option<&AngleStats>) {
        if let Some(a) = a {
            self.angles.get_or_insert_with(AngleStats::default).merge(a);
        }
    }

    /// Adds another accumulator's steps.
    pub fn merge(&mut self, o: &Accum) {
        self.steps += o.steps;
        self.loss += o.loss;
        self.align += o.align;
        self.projected += o.projected;
        self.tensors += o.tensors;
        self.correct += o.correct;
        self.seen += o.seen;
        self.add_angles(o.angles.as_ref());
    }

    /// The means, with the stage's wall time.
    pub fn finish(&self, seconds: f64) -> StageStats {
        let n = self.steps.max(1) as f64;
        StageStats {
            steps: self.steps,
            loss: self.loss / n,
            align_loss: self.align / n,
            projected_fraction: self.projected as f64 / self.tensors.max(1) as f64,
            train_accuracy: 100.0 * self.correct as f64 / self.seen.max(1) as f64,
            seconds,
            angle_mean_deg: self
                .angles
                .filter(|a| a.tensors > 0)
                .map(|a| a.angle_sum_deg / a.tensors as f64),
            obtuse_fraction: self
                .angles
                .filter(|a| a.tensors > 0)
                .map(|a| a.obtuse as f64 / a.tensors as f64),
            removed_norm_fraction: self
                .angles
                .filter(|a| a.task_norm_sq > 0.0)
                .map(|a| (a.removed_norm_sq / a.task_norm_sq).sqrt()),
        }
    }
}

/// A `metrics.jsonl` line (as JSON) without its wall-clock fields — `seconds` and every
/// `*_seconds`, at any depth: what two runs of the same work must agree on exactly.
pub fn without_timings(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => m
            .into_iter()
            .filter(|(k, _)| !(k == "seconds" || k.ends_with("_seconds")))
            .map(|(k, x)| (k, without_timings(x)))
            .collect(),
        serde_json::Value::Array(a) => a.into_iter().map(without_timings).collect(),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_go_at_every_depth_and_nothing_else_does() {
        let v = serde_json::json!({
            "round": 1, "eval_seconds": 2.5, "seconds_left": 3,
            "stage1": {"seconds": 0.1, "loss": 0.5},
            "rows": [{"gm_seconds": 1.0, "all": 80.0}]
        });
        let want = serde_json::json!({
            "round": 1, "seconds_left": 3, "stage1": {"loss": 0.5}, "rows": [{"all": 80.0}]
        });
        assert_eq!(without_timings(v), want);
    }
}

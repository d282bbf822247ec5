//! The algorithm seam (docs/architecture.md): a federated algorithm is one type behind
//! [`Algorithm`], in the spirit of Flower's strategy. It says how a selected client trains
//! its copy of the global parameters, what the server does after averaging, how clients
//! personalize, and which logits the global (GM) and personalized (PM) models produce.
//! The round loop ([`super::train::Federation::run_round`]), client sampling, batch
//! orders, evaluation, logging and checkpointing are shared. Adding a baseline is one
//! file in `algorithms/` plus a line in [`registry`].

use anyhow::{bail, Result};

use super::algorithms;
use super::train::{Accum, ClientCx, FedState, Federation};
use crate::peft::model::Peft;
use crate::peft::params::ParamSet;

/// How the global model's test logits are formed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GmRule {
    /// The frozen zero-shot model.
    ZeroShot,
    /// The global parameters.
    Global,
    /// The global parameters with post-hoc logit adjustment f − τ·log π (global prior).
    GlobalPostHoc {
        /// Adjustment strength τ.
        tau: f64,
    },
}

/// How client k's personalized model's test logits are formed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PmRule {
    /// The same as the global model (no personalization).
    SameAsGm,
    /// l_G + l_P (FedPuReL's residual branch).
    Residual,
    /// l_P alone (a locally fine-tuned copy of the global model).
    Private,
    /// (1 − θ)·l_G + θ·l_P (PromptFolio's mix).
    Mix {
        /// Weight θ of the private branch.
        theta: f64,
    },
}

impl PmRule {
    /// A sentence for summaries.
    pub fn describe(&self) -> String {
        match self {
            PmRule::SameAsGm => "no personalization: PM = GM on each client's test set".into(),
            PmRule::Residual => "l_G + l_P, the global branch plus the client's residual private branch".into(),
            PmRule::Private => "l_P, the client's copy of the global model fine-tuned locally for one epoch when it was last sampled (the global model for a client never sampled)".into(),
            PmRule::Mix { theta } => format!("(1 − θ)·l_G + θ·l_P with θ = {theta}, the global branch mixed with the client's private one"),
        }
    }
}

/// One federated algorithm. `state.global` is the round-start global model throughout
/// the local phase; the loop averages the returned local copies by client size.
pub trait Algorithm: Send + Sync {
    /// The registry name (e.g. `fedpurel`, `promptfolio+fedgrab`).
    fn name(&self) -> String;

    /// Refuses PEFT kinds the method does not define (the error says which do).
    fn check(&self, _peft: &Peft) -> Result<()> {
        Ok(())
    }

    /// Whether the method trains at all (zero-shot does not).
    fn trains(&self) -> bool {
        true
    }

    /// Client `cx.client`'s local epoch on `params`, its copy of the global model; may
    /// also update the client's private state in `state`.
    fn train_local(&self, cx: &ClientCx, params: &mut ParamSet, state: &mut FedState) -> Result<Accum>;

    /// Whether [`after_aggregation`](Self::after_aggregation) keeps server state that the
    /// clients' local training reads (Fed-GraB's class prior). Such a method cannot run
    /// under an outside orchestrator that only averages parameters (`crate::bridge`).
    fn keeps_server_state(&self) -> bool {
        false
    }

    /// Server step after averaging (e.g. Fed-GraB's prior analysis); default: none.
    fn after_aggregation(&self, _fed: &Federation, _round: usize, _state: &mut FedState) -> Result<()> {
        Ok(())
    }

    /// Personalization of the round's clients against the new global model (FedPuReL's
    /// stage 2, PromptFL's local fine-tuning); default: none.
    fn personalize(&self, _cx: &ClientCx, _state: &mut FedState) -> Result<Accum> {
        Ok(Accum::default())
    }

    /// The global model's test logits.
    fn gm_rule(&self) -> GmRule {
        GmRule::Global
    }

    /// The personalized models' test logits.
    fn pm_rule(&self) -> PmRule;
}

/// Hyper-parameters of the baselines (each algorithm reads the ones it uses).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlgorithmSettings {
    /// Logit-adjustment strength τ.
    pub la_tau: f64,
    /// PromptFolio's portfolio weight θ of the local prompt (its `frac_p`).
    pub folio_theta: f64,
    /// Weight of the alignment loss added to CE in the no-purification ablation.
    pub align_weight: f64,
    /// Fed-GraB's PID gains (k_p, k_i, k_d).
    pub pid: [f64; 3],
}

impl Default for AlgorithmSettings {
    fn default() -> Self {
        AlgorithmSettings {
            la_tau: 1.0,
            folio_theta: 0.4,
            align_weight: 1.0,
            pid: algorithms::fedgrab::DEFAULT_PID,
        }
    }
}

/// Every algorithm name `--algorithm` accepts, with a one-line description.
pub const NAMES: &[(&str, &str)] = &[
    (
        "zeroshot",
        "the frozen model with the dataset's template; GM = PM",
    ),
    (
        "fedpurel",
        "FedPuReL: TKL-purified stage 1, residual personalization (the paper)",
    ),
    (
        "fedpurel-kl",
        "ablation: plain KL instead of TKL as the alignment loss",
    ),
    (
        "fedpurel-nopurify",
        "ablation: CE + w·TKL as one loss, no gradient purification",
    ),
    (
        "fedpurel-fusion",
        "ablation: stage 2 replaced by PromptFolio-style fusion personalization",
    ),
    (
        "promptfl",
        "FedAvg over the PEFT parameters with CE; PM = local fine-tuning",
    ),
    (
        "promptfl+la",
        "PromptFL with the logit-adjusted loss (global prior, τ)",
    ),
    (
        "promptfl+la-posthoc",
        "PromptFL, GM with post-hoc logit adjustment (global prior, τ)",
    ),
    (
        "promptfl+fedgrab",
        "PromptFL with Fed-GraB's balancer and prior analyzer",
    ),
    (
        "promptfolio",
        "PromptFolio: global + local prompt mixed with weight θ (prompt only)",
    ),
    (
        "promptfolio+fedgrab",
        "PromptFolio with Fed-GraB's balancer and prior analyzer",
    ),
];

/// The algorithm called `name` (a [`NAMES`] entry; `fedgrab` alone means
/// `promptfl+fedgrab`), checked against the PEFT kind.
pub fn registry(name: &str, settings: &AlgorithmSettings, peft: &Peft) -> Result<Box<dyn Algorithm>> {
    use algorithms::*;
    let a: Box<dyn Algorithm> = match name {
        "zeroshot" => Box::new(zeroshot::ZeroShot),
        "fedpurel" => Box::new(fedpurel::FedPuReL::paper()),
        "fedpurel-kl" => Box::new(fedpurel::FedPuReL::kl()),
        "fedpurel-nopurify" => Box::new(fedpurel::FedPuReL::no_purification(settings.align_weight)),
        "fedpurel-fusion" => Box::new(fedpurel::FedPuReL::fusion(settings.folio_theta)),
        "promptfl" => Box::new(promptfl::PromptFl::plain()),
        "promptfl+la" => Box::new(promptfl::PromptFl::logit_adjusted(settings.la_tau)),
        "promptfl+la-posthoc" => Box::new(promptfl::PromptFl::post_hoc(settings.la_tau)),
        "promptfl+fedgrab" | "fedgrab" => Box::new(fedgrab::FedGrab::on_promptfl(settings.pid)),
        "promptfolio" => Box::new(promptfolio::PromptFolio::new(settings.folio_theta)),
        "promptfolio+fedgrab" => Box::new(fedgrab::FedGrab::on_promptfolio(
            settings.pid,
            settings.folio_theta,
        )),
        _ => bail!("unknown algorithm `{name}`; available: {}", names().join(", ")),
    };
    a.check(peft)?;
    Ok(a)
}

/// The accepted names.
pub fn names() -> Vec<&'static str> {
    NAMES.iter().map(|(n, _)| *n).collect()
}

//! The algorithm seam (docs/architecture.md): a federated algorithm is one type behind
//! [`Algorithm`], in the spirit of Flower's strategy. It says how a selected client trains
//! its copy of the global parameters, what the server does after averaging, how clients
//! personalize, and which logits the global (GM) and personalized (PM) models produce.
//! The round loop ([`super::train::Federation::run_round`]), client sampling, batch
//! orders, evaluation, logging and checkpointing are shared. Adding a baseline is one
//! file in `algorithms/` plus its name in the list of `algorithms/mod.rs`
//! ([`super::algorithms::ALGORITHMS`]).

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use candle_core::Tensor;

pub use super::federation::{Batch, FedState, Federation};
use super::local::{loss_step, StepStats};
pub use super::record::Accum;
use super::sgd::Sgd;
use crate::objective::LossGrad;
use crate::peft::params::ParamSet;
use crate::peft::PeftKind;

/// How the global model's test logits are formed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GmRule {
    /// The frozen zero-shot model.
    ZeroShot,
    /// The global parameters (then [`Algorithm::gm_logits`]).
    Global,
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
    /// The PM's logits from the private branch's `l_p` and the global branch's (computed
    /// only when the rule needs it).
    pub fn combine(&self, l_g: impl FnOnce() -> Result<Tensor>, l_p: Tensor) -> Result<Tensor> {
        Ok(match self {
            PmRule::Private => l_p,
            PmRule::Residual => (l_g()? + l_p)?,
            PmRule::Mix { theta } => ((l_g()? * (1.0 - theta))? + (l_p * *theta)?)?,
            PmRule::SameAsGm => bail!("no private branch: PM is the GM"),
        })
    }

    /// The private parameters a client's PM uses: its own once it has trained; before
    /// that, for a fine-tuned copy ([`PmRule::Private`]) the global model itself, for a
    /// private branch the federation's initial private parameters `init`.
    pub fn private_or_start<'p>(
        &self,
        own: &'p Option<ParamSet>,
        global: &'p ParamSet,
        init: &'p ParamSet,
    ) -> &'p ParamSet {
        match (own, self) {
            (Some(p), _) => p,
            (None, PmRule::Private) => global,
            (None, _) => init,
        }
    }

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

/// What an algorithm's client-side hooks see: the federation, the round, the client,
/// and (during personalization) the new global model's text features.
pub struct ClientCx<'c> {
    /// The federation (model, PEFT, data, settings).
    pub fed: &'c Federation<'c>,
    /// Round index.
    pub round: usize,
    /// Client index.
    pub client: usize,
    /// Text features of the freshly aggregated global parameters (personalization only).
    pub global_text: Option<&'c Tensor>,
}

impl ClientCx<'_> {
    /// This client's epoch in `stage` (see [`Federation::client_epoch`]).
    pub fn epoch(&self, stage: u8, step: impl FnMut(&Batch) -> Result<StepStats> + Send) -> Result<Accum> {
        self.fed.client_epoch(self.round, self.client, stage, step)
    }

    /// One step of SGD `opt` on `params` with the loss `loss` of batch `b`'s logits
    /// ([`loss_step`]: forward, the loss's logit gradient, backward, update); `loss` may
    /// also return the logits that training accuracy should score. In stage 1 with
    /// `probe_alignment` set, the TKL gradient against the batch's zero-shot logits is
    /// computed too and its angle to the applied gradient recorded.
    pub fn loss_step(
        &self,
        params: &mut ParamSet,
        opt: &mut Sgd,
        b: &Batch,
        loss: impl FnOnce(&Tensor) -> Result<(LossGrad, Option<Tensor>)>,
    ) -> Result<StepStats> {
        loss_step(
            self.fed.clip(),
            self.fed.peft(),
            params,
            opt,
            &b.inputs,
            &b.labels,
            loss,
            (b.stage == 1 && self.fed.settings().probe_alignment).then_some(&b.zero_shot),
            b.dropout,
        )
    }

    /// This client's private parameters, or the federation's initial private parameters
    /// before it first trains them.
    pub fn private_or_init(&self, state: &FedState) -> ParamSet {
        state.private[self.client]
            .clone()
            .unwrap_or_else(|| self.fed.private_init().clone())
    }
}

/// A loss on a batch's logits (the trained branch's, or a mix of branches') with its
/// gradient; it may keep state across steps (Fed-GraB's balancer).
pub type BatchLoss<'l> = dyn FnMut(&Tensor, &Batch) -> Result<LossGrad> + Send + 'l;

/// An algorithm whose local objective another can replace while keeping everything else
/// — parameters, optimizers, personalization, GM/PM rules (Fed-GraB balances PromptFL's
/// and PromptFolio's local cross-entropy this way).
pub trait ReplaceableLoss: Algorithm {
    /// [`Algorithm::train_local`] with `loss` in place of the method's own local loss.
    fn train_local_with(
        &self,
        cx: &ClientCx,
        params: &mut ParamSet,
        state: &mut FedState,
        loss: &mut BatchLoss,
    ) -> Result<Accum>;
}

/// One federated algorithm. `state.global` is the round-start global model throughout
/// the local phase; the loop averages the returned local copies by client size.
pub trait Algorithm: Send + Sync {
    /// The registry name (e.g. `fedpurel`, `promptfolio+fedgrab`).
    fn name(&self) -> String;

    /// Whether the method trains at all (zero-shot does not).
    fn trains(&self) -> bool {
        true
    }

    /// Client `cx.client`'s local epoch on `params`, its copy of the global model; may
    /// also update the client's private state in `state`.
    fn train_local(&self, cx: &ClientCx, params: &mut ParamSet, state: &mut FedState) -> Result<Accum>;

    /// Whether [`train_local`](Self::train_local) may read what
    /// [`personalize`](Self::personalize) writes: a client's private parameters or
    /// per-client state. Say false only for a method whose local training reads just the
    /// global model, the carried momentum and the server state: then the next round's
    /// local training may run beside this round's personalization and evaluation
    /// (`super::overlap`). Default: true (never overlap).
    fn local_training_reads_private_state(&self) -> bool {
        true
    }

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

    /// The GM's test logits from the global branch's `logits` (e.g. post-hoc logit
    /// adjustment); default: unchanged.
    fn gm_logits(&self, _fed: &Federation, logits: Tensor) -> Result<Tensor> {
        Ok(logits)
    }

    /// The personalized models' test logits.
    fn pm_rule(&self) -> PmRule;
}

/// A tunable number (or fixed-length vector) of an algorithm: its `config.toml` key under
/// `[baselines]` (also the clap id), its flag, its default and its valid range.
#[derive(Debug)]
pub struct Setting {
    /// Key in `config.toml` (`[baselines]`), e.g. `la_tau`.
    pub key: &'static str,
    /// Command-line flag without the dashes, e.g. `la-tau`.
    pub flag: &'static str,
    /// What it controls (the flag's help).
    pub help: &'static str,
    /// Default value: one number, or a vector of fixed length (e.g. Fed-GraB's PID gains).
    pub default: &'static [f64],
    /// Whether one element is in range.
    pub valid: fn(f64) -> bool,
    /// The range in words, for errors ("in [0, 1]").
    pub expected: &'static str,
}

/// One algorithm as the registry knows it.
pub struct Entry {
    /// The name `--algorithm` takes.
    pub name: &'static str,
    /// Other names for it (e.g. `fedgrab` for `promptfl+fedgrab`).
    pub aliases: &'static [&'static str],
    /// One line for `--help` and the docs.
    pub summary: &'static str,
    /// The PEFT kinds the method is defined for.
    pub pefts: &'static [PeftKind],
    /// The settings it reads.
    pub settings: &'static [&'static Setting],
    /// Builds it from the run's settings (already validated).
    pub build: fn(&AlgorithmSettings) -> Box<dyn Algorithm>,
}

/// All PEFT kinds (for entries defined for every kind).
pub const ALL_PEFTS: &[PeftKind] = &[PeftKind::Prompt, PeftKind::Lora, PeftKind::Adapter];

/// The values of every registered setting (`[baselines]` in `config.toml`): what was
/// given, the registry's default for the rest. A key no algorithm reads is refused with
/// the known keys; a key added later loads old files at its default. Reading is here;
/// defaults, changes, range checks and the file format are the registry's
/// ([`super::registry`]), which knows every setting.
#[derive(Debug, Clone, PartialEq)]
pub struct AlgorithmSettings {
    pub(super) values: BTreeMap<&'static str, Vec<f64>>,
}

impl AlgorithmSettings {
    /// The value of scalar setting `s`.
    pub fn scalar(&self, s: &Setting) -> f64 {
        self.values.get(s.key).map_or(s.default[0], |v| v[0])
    }

    /// The value of vector setting `s` of length `N`.
    pub fn vector<const N: usize>(&self, s: &Setting) -> [f64; N] {
        let v = self.values.get(s.key).map_or(s.default, |v| v.as_slice());
        std::array::from_fn(|i| v[i])
    }

    /// The value of setting `key` as given (None for an unknown key).
    pub fn get(&self, key: &str) -> Option<&[f64]> {
        self.values.get(key).map(Vec::as_slice)
    }
}

//! PromptFL (Guo et al., "PromptFL: Let Federated Participants Cooperatively Learn
//! Prompts Instead of Models", IEEE TMC 2023; github.com/PEILab-Federated-Learning/PromptFL):
//! FedAvg over the PEFT parameters, each client minimizing CE for one local epoch. The
//! paper defines no personalized model; our protocol (stated in every summary): after
//! aggregation each of the round's clients fine-tunes a copy of the new global model for
//! one epoch with the same loss and a fresh optimizer of the local-training settings, and
//! keeps it; PM_k = that copy's logits (the global model for a client never sampled).
//! Choices where the paper is silent follow FedPuReL's protocol for comparability: SGD
//! lr 1e-3, momentum 0.9, weight decay 5e-4, batch 32, optimizer fresh per client, the
//! same prompt/LoRA/adapter parameterization and initialization.
//!
//! With logit adjustment (Menon et al., ICLR 2021): `promptfl+la` minimizes
//! CE(f + τ·log π, y) in both phases with π the global long-tailed class prior (each
//! client shares its class counts once; the standard assumption of federated LT work);
//! `promptfl+la-posthoc` trains plain PromptFL and predicts with f − τ·log π on the
//! global test set (PM unadjusted: client test sets follow the client's own prior).

use anyhow::Result;
use candle_core::Tensor;

use crate::fed::algorithm::{
    Accum, Algorithm, Batch, BatchLoss, ClientCx, Entry, FedState, Federation, PmRule, ReplaceableLoss,
    Setting, ALL_PEFTS,
};
use crate::fed::sgd::Sgd;
use crate::objective::ce::cross_entropy;
use crate::objective::logit_adjust::{la_loss, log_prior_shift, post_hoc};
use crate::objective::LossGrad;
use crate::peft::params::ParamSet;

/// Logit-adjustment strength τ.
pub const LA_TAU: Setting = Setting {
    key: "la_tau",
    flag: "la-tau",
    help: "Logit-adjustment strength τ",
    default: &[1.0],
    valid: f64::is_finite,
    expected: "a finite number",
};

/// PromptFL and its logit-adjusted variants.
pub const ENTRIES: &[Entry] = &[
    Entry {
        name: "promptfl",
        aliases: &[],
        summary: "FedAvg over the PEFT parameters with CE; PM = local fine-tuning",
        pefts: ALL_PEFTS,
        settings: &[],
        build: |_| Box::new(PromptFl::plain()),
    },
    Entry {
        name: "promptfl+la",
        aliases: &[],
        summary: "PromptFL with the logit-adjusted loss (global prior, τ)",
        pefts: ALL_PEFTS,
        settings: &[&LA_TAU],
        build: |s| Box::new(PromptFl::logit_adjusted(s.scalar(&LA_TAU))),
    },
    Entry {
        name: "promptfl+la-posthoc",
        aliases: &[],
        summary: "PromptFL, GM with post-hoc logit adjustment (global prior, τ)",
        pefts: ALL_PEFTS,
        settings: &[&LA_TAU],
        build: |s| Box::new(PromptFl::post_hoc(s.scalar(&LA_TAU))),
    },
];

/// The local objective.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Loss {
    /// Cross-entropy.
    Ce,
    /// Logit-adjusted CE with strength τ.
    LogitAdjusted(f64),
}

/// PromptFL, optionally with logit adjustment.
pub struct PromptFl {
    loss: Loss,
    post_hoc: Option<f64>,
}

impl PromptFl {
    /// Plain FedAvg with CE.
    pub fn plain() -> Self {
        PromptFl {
            loss: Loss::Ce,
            post_hoc: None,
        }
    }

    /// The logit-adjusted loss with strength τ.
    pub fn logit_adjusted(tau: f64) -> Self {
        PromptFl {
            loss: Loss::LogitAdjusted(tau),
            post_hoc: None,
        }
    }

    /// Plain training, post-hoc adjustment of the global model with strength τ.
    pub fn post_hoc(tau: f64) -> Self {
        PromptFl {
            loss: Loss::Ce,
            post_hoc: Some(tau),
        }
    }

    fn loss_fn(&self, cx: &ClientCx) -> Result<impl Fn(&Tensor, &Batch) -> Result<LossGrad>> {
        let shift = match self.loss {
            Loss::Ce => None,
            Loss::LogitAdjusted(tau) => Some(log_prior_shift(
                cx.fed.class_counts(),
                tau,
                &Tensor::zeros(1, candle_core::DType::F32, cx.fed.clip().device())?,
            )?),
        };
        Ok(move |f: &Tensor, b: &Batch| match &shift {
            Some(s) => la_loss(f, &b.labels, &s.to_dtype(f.dtype())?),
            None => cross_entropy(f, &b.labels),
        })
    }

    /// One epoch of `loss` on `params` with a fresh optimizer.
    fn epoch(cx: &ClientCx, stage: u8, params: &mut ParamSet, loss: &mut BatchLoss) -> Result<Accum> {
        let mut opt = Sgd::new(cx.fed.settings().stage1);
        cx.epoch(stage, |b| {
            cx.loss_step(params, &mut opt, b, |f| Ok((loss(f, b)?, None)))
        })
    }
}

impl ReplaceableLoss for PromptFl {
    fn train_local_with(
        &self,
        cx: &ClientCx,
        params: &mut ParamSet,
        _state: &mut FedState,
        loss: &mut BatchLoss,
    ) -> Result<Accum> {
        Self::epoch(cx, 1, params, loss)
    }
}

impl Algorithm for PromptFl {
    fn name(&self) -> String {
        match (self.loss, self.post_hoc) {
            (Loss::LogitAdjusted(_), _) => "promptfl+la".into(),
            (_, Some(_)) => "promptfl+la-posthoc".into(),
            _ => "promptfl".into(),
        }
    }

    fn train_local(&self, cx: &ClientCx, params: &mut ParamSet, state: &mut FedState) -> Result<Accum> {
        let loss = self.loss_fn(cx)?;
        self.train_local_with(cx, params, state, &mut |f, b| loss(f, b))
    }

    fn personalize(&self, cx: &ClientCx, state: &mut FedState) -> Result<Accum> {
        let loss = self.loss_fn(cx)?;
        let mut copy = state.global.clone();
        let acc = Self::epoch(cx, 2, &mut copy, &mut |f, b| loss(f, b))?;
        state.private[cx.client] = Some(copy);
        Ok(acc)
    }

    /// `promptfl+la-posthoc`: f − τ·log π with the global class prior π.
    fn gm_logits(&self, fed: &Federation, logits: Tensor) -> Result<Tensor> {
        match self.post_hoc {
            Some(tau) => post_hoc(&logits, &log_prior_shift(fed.class_counts(), tau, &logits)?),
            None => Ok(logits),
        }
    }

    fn pm_rule(&self) -> PmRule {
        PmRule::Private
    }
}

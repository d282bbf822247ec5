//! FedPuReL (CVPR 2026; the authors' code, docs/method.md §4–5) and its ablations.
//!
//! Local training (stage 1): task CE and the alignment loss to the frozen zero-shot
//! model (TKL) share one backward pass with two cotangents; per parameter tensor the
//! task gradient is purified against the alignment gradient; SGD with momentum and weight
//! decay. Personalization (stage 2): a private branch of the same PEFT kind trained
//! against the frozen new global branch with λ·CE(l_P) + (1 − λ)·CE(l_G + l_P)
//! (adapter: λ = 0); PM = l_G + l_P.
//!
//! Ablations: `fedpurel-kl` (plain KL at τ = 1 instead of TKL), `fedpurel-nopurify`
//! (CE + w·TKL as one loss, so the alignment gradient is added instead of used to purify),
//! `fedpurel-fusion` (stage 2 replaced by PromptFolio-style fusion personalization: the
//! private branch trained on CE((1 − θ)·l_G + θ·l_P), PM = that mix). The λ sweep is the
//! `--lambda` option.

use anyhow::Result;
use candle_core::Tensor;

use super::promptfolio::THETA;
use crate::fed::algorithm::{Accum, Algorithm, ClientCx, Entry, FedState, PmRule, Setting, ALL_PEFTS};
use crate::fed::local::{stage1_step, stage2_step, AlignLoss, Stage1Settings};
use crate::fed::sgd::Sgd;
use crate::objective::ce::cross_entropy;
use crate::objective::tkl::tkl;
use crate::objective::LossGrad;
use crate::peft::model::Peft;
use crate::peft::params::ParamSet;

/// Weight w of the alignment loss added to CE in `fedpurel-nopurify`.
pub const ALIGN_WEIGHT: Setting = Setting {
    key: "align_weight",
    flag: "align-weight",
    help: "Weight of the alignment loss added to CE",
    default: &[1.0],
    valid: |w| w >= 0.0 && w.is_finite(),
    expected: "a finite number ≥ 0",
};

/// The method and its ablations.
pub const ENTRIES: &[Entry] = &[
    Entry {
        name: "fedpurel",
        aliases: &[],
        summary: "FedPuReL: TKL-purified stage 1, residual personalization (the paper)",
        pefts: ALL_PEFTS,
        settings: &[],
        build: |_| Box::new(FedPuReL::paper()),
    },
    Entry {
        name: "fedpurel-kl",
        aliases: &[],
        summary: "ablation: plain KL instead of TKL as the alignment loss",
        pefts: ALL_PEFTS,
        settings: &[],
        build: |_| Box::new(FedPuReL::kl()),
    },
    Entry {
        name: "fedpurel-nopurify",
        aliases: &[],
        summary: "ablation: CE + w·TKL as one loss, no gradient purification",
        pefts: ALL_PEFTS,
        settings: &[&ALIGN_WEIGHT],
        build: |s| Box::new(FedPuReL::no_purification(s.scalar(&ALIGN_WEIGHT))),
    },
    Entry {
        name: "fedpurel-fusion",
        aliases: &[],
        summary: "ablation: stage 2 replaced by PromptFolio-style fusion personalization",
        pefts: ALL_PEFTS,
        settings: &[&THETA],
        build: |s| Box::new(FedPuReL::fusion(s.scalar(&THETA))),
    },
];

/// How stage 1 combines task and alignment.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Alignment {
    /// The run's `--align` loss with purification at the run's λ_proj.
    Purified,
    /// Plain KL instead of the run's alignment loss, purified.
    PurifiedKl,
    /// CE + w·TKL, no purification.
    Added(f64),
}

/// How stage 2 personalizes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Personal {
    /// The residual branch with the stage-2 loss.
    Residual,
    /// Fusion: CE((1 − θ)·l_G + θ·l_P).
    Fusion(f64),
}

/// FedPuReL or one of its ablations.
pub struct FedPuReL {
    alignment: Alignment,
    personal: Personal,
}

impl FedPuReL {
    /// The method of the paper.
    pub fn paper() -> Self {
        FedPuReL {
            alignment: Alignment::Purified,
            personal: Personal::Residual,
        }
    }

    /// Ablation: KL instead of TKL.
    pub fn kl() -> Self {
        FedPuReL {
            alignment: Alignment::PurifiedKl,
            ..Self::paper()
        }
    }

    /// Ablation: the alignment loss added with weight `w`, no purification.
    pub fn no_purification(w: f64) -> Self {
        FedPuReL {
            alignment: Alignment::Added(w),
            ..Self::paper()
        }
    }

    /// Ablation: fusion personalization with weight θ instead of the residual branch.
    pub fn fusion(theta: f64) -> Self {
        FedPuReL {
            personal: Personal::Fusion(theta),
            ..Self::paper()
        }
    }
}

/// CE + w·TKL as one loss with its gradient.
pub fn added_alignment(f: &Tensor, y: &[u32], z: &Tensor, w: f64) -> Result<LossGrad> {
    let task = cross_entropy(f, y)?;
    let align = tkl(f, z)?.loss;
    Ok(LossGrad {
        loss: task.loss + (w * align.loss as f64) as f32,
        grad: (task.grad + (align.grad * w)?)?,
    })
}

/// CE((1 − θ)·l_a + θ·l_b, y) with its gradient w.r.t. l_b (θ times that w.r.t. the mix),
/// and the mixed logits.
pub fn mixed_ce(l_a: &Tensor, l_b: &Tensor, theta: f64, y: &[u32]) -> Result<(LossGrad, Tensor)> {
    let mixed = ((l_a * (1.0 - theta))? + (l_b * theta)?)?;
    let l = cross_entropy(&mixed, y)?;
    Ok((
        LossGrad {
            loss: l.loss,
            grad: (l.grad * theta)?,
        },
        mixed,
    ))
}

impl Algorithm for FedPuReL {
    fn name(&self) -> String {
        match (self.alignment, self.personal) {
            (Alignment::PurifiedKl, _) => "fedpurel-kl".into(),
            (Alignment::Added(_), _) => "fedpurel-nopurify".into(),
            (_, Personal::Fusion(_)) => "fedpurel-fusion".into(),
            _ => "fedpurel".into(),
        }
    }

    fn train_local(&self, cx: &ClientCx, params: &mut ParamSet, state: &mut FedState) -> Result<Accum> {
        let fed = cx.fed;
        let s = fed.settings();
        let mut opt = Sgd::new(s.stage1);
        if s.carry_momentum {
            opt.momentum = state.momentum.take();
        }
        let settings = Stage1Settings {
            align: if self.alignment == Alignment::PurifiedKl {
                AlignLoss::Kl
            } else {
                s.align
            },
            lambda_proj: s.lambda_proj,
        };
        let acc = cx.epoch(1, |b| match self.alignment {
            Alignment::Added(w) => cx.loss_step(params, &mut opt, b, |f| {
                Ok((added_alignment(f, &b.labels, &b.zero_shot, w)?, None))
            }),
            _ => stage1_step(
                fed.clip(),
                fed.peft(),
                params,
                &mut opt,
                &b.inputs,
                &b.labels,
                &b.zero_shot,
                &settings,
                b.dropout,
            ),
        })?;
        if s.carry_momentum {
            state.momentum = opt.momentum.take();
        }
        Ok(acc)
    }

    /// Stage 1 starts from the global model (and the carried momentum); the private
    /// branch only enters in stage 2, for every ablation.
    fn local_training_reads_private_state(&self) -> bool {
        false
    }

    fn personalize(&self, cx: &ClientCx, state: &mut FedState) -> Result<Accum> {
        let fed = cx.fed;
        let s = fed.settings();
        let k = cx.client;
        let global_text = cx
            .global_text
            .expect("the loop passes global text features to personalization");
        let mut private = cx.private_or_init(state);
        let mut opt = Sgd::new(s.stage2);
        // docs/method.md §5: the adapter's private branch learns only through the fused logits.
        let lambda = if matches!(fed.peft(), Peft::Adapter { .. }) {
            0.0
        } else {
            s.lambda
        };
        let global = &state.global;
        let acc = cx.epoch(2, |b| {
            let l_g = fed
                .peft()
                .logits_with_text(fed.clip(), global, &b.inputs, global_text)?;
            match self.personal {
                Personal::Residual => stage2_step(
                    fed.clip(),
                    fed.peft(),
                    &mut private,
                    &mut opt,
                    &b.inputs,
                    &b.labels,
                    &l_g,
                    lambda,
                    b.dropout,
                ),
                Personal::Fusion(theta) => cx.loss_step(&mut private, &mut opt, b, |f| {
                    let (l, mixed) = mixed_ce(&l_g, f, theta, &b.labels)?;
                    Ok((l, Some(mixed)))
                }),
            }
        })?;
        state.private[k] = Some(private);
        Ok(acc)
    }

    fn pm_rule(&self) -> PmRule {
        match self.personal {
            Personal::Residual => PmRule::Residual,
            Personal::Fusion(theta) => PmRule::Mix { theta },
        }
    }
}

//! PromptFolio (Pan et al., "Federated Learning from Vision-Language Foundation Models:
//! Theoretical Analysis and Method", NeurIPS 2024; github.com/PanBikang/PromptFolio).
//!
//! Read at commit 8f729aa (`trainers/PromptFolio.py`, `federated_main.py`).
//!
//! Each client holds two CoOp prompts of the same shape (the code's `ctx[0]`, `ctx[1]`):
//! a global one (averaged by the server, weights n_k / Σ n_k) and a local one (private,
//! never averaged). Each prompt's text features are L2-normalized, then mixed with the
//! portfolio weight θ of the local prompt (`--frac_p`, default 0.4 in the code; 0 = fully
//! global), not renormalized: t = (1 − θ)·t̂_G + θ·t̂_L, and one CE on the mixed logits
//! trains both prompts in the same local step. CLIP's logits are linear in t, so the
//! mixed logits are (1 − θ)·l_G + θ·l_L exactly, which is how we compute them.
//!
//! Choices: the two prompts are independent N(0, 0.02²) draws as in the code (ours from
//! the `init-global` and `init-private` streams); optimizer, lr, batch size, local epochs
//! and n_ctx follow the shared protocol of this tool (the code's script uses lr 0.002,
//! 5 local epochs, batch 16, n_ctx 8, one optimizer carried across clients), so that a
//! table compares methods, not budgets; θ = 0.4 as the code (`--folio-theta`). The code evaluates only the mixed model on the sampled
//! clients' test sets; we report GM = the global prompt alone on the global test set and
//! PM_k = the mix with client k's local prompt on its own test set, for all clients.
//! Prompt learning only (the method is defined for prompts).

use anyhow::Result;

use crate::fed::algorithm::{
    Accum, Algorithm, BatchLoss, ClientCx, Entry, FedState, PmRule, ReplaceableLoss, Setting,
};
use crate::fed::local::mix_step;
use crate::fed::sgd::Sgd;
use crate::objective::ce::cross_entropy;
use crate::peft::params::ParamSet;
use crate::peft::PeftKind;

/// PromptFolio's portfolio weight θ of the local prompt (its `frac_p`).
pub const THETA: Setting = Setting {
    key: "folio_theta",
    flag: "folio-theta",
    help: "PromptFolio's weight θ of the local prompt",
    default: &[0.4],
    valid: |t| (0.0..=1.0).contains(&t),
    expected: "in [0, 1]",
};

/// The registry's entry: prompt learning only.
pub const ENTRIES: &[Entry] = &[Entry {
    name: "promptfolio",
    aliases: &[],
    summary: "PromptFolio: global + local prompt mixed with weight θ (prompt only)",
    pefts: &[PeftKind::Prompt],
    settings: &[&THETA],
    build: |s| Box::new(PromptFolio::new(s.scalar(&THETA))),
}];

/// PromptFolio with portfolio weight θ.
pub struct PromptFolio {
    theta: f64,
}

impl PromptFolio {
    /// θ = weight of the local prompt.
    pub fn new(theta: f64) -> Self {
        PromptFolio { theta }
    }
}

impl Algorithm for PromptFolio {
    fn name(&self) -> String {
        "promptfolio".into()
    }

    fn train_local(&self, cx: &ClientCx, params: &mut ParamSet, state: &mut FedState) -> Result<Accum> {
        self.train_local_with(cx, params, state, &mut |mixed, b| cross_entropy(mixed, &b.labels))
    }

    fn pm_rule(&self) -> PmRule {
        PmRule::Mix { theta: self.theta }
    }
}

impl ReplaceableLoss for PromptFolio {
    /// Both prompts trained in one step on `loss` of the mixed logits.
    fn train_local_with(
        &self,
        cx: &ClientCx,
        params: &mut ParamSet,
        state: &mut FedState,
        loss: &mut BatchLoss,
    ) -> Result<Accum> {
        let fed = cx.fed;
        let k = cx.client;
        let mut local = cx.private_or_init(state);
        let mut opt_g = Sgd::new(fed.settings().stage1);
        let mut opt_l = Sgd::new(fed.settings().stage1);
        let acc = cx.epoch(1, |b| {
            mix_step(
                fed.clip(),
                fed.peft(),
                params,
                &mut opt_g,
                &mut local,
                &mut opt_l,
                self.theta,
                &b.inputs,
                &b.labels,
                |mixed| loss(mixed, b),
                b.dropout,
            )
        })?;
        state.private[k] = Some(local);
        Ok(acc)
    }
}

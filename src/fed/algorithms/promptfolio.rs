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

use anyhow::{bail, Result};

use crate::fed::algorithm::{Algorithm, PmRule};
use crate::fed::local::mix_step;
use crate::fed::sgd::Sgd;
use crate::fed::train::{Accum, ClientCx, FedState};
use crate::objective::ce::cross_entropy;
use crate::peft::model::Peft;
use crate::peft::params::ParamSet;

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

/// Refuses non-prompt PEFT kinds for the PromptFolio family.
pub fn check_prompt(name: &str, peft: &Peft, theta: f64) -> Result<()> {
    if !matches!(peft, Peft::Prompt(_)) {
        bail!("{name} is defined for prompt learning only (--peft prompt); with LoRA or the adapter use promptfl, promptfl+fedgrab, promptfl+la or fedpurel");
    }
    if !(0.0..=1.0).contains(&theta) {
        bail!("the PromptFolio weight θ must be in [0, 1], got {theta}");
    }
    Ok(())
}

impl Algorithm for PromptFolio {
    fn name(&self) -> String {
        "promptfolio".into()
    }

    fn check(&self, peft: &Peft) -> Result<()> {
        check_prompt("promptfolio", peft, self.theta)
    }

    fn train_local(&self, cx: &ClientCx, params: &mut ParamSet, state: &mut FedState) -> Result<Accum> {
        let fed = cx.fed;
        let k = cx.client;
        let mut local = state.private[k]
            .clone()
            .unwrap_or_else(|| fed.private_init().clone());
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
                |mixed| cross_entropy(mixed, &b.labels),
                b.dropout,
            )
        })?;
        state.private[k] = Some(local);
        Ok(acc)
    }

    fn pm_rule(&self) -> PmRule {
        PmRule::Mix { theta: self.theta }
    }
}

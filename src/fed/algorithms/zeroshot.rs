//! Zero-shot CLIP: the frozen model with the dataset's template, no training. GM = PM =
//! the zero-shot logits; every round records the same numbers (one round suffices).

use anyhow::Result;

use crate::fed::algorithm::{Algorithm, GmRule, PmRule};
use crate::fed::train::{Accum, ClientCx, FedState};
use crate::peft::params::ParamSet;

/// The frozen zero-shot model.
pub struct ZeroShot;

impl Algorithm for ZeroShot {
    fn name(&self) -> String {
        "zeroshot".into()
    }

    fn trains(&self) -> bool {
        false
    }

    fn train_local(&self, _cx: &ClientCx, _params: &mut ParamSet, _state: &mut FedState) -> Result<Accum> {
        Ok(Accum::default())
    }

    fn gm_rule(&self) -> GmRule {
        GmRule::ZeroShot
    }

    fn pm_rule(&self) -> PmRule {
        PmRule::SameAsGm
    }
}

//! Zero-shot CLIP: the frozen model with the dataset's template, no training. GM = PM =
//! the zero-shot logits; every round records the same numbers (one round suffices).

use anyhow::Result;

use crate::fed::algorithm::{Accum, Algorithm, ClientCx, Entry, FedState, GmRule, PmRule, ALL_PEFTS};
use crate::peft::params::ParamSet;

/// The registry's entry.
pub const ENTRIES: &[Entry] = &[Entry {
    name: "zeroshot",
    aliases: &[],
    summary: "the frozen model with the dataset's template; GM = PM",
    pefts: ALL_PEFTS,
    settings: &[],
    build: |_| Box::new(ZeroShot),
}];

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

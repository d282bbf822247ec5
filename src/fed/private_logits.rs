//! Each client's private-branch test logits, kept from one evaluation to the next.
//!
//! A client's private branch l_P changes only in rounds that sample it (40 % of the
//! clients a round in the paper's setting), yet every evaluation scores every client's
//! PM. With LoRA on the image tower l_P costs a tower forward over the client's test
//! images, so the PM evaluation of a round recomputed, for the 60 % of clients that did
//! not train, logits it had already computed. [`PrivateLogits`] keeps each client's last
//! l_P with a byte copy of the parameters and test images it came from, and hands it back
//! only when both are byte for byte the same — the same computation, so the same bits.
//!
//! The same keeping serves the private branch's text features (kept with no images):
//! prompt tuning's PM evaluation runs the text encoder once per client, 20 times a
//! round in the paper's setting, for 8 clients that changed.

use std::sync::Mutex;

use anyhow::Result;
use candle_core::Tensor;

use crate::peft::params::ParamSet;

/// Per client, the last private-branch logits and what they were computed from.
pub(super) struct PrivateLogits {
    slots: Mutex<Vec<Option<Kept>>>,
}

struct Kept {
    /// The private parameters (names, shapes, dtypes, values: their safetensors bytes).
    params: Vec<u8>,
    /// The test images, in order.
    idx: Vec<usize>,
    /// l_P `[idx.len(), C]`.
    logits: Tensor,
}

impl PrivateLogits {
    /// Nothing kept yet, for `clients` clients.
    pub(super) fn new(clients: usize) -> Self {
        PrivateLogits {
            slots: Mutex::new((0..clients).map(|_| None).collect()),
        }
    }

    /// Client `k`'s l_P for `params` on test images `idx`: the kept logits when they came
    /// from these very parameters and images, else `compute()`, which is then kept.
    pub(super) fn get_or_compute(
        &self,
        k: usize,
        params: &ParamSet,
        idx: &[usize],
        compute: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Tensor> {
        let bytes = params.to_safetensors()?;
        {
            let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(Some(kept)) = slots.get(k) {
                if kept.params == bytes && kept.idx == idx {
                    return Ok(kept.logits.clone());
                }
            }
        }
        let logits = compute()?;
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get_mut(k) {
            *slot = Some(Kept {
                params: bytes,
                idx: idx.to_vec(),
                logits: logits.clone(),
            });
        }
        Ok(logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::cell::Cell;

    fn params(v: f32) -> ParamSet {
        ParamSet::from_pairs([("a".to_string(), Tensor::new(&[v, 2.0], &Device::Cpu).unwrap())])
    }

    #[test]
    fn kept_only_for_the_same_parameters_and_images() {
        let kept = PrivateLogits::new(2);
        let runs = Cell::new(0);
        let compute = |x: f32| {
            runs.set(runs.get() + 1);
            Ok(Tensor::new(&[x], &Device::Cpu)?)
        };
        let get = |k, p: f32, idx: &[usize], x: f32| {
            kept.get_or_compute(k, &params(p), idx, || compute(x))
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0]
        };
        assert_eq!(get(0, 1.0, &[3, 4], 10.0), 10.0);
        assert_eq!(
            get(0, 1.0, &[3, 4], 11.0),
            10.0,
            "same parameters and images: kept"
        );
        assert_eq!(runs.get(), 1);
        assert_eq!(get(0, 1.5, &[3, 4], 12.0), 12.0, "other parameters: computed");
        assert_eq!(get(0, 1.5, &[4, 3], 13.0), 13.0, "other images: computed");
        assert_eq!(get(1, 1.5, &[4, 3], 14.0), 14.0, "another client: its own slot");
        assert_eq!(get(0, 1.5, &[4, 3], 15.0), 13.0);
        assert_eq!(runs.get(), 4);
        // -0.0 and 0.0 compare equal as numbers but are other bits: recomputed.
        assert_eq!(get(1, 0.0, &[1], 1.0), 1.0);
        assert_eq!(get(1, -0.0, &[1], 2.0), 2.0);
    }
}

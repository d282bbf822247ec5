//! LoRA on the attention projections of CLIP's encoders (the CLIP-LoRA lineage of the
//! reference, `loralib/`): Δy = s · B A drop(x) with A `[r, in]` Kaiming-uniform (a = √5,
//! i.e. U(±1/√in)), B `[out, r]` zero, s = α/√r (the reference's rsLoRA-style scale) and
//! dropout on the adapter input in training only. Default: vision encoder, all layers,
//! q, k, v, rank 8, α = 16, dropout 0.25.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use super::params::ParamSet;
use crate::clip::block::{BlockLora, BlockLoraGrad, Lora, LoraGrad};
use crate::clip::random::uniform;

/// Which projections of a block carry adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    /// Query.
    pub q: bool,
    /// Key.
    pub k: bool,
    /// Value.
    pub v: bool,
    /// Output.
    pub o: bool,
}

/// LoRA hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// Rank r.
    pub rank: usize,
    /// α; the scale is α/√r.
    pub alpha: f64,
    /// Dropout probability on the adapter input (training only).
    pub dropout: f64,
    /// Projections with adapters.
    pub targets: Targets,
}

impl Default for LoraSpec {
    fn default() -> Self {
        LoraSpec {
            rank: 8,
            alpha: 16.0,
            dropout: 0.25,
            targets: Targets {
                q: true,
                k: true,
                v: true,
                o: false,
            },
        }
    }
}

const PROJ: [&str; 4] = ["q", "k", "v", "o"];

impl LoraSpec {
    /// s = α/√r.
    pub fn scale(&self) -> f64 {
        self.alpha / (self.rank as f64).sqrt()
    }

    fn enabled(&self) -> [bool; 4] {
        let t = self.targets;
        [t.q, t.k, t.v, t.o]
    }

    /// Fresh parameters for `layers` blocks of width `width` under `prefix` (e.g.
    /// `lora.vision`): A uniform in ±1/√width, B zero.
    pub fn init(
        &self,
        prefix: &str,
        layers: usize,
        width: usize,
        seed: u64,
        device: &Device,
    ) -> Result<ParamSet> {
        if self.rank == 0 {
            bail!("LoRA rank must be at least 1");
        }
        let bound = 1.0 / (width as f32).sqrt();
        let mut pairs = Vec::new();
        for l in 0..layers {
            for (j, name) in PROJ.iter().enumerate().filter(|(j, _)| self.enabled()[*j]) {
                let s = seed.wrapping_add((l * 8 + j) as u64 * 7919);
                pairs.push((
                    format!("{prefix}.{l}.{name}.a"),
                    uniform(&[self.rank, width], s, bound, device)?,
                ));
                pairs.push((
                    format!("{prefix}.{l}.{name}.b"),
                    Tensor::zeros((width, self.rank), DType::F32, device)?,
                ));
            }
        }
        Ok(ParamSet::from_pairs(pairs))
    }

    /// The per-block adapters for a forward. With `dropout_seed`, each adapter gets its own
    /// Bernoulli(1 − p) mask over `rows × width` inputs, scaled by 1/(1 − p).
    pub fn block_loras(
        &self,
        params: &ParamSet,
        prefix: &str,
        layers: usize,
        rows: usize,
        dropout_seed: Option<u64>,
    ) -> Result<Vec<BlockLora>> {
        let mut out = Vec::with_capacity(layers);
        for l in 0..layers {
            let mut adapters: [Option<Lora>; 4] = [None, None, None, None];
            for (j, name) in PROJ.iter().enumerate().filter(|(j, _)| self.enabled()[*j]) {
                let a = params.get(&format!("{prefix}.{l}.{name}.a"))?.clone();
                let b = params.get(&format!("{prefix}.{l}.{name}.b"))?.clone();
                let dropout_mask = match dropout_seed {
                    Some(seed) if self.dropout > 0.0 => {
                        let width = a.dim(1)?;
                        let u = uniform(
                            &[rows, width],
                            seed.wrapping_add((l * 8 + j) as u64 * 104_729),
                            1.0,
                            a.device(),
                        )?;
                        let keep = u.ge(2.0 * self.dropout - 1.0)?.to_dtype(a.dtype())?;
                        Some((keep / (1.0 - self.dropout))?)
                    }
                    _ => None,
                };
                adapters[j] = Some(Lora {
                    a,
                    b,
                    scale: self.scale(),
                    dropout_mask,
                });
            }
            let [q, k, v, o] = adapters;
            out.push(BlockLora { q, k, v, o });
        }
        Ok(out)
    }

    /// Per-cotangent parameter gradients from the encoder's per-block LoRA gradients.
    pub fn grads_to_params(
        &self,
        grads: &[BlockLoraGrad],
        prefix: &str,
        cotangents: usize,
    ) -> Result<Vec<ParamSet>> {
        let mut sets = vec![ParamSet::default(); cotangents];
        for (l, g) in grads.iter().enumerate() {
            for (j, lg) in [&g.q, &g.k, &g.v, &g.o].into_iter().enumerate() {
                let Some(LoraGrad { a, b }) = lg else { continue };
                for (k, set) in sets.iter_mut().enumerate() {
                    set.tensors
                        .insert(format!("{prefix}.{l}.{}.a", PROJ[j]), a.get(k)?);
                    set.tensors
                        .insert(format!("{prefix}.{l}.{}.b", PROJ[j]), b.get(k)?);
                }
            }
        }
        Ok(sets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_shapes_and_counts() {
        let spec = LoraSpec::default();
        assert!((spec.scale() - 16.0 / 8f64.sqrt()).abs() < 1e-12);
        let p = spec.init("lora.vision", 12, 768, 1, &Device::Cpu).unwrap();
        assert_eq!(p.tensors.len(), 72);
        assert_eq!(p.numel(), 442_368);
        let b = p.get("lora.vision.3.k.b").unwrap();
        assert_eq!(
            b.sum_all().unwrap().abs().unwrap().to_scalar::<f32>().unwrap(),
            0.0
        );
        let a = p.get("lora.vision.3.k.a").unwrap();
        let max = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(max <= 1.0 / 768f32.sqrt() && max > 0.0);
    }

    #[test]
    fn dropout_masks_keep_the_expected_fraction() {
        let spec = LoraSpec::default();
        let p = spec.init("lora.vision", 1, 64, 1, &Device::Cpu).unwrap();
        let l = spec.block_loras(&p, "lora.vision", 1, 500, Some(7)).unwrap();
        let m = l[0].q.as_ref().unwrap().dropout_mask.as_ref().unwrap();
        let kept = m
            .gt(0.0)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((kept - 0.75).abs() < 0.01, "kept {kept}");
        let q2 = spec.block_loras(&p, "lora.vision", 1, 500, Some(7)).unwrap();
        let same = (m - q2[0].q.as_ref().unwrap().dropout_mask.as_ref().unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap();
        assert_eq!(same.to_scalar::<f32>().unwrap(), 0.0);
        assert!(spec.block_loras(&p, "lora.vision", 1, 10, None).unwrap()[0]
            .v
            .as_ref()
            .unwrap()
            .dropout_mask
            .is_none());
    }
}

//! AdamW exactly as `torch.optim.AdamW` (no amsgrad), over a named CLIP parameter set:
//!
//! ```text
//! p ← p · (1 − lr · λ)                     (decoupled weight decay, only where it applies)
//! m ← β₁ m + (1 − β₁) g,   v ← β₂ v + (1 − β₂) g²
//! p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
//! ```
//!
//! **Which parameters decay** ([`decays`]): the matrices of linear maps — attention
//! q/k/v/out, MLP fc1/fc2, the text and visual projections and the patch-embedding
//! convolution. Nothing else: no biases, no LayerNorm γ/β, no token or positional
//! embedding, no class embedding, not the logit scale (CLIP's rule, with embeddings
//! excluded too). Moments are kept per parameter in f32 on the host; the update is
//! element-wise, in parallel, and deterministic.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::clip::weights::{ClipGrads, ClipWeights};

/// AdamW hyper-parameters (the learning rate comes per step from the schedule).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// β₁ (0.9 in CLIP).
    pub beta1: f64,
    /// β₂ (0.98 in CLIP).
    pub beta2: f64,
    /// ε (1e-6 in CLIP).
    pub eps: f64,
    /// Decoupled weight decay λ (0.2 in CLIP).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay: 0.2,
        }
    }
}

/// Whether weight decay applies to the parameter `name` of shape `shape` (see the module
/// documentation).
pub fn decays(name: &str, shape: &[usize]) -> bool {
    shape.len() >= 2
        && !name.ends_with("token_embedding.weight")
        && !name.ends_with("position_embedding.weight")
}

/// First and second moments of one parameter.
#[derive(Debug, Clone)]
struct Moments {
    m: Vec<f32>,
    v: Vec<f32>,
}

/// The optimizer and its state.
#[derive(Debug, Clone)]
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    steps: u64,
    moments: BTreeMap<String, Moments>,
}

impl AdamW {
    /// A fresh optimizer (moments start at zero).
    pub fn new(config: AdamWConfig) -> Result<Self> {
        let c = config;
        if !(0.0..1.0).contains(&c.beta1) || !(0.0..1.0).contains(&c.beta2) {
            bail!("AdamW betas ({}, {}) must lie in [0, 1)", c.beta1, c.beta2);
        }
        let eps_ok = c.eps > 0.0 && c.eps.is_finite();
        let decay_ok = c.weight_decay >= 0.0 && c.weight_decay.is_finite();
        if !eps_ok || !decay_ok {
            bail!(
                "AdamW eps {} must be positive and weight decay {} non-negative",
                c.eps,
                c.weight_decay
            );
        }
        Ok(AdamW {
            config,
            steps: 0,
            moments: BTreeMap::new(),
        })
    }

    /// Updates taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update of every parameter of `weights` with its gradient in `grads`, at
    /// learning rate `lr`.
    pub fn step(&mut self, weights: &mut ClipWeights, grads: &ClipGrads, lr: f64) -> Result<()> {
        if grads.tensors.len() != weights.tensors().len() {
            bail!(
                "AdamW: {} gradients for {} parameters",
                grads.tensors.len(),
                weights.tensors().len()
            );
        }
        // Check everything first, so a bad gradient set leaves weights and moments as
        // they were.
        for (name, p) in weights.tensors() {
            let g = grads.get(name)?;
            if p.dims() != g.dims() {
                bail!(
                    "AdamW: gradient of `{name}` has shape {:?}, the parameter {:?}",
                    g.dims(),
                    p.dims()
                );
            }
        }
        self.steps += 1;
        let c = self.config;
        let t = self.steps as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt() as f32;
        let step_size = (lr / bc1) as f32;
        let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
        let names: Vec<String> = weights.tensors().keys().cloned().collect();
        for name in names {
            let p = weights.get(&name)?;
            let g = grads.get(&name)?;
            let (shape, dtype, device) = (p.shape().clone(), p.dtype(), p.device().clone());
            let decay = if decays(&name, p.dims()) {
                (1.0 - lr * c.weight_decay) as f32
            } else {
                1.0
            };
            let mut pv = host_values(p)?;
            let gv = host_values(g)?;
            let n = pv.len();
            let mo = self.moments.entry(name.clone()).or_insert_with(|| Moments {
                m: vec![0.0; n],
                v: vec![0.0; n],
            });
            pv.par_iter_mut()
                .zip(mo.m.par_iter_mut())
                .zip(mo.v.par_iter_mut())
                .zip(gv.par_iter())
                .for_each(|(((p, m), v), &g)| {
                    *p *= decay;
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    let denom = v.sqrt() / bc2_sqrt + eps;
                    *p -= step_size * *m / denom;
                });
            let updated = Tensor::from_vec(pv, shape, &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(&device)?;
            weights.set(&name, updated)?;
        }
        Ok(())
    }
}

/// A tensor's values as f32 on the host.
fn host_values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::init::init_weights;
    use crate::clip::init::tests::small_config;

    #[test]
    fn decay_rule() {
        assert!(decays(
            "text_model.encoder.layers.0.self_attn.q_proj.weight",
            &[4, 4]
        ));
        assert!(decays(
            "vision_model.embeddings.patch_embedding.weight",
            &[4, 3, 2, 2]
        ));
        assert!(decays("visual_projection.weight", &[2, 4]));
        assert!(!decays("text_model.encoder.layers.0.self_attn.q_proj.bias", &[4]));
        assert!(!decays("text_model.final_layer_norm.weight", &[4]));
        assert!(!decays("text_model.embeddings.token_embedding.weight", &[9, 4]));
        assert!(!decays(
            "vision_model.embeddings.position_embedding.weight",
            &[5, 4]
        ));
        assert!(!decays("vision_model.embeddings.class_embedding", &[4]));
        assert!(!decays("logit_scale", &[]));
    }

    /// Three steps on real CLIP parameters against the torch formula written out in f64.
    #[test]
    fn matches_torch_adamw() {
        let c = small_config();
        let mut w = init_weights(&c, 1).unwrap();
        let start = w.clone();
        let grads_at = |k: u64| ClipGrads {
            tensors: w
                .tensors()
                .iter()
                .map(|(n, t)| {
                    let g = crate::clip::ops::testutil::rand_tensor(t.dims(), k * 1000 + n.len() as u64, 1.0);
                    (n.clone(), g)
                })
                .collect(),
        };
        let gs: Vec<ClipGrads> = (1..=3).map(grads_at).collect();
        let cfg = AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(cfg).unwrap();
        let lrs = [1e-2, 5e-3, 2e-3];
        for (g, &lr) in gs.iter().zip(&lrs) {
            opt.step(&mut w, g, lr).unwrap();
        }
        assert_eq!(opt.steps(), 3);
        for name in [
            "text_model.encoder.layers.1.mlp.fc1.weight",
            "vision_model.pre_layrnorm.bias",
            "logit_scale",
        ] {
            let mut p: Vec<f64> = host_values(start.get(name).unwrap())
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect();
            let mut m = vec![0f64; p.len()];
            let mut v = vec![0f64; p.len()];
            let decay = decays(name, start.get(name).unwrap().dims());
            for (t, (g, &lr)) in gs.iter().zip(&lrs).enumerate() {
                let g = host_values(g.get(name).unwrap()).unwrap();
                let t = t as i32 + 1;
                for i in 0..p.len() {
                    if decay {
                        p[i] *= 1.0 - lr * cfg.weight_decay;
                    }
                    let gi = g[i] as f64;
                    m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * gi;
                    v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * gi * gi;
                    let denom = v[i].sqrt() / (1.0 - cfg.beta2.powi(t)).sqrt() + cfg.eps;
                    p[i] -= lr / (1.0 - cfg.beta1.powi(t)) * m[i] / denom;
                }
            }
            let got = host_values(w.get(name).unwrap()).unwrap();
            let err = got
                .iter()
                .zip(&p)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0f64, f64::max);
            assert!(err < 1e-6, "{name}: max deviation {err:e}");
        }
        let mut short = gs[0].clone();
        short.tensors.pop_first();
        assert!(opt.step(&mut w, &short, 1e-3).is_err());
    }
}

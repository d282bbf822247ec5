//! Logit adjustment (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021):
//! with class prior π and strength τ, the LA loss is CE(f + τ·log π, y) (the adjustment
//! is a constant shift, so its gradient w.r.t. f is that of CE at the shifted logits) and
//! the post-hoc correction of a trained model predicts argmax_c f_c − τ·log π_c.

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::ce::cross_entropy;
use super::LossGrad;

/// τ·log π as a `[1, C]` row on the device of `like`; classes with no training sample get
/// the prior of one sample (so log π stays finite).
pub fn log_prior_shift(class_counts: &[usize], tau: f64, like: &Tensor) -> Result<Tensor> {
    let total: usize = class_counts.iter().sum();
    if total == 0 {
        bail!("logit adjustment needs a class prior, but every class count is zero");
    }
    let shift: Vec<f32> = class_counts
        .iter()
        .map(|&n| (tau * ((n.max(1)) as f64 / total as f64).ln()) as f32)
        .collect();
    Ok(Tensor::from_vec(shift, (1, class_counts.len()), like.device())?.to_dtype(like.dtype())?)
}

/// The logit-adjusted loss CE(f + shift, y) and its gradient w.r.t. f.
pub fn la_loss(f: &Tensor, y: &[u32], shift: &Tensor) -> Result<LossGrad> {
    cross_entropy(&f.broadcast_add(shift)?, y)
}

/// Post-hoc adjustment: f − shift.
pub fn post_hoc(f: &Tensor, shift: &Tensor) -> Result<Tensor> {
    Ok(f.broadcast_sub(shift)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Counts 90/10 with τ = 1: shift = (ln 0.9, ln 0.1); hand-checked CE at the shifted logits.
    #[test]
    fn shift_and_loss_match_hand_computation() {
        let f = Tensor::new(&[[0f32, 0.0]], &Device::Cpu).unwrap();
        let s = log_prior_shift(&[90, 10], 1.0, &f).unwrap();
        let v: Vec<f32> = s.flatten_all().unwrap().to_vec1().unwrap();
        assert!((v[0] - 0.9f32.ln()).abs() < 1e-6 && (v[1] - 0.1f32.ln()).abs() < 1e-6);
        // Label 1 (the rare class): p = 0.1 / (0.9 + 0.1) = 0.1, loss = −ln 0.1.
        let r = la_loss(&f, &[1], &s).unwrap();
        assert!((r.loss - 10f32.ln()).abs() < 1e-5, "{}", r.loss);
        let g: Vec<f32> = r.grad.flatten_all().unwrap().to_vec1().unwrap();
        assert!((g[0] - 0.9).abs() < 1e-6 && (g[1] + 0.9).abs() < 1e-6, "{g:?}");
        // Post-hoc: equal logits now favour the rare class.
        let p: Vec<f32> = post_hoc(&f, &s)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(p[1] > p[0]);
    }

    #[test]
    fn empty_classes_stay_finite_and_an_empty_prior_is_refused() {
        let f = Tensor::new(&[[0f32, 0.0]], &Device::Cpu).unwrap();
        let s = log_prior_shift(&[5, 0], 1.0, &f).unwrap();
        assert!(s
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|v| v.is_finite()));
        assert!(log_prior_shift(&[0, 0], 1.0, &f).is_err());
    }
}

//! Stage 2 of FedPuReL, residual personalization: with the frozen global branch's logits
//! l_G and the private branch's l_P, L = λ·CE(l_P, y) + (1 − λ)·CE(l_G + l_P, y)
//! (docs/method.md §5; the adapter variant of the reference code uses λ = 0).

use anyhow::Result;
use candle_core::Tensor;

use super::ce::cross_entropy;
use super::LossGrad;

/// The stage-2 loss and its gradient w.r.t. the private logits l_P.
pub fn stage2_loss(l_global: &Tensor, l_private: &Tensor, y: &[u32], lambda: f64) -> Result<LossGrad> {
    let personal = cross_entropy(l_private, y)?;
    let fused = cross_entropy(&(l_global + l_private)?, y)?;
    let loss = (lambda * personal.loss as f64 + (1.0 - lambda) * fused.loss as f64) as f32;
    let grad = ((personal.grad * lambda)? + (fused.grad * (1.0 - lambda))?)?;
    Ok(LossGrad { loss, grad })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objective::fixtures::{cases, labels, rel_err, scalar, tensor};

    #[test]
    fn matches_reference_cases() {
        for c in cases("stage2_loss_cases.json") {
            let alpha = scalar(&c["alpha"]);
            let r = stage2_loss(&tensor(&c["l_G"]), &tensor(&c["l_P"]), &labels(&c["y"]), alpha).unwrap();
            let loss = scalar(&c["loss"]) as f32;
            assert!(
                (r.loss - loss).abs() <= 1e-5 * loss.abs().max(1.0),
                "α={alpha}: {} vs {loss}",
                r.loss
            );
            let e = rel_err(&r.grad, &tensor(&c["grad_l_P"]));
            println!(
                "α={alpha}: loss {} vs {loss}, gradient relative error {e:e}",
                r.loss
            );
            assert!(e <= 1e-5, "α={alpha}: gradient relative error {e:e}");
        }
    }
}

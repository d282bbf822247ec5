//! Temperature-aligned KL (docs/method.md §4 steps 2–4, the reference's `forward_backward`):
//! per sample, target entropy H* = ½(H(f) + H(z)) at τ = 1; temperatures τ_z, τ_f by a
//! 20-step bisection on [0.05, 20] so each softened distribution has entropy H*; then
//! KL(softmax(z/τ_z) ‖ softmax(f/τ_f)) averaged over the batch, with probabilities clamped
//! at 1e-12 inside the logs and no gradient through τ. Also plain KL (τ = 1) for the
//! "KL instead of TKL" ablation, and soft-label distillation for the adapter variant.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor, D};

use super::LossGrad;

/// Bisection bounds and steps of the reference.
pub const TAU_LOW: f64 = 0.05;
/// Upper end of the temperature search.
pub const TAU_HIGH: f64 = 20.0;
/// Bisection iterations (resolution ≈ 1.9e-5).
pub const BISECTION_STEPS: usize = 20;
/// Probability floor inside the logarithms.
pub const PROB_FLOOR: f64 = 1e-12;

/// Shannon entropy of softmax(logits) per row, `[B]`.
pub fn entropy(logits: &Tensor) -> Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok((log_p.exp()? * &log_p)?.sum(D::Minus1)?.neg()?)
}

/// Per-row temperature τ with H(softmax(logits/τ)) ≈ target, by bisection: if the entropy
/// at the midpoint exceeds the target the upper end moves down, else the lower end up.
pub fn solve_temperature(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let b = logits.dim(0)?;
    let dev = logits.device();
    let mut lo = Tensor::full(TAU_LOW as f32, b, dev)?;
    let mut hi = Tensor::full(TAU_HIGH as f32, b, dev)?;
    for _ in 0..BISECTION_STEPS {
        let mid = ((&lo + &hi)? / 2.0)?;
        let h = entropy(&logits.broadcast_div(&mid.unsqueeze(1)?)?)?;
        let above = h.gt(target)?;
        hi = above.where_cond(&mid, &hi)?;
        lo = above.where_cond(&lo, &mid)?;
    }
    Ok(((lo + hi)? / 2.0)?)
}

/// Everything the TKL computation produced, for the loss, logging and tests.
#[derive(Debug, Clone)]
pub struct Tkl {
    /// The batch-mean loss and its gradient w.r.t. the fine-tuned logits f.
    pub loss: LossGrad,
    /// Target entropy per sample.
    pub h_star: Tensor,
    /// Temperature of the zero-shot logits per sample.
    pub tau_z: Tensor,
    /// Temperature of the fine-tuned logits per sample.
    pub tau_f: Tensor,
    /// KL per sample.
    pub kl_per_sample: Tensor,
}

/// KL(softmax(z/τ_z) ‖ softmax(f/τ_f)) per sample with fixed temperatures, and the two
/// distributions (target, student).
fn kl_value(f: &Tensor, z: &Tensor, tau_f: &Tensor, tau_z: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let p_t = candle_nn::ops::softmax_last_dim(&z.broadcast_div(&tau_z.unsqueeze(1)?)?)?;
    let p_s = candle_nn::ops::softmax_last_dim(&f.broadcast_div(&tau_f.unsqueeze(1)?)?)?;
    let log_t = p_t.clamp(PROB_FLOOR, f64::INFINITY)?.log()?;
    let log_s = p_s.clamp(PROB_FLOOR, f64::INFINITY)?.log()?;
    let kl = (&p_t * (log_t - log_s)?)?.sum(D::Minus1)?;
    Ok((kl, p_t, p_s))
}

/// [`kl_value`] and the gradient of the batch mean w.r.t. f (exact for the clamped
/// logarithm: entries with p_s < 1e-12 pass no gradient).
fn kl_with_temperatures(f: &Tensor, z: &Tensor, tau_f: &Tensor, tau_z: &Tensor) -> Result<(Tensor, Tensor)> {
    let b = f.dim(0)?;
    let (kl, p_t, p_s) = kl_value(f, z, tau_f, tau_z)?;
    let live = p_s.ge(PROB_FLOOR)?.to_dtype(DType::F32)?;
    let p_t_live = (&p_t * &live)?;
    let mass = p_t_live.sum_keepdim(D::Minus1)?;
    let grad = (p_s.broadcast_mul(&mass)? - p_t_live)?.broadcast_div(&(tau_f.unsqueeze(1)? * b as f64)?)?;
    Ok((kl, grad))
}

fn check(f: &Tensor, z: &Tensor) -> Result<(Tensor, Tensor)> {
    if f.dims() != z.dims() || f.rank() != 2 {
        bail!(
            "TKL: fine-tuned logits {:?} and zero-shot logits {:?} must both be [B, C]",
            f.dims(),
            z.dims()
        );
    }
    Ok((f.to_dtype(DType::F32)?, z.to_dtype(DType::F32)?))
}

/// Temperature-aligned KL of fine-tuned logits f against zero-shot logits z.
pub fn tkl(f: &Tensor, z: &Tensor) -> Result<Tkl> {
    let (f, z) = check(f, z)?;
    if f.device().is_cpu() {
        return host::tkl(&f, &z);
    }
    tkl_tensor(&f, &z)
}

/// [`tkl`] as tensor operations (any device); on the CPU [`host::tkl`] computes the same
/// in plain loops, since a [32, C] batch is far too small to amortize ~300 tensor ops.
fn tkl_tensor(f: &Tensor, z: &Tensor) -> Result<Tkl> {
    let (f, z) = (f.clone(), z.clone());
    let h_star = ((entropy(&f)? + entropy(&z)?)? / 2.0)?;
    let tau_z = solve_temperature(&z, &h_star)?;
    let tau_f = solve_temperature(&f, &h_star)?;
    let (kl, grad) = kl_with_temperatures(&f, &z, &tau_f, &tau_z)?;
    let loss = kl.mean_all()?.to_scalar::<f32>()?;
    Ok(Tkl {
        loss: LossGrad { loss, grad },
        h_star,
        tau_z,
        tau_f,
        kl_per_sample: kl,
    })
}

/// The CPU path of [`tkl`]: the same formulas in f32, rows interleaved.
mod fused;
mod host;
mod screen;

/// [`tkl`]'s KL per sample alone, bit for bit, without the gradient (evaluation).
pub fn tkl_per_sample(f: &Tensor, z: &Tensor) -> Result<Tensor> {
    let (f, z) = check(f, z)?;
    if f.device().is_cpu() {
        return host::kl_per_sample(&f, &z);
    }
    Ok(tkl_tensor(&f, &z)?.kl_per_sample)
}

/// [`kl`]'s loss alone, bit for bit, without the gradient (evaluation).
pub fn kl_loss(f: &Tensor, z: &Tensor) -> Result<f32> {
    let (f, z) = check(f, z)?;
    let (b, c) = f.dims2()?;
    if f.device().is_cpu() && b > 0 && c > 0 {
        let fv: Vec<f32> = f.flatten_all()?.to_vec1()?;
        let zv: Vec<f32> = z.flatten_all()?.to_vec1()?;
        return Ok(host::kl_loss(&fv, &zv, b, c));
    }
    kl_loss_tensor(&f, &z)
}

/// [`kl_loss`] as tensor operations (any device): [`kl`]'s value part.
fn kl_loss_tensor(f: &Tensor, z: &Tensor) -> Result<f32> {
    let one = Tensor::ones(f.dim(0)?, DType::F32, f.device())?;
    let (kl, _, _) = kl_value(f, z, &one, &one)?;
    Ok(kl.mean_all()?.to_scalar::<f32>()?)
}

/// Plain KL(softmax(z) ‖ softmax(f)) at τ = 1 (the "KL instead of TKL" ablation).
pub fn kl(f: &Tensor, z: &Tensor) -> Result<LossGrad> {
    let (f, z) = check(f, z)?;
    let one = Tensor::ones(f.dim(0)?, DType::F32, f.device())?;
    let (kl, grad) = kl_with_temperatures(&f, &z, &one, &one)?;
    Ok(LossGrad {
        loss: kl.mean_all()?.to_scalar::<f32>()?,
        grad,
    })
}

/// Soft-label distillation at T = 1, mean_b Σ_c −softmax(z)·log_softmax(f) (the
/// reference's adapter alignment loss; equals KL plus a constant).
pub fn soft_distillation(f: &Tensor, z: &Tensor) -> Result<LossGrad> {
    let (f, z) = check(f, z)?;
    let b = f.dim(0)? as f64;
    let p_t = candle_nn::ops::softmax_last_dim(&z)?;
    let log_s = candle_nn::ops::log_softmax(&f, D::Minus1)?;
    let loss = ((&p_t * &log_s)?.sum_all()?.to_scalar::<f32>()? as f64 / -b) as f32;
    let grad = ((log_s.exp()? - p_t)? / b)?;
    Ok(LossGrad { loss, grad })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objective::fixtures::{cases, rel_err, scalar, tensor};
    use candle_core::Device;

    #[test]
    fn matches_reference_cases() {
        for (i, c) in cases("tkl_cases.json").iter().enumerate() {
            let r = tkl(&tensor(&c["f"]), &tensor(&c["z"])).unwrap();
            for (name, ours, tol) in [
                ("h_star", &r.h_star, 1e-5),
                ("tau_z", &r.tau_z, 1e-5),
                ("tau_f", &r.tau_f, 1e-5),
                ("kl_per_sample", &r.kl_per_sample, 1e-5),
                ("grad_f", &r.loss.grad, 1e-5),
            ] {
                let e = rel_err(ours, &tensor(&c[name]));
                println!("case {i} {name}: relative error {e:e}");
                assert!(e <= tol, "case {i} {name}: relative error {e:e}");
            }
            let l = scalar(&c["l_align"]) as f32;
            assert!(
                (r.loss.loss - l).abs() <= 1e-5 * l.abs().max(1.0),
                "case {i}: loss {} vs {l}",
                r.loss.loss
            );
        }
    }

    /// The worked example of reference-notes §3.
    #[test]
    fn worked_example() {
        let dev = Device::Cpu;
        let z = Tensor::new(&[[30f32, 28.0, 25.0, 20.0], [10.0, 9.0, 8.0, 7.0]], &dev).unwrap();
        let f = Tensor::new(&[[5f32, 1.0, 0.0, -1.0], [0.0, 3.0, 1.0, 0.0]], &dev).unwrap();
        let r = tkl(&f, &z).unwrap();
        assert!((r.loss.loss - 0.750_240_4).abs() < 1e-5);
        let tz: Vec<f32> = r.tau_z.to_vec1().unwrap();
        assert!((tz[0] - 0.786_669).abs() < 2e-5 && (tz[1] - 0.812_526).abs() < 2e-5);
        let g: Vec<Vec<f32>> = r.loss.grad.to_vec2().unwrap();
        assert!((g[1][0] + 0.282_580_9).abs() < 1e-5);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let f = crate::clip::ops::testutil::rand_tensor(&[3, 6], 1, 3.0);
        let z = crate::clip::ops::testutil::rand_tensor(&[3, 6], 2, 8.0);
        for which in ["kl", "kd"] {
            let g = if which == "kl" {
                kl(&f, &z).unwrap()
            } else {
                soft_distillation(&f, &z).unwrap()
            };
            let v = crate::clip::ops::testutil::rand_tensor(&[3, 6], 3, 1.0);
            let eps = 1e-2;
            let at = |t: &Tensor| {
                if which == "kl" {
                    kl(t, &z).unwrap().loss
                } else {
                    soft_distillation(t, &z).unwrap().loss
                }
            };
            let fd = (at(&(&f + (&v * eps).unwrap()).unwrap()) - at(&(&f - (&v * eps).unwrap()).unwrap()))
                as f64
                / (2.0 * eps);
            let an = crate::clip::ops::testutil::dot(&g.grad, &v);
            assert!(
                (fd - an).abs() < 1e-3 * (1.0 + an.abs()),
                "{which}: fd {fd} vs {an}"
            );
        }
    }

    /// The CPU loop path and the tensor path give the same numbers (the reference
    /// cases above run through the CPU path).
    #[test]
    fn host_path_equals_tensor_path() {
        use crate::clip::ops::testutil::{max_abs_diff, rand_tensor};
        for (b, c, scale) in [(32, 100, 8.0), (5, 7, 30.0), (3, 1000, 2.0)] {
            let f = rand_tensor(&[b, c], 1 + c as u64, scale);
            let z = rand_tensor(&[b, c], 2 + c as u64, scale);
            let (h, t) = (host::tkl(&f, &z).unwrap(), tkl_tensor(&f, &z).unwrap());
            assert!((h.loss.loss - t.loss.loss).abs() <= 1e-5 * t.loss.loss.abs().max(1.0));
            for (a, e, tol) in [
                (&h.loss.grad, &t.loss.grad, 1e-6),
                (&h.tau_z, &t.tau_z, 1e-4),
                (&h.tau_f, &t.tau_f, 1e-4),
                (&h.h_star, &t.h_star, 1e-5),
                (&h.kl_per_sample, &t.kl_per_sample, 1e-5),
            ] {
                let d = max_abs_diff(a, e);
                assert!(d <= tol, "[{b}, {c}] ×{scale}: differs by {d}");
            }
        }
    }

    /// The evaluation's gradient-free forms give the training forms' bits.
    #[test]
    fn values_without_gradients_keep_the_bits() {
        use crate::clip::ops::testutil::{bits, rand_tensor};
        let f = rand_tensor(&[19, 100], 1, 8.0);
        let z = rand_tensor(&[19, 100], 2, 20.0);
        assert_eq!(
            bits(&tkl_per_sample(&f, &z).unwrap()),
            bits(&tkl(&f, &z).unwrap().kl_per_sample)
        );
        assert_eq!(
            kl_loss(&f, &z).unwrap().to_bits(),
            kl(&f, &z).unwrap().loss.to_bits()
        );
        assert!(kl_loss(&f, &rand_tensor(&[19, 99], 3, 1.0)).is_err());
        // The one-pass CPU form against the tensor operations, with logits from flat to
        // so sharp that probabilities fall below the 1e-12 floor, and ragged widths.
        let cases = [
            (1, 1, 1.0, 1.0),
            (3, 7, 5.0, 90.0),
            (33, 100, 40.0, 8.0),
            (8, 1000, 2.0, 200.0),
        ];
        for (i, (b, c, fs, zs)) in cases.into_iter().enumerate() {
            let f = rand_tensor(&[b, c], 10 + i as u64, fs);
            let z = rand_tensor(&[b, c], 20 + i as u64, zs);
            assert_eq!(
                kl_loss(&f, &z).unwrap().to_bits(),
                kl_loss_tensor(&f, &z).unwrap().to_bits(),
                "[{b}, {c}] ×{fs}/{zs}"
            );
        }
    }

    #[test]
    fn mismatched_shapes_are_rejected() {
        let dev = Device::Cpu;
        assert!(tkl(
            &Tensor::zeros((2, 3), DType::F32, &dev).unwrap(),
            &Tensor::zeros((2, 4), DType::F32, &dev).unwrap()
        )
        .is_err());
    }
}

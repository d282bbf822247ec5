//! Gradient purification (docs/method.md §4 step 7; the reference's
//! `GradPur_backward_and_update`): per parameter tensor, if the task gradient a conflicts
//! with the alignment gradient b (â·b̂ < 0), remove λ times its component along b:
//! a − λ (a·b̂) b̂. Otherwise a is kept. Only the result drives the update. A zero-norm
//! a or b leaves a unchanged (the reference's NaN cosine compares false).

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

/// What purification did to one tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PurifyStats {
    /// Cosine between the task and alignment gradients (NaN when a norm is 0).
    pub cosine: f64,
    /// Whether the projection was applied (the gradients conflict).
    pub projected: bool,
    /// ‖task‖.
    pub task_norm: f64,
}

/// Purifies one tensor's task gradient against its alignment gradient.
pub fn purify(task: &Tensor, align: &Tensor, lambda: f64) -> Result<(Tensor, PurifyStats)> {
    if task.dims() != align.dims() {
        bail!(
            "purify: task gradient {:?} and alignment gradient {:?} differ in shape",
            task.dims(),
            align.dims()
        );
    }
    let a = task.to_dtype(DType::F64)?.flatten_all()?;
    let b = align.to_dtype(DType::F64)?.flatten_all()?;
    let na = a.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
    let nb = b.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
    let ab = (&a * &b)?.sum_all()?.to_scalar::<f64>()?;
    if na == 0.0 || nb == 0.0 {
        return Ok((
            task.clone(),
            PurifyStats {
                cosine: f64::NAN,
                projected: false,
                task_norm: na,
            },
        ));
    }
    let cosine = ab / (na * nb);
    if cosine >= 0.0 {
        return Ok((
            task.clone(),
            PurifyStats {
                cosine,
                projected: false,
                task_norm: na,
            },
        ));
    }
    // a − λ (a·b̂) b̂ = a − λ (a·b / ‖b‖²) b
    let coef = lambda * ab / (nb * nb);
    let out = (task.to_dtype(DType::F64)? - (align.to_dtype(DType::F64)? * coef)?)?.to_dtype(task.dtype())?;
    Ok((
        out,
        PurifyStats {
            cosine,
            projected: true,
            task_norm: na,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objective::fixtures::{cases, rel_err, scalar, tensor};

    #[test]
    fn matches_reference_cases() {
        for c in cases("purify_cases.json") {
            let kind = c["kind"].as_str().unwrap().to_string();
            let (out, stats) = purify(
                &tensor(&c["g_task"]),
                &tensor(&c["g_align"]),
                scalar(&c["lambda"]),
            )
            .unwrap();
            let e = rel_err(&out, &tensor(&c["purified"]));
            println!("{kind}: relative error {e:e}");
            assert!(e <= 1e-6, "{kind}: relative error {e:e}");
            match kind.as_str() {
                "conflict" => assert!(stats.projected),
                "aligned" => assert!(!stats.projected),
                "zero_align" => assert!(stats.cosine.is_nan() && !stats.projected),
                _ => {}
            }
        }
    }

    #[test]
    fn projection_removes_the_conflict_at_lambda_one() {
        let dev = candle_core::Device::Cpu;
        let a = Tensor::new(&[1f32, -2.0, 0.5], &dev).unwrap();
        let b = Tensor::new(&[-1f32, 1.0, 0.0], &dev).unwrap();
        let (g, s) = purify(&a, &b, 1.0).unwrap();
        assert!(s.projected && s.cosine < 0.0);
        let dot = (g * b).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(dot.abs() < 1e-6);
    }
}

//! Cross-entropy with integer labels, mean over the batch.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor, D};

use super::LossGrad;

/// One-hot rows `[B, C]` for labels `y`.
pub fn one_hot(y: &[u32], classes: usize, like: &Tensor) -> Result<Tensor> {
    if let Some(&bad) = y.iter().find(|&&c| c as usize >= classes) {
        bail!("label {bad} out of range for {classes} classes");
    }
    let mut data = vec![0f32; y.len() * classes];
    for (i, &c) in y.iter().enumerate() {
        data[i * classes + c as usize] = 1.0;
    }
    Ok(Tensor::from_vec(data, (y.len(), classes), like.device())?.to_dtype(like.dtype())?)
}

/// CE(logits, y) = mean_b −log softmax(logits)_b[y_b], and its gradient
/// (softmax − onehot)/B.
pub fn cross_entropy(logits: &Tensor, y: &[u32]) -> Result<LossGrad> {
    let (b, c) = logits.dims2()?;
    if b != y.len() {
        bail!("cross-entropy: {b} logit rows but {} labels", y.len());
    }
    let logits = logits.to_dtype(DType::F32)?;
    let log_p = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let onehot = one_hot(y, c, &logits)?;
    let loss = -((&log_p * &onehot)?.sum_all()?.to_scalar::<f32>()? / b as f32);
    let grad = ((log_p.exp()? - onehot)? / b as f64)?;
    Ok(LossGrad { loss, grad })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_hand_computation() {
        let l = Tensor::new(&[[1f32, 2.0, 3.0], [0.0, 0.0, 0.0]], &Device::Cpu).unwrap();
        let r = cross_entropy(&l, &[2, 0]).unwrap();
        let lse1 = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
        let expect = ((lse1 - 3.0) + 3f32.ln()) / 2.0;
        assert!((r.loss - expect).abs() < 1e-6);
        let g: Vec<Vec<f32>> = r.grad.to_vec2().unwrap();
        assert!((g[1][0] - (1.0 / 3.0 - 1.0) / 2.0).abs() < 1e-6);
        assert!(cross_entropy(&l, &[3, 0]).is_err());
    }
}

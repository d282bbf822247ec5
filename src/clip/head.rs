//! The similarity head used in training: logits = s · normalize(img) · normalize(text)ᵀ,
//! with its VJP to both feature sets for K logit cotangents at once.

use anyhow::{bail, Result};
use candle_core::{Tensor, D};

use super::matmul::matmul;
use super::model::l2_normalize;

/// Cotangents of the unnormalized features.
#[derive(Debug, Clone)]
pub struct HeadGrad {
    /// W.r.t. image features, `[K, B, E]`.
    pub image: Tensor,
    /// W.r.t. text features, `[K, C, E]`.
    pub text: Tensor,
}

/// Logits `[B, C]` of unnormalized image features `[B, E]` and text features `[C, E]`.
pub fn logits(image: &Tensor, text: &Tensor, scale: f64) -> Result<Tensor> {
    Ok((matmul(&l2_normalize(image)?, &l2_normalize(text)?.t()?)? * scale)?)
}

/// VJP of y = x/‖x‖ per row for cotangents `dy: [K, N, E]`: (dy − y (y·dy)) / ‖x‖.
pub fn l2_normalize_backward(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.unsqueeze(0)?;
    let y = x.unsqueeze(0)?.broadcast_div(&norm)?;
    let proj = dy.broadcast_mul(&y)?.sum_keepdim(D::Minus1)?;
    Ok((dy - y.broadcast_mul(&proj)?)?.broadcast_div(&norm)?)
}

/// VJP of [`logits`] for cotangents `d_logits: [K, B, C]`.
pub fn logits_backward(image: &Tensor, text: &Tensor, scale: f64, d_logits: &Tensor) -> Result<HeadGrad> {
    let (k, b, c) = d_logits.dims3()?;
    if image.dim(0)? != b || text.dim(0)? != c {
        bail!(
            "head backward: cotangent {:?} for {} images and {} classes",
            d_logits.dims(),
            image.dim(0)?,
            text.dim(0)?
        );
    }
    let img_n = l2_normalize(image)?;
    let txt_n = l2_normalize(text)?;
    let e = img_n.dim(1)?;
    // d(img_n) = s · dL · txt_n ; d(txt_n) = s · dLᵀ · img_n, per cotangent.
    let d_img_n = (matmul(&d_logits.reshape((k * b, c))?, &txt_n)? * scale)?.reshape((k, b, e))?;
    let d_txt_n = (matmul(
        &d_logits.transpose(1, 2)?.contiguous()?.reshape((k * c, b))?,
        &img_n,
    )? * scale)?
        .reshape((k, c, e))?;
    Ok(HeadGrad {
        image: l2_normalize_backward(image, &d_img_n)?,
        text: l2_normalize_backward(text, &d_txt_n)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::ops::testutil::{dot, fd_directional, rand_tensor};
    use candle_core::DType;

    #[test]
    fn head_vjp_matches_finite_differences() {
        let img = rand_tensor(&[3, 5], 1, 1.0);
        let txt = rand_tensor(&[4, 5], 2, 1.0);
        let dl = rand_tensor(&[2, 3, 4], 3, 1.0);
        let g = logits_backward(&img, &txt, 100.0, &dl).unwrap();
        let w = dl.get(1).unwrap().to_dtype(DType::F64).unwrap();
        let txt64 = txt.to_dtype(DType::F64).unwrap();
        let img64 = img.to_dtype(DType::F64).unwrap();
        let v = rand_tensor(&[3, 5], 4, 1.0);
        let fd = fd_directional(
            &|x: &Tensor| logits(x, &txt64, 100.0).unwrap(),
            &img,
            &v,
            &w,
            1e-6,
        );
        let an = dot(&g.image.get(1).unwrap(), &v);
        assert!((fd - an).abs() < 1e-4 * (1.0 + an.abs()), "image: {fd} vs {an}");
        let v = rand_tensor(&[4, 5], 5, 1.0);
        let fd = fd_directional(
            &|t: &Tensor| logits(&img64, t, 100.0).unwrap(),
            &txt,
            &v,
            &w,
            1e-6,
        );
        let an = dot(&g.text.get(1).unwrap(), &v);
        assert!((fd - an).abs() < 1e-4 * (1.0 + an.abs()), "text: {fd} vs {an}");
    }
}

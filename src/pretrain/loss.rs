//! CLIP's contrastive objective: symmetric InfoNCE over a batch of matched image–text
//! pairs, with its explicit gradient.
//!
//! With unit-norm image features u_i and text features w_j (rows of `[B, E]`), logit
//! scale parameter s and multiplier τ = exp(min(s, ln 100)):
//!
//! ```text
//! L_ij = τ · u_i · w_j
//! loss = ½ · ( mean_i CE(L_i·, i) + mean_j CE(L_·j, j) )
//! ∂loss/∂L = ( softmax_rows(L) − I + softmax_cols(L) − I ) / (2B)
//! ∂loss/∂u = τ · ∂L W,  ∂loss/∂w = τ · ∂Lᵀ U,  ∂loss/∂s = τ · Σ ∂L ⊙ (U Wᵀ)
//! ```
//!
//! The multiplier is clamped at 100 as CLIP does ("clipped to prevent scaling the logits
//! by more than 100"); above the clamp ∂loss/∂s = 0. The B × B softmax part runs in f64 on
//! the host (B ≤ a few hundred); the two B × B × E matmuls in the features' precision.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

/// ln 100: the largest logit scale CLIP uses.
pub const MAX_LOGIT_SCALE: f64 = 4.605_170_185_988_092;

/// Value, retrieval accuracies and gradients of [`contrastive_loss`].
#[derive(Debug, Clone)]
pub struct ContrastiveLoss {
    /// The symmetric loss.
    pub loss: f64,
    /// Fraction of images whose highest-scoring text is their own.
    pub image_to_text_accuracy: f64,
    /// Fraction of texts whose highest-scoring image is their own.
    pub text_to_image_accuracy: f64,
    /// The multiplier τ used (after the clamp).
    pub scale: f64,
    /// ∂loss/∂u w.r.t. the normalized image features, `[B, E]`.
    pub d_image: Tensor,
    /// ∂loss/∂w w.r.t. the normalized text features, `[B, E]`.
    pub d_text: Tensor,
    /// ∂loss/∂s w.r.t. the logit-scale parameter (0 where the clamp is active).
    pub d_logit_scale: f64,
}

/// The symmetric InfoNCE loss of matched rows of normalized `image` and `text` features
/// (`[B, E]` each; row i of one matches row i of the other) at logit-scale parameter
/// `logit_scale` (ln of the multiplier).
pub fn contrastive_loss(image: &Tensor, text: &Tensor, logit_scale: f64) -> Result<ContrastiveLoss> {
    contrastive_loss_with(image, text, logit_scale, None)
}

/// [`contrastive_loss`] where more than the matched pair may be right: `positives[i][j]`
/// says text j is true of image i (the diagonal must be; `None`: only the diagonal).
/// Each direction's target spreads evenly over the positives (image i → texts
/// {j : P_ij}, text j → images {i : P_ij}), so a caption that fits several images of the
/// batch is not pushed away from the others:
///
/// ```text
/// loss = ½ · ( mean_i [lse_j L_ij − Σ_j P_ij L_ij / n_i] + mean_j [lse_i L_ij − Σ_i P_ij L_ij / m_j] )
/// ∂loss/∂L_ij = ( softmax_rows(L)_ij − P_ij / n_i + softmax_cols(L)_ij − P_ij / m_j ) / (2B)
/// ```
///
/// with n_i, m_j the row and column counts of P; with P = I this is [`contrastive_loss`].
/// Retrieval counts as correct when the highest-scoring partner is a positive.
pub fn contrastive_loss_with(
    image: &Tensor,
    text: &Tensor,
    logit_scale: f64,
    positives: Option<&[Vec<bool>]>,
) -> Result<ContrastiveLoss> {
    let (b, e) = image.dims2()?;
    if text.dims() != [b, e] || b == 0 {
        bail!(
            "contrastive loss: image features {:?} and text features {:?} must both be [B, E] with B > 0",
            image.dims(),
            text.dims()
        );
    }
    if !logit_scale.is_finite() {
        bail!("contrastive loss: logit scale {logit_scale} is not finite");
    }
    let pos = |i: usize, j: usize| positives.map_or(i == j, |p| p[i][j]);
    if let Some(p) = positives {
        if p.len() != b || p.iter().any(|r| r.len() != b) {
            bail!("contrastive loss: the positives must be a {b} × {b} matrix");
        }
        if let Some(i) = (0..b).find(|&i| !p[i][i]) {
            bail!("contrastive loss: pair {i} is not marked as a positive of itself");
        }
    }
    let row_count: Vec<f64> = (0..b)
        .map(|i| (0..b).filter(|&j| pos(i, j)).count() as f64)
        .collect();
    let col_count: Vec<f64> = (0..b)
        .map(|j| (0..b).filter(|&i| pos(i, j)).count() as f64)
        .collect();
    let clamped = logit_scale > MAX_LOGIT_SCALE;
    let tau = logit_scale.min(MAX_LOGIT_SCALE).exp();
    let sim: Vec<Vec<f64>> = image.matmul(&text.t()?)?.to_dtype(DType::F64)?.to_vec2()?;
    // Row (image → text) and column (text → image) softmax of τ·sim, in f64.
    let mut d_logits = vec![vec![0f64; b]; b];
    let (mut loss_rows, mut loss_cols) = (0f64, 0f64);
    let (mut hits_rows, mut hits_cols) = (0usize, 0usize);
    let inv = 1.0 / (2.0 * b as f64);
    for (i, row) in sim.iter().enumerate() {
        let (lse, argmax) = log_sum_exp(row.iter().map(|&x| tau * x));
        hits_rows += usize::from(pos(i, argmax));
        loss_rows += lse;
        for (j, &x) in row.iter().enumerate() {
            let target = if pos(i, j) { 1.0 / row_count[i] } else { 0.0 };
            loss_rows -= target * tau * x;
            d_logits[i][j] += ((tau * x - lse).exp() - target) * inv;
        }
    }
    for j in 0..b {
        let (lse, argmax) = log_sum_exp(sim.iter().map(|r| tau * r[j]));
        hits_cols += usize::from(pos(argmax, j));
        loss_cols += lse;
        for (i, row) in sim.iter().enumerate() {
            let target = if pos(i, j) { 1.0 / col_count[j] } else { 0.0 };
            loss_cols -= target * tau * row[j];
            d_logits[i][j] += ((tau * row[j] - lse).exp() - target) * inv;
        }
    }
    let d_logit_scale = if clamped {
        0.0
    } else {
        tau * d_logits
            .iter()
            .zip(&sim)
            .map(|(d, s)| d.iter().zip(s).map(|(a, b)| a * b).sum::<f64>())
            .sum::<f64>()
    };
    let flat: Vec<f64> = d_logits.into_iter().flatten().map(|x| x * tau).collect();
    let d_sim = Tensor::from_vec(flat, (b, b), image.device())?.to_dtype(image.dtype())?;
    Ok(ContrastiveLoss {
        loss: (loss_rows + loss_cols) / (2.0 * b as f64),
        image_to_text_accuracy: hits_rows as f64 / b as f64,
        text_to_image_accuracy: hits_cols as f64 / b as f64,
        scale: tau,
        d_image: d_sim.matmul(text)?,
        d_text: d_sim.t()?.matmul(image)?,
        d_logit_scale,
    })
}

/// ln Σ exp(x) (stable) and the index of the first maximum.
fn log_sum_exp(xs: impl Iterator<Item = f64> + Clone) -> (f64, usize) {
    let (argmax, max) =
        xs.clone().enumerate().fold(
            (0, f64::NEG_INFINITY),
            |(bi, bv), (i, v)| if v > bv { (i, v) } else { (bi, bv) },
        );
    let sum: f64 = xs.map(|x| (x - max).exp()).sum();
    (max + sum.ln(), argmax)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::model::l2_normalize;
    use crate::clip::ops::testutil::{dot, rand_tensor};

    fn features(seed: u64) -> (Tensor, Tensor) {
        let c = |t: Tensor| l2_normalize(&t.to_dtype(DType::F64).unwrap()).unwrap();
        (
            c(rand_tensor(&[5, 4], seed, 1.0)),
            c(rand_tensor(&[5, 4], seed + 1, 1.0)),
        )
    }

    /// Central differences in f64 along random directions, for the features (treated as
    /// free inputs) and the logit scale; tolerance 1e-7 · (1 + |analytic|).
    #[test]
    fn gradients_match_finite_differences() {
        let (img, txt) = features(1);
        let s = 2.3;
        let l = contrastive_loss(&img, &txt, s).unwrap();
        let eps = 1e-6;
        let mut worst = 0f64;
        let mut check = |fd: f64, an: f64, what: &str| {
            let err = (fd - an).abs() / (1.0 + an.abs());
            worst = worst.max(err);
            assert!(err < 1e-7, "{what}: fd {fd} vs analytic {an}");
        };
        for k in 0..3 {
            let v = rand_tensor(&[5, 4], 10 + k, 1.0).to_dtype(DType::F64).unwrap();
            let at = |t: f64| {
                let x = (&img + (&v * t).unwrap()).unwrap();
                contrastive_loss(&x, &txt, s).unwrap().loss
            };
            check((at(eps) - at(-eps)) / (2.0 * eps), dot(&l.d_image, &v), "image");
            let at = |t: f64| {
                let x = (&txt + (&v * t).unwrap()).unwrap();
                contrastive_loss(&img, &x, s).unwrap().loss
            };
            check((at(eps) - at(-eps)) / (2.0 * eps), dot(&l.d_text, &v), "text");
        }
        let at = |t: f64| contrastive_loss(&img, &txt, s + t).unwrap().loss;
        check((at(eps) - at(-eps)) / (2.0 * eps), l.d_logit_scale, "logit scale");
        println!("contrastive loss: worst relative finite-difference error {worst:e}");
    }

    /// The multi-positive form: finite differences again, the identity matrix gives the
    /// plain loss bit for bit, and a shared caption is not counted against its images.
    #[test]
    fn positives_spread_the_target() {
        let (img, txt) = features(7);
        let s = 1.7;
        let eye: Vec<Vec<bool>> = (0..5).map(|i| (0..5).map(|j| i == j).collect()).collect();
        let plain = contrastive_loss(&img, &txt, s).unwrap();
        let same = contrastive_loss_with(&img, &txt, s, Some(&eye)).unwrap();
        assert_eq!(plain.loss, same.loss);
        assert_eq!(plain.d_logit_scale, same.d_logit_scale);
        let mut p = eye.clone();
        p[0][3] = true;
        p[3][0] = true;
        p[2][4] = true;
        let l = contrastive_loss_with(&img, &txt, s, Some(&p)).unwrap();
        let eps = 1e-6;
        for k in 0..3 {
            let v = rand_tensor(&[5, 4], 20 + k, 1.0).to_dtype(DType::F64).unwrap();
            let at = |t: f64| {
                let x = (&img + (&v * t).unwrap()).unwrap();
                contrastive_loss_with(&x, &txt, s, Some(&p)).unwrap().loss
            };
            let (fd, an) = ((at(eps) - at(-eps)) / (2.0 * eps), dot(&l.d_image, &v));
            assert!((fd - an).abs() < 1e-7 * (1.0 + an.abs()), "image: {fd} vs {an}");
            let at = |t: f64| {
                let x = (&txt + (&v * t).unwrap()).unwrap();
                contrastive_loss_with(&img, &x, s, Some(&p)).unwrap().loss
            };
            let (fd, an) = ((at(eps) - at(-eps)) / (2.0 * eps), dot(&l.d_text, &v));
            assert!((fd - an).abs() < 1e-7 * (1.0 + an.abs()), "text: {fd} vs {an}");
        }
        let at = |t: f64| contrastive_loss_with(&img, &txt, s + t, Some(&p)).unwrap().loss;
        let fd = (at(eps) - at(-eps)) / (2.0 * eps);
        assert!((fd - l.d_logit_scale).abs() < 1e-7 * (1.0 + fd.abs()));
        // Two identical pairs (one caption that fits both images): the plain loss counts
        // the twin's caption as a wrong answer; with both marked positive it is right.
        let a = l2_normalize(&rand_tensor(&[1, 4], 40, 1.0).to_dtype(DType::F64).unwrap()).unwrap();
        let b = l2_normalize(&rand_tensor(&[1, 4], 41, 1.0).to_dtype(DType::F64).unwrap()).unwrap();
        let images = Tensor::cat(&[&a, &a, &b], 0).unwrap();
        let both = vec![
            vec![true, true, false],
            vec![true, true, false],
            vec![false, false, true],
        ];
        let multi = contrastive_loss_with(&images, &images, MAX_LOGIT_SCALE, Some(&both)).unwrap();
        let single = contrastive_loss(&images, &images, MAX_LOGIT_SCALE).unwrap();
        assert!(single.image_to_text_accuracy < 1.0 && single.text_to_image_accuracy < 1.0);
        assert_eq!(multi.image_to_text_accuracy, 1.0);
        assert_eq!(multi.text_to_image_accuracy, 1.0);
        let mut bad = eye.clone();
        bad[1][1] = false;
        assert!(contrastive_loss_with(&img, &txt, s, Some(&bad))
            .unwrap_err()
            .to_string()
            .contains("pair 1"));
        assert!(contrastive_loss_with(&img, &txt, s, Some(&eye[..4])).is_err());
    }

    #[test]
    fn clamps_the_scale_at_100() {
        let (img, txt) = features(3);
        let above = contrastive_loss(&img, &txt, 6.0).unwrap();
        let at = contrastive_loss(&img, &txt, MAX_LOGIT_SCALE).unwrap();
        assert_eq!(above.d_logit_scale, 0.0);
        assert!((above.scale - 100.0).abs() < 1e-9);
        assert_eq!(above.loss, at.loss);
        assert!(at.d_logit_scale != 0.0);
    }

    #[test]
    fn matched_pairs_give_low_loss_and_full_accuracy() {
        let (img, _) = features(5);
        let l = contrastive_loss(&img, &img, MAX_LOGIT_SCALE).unwrap();
        assert_eq!(l.image_to_text_accuracy, 1.0);
        assert_eq!(l.text_to_image_accuracy, 1.0);
        assert!(l.loss < 0.5, "{}", l.loss);
        // Identical features everywhere: chance level, ln B.
        let same = Tensor::ones((5, 4), DType::F64, &candle_core::Device::Cpu).unwrap();
        let same = l2_normalize(&same).unwrap();
        let l = contrastive_loss(&same, &same, 1.0).unwrap();
        assert!((l.loss - 5f64.ln()).abs() < 1e-12);
        assert!(contrastive_loss(&img, &img.narrow(0, 0, 3).unwrap(), 1.0).is_err());
    }
}

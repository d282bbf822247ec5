//! One contrastive step's loss and the gradient of every CLIP weight, with the towers'
//! explicit backward passes: both encoders run with weight tapes (the text tower on its
//! exact truncated path, up to the longest EOT), features are L2-normalized, the
//! symmetric InfoNCE loss gives cotangents of the normalized features and of the logit
//! scale, and the backward passes map them to [`ClipGrads`].

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::loss::{contrastive_loss_with, ContrastiveLoss};
use crate::clip::config::{block_flops, ClipConfig};
use crate::clip::head::l2_normalize_backward;
use crate::clip::model::l2_normalize;
use crate::clip::ops::TapeMode;
use crate::clip::text::{PromptBatch, TextPath};
use crate::clip::weights::ClipGrads;
use crate::clip::Clip;

/// A batch of matched image–text pairs: row i of the pixels goes with token row i.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Normalized pixels `[B, 3, H, W]`, f32.
    pub pixels: Tensor,
    /// Token ids, one row per image, all rows of one length ≤ the context length
    /// (padding after the EOT is never computed).
    pub tokens: Vec<Vec<u32>>,
    /// Position of each row's end-of-text token.
    pub eot: Vec<usize>,
    /// Which texts are true of which images (`[i][j]`: text j fits image i; the diagonal
    /// always), for captions that fit more than their own image; `None`: only the
    /// matched pairs ([`contrastive_loss_with`]).
    pub positives: Option<Vec<Vec<bool>>>,
}

impl Batch {
    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.eot.len()
    }

    /// True when the batch has no pair.
    pub fn is_empty(&self) -> bool {
        self.eot.is_empty()
    }

    /// Checks the parts agree with each other and with the architecture.
    pub fn validate(&self, config: &ClipConfig) -> Result<()> {
        let dims = self.pixels.dims();
        let size = config.vision.image_size;
        if dims.len() != 4 || dims[1] != 3 || dims[2] != size || dims[3] != size {
            bail!("batch pixels have shape {dims:?}, expected [B, 3, {size}, {size}]");
        }
        let b = dims[0];
        if b < 2 || self.tokens.len() != b || self.eot.len() != b {
            bail!(
                "batch: {b} images, {} token rows and {} EOT positions (need the same number, at least 2)",
                self.tokens.len(),
                self.eot.len()
            );
        }
        if let Some(p) = &self.positives {
            if p.len() != b || p.iter().any(|r| r.len() != b) {
                bail!("batch positives: expected a {b} × {b} matrix");
            }
            if let Some(i) = (0..b).find(|&i| !p[i][i]) {
                bail!("batch positives: pair {i} is not a positive of itself");
            }
        }
        let ctx = config.text.context_length;
        for (i, (row, &e)) in self.tokens.iter().zip(&self.eot).enumerate() {
            if row.len() > ctx || e >= row.len() {
                bail!(
                    "batch token row {i}: {} ids with EOT at {e} (context length {ctx})",
                    row.len()
                );
            }
        }
        Ok(())
    }

    /// Positions the text tower computes: up to and including the longest EOT.
    pub fn text_positions(&self) -> usize {
        self.eot.iter().max().map_or(0, |e| e + 1)
    }
}

/// The loss statistics of a step (the gradients live in [`ClipGrads`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossStats {
    /// Symmetric InfoNCE.
    pub loss: f64,
    /// Image → text retrieval accuracy within the batch.
    pub image_to_text_accuracy: f64,
    /// Text → image retrieval accuracy within the batch.
    pub text_to_image_accuracy: f64,
    /// The logit multiplier used.
    pub scale: f64,
}

impl From<&ContrastiveLoss> for LossStats {
    fn from(l: &ContrastiveLoss) -> Self {
        LossStats {
            loss: l.loss,
            image_to_text_accuracy: l.image_to_text_accuracy,
            text_to_image_accuracy: l.text_to_image_accuracy,
            scale: l.scale,
        }
    }
}

/// The contrastive loss of `batch` under `clip` and the gradient of every weight.
pub fn loss_and_grads(clip: &Clip, batch: &Batch) -> Result<(LossStats, ClipGrads)> {
    batch.validate(&clip.config)?;
    let dev = clip.device();
    let (img, v_tape) = clip
        .vision
        .forward_with(&batch.pixels.to_device(dev)?, None, TapeMode::Weights)?;
    let s = batch.text_positions();
    let ids: Vec<Vec<u32>> = batch
        .tokens
        .iter()
        .map(|r| r[..s.min(r.len())].to_vec())
        .collect();
    if ids.iter().any(|r| r.len() != s) {
        bail!("batch token rows have different lengths");
    }
    let prompts = PromptBatch {
        embeddings: clip.text.embed_tokens(&ids)?,
        eot: batch.eot.clone(),
    };
    let (txt, t_tape) = clip
        .text
        .forward_with(&prompts, TextPath::Truncated, None, TapeMode::Weights)?;
    let loss = contrastive_loss_with(
        &l2_normalize(&img)?,
        &l2_normalize(&txt)?,
        clip.logit_scale as f64,
        batch.positives.as_deref(),
    )?;
    let d_img = l2_normalize_backward(&img, &loss.d_image.unsqueeze(0)?)?;
    let d_txt = l2_normalize_backward(&txt, &loss.d_text.unsqueeze(0)?)?;
    let taped = "a weight tape was requested";
    let vision = clip
        .vision
        .backward_full(v_tape.as_ref().expect(taped), &d_img, None)?;
    drop(v_tape);
    let text = clip
        .text
        .backward_full(t_tape.as_ref().expect(taped), &d_txt, None)?;
    let token_embedding = clip.text.token_embedding_grad(&ids, &text.input)?;
    let grads = ClipGrads::from_towers(
        &clip.config,
        text.weights.as_ref().expect(taped),
        &token_embedding,
        vision.weights.as_ref().expect(taped),
        loss.d_logit_scale,
    )?;
    Ok((LossStats::from(&loss), grads))
}

/// FLOPs of the forward matmuls of both towers on `batch` pairs with `text_positions`
/// computed text positions (2 per multiply–add): patch embedding, blocks, projections.
/// Causal attention is counted at the full key count (it is computed so).
pub fn forward_flops(config: &ClipConfig, batch: usize, text_positions: usize) -> f64 {
    patch_flops(config, batch) + blocks_and_heads_flops(config, batch, text_positions)
}

/// FLOPs of one [`loss_and_grads`]: every matmul of the forward runs three times in all
/// (forward, input cotangent, weight gradient), the attention matmuls once forward and
/// twice backward — three times the forward either way; the patch matmul has no input
/// cotangent (twice its forward). Element-wise work and the B × B loss are not counted.
pub fn step_flops(config: &ClipConfig, batch: usize, text_positions: usize) -> f64 {
    3.0 * blocks_and_heads_flops(config, batch, text_positions) + 2.0 * patch_flops(config, batch)
}

fn patch_flops(config: &ClipConfig, batch: usize) -> f64 {
    let v = &config.vision;
    2.0 * batch as f64
        * (v.grid() * v.grid()) as f64
        * (3 * v.patch_size * v.patch_size) as f64
        * v.width as f64
}

fn blocks_and_heads_flops(config: &ClipConfig, batch: usize, text_positions: usize) -> f64 {
    let (v, t) = (&config.vision, &config.text);
    let b = batch as f64;
    let vision =
        v.layers as f64 * block_flops(v.width, v.mlp_width, b * v.tokens() as f64, v.tokens() as f64);
    let s = text_positions as f64;
    let text = t.layers as f64 * block_flops(t.width, t.mlp_width, b * s, s);
    let heads = 2.0 * b * config.embed_dim as f64 * (v.width + t.width) as f64;
    vision + text + heads
}

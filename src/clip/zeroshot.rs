//! The zero-shot head: class names and a prompt template become normalized text
//! features; logits are exp(logit_scale) · normalize(image) · textᵀ.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

use super::model::{l2_normalize, Clip};
use super::tokenizer::ClipTokenizer;

/// Classes encoded once; scores image features against them.
#[derive(Debug, Clone)]
pub struct ZeroShotHead {
    /// Normalized class text features `[C, E]`.
    pub text_features: Tensor,
    /// The multiplier exp(logit_scale).
    pub scale: f64,
    /// The prompts that were encoded, one per class.
    pub prompts: Vec<String>,
}

/// Classes encoded per text-encoder call, bounding memory for 1000-class datasets.
pub const CLASS_CHUNK: usize = 256;

/// `template` with `{}` replaced by the class name (underscores become spaces).
pub fn render_prompt(template: &str, class_name: &str) -> Result<String> {
    if template.matches("{}").count() != 1 {
        bail!("prompt template `{template}` must contain exactly one `{{}}` placeholder");
    }
    Ok(template.replace("{}", &class_name.replace('_', " ")))
}

impl ZeroShotHead {
    /// Encodes `template` filled with each class name.
    pub fn build(clip: &Clip, tokenizer: &ClipTokenizer, classes: &[String], template: &str) -> Result<Self> {
        if classes.is_empty() {
            bail!("no class names given");
        }
        let prompts = classes
            .iter()
            .map(|c| render_prompt(template, c))
            .collect::<Result<Vec<_>>>()?;
        let mut chunks = Vec::new();
        for chunk in prompts.chunks(CLASS_CHUNK) {
            let toks = tokenizer.encode_batch(chunk)?;
            let ids: Vec<Vec<u32>> = toks.iter().map(|t| t.ids.clone()).collect();
            let eot: Vec<usize> = toks.iter().map(|t| t.eot).collect();
            chunks.push(clip.encode_token_ids(&ids, &eot)?);
        }
        let feats = Tensor::cat(&chunks, 0)?.to_dtype(DType::F32)?;
        Ok(ZeroShotHead {
            text_features: l2_normalize(&feats)?,
            scale: clip.logit_scale_exp(),
            prompts,
        })
    }

    /// Logits `[B, C]` (f32) of unnormalized image features `[B, E]`.
    pub fn logits(&self, image_features: &Tensor) -> Result<Tensor> {
        let img = l2_normalize(&image_features.to_dtype(DType::F32)?)?;
        Ok((img.matmul(&self.text_features.t()?)? * self.scale)?)
    }
}

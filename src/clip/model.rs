//! A loaded CLIP model: both towers and the logit scale, read from a checkpoint.

use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use super::checkpoint::{Checkpoint, Layout};
use super::config::ClipConfig;
use super::text::{PromptBatch, TextEncoder, TextPath};
use super::vision::VisionEncoder;

/// Where and in which precision to hold the weights.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Device for weights and activations.
    pub device: Device,
    /// Weight and compute precision (f32 by default; f16/bf16 are options for GPUs).
    pub dtype: DType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }
}

/// CLIP with frozen weights.
#[derive(Debug, Clone)]
pub struct Clip {
    /// Architecture.
    pub config: ClipConfig,
    /// Text tower.
    pub text: TextEncoder,
    /// Image tower.
    pub vision: VisionEncoder,
    /// ln of the logit scale as stored (exp gives the multiplier, 100 for OpenAI CLIP).
    pub logit_scale: f32,
    /// Key layout the weights came from.
    pub layout: Layout,
}

impl Clip {
    /// Loads a checkpoint directory (Hugging Face or OpenAI layout).
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let ck = Checkpoint::open(dir)?;
        Self::from_checkpoint(&ck, opts)
    }

    /// Builds the model from an opened checkpoint.
    pub fn from_checkpoint(ck: &Checkpoint, opts: &LoadOptions) -> Result<Self> {
        let e = ck.config.embed_dim;
        let logit_scale = ck
            .tensor("logit_scale", &[], DType::F32, &Device::Cpu)?
            .to_scalar::<f32>()?;
        Ok(Clip {
            config: ck.config.clone(),
            text: TextEncoder::load(ck, e, opts.dtype, &opts.device)?,
            vision: VisionEncoder::load(ck, e, opts.dtype, &opts.device)?,
            logit_scale,
            layout: ck.layout,
        })
    }

    /// exp(logit_scale), the multiplier of cosine similarities.
    pub fn logit_scale_exp(&self) -> f64 {
        (self.logit_scale as f64).exp()
    }

    /// The device holding the weights.
    pub fn device(&self) -> &Device {
        self.text.token_embedding.device()
    }

    /// Unnormalized image features `[B, E]` of normalized pixels `[B, 3, H, W]`.
    pub fn encode_images(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self
            .vision
            .forward(&pixels.to_device(self.device())?, None, false)?
            .0)
    }

    /// Unnormalized text features `[N, E]` of padded token rows with their EOT positions,
    /// using the exact fast path (truncation + shared prefix).
    pub fn encode_token_ids(&self, ids: &[Vec<u32>], eot: &[usize]) -> Result<Tensor> {
        let emb = self.text.embed_tokens(ids)?;
        let p = TextEncoder::shared_prefix_len(ids, eot);
        let path = if p > 1 && ids.len() > 1 {
            TextPath::SharedPrefix(p)
        } else {
            TextPath::Truncated
        };
        let batch = PromptBatch {
            embeddings: emb,
            eot: eot.to_vec(),
        };
        Ok(self.text.forward(&batch, path, None, false)?.0)
    }
}

/// Rows scaled to unit L2 norm.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(candle_core::D::Minus1)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}

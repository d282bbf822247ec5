//! A loaded CLIP model: both towers and the logit scale, read from a checkpoint.

use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use super::checkpoint::{Checkpoint, Layout, WeightSource};
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

/// CLIP: both towers and the logit scale (frozen for fine-tuning; pretraining rebuilds
/// it from [`ClipWeights`](super::weights::ClipWeights) each step).
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
        Self::from_source(ck, ck.layout, opts)
    }

    /// Builds the model from any source of canonically named weights (a checkpoint, or
    /// trainable [`ClipWeights`](super::weights::ClipWeights)); `layout` records where
    /// they came from.
    pub fn from_source(src: &dyn WeightSource, layout: Layout, opts: &LoadOptions) -> Result<Self> {
        let e = src.config().embed_dim;
        let logit_scale = src
            .tensor("logit_scale", &[], DType::F32, &Device::Cpu)?
            .to_scalar::<f32>()?;
        Ok(Clip {
            config: src.config().clone(),
            text: TextEncoder::load(src, e, opts.dtype, &opts.device)?,
            vision: VisionEncoder::load(src, e, opts.dtype, &opts.device)?,
            logit_scale,
            layout,
        })
    }

    /// Prepares the model for fine-tuning, where its weights stay frozen: the text
    /// tower lays out its linears' weights once for its products
    /// ([`TextEncoder::prepare_frozen`]). The same numbers, faster prompt steps. The
    /// image tower runs thousands of rows per product, over which gemm's copy of a
    /// weight spreads thin, so it keeps none.
    pub fn prepare_frozen(&mut self) -> Result<()> {
        self.text.prepare_frozen()
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::clip::ops::testutil::max_abs_diff;
    use std::collections::HashMap;
    use std::path::PathBuf;

    /// The tiny fixture CLIP directory for a layout (`hf` or `openai`).
    pub(crate) fn fixture_dir(layout: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tiny-clip")
            .join(layout)
    }

    /// Reference outputs computed by the authors' code (see tests/fixtures/README.md).
    pub(crate) fn expected() -> HashMap<String, Tensor> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/zeroshot_expected.safetensors");
        candle_core::safetensors::load(p, &Device::Cpu).unwrap()
    }

    pub(crate) fn reference_tokens(exp: &HashMap<String, Tensor>) -> (Vec<Vec<u32>>, Vec<usize>) {
        let ids: Vec<Vec<i64>> = exp["token_ids"].to_vec2().unwrap();
        let ids: Vec<Vec<u32>> = ids
            .into_iter()
            .map(|r| r.into_iter().map(|t| t as u32).collect())
            .collect();
        let eot = ids
            .iter()
            .map(|r| r.iter().position(|&t| t == 49407).unwrap())
            .collect();
        (ids, eot)
    }

    #[test]
    fn features_and_logits_match_the_reference_in_both_layouts() {
        let exp = expected();
        let (ids, eot) = reference_tokens(&exp);
        for layout in ["hf", "openai"] {
            let clip = Clip::load(&fixture_dir(layout), &LoadOptions::default()).unwrap();
            let img = clip.encode_images(&exp["pixel_values"]).unwrap();
            let txt = clip.encode_token_ids(&ids, &eot).unwrap();
            let di = max_abs_diff(&img, &exp["image_features"]);
            let dt = max_abs_diff(&txt, &exp["text_features"]);
            let logits = (l2_normalize(&img)
                .unwrap()
                .matmul(&l2_normalize(&txt).unwrap().t().unwrap())
                .unwrap()
                * clip.logit_scale_exp())
            .unwrap();
            let dl = max_abs_diff(&logits, &exp["logits"]);
            println!("{layout}: max abs diff image {di:e}, text {dt:e}, logits {dl:e}");
            assert!(
                di < 1e-4 && dt < 1e-4 && dl < 1e-4,
                "{layout}: image {di:e}, text {dt:e}, logits {dl:e}"
            );
        }
    }

    /// Half precision is an option (meant for GPUs); on the CPU it must stay close to f32.
    #[test]
    fn half_precision_stays_close_to_f32() {
        let exp = expected();
        let (ids, eot) = reference_tokens(&exp);
        let pixels = exp["pixel_values"].narrow(0, 0, 2).unwrap();
        for dtype in [DType::F16, DType::BF16] {
            let clip = Clip::load(
                &fixture_dir("hf"),
                &LoadOptions {
                    dtype,
                    ..LoadOptions::default()
                },
            )
            .unwrap();
            let img = clip.encode_images(&pixels).unwrap().to_dtype(DType::F32).unwrap();
            let txt = clip
                .encode_token_ids(&ids[..8], &eot[..8])
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let rel = |a: &Tensor, b: &Tensor| {
                let scale = max_abs_diff(b, &b.zeros_like().unwrap());
                max_abs_diff(a, b) / scale
            };
            let ri = rel(&img, &exp["image_features"].narrow(0, 0, 2).unwrap());
            let rt = rel(&txt, &exp["text_features"].narrow(0, 0, 8).unwrap());
            let tol = if dtype == DType::F16 { 2e-2 } else { 8e-2 };
            println!("{dtype:?}: relative error image {ri:e}, text {rt:e}");
            assert!(
                ri < tol && rt < tol,
                "{dtype:?}: relative error image {ri:e}, text {rt:e}"
            );
        }
    }
}

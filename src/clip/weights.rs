//! CLIP as a named parameter set: every weight under its canonical Hugging Face
//! `CLIPModel` name (`text_model.encoder.layers.N.self_attn.q_proj.weight`, …), for
//! training, optimizers and savers.
//!
//! * [`parameter_shapes`] lists the names and shapes a [`ClipConfig`] implies, from the
//!   one walk over the parameters ([`super::params`]), where the naming lives;
//! * [`ClipWeights`] holds the tensors by name, builds the encoders from them (q/k/v are
//!   fused at build time, exactly as when loading a checkpoint) and writes a Hugging Face
//!   directory (`config.json`, `model.safetensors`, tokenizer files) that
//!   [`Checkpoint::open`](super::Checkpoint::open) reads back bit for bit;
//! * [`ClipGrads`] maps the encoders' structured weight gradients (fused q/k/v, patch
//!   matrix) back to the same names, so gradient and weight line up tensor by tensor —
//!   through the same reader as the weights ([`ClipView`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use super::block::{Block, BlockWeightGrad};
use super::checkpoint::{openai_slot, Layout, OpenAiSlot, WeightSource};
use super::config::{ClipConfig, SpecialTokens};
use super::model::{Clip, LoadOptions};
use super::ops::{LayerNorm, LayerNormGrad, Linear, LinearGrad};
use super::params::{parts, BlockLayer, Part, Tower, Wb};
use super::text::TextWeightGrad;
use super::vision::VisionWeightGrad;

/// `(name, shape)` of every parameter of a CLIP with this architecture, in the walk's
/// order ([`parts`]).
pub fn parameter_shapes(c: &ClipConfig) -> Vec<(String, Vec<usize>)> {
    parts(c).into_iter().map(|p| (p.name(), p.shape(c))).collect()
}

/// A layer's weight and bias as the encoders hold them (of the weights, or of their
/// gradients).
type Pair<'a> = (&'a Tensor, Option<&'a Tensor>);

/// One block's layers as the encoders hold them (q, k and v fused into one `[3D, …]`).
struct BlockView<'a> {
    width: usize,
    ln1: Pair<'a>,
    qkv: Pair<'a>,
    out: Pair<'a>,
    ln2: Pair<'a>,
    fc1: Pair<'a>,
    fc2: Pair<'a>,
}

impl<'a> BlockView<'a> {
    fn of_weights(b: &'a Block) -> Self {
        let lin = |l: &'a Linear| (&l.weight, l.bias.as_ref());
        BlockView {
            width: b.width,
            ln1: norm_pair(&b.ln1),
            qkv: lin(&b.qkv),
            out: lin(&b.out),
            ln2: norm_pair(&b.ln2),
            fc1: lin(&b.fc1),
            fc2: lin(&b.fc2),
        }
    }

    fn of_grads(g: &'a BlockWeightGrad, width: usize) -> Self {
        let lin = |l: &'a LinearGrad| (&l.weight, l.bias.as_ref());
        BlockView {
            width,
            ln1: norm_grad_pair(&g.ln1),
            qkv: lin(&g.qkv),
            out: lin(&g.out),
            ln2: norm_grad_pair(&g.ln2),
            fc1: lin(&g.fc1),
            fc2: lin(&g.fc2),
        }
    }

    /// The tensor of `layer` (q, k, v: their rows of the fused projection).
    fn tensor(&self, layer: BlockLayer, wb: Wb) -> Result<Tensor> {
        let third = |i: usize| -> Result<Tensor> {
            Ok(pick(self.qkv, wb)?
                .narrow(0, i * self.width, self.width)?
                .contiguous()?)
        };
        match layer {
            BlockLayer::Q => third(0),
            BlockLayer::K => third(1),
            BlockLayer::V => third(2),
            BlockLayer::Out => pick(self.out, wb),
            BlockLayer::Ln1 => pick(self.ln1, wb),
            BlockLayer::Fc1 => pick(self.fc1, wb),
            BlockLayer::Fc2 => pick(self.fc2, wb),
            BlockLayer::Ln2 => pick(self.ln2, wb),
        }
    }
}

/// A LayerNorm's γ and β.
fn norm_pair(l: &LayerNorm) -> Pair<'_> {
    (&l.weight, Some(&l.bias))
}

/// The gradients of a LayerNorm's γ and β.
fn norm_grad_pair(l: &LayerNormGrad) -> Pair<'_> {
    (&l.weight, Some(&l.bias))
}

/// The weight or the bias of a layer.
fn pick(pair: Pair, wb: Wb) -> Result<Tensor> {
    match wb {
        Wb::Weight => Ok(pair.0.clone()),
        Wb::Bias => pair
            .1
            .cloned()
            .ok_or_else(|| anyhow!("a layer has no bias (CLIP's layers all do)")),
    }
}

/// Everything of one CLIP — its weights, or their gradients — in the encoders' layout:
/// one reader ([`ClipView::tensor`]) turns it into the walk's named tensors, for both.
struct ClipView<'a> {
    token_embedding: &'a Tensor,
    text_positional: &'a Tensor,
    text_blocks: Vec<BlockView<'a>>,
    text_final: Pair<'a>,
    text_projection: &'a Tensor,
    class_embedding: &'a Tensor,
    /// The patch embedding as the matrix `[D, 3·p·p]`.
    patch: &'a Tensor,
    patch_size: usize,
    vision_positional: &'a Tensor,
    pre_norm: Pair<'a>,
    vision_blocks: Vec<BlockView<'a>>,
    vision_final: Pair<'a>,
    vision_projection: &'a Tensor,
    logit_scale: Tensor,
}

impl ClipView<'_> {
    /// The tensor at `part`, in the checkpoint's shape.
    fn tensor(&self, part: Part) -> Result<Tensor> {
        let block = |t: Tower, i: usize| match t {
            Tower::Text => &self.text_blocks[i],
            Tower::Vision => &self.vision_blocks[i],
        };
        Ok(match part {
            Part::TokenEmbedding => self.token_embedding.clone(),
            Part::Positional(Tower::Text) => self.text_positional.clone(),
            Part::Positional(Tower::Vision) => self.vision_positional.clone(),
            Part::ClassEmbedding => self.class_embedding.clone(),
            Part::Patch => {
                let p = self.patch_size;
                self.patch.reshape((self.patch.dim(0)?, 3, p, p))?
            }
            Part::PreNorm(wb) => pick(self.pre_norm, wb)?,
            Part::Block(t, i, layer, wb) => block(t, i).tensor(layer, wb)?,
            Part::FinalNorm(Tower::Text, wb) => pick(self.text_final, wb)?,
            Part::FinalNorm(Tower::Vision, wb) => pick(self.vision_final, wb)?,
            Part::Projection(Tower::Text) => self.text_projection.clone(),
            Part::Projection(Tower::Vision) => self.vision_projection.clone(),
            Part::LogitScale => self.logit_scale.clone(),
        })
    }

    /// Every parameter of `config` by name.
    fn named(&self, config: &ClipConfig) -> Result<BTreeMap<String, Tensor>> {
        parts(config)
            .into_iter()
            .map(|p| Ok((p.name(), self.tensor(p)?)))
            .collect()
    }
}

/// Checks that `tensors` holds exactly the parameters of `config` with their shapes.
fn check_complete(config: &ClipConfig, tensors: &BTreeMap<String, Tensor>, what: &str) -> Result<()> {
    let shapes = parameter_shapes(config);
    for (name, shape) in &shapes {
        let t = tensors
            .get(name)
            .ok_or_else(|| anyhow!("{what}: parameter `{name}` is missing"))?;
        if t.dims() != shape.as_slice() {
            bail!(
                "{what}: parameter `{name}` has shape {:?}, expected {shape:?}",
                t.dims()
            );
        }
    }
    if tensors.len() != shapes.len() {
        let known: std::collections::HashSet<&str> = shapes.iter().map(|(n, _)| n.as_str()).collect();
        let extra = tensors
            .keys()
            .find(|k| !known.contains(k.as_str()))
            .map_or("?", String::as_str);
        bail!("{what}: unexpected parameter `{extra}` for this architecture");
    }
    Ok(())
}

/// What to write next to the weights in [`ClipWeights::save_hf`].
#[derive(Debug, Clone, Default)]
pub struct SaveOptions {
    /// Tokenizer to ship with the model: a `tokenizer.json` file, or a directory whose
    /// tokenizer files (`tokenizer.json`, `vocab.json`, `merges.txt`,
    /// `tokenizer_config.json`, `special_tokens_map.json`, where present) are copied.
    pub tokenizer: Option<PathBuf>,
    /// Special-token ids for `config.json` (Hugging Face pools the text at `eos_token_id`).
    pub special_tokens: SpecialTokens,
}

/// Tokenizer files copied from a directory by [`ClipWeights::save_hf`].
const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// Trainable CLIP weights: every parameter by canonical name, with the architecture.
#[derive(Debug, Clone)]
pub struct ClipWeights {
    config: ClipConfig,
    tensors: BTreeMap<String, Tensor>,
}

impl ClipWeights {
    /// Weights from named tensors; every parameter of `config` must be present with its
    /// shape, and nothing else.
    pub fn new(config: ClipConfig, tensors: BTreeMap<String, Tensor>) -> Result<Self> {
        config.validate()?;
        check_complete(&config, &tensors, "CLIP weights")?;
        Ok(ClipWeights { config, tensors })
    }

    /// Every weight of a loaded model (fused q/k/v split back into q, k, v; the patch
    /// matrix reshaped to the convolution's `[D, 3, p, p]`).
    pub fn from_clip(clip: &Clip) -> Result<Self> {
        let (t, v) = (&clip.text, &clip.vision);
        let view = ClipView {
            token_embedding: &t.token_embedding,
            text_positional: &t.positional,
            text_blocks: t.blocks.iter().map(BlockView::of_weights).collect(),
            text_final: (&t.final_norm.weight, Some(&t.final_norm.bias)),
            text_projection: &t.projection,
            class_embedding: &v.class_embedding,
            patch: &v.patch,
            patch_size: v.config.patch_size,
            vision_positional: &v.positional,
            pre_norm: norm_pair(&v.pre_norm),
            vision_blocks: v.blocks.iter().map(BlockView::of_weights).collect(),
            vision_final: norm_pair(&v.final_norm),
            vision_projection: &v.projection,
            logit_scale: Tensor::new(clip.logit_scale, &Device::Cpu)?
                .to_dtype(t.projection.dtype())?
                .to_device(t.projection.device())?,
        };
        let mut config = clip.config.clone();
        config.text.vocab_size = t.config.vocab_size;
        let tensors = view.named(&config)?;
        Self::new(config, tensors)
    }

    /// Every parameter of an opened checkpoint (either key layout), in f32 on the CPU.
    pub fn from_checkpoint(ck: &dyn WeightSource) -> Result<Self> {
        let config = ck.config().clone();
        let tensors = parameter_shapes(&config)
            .into_iter()
            .map(|(n, s)| {
                let t = ck.tensor(&n, &s, DType::F32, &Device::Cpu)?;
                Ok((n, t))
            })
            .collect::<Result<_>>()?;
        Self::new(config, tensors)
    }

    /// The architecture.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// The tensors by name.
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| anyhow!("CLIP weights: no parameter `{name}`"))
    }

    /// Replaces the tensor called `name` by one of the same shape and dtype.
    pub fn set(&mut self, name: &str, value: Tensor) -> Result<()> {
        let old = self
            .tensors
            .get_mut(name)
            .ok_or_else(|| anyhow!("CLIP weights: no parameter `{name}`"))?;
        if old.dims() != value.dims() || old.dtype() != value.dtype() {
            bail!(
                "CLIP weights: `{name}` is {:?} {:?}, the update is {:?} {:?}",
                old.dims(),
                old.dtype(),
                value.dims(),
                value.dtype()
            );
        }
        *old = value;
        Ok(())
    }

    /// Number of scalars.
    pub fn numel(&self) -> usize {
        self.tensors.values().map(Tensor::elem_count).sum()
    }

    /// The same weights in another precision.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let tensors = self
            .tensors
            .iter()
            .map(|(n, t)| Ok((n.clone(), t.to_dtype(dtype)?)))
            .collect::<Result<_>>()?;
        Ok(ClipWeights {
            config: self.config.clone(),
            tensors,
        })
    }

    /// The encoders built from these weights (q/k/v fused, patch matrix flattened), in
    /// `opts`' precision and device — the same code path as loading a checkpoint.
    pub fn to_clip(&self, opts: &LoadOptions) -> Result<Clip> {
        Clip::from_source(self, Layout::HuggingFace, opts)
    }

    /// Writes a Hugging Face `CLIPModel` directory: `config.json`, the tokenizer files
    /// (when given), then `model.safetensors` — each file atomically, the weights last,
    /// so an interrupted save never leaves weights beside a stale or missing config.
    pub fn save_hf(&self, dir: &Path, opts: &SaveOptions) -> Result<()> {
        let cpu: Vec<(String, Tensor)> = self
            .tensors
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.to_device(&Device::Cpu)?.contiguous()?)))
            .collect::<Result<_>>()?;
        self.save_dir(dir, opts, cpu)
    }

    /// Writes the same directory with the weights in OpenAI's state-dict key layout
    /// (`transformer.resblocks.N.attn.in_proj_weight` with q, k, v fused, `visual.proj`
    /// and `text_projection` transposed — the file the authors' `clip.build_model` reads
    /// once converted to a `.pt`), next to the Hugging Face `config.json` that
    /// [`Checkpoint::open`](super::Checkpoint::open) takes the head counts from.
    pub fn save_openai(&self, dir: &Path, opts: &SaveOptions) -> Result<()> {
        let mut thirds: BTreeMap<String, [Option<Tensor>; 3]> = BTreeMap::new();
        let mut out: Vec<(String, Tensor)> = Vec::new();
        for (name, _) in parameter_shapes(&self.config) {
            let t = self.get(&name)?.to_device(&Device::Cpu)?;
            match openai_slot(&name)? {
                OpenAiSlot::Same(key) => out.push((key, t.contiguous()?)),
                OpenAiSlot::Transposed(key) => out.push((key, t.t()?.contiguous()?)),
                OpenAiSlot::Third(key, i) => thirds.entry(key).or_default()[i] = Some(t),
            }
        }
        for (key, parts) in thirds {
            let parts = parts
                .into_iter()
                .map(|p| p.ok_or_else(|| anyhow!("`{key}`: q, k or v is missing")))
                .collect::<Result<Vec<_>>>()?;
            out.push((key, Tensor::cat(&parts, 0)?.contiguous()?));
        }
        self.save_dir(dir, opts, out)
    }

    fn save_dir(&self, dir: &Path, opts: &SaveOptions, tensors: Vec<(String, Tensor)>) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let config = self.config.to_hf_config_json(&opts.special_tokens);
        crate::report::atomic::write(
            &dir.join("config.json"),
            serde_json::to_string_pretty(&config)?.as_bytes(),
        )?;
        if let Some(tok) = &opts.tokenizer {
            copy_tokenizer(tok, dir)?;
        }
        let path = dir.join("model.safetensors");
        let bytes = safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), None)
            .map_err(|e| anyhow!("{}: cannot serialize the weights: {e}", path.display()))?;
        crate::report::atomic::write(&path, &bytes)
    }
}

impl WeightSource for ClipWeights {
    fn config(&self) -> &ClipConfig {
        &self.config
    }

    fn tensor(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let t = self.get(name)?;
        if t.dims() != shape {
            bail!(
                "CLIP weights: `{name}` has shape {:?}, expected {shape:?}",
                t.dims()
            );
        }
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }
}

fn copy_tokenizer(src: &Path, dir: &Path) -> Result<()> {
    let files: Vec<PathBuf> = if src.is_file() {
        vec![src.to_path_buf()]
    } else if src.is_dir() {
        let found: Vec<PathBuf> = TOKENIZER_FILES
            .iter()
            .map(|f| src.join(f))
            .filter(|p| p.is_file())
            .collect();
        if found.is_empty() {
            bail!(
                "{}: no tokenizer files (expected one of {})",
                src.display(),
                TOKENIZER_FILES.join(", ")
            );
        }
        found
    } else {
        bail!("{}: no such tokenizer file or directory", src.display());
    };
    for f in files {
        let name = f
            .file_name()
            .ok_or_else(|| anyhow!("{}: not a file path", f.display()))?;
        let bytes = std::fs::read(&f).with_context(|| format!("{}: cannot read", f.display()))?;
        crate::report::atomic::write(&dir.join(name), &bytes)?;
    }
    Ok(())
}

/// Gradients of every CLIP parameter under the canonical names of [`parameter_shapes`]
/// (q/k/v split, patch gradient in the convolution's shape, logit scale a scalar).
#[derive(Debug, Clone)]
pub struct ClipGrads {
    /// The gradients by name.
    pub tensors: BTreeMap<String, Tensor>,
}

impl ClipGrads {
    /// Collects the towers' weight gradients, the token-embedding gradient and the logit
    /// scale's into one named set, checked against `config`.
    pub fn from_towers(
        config: &ClipConfig,
        text: &TextWeightGrad,
        token_embedding: &Tensor,
        vision: &VisionWeightGrad,
        logit_scale: f64,
    ) -> Result<Self> {
        let (t, v) = (&config.text, &config.vision);
        if text.blocks.len() != t.layers || vision.blocks.len() != v.layers {
            bail!(
                "CLIP gradients: {} text and {} vision block gradients for {} and {} layers",
                text.blocks.len(),
                vision.blocks.len(),
                t.layers,
                v.layers
            );
        }
        let view = ClipView {
            token_embedding,
            text_positional: &text.positional,
            text_blocks: text
                .blocks
                .iter()
                .map(|g| BlockView::of_grads(g, t.width))
                .collect(),
            text_final: norm_grad_pair(&text.final_norm),
            text_projection: &text.projection,
            class_embedding: &vision.class_embedding,
            patch: &vision.patch,
            patch_size: v.patch_size,
            vision_positional: &vision.positional,
            pre_norm: norm_grad_pair(&vision.pre_norm),
            vision_blocks: vision
                .blocks
                .iter()
                .map(|g| BlockView::of_grads(g, v.width))
                .collect(),
            vision_final: norm_grad_pair(&vision.final_norm),
            vision_projection: &vision.projection,
            logit_scale: Tensor::new(logit_scale, text.projection.device())?
                .to_dtype(text.projection.dtype())?,
        };
        let m = view.named(config)?;
        check_complete(config, &m, "CLIP gradients")?;
        Ok(ClipGrads { tensors: m })
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| anyhow!("CLIP gradients: no parameter `{name}`"))
    }

    /// ‖g‖₂ over all parameters together (accumulated in f64).
    pub fn global_norm(&self) -> Result<f64> {
        let mut sq = 0f64;
        for t in self.tensors.values() {
            sq += t.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        }
        Ok(sq.sqrt())
    }

    /// Every gradient multiplied by `factor`.
    pub fn scale(&mut self, factor: f64) -> Result<()> {
        for t in self.tensors.values_mut() {
            *t = (&*t * factor)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::clip::config::{TextConfig, VisionConfig};
    use crate::clip::init::{init_weights, tests::small_config};
    use crate::clip::ops::testutil::{dot, max_abs_diff, rand_tensor};
    use crate::clip::ops::TapeMode;
    use crate::clip::text::{PromptBatch, TextPath};
    use crate::clip::Checkpoint;

    /// A tiny architecture for f64 finite differences: 8×8 images with patch 4 (5 tokens),
    /// context 6, two layers per tower.
    pub(crate) fn tiny_config() -> ClipConfig {
        ClipConfig {
            text: TextConfig {
                vocab_size: 11,
                width: 8,
                layers: 2,
                heads: 2,
                mlp_width: 16,
                context_length: 6,
            },
            vision: VisionConfig {
                image_size: 8,
                patch_size: 4,
                width: 8,
                layers: 2,
                heads: 2,
                mlp_width: 16,
            },
            embed_dim: 6,
            layer_norm_eps: 1e-5,
        }
    }

    /// Every parameter uniform random (LayerNorm γ around 1), so no gradient is trivially
    /// zero or symmetric; f64.
    pub(crate) fn random_weights(config: &ClipConfig, seed: u64) -> ClipWeights {
        let tensors = parameter_shapes(config)
            .into_iter()
            .enumerate()
            .map(|(i, (name, shape))| {
                let t = rand_tensor(&shape, seed * 1000 + i as u64, 0.5);
                let gamma = name.ends_with(".weight") && name.contains("norm");
                let t = if gamma { (t + 1.0).unwrap() } else { t };
                (name, t.to_dtype(DType::F64).unwrap())
            })
            .collect();
        ClipWeights::new(config.clone(), tensors).unwrap()
    }

    /// ⟨image features, wi⟩ + ⟨text features, wt⟩ of a model.
    fn objective(
        w: &ClipWeights,
        px: &Tensor,
        prompts: &PromptBatch,
        path: TextPath,
        wi: &Tensor,
        wt: &Tensor,
    ) -> f64 {
        let clip = w
            .to_clip(&LoadOptions {
                dtype: DType::F64,
                ..LoadOptions::default()
            })
            .unwrap();
        let (img, _) = clip.vision.forward_with(px, None, TapeMode::None).unwrap();
        let emb = clip.text.embed_tokens(&prompt_ids()).unwrap();
        let batch = PromptBatch {
            embeddings: emb,
            eot: prompts.eot.clone(),
        };
        let (txt, _) = clip
            .text
            .forward_with(&batch, path, None, TapeMode::None)
            .unwrap();
        dot(&img, wi) + dot(&txt, wt)
    }

    /// Three token rows sharing their first two ids; EOT (id 10) at 4, 2, 3; padding 0.
    fn prompt_ids() -> Vec<Vec<u32>> {
        vec![
            vec![1, 5, 3, 2, 10, 0],
            vec![1, 5, 10, 0, 0, 0],
            vec![1, 5, 7, 10, 0, 0],
        ]
    }

    /// The gradient of every named weight of both towers (K = 2 cotangents, summed) by the
    /// explicit backward passes and [`ClipGrads::from_towers`], against central
    /// differences in f64 along a random direction per tensor, on the truncated and the
    /// shared-prefix text paths. Tolerance: 1e-6 · (1 + |analytic|).
    #[test]
    fn every_named_weight_gradient_matches_finite_differences() {
        let config = tiny_config();
        let w = random_weights(&config, 1);
        let px = rand_tensor(&[2, 3, 8, 8], 2, 1.5).to_dtype(DType::F64).unwrap();
        let ids = prompt_ids();
        let eot = vec![4, 2, 3];
        let d_img = rand_tensor(&[2, 2, 6], 3, 1.0).to_dtype(DType::F64).unwrap();
        let d_txt = rand_tensor(&[2, 3, 6], 4, 1.0).to_dtype(DType::F64).unwrap();
        let sum_k = |t: &Tensor| (t.get(0).unwrap() + t.get(1).unwrap()).unwrap();
        let (wi, wt) = (sum_k(&d_img), sum_k(&d_txt));
        let clip = w
            .to_clip(&LoadOptions {
                dtype: DType::F64,
                ..LoadOptions::default()
            })
            .unwrap();
        let mut worst = 0f64;
        for path in [TextPath::Truncated, TextPath::SharedPrefix(2)] {
            let prompts = PromptBatch {
                embeddings: clip.text.embed_tokens(&ids).unwrap(),
                eot: eot.clone(),
            };
            let (_, vt) = clip.vision.forward_with(&px, None, TapeMode::Weights).unwrap();
            let vb = clip
                .vision
                .backward_full(vt.as_ref().unwrap(), &d_img, None)
                .unwrap();
            let (_, tt) = clip
                .text
                .forward_with(&prompts, path, None, TapeMode::Weights)
                .unwrap();
            let tb = clip
                .text
                .backward_full(tt.as_ref().unwrap(), &d_txt, None)
                .unwrap();
            let tok = clip.text.token_embedding_grad(&ids, &tb.input).unwrap();
            let grads = ClipGrads::from_towers(
                &config,
                tb.weights.as_ref().unwrap(),
                &tok,
                vb.weights.as_ref().unwrap(),
                0.0,
            )
            .unwrap();
            for (i, (name, shape)) in parameter_shapes(&config).into_iter().enumerate() {
                let v = rand_tensor(&shape, 500 + i as u64, 1.0)
                    .to_dtype(DType::F64)
                    .unwrap();
                let at = |t: f64| {
                    let mut p = w.clone();
                    let moved = (w.get(&name).unwrap() + (&v * t).unwrap()).unwrap();
                    p.set(&name, moved).unwrap();
                    objective(&p, &px, &prompts, path, &wi, &wt)
                };
                let eps = 1e-5;
                let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                let an = dot(grads.get(&name).unwrap(), &v);
                let err = (fd - an).abs() / (1.0 + an.abs());
                worst = worst.max(err);
                assert!(err < 1e-6, "{path:?} `{name}`: fd {fd} vs analytic {an}");
            }
        }
        println!("named CLIP weight gradients: worst relative finite-difference error {worst:e}");
    }

    #[test]
    fn weights_round_trip_through_a_clip() {
        let w = init_weights(&small_config(), 2).unwrap();
        let back = ClipWeights::from_clip(&w.to_clip(&LoadOptions::default()).unwrap()).unwrap();
        for (name, t) in w.tensors() {
            assert_eq!(max_abs_diff(t, back.get(name).unwrap()), 0.0, "{name}");
        }
        let mut bad = w.clone();
        assert!(bad
            .set("logit_scale", Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap())
            .is_err());
        let mut m = w.tensors().clone();
        m.remove("visual_projection.weight");
        let e = format!("{:#}", ClipWeights::new(w.config().clone(), m).unwrap_err());
        assert!(e.contains("visual_projection.weight"), "{e}");
    }

    /// Saved as a Hugging Face directory, the weights read back bit for bit through
    /// `Checkpoint::open` (config from config.json, not inferred) and give the same
    /// features; the tokenizer files travel along.
    #[test]
    fn hf_directory_reads_back_bit_exactly() {
        let config = small_config();
        let w = init_weights(&config, 4).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip/hf");
        let opts = SaveOptions {
            tokenizer: Some(fixture.join("tokenizer.json")),
            special_tokens: SpecialTokens {
                bos: Some(1),
                eos: Some(2),
                pad: Some(0),
            },
        };
        w.save_hf(dir.path(), &opts).unwrap();
        let ck = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(ck.layout, Layout::HuggingFace);
        assert!(ck.config_source.ends_with("config.json"), "{}", ck.config_source);
        assert_eq!(ck.config, config);
        let back = ClipWeights::from_checkpoint(&ck).unwrap();
        for (name, t) in w.tensors() {
            assert_eq!(max_abs_diff(t, back.get(name).unwrap()), 0.0, "{name}");
        }
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(json["text_config"]["eos_token_id"], 2);
        let loaded = Clip::load(dir.path(), &LoadOptions::default()).unwrap();
        let px = rand_tensor(&[2, 3, 32, 32], 5, 1.0);
        let mine = w.to_clip(&LoadOptions::default()).unwrap();
        assert_eq!(
            max_abs_diff(
                &loaded.encode_images(&px).unwrap(),
                &mine.encode_images(&px).unwrap()
            ),
            0.0
        );
        assert_eq!(loaded.logit_scale, mine.logit_scale);
        crate::clip::tokenizer::ClipTokenizer::from_dir(dir.path()).unwrap();
        // A directory of tokenizer files is copied too; a missing one is named.
        let dir2 = tempfile::tempdir().unwrap();
        let opts = SaveOptions {
            tokenizer: Some(fixture.clone()),
            ..SaveOptions::default()
        };
        w.save_hf(dir2.path(), &opts).unwrap();
        assert!(dir2.path().join("vocab.json").is_file() && dir2.path().join("merges.txt").is_file());
        let opts = SaveOptions {
            tokenizer: Some(fixture.join("nope.json")),
            ..SaveOptions::default()
        };
        let e = format!("{:#}", w.save_hf(dir2.path(), &opts).unwrap_err());
        assert!(e.contains("nope.json"), "{e}");
    }

    /// The OpenAI layout written from the tiny fixture CLIP's Hugging Face weights is the
    /// fixture's own OpenAI file, key for key and bit for bit (made by the authors'
    /// tooling), and reads back — with its config.json, so heads are not guessed from
    /// widths — to the same weights.
    #[test]
    fn openai_layout_equals_the_reference_file_and_reads_back() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip");
        let w = ClipWeights::from_checkpoint(&Checkpoint::open(&fixtures.join("hf")).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let opts = SaveOptions {
            tokenizer: Some(fixtures.join("hf")),
            ..SaveOptions::default()
        };
        w.save_openai(dir.path(), &opts).unwrap();
        let mine =
            candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
        let want =
            candle_core::safetensors::load(fixtures.join("openai/model.safetensors"), &Device::Cpu).unwrap();
        let mut keys: Vec<&String> = mine.keys().collect();
        keys.sort();
        let mut want_keys: Vec<&String> = want.keys().collect();
        want_keys.sort();
        assert_eq!(keys, want_keys);
        for k in keys {
            assert_eq!(mine[k].dims(), want[k].dims(), "{k}");
            assert_eq!(max_abs_diff(&mine[k], &want[k]), 0.0, "{k}");
        }
        let ck = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(ck.layout, Layout::OpenAi);
        assert!(ck.config_source.ends_with("config.json"), "{}", ck.config_source);
        let back = ClipWeights::from_checkpoint(&ck).unwrap();
        for (name, t) in w.tensors() {
            assert_eq!(max_abs_diff(t, back.get(name).unwrap()), 0.0, "{name}");
        }
        // Heads that width / 64 would get wrong (3 at width 96, 2 at 64) come from
        // config.json.
        let config = small_config();
        let odd = init_weights(&config, 9).unwrap();
        let dir2 = tempfile::tempdir().unwrap();
        odd.save_openai(dir2.path(), &SaveOptions::default()).unwrap();
        assert_eq!(Checkpoint::open(dir2.path()).unwrap().config, config);
    }
}

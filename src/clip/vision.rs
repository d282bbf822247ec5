//! The ViT image tower: patch embedding (a strided convolution written as one matmul),
//! class token, positional embedding, pre-LN, residual blocks, post-LN on the class token,
//! projection. The backward pass returns LoRA gradients (the pixels are never trained)
//! and, for a forward with [`TapeMode::Weights`], the gradients of every weight
//! ([`VisionEncoder::backward_full`]): the patch embedding's is a matmul of the token
//! cotangents with the unfolded patches, the convolution's own formulation.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use super::block::{
    first_positions, row_products, Block, BlockLora, BlockLoraGrad, BlockTape, BlockWeightGrad, Shape,
};
use super::checkpoint::WeightSource;
use super::config::VisionConfig;
use super::matmul::rows_compute_alike;
use super::ops::{matmul, sum_cotangents, LayerNorm, LayerNormGrad, LayerNormTape, TapeMode};
use super::params::{Part, Tower, Wb};

/// The CLIP vision tower.
#[derive(Debug, Clone)]
pub struct VisionEncoder {
    /// Patch embedding as a matrix `[D, 3·p·p]` (channel, row, column order of the conv).
    pub patch: Tensor,
    /// Class token `[D]`.
    pub class_embedding: Tensor,
    /// Positional embeddings `[1 + grid², D]`.
    pub positional: Tensor,
    /// LayerNorm before the blocks.
    pub pre_norm: LayerNorm,
    /// Residual blocks.
    pub blocks: Vec<Block>,
    /// LayerNorm on the class token after the blocks.
    pub final_norm: LayerNorm,
    /// Projection into the joint space `[E, D]`.
    pub projection: Tensor,
    /// Shape.
    pub config: VisionConfig,
}

/// What the vision backward needs.
pub struct VisionTape {
    batch: usize,
    layers: Vec<BlockTape>,
    final_norm: LayerNormTape,
    /// Kept for weight gradients only.
    weights: Option<VisionWeightTape>,
}

/// The extra activations weight gradients need: unfolded patches (input of the patch
/// matmul), pre_norm's input, and final_norm's output (input of the projection).
struct VisionWeightTape {
    patches: Tensor,
    pre_norm: LayerNormTape,
    normed: Tensor,
}

/// Gradients of every vision-tower weight, summed over the K cotangents.
#[derive(Debug, Clone)]
pub struct VisionWeightGrad {
    /// Patch embedding as the matrix `[D, 3·p·p]` (reshape to `[D, 3, p, p]` for the conv).
    pub patch: Tensor,
    /// Class token `[D]`.
    pub class_embedding: Tensor,
    /// Positional embeddings `[1 + grid², D]`.
    pub positional: Tensor,
    /// LayerNorm before the blocks.
    pub pre_norm: LayerNormGrad,
    /// Per block, in order.
    pub blocks: Vec<BlockWeightGrad>,
    /// LayerNorm on the class token.
    pub final_norm: LayerNormGrad,
    /// Projection `[E, D]`.
    pub projection: Tensor,
}

/// Everything [`VisionEncoder::backward_full`] returns.
#[derive(Debug, Clone)]
pub struct VisionBackward {
    /// Per-layer LoRA gradients (empty adapters without LoRA).
    pub lora: Vec<BlockLoraGrad>,
    /// Weight gradients, when the forward kept a [`TapeMode::Weights`] tape.
    pub weights: Option<VisionWeightGrad>,
}

impl VisionEncoder {
    /// Loads the vision tower (canonical names `vision_model.*`, `visual_projection.weight`).
    pub fn load(ck: &dyn WeightSource, embed_dim: usize, dtype: DType, dev: &Device) -> Result<Self> {
        let c = ck.config().vision.clone();
        if ck.config().embed_dim != embed_dim {
            bail!(
                "vision tower: joint dimension {embed_dim}, the configuration says {}",
                ck.config().embed_dim
            );
        }
        let t = |part| ck.part(part, dtype, dev);
        let norm = |w, b| -> Result<LayerNorm> {
            Ok(LayerNorm {
                weight: t(w)?,
                bias: t(b)?,
                eps: ck.config().layer_norm_eps,
            })
        };
        let p = c.patch_size;
        let blocks = (0..c.layers)
            .map(|i| Block::load(ck, Tower::Vision, i, dtype, dev))
            .collect::<Result<Vec<_>>>()?;
        Ok(VisionEncoder {
            patch: t(Part::Patch)?.reshape((c.width, 3 * p * p))?,
            class_embedding: t(Part::ClassEmbedding)?,
            positional: t(Part::Positional(Tower::Vision))?,
            pre_norm: norm(Part::PreNorm(Wb::Weight), Part::PreNorm(Wb::Bias))?,
            blocks,
            final_norm: norm(
                Part::FinalNorm(Tower::Vision, Wb::Weight),
                Part::FinalNorm(Tower::Vision, Wb::Bias),
            )?,
            projection: t(Part::Projection(Tower::Vision))?,
            config: c,
        })
    }

    /// Token rows `[B·T, D]` after patch embedding, class token, positions and pre_norm;
    /// with `keep`, also the unfolded patches and pre_norm's tape.
    fn embed(&self, pixels: &Tensor, keep: bool) -> Result<(Tensor, Option<(Tensor, LayerNormTape)>)> {
        let (b, ch, h, w) = pixels.dims4()?;
        let c = &self.config;
        if ch != 3 || h != c.image_size || w != c.image_size {
            bail!(
                "image batch has shape {:?}, expected [B, 3, {}, {}]",
                pixels.dims(),
                c.image_size,
                c.image_size
            );
        }
        let (g, p) = (c.grid(), c.patch_size);
        let patches = pixels
            .to_dtype(self.patch.dtype())?
            .reshape((b, 3, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, 3 * p * p))?;
        let tokens = matmul(&patches, &self.patch.t()?)?.reshape((b, g * g, c.width))?;
        let cls = self
            .class_embedding
            .reshape((1, 1, c.width))?
            .broadcast_as((b, 1, c.width))?;
        let x = Tensor::cat(&[&cls, &tokens], 1)?
            .broadcast_add(&self.positional)?
            .reshape((b * c.tokens(), c.width))?;
        if keep {
            let (y, tape) = self.pre_norm.forward_taped(&x)?;
            return Ok((y, Some((patches, tape))));
        }
        Ok((self.pre_norm.forward(&x)?, None))
    }

    /// [`forward_with`](Self::forward_with) keeping the frozen tape when `keep_tape`.
    pub fn forward(
        &self,
        pixels: &Tensor,
        lora: Option<&[BlockLora]>,
        keep_tape: bool,
    ) -> Result<(Tensor, Option<VisionTape>)> {
        self.forward_with(pixels, lora, TapeMode::frozen(keep_tape))
    }

    /// Encodes normalized pixels `[B, 3, H, W]` to projected (unnormalized) features
    /// `[B, E]`, keeping a tape for the backward unless `mode` is [`TapeMode::None`].
    pub fn forward_with(
        &self,
        pixels: &Tensor,
        lora: Option<&[BlockLora]>,
        mode: TapeMode,
    ) -> Result<(Tensor, Option<VisionTape>)> {
        self.check_lora(lora)?;
        let (x, embed_tape) = self.embed(pixels, mode.weights())?;
        self.forward_blocks(x, pixels.dim(0)?, embed_tape, lora, mode)
    }

    /// The stem: token rows `[B, T·D]` after patch embedding, class token, positions and
    /// pre_norm, one row per image. The image tower's frozen part before its first block
    /// (and so before any LoRA): for a deterministic transform it can be computed once per
    /// image and fed to [`forward_from_stem`](Self::forward_from_stem), which gives the
    /// same features as [`forward`](Self::forward) on the pixels.
    pub fn stem(&self, pixels: &Tensor) -> Result<Tensor> {
        let b = pixels.dim(0)?;
        let (x, _) = self.embed(pixels, false)?;
        Ok(x.reshape((b, self.config.tokens() * self.config.width))?)
    }

    /// [`forward_with`](Self::forward_with) from stems `[B, T·D]` ([`stem`](Self::stem))
    /// instead of pixels. The tape can serve input and LoRA cotangents only: weight
    /// gradients of the stem would need the pixels.
    pub fn forward_from_stem(
        &self,
        stem: &Tensor,
        lora: Option<&[BlockLora]>,
        mode: TapeMode,
    ) -> Result<(Tensor, Option<VisionTape>)> {
        if mode.weights() {
            bail!("weight gradients of the image tower need pixels, not stems");
        }
        self.check_lora(lora)?;
        let x = self.stem_tokens(stem)?;
        self.forward_blocks(x, stem.dim(0)?, None, lora, mode)
    }

    /// Stems `[B, T·D]` as token rows `[B·T, D]`, checked against the tower's shape.
    fn stem_tokens(&self, stem: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (b, row) = stem.dims2()?;
        if row != c.tokens() * c.width {
            bail!(
                "image stems have {row} values per image, expected {} tokens × width {}",
                c.tokens(),
                c.width
            );
        }
        Ok(stem
            .to_dtype(self.patch.dtype())?
            .reshape((b * c.tokens(), c.width))?)
    }

    /// The class token's rows `[B, D]` after the last block — before `final_norm` and
    /// the projection, which [`features_from_class_rows`](Self::features_from_class_rows)
    /// applies — from pixels `[B, 3, H, W]`, or from stems `[B, T·D]` when `from_stem`.
    /// No tape. Together the two give [`forward`](Self::forward)'s features bit for bit.
    pub fn class_rows(&self, input: &Tensor, from_stem: bool, lora: Option<&[BlockLora]>) -> Result<Tensor> {
        self.check_lora(lora)?;
        let x = if from_stem {
            self.stem_tokens(input)?
        } else {
            self.embed(input, false)?.0
        };
        Ok(self.run_blocks(x, input.dim(0)?, lora, TapeMode::None)?.0)
    }

    /// `final_norm` and the projection of class rows `[B, D]`
    /// ([`class_rows`](Self::class_rows)): the features `[B, E]`.
    pub fn features_from_class_rows(&self, cls: &Tensor) -> Result<Tensor> {
        matmul(&self.final_norm.forward(cls)?, &self.projection.t()?)
    }

    /// True when an image's class row ([`class_rows`](Self::class_rows)) has the same
    /// bits in a batch of any size, on the CPU in f32 — so that rows computed once can
    /// stand in for the rows of any later batch. Attention runs per image and
    /// LayerNorm per row; what could differ is the kernel gemm picks for a block's
    /// matmuls, which depends on the row count (at least one image's `T` tokens) only in
    /// the cases [`rows_compute_alike`] rules out. `lora_rank` adds the adapters'
    /// down (`D → r`) and up (`r → D`) projections.
    pub fn class_rows_are_batch_invariant(&self, lora_rank: Option<usize>) -> bool {
        let c = &self.config;
        let (d, t) = (c.width, c.tokens());
        let hidden = self
            .blocks
            .first()
            .map_or(4 * d, |b| b.fc1.weight.dim(0).unwrap_or(4 * d));
        let mut products = row_products(d, hidden).to_vec();
        if let Some(r) = lora_rank {
            products.extend([(r, d), (d, r)]);
        }
        // The patch embedding: one row per patch, g² per image.
        let patches = c.grid() * c.grid();
        let patch_embedding = (d, 3 * c.patch_size * c.patch_size);
        self.patch.device().is_cpu()
            && self.patch.dtype() == DType::F32
            && products.iter().all(|&(n, k)| rows_compute_alike(n, k, t))
            && rows_compute_alike(patch_embedding.0, patch_embedding.1, patches)
    }

    fn check_lora(&self, lora: Option<&[BlockLora]>) -> Result<()> {
        match lora {
            Some(l) if l.len() != self.blocks.len() => bail!(
                "vision LoRA: {} layer adapters for {} layers",
                l.len(),
                self.blocks.len()
            ),
            _ => Ok(()),
        }
    }

    /// The blocks, final_norm on the class token and the projection, from the stem's
    /// token rows `x` `[B·T, D]` of `b` images.
    fn forward_blocks(
        &self,
        x: Tensor,
        b: usize,
        embed_tape: Option<(Tensor, LayerNormTape)>,
        lora: Option<&[BlockLora]>,
        mode: TapeMode,
    ) -> Result<(Tensor, Option<VisionTape>)> {
        let keep_tape = mode.keeps_tape();
        let (cls, layers) = self.run_blocks(x, b, lora, mode)?;
        let (normed, tape) = if keep_tape {
            let (y, final_norm) = self.final_norm.forward_taped(&cls)?;
            let weights = embed_tape.map(|(patches, pre_norm)| VisionWeightTape {
                patches,
                pre_norm,
                normed: y.clone(),
            });
            (
                y,
                Some(VisionTape {
                    batch: b,
                    layers,
                    final_norm,
                    weights,
                }),
            )
        } else {
            (self.final_norm.forward(&cls)?, None)
        };
        Ok((matmul(&normed, &self.projection.t()?)?, tape))
    }

    /// The blocks on the stem's token rows `x` `[B·T, D]` of `b` images: the class
    /// token's rows `[B, D]` after the last block, and the blocks' tapes.
    fn run_blocks(
        &self,
        mut x: Tensor,
        b: usize,
        lora: Option<&[BlockLora]>,
        mode: TapeMode,
    ) -> Result<(Tensor, Vec<BlockTape>)> {
        let t = self.config.tokens();
        let shape = Shape {
            n: b,
            s: t,
            causal: false,
        };
        let mut layers = Vec::new();
        for (i, blk) in self.blocks.iter().enumerate() {
            // Without a tape, only the class token of the last block goes on.
            if i + 1 == self.blocks.len() && !mode.keeps_tape() {
                return Ok((blk.forward_first_rows(&x, shape, lora.map(|l| &l[i]))?, layers));
            }
            let out = blk.forward_with(&x, shape, None, lora.map(|l| &l[i]), mode)?;
            x = out.y;
            if let Some(tp) = out.tape {
                layers.push(tp);
            }
        }
        let cls = x.index_select(&first_positions(b, t, x.device())?, 0)?;
        Ok((cls, layers))
    }

    /// VJP for K feature cotangents `[K, B, E]`: per-layer LoRA gradients.
    pub fn backward(
        &self,
        tape: &VisionTape,
        d_features: &Tensor,
        lora: &[BlockLora],
    ) -> Result<Vec<BlockLoraGrad>> {
        Ok(self.backward_full(tape, d_features, Some(lora))?.lora)
    }

    /// VJP for K feature cotangents `[K, B, E]`: per-layer LoRA gradients (when LoRA is
    /// on) and, for a tape kept with [`TapeMode::Weights`], the weight gradients summed
    /// over K.
    pub fn backward_full(
        &self,
        tape: &VisionTape,
        d_features: &Tensor,
        lora: Option<&[BlockLora]>,
    ) -> Result<VisionBackward> {
        let (kk, b, e) = d_features.dims3()?;
        if b != tape.batch {
            bail!("vision backward: {b} cotangents for a batch of {}", tape.batch);
        }
        self.check_lora(lora)?;
        let d = self.config.width;
        let t = self.config.tokens();
        let d_normed = d_features
            .reshape((kk * b, e))?
            .matmul(&self.projection)?
            .reshape((kk, b, d))?;
        let d_cls = self.final_norm.backward(&tape.final_norm, &d_normed)?;
        let idx = Tensor::from_vec(
            (0..b).map(|i| (i * t) as u32).collect::<Vec<_>>(),
            b,
            d_features.device(),
        )?;
        let mut dy = Tensor::zeros((kk, b * t, d), d_features.dtype(), d_features.device())?
            .index_add(&idx, &d_cls, 1)?;
        let wt = tape.weights.as_ref();
        let mut grads = Vec::with_capacity(self.blocks.len());
        let mut block_grads = Vec::with_capacity(self.blocks.len());
        for (i, (blk, bt)) in self.blocks.iter().zip(&tape.layers).enumerate().rev() {
            let g = blk.backward(bt, &dy, None, lora.map(|l| &l[i]), i > 0 || wt.is_some())?;
            grads.push(g.lora);
            block_grads.extend(g.weights);
            if let Some(dx) = g.dx {
                dy = dx;
            }
        }
        grads.reverse();
        block_grads.reverse();
        let weights = match wt {
            Some(wt) => {
                if block_grads.len() != self.blocks.len() {
                    bail!("vision backward: the block tapes were not kept for weight gradients");
                }
                Some(self.embedding_grads(wt, d_features, &d_normed, &dy, block_grads, &tape.final_norm)?)
            }
            None => None,
        };
        Ok(VisionBackward { lora: grads, weights })
    }

    /// Weight gradients outside the blocks: projection and final_norm from the head,
    /// pre_norm, positions, class token and patch matrix from the first block's input
    /// cotangent `d_x0: [K, B·T, D]`.
    fn embedding_grads(
        &self,
        wt: &VisionWeightTape,
        d_features: &Tensor,
        d_normed: &Tensor,
        d_x0: &Tensor,
        blocks: Vec<BlockWeightGrad>,
        final_norm_tape: &LayerNormTape,
    ) -> Result<VisionWeightGrad> {
        let c = &self.config;
        let (t, d) = (c.tokens(), c.width);
        let b = d_x0.dim(1)? / t;
        let projection = sum_cotangents(d_features)?.t()?.matmul(&wt.normed)?;
        let final_norm = self.final_norm.param_grad(final_norm_tape, d_normed)?;
        // pre_norm's VJP is linear in the cotangent: sum over K first.
        let d_x0 = sum_cotangents(d_x0)?.unsqueeze(0)?;
        let pre_norm = self.pre_norm.param_grad(&wt.pre_norm, &d_x0)?;
        let d_embed = self.pre_norm.backward(&wt.pre_norm, &d_x0)?.reshape((b, t, d))?;
        let positional = d_embed.sum(0)?;
        let class_embedding = positional.get(0)?;
        let d_tokens = d_embed.narrow(1, 1, t - 1)?.reshape((b * (t - 1), d))?;
        let patch = d_tokens.t()?.matmul(&wt.patches)?;
        Ok(VisionWeightGrad {
            patch,
            class_embedding,
            positional,
            pre_norm,
            blocks,
            final_norm,
            projection,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::block::Lora;
    use crate::clip::model::tests::fixture_dir;
    use crate::clip::model::{Clip, LoadOptions};
    use crate::clip::ops::testutil::{bits, dot, fd_directional, max_abs_diff, rand_tensor};

    #[test]
    fn lora_gradients_through_the_image_tower_match_finite_differences() {
        let clip = Clip::load(&fixture_dir("hf"), &LoadOptions::default()).unwrap();
        let v = &clip.vision;
        let (w, r) = (v.config.width, 4);
        let lora: Vec<BlockLora> = (0..v.blocks.len() as u64)
            .map(|i| {
                let mk = |k: u64| {
                    Some(Lora {
                        a: rand_tensor(&[r, w], 10 * i + k, 0.05),
                        b: rand_tensor(&[w, r], 10 * i + k + 5, 0.05),
                        scale: 2.0,
                        dropout_mask: None,
                    })
                };
                BlockLora {
                    q: mk(1),
                    k: None,
                    v: mk(2),
                    o: None,
                }
            })
            .collect();
        let pixels = rand_tensor(&[2, 3, 224, 224], 7, 1.5);
        let (_, tape) = v.forward(&pixels, Some(&lora), true).unwrap();
        let d_feat = rand_tensor(&[2, 2, 96], 8, 1.0);
        let grads = v.backward(tape.as_ref().unwrap(), &d_feat, &lora).unwrap();
        // Perturb layer 0's value adapter B (the deepest path through the tower).
        let dir = rand_tensor(&[w, r], 9, 1.0);
        let f = |b: &Tensor| {
            let mut l = lora.clone();
            l[0].v.as_mut().unwrap().b = b.to_dtype(DType::F32).unwrap();
            v.forward(&pixels, Some(&l), false)
                .unwrap()
                .0
                .to_dtype(DType::F64)
                .unwrap()
        };
        let base = &lora[0].v.as_ref().unwrap().b;
        let fd = fd_directional(
            &f,
            base,
            &dir,
            &d_feat.get(1).unwrap().to_dtype(DType::F64).unwrap(),
            1e-2,
        );
        let an = dot(&grads[0].v.as_ref().unwrap().b.get(1).unwrap(), &dir);
        assert!(
            (fd - an).abs() < 2e-3 * (1.0 + an.abs()),
            "fd {fd} vs analytic {an}"
        );
        assert!(grads[0].k.is_none() && grads[2].q.is_some());
        // A weight tape changes nothing about the LoRA gradients and adds every weight's.
        let (_, wt) = v.forward_with(&pixels, Some(&lora), TapeMode::Weights).unwrap();
        let full = v
            .backward_full(wt.as_ref().unwrap(), &d_feat, Some(&lora))
            .unwrap();
        let b0 = |g: &[BlockLoraGrad]| g[0].v.as_ref().unwrap().b.clone();
        assert!(max_abs_diff(&b0(&full.lora), &b0(&grads)) < 1e-6);
        let w = full.weights.unwrap();
        assert_eq!(w.patch.dims(), v.patch.dims());
        assert_eq!(w.positional.dims(), v.positional.dims());
        assert_eq!(w.blocks.len(), v.blocks.len());
        assert!(v
            .backward_full(tape.as_ref().unwrap(), &d_feat, None)
            .unwrap()
            .weights
            .is_none());
    }

    /// Stems computed once, in another batch than the forward's, give the pixels' exact
    /// features and LoRA gradients (the shortcut behind `fed::stems`).
    #[test]
    fn the_forward_from_cached_stems_equals_the_forward_from_pixels() {
        let clip = Clip::load(&fixture_dir("hf"), &LoadOptions::default()).unwrap();
        let v = &clip.vision;
        let (w, r) = (v.config.width, 2);
        let lora: Vec<BlockLora> = (0..v.blocks.len() as u64)
            .map(|i| BlockLora {
                q: Some(Lora {
                    a: rand_tensor(&[r, w], 3 * i + 1, 0.1),
                    b: rand_tensor(&[w, r], 3 * i + 2, 0.1),
                    scale: 2.0,
                    dropout_mask: None,
                }),
                k: None,
                v: None,
                o: None,
            })
            .collect();
        let pixels = rand_tensor(&[3, 3, 224, 224], 11, 1.5);
        // Stems of all three images at once, then the forward on images 2 and 0.
        let stems = v.stem(&pixels).unwrap();
        let pick = Tensor::new(&[2u32, 0], pixels.device()).unwrap();
        let (live, live_tape) = v
            .forward(&pixels.index_select(&pick, 0).unwrap(), Some(&lora), true)
            .unwrap();
        let (cached, cached_tape) = v
            .forward_from_stem(
                &stems.index_select(&pick, 0).unwrap(),
                Some(&lora),
                TapeMode::Inputs,
            )
            .unwrap();
        assert_eq!(bits(&live), bits(&cached));
        let d_feat = rand_tensor(&[2, 2, 96], 12, 1.0);
        let g_live = v.backward(live_tape.as_ref().unwrap(), &d_feat, &lora).unwrap();
        let g_cached = v.backward(cached_tape.as_ref().unwrap(), &d_feat, &lora).unwrap();
        for (a, b) in g_live.iter().zip(&g_cached) {
            let (a, b) = (a.q.as_ref().unwrap(), b.q.as_ref().unwrap());
            assert_eq!(bits(&a.a), bits(&b.a));
            assert_eq!(bits(&a.b), bits(&b.b));
        }
        assert!(v
            .forward_from_stem(&stems, Some(&lora), TapeMode::Weights)
            .is_err());
        assert!(v
            .forward_from_stem(&pixels.flatten_from(1).unwrap(), None, TapeMode::None)
            .is_err());
    }

    /// Without a tape the last block runs for the class token alone
    /// ([`Block::forward_first_rows`]); the features keep the bits of the taped forward,
    /// which runs every block in full, with and without LoRA and from stems.
    #[test]
    fn the_untaped_forward_keeps_the_full_towers_bits() {
        let clip = Clip::load(&fixture_dir("hf"), &LoadOptions::default()).unwrap();
        let v = &clip.vision;
        let w = v.config.width;
        let lora: Vec<BlockLora> = (0..v.blocks.len() as u64)
            .map(|i| BlockLora {
                q: Some(Lora {
                    a: rand_tensor(&[4, w], 5 * i + 1, 0.1),
                    b: rand_tensor(&[w, 4], 5 * i + 2, 0.1),
                    scale: 2.0,
                    dropout_mask: None,
                }),
                v: Some(Lora {
                    a: rand_tensor(&[4, w], 5 * i + 3, 0.1),
                    b: rand_tensor(&[w, 4], 5 * i + 4, 0.1),
                    scale: 2.0,
                    dropout_mask: None,
                }),
                ..BlockLora::default()
            })
            .collect();
        let pixels = rand_tensor(&[5, 3, 224, 224], 21, 1.5);
        let stems = v.stem(&pixels).unwrap();
        for adapters in [None, Some(&lora[..])] {
            let (full, tape) = v.forward(&pixels, adapters, true).unwrap();
            assert!(tape.is_some());
            let (untaped, _) = v.forward(&pixels, adapters, false).unwrap();
            assert_eq!(bits(&untaped), bits(&full));
            let (from_stem, _) = v.forward_from_stem(&stems, adapters, TapeMode::None).unwrap();
            assert_eq!(bits(&from_stem), bits(&full));
            let rows = v.class_rows(&stems, true, adapters).unwrap();
            assert_eq!(bits(&v.features_from_class_rows(&rows).unwrap()), bits(&full));
        }
    }
}

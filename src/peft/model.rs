//! One interface over the three PEFT kinds: logits for a batch from a parameter set, and
//! the VJP from logit cotangents back to per-cotangent parameter gradients.
//!
//! | kind | trained | image side | text side |
//! | --- | --- | --- | --- |
//! | prompt | context vectors | cached frozen features | text tower on the learned prompts |
//! | LoRA | A/B on q, k, v of the vision tower (default), the text tower, or both | vision tower with adapters, live (else cached) | fixed "a photo of a {}." features, or the text tower with adapters |
//! | adapter | gated MLP on image features | cached features through the adapter | fixed template |

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::adapter::{self, AdapterTape};
use super::lora::LoraSpec;
use super::params::ParamSet;
use super::prompt::PromptLearner;
use crate::clip::block::BlockLora;
use crate::clip::head::{logits, logits_backward};
use crate::clip::model::l2_normalize;
use crate::clip::ops::TapeMode;
use crate::clip::text::{PromptBatch, TextPath, TextTape};
use crate::clip::vision::VisionTape;
use crate::clip::Clip;

/// Name of the prompt context parameter.
pub const CTX: &str = "prompt.ctx";
/// Prefix of vision LoRA parameters.
pub const LORA_VISION: &str = "lora.vision";
/// Prefix of text LoRA parameters.
pub const LORA_TEXT: &str = "lora.text";

/// The class prompts the text-side LoRA runs through the text tower.
#[derive(Debug, Clone)]
pub struct TextLora {
    /// Token embeddings and EOT positions of "a photo of a {class}." for every class.
    pub prompts: PromptBatch,
}

/// The PEFT kind with its frozen, per-dataset state.
#[derive(Debug, Clone)]
pub enum Peft {
    /// CoOp context vectors.
    Prompt(PromptLearner),
    /// LoRA on the vision tower, the text tower, or both.
    Lora {
        /// Hyper-parameters.
        spec: LoraSpec,
        /// Adapters on the vision tower.
        vision: bool,
        /// Adapters on the text tower (with its class prompts), else fixed text features.
        text_lora: Option<TextLora>,
        /// Normalized fixed class text features (used when the text tower has no LoRA).
        text: Tensor,
    },
    /// The gated image-feature adapter; fixed normalized text features `[C, E]`.
    Adapter {
        /// Normalized class text features.
        text: Tensor,
    },
}

/// What a batch provides: cached image features or pixels for the live image tower.
#[derive(Debug, Clone)]
pub enum Inputs {
    /// Unnormalized frozen image features `[B, E]`.
    Features(Tensor),
    /// Normalized pixels `[B, 3, H, W]`.
    Pixels(Tensor),
    /// The image tower's cached stems `[B, T·D]` ([`crate::clip::vision::VisionEncoder::stem`]
    /// of the pixels): the same features as the pixels, without recomputing the frozen
    /// patch embedding.
    Stems(Tensor),
}

impl Inputs {
    /// The batch's tensor, whatever it holds.
    pub fn tensor(&self) -> &Tensor {
        match self {
            Inputs::Features(t) | Inputs::Pixels(t) | Inputs::Stems(t) => t,
        }
    }

    /// Images in the batch.
    pub fn batch_size(&self) -> Result<usize> {
        Ok(self.tensor().dim(0)?)
    }
}

/// What [`Peft::backward`] needs from the forward.
pub struct PeftTape {
    image: Tensor,
    text: Tensor,
    image_side: Option<ImageTape>,
    text_side: Option<(TextTape, Option<Vec<BlockLora>>)>,
}

enum ImageTape {
    Lora(VisionTape, Vec<BlockLora>),
    Adapter(AdapterTape),
}

impl Peft {
    /// Which kind of fine-tuning this is.
    pub fn kind(&self) -> super::PeftKind {
        match self {
            Peft::Prompt(_) => super::PeftKind::Prompt,
            Peft::Lora { .. } => super::PeftKind::Lora,
            Peft::Adapter { .. } => super::PeftKind::Adapter,
        }
    }

    /// Whether batches must carry pixels (the image tower is trained).
    pub fn needs_pixels(&self) -> bool {
        matches!(self, Peft::Lora { vision: true, .. })
    }

    /// Fresh parameters from `seed`: prompt context N(0, 0.02²) (or word init), LoRA A
    /// Kaiming-uniform and B zero, adapter as `nn.Linear`.
    pub fn init(&self, clip: &Clip, seed: u64) -> Result<ParamSet> {
        let dev = clip.device();
        match self {
            Peft::Prompt(l) => {
                let ctx = match &l.word_init {
                    Some(w) => w.clone(),
                    None => crate::clip::random::normal(&l.ctx_shape()?, seed, 0.02, dev)?,
                };
                Ok(ParamSet::from_pairs([(CTX.to_string(), ctx)]))
            }
            Peft::Lora {
                spec,
                vision,
                text_lora,
                ..
            } => {
                let mut set = ParamSet::default();
                if *vision {
                    let v = &clip.config.vision;
                    set.tensors
                        .extend(spec.init(LORA_VISION, v.layers, v.width, seed, dev)?.tensors);
                }
                if text_lora.is_some() {
                    let t = &clip.config.text;
                    set.tensors.extend(
                        spec.init(LORA_TEXT, t.layers, t.width, seed ^ 0x7E47, dev)?
                            .tensors,
                    );
                }
                if set.tensors.is_empty() {
                    bail!("LoRA needs the vision tower, the text tower, or both");
                }
                Ok(set)
            }
            Peft::Adapter { .. } => adapter::init(clip.config.embed_dim, seed, dev),
        }
    }

    /// Text features through the text tower with LoRA (rows of the truncated path).
    fn lora_text(
        &self,
        clip: &Clip,
        params: &ParamSet,
        tl: &TextLora,
        dropout_seed: Option<u64>,
        keep_tape: bool,
    ) -> Result<(Tensor, Option<TextTape>, Vec<BlockLora>)> {
        let Peft::Lora { spec, .. } = self else {
            bail!("not a LoRA PEFT")
        };
        let t = &clip.config.text;
        let s = tl.prompts.eot.iter().max().map_or(0, |m| m + 1);
        let rows = tl.prompts.len() * s;
        let lora = spec.block_loras(
            params,
            LORA_TEXT,
            t.layers,
            rows,
            dropout_seed.map(|d| d ^ 0x7E47),
        )?;
        let (f, tape) = clip
            .text
            .forward(&tl.prompts, TextPath::Truncated, Some(&lora), keep_tape)?;
        Ok((f, tape, lora))
    }

    /// Normalized class text features for `params` (constant for fixed text sides).
    pub fn text_features(&self, clip: &Clip, params: &ParamSet) -> Result<Tensor> {
        match self {
            Peft::Prompt(l) => l2_normalize(&l.text_features(clip, params.get(CTX)?, false)?.0),
            Peft::Lora {
                text_lora: Some(tl), ..
            } => l2_normalize(&self.lora_text(clip, params, tl, None, false)?.0),
            Peft::Lora { text, .. } | Peft::Adapter { text } => Ok(text.clone()),
        }
    }

    /// Norms of the unnormalized class text features where the text side is learned
    /// (prompt, text LoRA): the only class vectors of CLIP's head whose length can move
    /// (Fed-GraB's prior analyzer reads them); None for a fixed text side.
    pub fn learned_text_norms(&self, clip: &Clip, params: &ParamSet) -> Result<Option<Vec<f32>>> {
        let raw = match self {
            Peft::Prompt(l) => l.text_features(clip, params.get(CTX)?, false)?.0,
            Peft::Lora {
                text_lora: Some(tl), ..
            } => self.lora_text(clip, params, tl, None, false)?.0,
            _ => return Ok(None),
        };
        let norms = raw
            .to_dtype(candle_core::DType::F32)?
            .sqr()?
            .sum(1)?
            .sqrt()?
            .to_vec1::<f32>()?;
        Ok(Some(norms))
    }

    /// Logits `[B, C]` with class text features already computed (evaluation).
    pub fn logits_with_text(
        &self,
        clip: &Clip,
        params: &ParamSet,
        inputs: &Inputs,
        text: &Tensor,
    ) -> Result<Tensor> {
        let image = self.image_features(clip, params, inputs, None, false)?.0;
        logits(&image, text, clip.logit_scale_exp())
    }

    /// Whether [`class_rows`](Self::class_rows) applies: LoRA trains the image tower,
    /// and its class rows have the same bits in a batch of any size
    /// ([`crate::clip::vision::VisionEncoder::class_rows_are_batch_invariant`]), so rows
    /// computed once for a test image stand in exactly for a later batch's.
    pub fn reuses_class_rows(&self, clip: &Clip) -> bool {
        match self {
            Peft::Lora {
                spec, vision: true, ..
            } => clip.vision.class_rows_are_batch_invariant(Some(spec.rank)),
            _ => false,
        }
    }

    /// The image tower's class-token rows `[B, D]` for pixel or stem `inputs` under
    /// LoRA `params` (no dropout, no tape): [`logits_from_class_rows`](Self::logits_from_class_rows)
    /// on them gives [`logits_with_text`](Self::logits_with_text) bit for bit.
    pub fn class_rows(&self, clip: &Clip, params: &ParamSet, inputs: &Inputs) -> Result<Tensor> {
        let Peft::Lora {
            spec, vision: true, ..
        } = self
        else {
            bail!("class rows exist for LoRA on the image tower only");
        };
        let v = &clip.config.vision;
        let rows = inputs.batch_size()? * v.tokens();
        let lora = spec.block_loras(params, LORA_VISION, v.layers, rows, None)?;
        match inputs {
            Inputs::Stems(stems) => clip.vision.class_rows(stems, true, Some(&lora)),
            Inputs::Pixels(px) => clip.vision.class_rows(px, false, Some(&lora)),
            Inputs::Features(_) => {
                bail!("LoRA on the vision tower trains the image tower: batches must carry pixels")
            }
        }
    }

    /// Logits `[B, C]` from class rows `[B, D]` ([`class_rows`](Self::class_rows)) and
    /// class text features `text`.
    pub fn logits_from_class_rows(&self, clip: &Clip, rows: &Tensor, text: &Tensor) -> Result<Tensor> {
        let image = clip.vision.features_from_class_rows(rows)?;
        logits(&image, text, clip.logit_scale_exp())
    }

    fn image_features(
        &self,
        clip: &Clip,
        params: &ParamSet,
        inputs: &Inputs,
        dropout_seed: Option<u64>,
        keep_tape: bool,
    ) -> Result<(Tensor, Option<ImageTape>)> {
        match (self, inputs) {
            (
                Peft::Lora {
                    spec, vision: true, ..
                },
                inputs @ (Inputs::Pixels(_) | Inputs::Stems(_)),
            ) => {
                let v = &clip.config.vision;
                let rows = inputs.batch_size()? * v.tokens();
                let lora = spec.block_loras(params, LORA_VISION, v.layers, rows, dropout_seed)?;
                let mode = TapeMode::frozen(keep_tape);
                let (f, tape) = match inputs {
                    Inputs::Stems(stems) => clip.vision.forward_from_stem(stems, Some(&lora), mode)?,
                    _ => clip.vision.forward_with(inputs.tensor(), Some(&lora), mode)?,
                };
                Ok((f, tape.map(|t| ImageTape::Lora(t, lora))))
            }
            (Peft::Lora { vision: true, .. }, Inputs::Features(_)) => {
                bail!("LoRA on the vision tower trains the image tower: batches must carry pixels")
            }
            (_, Inputs::Pixels(px)) => {
                let f = clip.encode_images(px)?;
                self.image_features(clip, params, &Inputs::Features(f), dropout_seed, keep_tape)
            }
            (_, Inputs::Stems(stems)) => {
                let f = clip.vision.forward_from_stem(stems, None, TapeMode::None)?.0;
                self.image_features(clip, params, &Inputs::Features(f), dropout_seed, keep_tape)
            }
            (Peft::Adapter { .. }, Inputs::Features(f)) => {
                let (out, tape) = adapter::forward(params, f)?;
                Ok((out, keep_tape.then_some(ImageTape::Adapter(tape))))
            }
            (Peft::Prompt(_) | Peft::Lora { .. }, Inputs::Features(f)) => Ok((f.clone(), None)),
        }
    }

    /// Training forward: logits `[B, C]` and a tape. `dropout_seed` draws LoRA dropout
    /// masks (None: no dropout).
    pub fn forward(
        &self,
        clip: &Clip,
        params: &ParamSet,
        inputs: &Inputs,
        dropout_seed: Option<u64>,
    ) -> Result<(Tensor, PeftTape)> {
        let (image, image_side) = self.image_features(clip, params, inputs, dropout_seed, true)?;
        let (text, text_side) = match self {
            Peft::Prompt(l) => {
                let (t, tape) = l.text_features(clip, params.get(CTX)?, true)?;
                (t, Some((tape.expect("tape requested"), None)))
            }
            Peft::Lora {
                text_lora: Some(tl), ..
            } => {
                let (t, tape, lora) = self.lora_text(clip, params, tl, dropout_seed, true)?;
                (t, Some((tape.expect("tape requested"), Some(lora))))
            }
            Peft::Lora { text, .. } | Peft::Adapter { text } => (text.clone(), None),
        };
        let l = logits(&image, &text, clip.logit_scale_exp())?;
        Ok((
            l,
            PeftTape {
                image,
                text,
                image_side,
                text_side,
            },
        ))
    }

    /// Per-cotangent parameter gradients for logit cotangents `[K, B, C]`.
    pub fn backward(
        &self,
        clip: &Clip,
        params: &ParamSet,
        tape: &PeftTape,
        d_logits: &Tensor,
    ) -> Result<Vec<ParamSet>> {
        let k = d_logits.dim(0)?;
        let g = logits_backward(&tape.image, &tape.text, clip.logit_scale_exp(), d_logits)?;
        let mut sets = vec![ParamSet::default(); k];
        let mut merge = |parts: Vec<ParamSet>| {
            for (set, part) in sets.iter_mut().zip(parts) {
                set.tensors.extend(part.tensors);
            }
        };
        match (self, &tape.image_side) {
            (Peft::Lora { spec, .. }, Some(ImageTape::Lora(vt, lora))) => {
                let grads = clip.vision.backward(vt, &g.image, lora)?;
                merge(spec.grads_to_params(&grads, LORA_VISION, k)?);
            }
            (Peft::Adapter { .. }, Some(ImageTape::Adapter(at))) => {
                merge(adapter::backward(params, at, &g.image)?)
            }
            (_, None) => {}
            _ => bail!("tape does not belong to this PEFT kind"),
        }
        match (self, &tape.text_side) {
            (Peft::Prompt(l), Some((tt, None))) => {
                let grad = l.ctx_grad(clip, tt, &g.text)?;
                merge(
                    (0..k)
                        .map(|i| Ok(ParamSet::from_pairs([(CTX.to_string(), grad.get(i)?)])))
                        .collect::<Result<_>>()?,
                );
            }
            (Peft::Lora { spec, .. }, Some((tt, Some(lora)))) => {
                let (_, grads) = clip.text.backward(tt, &g.text, Some(lora))?;
                merge(spec.grads_to_params(&grads, LORA_TEXT, k)?);
            }
            (_, None) => {}
            _ => bail!("tape does not belong to this PEFT kind"),
        }
        Ok(sets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::model::tests::fixture_dir;
    use crate::clip::ops::testutil::{bits, dot, rand_tensor};
    use crate::clip::tokenizer::ClipTokenizer;
    use crate::clip::zeroshot::ZeroShotHead;
    use crate::clip::LoadOptions;
    use candle_core::DType;

    fn classes() -> Vec<String> {
        ["apple", "bear", "lawn_mower", "sweet pepper", "tank"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn build(clip: &Clip, kind: &str) -> Peft {
        let tok = ClipTokenizer::from_dir(&fixture_dir("hf")).unwrap();
        let text = ZeroShotHead::build(clip, &tok, &classes(), "a photo of a {}.")
            .unwrap()
            .text_features
            .to_dtype(clip.text.projection.dtype())
            .unwrap();
        match kind {
            "prompt" => Peft::Prompt(PromptLearner::new(clip, &tok, &classes(), 4, false).unwrap()),
            "lora" | "lora-text" | "lora-both" => {
                let prompts: Vec<String> = classes()
                    .iter()
                    .map(|c| format!("a photo of a {}.", c.replace('_', " ")))
                    .collect();
                let toks = tok.encode_batch(&prompts).unwrap();
                let ids: Vec<Vec<u32>> = toks.iter().map(|t| t.ids.clone()).collect();
                let text_lora = (kind != "lora").then(|| TextLora {
                    prompts: PromptBatch {
                        embeddings: clip.text.embed_tokens(&ids).unwrap(),
                        eot: toks.iter().map(|t| t.eot).collect(),
                    },
                });
                Peft::Lora {
                    spec: LoraSpec {
                        dropout: 0.0,
                        ..LoraSpec::default()
                    },
                    vision: kind != "lora-text",
                    text_lora,
                    text,
                }
            }
            _ => Peft::Adapter { text },
        }
    }

    /// Class rows computed in one batch, then finished in other batches (one image, a
    /// pair, a shuffled triple), give the plain LoRA logits' very bits, from pixels and
    /// from stems: what lets the PM's global branch reuse the GM pass's rows.
    #[test]
    fn class_rows_of_one_batch_give_any_batch_its_logits() {
        let clip = Clip::load(&fixture_dir("hf"), &LoadOptions::default()).unwrap();
        let peft = build(&clip, "lora");
        assert!(peft.reuses_class_rows(&clip));
        assert!(!build(&clip, "adapter").reuses_class_rows(&clip));
        let params = peft
            .init(&clip, 5)
            .unwrap()
            .map(|n, t| {
                Ok(if n.ends_with(".b") {
                    rand_tensor(t.dims(), 9, 0.05)
                } else {
                    t.clone()
                })
            })
            .unwrap();
        let text = match &peft {
            Peft::Lora { text, .. } => text.clone(),
            _ => unreachable!(),
        };
        let pixels = rand_tensor(&[5, 3, 224, 224], 4, 1.5);
        let stems = clip.vision.stem(&pixels).unwrap();
        for all in [Inputs::Pixels(pixels.clone()), Inputs::Stems(stems.clone())] {
            let rows = peft.class_rows(&clip, &params, &all).unwrap();
            for pick in [vec![3u32], vec![1, 2], vec![4, 0, 2]] {
                let ix = Tensor::new(pick.as_slice(), &candle_core::Device::Cpu).unwrap();
                let part = match &all {
                    Inputs::Pixels(p) => Inputs::Pixels(p.index_select(&ix, 0).unwrap()),
                    _ => Inputs::Stems(stems.index_select(&ix, 0).unwrap()),
                };
                let plain = peft.logits_with_text(&clip, &params, &part, &text).unwrap();
                let reused = peft
                    .logits_from_class_rows(&clip, &rows.index_select(&ix, 0).unwrap(), &text)
                    .unwrap();
                assert_eq!(bits(&plain), bits(&reused), "{pick:?}");
            }
        }
    }

    /// For every PEFT kind, the explicit backward through head, encoders and adapters
    /// matches a central finite difference computed with an f64 copy of the model.
    #[test]
    fn parameter_gradients_match_finite_differences_for_every_kind() {
        let clip = Clip::load(&fixture_dir("hf"), &LoadOptions::default()).unwrap();
        let clip64 = Clip::load(
            &fixture_dir("hf"),
            &LoadOptions {
                dtype: DType::F64,
                ..LoadOptions::default()
            },
        )
        .unwrap();
        let pixels = rand_tensor(&[2, 3, 224, 224], 3, 1.5);
        for kind in ["prompt", "lora", "lora-text", "lora-both", "adapter"] {
            let peft = build(&clip, kind);
            let peft64 = build(&clip64, kind);
            let mut params = peft.init(&clip, 11).unwrap();
            if kind.starts_with("lora") {
                // B = 0 at init makes A's gradient vanish; use random B to test both.
                params = params
                    .map(|n, t| {
                        if n.ends_with(".b") {
                            Ok(rand_tensor(t.dims(), 5, 0.05))
                        } else {
                            Ok(t.clone())
                        }
                    })
                    .unwrap();
            }
            let inputs = if peft.needs_pixels() {
                Inputs::Pixels(pixels.clone())
            } else {
                Inputs::Features(clip.encode_images(&pixels).unwrap())
            };
            let inputs64 = match &inputs {
                Inputs::Pixels(p) => Inputs::Pixels(p.to_dtype(DType::F64).unwrap()),
                Inputs::Features(f) => Inputs::Features(f.to_dtype(DType::F64).unwrap()),
                Inputs::Stems(s) => Inputs::Stems(s.to_dtype(DType::F64).unwrap()),
            };
            let d_logits = rand_tensor(&[2, 2, 5], 7, 1.0);
            let (_, tape) = peft.forward(&clip, &params, &inputs, None).unwrap();
            let grads = peft.backward(&clip, &params, &tape, &d_logits).unwrap();
            let dir = params
                .map(|n, t| Ok(rand_tensor(t.dims(), n.len() as u64 + 13, 1.0)))
                .unwrap();
            let w = d_logits.get(1).unwrap().to_dtype(DType::F64).unwrap();
            let eps = 1e-4;
            let at = |sign: f64| {
                let p = params
                    .zip_with(&dir, |p, d| {
                        Ok((p.to_dtype(DType::F64)? + (d.to_dtype(DType::F64)? * (sign * eps))?)?)
                    })
                    .unwrap();
                let text = peft64.text_features(&clip64, &p).unwrap();
                let l = peft64.logits_with_text(&clip64, &p, &inputs64, &text).unwrap();
                dot(&l, &w)
            };
            let fd = (at(1.0) - at(-1.0)) / (2.0 * eps);
            let an: f64 = grads[1]
                .tensors
                .iter()
                .map(|(n, g)| dot(g, dir.get(n).unwrap()))
                .sum();
            assert!(
                (fd - an).abs() < 1e-3 * (1.0 + an.abs()),
                "{kind}: fd {fd} vs analytic {an}"
            );
        }
    }
}

//! CoOp-style prompt learner: n_ctx learnable context vectors replace the embeddings of
//! placeholder tokens in "X X … X {class}." (class token at the end), shared by all
//! classes (the reference's setting) or one set per class (CSC).
//!
//! With shared context, every prompt starts with the same 1 + n_ctx embeddings, so the
//! text encoder's shared-prefix path computes them once; the context gradient is then the
//! prefix cotangent. Class-specific context uses the truncated path.

use anyhow::{bail, Result};
use candle_core::{IndexOp, Tensor};

use crate::clip::text::{PromptBatch, TextGrad, TextPath, TextTape};
use crate::clip::tokenizer::ClipTokenizer;
use crate::clip::zeroshot::render_prompt;
use crate::clip::Clip;

/// The frozen part of a prompt learner: tokenized class prompts and their embeddings.
#[derive(Debug, Clone)]
pub struct PromptLearner {
    /// Context vectors per prompt.
    pub n_ctx: usize,
    /// One set of context vectors per class instead of one shared set.
    pub class_specific: bool,
    /// Token embeddings of "X … X {class}." `[C, S, D]` up to the longest EOT (S = its
    /// position + 1), positions 1..=n_ctx to be replaced.
    token_embeddings: Tensor,
    /// EOT position per class.
    eot: Vec<usize>,
    /// Context initialized from words (CoOp's `CTX_INIT`) instead of N(0, 0.02²).
    pub word_init: Option<Tensor>,
}

impl PromptLearner {
    /// Tokenizes "X X … X {class}." for every class and embeds the tokens.
    pub fn new(
        clip: &Clip,
        tokenizer: &ClipTokenizer,
        classes: &[String],
        n_ctx: usize,
        class_specific: bool,
    ) -> Result<Self> {
        if n_ctx == 0 {
            bail!("prompt learner: n_ctx must be at least 1");
        }
        let placeholder = vec!["X"; n_ctx].join(" ");
        let prompts = classes
            .iter()
            .map(|c| render_prompt(&format!("{placeholder} {{}}."), c))
            .collect::<Result<Vec<_>>>()?;
        let toks = tokenizer.encode_batch(&prompts)?;
        let x_id = tokenizer.encode_batch(&["X".to_string()])?[0].ids[1];
        for (t, p) in toks.iter().zip(&prompts) {
            if t.ids[1..=n_ctx].iter().any(|&id| id != x_id) {
                bail!("prompt `{p}`: the {n_ctx} placeholders did not tokenize to single tokens");
            }
            if t.eot <= n_ctx + 1 {
                bail!("prompt `{p}` was truncated into its context");
            }
        }
        // Positions after the longest EOT reach no feature (the causal mask), and the
        // learner's paths never compute them: keep up to the longest EOT only.
        let len = toks.iter().map(|t| t.eot + 1).max().unwrap_or(0);
        let ids: Vec<Vec<u32>> = toks.iter().map(|t| t.ids[..len].to_vec()).collect();
        Ok(PromptLearner {
            n_ctx,
            class_specific,
            token_embeddings: clip.text.embed_tokens(&ids)?,
            eot: toks.iter().map(|t| t.eot).collect(),
            word_init: None,
        })
    }

    /// Initializes the context from the token embeddings of `words` (e.g. "a photo of a"),
    /// as CoOp's `CTX_INIT`: the words must tokenize to exactly n_ctx tokens. With
    /// class-specific context every class starts from the same words.
    pub fn with_word_init(mut self, clip: &Clip, tokenizer: &ClipTokenizer, words: &str) -> Result<Self> {
        let t = tokenizer.encode_prompt(&words.replace('_', " "))?;
        let n = t.eot - 1;
        if n != self.n_ctx {
            bail!(
                "--ctx-init `{words}` is {n} tokens; the prompt has n_ctx = {} context vectors",
                self.n_ctx
            );
        }
        let emb = clip.text.embed_tokens(&[t.ids])?.squeeze(0)?.narrow(0, 1, n)?;
        let init = if self.class_specific {
            emb.unsqueeze(0)?.repeat((self.classes(), 1, 1))?
        } else {
            emb
        };
        self.word_init = Some(init);
        Ok(self)
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.eot.len()
    }

    /// Shape of the context parameter: `[n_ctx, D]` shared or `[C, n_ctx, D]` per class.
    pub fn ctx_shape(&self) -> Result<Vec<usize>> {
        let d = self.token_embeddings.dim(2)?;
        Ok(if self.class_specific {
            vec![self.classes(), self.n_ctx, d]
        } else {
            vec![self.n_ctx, d]
        })
    }

    /// The prompt batch with `ctx` in place of the placeholders.
    pub fn batch(&self, ctx: &Tensor) -> Result<PromptBatch> {
        if ctx.dims() != self.ctx_shape()?.as_slice() {
            bail!(
                "context has shape {:?}, expected {:?}",
                ctx.dims(),
                self.ctx_shape()?
            );
        }
        let (c, s, _) = self.token_embeddings.dims3()?;
        let ctx_rows = if self.class_specific {
            ctx.to_dtype(self.token_embeddings.dtype())?
        } else {
            ctx.to_dtype(self.token_embeddings.dtype())?
                .unsqueeze(0)?
                .repeat((c, 1, 1))?
        };
        let k = self.n_ctx;
        let emb = Tensor::cat(
            &[
                &self.token_embeddings.narrow(1, 0, 1)?,
                &ctx_rows,
                &self.token_embeddings.narrow(1, 1 + k, s - 1 - k)?,
            ],
            1,
        )?;
        Ok(PromptBatch {
            embeddings: emb,
            eot: self.eot.clone(),
        })
    }

    /// The exact fast path for this learner.
    pub fn path(&self) -> TextPath {
        if self.class_specific {
            TextPath::SharedPrefix(1)
        } else {
            TextPath::SharedPrefix(1 + self.n_ctx)
        }
    }

    /// Unnormalized text features `[C, E]` for context `ctx`, with a tape when asked.
    pub fn text_features(
        &self,
        clip: &Clip,
        ctx: &Tensor,
        keep_tape: bool,
    ) -> Result<(Tensor, Option<TextTape>)> {
        clip.text.forward(&self.batch(ctx)?, self.path(), None, keep_tape)
    }

    /// Context gradient for K feature cotangents `[K, C, E]`: `[K, n_ctx, D]` shared, or
    /// `[K, C, n_ctx, D]` class-specific.
    pub fn ctx_grad(&self, clip: &Clip, tape: &TextTape, d_features: &Tensor) -> Result<Tensor> {
        if !self.class_specific {
            return clip
                .text
                .shared_positions_backward(tape, d_features, 1, self.n_ctx);
        }
        let (grad, _): (TextGrad, _) = clip.text.backward(tape, d_features, None)?;
        let start = 1 - grad.body_start;
        Ok(grad
            .body
            .i((.., .., start..start + self.n_ctx, ..))?
            .contiguous()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::model::tests::fixture_dir;
    use crate::clip::ops::testutil::{max_abs_diff, rand_tensor};
    use crate::clip::LoadOptions;

    /// Class-specific context with every class holding the same vectors is the shared
    /// learner: same features, and the shared gradient is the sum of the per-class ones.
    #[test]
    fn class_specific_context_generalizes_the_shared_one() {
        let clip = Clip::load(&fixture_dir("hf"), &LoadOptions::default()).unwrap();
        let tok = ClipTokenizer::from_dir(&fixture_dir("hf")).unwrap();
        let classes: Vec<String> = ["apple", "aquarium_fish", "lawn mower", "sweet pepper"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let shared = PromptLearner::new(&clip, &tok, &classes, 4, false).unwrap();
        let csc = PromptLearner::new(&clip, &tok, &classes, 4, true).unwrap();
        let ctx = rand_tensor(&[4, 64], 1, 0.02);
        let ctx_csc = ctx.unsqueeze(0).unwrap().repeat((4, 1, 1)).unwrap();
        let (fs, ts) = shared.text_features(&clip, &ctx, true).unwrap();
        let (fc, tc) = csc.text_features(&clip, &ctx_csc, true).unwrap();
        assert!(max_abs_diff(&fs, &fc) < 1e-5);
        let d = rand_tensor(&[2, 4, 96], 2, 1.0);
        let gs = shared.ctx_grad(&clip, ts.as_ref().unwrap(), &d).unwrap();
        let gc = csc.ctx_grad(&clip, tc.as_ref().unwrap(), &d).unwrap();
        assert_eq!(gc.dims(), &[2, 4, 4, 64]);
        let diff = max_abs_diff(&gs, &gc.sum(1).unwrap());
        let scale = max_abs_diff(&gs, &gs.zeros_like().unwrap());
        assert!(
            diff <= 1e-5 * scale.max(1.0),
            "shared vs class-specific context gradient: {diff:e} (scale {scale:e})"
        );
        assert!(shared.batch(&ctx_csc).is_err());
    }
}

#[cfg(test)]
mod word_init_tests {
    use super::*;
    use crate::clip::model::tests::fixture_dir;
    use crate::clip::ops::testutil::max_abs_diff;
    use crate::clip::LoadOptions;

    /// Word-initialized context reproduces the hand-written prompt exactly.
    #[test]
    fn word_init_equals_the_written_prompt() {
        let clip = Clip::load(&fixture_dir("hf"), &LoadOptions::default()).unwrap();
        let tok = ClipTokenizer::from_dir(&fixture_dir("hf")).unwrap();
        let classes: Vec<String> = ["apple", "sweet_pepper"].iter().map(|s| s.to_string()).collect();
        let l = PromptLearner::new(&clip, &tok, &classes, 4, false)
            .unwrap()
            .with_word_init(&clip, &tok, "a photo of a")
            .unwrap();
        let (f, _) = l
            .text_features(&clip, l.word_init.as_ref().unwrap(), false)
            .unwrap();
        let written =
            crate::clip::zeroshot::ZeroShotHead::build(&clip, &tok, &classes, "a photo of a {}.").unwrap();
        let f = crate::clip::model::l2_normalize(&f).unwrap();
        assert!(max_abs_diff(&f, &written.text_features) < 1e-5);
        let e = PromptLearner::new(&clip, &tok, &classes, 4, false)
            .unwrap()
            .with_word_init(&clip, &tok, "a photo")
            .unwrap_err();
        assert!(e.to_string().contains("2 tokens"), "{e}");
    }
}

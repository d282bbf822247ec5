//! The causal text transformer, fed with *input embeddings* so a prompt learner can
//! replace token embeddings, with an explicit backward pass and two exact shortcuts:
//!
//! * **truncation** — under the causal mask nothing after a sequence's end-of-text (EOT)
//!   token reaches its EOT feature, so only positions up to the longest EOT in the batch
//!   are computed;
//! * **shared prefix** — when all sequences begin with the same P embeddings (start token
//!   plus shared context vectors), those positions are computed once per layer and every
//!   sequence attends to their keys/values.
//!
//! Both give the plain 77-position numbers (tests below and in `tests/`). After the
//! prefix, sequences end at different EOTs; where it keeps the bits
//! ([`TextEncoder::packs_exactly`]), their positions up to the EOT run packed, row after
//! row without padding ([`super::packing`]): a third shortcut, equal to the padded layout
//! bit for bit. The packed rows then take the prefix's rows along through every
//! projection and MLP ([`Block::forward_prefixed`]): one pass over each weight instead of
//! a second one for a handful of rows, with the same bits where those few rows compute
//! alike. In that layout two more exact cuts apply: the last block runs past its
//! attention for the EOT rows alone ([`Block::forward_prefixed_rows`]), the only rows
//! that reach the features; and a shared context's gradient needs the first block's
//! input VJP for the prefix's rows alone ([`TextEncoder::shared_positions_backward`]).
//!
//! With [`TapeMode::Weights`] the backward ([`TextEncoder::backward_full`]) also returns
//! the gradients of every weight of the tower; the token-embedding gradient is a
//! scatter-add of the input cotangents over the token ids
//! ([`TextEncoder::token_embedding_grad`]).

use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::{DType, Device, IndexOp, Tensor};

use super::attention;
use super::block::{
    row_products, Block, BlockLora, BlockLoraGrad, BlockOutput, BlockTape, BlockWeightGrad, Shape,
};
use super::checkpoint::WeightSource;
use super::config::TextConfig;
use super::matmul::rows_compute_alike;
use super::ops::{sum_cotangents, LayerNorm, LayerNormGrad, LayerNormTape, TapeMode};
use super::packing::Packing;
use super::params::{Part, Tower, Wb};

/// How much of the sequence to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextPath {
    /// All context positions (the reference's computation).
    Plain,
    /// Stop at the longest EOT position in the batch.
    Truncated,
    /// Truncate and compute the first `P` positions once for all sequences; `P` must be
    /// at most the shortest EOT position and the caller guarantees the rows are shared.
    SharedPrefix(usize),
}

/// A batch of prompts as input embeddings.
#[derive(Debug, Clone)]
pub struct PromptBatch {
    /// Token embeddings without positions, `[N, S, D]` (S ≤ context length).
    pub embeddings: Tensor,
    /// Position of each sequence's EOT token.
    pub eot: Vec<usize>,
}

impl PromptBatch {
    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.eot.len()
    }

    /// True when the batch has no sequence.
    pub fn is_empty(&self) -> bool {
        self.eot.is_empty()
    }
}

/// What the text backward needs from the forward.
pub struct TextTape {
    n: usize,
    prefix_len: usize,
    body_len: usize,
    /// The body's rows were packed: no padding after each sequence's EOT.
    packing: Option<Arc<Packing>>,
    /// The prefix ran in the body's calls, its rows first ([`Block::forward_prefixed`]).
    joint: bool,
    /// The last block's output projection and MLP ran for the EOT rows alone
    /// ([`Block::forward_prefixed_rows`]).
    eot_only_last: bool,
    layers: Vec<(Option<BlockTape>, BlockTape)>,
    eot_rows: Vec<u32>,
    final_norm: LayerNormTape,
    /// Final LayerNorm output (input of the projection), kept for weight gradients.
    normed: Option<Tensor>,
}

impl TextTape {
    /// Positions computed once for all sequences (0 without a shared prefix).
    pub fn prefix_len(&self) -> usize {
        self.prefix_len
    }

    /// Positions computed per sequence after the prefix (the longest sequence's).
    pub fn body_len(&self) -> usize {
        self.body_len
    }

    /// True when the body ran packed (each sequence only up to its EOT).
    pub fn is_packed(&self) -> bool {
        self.packing.is_some()
    }

    /// True when the prefix's rows went through the body's products
    /// ([`Block::forward_prefixed`]).
    pub fn prefix_in_body(&self) -> bool {
        self.joint
    }

    /// True when the last block ran its output projection and MLP for the EOT rows
    /// alone ([`Block::forward_prefixed_rows`]).
    pub fn last_block_eot_only(&self) -> bool {
        self.eot_only_last
    }
}

/// Which of the exact row layouts a forward may use (tests turn them off to compare).
#[derive(Debug, Clone, Copy)]
struct Layouts {
    /// Pack the body's sequences up to their EOTs ([`TextEncoder::packs_exactly`]).
    pack: bool,
    /// With the prefix in the body's calls, run the last block past its attention for
    /// the EOT rows alone.
    eot_only_last: bool,
}

impl Layouts {
    const ALL: Layouts = Layouts {
        pack: true,
        eot_only_last: true,
    };
}

/// Cotangents of the input embeddings for K losses.
#[derive(Debug, Clone)]
pub struct TextGrad {
    /// W.r.t. the shared prefix embeddings, `[K, P, D]` (already summed over sequences).
    pub prefix: Option<Tensor>,
    /// W.r.t. each sequence's embeddings after the prefix, `[K, N, S_body, D]`.
    pub body: Tensor,
    /// First position covered by `body`.
    pub body_start: usize,
}

impl TextGrad {
    /// Cotangent of embedding positions `start..start+len` summed over all sequences,
    /// `[K, len, D]` — the gradient of a context vector shared by every class, whichever
    /// path computed it. Positions past the computed range contribute zero.
    pub fn shared_positions(&self, start: usize, len: usize) -> Result<Tensor> {
        let (k, _, sb, d) = self.body.dims4()?;
        let mut rows = Vec::with_capacity(len);
        for pos in start..start + len {
            let row = if pos < self.body_start {
                match &self.prefix {
                    Some(p) => p.i((.., pos, ..))?,
                    None => bail!("position {pos} is before the computed range"),
                }
            } else if pos < self.body_start + sb {
                self.body.i((.., .., pos - self.body_start, ..))?.sum(1)?
            } else {
                Tensor::zeros((k, d), self.body.dtype(), self.body.device())?
            };
            rows.push(row);
        }
        Ok(Tensor::stack(&rows, 1)?)
    }
}

/// Gradients of every text-tower weight except the token embedding (which needs the ids:
/// [`TextEncoder::token_embedding_grad`]), summed over the K cotangents.
#[derive(Debug, Clone)]
pub struct TextWeightGrad {
    /// Per block, in order.
    pub blocks: Vec<BlockWeightGrad>,
    /// Positional embeddings `[context, D]` (zero past the computed positions).
    pub positional: Tensor,
    /// Final LayerNorm.
    pub final_norm: LayerNormGrad,
    /// Projection `[E, D]`.
    pub projection: Tensor,
}

/// Everything [`TextEncoder::backward_full`] returns.
#[derive(Debug, Clone)]
pub struct TextBackward {
    /// Cotangents of the input embeddings, per cotangent.
    pub input: TextGrad,
    /// Per-layer LoRA gradients (empty adapters without LoRA).
    pub lora: Vec<BlockLoraGrad>,
    /// Weight gradients, when the forward kept a [`TapeMode::Weights`] tape.
    pub weights: Option<TextWeightGrad>,
}

/// The input cotangents a text backward formed.
enum Inputs {
    /// Everything [`TextEncoder::backward_full`] returns.
    All(TextBackward),
    /// The shared prefix's input cotangents alone, `[K, P, D]`.
    Prefix(Tensor),
}

/// The CLIP text tower.
#[derive(Debug, Clone)]
pub struct TextEncoder {
    /// Token embedding table `[V, D]`.
    pub token_embedding: Tensor,
    /// Positional embeddings `[context, D]`.
    pub positional: Tensor,
    /// Residual blocks.
    pub blocks: Vec<Block>,
    /// Final LayerNorm.
    pub final_norm: LayerNorm,
    /// Projection into the joint space, `[E, D]`.
    pub projection: Tensor,
    /// Shape.
    pub config: TextConfig,
}

impl TextEncoder {
    /// Loads the text tower (canonical names `text_model.*`, `text_projection.weight`).
    pub fn load(ck: &dyn WeightSource, embed_dim: usize, dtype: DType, dev: &Device) -> Result<Self> {
        let c = ck.config().text.clone();
        if ck.config().embed_dim != embed_dim {
            bail!(
                "text tower: joint dimension {embed_dim}, the configuration says {}",
                ck.config().embed_dim
            );
        }
        let t = |part| ck.part(part, dtype, dev);
        let blocks = (0..c.layers)
            .map(|i| Block::load(ck, Tower::Text, i, dtype, dev))
            .collect::<Result<Vec<_>>>()?;
        Ok(TextEncoder {
            token_embedding: t(Part::TokenEmbedding)?,
            positional: t(Part::Positional(Tower::Text))?,
            blocks,
            final_norm: LayerNorm {
                weight: t(Part::FinalNorm(Tower::Text, Wb::Weight))?,
                bias: t(Part::FinalNorm(Tower::Text, Wb::Bias))?,
                eps: ck.config().layer_norm_eps,
            },
            projection: t(Part::Projection(Tower::Text))?,
            config: c,
        })
    }

    /// Prepares the frozen tower for fast products with the same bits: every block
    /// lays out its linears' weights once ([`Block::prepare_frozen`]), so that the few
    /// hundred rows of a prompt batch are not dwarfed by gemm's copies of the weights.
    /// Two more copies of the blocks' weights (302 MB at ViT-B/16; one copy where
    /// gemm's AVX-512 kernels do not run).
    pub fn prepare_frozen(&mut self) -> Result<()> {
        self.blocks.iter_mut().try_for_each(Block::prepare_frozen)
    }

    /// Token embeddings of padded id rows `[N][S]` → `[N, S, D]`.
    pub fn embed_tokens(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let n = ids.len();
        let s = ids.first().map_or(0, Vec::len);
        if ids.iter().any(|r| r.len() != s) {
            bail!("token rows have different lengths");
        }
        let vocab = self.config.vocab_size as u32;
        if let Some(bad) = ids.iter().flatten().find(|&&t| t >= vocab) {
            bail!("token id {bad} is outside the vocabulary of {vocab}");
        }
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let idx = Tensor::from_vec(flat, n * s, self.token_embedding.device())?;
        Ok(self
            .token_embedding
            .index_select(&idx, 0)?
            .reshape((n, s, self.config.width))?)
    }

    /// [`forward_with`](Self::forward_with) keeping the frozen tape when `keep_tape`.
    pub fn forward(
        &self,
        batch: &PromptBatch,
        path: TextPath,
        lora: Option<&[BlockLora]>,
        keep_tape: bool,
    ) -> Result<(Tensor, Option<TextTape>)> {
        self.forward_with(batch, path, lora, TapeMode::frozen(keep_tape))
    }

    /// Encodes a batch: projected (unnormalized) features `[N, E]`, plus a tape unless
    /// `mode` is [`TapeMode::None`].
    pub fn forward_with(
        &self,
        batch: &PromptBatch,
        path: TextPath,
        lora: Option<&[BlockLora]>,
        mode: TapeMode,
    ) -> Result<(Tensor, Option<TextTape>)> {
        self.forward_rows(batch, path, lora, mode, Layouts::ALL)
    }

    /// Packs the sequences after the prefix (see [`packs_exactly`](Self::packs_exactly))
    /// and runs the last block for the EOT rows alone where `layouts` allows and the bits
    /// stay; tests compare the layouts bit for bit.
    fn forward_rows(
        &self,
        batch: &PromptBatch,
        path: TextPath,
        lora: Option<&[BlockLora]>,
        mode: TapeMode,
        layouts: Layouts,
    ) -> Result<(Tensor, Option<TextTape>)> {
        let keep_tape = mode.keeps_tape();
        let (n, s_full, d) = batch.embeddings.dims3()?;
        if n != batch.eot.len() || n == 0 {
            bail!(
                "prompt batch: {n} embedding rows but {} EOT positions",
                batch.eot.len()
            );
        }
        if s_full > self.config.context_length {
            bail!(
                "prompt batch: {s_full} positions exceed the context length {}",
                self.config.context_length
            );
        }
        if let Some(&bad) = batch.eot.iter().find(|&&e| e >= s_full) {
            bail!("prompt batch: EOT position {bad} outside {s_full} positions");
        }
        let max_eot = *batch.eot.iter().max().expect("non-empty");
        let min_eot = *batch.eot.iter().min().expect("non-empty");
        let (p, s) = match path {
            TextPath::Plain => (0, s_full),
            TextPath::Truncated => (0, max_eot + 1),
            TextPath::SharedPrefix(p) => {
                if p > min_eot {
                    bail!(
                        "shared prefix of {p} positions would cover an EOT token (shortest EOT at {min_eot})"
                    );
                }
                (p, max_eot + 1)
            }
        };
        if let Some(l) = lora {
            if l.len() != self.blocks.len() {
                bail!(
                    "text LoRA: {} layer adapters for {} layers",
                    l.len(),
                    self.blocks.len()
                );
            }
            let masked = l
                .iter()
                .flat_map(|b| [&b.q, &b.k, &b.v, &b.o])
                .flatten()
                .any(|a| a.dropout_mask.is_some());
            if masked && p > 0 {
                bail!("text LoRA with dropout masks needs the unshared path (masks are per row)");
            }
        }
        let pos = self.positional.narrow(0, 0, s)?;
        let body_len = s - p;
        let packing = if layouts.pack && path != TextPath::Plain && lora.is_none() && !mode.weights() {
            let lens: Vec<usize> = batch.eot.iter().map(|&e| e + 1 - p).collect();
            let packing = Packing::new(&lens)?;
            let exact = !packing.is_dense()
                && attention::applies(&[&batch.embeddings])
                && self.packs_exactly(packing.rows());
            exact.then(|| Arc::new(packing))
        } else {
            None
        };
        let mut body = batch
            .embeddings
            .narrow(1, p, body_len)?
            .broadcast_add(&pos.narrow(0, p, body_len)?)?
            .reshape((n * body_len, d))?;
        if let Some(pk) = &packing {
            body = pk.pack(&body)?;
        }
        let mut prefix = if p > 0 {
            Some(
                batch
                    .embeddings
                    .i(0)?
                    .narrow(0, 0, p)?
                    .add(&pos.narrow(0, 0, p)?)?,
            )
        } else {
            None
        };
        // Each sequence's EOT row among the body's rows.
        let eot_rows: Vec<u32> = batch
            .eot
            .iter()
            .enumerate()
            .map(|(i, &e)| {
                let row = match &packing {
                    Some(pk) => pk.row(i, e - p).expect("a sequence's length reaches its EOT"),
                    None => i * body_len + e - p,
                };
                row as u32
            })
            .collect();
        let mut layers = Vec::with_capacity(self.blocks.len());
        // With a packed body, the prefix's rows can go through the body's products (the
        // same bits wherever `p` rows compute alike), which saves a pass over every weight
        // for a few rows in each block.
        let joint_rows = match (&packing, &prefix) {
            (Some(pk), Some(x)) if self.packs_exactly(p) => Some((pk.clone(), Tensor::cat(&[x, &body], 0)?)),
            _ => None,
        };
        let joint = joint_rows.is_some();
        // Only the EOT rows of the last block go on, and a product gives them the same
        // bits among N rows as among all where the rows compute alike from N up.
        let eot_only_last = joint && layouts.eot_only_last && self.packs_exactly(n);
        let mut pooled = None;
        if let Some((pk, mut rows)) = joint_rows {
            let last = self.blocks.len() - 1;
            for (li, blk) in self.blocks.iter().enumerate() {
                let out = if eot_only_last && li == last {
                    let joint_rows = eot_rows.iter().map(|&r| r + p as u32).collect();
                    let idx = Tensor::from_vec(joint_rows, n, rows.device())?;
                    blk.forward_prefixed_rows(&rows, p, &pk, mode, &idx)?
                } else {
                    blk.forward_prefixed(&rows, p, &pk, mode)?
                };
                rows = out.y;
                if keep_tape {
                    layers.push((None, out.tape.expect("tape requested")));
                }
            }
            if eot_only_last {
                pooled = Some(rows);
            } else {
                body = rows.narrow(0, p, pk.rows())?;
            }
        }
        for (li, blk) in self.blocks.iter().enumerate().filter(|_| !joint) {
            let l = lora.map(|l| &l[li]);
            let pre_out = match &prefix {
                Some(x) => Some(blk.forward_with(
                    x,
                    Shape {
                        n: 1,
                        s: p,
                        causal: true,
                    },
                    None,
                    l,
                    mode,
                )?),
                None => None,
            };
            let pre_kv = pre_out.as_ref().map(BlockOutput::kv).transpose()?;
            let out = match &packing {
                Some(pk) => blk.forward_packed(&body, pk, pre_kv.as_ref(), l, mode)?,
                None => blk.forward_with(
                    &body,
                    Shape {
                        n,
                        s: body_len,
                        causal: true,
                    },
                    pre_kv.as_ref(),
                    l,
                    mode,
                )?,
            };
            body = out.y;
            let pre_tape = pre_out.map(|o| {
                prefix = Some(o.y);
                o.tape
            });
            if keep_tape {
                layers.push((pre_tape.flatten(), out.tape.expect("tape requested")));
            }
        }
        let pooled = match pooled {
            Some(rows) => rows,
            None => body.index_select(&Tensor::from_vec(eot_rows.clone(), n, body.device())?, 0)?,
        };
        let (normed, ln_tape) = if keep_tape {
            let (y, t) = self.final_norm.forward_taped(&pooled)?;
            (y, Some(t))
        } else {
            (self.final_norm.forward(&pooled)?, None)
        };
        let features = normed.matmul(&self.projection.t()?)?;
        let tape = ln_tape.map(|final_norm| TextTape {
            n,
            prefix_len: p,
            body_len,
            packing,
            joint,
            eot_only_last,
            layers,
            eot_rows,
            final_norm,
            normed: mode.weights().then_some(normed),
        });
        Ok((features, tape))
    }

    /// VJP of [`forward`](Self::forward): K cotangents of the features `[K, N, E]` →
    /// cotangents of the input embeddings, plus per-layer LoRA gradients when LoRA is on.
    pub fn backward(
        &self,
        tape: &TextTape,
        d_features: &Tensor,
        lora: Option<&[BlockLora]>,
    ) -> Result<(TextGrad, Vec<BlockLoraGrad>)> {
        let b = self.backward_full(tape, d_features, lora)?;
        Ok((b.input, b.lora))
    }

    /// VJP of [`forward_with`](Self::forward_with): input-embedding cotangents and LoRA
    /// gradients as [`backward`](Self::backward), plus the weight gradients (summed over
    /// K) when the tape was kept with [`TapeMode::Weights`].
    pub fn backward_full(
        &self,
        tape: &TextTape,
        d_features: &Tensor,
        lora: Option<&[BlockLora]>,
    ) -> Result<TextBackward> {
        match self.backward_inputs(tape, d_features, lora, false)? {
            Inputs::All(b) => Ok(b),
            Inputs::Prefix(_) => {
                bail!("text backward: asked for every input cotangent, got the prefix's")
            }
        }
    }

    /// The cotangent of positions `start..start + len` summed over all sequences, `[K,
    /// len, D]`, for K cotangents of the features — [`TextGrad::shared_positions`] of
    /// [`backward`](Self::backward), bit for bit, computing only what it needs: when
    /// those positions lie in a shared prefix that ran among the body's rows, the first
    /// block's input VJP runs for the prefix's rows alone (the body's input cotangents,
    /// which a shared context never reads, are not formed). Frozen tower, no LoRA.
    pub fn shared_positions_backward(
        &self,
        tape: &TextTape,
        d_features: &Tensor,
        start: usize,
        len: usize,
    ) -> Result<Tensor> {
        let prefix_only = tape.joint && start + len <= tape.prefix_len;
        match self.backward_inputs(tape, d_features, None, prefix_only)? {
            Inputs::Prefix(p) => Ok(p.narrow(1, start, len)?.contiguous()?),
            Inputs::All(b) => b.input.shared_positions(start, len),
        }
    }

    /// The backward of [`backward_full`](Self::backward_full), or with `prefix_only` (a
    /// frozen tape whose prefix ran among the body's rows) the prefix's input cotangents
    /// alone.
    fn backward_inputs(
        &self,
        tape: &TextTape,
        d_features: &Tensor,
        lora: Option<&[BlockLora]>,
        prefix_only: bool,
    ) -> Result<Inputs> {
        if prefix_only && (!tape.joint || lora.is_some() || tape.normed.is_some()) {
            bail!("text backward: the prefix's cotangents alone need a frozen tape whose prefix ran among the body's rows");
        }
        let (kk, n, e) = d_features.dims3()?;
        if n != tape.n {
            bail!("text backward: {n} feature cotangents for a batch of {}", tape.n);
        }
        let d = self.config.width;
        let d_normed = d_features
            .reshape((kk * n, e))?
            .matmul(&self.projection)?
            .reshape((kk, n, d))?;
        let d_pooled = self.final_norm.backward(&tape.final_norm, &d_normed)?;
        let head = match &tape.normed {
            Some(normed) => Some((
                sum_cotangents(d_features)?.t()?.matmul(normed)?,
                self.final_norm.param_grad(&tape.final_norm, &d_normed)?,
            )),
            None => None,
        };
        let rows = tape.packing.as_ref().map_or(n * tape.body_len, |pk| pk.rows());
        let p = tape.prefix_len;
        let mut d_body = if tape.eot_only_last {
            // The last block's output is the EOT rows alone.
            d_pooled
        } else {
            let idx = Tensor::from_vec(tape.eot_rows.clone(), n, d_features.device())?;
            let zeros = Tensor::zeros((kk, rows, d), d_features.dtype(), d_features.device())?;
            zeros.index_add(&idx, &d_pooled, 1)?
        };
        if tape.joint && !tape.eot_only_last {
            // The prefix's rows first, with no cotangent of their own at the top.
            let prefix = Tensor::zeros((kk, p, d), d_features.dtype(), d_features.device())?;
            d_body = Tensor::cat(&[&prefix, &d_body], 1)?;
        }
        let mut d_prefix = if p > 0 {
            Some(Tensor::zeros(
                (kk, p, d),
                d_features.dtype(),
                d_features.device(),
            )?)
        } else {
            None
        };
        let mut lora_grads = Vec::with_capacity(self.blocks.len());
        let mut block_grads = Vec::with_capacity(self.blocks.len());
        for (li, (blk, (pre_tape, body_tape))) in self.blocks.iter().zip(&tape.layers).enumerate().rev() {
            let l = lora.map(|l| &l[li]);
            let g = if prefix_only && li == 0 {
                blk.backward_first_rows(body_tape, &d_body, p)?
            } else {
                blk.backward(body_tape, &d_body, None, l, true)?
            };
            let mut lg = g.lora;
            let mut wg = g.weights;
            d_body = g.dx.expect("requested");
            if let (Some(pt), Some(dp)) = (pre_tape, d_prefix.as_ref()) {
                let (dk, dv) = g.d_past.as_ref().expect("body attended to the prefix");
                let gp = blk.backward(pt, dp, Some((dk, dv)), l, true)?;
                lg = add_lora_grads(lg, gp.lora)?;
                wg = match (wg, gp.weights) {
                    (Some(a), Some(b)) => Some(a.add(&b)?),
                    (a, b) => a.or(b),
                };
                d_prefix = gp.dx;
            }
            lora_grads.push(lg);
            block_grads.extend(wg);
        }
        lora_grads.reverse();
        block_grads.reverse();
        if prefix_only {
            return Ok(Inputs::Prefix(d_body));
        }
        if tape.joint {
            d_prefix = Some(d_body.narrow(1, 0, p)?.contiguous()?);
            d_body = d_body.narrow(1, p, rows)?.contiguous()?;
        }
        if let Some(pk) = &tape.packing {
            // The padding's cotangents are zero, as the padded path computes them.
            d_body = pk.pad(&d_body)?;
        }
        let grad = TextGrad {
            prefix: d_prefix,
            body: d_body.reshape((kk, n, tape.body_len, d))?,
            body_start: p,
        };
        let weights = match head {
            Some((projection, final_norm)) => {
                if block_grads.len() != self.blocks.len() {
                    bail!("text backward: the block tapes were not kept for weight gradients");
                }
                Some(TextWeightGrad {
                    blocks: block_grads,
                    positional: self.positional_grad(&grad)?,
                    final_norm,
                    projection,
                })
            }
            None => None,
        };
        Ok(Inputs::All(TextBackward {
            input: grad,
            lora: lora_grads,
            weights,
        }))
    }

    /// True when the row-wise parts of a block give every row the same bits for any row
    /// count from `rows` up, forward and backward (f32 on the CPU, where gemm picks its
    /// kernel and k-blocking by size: [`rows_compute_alike`]). Then the body's sequences
    /// can run packed — only their positions up to the EOT — with the padded layout's
    /// very numbers: attention pads around itself, and under the causal mask the padding
    /// after an EOT reaches no real position and gets zero cotangents.
    fn packs_exactly(&self, rows: usize) -> bool {
        let d = self.config.width;
        let hidden = self.config.mlp_width;
        // The forward's products; the input VJPs add `(D, 3D)` (the others' transposes
        // are among them).
        row_products(d, hidden)
            .iter()
            .chain(&[(d, 3 * d)])
            .all(|&(n, k)| rows_compute_alike(n, k, rows))
    }

    /// The positional-embedding gradient `[context, D]`: embeddings and positions enter as
    /// a sum, so position j gets the input cotangent at j summed over sequences and K.
    fn positional_grad(&self, grad: &TextGrad) -> Result<Tensor> {
        let computed = grad.body_start + grad.body.dim(2)?;
        let used = grad.shared_positions(0, computed)?.sum(0)?;
        let rest = self.config.context_length - computed;
        if rest == 0 {
            return Ok(used);
        }
        let zeros = Tensor::zeros((rest, self.config.width), used.dtype(), used.device())?;
        Ok(Tensor::cat(&[&used, &zeros], 0)?)
    }

    /// The token-embedding gradient `[V, D]` for the padded id rows `ids` that produced
    /// the embeddings of a backward with cotangents `grad`: each computed position's
    /// cotangent (summed over K) is added to its token's row. With a shared prefix, the
    /// prefix positions use the first row's ids (they are the same in every row).
    pub fn token_embedding_grad(&self, ids: &[Vec<u32>], grad: &TextGrad) -> Result<Tensor> {
        let (_, n, sb, d) = grad.body.dims4()?;
        let start = grad.body_start;
        if ids.len() != n || ids.iter().any(|r| r.len() < start + sb) {
            bail!(
                "token-embedding gradient: {} id rows for {n} sequences of at least {} positions",
                ids.len(),
                start + sb
            );
        }
        let vocab = self.config.vocab_size;
        if let Some(bad) = ids.iter().flatten().find(|&&t| t as usize >= vocab) {
            bail!("token id {bad} is outside the vocabulary of {vocab}");
        }
        let dev = grad.body.device();
        let body_ids: Vec<u32> = ids
            .iter()
            .flat_map(|r| r[start..start + sb].iter().copied())
            .collect();
        let rows = sum_cotangents(&grad.body)?.reshape((n * sb, d))?;
        let table = Tensor::zeros((vocab, d), grad.body.dtype(), dev)?;
        let mut table = table.index_add(&Tensor::from_vec(body_ids, n * sb, dev)?, &rows, 0)?;
        if let Some(prefix) = &grad.prefix {
            let pre_ids: Vec<u32> = ids[0][..start].to_vec();
            let pre_rows = sum_cotangents(prefix)?;
            table = table.index_add(&Tensor::from_vec(pre_ids, start, dev)?, &pre_rows, 0)?;
        }
        Ok(table)
    }

    /// Longest prefix of positions whose token ids are identical in every row and that
    /// ends before the shortest EOT — the positions [`TextPath::SharedPrefix`] may share.
    pub fn shared_prefix_len(ids: &[Vec<u32>], eot: &[usize]) -> usize {
        let Some(first) = ids.first() else { return 0 };
        let limit = eot.iter().copied().min().unwrap_or(0);
        (0..limit)
            .take_while(|&j| ids.iter().all(|r| r.get(j) == first.get(j)))
            .count()
    }
}

fn add_lora_grads(a: BlockLoraGrad, b: BlockLoraGrad) -> Result<BlockLoraGrad> {
    use super::block::LoraGrad;
    let add = |x: Option<LoraGrad>, y: Option<LoraGrad>| -> Result<Option<LoraGrad>> {
        Ok(match (x, y) {
            (Some(x), Some(y)) => Some(LoraGrad {
                a: (x.a + y.a)?,
                b: (x.b + y.b)?,
            }),
            (x, None) => x,
            (None, y) => y,
        })
    };
    Ok(BlockLoraGrad {
        q: add(a.q, b.q)?,
        k: add(a.k, b.k)?,
        v: add(a.v, b.v)?,
        o: add(a.o, b.o)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::model::tests::{expected, fixture_dir, reference_tokens};
    use crate::clip::model::{Clip, LoadOptions};
    use crate::clip::ops::testutil::{bits, dot, fd_directional, max_abs_diff, rand_tensor};
    use crate::clip::ops::TapeMode;

    /// CoOp-style prompts: the CIFAR-100 reference prompts with positions 1..=4 replaced
    /// by shared random context vectors (the start token stays shared too).
    fn prompt_batch(clip: &Clip, ctx: &Tensor) -> (PromptBatch, usize) {
        let (ids, eot) = reference_tokens(&expected());
        let emb = clip.text.embed_tokens(&ids).unwrap();
        let n = ids.len();
        let n_ctx = ctx.dim(0).unwrap();
        let ctx_rows = ctx.unsqueeze(0).unwrap().repeat((n, 1, 1)).unwrap();
        let emb = Tensor::cat(
            &[
                &emb.narrow(1, 0, 1).unwrap(),
                &ctx_rows,
                &emb.narrow(1, 1 + n_ctx, 77 - 1 - n_ctx).unwrap(),
            ],
            1,
        )
        .unwrap();
        (PromptBatch { embeddings: emb, eot }, 1 + n_ctx)
    }

    /// The fixture tower as loaded, and as a fine-tuning run prepares it
    /// ([`Clip::prepare_frozen`]).
    fn plain_and_prepared() -> (Clip, Clip) {
        let plain = Clip::load(&fixture_dir("hf"), &LoadOptions::default()).unwrap();
        let mut prepared = plain.clone();
        prepared.prepare_frozen().unwrap();
        (plain, prepared)
    }

    #[test]
    fn fast_paths_match_the_plain_path_forward_and_backward() {
        let clip = Clip::load(&fixture_dir("hf"), &LoadOptions::default()).unwrap();
        let ctx = rand_tensor(&[4, 64], 1, 0.05);
        let (batch, p) = prompt_batch(&clip, &ctx);
        let d_feat = rand_tensor(&[2, batch.len(), 96], 2, 1.0);
        let run = |path| {
            let (f, tape) = clip.text.forward(&batch, path, None, true).unwrap();
            let (g, _) = clip.text.backward(tape.as_ref().unwrap(), &d_feat, None).unwrap();
            (f, g.shared_positions(1, 4).unwrap())
        };
        let (f_plain, g_plain) = run(TextPath::Plain);
        for path in [TextPath::Truncated, TextPath::SharedPrefix(p)] {
            let (f, g) = run(path);
            let df = max_abs_diff(&f, &f_plain);
            let dg = max_abs_diff(&g, &g_plain);
            let gmax = max_abs_diff(&g_plain, &g_plain.zeros_like().unwrap());
            println!("{path:?}: features differ by {df:e}, context gradients by {dg:e} (max {gmax:e})");
            assert!(df <= 1e-5, "{path:?}: features differ by {df:e}");
            assert!(
                dg <= 1e-5 * gmax.max(1.0),
                "{path:?}: context gradients differ by {dg:e} (max {gmax:e})"
            );
        }
        let (_, tape) = clip
            .text
            .forward(&batch, TextPath::SharedPrefix(p), None, true)
            .unwrap();
        let tape = tape.unwrap();
        assert_eq!(tape.prefix_len(), 5);
        assert!(
            tape.body_len() < 10,
            "CIFAR-100 prompts end early: {}",
            tape.body_len()
        );
    }

    /// The tower prepared for fine-tuning (its weights laid out for their products) gives the plain
    /// tower's bits: features, and every cotangent of a two-cotangent backward, on the
    /// shared-prefix and truncated paths, and without a tape.
    #[test]
    fn frozen_layouts_give_the_plain_towers_bits() {
        let (plain, prepared) = plain_and_prepared();
        let ctx = rand_tensor(&[4, 64], 21, 0.05);
        let (batch, p) = prompt_batch(&plain, &ctx);
        let d_feat = rand_tensor(&[2, batch.len(), 96], 22, 1.0);
        for path in [TextPath::SharedPrefix(p), TextPath::Truncated] {
            let run = |clip: &Clip| {
                let (f, tape) = clip.text.forward(&batch, path, None, true).unwrap();
                let (g, _) = clip.text.backward(&tape.unwrap(), &d_feat, None).unwrap();
                let untaped = clip.text.forward(&batch, path, None, false).unwrap().0;
                (
                    bits(&f),
                    bits(&g.body),
                    g.prefix.as_ref().map(bits),
                    bits(&untaped),
                )
            };
            assert_eq!(run(&prepared), run(&plain), "{path:?}");
        }
    }

    /// Running the last block past its attention for the EOT rows alone gives the whole
    /// block's bits: features (with and without a tape) and every input cotangent, for
    /// one and two cotangents, on the prepared tower (prepacked weights) and the plain.
    #[test]
    fn eot_only_last_block_gives_the_whole_blocks_bits() {
        let (plain, prepared) = plain_and_prepared();
        let ctx = rand_tensor(&[4, 64], 31, 0.05);
        let (batch, p) = prompt_batch(&plain, &ctx);
        let path = TextPath::SharedPrefix(p);
        let whole = Layouts {
            pack: true,
            eot_only_last: false,
        };
        for clip in [&plain, &prepared] {
            for k in [1, 2] {
                let d_feat = rand_tensor(&[k, batch.len(), 96], 32 + k as u64, 1.0);
                let run = |layouts| {
                    let text = &clip.text;
                    let (f, tape) = text
                        .forward_rows(&batch, path, None, TapeMode::frozen(true), layouts)
                        .unwrap();
                    let tape = tape.unwrap();
                    let (g, _) = text.backward(&tape, &d_feat, None).unwrap();
                    let untaped = text
                        .forward_rows(&batch, path, None, TapeMode::None, layouts)
                        .unwrap()
                        .0;
                    let prefix = g.prefix.as_ref().map(bits);
                    (
                        tape.last_block_eot_only(),
                        bits(&f),
                        bits(&untaped),
                        bits(&g.body),
                        prefix,
                    )
                };
                let (eot_only, f, untaped, body, prefix) = run(Layouts::ALL);
                assert!(eot_only, "CIFAR-100's prompts share a prefix and pack");
                let (eot_only, f_w, untaped_w, body_w, prefix_w) = run(whole);
                assert!(!eot_only);
                assert_eq!(f, f_w, "K = {k}: features");
                assert_eq!(untaped, untaped_w, "K = {k}: features without a tape");
                assert_eq!(body, body_w, "K = {k}: body cotangents");
                assert_eq!(prefix, prefix_w, "K = {k}: prefix cotangents");
            }
        }
    }

    /// A shared context's cotangents computed alone (the first block's input VJP for the
    /// prefix's rows only) are those of the whole backward, bit for bit, on the plain and
    /// the prepared tower, for one and two cotangents; on a path whose prefix runs apart
    /// the whole backward runs.
    #[test]
    fn prefix_cotangents_alone_give_the_whole_backwards_bits() {
        let (plain, prepared) = plain_and_prepared();
        let ctx = rand_tensor(&[4, 64], 41, 0.05);
        let (batch, p) = prompt_batch(&plain, &ctx);
        for clip in [&plain, &prepared] {
            for (path, joint) in [(TextPath::SharedPrefix(p), true), (TextPath::Truncated, false)] {
                for k in [1, 2] {
                    let d_feat = rand_tensor(&[k, batch.len(), 96], 42 + k as u64, 1.0);
                    let (_, tape) = clip.text.forward(&batch, path, None, true).unwrap();
                    let tape = tape.unwrap();
                    assert_eq!(tape.prefix_in_body(), joint, "{path:?}");
                    let (whole, _) = clip.text.backward(&tape, &d_feat, None).unwrap();
                    for (start, len) in [(1, 4), (0, p), (2, 1)] {
                        let alone = clip
                            .text
                            .shared_positions_backward(&tape, &d_feat, start, len)
                            .unwrap();
                        let expected = whole.shared_positions(start, len).unwrap();
                        assert_eq!(
                            bits(&alone),
                            bits(&expected),
                            "{path:?}, K = {k}, {start}..+{len}"
                        );
                    }
                }
            }
        }
    }

    /// Packing the body (each class's suffix only up to its EOT) gives the padded
    /// layout's numbers exactly: features bit for bit, every input cotangent equal
    /// (padding included, whose cotangents are zero either way), with and without a
    /// shared prefix (whose rows then go through the body's products, against their own
    /// calls in the padded layout, and whose last block then runs past its attention for
    /// the EOT rows alone), for one and two cotangents.
    #[test]
    fn packed_body_gives_the_padded_numbers() {
        let clip = Clip::load(&fixture_dir("hf"), &LoadOptions::default()).unwrap();
        let ctx = rand_tensor(&[4, 64], 11, 0.05);
        let (batch, p) = prompt_batch(&clip, &ctx);
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for path in [TextPath::SharedPrefix(p), TextPath::Truncated] {
            for k in [1, 2] {
                let d_feat = rand_tensor(&[k, batch.len(), 96], 12 + k as u64, 1.0);
                let run = |may_pack| {
                    let (f, tape) = clip
                        .text
                        .forward_rows(
                            &batch,
                            path,
                            None,
                            TapeMode::frozen(true),
                            Layouts {
                                pack: may_pack,
                                eot_only_last: may_pack,
                            },
                        )
                        .unwrap();
                    let tape = tape.unwrap();
                    let (g, _) = clip.text.backward(&tape, &d_feat, None).unwrap();
                    let layouts = (
                        tape.is_packed(),
                        tape.prefix_in_body(),
                        tape.last_block_eot_only(),
                    );
                    (f, g, layouts)
                };
                let (f_pad, g_pad, packed) = run(false);
                assert_eq!(packed, (false, false, false));
                let (f, g, packed) = run(true);
                let prefixed = path != TextPath::Truncated;
                assert_eq!(
                    packed,
                    (true, prefixed, prefixed),
                    "{path:?}: CIFAR-100's suffixes differ in length"
                );
                assert_eq!(bits(&f), bits(&f_pad), "{path:?}, K = {k}: features");
                assert_eq!(values(&g.body), values(&g_pad.body), "{path:?}, K = {k}: body");
                assert_eq!(g.body_start, g_pad.body_start);
                match (&g.prefix, &g_pad.prefix) {
                    (Some(a), Some(b)) => assert_eq!(bits(a), bits(b), "{path:?}, K = {k}: prefix"),
                    (None, None) => {}
                    _ => panic!("{path:?}: one path has a prefix cotangent"),
                }
            }
        }
        // Without a tape (evaluation) too.
        let (f, _) = clip
            .text
            .forward(&batch, TextPath::SharedPrefix(p), None, false)
            .unwrap();
        let (f_pad, _) = clip
            .text
            .forward_rows(
                &batch,
                TextPath::SharedPrefix(p),
                None,
                TapeMode::None,
                Layouts {
                    pack: false,
                    eot_only_last: false,
                },
            )
            .unwrap();
        assert_eq!(bits(&f), bits(&f_pad));
    }

    /// Weight tapes, LoRA and the plain path keep the padded layout (their sums over rows
    /// would change order); equal suffixes have nothing to pack.
    #[test]
    fn packing_applies_only_where_it_is_exact() {
        let clip = Clip::load(&fixture_dir("hf"), &LoadOptions::default()).unwrap();
        let ctx = rand_tensor(&[4, 64], 11, 0.05);
        let (batch, p) = prompt_batch(&clip, &ctx);
        let packed = |b: &PromptBatch, path, mode| {
            let (_, tape) = clip.text.forward_with(b, path, None, mode).unwrap();
            tape.unwrap().is_packed()
        };
        assert!(packed(&batch, TextPath::SharedPrefix(p), TapeMode::frozen(true)));
        assert!(!packed(&batch, TextPath::SharedPrefix(p), TapeMode::Weights));
        assert!(!packed(&batch, TextPath::Plain, TapeMode::frozen(true)));
        let lora: Vec<BlockLora> = (0..clip.text.blocks.len())
            .map(|_| BlockLora::default())
            .collect();
        let (_, tape) = clip
            .text
            .forward(&batch, TextPath::SharedPrefix(p), Some(&lora), true)
            .unwrap();
        assert!(!tape.unwrap().is_packed());
        let same = PromptBatch {
            embeddings: batch.embeddings.narrow(0, 0, 3).unwrap(),
            eot: vec![batch.eot[0]; 3],
        };
        assert!(!packed(&same, TextPath::SharedPrefix(p), TapeMode::frozen(true)));
    }

    #[test]
    fn context_gradient_matches_finite_differences() {
        let mut clip = Clip::load(&fixture_dir("hf"), &LoadOptions::default()).unwrap();
        // A few classes keep the f64 finite differences quick.
        let ctx = rand_tensor(&[4, 64], 3, 0.05);
        let (batch, p) = prompt_batch(&clip, &ctx);
        let batch = PromptBatch {
            embeddings: batch.embeddings.narrow(0, 0, 5).unwrap(),
            eot: batch.eot[..5].to_vec(),
        };
        let d_feat = rand_tensor(&[1, 5, 96], 4, 1.0);
        let (_, tape) = clip
            .text
            .forward(&batch, TextPath::SharedPrefix(p), None, true)
            .unwrap();
        let (g, _) = clip.text.backward(tape.as_ref().unwrap(), &d_feat, None).unwrap();
        let g = g.shared_positions(1, 4).unwrap().get(0).unwrap();
        let to64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let text64 = {
            let t = &mut clip.text;
            for b in t.blocks.iter_mut() {
                for l in [&mut b.qkv, &mut b.out, &mut b.fc1, &mut b.fc2] {
                    l.weight = to64(&l.weight);
                    l.bias = l.bias.as_ref().map(to64);
                }
                for n in [&mut b.ln1, &mut b.ln2] {
                    n.weight = to64(&n.weight);
                    n.bias = to64(&n.bias);
                }
            }
            t.final_norm.weight = to64(&t.final_norm.weight);
            t.final_norm.bias = to64(&t.final_norm.bias);
            t.positional = to64(&t.positional);
            t.projection = to64(&t.projection);
            t.clone()
        };
        let emb64 = to64(&batch.embeddings);
        let f = |c: &Tensor| {
            let rows = c.unsqueeze(0).unwrap().repeat((5, 1, 1)).unwrap();
            let e = Tensor::cat(
                &[
                    &emb64.narrow(1, 0, 1).unwrap(),
                    &rows,
                    &emb64.narrow(1, 5, 72).unwrap(),
                ],
                1,
            )
            .unwrap();
            text64
                .forward(
                    &PromptBatch {
                        embeddings: e,
                        eot: batch.eot.clone(),
                    },
                    TextPath::Plain,
                    None,
                    false,
                )
                .unwrap()
                .0
        };
        let v = rand_tensor(&[4, 64], 5, 1.0);
        let fd = fd_directional(&f, &ctx, &v, &to64(&d_feat.get(0).unwrap()), 1e-5);
        let an = dot(&g, &v);
        assert!(
            (fd - an).abs() < 1e-4 * (1.0 + an.abs()),
            "fd {fd} vs analytic {an}"
        );
    }

    /// Truncation and the shared prefix are exact for weight gradients too: every
    /// weight's gradient (and the token-embedding scatter) equals the plain path's, and
    /// positions past the longest EOT get none. (Finite differences of every named
    /// weight: `clip::weights` tests.)
    #[test]
    fn weight_gradients_agree_across_paths() {
        let clip = Clip::load(&fixture_dir("hf"), &LoadOptions::default()).unwrap();
        let (ids, eot) = reference_tokens(&expected());
        let (ids, eot) = (ids[..6].to_vec(), eot[..6].to_vec());
        let batch = PromptBatch {
            embeddings: clip.text.embed_tokens(&ids).unwrap(),
            eot: eot.clone(),
        };
        let d_feat = rand_tensor(&[2, 6, 96], 7, 1.0);
        let run = |path| {
            let (_, tape) = clip
                .text
                .forward_with(&batch, path, None, TapeMode::Weights)
                .unwrap();
            let b = clip
                .text
                .backward_full(tape.as_ref().unwrap(), &d_feat, None)
                .unwrap();
            let tok = clip.text.token_embedding_grad(&ids, &b.input).unwrap();
            (b.weights.unwrap(), tok)
        };
        let (plain, tok_plain) = run(TextPath::Plain);
        let p = TextEncoder::shared_prefix_len(&ids, &eot);
        assert!(p >= 1);
        for path in [TextPath::Truncated, TextPath::SharedPrefix(p)] {
            let (w, tok) = run(path);
            let close = |a: &Tensor, b: &Tensor, what: &str| {
                let scale = max_abs_diff(b, &b.zeros_like().unwrap()).max(1e-3);
                let e = max_abs_diff(a, b) / scale;
                assert!(e < 1e-4, "{path:?} {what}: relative difference {e:e}");
            };
            close(&w.projection, &plain.projection, "projection");
            close(&w.final_norm.weight, &plain.final_norm.weight, "final LN");
            close(&w.positional, &plain.positional, "positions");
            close(&tok, &tok_plain, "token embedding");
            for (l, (a, b)) in w.blocks.iter().zip(&plain.blocks).enumerate() {
                close(&a.qkv.weight, &b.qkv.weight, &format!("layer {l} qkv"));
                close(
                    &a.fc2.bias.clone().unwrap(),
                    &b.fc2.bias.clone().unwrap(),
                    &format!("layer {l} fc2 bias"),
                );
                close(&a.ln1.weight, &b.ln1.weight, &format!("layer {l} ln1"));
            }
        }
        let last = *eot.iter().max().unwrap();
        let tail = plain.positional.narrow(0, last + 1, 77 - last - 1).unwrap();
        assert_eq!(max_abs_diff(&tail, &tail.zeros_like().unwrap()), 0.0);
    }

    #[test]
    fn shared_prefix_detection_stops_before_the_first_eot() {
        let ids = vec![vec![1, 2, 3, 9, 0], vec![1, 2, 3, 4, 9]];
        assert_eq!(TextEncoder::shared_prefix_len(&ids, &[3, 4]), 3);
        assert_eq!(TextEncoder::shared_prefix_len(&ids, &[2, 4]), 2);
    }

    #[test]
    fn bad_batches_are_rejected() {
        let clip = Clip::load(&fixture_dir("hf"), &LoadOptions::default()).unwrap();
        let emb = Tensor::zeros((2, 10, 64), DType::F32, &Device::Cpu).unwrap();
        let b = PromptBatch {
            embeddings: emb.clone(),
            eot: vec![3],
        };
        assert!(clip.text.forward(&b, TextPath::Plain, None, false).is_err());
        let b = PromptBatch {
            embeddings: emb.clone(),
            eot: vec![3, 12],
        };
        assert!(clip.text.forward(&b, TextPath::Plain, None, false).is_err());
        let b = PromptBatch {
            embeddings: emb,
            eot: vec![3, 5],
        };
        assert!(clip
            .text
            .forward(&b, TextPath::SharedPrefix(4), None, false)
            .is_err());
        assert!(clip.text.embed_tokens(&[vec![49408]]).is_err());
    }
}
